//! kube-proxy's nftables mode in the lab (`tracer lab up --proxy-mode nftables`): inspect finds
//! the mode, the DNS Service and its endpoints in the `ip kube-proxy` table; trace follows every
//! query through the verdict maps' DNAT and follows endpoint changes in the table; no-endpoints
//! and filter-drop are placed where they happen. Run as root, one at a time
//! (`--test-threads=1`): they change kernel state.

mod common;

use std::{
    net::{IpAddr, Ipv4Addr, SocketAddr},
    time::{Duration, Instant},
};

use common::{LabGuard, batch, in_node, leftovers, tier};
use tracer::{
    flow::record::{Leg, QueryRecord, Stage, Verdict},
    lab::{self, FaultName, ProxyMode},
    measure::BatchSpec,
    netns,
    node::{self, Backend, kubeproxy},
    trace::{Settings, Tracer},
};

const DNS0: IpAddr = IpAddr::V4(Ipv4Addr::new(10, 244, 0, 10));
const DNS1: IpAddr = IpAddr::V4(Ipv4Addr::new(10, 244, 0, 11));

/// Lab `prefix` with kube-proxy in nftables mode, one client pod.
fn nftables_lab(prefix: &str) -> LabGuard {
    let shape = lab::Shape {
        proxy_mode: ProxyMode::Nftables,
        ..lab::Shape::default()
    };
    let info = lab::up_with(prefix, &shape)
        .unwrap_or_else(|e| panic!("lab up {prefix} --proxy-mode nftables: {e}"));
    LabGuard { info }
}

struct Traced {
    records: Vec<QueryRecord>,
    sent: u32,
    lost: u32,
}

/// Starts the tracer on the lab, sends `spec` from client0, waits out the timeout, stops.
fn traced(lab: &LabGuard, spec: &BatchSpec, all: bool) -> Traced {
    let settings = Settings {
        tier: tier(),
        all,
        timeout: Duration::from_secs(1),
        ..Settings::default()
    };
    let tracer = common::trace_lab(&lab.info, &settings);
    let result = lab.probe(spec);
    std::thread::sleep(settings.timeout + Duration::from_millis(500));
    let (records, _summary) = tracer.finish().expect("finish");
    Traced {
        records,
        sent: result.sent,
        lost: result.lost,
    }
}

fn failed(t: &Traced) -> Vec<&QueryRecord> {
    t.records
        .iter()
        .filter(|r| r.verdict != Verdict::Answered)
        .collect()
}

