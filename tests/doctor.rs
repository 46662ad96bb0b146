//! `tracer doctor` on the lab, as an on-call engineer runs it: the binary, its page as JSON and
//! its exit code. One lab per backend, the faults switched with `fault clear`; each fault's true
//! cause must come first with the evidence that proves it and the fix that resolves it, and the
//! healthy lab (and conntrack-race, whose clashes this kernel resolves) must be healthy with
//! every check listed. Run as root, one test at a time.

mod common;

use std::process::Command;

use common::{BACKENDS, LabGuard, batch, leftovers};
use tracer::{
    lab::FaultName,
    node::Backend,
    report::doctor::{Diagnosis, Health, Status},
};

/// Every check doctor lists, in order.
const CHECKS: [&str; 19] = [
    "iptables backend",
    "iptables link chain",
    "alternatives, xtables-multi",
    "iptables -V",
    "netfilter modules",
    "/proc/net/ip_tables_names",
    "KUBE-* rules in both saves",
    "kubelet hint chains",
    "kube-proxy mode",
    "DNS Service",
    "conntrack table",
    "conntrack in the kernel log",
    "UDP conntrack timeouts",
    "Service IP vs pod IPs",
    "parallel A and AAAA",
    "DNS over TCP",
    "pod links",
    "queries from the node",
    "kernel, OS",
];

/// Lookups each doctor run sends (A and AAAA each, at once from one socket, as glibc does).
const COUNT: u32 = 30;
/// Lookups doctor sends over TCP beside them.
const TCP: u32 = 4;
/// Queries each doctor run sends: A and AAAA per lookup, and the TCP lookups.
const QUERIES: u32 = queries(PROBE);

/// The queries of `probe`: A and AAAA per lookup, and the TCP lookups.
const fn queries(probe: Probe) -> u32 {
    2 * probe.count + TCP
}

/// How long and how fast a probe sends.
#[derive(Clone, Copy)]
struct Probe {
    count: u32,
    rate: f64,
}

/// The probe of every run but throttled-server's and conntrack-race's: 30 lookups at 60/s.
const PROBE: Probe = Probe {
    count: COUNT,
    rate: 60.0,
};

/// conntrack-race's: 200 lookups at 200/s, as tests/lab.rs sends them (a short probe may meet
/// no clash).
const RACE_PROBE: Probe = Probe {
    count: 200,
    rate: 200.0,
};

fn tracer() -> Command {
    Command::new(env!("CARGO_BIN_EXE_tracer"))
}

/// Runs `tracer doctor --lab` on lab `prefix` with `probe`: its diagnosis and exit code.
fn doctor(prefix: &str, probe: Probe) -> (Diagnosis, i32) {
    let out = tracer()
        .args(["doctor", "--lab", "--prefix", prefix, "--output", "json"])
        .args(["--count", &probe.count.to_string()])
        .args(["--rate", &probe.rate.to_string()])
        .output()
        .expect("run tracer doctor");
    let code = out.status.code().expect("exit code");
    let text = String::from_utf8_lossy(&out.stdout);
    let d: Diagnosis = serde_json::from_str(&text).unwrap_or_else(|e| {
        panic!(
            "doctor printed no diagnosis ({e}), exit {code}: {text}\nstderr: {}",
            String::from_utf8_lossy(&out.stderr)
        )
    });
    (d, code)
}

/// What the first cause of a fault must say: its id, and words its evidence and fix hold; and
/// the verdict.
struct Expect {
    fault: FaultName,
    id: &'static str,
    evidence: String,
    fix: String,
    health: Health,
    probe: Probe,
}

