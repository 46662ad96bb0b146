//! IPv6 and dual-stack DNS through the lab (`lab up --ip-family ipv6|dual`), on each backend:
//! queries to the IPv6 Service IP are followed across kube-proxy's ip6tables DNAT and attributed
//! to the pod that served them, and each IPv6 loss is placed at its stage. Run as root, one test
//! at a time (`--test-threads=1`).

mod common;

use std::{
    net::{IpAddr, SocketAddr},
    time::Duration,
};

use common::{BACKENDS, batch, tier};
use tracer::{
    flow::record::{Leg, QueryRecord, Stage, Verdict},
    lab::{self, FaultName, IpFamily, LabInfo, SERVICE_IP6},
    measure::{self, BatchSpec},
    netns,
    node::{self, Backend, inspect::Severity},
    trace::Settings,
};

/// A lab of one family, down when dropped (also on panic).
struct Lab6 {
    info: LabInfo,
}

impl Lab6 {
    fn up(prefix: &str, backend: Backend, family: IpFamily) -> Self {
        let shape = lab::Shape {
            backend,
            ip_family: family,
            ..lab::Shape::default()
        };
        let info = lab::up_with(prefix, &shape)
            .unwrap_or_else(|e| panic!("lab up {prefix} {family:?}: {e}"));
        Self { info }
    }

    fn fault(&mut self, name: FaultName, pod: Option<u8>) {
        lab::fault(&self.info.prefix, name, pod).unwrap_or_else(|e| panic!("fault {name:?}: {e}"));
    }

    /// The IPv6 address of DNS pod `i`.
    fn dns6(&self, i: usize) -> IpAddr {
        lab::pod_ip6(self.info.endpoints[i].ip).into()
    }

    /// The IPv6 address of client0.
    fn client6(&self) -> IpAddr {
        lab::pod_ip6(self.info.clients[0].ip).into()
    }
}

impl Drop for Lab6 {
    fn drop(&mut self) {
        if let Err(e) = lab::down(&self.info.prefix) {
            eprintln!("lab down {}: {e}", self.info.prefix);
        }
    }
}

struct Traced {
    records: Vec<QueryRecord>,
    /// (sent, lost) per server asked.
    sent_lost: Vec<(u32, u32)>,
    queries: u64,
    answered: u64,
}

impl Traced {
    fn failed(&self) -> Vec<&QueryRecord> {
        self.records
            .iter()
            .filter(|r| r.verdict != Verdict::Answered)
            .collect()
    }
}

/// Traces the lab while client0 sends `spec` to each of `servers` in turn.
fn traced(lab: &Lab6, servers: &[IpAddr], spec: &BatchSpec, all: bool) -> Traced {
    let settings = Settings {
        tier: tier(),
        all,
        timeout: Duration::from_secs(1),
        ..Settings::default()
    };
    let tracer = common::trace_lab(&lab.info, &settings);
    let client = &lab.info.clients[0].netns;
    let sent_lost = servers
        .iter()
        .map(|ip| {
            let server = SocketAddr::new(*ip, lab.info.dns_port);
            let r = measure::query_batch(Some(client), server, spec).expect("query batch");
            (r.sent, r.lost)
        })
        .collect();
    std::thread::sleep(settings.timeout + Duration::from_millis(500));
    let (records, summary) = tracer.finish().expect("finish");
    Traced {
        records,
        sent_lost,
        queries: summary.counters.queries,
        answered: summary.counters.answered,
    }
}

/// The failed queries an ICMPv6 error was seen for, at least one (the first error is not
/// rate-limited): each rejected with port unreachable, on `leg`, seen where `by` accepts.
fn assert_rejected(backend: Backend, failed: &[&QueryRecord], leg: Leg, by: impl Fn(&str) -> bool) {
    let rejected: Vec<_> = failed.iter().filter(|r| r.icmp.is_some()).collect();
    assert!(!rejected.is_empty(), "{backend:?}: no ICMPv6 error seen");
    for r in rejected {
        let i = r.icmp.as_ref().unwrap();
        assert_eq!(r.verdict, Verdict::Rejected, "{r:?}");
        assert_eq!((i.what.as_str(), i.leg), ("port unreachable", leg), "{i:?}");
        assert!(by(&i.by), "{i:?}");
    }
}

fn service6() -> IpAddr {
    SERVICE_IP6.into()
}