// Scenario: kube-proxy in nftables mode, healthy; inspect reads the mode, the Service and both
// endpoints from the `ip kube-proxy` table, and the lab leaves no iptables rules and nothing
// behind when it goes down.
#[test]
fn inspect_finds_the_nftables_mode_service_and_endpoints() {
    {
        let lab = nftables_lab("tpm1");
        assert_eq!(lab.info.proxy_mode, ProxyMode::Nftables);
        let tables = in_node(&lab, &["nft", "list", "tables"]);
        assert!(tables.contains("table ip kube-proxy"), "{tables}");
        assert!(
            !tables.contains("table ip nat") && !tables.contains("table ip filter"),
            "nftables mode writes no iptables rules: {tables}"
        );
        let report = node::inspect(Some(&netns::named(&lab.info.node_netns))).expect("inspect");
        assert_eq!(report.proxy_mode, kubeproxy::ProxyMode::Nftables);
        let svc = report.dns_service.expect("the DNS Service");
        assert_eq!(
            (svc.ip, svc.port),
            (IpAddr::V4(lab::SERVICE_IP), lab::DNS_PORT)
        );
        assert_eq!(
            svc.endpoints,
            [SocketAddr::new(DNS0, 53), SocketAddr::new(DNS1, 53)]
        );
        assert_eq!(
            svc.svc_chain.as_deref(),
            Some("service-FY5PMXPG-kube-system/kube-dns/udp/dns")
        );
        assert!(!svc.rejects);
        // What trace uses as its Service.
        let for_trace = node::dns_service(Some(&netns::named(&lab.info.node_netns)))
            .expect("read the rules")
            .expect("the DNS Service");
        assert_eq!(for_trace.endpoints, svc.endpoints);
        // Faults that are iptables rules say they do not apply.
        for fault in [FaultName::PolicyDrop, FaultName::MixedBackend] {
            match lab::fault("tpm1", fault, None) {
                Err(lab::Error::NotInMode { .. }) => {}
                other => panic!("{fault:?} in nftables mode: {other:?}"),
            }
        }
    }
    assert_eq!(leftovers("tpm1"), Vec::<String>::new());
    let legacy = lab::Shape {
        backend: Backend::Legacy,
        proxy_mode: ProxyMode::Nftables,
        ..lab::Shape::default()
    };
    match lab::up_with("tpm1", &legacy) {
        Err(lab::Error::ModeBackend) => {}
        other => panic!("nftables mode with the legacy backend: {other:?}"),
    }
    let ipv6 = lab::Shape {
        proxy_mode: ProxyMode::Nftables,
        ip_family: lab::IpFamily::Ipv6,
        ..lab::Shape::default()
    };
    match lab::up_with("tpm1", &ipv6) {
        Err(lab::Error::ModeFamily) => {}
        other => panic!("nftables mode over IPv6: {other:?}"),
    }
    assert_eq!(leftovers("tpm1"), Vec::<String>::new());
}

// Scenario: healthy node in nftables mode; every query answered, each DNATed by the service
// chain's numgen vmap to one of the two pods, and both pods used.
#[test]
fn healthy_nftables_mode_every_query_answered_through_dnat() {
    let lab = nftables_lab("tpm2");
    let t = traced(&lab, &batch(40), true);
    assert_eq!(
        (t.sent, t.lost),
        (40, 0),
        "the healthy lab answers every query"
    );
    assert_eq!(t.records.len(), 40, "--all gives a record per query");
    assert!(failed(&t).is_empty(), "{:?}", failed(&t));
    for r in &t.records {
        assert_eq!(r.server.ip(), lab.info.service_ip, "sent to the Service IP");
        assert!(
            matches!(r.endpoint, Some(DNS0 | DNS1)),
            "DNATed to a pod: {r:?}"
        );
    }
    // Both endpoints get queries (each of 40 is a coin flip).
    for pod in [DNS0, DNS1] {
        assert!(
            t.records.iter().any(|r| r.endpoint == Some(pod)),
            "no query DNATed to {pod}"
        );
    }
}

// Scenario: the Service has no endpoints in nftables mode: its element in no-endpoint-services
// sends queries to reject-chain in filter-forward, before any DNAT.
#[test]
fn no_endpoints_in_nftables_mode_is_rejected_before_dnat() {
    let mut lab = nftables_lab("tpm3");
    lab.fault(FaultName::NoEndpoints, None);
    let svc = node::dns_service(Some(&netns::named(&lab.info.node_netns)))
        .expect("read the rules")
        .expect("the DNS Service");
    assert!(svc.rejects && svc.endpoints.is_empty(), "{svc:?}");
    let t = traced(&lab, &batch(20), false);
    assert_eq!(t.lost, 20);
    let failed = failed(&t);
    assert_eq!(failed.len(), 20, "every query has a record");
    for r in failed {
        assert_eq!(r.endpoint, None, "never DNATed: {r:?}");
        let d = r.drop.as_ref().expect("the reject drops the packet");
        assert_eq!(
            (d.stage, d.leg),
            (Stage::Netfilter, Leg::QueryBeforeDnat),
            "{d:?}"
        );
        match &r.icmp {
            Some(icmp) => assert_eq!(
                (r.verdict, icmp.what.as_str()),
                (Verdict::Rejected, "port unreachable")
            ),
            None => assert!(
                d.why.contains("REJECT for a Service without endpoints"),
                "{d:?}"
            ),
        }
    }
    lab.clear();
    let healthy = lab.probe(&batch(10));
    assert_eq!(healthy.lost, 0, "fault clear restores the endpoints");
}