fn expectations(prefix: &str, backend: Backend) -> Vec<Expect> {
    let iptables = match backend {
        Backend::Nft => "iptables-nft",
        Backend::Legacy => "iptables-legacy",
    };
    let stale = match backend {
        Backend::Nft => "iptables-legacy",
        Backend::Legacy => "iptables-nft",
    };
    let e = |fault, id, evidence: &str, fix: &str| Expect {
        fault,
        id,
        evidence: evidence.to_owned(),
        fix: fix.to_owned(),
        health: Health::Broken,
        probe: PROBE,
    };
    vec![
        e(
            FaultName::FilterDrop,
            "blocking-rule",
            "tracer lab fault: filter-drop",
            &format!("{iptables} -t filter -D FORWARD"),
        ),
        e(
            FaultName::NoEndpoints,
            "no-endpoints",
            "has no endpoints",
            "endpointslices",
        ),
        e(
            FaultName::PodDown,
            "pod-not-listening",
            "10.244.0.10",
            "status.podIP=10.244.0.10",
        ),
        e(
            FaultName::PodLinkDown,
            "pod-unreachable",
            &format!("pod link {prefix}d0 is down"),
            &format!("ip link set dev {prefix}d0 up"),
        ),
        e(
            FaultName::ConntrackFull,
            "conntrack-full",
            "conntrack table:",
            "net.netfilter.nf_conntrack_max=",
        ),
        e(
            FaultName::StaleConntrack,
            "stale-conntrack",
            "10.244.0.10",
            &format!("ip netns exec {prefix}-node conntrack -D -p udp"),
        ),
        e(
            FaultName::PolicyDrop,
            "blocking-rule",
            "cali-tw-",
            &format!("{iptables} -t filter -D cali-tw-"),
        ),
        e(
            FaultName::ServerOverload,
            "server-overloaded",
            "receive queue",
            "scale deployment/coredns",
        ),
        e(
            FaultName::MixedBackend,
            "stale-rules",
            "sent to: 10.244.0.99",
            &format!("{stale} -t nat -F KUBE-SERVICES"),
        ),
        // The server stalls 2.5 s of every 2.7 s; a query that meets a stall with less than the
        // 1 s conntrack timeout of it left is answered in time. A 0.5 s probe can fall wholly in
        // that 1.2 s window and see nothing: this one spans a whole cycle (3 s).
        Expect {
            probe: Probe {
                count: 60,
                rate: 20.0,
            },
            ..e(
                FaultName::ThrottledServer,
                "conntrack-expired",
                "nf_conntrack_udp_timeout: 1 s",
                "sysctl -w net.netfilter.nf_conntrack_udp_timeout=30",
            )
        },
        // UDP is answered; every lookup over TCP dies at the rule: degraded, not broken.
        Expect {
            health: Health::Degraded,
            ..e(
                FaultName::TcpBlocked,
                "tcp-blocked",
                "tracer lab fault: tcp-blocked",
                &format!("{iptables} -t filter -D FORWARD -d 10.244.0.1"),
            )
        },
    ]
}

/// The healthy lab: healthy, every check listed and passing, `probe` answered and seen.
fn assert_healthy(backend: Backend, prefix: &str, probe: Probe) -> Diagnosis {
    let (d, code) = doctor(prefix, probe);
    let all = queries(probe);
    let names: Vec<&str> = d.checks.iter().map(|c| c.name.as_str()).collect();
    assert_eq!(names, CHECKS, "{backend:?}");
    let failing: Vec<&str> = d
        .checks
        .iter()
        .filter(|c| matches!(c.status, Status::Fail | Status::Warn))
        .map(|c| c.name.as_str())
        .collect();
    match backend {
        Backend::Nft => {
            assert_eq!(
                (d.health, code),
                (Health::Healthy, 0),
                "{backend:?}: {d:#?}"
            );
            assert!(d.causes.is_empty(), "{backend:?}: {:#?}", d.causes);
            assert!(failing.is_empty(), "{backend:?}: {failing:?}: {d:#?}");
        }
        // This machine's `iptables` is iptables-nft while the legacy lab's rules are legacy:
        // every query answered, and that warning the only cause.
        Backend::Legacy => {
            assert_eq!(
                (d.health, code),
                (Health::Degraded, 6),
                "{backend:?}: {d:#?}"
            );
            let ids: Vec<&str> = d.causes.iter().map(|c| c.id.as_str()).collect();
            assert_eq!(ids, ["iptables-default-differs"], "{backend:?}");
            assert_eq!(d.causes[0].queries, 0);
            assert_eq!(failing, ["iptables -V"], "{backend:?}: {d:#?}");
        }
    }
    let p = &d.probe;
    assert_eq!((p.sent, p.answered), (all, all), "{backend:?}");
    assert_eq!((p.tcp_sent, p.tcp_answered), (TCP, TCP), "{backend:?}");
    assert!(p.parallel_a_aaaa, "{backend:?}: glibc's A and AAAA at once");
    // The tracer follows every query, the TCP ones too.
    assert_eq!(p.seen_to_service, u64::from(all), "{backend:?}: {p:?}");
    assert_eq!(p.seen_at_pod, u64::from(all), "{backend:?}: {p:?}");
    assert_eq!(p.seen_answered, u64::from(all), "{backend:?}: {p:?}");
    let mode = &d.checks[8].result;
    assert!(mode.contains("rules say iptables"), "{backend:?}: {mode}");
    d
}

