//! `tracer validate` on this kernel: every lab scenario, in both backends, is detected and
//! attributed to the right stage. Run as root (`--test-threads=1`); it brings up a fresh lab per
//! scenario and takes about two minutes.

mod common;

use tracer::{report::validation::line, validate::validate};

// Scenario: kernel-upgrade validation on the running kernel: healthy plus every fault, nft and
// legacy, each scenario checked on its own.
#[test]
fn validate_passes_on_this_kernel_scenario_by_scenario() {
    let prefix = "trr3";
    let v = validate(prefix, &[], &[], 200, |r| eprintln!("{}", line(r)))
        .unwrap_or_else(|e| panic!("validate: {e}"));
    assert_eq!(v.scenarios.len(), 18, "9 scenarios in each of 2 backends");
    let failed: Vec<String> = v.scenarios.iter().filter(|r| !r.passed).map(line).collect();
    assert!(
        failed.is_empty(),
        "failed on this kernel:\n{}",
        failed.join("\n")
    );
    assert!(v.tier.is_some(), "names the hook tier: {:?}", v.tier);
    let healthy: Vec<_> = v
        .scenarios
        .iter()
        .filter(|r| r.scenario == "healthy")
        .collect();
    assert_eq!(healthy.len(), 2);
    for r in healthy {
        assert_eq!((r.probe.sent, r.probe.lost), (200, 0), "{}", line(r));
        assert!(r.probe.latency_ms.is_some(), "healthy latency measured");
    }
    assert!(
        common::leftovers(prefix).is_empty(),
        "{:?}",
        common::leftovers(prefix)
    );
}
