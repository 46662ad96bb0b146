use super::*;

fn n(v: f64) -> Option<Value> {
    Some(Value::Number(v))
}

#[test]
fn thresholds_judge_each_kind() {
    let t = Thresholds::default();
    let j = |k, b: Option<Value>, a: Option<Value>| judge(k, b.as_ref(), a.as_ref(), &t);
    assert!(j(Kind::LossPercent, n(0.0), n(0.5)).is_none());
    assert!(j(Kind::LossPercent, n(0.0), n(50.0)).is_some());
    assert!(
        j(Kind::P99Ms, n(0.4), n(5.0)).is_none(),
        "below the 10 ms floor"
    );
    assert!(j(Kind::P99Ms, n(20.0), n(40.0)).is_some());
    assert!(j(Kind::P99Ms, n(100.0), n(140.0)).is_none(), "within 50 %");
    assert!(
        j(Kind::Drops, None, n(3.0)).is_some(),
        "a new cause of drops"
    );
    assert!(j(Kind::Drops, n(3.0), None).is_none(), "drops gone");
    assert!(j(Kind::ConntrackDrops, n(0.0), n(1.0)).is_some());
    assert!(j(Kind::Pass, n(1.0), n(0.0)).is_some());
    assert!(j(Kind::Pass, n(0.0), n(1.0)).is_none());
    assert!(j(Kind::Info, n(0.0), n(100.0)).is_none());
}

/// A validate report whose scenario stopped passing, and whose healthy run started losing.
#[test]
fn validate_reports_flag_a_scenario_that_stopped_passing() {
    use std::{
        net::{Ipv4Addr, SocketAddrV4},
        time::SystemTime,
    };

    use crate::{
        measure::{BatchResult, BatchSpec},
        node::Backend,
        report::validation::{ScenarioResult, Validation},
    };
    let server = SocketAddrV4::new(Ipv4Addr::new(10, 96, 0, 10), 53);
    let probe = |lost: u32| {
        let result = BatchResult {
            started: SystemTime::now(),
            sent: 100,
            answered: 100 - lost,
            lost,
            bad_answers: 0,
            queries: vec![],
        };
        ProbeReport::new("c", server, &BatchSpec::default(), &result, None, &[])
    };
    let scenario = |name: &str, passed: bool, lost: u32| ScenarioResult {
        backend: Backend::Nft,
        scenario: name.to_owned(),
        passed,
        tier: "tracepoint".to_owned(),
        expected: String::new(),
        problems: vec![],
        probe: probe(lost),
        conntrack_delta: None,
        counters: None,
    };
    let doc = |passed: bool, lost: u32| {
        let mut d = Document::new("validate").unwrap();
        d.validate = Some(Validation {
            tier: "tracepoint".to_owned(),
            passed,
            seconds: 1.0,
            scenarios: vec![
                scenario("healthy", true, lost),
                scenario("filter-drop", passed, 50),
            ],
        });
        d
    };
    let t = Thresholds::default();
    let p = Path::new("x.json");
    let same = compare(p, &doc(true, 0), p, &doc(true, 0), &t);
    assert_eq!(same.regressions, 0, "{}", same.text());
    let worse = compare(p, &doc(true, 0), p, &doc(false, 5), &t);
    assert_eq!(
        worse.regressed(),
        vec![
            "validate.nft.healthy.loss_percent",
            "validate.nft.filter-drop"
        ],
        "{}",
        worse.text()
    );
}