// Scenario: healthy IPv6 lab; every query to the IPv6 Service IP is answered, and each record
// names the IPv6 Service, the IPv6 client and the DNS pod (by its IPv6 address) that served it.
#[test]
fn ipv6_healthy_queries_are_answered_and_attributed_to_the_serving_pod() {
    for backend in BACKENDS {
        let lab = Lab6::up("tv61", backend, IpFamily::Ipv6);
        assert_eq!(lab.info.client_service_ip(), service6());
        let t = traced(&lab, &[service6()], &batch(30), true);
        assert_eq!(t.sent_lost, [(30, 0)], "{backend:?}: every query answered");
        assert_eq!(
            (t.queries, t.answered),
            (30, 30),
            "{backend:?}: kernel counts"
        );
        assert!(t.failed().is_empty(), "{backend:?}: {:?}", t.failed());
        assert_eq!(
            t.records.len(),
            30,
            "{backend:?}: --all, a record per query"
        );
        let pods = [lab.dns6(0), lab.dns6(1)];
        for r in &t.records {
            assert_eq!(r.server.ip(), service6(), "{r:?}");
            assert_eq!(r.client.ip(), lab.client6(), "{r:?}");
            assert!(
                r.endpoint.is_some_and(|e| pods.contains(&e)),
                "DNATed to a DNS pod's IPv6 address: {r:?}"
            );
            assert!(
                r.stages.to_endpoint_us.is_some() && r.stages.back_us.is_some(),
                "{r:?}"
            );
        }
    }
}

// Scenario: a DROP in ip6tables filter FORWARD for DNS to dns0's IPv6 address: the queries
// DNATed to it die in netfilter after DNAT, and name that pod.
#[test]
fn ipv6_filter_drop_is_a_netfilter_drop_after_dnat() {
    for backend in BACKENDS {
        let mut lab = Lab6::up("tv62", backend, IpFamily::Ipv6);
        lab.fault(FaultName::FilterDrop, Some(0));
        let t = traced(&lab, &[service6()], &batch(40), false);
        let (_, lost) = t.sent_lost[0];
        assert!(
            lost > 0 && lost < 40,
            "{backend:?}: one of two pods drops: lost {lost}"
        );
        let failed = t.failed();
        assert_eq!(
            failed.len() as u32,
            lost,
            "{backend:?}: a record per lost query"
        );
        for r in failed {
            assert_eq!(r.verdict, Verdict::Dropped, "{r:?}");
            assert_eq!(r.server.ip(), service6(), "{r:?}");
            assert_eq!(r.endpoint, Some(lab.dns6(0)), "names the pod: {r:?}");
            let d = r.drop.as_ref().expect("a drop");
            assert_eq!(
                (d.stage, d.leg),
                (Stage::Netfilter, Leg::QueryToPod),
                "{d:?}"
            );
        }
    }
}

// Scenario: no endpoints: kube-proxy's ip6tables REJECT refuses every IPv6 query before DNAT.
#[test]
fn ipv6_no_endpoints_is_rejected_before_dnat() {
    for backend in BACKENDS {
        let mut lab = Lab6::up("tv62", backend, IpFamily::Ipv6);
        lab.fault(FaultName::NoEndpoints, None);
        let t = traced(&lab, &[service6()], &batch(20), false);
        assert_eq!(t.sent_lost, [(20, 20)], "{backend:?}");
        let failed = t.failed();
        assert_eq!(failed.len(), 20, "{backend:?}: a record per query");
        for r in &failed {
            assert_eq!(r.endpoint, None, "never DNATed: {r:?}");
            let d = r.drop.as_ref().expect("the REJECT drops the packet");
            assert_eq!(
                (d.stage, d.leg),
                (Stage::Netfilter, Leg::QueryBeforeDnat),
                "{d:?}"
            );
        }
        // The REJECT's ICMPv6 errors that left the node (the rest are rate-limited) are taken
        // off the client's link.
        assert_rejected(backend, &failed, Leg::QueryBeforeDnat, |by| {
            by.starts_with("the node (seen reaching the client at tv62-node/")
        });
    }
}

