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
        net::{IpAddr, SocketAddr},
        time::SystemTime,
    };

    use crate::{
        measure::{BatchResult, BatchSpec},
        node::Backend,
        probes::plan::Tier,
        report::{
            document::ProbeReport,
            validation::{ScenarioResult, Validation},
        },
    };
    let server = SocketAddr::new(IpAddr::V4(std::net::Ipv4Addr::new(10, 96, 0, 10)), 53);
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
        tier: Some(Tier::Tracepoint),
        expected: String::new(),
        problems: vec![],
        probe: probe(lost),
        conntrack_delta: None,
        counters: None,
    };
    let doc = |passed: bool, lost: u32| {
        let mut d = Document::new("validate").unwrap();
        d.validate = Some(Validation {
            tier: Some(Tier::Tracepoint),
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
        net::{IpAddr, SocketAddr},
        time::{Duration, SystemTime},
    };

    use crate::{
        flow::record::{NetfilterBackend, QueryRecord as TraceRecord, Stage},
        measure::{BatchResult, BatchSpec, Outcome, RecordType, ResponseCode, SentQuery},
        node::Backend,
        probes::plan::Tier,
        report::{
            document::{ProbeReport, VmRun},
            validation::{ScenarioResult, Validation},
        },
    };
    let server = SocketAddr::new(IpAddr::V4(std::net::Ipv4Addr::new(10, 96, 0, 10)), 53);
    let query = |i: u16, outcome| SentQuery {
        id: i,
        name: "kubernetes.default.svc.cluster.local".to_owned(),
        qtype: RecordType::A,
        source_port: 1000 + i,
        sent_at: Duration::from_millis(u64::from(i)),
        outcome,
    };
    // 10 queries answered in `ms` (the last one 4x slower), then `lost` dropped at `location`.
    let probe = |ms: f64, lost: u16, location: &str, backend: Option<NetfilterBackend>| {
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
        let queries: Vec<SentQuery> = answered
            .chain((10..10 + lost).map(|i| query(i, Outcome::TimedOut)))
            .collect();
        let records: Vec<TraceRecord> = (10..10 + lost)
            .map(|i| {
                let mut r = TraceRecord::dropped(i, Stage::Netfilter);
                let d = r.drop.as_mut().unwrap();
                d.location = location.to_owned();
                d.backend = backend;
                r
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
    let scenario = |name: &str, passed: bool, tier: Tier, probe: ProbeReport| ScenarioResult {
        backend: Backend::Nft,
        scenario: name.to_owned(),
        passed,
        tier: Some(tier),
        expected: String::new(),
        problems: vec![],
        probe,
        conntrack_delta: None,
        counters: None,
    };
    let doc = |kernel: &str, tier: Tier, ms: f64, location: &str, backend, pod_down: bool| {
        let mut d = Document::new("validate").unwrap();
        d.kernel = kernel.to_owned();
        d.tier = Some(tier);
        d.validate = Some(Validation {
            tier: Some(tier),
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
        Tier::Tracepoint,
        0.25,
        "nft_do_chain+0x3e8",
        Some(NetfilterBackend::NfTables),
        true,
    );
    let mut candidate = doc(
        "6.1.0-50-amd64",
        Tier::Fentry,
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

/// Figures about failed queries are named after their typed cause: a report written before
/// `Seen` had a name ("no drop seen (last seen: AtEndpoint)") and one written now
/// ("... at_endpoint") have the same figure, so nothing changed between them.
#[test]
fn a_cause_names_one_figure_in_reports_old_and_new() {
    use crate::{
        flow::record::{QueryRecord as TraceRecord, Seen, Stage, Verdict},
        report::trace::TraceSummary,
    };
    let mut summary = TraceSummary::default();
    let mut r = TraceRecord::dropped(1, Stage::Netfilter);
    summary.add(&r);
    r.drop = None;
    r.verdict = Verdict::Unanswered;
    r.last_seen = Seen::AtEndpoint;
    summary.add(&r);
    let mut new = Document::new("trace").unwrap();
    new.trace = Some(summary);
    let mut old = serde_json::to_value(&new).unwrap();
    let by_cause = old["trace"]["by_cause"].as_object_mut().unwrap();
    let n = by_cause
        .remove("no drop seen (last seen: at_endpoint)")
        .expect("the new key");
    by_cause.insert("no drop seen (last seen: AtEndpoint)".to_owned(), n);
    let old = Document::parse(Path::new("old.json"), &old.to_string()).unwrap();
    let p = Path::new("x.json");
    let c = compare(p, &old, p, &new, &Thresholds::default());
    assert!(c.changes.is_empty(), "{}", c.text());
    let names: Vec<&str> = c.figures.iter().map(|f| f.name.as_str()).collect();
    for name in [
        "trace.drops[netfilter: NETFILTER_DROP @ nft_do_chain]",
        "trace.drops[no drop seen (last seen: at_endpoint)]",
    ] {
        assert!(names.contains(&name), "no {name} in {names:?}");
    }
    assert!(
        c.figures
            .iter()
            .filter(|f| f.name.starts_with("trace."))
            .all(|f| f.group == "trace")
    );
}

/// How a lost query's death names a validate figure: its drop with the backend told, its ICMP
/// error, how far it was seen, or no record.
#[test]
fn died_at_names_drops_icmp_errors_and_the_rest() {
    use crate::flow::record::{Icmp, Leg, NetfilterBackend, QueryRecord as TraceRecord, Stage};

    use super::figures::died_at;
    let names = |r: Option<&TraceRecord>| -> Vec<String> {
        died_at(r).iter().map(ToString::to_string).collect()
    };
    let mut r = TraceRecord::dropped(1, Stage::Netfilter);
    r.drop.as_mut().unwrap().backend = Some(NetfilterBackend::NfTables);
    r.icmp = Some(Icmp {
        what: "port unreachable".to_owned(),
        by: "n/d0".to_owned(),
        leg: Leg::QueryBeforeDnat,
    });
    assert_eq!(
        names(Some(&r)),
        [
            "drop[netfilter: NETFILTER_DROP @ nft_do_chain (nf_tables)]",
            "icmp[port unreachable]"
        ]
    );
    r.drop = None;
    r.icmp = None;
    assert_eq!(names(Some(&r)), ["[no drop seen (last seen: sent)]"]);
    assert_eq!(names(None), ["not seen by the tracer"]);
}
