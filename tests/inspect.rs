//! Scenario tests of `tracer inspect` against the lab: the backend verdict for each backend and for
//! the mixed-backend fault, the DNS Service and both endpoints found from the rules, a full
//! conntrack table seen as usage and drops, a stale conntrack entry seen as stale, and inspect
//! leaving both backends' rulesets exactly as they were. Run as root, one at a time
//! (`--test-threads=1`): they change kernel state.

mod common;

use std::{
    net::{IpAddr, Ipv4Addr, SocketAddr},
    process::Command,
};

use common::{LabGuard, batch};
use tracer::{
    lab::FaultName,
    netns,
    node::{
        self, Backend, Report,
        backend::Kind,
        inspect::{Finding, Severity},
    },
};

fn inspect(lab: &LabGuard) -> Report {
    node::inspect(Some(&netns::named(&lab.info.node_netns))).expect("inspect the lab's node")
}

fn finding<'a>(report: &'a Report, id: &str) -> &'a Finding {
    report
        .findings
        .iter()
        .find(|f| f.id == id)
        .unwrap_or_else(|| panic!("no {id} finding in {:#?}", report.findings))
}

/// Both backends' rulesets in the node namespace, without counters or timestamps.
fn rulesets(lab: &LabGuard) -> (String, String) {
    let save = |program: &'static str| {
        netns::run_in(&netns::named(&lab.info.node_netns), move || {
            Command::new(program).output()
        })
        .expect("enter the node namespace")
        .unwrap_or_else(|e| panic!("run {program}: {e}"))
    };
    let strip = |out: std::process::Output| {
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter(|l| !l.starts_with('#'))
            .map(|l| match (l.starts_with(':'), l.rfind(" [")) {
                (true, Some(i)) => &l[..i],
                _ => l,
            })
            .collect::<Vec<_>>()
            .join("\n")
    };
    (
        strip(save("iptables-legacy-save")),
        strip(save("iptables-nft-save")),
    )
}

fn legacy_tables(lab: &LabGuard) -> String {
    netns::run_in(&netns::named(&lab.info.node_netns), || {
        std::fs::read_to_string(node::backend::IP_TABLES_NAMES).unwrap_or_default()
    })
    .expect("enter the node namespace")
}

/// The lab's DNS Service with both endpoints, found from the rules alone.
fn assert_lab_service(report: &Report) {
    let svc = report.dns_service.as_ref().expect("DNS Service found");
    assert_eq!((svc.ip, svc.port), (IpAddr::from([10, 96, 0, 10]), 53));
    let endpoints = [
        SocketAddr::from((Ipv4Addr::new(10, 244, 0, 10), 53)),
        SocketAddr::from((Ipv4Addr::new(10, 244, 0, 11), 53)),
    ];
    assert_eq!(svc.endpoints, endpoints);
}

/// Scenario: a healthy lab in each backend gives that backend's verdict, the Service and its
/// endpoints, DNAT counters that count the queries sent, and no error finding; inspecting twice
/// changes neither backend's ruleset and registers no legacy table.
fn healthy(prefix: &str, backend: Backend) {
    let lab = LabGuard::up(prefix, backend);
    let before = rulesets(&lab);
    let tables_before = legacy_tables(&lab);
    let first = inspect(&lab);
    let (kind, name) = match backend {
        Backend::Nft => (Kind::Nft, "nft"),
        Backend::Legacy => (Kind::Legacy, "legacy"),
    };
    assert_eq!(
        (first.backends.verdict.kind, first.backends.verdict.primary),
        (kind, Some(backend))
    );
    assert_eq!(first.backends.verdict.stale, None);
    assert_eq!(first.backends.verdict.to_string(), name);
    assert_lab_service(&first);
    // inspect loads no eBPF: the tier comes from the feature checks.
    assert!(!first.facts.tier_loaded, "{:?}", first.facts.tier_reason);
    let errors: Vec<_> = first
        .findings
        .iter()
        .filter(|f| f.severity == Severity::Error)
        .collect();
    assert!(errors.is_empty(), "{errors:#?}");

    let result = lab.probe(&batch(20));
    assert_eq!(result.answered, 20, "{result:?}");
    // Each query comes from a fresh socket; a port the kernel happened to hand out twice is one flow.
    let flows = result
        .queries
        .iter()
        .map(|q| q.source_port)
        .collect::<std::collections::BTreeSet<_>>()
        .len();
    let second = inspect(&lab);
    let deltas = node::counter_deltas(&first.counters, &second.counters);
    let dnat: u64 = deltas
        .iter()
        .filter(|c| c.rule.contains("DNAT"))
        .map(|c| c.packets)
        .sum();
    assert_eq!(dnat, flows as u64, "one DNAT per new flow: {deltas:#?}");
    assert!(deltas.iter().all(|c| c.backend == backend), "{deltas:#?}");
    let c = &second.conntrack;
    assert!(
        c.dns_entries - c.dns_unreplied >= flows,
        "every flow's entry, replied: {c:?}"
    );
    assert!(c.dns_stale.is_empty(), "{c:?}");

    assert_eq!(rulesets(&lab), before, "inspect changed a ruleset");
    assert_eq!(
        legacy_tables(&lab),
        tables_before,
        "inspect registered a legacy table"
    );
}

#[test]
fn healthy_nft_lab() {
    healthy("tin1", Backend::Nft);
}

#[test]
fn healthy_legacy_lab() {
    healthy("tin2", Backend::Legacy);
}