// Scenario: the DNS server in dns0 stopped: IPv6 queries DNATed to it hit a closed port inside
// the pod (`__udp6_lib_rcv`).
#[test]
fn ipv6_pod_down_is_no_socket_in_the_pod() {
    for backend in BACKENDS {
        let mut lab = Lab6::up("tv63", backend, IpFamily::Ipv6);
        lab.fault(FaultName::PodDown, Some(0));
        let t = traced(&lab, &[service6()], &batch(40), false);
        let (_, lost) = t.sent_lost[0];
        assert!(lost > 0 && lost < 40, "{backend:?}: lost {lost}");
        assert_eq!(t.failed().len() as u32, lost, "{backend:?}");
        for r in t.failed() {
            assert_eq!(r.endpoint, Some(lab.dns6(0)), "{r:?}");
            let d = r.drop.as_ref().expect("a drop");
            assert_eq!(d.stage, Stage::Socket, "{d:?}");
            assert!(d.at.starts_with("tv63-dns0/"), "inside the pod: {d:?}");
        }
        // The pod's port unreachable errors that got out (rate-limited per host) are taken off
        // its link, on the leg to the pod.
        assert_rejected(backend, &t.failed(), Leg::QueryToPod, |by| {
            by.ends_with("(leaving the pod)")
        });
    }
}

// Scenario: dual-stack lab; one trace follows queries to both Service IPs, each attributed in
// its own family.
#[test]
fn dual_stack_traces_both_families_in_one_run() {
    for backend in BACKENDS {
        let lab = Lab6::up("tv63", backend, IpFamily::Dual);
        let v4 = IpAddr::from(lab.info.service_ip);
        let t = traced(&lab, &[v4, service6()], &batch(20), true);
        assert_eq!(t.sent_lost, [(20, 0), (20, 0)], "{backend:?}");
        assert_eq!((t.queries, t.answered), (40, 40), "{backend:?}");
        assert_eq!(t.records.len(), 40, "{backend:?}: a record per query");
        for (family_v6, count) in [(false, 20), (true, 20)] {
            let of: Vec<_> = t
                .records
                .iter()
                .filter(|r| r.server.is_ipv6() == family_v6)
                .collect();
            assert_eq!(of.len(), count, "{backend:?} v6={family_v6}");
            for r in of {
                let e = r.endpoint.expect("attributed to a pod");
                assert_eq!(
                    e.is_ipv6(),
                    family_v6,
                    "the pod in the query's family: {r:?}"
                );
                assert_eq!(r.client.is_ipv6(), family_v6, "{r:?}");
            }
        }
    }
}

// Scenario: `inspect` on a dual-stack lab reads the IPv6 Service and both pods' IPv6 endpoints
// from the lab's ip6tables backend (and no split between the families), counts the conntrack
// entries of IPv6 queries to it, and after no-endpoints names the IPv6 reject as an error.
#[test]
fn inspect_reads_the_ipv6_service_its_endpoints_and_its_conntrack_entries() {
    for backend in BACKENDS {
        let mut lab = Lab6::up("tv64", backend, IpFamily::Dual);
        let node_ns = netns::named(&lab.info.node_netns);
        let server = SocketAddr::new(service6(), lab.info.dns_port);
        let r = measure::query_batch(Some(&lab.info.clients[0].netns), server, &batch(5))
            .expect("query batch");
        assert_eq!((r.sent, r.lost), (5, 0), "{backend:?}");
        let report = node::inspect(Some(&node_ns)).expect("inspect");
        assert_eq!(report.dns6_by_backend.len(), 1, "{backend:?}: {report:#?}");
        let found = &report.dns6_by_backend[0];
        assert_eq!(found.backend, backend);
        assert_eq!(found.service.ip, service6());
        let mut endpoints = found.service.endpoint_ips();
        endpoints.sort();
        assert_eq!(endpoints, [lab.dns6(0), lab.dns6(1)], "{backend:?}");
        assert_eq!(report.dns_service6.as_ref(), Some(&found.service));
        let ids: Vec<&str> = report.findings.iter().map(|f| f.id).collect();
        assert!(ids.contains(&"dns6-service"), "{backend:?}: {ids:?}");
        assert!(!ids.contains(&"dns6-backend-split"), "{backend:?}: {ids:?}");
        assert!(
            report.conntrack.dns_entries >= 5,
            "{backend:?}: the IPv6 queries' entries: {:?}",
            report.conntrack
        );
        assert!(report.render_text().contains(&format!("{server} -> ")));

        lab.fault(FaultName::NoEndpoints, None);
        let report = node::inspect(Some(&node_ns)).expect("inspect");
        let f = report
            .findings
            .iter()
            .find(|f| f.id == "dns6-no-endpoints")
            .unwrap_or_else(|| panic!("{backend:?}: {:#?}", report.findings));
        assert_eq!(f.severity, Severity::Error);
    }
}