/// conntrack-race: A and AAAA from one socket at once clash in conntrack; this kernel resolves
/// every clash (as tests/lab.rs asserts), so nothing is lost and the node is as healthy as
/// without the fault, the clashes counted in their check.
fn assert_race_resolved(backend: Backend, prefix: &str) {
    let d = assert_healthy(backend, prefix, RACE_PROBE);
    let race = d
        .checks
        .iter()
        .find(|c| c.name == "parallel A and AAAA")
        .unwrap();
    assert_eq!(race.status, Status::Ok, "{backend:?}: {race:?}");
    let figure = |name: &str| -> u64 {
        let (_, rest) = race.result.split_once(&format!("{name} +")).unwrap();
        let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
        digits.parse().unwrap()
    };
    assert_eq!(figure("insert_failed"), 0, "{backend:?}: {race:?}");
    let cpus = std::thread::available_parallelism().map_or(1, usize::from);
    if cpus >= 2 {
        assert!(figure("clash_resolve") > 0, "{backend:?}: {race:?}");
    } else {
        eprintln!("clashes not asserted: the race needs two CPUs, this machine has {cpus}");
    }
}

/// One fault: its verdict, its cause first with evidence and fix.
fn assert_fault(backend: Backend, prefix: &str, x: &Expect) {
    let (d, code) = doctor(prefix, x.probe);
    let name = x.fault.name();
    let exit = match x.health {
        Health::Healthy => 0,
        Health::Degraded => 6,
        Health::Broken => 7,
    };
    assert_eq!(
        (d.health, code),
        (x.health, exit),
        "{backend:?} {name}: {d:#?}"
    );
    let first = d
        .causes
        .first()
        .unwrap_or_else(|| panic!("{backend:?} {name}: no cause"));
    assert_eq!(first.id, x.id, "{backend:?} {name}: {:#?}", d.causes);
    assert!(first.queries > 0, "{backend:?} {name}: {first:#?}");
    assert!(
        first.queries <= u64::from(d.probe.sent - d.probe.answered),
        "{backend:?} {name}: explains no more than the lost queries: {first:#?}"
    );
    assert!(
        first.evidence.iter().any(|e| e.contains(&x.evidence)),
        "{backend:?} {name}: evidence names {:?}: {first:#?}",
        x.evidence
    );
    let fix = first.fix.as_deref().unwrap_or_default();
    assert!(fix.contains(&x.fix), "{backend:?} {name}: fix {fix:?}");
    assert_eq!(d.checks.len(), CHECKS.len(), "{backend:?} {name}");
    assert!(
        d.probe.seen_to_service > 0,
        "{backend:?} {name}: {:?}",
        d.probe
    );
    // The node's own queries were sent: they say whether host-network pods are hit too.
    let node = d
        .checks
        .iter()
        .find(|c| c.name == "queries from the node")
        .unwrap();
    assert!(node.result.contains("answered from the node"), "{node:?}");
}

/// endpoint-churn: DNS traffic made conntrack entries to dns0, then dns0 was replaced. The
/// probe's fresh sockets reach the replacement, so nothing of it is lost; the entries still
/// sending clients (those that keep their socket) to the gone pod are the first cause.
fn assert_churn(backend: Backend, prefix: &str) {
    let (d, code) = doctor(prefix, PROBE);
    assert_eq!(
        (d.health, code),
        (Health::Degraded, 6),
        "{backend:?}: {d:#?}"
    );
    assert_eq!(
        (d.probe.sent, d.probe.answered),
        (QUERIES, QUERIES),
        "{backend:?}: {d:#?}"
    );
    let first = &d.causes[0];
    assert_eq!(
        first.id, "conntrack-stale-dns",
        "{backend:?}: {:#?}",
        d.causes
    );
    assert!(
        first
            .evidence
            .iter()
            .any(|e| e.contains("reply from 10.244.0.10:53")),
        "{backend:?}: {first:#?}"
    );
    let fix = first.fix.as_deref().unwrap_or_default();
    assert!(
        fix.contains(&format!(
            "ip netns exec {prefix}-node conntrack -D -p udp --orig-dst 10.96.0.10 --reply-src 10.244.0.10"
        )),
        "{backend:?}: {fix}"
    );
}

