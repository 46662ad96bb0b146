//! `tracer trace --rules` against the lab: netfilter's own tracing names the rule that dropped
//! each query, on this machine's tier, and leaves the node's rulesets as it found them however
//! the tracer stops. Run as root, one test at a time (`--test-threads=1`).

mod common;

use std::{
    net::SocketAddr,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use common::{LabGuard, batch, in_node, tier};
use nix::{
    sys::signal::{Signal, kill},
    unistd::Pid,
};
use tracer::{
    lab::FaultName,
    node::Backend,
    ruletrace,
    trace::{Settings, Target, Traced, traced_batch},
};

const TRACER: &str = env!("CARGO_BIN_EXE_tracer");
const COMMENT: &str = "tracer lab fault: filter-drop";

/// The node's rulesets, both backends, without counters.
fn rulesets(lab: &LabGuard) -> String {
    let legacy = in_node(lab, &["iptables-legacy-save"]);
    let legacy: Vec<String> = legacy
        .lines()
        .filter(|l| !l.starts_with('#'))
        // Chain policies carry [packets:bytes]; the lab's own traffic moves them.
        .map(|l| match l.split_once(" [") {
            Some((chain, _)) if l.starts_with(':') => chain.to_owned(),
            _ => l.to_owned(),
        })
        .collect();
    format!(
        "{}\n{}",
        in_node(lab, &["nft", "-s", "list", "ruleset"]),
        legacy.join("\n")
    )
}

// Scenario: filter-drop on dns0, traced with --rules on each backend; every dropped query names
// the lab's DROP rule in filter FORWARD, from nftrace (nft) or raw-table TRACE (legacy).
#[test]
fn rules_name_the_filter_drop_rule_of_each_dropped_query() {
    for backend in [Backend::Nft, Backend::Legacy] {
        let mut lab = LabGuard::up("trru", backend);
        if backend == Backend::Legacy {
            // A node whose legacy rules include the raw table (NodeLocal DNSCache, Calico): the
            // tracer never creates it, since a table once registered stays.
            in_node(&lab, &["iptables-legacy", "-t", "raw", "-S"]);
        }
        lab.fault(FaultName::FilterDrop, Some(0));
        let settings = Settings {
            tier: tier(),
            timeout: Duration::from_secs(1),
            rules: true,
            ..Settings::default()
        };
        // Polled while the queries go, as `tracer trace` polls.
        let Traced {
            result,
            records,
            summary,
        } = traced_batch(
            Some(&lab.info.clients[0].netns),
            SocketAddr::from((lab.info.service_ip, lab.info.dns_port)),
            &batch(30),
            Some((Target::lab(&lab.info).expect("lab target"), settings)),
            &indicatif::ProgressBar::hidden(),
        )
        .expect("traced probe");
        let summary = summary.expect("the trace summary");
        let failed: Vec<_> = records
            .iter()
            .filter(|r| r.verdict != tracer::flow::record::Verdict::Answered)
            .collect();
        assert!(
            result.lost > 0 && result.lost < 30,
            "{backend:?}: {result:?}"
        );
        assert_eq!(
            failed.len() as u32,
            result.lost,
            "{backend:?}: one record per loss"
        );
        for r in &failed {
            let path = r.rules.as_ref().unwrap_or_else(|| {
                panic!(
                    "a rule path: {r:?}; rule traces: {:?} {:?} {:?}",
                    summary.rule_trace, summary.rule_trace_legacy, summary.rule_trace_notes
                )
            });
            let d = path.decided.as_ref().expect("a deciding step");
            assert_eq!(
                (d.table.as_str(), d.chain.as_str(), d.verdict.as_str()),
                ("filter", "FORWARD", "DROP"),
                "{backend:?}: {path}"
            );
            assert_eq!(d.comment.as_deref(), Some(COMMENT), "{backend:?}: {path}");
        }
        let nft = summary.rule_trace.expect("the nf_tables side ran");
        assert_eq!((nft.lost, nft.malformed), (0, 0), "{nft:?}");
        match backend {
            Backend::Nft => assert!(nft.paths >= u64::from(result.lost), "{nft:?}"),
            Backend::Legacy => {
                let legacy = summary.rule_trace_legacy.expect("the legacy side ran");
                assert!(legacy.paths >= u64::from(result.lost), "{legacy:?}");
            }
        }
        assert!(
            ruletrace::leftovers().expect("leftovers").is_empty(),
            "nothing left in this namespace"
        );
    }
}

/// A tracer child process, killed when dropped (a failed assertion must not leave it running).
struct TracerChild(std::process::Child);

impl TracerChild {
    fn pid(&self) -> Pid {
        Pid::from_raw(self.0.id() as i32)
    }

    fn wait(&mut self) -> std::process::ExitStatus {
        self.0.wait().expect("wait for the tracer")
    }
}

impl Drop for TracerChild {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

/// Starts `tracer trace --rules` on the lab and waits until its nftrace table and its TRACE rules
/// are in the node.
fn start_tracer(lab: &LabGuard, duration: Option<&str>) -> TracerChild {
    let mut cmd = Command::new(TRACER);
    cmd.args(["trace", "--lab", "--prefix", &lab.info.prefix, "--rules"]);
    if let Some(d) = duration {
        cmd.args(["--duration", d]);
    }
    let child = TracerChild(
        cmd.stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start the tracer"),
    );
    let deadline = Instant::now() + Duration::from_secs(60);
    // The legacy side's rules go in after the nf_tables side's table.
    while !in_node(lab, &["nft", "list", "tables"]).contains(ruletrace::TABLE)
        || !in_node(lab, &["iptables-legacy-save", "-t", "raw"]).contains("TRACE")
    {
        assert!(
            Instant::now() < deadline,
            "the tracer never added its rules"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    child
}

// Scenario: the tracer with --rules stopped by SIGINT, by SIGTERM, and killed by SIGKILL then
// started again; each time both rulesets end byte-identical to before (legacy backend with a raw
// table, so both the nftrace table and the TRACE rules are added).
#[test]
fn rules_leave_both_rulesets_as_they_were_after_each_signal() {
    let lab = LabGuard::up("trrs", Backend::Legacy);
    in_node(&lab, &["iptables-legacy", "-t", "raw", "-S"]);
    let before = rulesets(&lab);
    for signal in [Signal::SIGINT, Signal::SIGTERM, Signal::SIGKILL] {
        let mut child = start_tracer(&lab, None);
        kill(child.pid(), signal).expect("signal the tracer");
        let status = child.wait();
        if signal == Signal::SIGKILL {
            assert_ne!(rulesets(&lab), before, "a killed tracer leaves its rules");
            let status = start_tracer(&lab, Some("1")).wait();
            assert!(status.success(), "the next start after a kill: {status:?}");
        } else {
            assert!(status.success(), "{signal:?}: {status:?}");
        }
        assert_eq!(rulesets(&lab), before, "after {signal:?}");
    }
}