// Scenario: a DROP for DNS to dns0 in the forward hook (the lab's fault table) in nftables mode;
// the queries balanced to dns0 die at netfilter after DNAT, the others are answered.
#[test]
fn filter_drop_in_nftables_mode_is_a_netfilter_drop_after_dnat() {
    let mut lab = nftables_lab("tpm2");
    lab.fault(FaultName::FilterDrop, Some(0));
    let t = traced(&lab, &batch(40), false);
    assert!(
        t.lost > 0 && t.lost < 40,
        "one of two endpoints drops: lost {}",
        t.lost
    );
    let failed = failed(&t);
    assert_eq!(failed.len() as u32, t.lost, "every lost query has a record");
    for r in failed {
        assert_eq!(r.verdict, Verdict::Dropped, "{r:?}");
        assert_eq!(
            r.endpoint,
            Some(DNS0),
            "names the pod it was sent to: {r:?}"
        );
        let d = r.drop.as_ref().expect("a drop");
        assert_eq!(
            (d.stage, d.leg),
            (Stage::Netfilter, Leg::QueryToPod),
            "{d:?}"
        );
    }
    lab.clear();
    let tables = in_node(&lab, &["nft", "list", "tables"]);
    assert!(!tables.contains("tracer-lab-fault"), "{tables}");
    assert_eq!(
        lab.probe(&batch(10)).lost,
        0,
        "fault clear removes the drop"
    );
}

/// Polls `tracer` for `within`, keeping the records it completes.
fn poll_for(tracer: &mut Tracer, records: &mut Vec<QueryRecord>, within: Duration) {
    let deadline = Instant::now() + within;
    while Instant::now() < deadline {
        records.extend(tracer.poll().expect("poll"));
        std::thread::sleep(Duration::from_millis(50));
    }
}

// Scenario: the tracer running on a node in nftables mode; dns0 is replaced by a pod at a new
// address (endpoint-churn), which rewrites kube-proxy's table. The tracer follows the change
// from the table (nf_tables notifications) and new queries are DNATed to the current endpoints.
#[test]
fn endpoint_churn_in_nftables_mode_is_followed_from_the_table() {
    let mut lab = nftables_lab("tpm3");
    let settings = Settings {
        tier: tier(),
        all: true,
        timeout: Duration::from_secs(1),
        ..Settings::default()
    };
    let mut tracer = common::trace_lab(&lab.info, &settings);
    let mut records = Vec::new();
    lab.fault(FaultName::EndpointChurn, Some(0));
    poll_for(&mut tracer, &mut records, Duration::from_secs(1));
    let result = lab.probe(&batch(20));
    poll_for(&mut tracer, &mut records, Duration::from_millis(1500));
    let (rest, summary) = tracer.finish().expect("finish");
    records.extend(rest);
    assert_eq!(result.lost, 0, "the Service's endpoints answer");
    assert_eq!(summary.endpoint_changes.len(), 1, "{summary:#?}");
    let change = &summary.endpoint_changes[0];
    let replacement = IpAddr::V4(lab::REPLACEMENT_IPS[0]);
    assert_eq!(
        (change.removed.clone(), change.added.clone()),
        (vec![DNS0], vec![replacement])
    );
    assert_eq!(records.len(), 20, "a record per query: {records:#?}");
    for r in &records {
        assert_eq!(r.verdict, Verdict::Answered, "{r:?}");
        assert!(
            r.endpoint == Some(DNS1) || r.endpoint == Some(replacement),
            "DNATed to a current endpoint: {r:?}"
        );
    }
}