// Scenario: an on-call engineer runs doctor on a healthy node, then on each fault in turn, on
// both iptables backends; after the lab is gone nothing of it is left.
#[test]
fn doctor_names_each_fault_first_with_evidence_and_fix() {
    for (backend, prefix) in BACKENDS.into_iter().zip(["dc2", "dc3"]) {
        {
            let mut lab = LabGuard::up(prefix, backend);
            assert_healthy(backend, prefix, PROBE);
            lab.fault(FaultName::ConntrackRace, None);
            assert_race_resolved(backend, prefix);
            lab.clear();
            for x in expectations(prefix, backend) {
                lab.fault(x.fault, None);
                assert_fault(backend, prefix, &x);
                lab.clear();
            }
            // Traffic first (20 lookups, about half balanced to dns0), then dns0 replaced.
            assert_eq!(lab.probe(&batch(20)).answered, 20, "{backend:?}");
            lab.fault(FaultName::EndpointChurn, Some(0));
            assert_churn(backend, prefix);
            lab.clear();
            // Every fault cleared: the probe is answered again, every query seen by the tracer
            // (what the faults leave in the kernel's history, such as the conntrack-full lines
            // of the kernel log, may still be listed as warnings).
            let (d, _) = doctor(prefix, PROBE);
            assert_eq!(
                (d.probe.sent, d.probe.answered),
                (QUERIES, QUERIES),
                "{backend:?}: {d:#?}"
            );
            assert!(
                d.causes.iter().all(|c| c.queries == 0),
                "{backend:?}: {:#?}",
                d.causes
            );
            assert_ne!(d.health, Health::Broken, "{backend:?}");
        }
        assert_eq!(leftovers(prefix), Vec::<String>::new(), "{backend:?}");
    }
}

// Scenario: the page for people: the verdict line first, the causes with their fix, one line
// per check; without a terminal no colour.
#[test]
fn doctor_text_page_is_one_verdict_then_causes_then_checks() {
    let mut lab = LabGuard::up("dc4", Backend::Nft);
    lab.fault(FaultName::FilterDrop, None);
    let out = tracer()
        .args([
            "doctor", "--lab", "--prefix", "dc4", "--count", "20", "--rate", "60",
        ])
        .output()
        .expect("run tracer doctor");
    assert_eq!(out.status.code(), Some(7));
    let text = String::from_utf8(out.stdout).expect("utf-8");
    let first = text.lines().next().unwrap_or_default();
    // A and AAAA of 20 lookups dropped; the 4 over TCP answered (the rule is UDP's).
    assert!(
        first.starts_with("BROKEN: 40 of 44 DNS queries lost (90.9 %; 0 of 4 over TCP)"),
        "{text}"
    );
    assert!(
        !text.contains('\x1b'),
        "no colour without a terminal: {text}"
    );
    assert!(
        text.contains("\n 1. a netfilter rule drops DNS queries"),
        "{text}"
    );
    assert!(
        text.contains("    fix: ip netns exec dc4-node iptables-nft -t filter -D FORWARD"),
        "{text}"
    );
    let checks = text.split("\nchecks:\n").nth(1).expect("a checks section");
    assert_eq!(checks.lines().count(), CHECKS.len(), "{checks}");
    // The report keeps the diagnosis next to the trace and the node's facts.
    let report = std::env::temp_dir().join("tracer-doctor-test-report.json");
    let status = tracer()
        .args([
            "doctor", "--lab", "--prefix", "dc4", "--count", "10", "--rate", "60", "--output",
            "json",
        ])
        .arg("--report")
        .arg(&report)
        .stdout(std::process::Stdio::null())
        .status()
        .expect("run tracer doctor --report");
    assert_eq!(status.code(), Some(7));
    let doc = tracer::report::document::Document::read(&report).expect("read the report");
    let _ = std::fs::remove_file(&report);
    assert_eq!(doc.command, "doctor");
    let d = doc.doctor.expect("the diagnosis in the report");
    assert_eq!(d.causes[0].id, "blocking-rule");
    assert!(doc.node.is_some() && doc.trace.is_some());
    assert_eq!(doc.failed_queries.len() as u64, d.causes[0].queries);
}

// Scenario: completions and the man page come from the clap definitions: every command is in
// them, doctor included.
#[test]
fn completions_and_man_page_are_generated() {
    for shell in ["bash", "zsh", "fish"] {
        let out = tracer()
            .args(["completions", shell])
            .output()
            .expect("completions");
        assert!(out.status.success(), "{shell}: {out:?}");
        let text = String::from_utf8_lossy(&out.stdout);
        for cmd in ["doctor", "trace", "inspect", "probe", "lab"] {
            assert!(text.contains(cmd), "{shell} completions lack {cmd}");
        }
    }
    let out = tracer().arg("man").output().expect("man");
    assert!(out.status.success());
    let roff = String::from_utf8_lossy(&out.stdout);
    assert!(
        roff.starts_with(".ie") || roff.contains(".TH tracer"),
        "{roff}"
    );
    assert!(roff.contains("doctor"), "the man page lists doctor");
    let bad = tracer()
        .args(["completions", "cmd.exe"])
        .output()
        .expect("run");
    assert_eq!(bad.status.code(), Some(2), "clap's usage error");
}
