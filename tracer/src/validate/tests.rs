use std::{
    net::{IpAddr, Ipv4Addr, SocketAddr, SocketAddrV4},
    time::SystemTime,
};

use super::*;
use crate::{
    flow::record::{QueryRecord as TraceRecord, Stage, Verdict},
    lab::{LabInfo, Pod},
    measure::{BatchResult, Outcome, RecordType, ResponseCode, SentQuery},
    probes::{
        plan::{Fate, Outcome as ProgramOutcome, Plan, Tier},
        session::Counters,
        table::{Hook, Stage as ProbeStage},
    },
    report::trace::TraceSummary,
};

const SERVICE: SocketAddrV4 = SocketAddrV4::new(Ipv4Addr::new(10, 96, 0, 10), 53);
const DNS0: Ipv4Addr = Ipv4Addr::new(10, 244, 0, 10);

fn lab() -> LabInfo {
    let pod = |name: &str, ip| Pod {
        name: name.to_owned(),
        netns: format!("t-{name}"),
        ip,
        host_ifname: format!("t{name}"),
    };
    LabInfo {
        prefix: "t".to_owned(),
        backend: Backend::Nft,
        proxy_mode: crate::lab::ProxyMode::Iptables,
        node_netns: "t-node".to_owned(),
        service_ip: *SERVICE.ip(),
        ip_family: crate::lab::IpFamily::Ipv4,
        dns_port: 53,
        endpoints: vec![
            pod("dns0", DNS0),
            pod("dns1", Ipv4Addr::new(10, 244, 0, 11)),
        ],
        clients: vec![pod("client0", Ipv4Addr::new(10, 244, 0, 20))],
        pods: vec![],
        faults: vec![],
        stale_source_port: None,
        nodelocal: None,
    }
}

/// `answered` queries answered and `lost` timed out, from source ports 1000 on.
fn batch(answered: u32, lost: u32) -> BatchResult {
    let query = |i: u32, outcome| SentQuery {
        id: i as u16,
        name: "kubernetes.default.svc.cluster.local".to_owned(),
        qtype: RecordType::A,
        source_port: 1000 + i as u16,
        sent_at: Duration::from_millis(u64::from(i) * 5),
        outcome,
    };
    let answer = || Outcome::Answered {
        latency: Duration::from_micros(300),
        rcode: ResponseCode::NoError,
        addresses: vec![],
    };
    BatchResult {
        started: SystemTime::now(),
        sent: answered + lost,
        answered,
        lost,
        bad_answers: 0,
        queries: (0..answered)
            .map(|i| query(i, answer()))
            .chain((answered..answered + lost).map(|i| query(i, Outcome::TimedOut)))
            .collect(),
    }
}

/// The trace record of query `i`, dropped at `stage` after DNAT to dns0.
fn dropped(i: u32, stage: Stage) -> TraceRecord {
    TraceRecord::dropped(i as u16, stage)
}

fn summary(queries: u64, answered: u64, plan: Option<Plan>) -> TraceSummary {
    TraceSummary {
        counters: Counters {
            queries,
            at_endpoint: queries,
            from_endpoint: answered,
            answered,
            ..Counters::default()
        },
        plan,
        ..TraceSummary::default()
    }
}

/// The problems of scenario `name` on this batch, summary and records.
fn check(
    name: &str,
    result: &BatchResult,
    summary: &TraceSummary,
    records: &[TraceRecord],
) -> Vec<String> {
    let all = scenarios(40);
    let sc = all.iter().find(|s| s.name == name).unwrap();
    let lab = lab();
    let report = ProbeReport::new(
        "t-client0",
        SERVICE.into(),
        &BatchSpec::default(),
        result,
        Some(summary),
        records,
    );
    let seen = Observed {
        lab: &lab,
        summary: Some(summary),
        records,
        report: &report,
        live: vec![DNS0.into(), IpAddr::from([10, 244, 0, 11])],
    };
    problems(sc, &seen)
}

// Scenario: the probe got every answer, but the TC programs saw nothing (they did not
// attach): every per-query check passes (nothing was lost), so only the dead-stage check
// can fail it.
#[test]
fn a_device_stage_that_saw_nothing_fails_the_scenario_and_is_named() {
    let healthy = batch(40, 0);
    let p = check("healthy", &healthy, &summary(0, 0, None), &[]);
    assert!(
        p.iter()
            .any(|p| p.starts_with("device stage saw 0 of 40 answered queries")),
        "{p:?}"
    );
    assert!(check("healthy", &healthy, &summary(40, 40, None), &[]).is_empty());
    assert!(
        check("healthy", &healthy, &summary(38, 37, None), &[]).is_empty(),
        "a few missed queries are not a dead stage"
    );
}

// Scenario: filter-drop lost queries that the tracer attributed, but not to netfilter.
#[test]
fn a_fault_whose_stage_recorded_nothing_names_the_stage() {
    let result = batch(20, 20);
    let records: Vec<TraceRecord> = (20..40).map(|i| dropped(i, Stage::Kernel)).collect();
    let p = check("filter-drop", &result, &summary(40, 20, None), &records);
    assert!(
        p.iter().any(|p| p
            == "netfilter stage recorded none of the 20 lost queries: the netfilter and drop programs did not attach or did not see them"),
        "{p:?}"
    );
    // With a plan, it says which of those programs attached.
    let drop_only = Plan::from_outcomes(vec![ProgramOutcome {
        program: "drop_kfree_skb",
        stage: ProbeStage::Drop,
        hook: Hook::Tracepoint,
        fate: Fate::Attached {
            to: "skb:kfree_skb".to_owned(),
        },
    }]);
    let p = check(
        "filter-drop",
        &result,
        &summary(40, 20, Some(drop_only)),
        &records,
    );
    assert!(
        p.iter()
            .any(|p| p.ends_with("lost queries: the drop programs attached but did not see them")),
        "{p:?}"
    );
    let records: Vec<TraceRecord> = (20..40).map(|i| dropped(i, Stage::Netfilter)).collect();
    let p = check("filter-drop", &result, &summary(40, 20, None), &records);
    assert!(p.is_empty(), "{p:?}");
}

// Scenario: on the fentry tier the NAT program attached but never fired.
#[test]
fn a_deep_tier_whose_nat_stage_saw_nothing_fails_healthy() {
    let plan = Plan::from_outcomes(vec![ProgramOutcome {
        program: "nat_manip_fexit",
        stage: ProbeStage::Nat,
        hook: Hook::Fexit,
        fate: Fate::Attached {
            to: "nf_nat_manip_pkt".to_owned(),
        },
    }]);
    assert_eq!(plan.tier, Tier::Fentry);
    let healthy = batch(40, 0);
    let answered = |nat: bool| -> Vec<TraceRecord> {
        (0..40)
            .map(|i| TraceRecord {
                verdict: Verdict::Answered,
                drop: None,
                nat: nat.then(|| SocketAddr::from((DNS0, 53))),
                ..dropped(i, Stage::Netfilter)
            })
            .collect()
    };
    let dead = summary(40, 40, Some(plan.clone()));
    let p = check("healthy", &healthy, &dead, &answered(false));
    assert!(
        p.iter().any(|p| p.starts_with("deep stages"))
            && p.iter().any(|p| p.starts_with("NAT stage")),
        "{p:?}"
    );
    let mut alive = summary(40, 40, Some(plan));
    alive.counters.deep_events = 120;
    assert!(check("healthy", &healthy, &alive, &answered(true)).is_empty());
}