/// A running kernel's validate report against a candidate's from a VM: the hook tier, a
/// scenario that stopped passing, a drop location that moved, and the healthy latency, each
/// in one line of the changes; the VM's latency is not judged against the machine's.
#[test]
fn validate_reports_show_tier_scenarios_drop_locations_and_latency() {
    use std::{
        net::{Ipv4Addr, SocketAddrV4},
        time::{Duration, SystemTime},
    };

    use crate::{
        flow::record::{Drop, Leg, QueryRecord as TraceRecord, Seen, StageTimes, Verdict},
        measure::{BatchResult, BatchSpec, Outcome, QueryRecord, RecordType, ResponseCode},
        node::Backend,
        report::document::VmRun,
        report::validation::{ScenarioResult, Validation},
    };
    let server = SocketAddrV4::new(Ipv4Addr::new(10, 96, 0, 10), 53);
    let query = |i: u16, outcome| QueryRecord {
        id: i,
        name: "kubernetes.default.svc.cluster.local".to_owned(),
        qtype: RecordType::A,
        source_port: 1000 + i,
        sent_at: Duration::from_millis(u64::from(i)),
        outcome,
    };
    // 10 queries answered in `ms` (the last one 4x slower), then `lost` dropped at `location`.
    let probe = |ms: f64, lost: u16, location: &str, backend: Option<&str>| {
        let answered = (0..10u16).map(|i| {
            let f = if i == 9 { 4.0 } else { 1.0 };
            query(
                i,
                Outcome::Answered {
                    latency: Duration::from_secs_f64(ms * f / 1000.0),
                    rcode: ResponseCode::NoError,
                    addresses: vec![],
                },
            )
        });
        let queries: Vec<QueryRecord> = answered
            .chain((10..10 + lost).map(|i| query(i, Outcome::TimedOut)))
            .collect();
        let records: Vec<TraceRecord> = (10..10 + lost)
            .map(|i| TraceRecord {
                time_us: 0,
                client: SocketAddrV4::new(Ipv4Addr::new(10, 244, 0, 20), 1000 + i),
                server,
                id: i,
                name: None,
                qtype: None,
                verdict: Verdict::Dropped,
                endpoint: Some(Ipv4Addr::new(10, 244, 0, 10)),
                nat: None,
                confirmed: false,
                client_link: None,
                endpoint_link: None,
                latency_us: None,
                stages: StageTimes::default(),
                last_seen: Seen::Sent,
                retries: 0,
                drop: Some(Drop {
                    stage: "netfilter".to_owned(),
                    reason: "NETFILTER_DROP".to_owned(),
                    location: location.to_owned(),
                    backend: backend.map(str::to_owned),
                    backend_from: None,
                    table: None,
                    chain: None,
                    leg: Leg::QueryToPod,
                    at: "n/d0".to_owned(),
                    why: String::new(),
                }),
                icmp: None,
                conntrack: None,
            })
            .collect();
        let result = BatchResult {
            started: SystemTime::now(),
            sent: 10 + u32::from(lost),
            answered: 10,
            lost: u32::from(lost),
            bad_answers: 0,
            queries,
        };
        ProbeReport::new("c", server, &BatchSpec::default(), &result, None, &records)
    };
    let scenario = |name: &str, passed: bool, tier: &str, probe: ProbeReport| ScenarioResult {
        backend: Backend::Nft,
        scenario: name.to_owned(),
        passed,
        tier: tier.to_owned(),
        expected: String::new(),
        problems: vec![],
        probe,
        conntrack_delta: None,
        counters: None,
    };
    let doc = |kernel: &str, tier: &str, ms: f64, location: &str, backend, pod_down: bool| {
        let mut d = Document::new("validate").unwrap();
        d.kernel = kernel.to_owned();
        d.tier = Some(tier.to_owned());
        d.validate = Some(Validation {
            tier: tier.to_owned(),
            passed: pod_down,
            seconds: 1.0,
            scenarios: vec![
                scenario("healthy", true, tier, probe(ms, 0, "", None)),
                scenario("filter-drop", true, tier, probe(ms, 5, location, backend)),
                scenario("pod-down", pod_down, tier, probe(ms, 0, "", None)),
            ],
        });
        d
    };
    let running = doc(
        "6.18.0",
        "tracepoint",
        0.25,
        "nft_do_chain+0x3e8",
        Some("nf_tables"),
        true,
    );
    let mut candidate = doc(
        "6.1.0-50-amd64",
        "fentry",
        2.5,
        "nf_hook_slow+0x91",
        None,
        false,
    );
    candidate.vm = Some(VmRun::sample());
    let c = compare(
        Path::new("running.json"),
        &running,
        Path::new("candidate.json"),
        &candidate,
        &Thresholds::default(),
    );
    let text = c.text();
    for line in [
        "kernel: 6.18.0 -> 6.1.0-50-amd64",
        "tracer.tier: tracepoint -> fentry",
        "validate.tier: tracepoint -> fentry",
        "validate.nft.pod-down: pass -> FAIL",
        "validate.nft.filter-drop.drop[netfilter: NETFILTER_DROP @ nft_do_chain (nf_tables)]: gone (was 5)",
        "validate.nft.filter-drop.drop[netfilter: NETFILTER_DROP @ nf_hook_slow]: new (5)",
        "validate.nft.healthy.latency_p50_ms: 0.250 -> 2.500 ms (x10.00)",
        "validate.nft.healthy.latency_p99_ms: 1.000 -> 10.000 ms (x10.00)",
    ] {
        assert!(
            c.changes.iter().any(|c| c == line),
            "no {line:?} in\n{text}"
        );
    }
    assert!(
        text.contains("[VM: qemu tcg, 1 vCPU, kernel 6.1.0-50-amd64 (--kernel 6.1)]"),
        "{text}"
    );
    assert!(
        c.notes.iter().any(|n| n.contains("VM")),
        "says why latency is not judged: {text}"
    );
    // The VM's 10x latency is not a regression against the machine; the failing scenario is.
    assert_eq!(c.regressed(), vec!["validate.nft.pod-down"], "{text}");
    // Both from the machine: the same latency rise is judged.
    candidate.vm = None;
    let c = compare(
        Path::new("a"),
        &running,
        Path::new("b"),
        &candidate,
        &Thresholds {
            min_p99_increase_ms: 1.0,
            ..Thresholds::default()
        },
    );
    assert!(
        c.regressed()
            .contains(&"validate.nft.healthy.latency_p99_ms"),
        "{}",
        c.text()
    );
}
