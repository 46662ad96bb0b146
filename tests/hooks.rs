//! The kprobe and fentry programs must pass the verifier on this kernel even where they cannot
//! attach, and the plan must say why each one is not attached. Run as root.

use tracer::probes::{
    plan::Fate,
    session::{Options, Session},
};

/// Loads the netfilter modules the deep tier reads (on kernels where they are modules, a node's
/// kube-proxy has them loaded); where they are built in, or there is no modprobe, nothing to do.
fn load_netfilter_modules() {
    let _ = std::process::Command::new("modprobe")
        .arg("-a")
        .args(tracer::kernel::btf::NETFILTER_MODULES)
        .args(["nf_nat", "nft_chain_nat", "iptable_filter"])
        .stderr(std::process::Stdio::null())
        .status();
}

/// Skip reasons a kernel gives for a program that cannot run there: anything else is a bug.
const KERNEL_REASONS: &[&str] = &[
    "EPERM",              // fexit: no ftrace function hooks
    "arguments here",     // a tracepoint of another layout
    "has no tracepoint",  // a tracepoint this kernel lacks
    "not loaded)",        // a module's structs not in BTF
    "no kernel function", // a module function not there
    "no BTF for module",  // fexit on a module function before 5.11
];

// Scenario: load every program without attaching any; the verifier checks each, and every program
// it does not get says why in the kernel's terms.
#[test]
fn every_program_is_built_and_passes_the_verifier() {
    load_netfilter_modules();
    let session = Session::start(Options {
        attach: false,
        ..Options::default()
    })
    .expect("load the eBPF object");
    let features = tracer::kernel::features::Features::detect();
    let kernel = &features.release;
    for o in &session.plan.outcomes {
        match &o.fate {
            Fate::Verified { .. } => {}
            Fate::Skipped { reason } if KERNEL_REASONS.iter().any(|k| reason.contains(k)) => {
                eprintln!("skipped on kernel {kernel}: {} ({reason})", o.program);
            }
            fate => panic!(
                "{} did not pass the verifier on kernel {kernel}: {fate:?}",
                o.program
            ),
        }
    }
    let verified = |p: &str| {
        session
            .plan
            .outcomes
            .iter()
            .any(|o| o.program == p && matches!(o.fate, Fate::Verified { .. }))
    };
    assert!(
        verified("drop_kfree_skb") ^ verified("drop_kfree_skb_noreason"),
        "exactly one kfree_skb program fits this kernel's tracepoint"
    );
    assert!(verified("device_tc_ingress") && verified("device_tc_egress"));
    if features.kprobes {
        for p in [
            "nat_manip_enter",
            "nat_manip_exit",
            "conntrack_confirm_enter",
        ] {
            assert!(verified(p), "{p} loads where kprobes exist ({kernel})");
        }
    }
    let tier = session.plan.would_get(features.kprobes);
    eprintln!("kernel {kernel}: tier {tier}");
    // `cargo xtask test` says which tier each kernel of its matrix must give.
    if let Ok(expected) = std::env::var("TRACER_EXPECT_TIER") {
        assert_eq!(tier.to_string(), expected, "kernel {kernel}");
    }
}

/// A namespace with one interface for the TC programs, deleted however the test ends.
struct Links(&'static str);

impl Links {
    fn new(name: &'static str) -> Self {
        let _ = std::process::Command::new("ip")
            .args(["netns", "del", name])
            .stderr(std::process::Stdio::null())
            .status();
        // This kernel has no dummy driver; a veth pair is always there.
        for args in [
            vec!["netns", "add", name],
            vec![
                "-n", name, "link", "add", "d0", "type", "veth", "peer", "name", "d1",
            ],
        ] {
            assert!(
                std::process::Command::new("ip")
                    .args(&args)
                    .status()
                    .expect("ip")
                    .success(),
                "ip {args:?}"
            );
        }
        Self(name)
    }
}

impl Drop for Links {
    fn drop(&mut self) {
        let _ = std::process::Command::new("ip")
            .args(["netns", "del", self.0])
            .status();
    }
}

// Scenario: trace on this kernel; every probe that is not attached says why.
#[test]
fn the_plan_names_the_tier_and_every_skip_reason() {
    let links = Links::new("trhooks-links");
    let session = Session::start(Options {
        attach: true,
        links_netns: Some(tracer::netns::named(links.0)),
        ..Options::default()
    })
    .expect("load and attach");
    let plan = &session.plan;
    let text = plan.to_string();
    assert!(text.starts_with("hook tier: "), "{text}");
    for o in &plan.outcomes {
        match &o.fate {
            Fate::Attached { to } => assert!(!to.is_empty()),
            Fate::Verified { reason } | Fate::Skipped { reason } => {
                assert!(!reason.is_empty(), "{} has no reason", o.program)
            }
        }
    }
    let tc = plan
        .outcomes
        .iter()
        .find(|o| o.program == "device_tc_ingress")
        .unwrap();
    assert_eq!(
        tc.fate,
        Fate::Attached {
            to: "2 links: d0 d1".to_owned()
        }
    );
    let attached = |p: &str| {
        plan.outcomes
            .iter()
            .any(|o| o.program == p && matches!(o.fate, Fate::Attached { .. }))
    };
    assert!(
        attached("drop_kfree_skb") || attached("drop_kfree_skb_noreason"),
        "a kfree_skb program attaches on every kernel: {text}"
    );
    if !std::path::Path::new("/sys/bus/event_source/devices/kprobe").exists() {
        let o = plan
            .outcomes
            .iter()
            .find(|o| o.program == "nat_manip_enter")
            .unwrap();
        match &o.fate {
            Fate::Skipped { reason } => assert!(reason.contains("no kprobes"), "{reason}"),
            f => panic!("nat_manip_enter cannot attach without kprobes and should say so: {f:?}"),
        }
    }
}