/// Scenario: a conntrack event subscription in the node namespace sees one NEW entry per query
/// flow, each with its DNAT: original destination the Service IP, reply source a DNS pod.
#[test]
fn conntrack_events_show_the_dnat_of_each_query() {
    let lab = LabGuard::up("tin7", Backend::Nft);
    let node_ns = netns::named(&lab.info.node_netns);
    let mut events = netns::run_in(&node_ns, node::conntrack::Events::subscribe)
        .expect("enter the node namespace")
        .expect("subscribe to conntrack events");
    events.set_nonblocking(true).unwrap();
    let result = lab.probe(&batch(10));
    assert_eq!(result.answered, 10, "{result:?}");
    let ports: std::collections::BTreeSet<u16> =
        result.queries.iter().map(|q| q.source_port).collect();
    // The answers came back, so every NEW event is already queued on the socket.
    let mut new = Vec::new();
    loop {
        let batch = events.recv().unwrap();
        if batch.is_empty() {
            break;
        }
        new.extend(
            batch
                .into_iter()
                .filter(|e| e.kind == node::conntrack::EventKind::New),
        );
    }
    assert_eq!(events.lost(), 0);
    let service = IpAddr::V4(Ipv4Addr::new(10, 96, 0, 10));
    let dns: Vec<_> = new
        .iter()
        .map(|e| &e.entry)
        .filter(|e| e.orig.dst == service && e.orig.dport == 53)
        .collect();
    let seen: std::collections::BTreeSet<u16> = dns.iter().map(|e| e.orig.sport).collect();
    assert_eq!(seen, ports, "one NEW event per query flow: {dns:#?}");
    let pods = [
        IpAddr::V4(Ipv4Addr::new(10, 244, 0, 10)),
        IpAddr::V4(Ipv4Addr::new(10, 244, 0, 11)),
    ];
    assert!(
        dns.iter().all(|e| e.dnat() && pods.contains(&e.reply.src)),
        "{dns:#?}"
    );
}

/// Scenario: stale kube-proxy rules in the other backend make the verdict `mixed`, with the
/// current backend and the stale one named, an error finding, and the stale DNAT target shown.
#[test]
fn mixed_backend_fault_is_mixed() {
    for (prefix, backend, stale) in [
        ("tin3", Backend::Nft, Backend::Legacy),
        ("tin4", Backend::Legacy, Backend::Nft),
    ] {
        let mut lab = LabGuard::up(prefix, backend);
        lab.fault(FaultName::MixedBackend, None);
        let before = rulesets(&lab);
        let report = inspect(&lab);
        let v = report.backends.verdict;
        assert_eq!(
            (v.kind, v.primary, v.stale),
            (Kind::Mixed, Some(backend), Some(stale)),
            "{backend:?}"
        );
        let f = finding(&report, "iptables-mixed");
        assert_eq!(f.severity, Severity::Error);
        assert!(
            f.evidence
                .iter()
                .any(|e| e.to_string().contains("10.244.0.99:53")),
            "{f:#?}"
        );
        // The Service trace uses comes from the current backend, not the stale one.
        assert_lab_service(&report);
        assert_eq!(rulesets(&lab), before, "inspect changed a ruleset");
    }
}

/// Scenario: a full conntrack table shows as 100 % usage, an error finding, and drops that rise
/// with every query sent.
#[test]
fn conntrack_full_shows_usage_and_drops() {
    let mut lab = LabGuard::up("tin5", Backend::Nft);
    lab.fault(FaultName::ConntrackFull, None);
    let before = inspect(&lab);
    let result = lab.probe(&batch(10));
    assert_eq!(result.answered, 0, "{result:?}");
    let after = inspect(&lab);
    assert!(
        after.conntrack.table.count >= after.conntrack.table.max,
        "{:?}",
        after.conntrack.table
    );
    assert!(after.conntrack.usage_percent >= 100.0);
    assert_eq!(finding(&after, "conntrack-full").severity, Severity::Error);
    assert!(finding(&after, "conntrack-drops").title.contains("dropped"));
    let drops = after.conntrack.total.delta(&before.conntrack.total).drop;
    assert!(
        drops >= 10,
        "each of 10 queries dropped at least once, saw {drops}"
    );
}

/// Scenario: after an endpoint goes away, the client's conntrack entry still sends it to the
/// removed pod: inspect counts it as stale and names the gone address.
#[test]
fn stale_conntrack_shows_stale_entries() {
    let mut lab = LabGuard::up("tin6", Backend::Nft);
    let info = lab.fault(FaultName::StaleConntrack, Some(0)).clone();
    let port = info
        .stale_source_port
        .expect("the fault names its client port");
    let report = inspect(&lab);
    let svc = report.dns_service.as_ref().unwrap();
    assert_eq!(
        svc.endpoint_ips(),
        [Ipv4Addr::new(10, 244, 0, 11)],
        "dns0's endpoint removed"
    );
    let stale = &report.conntrack.dns_stale;
    assert_eq!(stale.len(), 1, "{stale:#?}");
    assert_eq!(
        stale[0].reply.src,
        IpAddr::V4(Ipv4Addr::new(10, 244, 0, 10))
    );
    assert_eq!(stale[0].orig.sport, port);
    let f = finding(&report, "conntrack-stale-dns");
    assert_eq!(f.severity, Severity::Error);
    assert!(f.title.contains("10.244.0.10"), "{f:#?}");
}
