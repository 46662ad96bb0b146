//! kube-proxy's ipvs mode in the lab (`tracer lab up --proxy-mode ipvs`): inspect finds the mode,
//! and reads the DNS Service and its endpoints from IPVS over generic netlink; trace follows every
//! query through IPVS's NAT to the pod that answered and says IPVS did it; no-endpoints and
//! filter-drop are placed where they happen. IPVS needs the kernel's `ip_vs`: on a kernel without
//! it (this machine's 6.18) each test prints the kernel release and what is missing, and skips;
//! Debian's 5.10, 6.1 and 6.12 under `tracer vm run` have it. Run as root, one at a time
//! (`--test-threads=1`): they change kernel state.

mod common;

use std::{
    net::{IpAddr, Ipv4Addr, SocketAddr},
    time::Duration,
};

use common::{LabGuard, batch, in_node, leftovers, tier};
use tracer::{
    flow::record::{Leg, NatBy, QueryRecord, Stage, Verdict},
    lab::{self, FaultName, ProxyMode},
    measure::BatchSpec,
    netns,
    node::{self, Backend, ipvs::Forward, kubeproxy},
    trace::Settings,
};

const DNS0: IpAddr = IpAddr::V4(Ipv4Addr::new(10, 244, 0, 10));
const DNS1: IpAddr = IpAddr::V4(Ipv4Addr::new(10, 244, 0, 11));

/// Lab `prefix` in ipvs mode with kube-proxy's rules in `backend`, or `None` (printed) when the
/// kernel has no IPVS; a refused `lab up` leaves nothing behind.
fn ipvs_lab(prefix: &str, backend: Backend) -> Option<LabGuard> {
    let shape = lab::Shape {
        backend,
        proxy_mode: ProxyMode::Ipvs,
        ..lab::Shape::default()
    };
    match lab::up_with(prefix, &shape) {
        Ok(info) => Some(LabGuard { info }),
        Err(e @ lab::Error::Ipvs { .. }) => {
            let release = nix::sys::utsname::uname()
                .map(|u| u.release().to_string_lossy().into_owned())
                .unwrap_or_default();
            eprintln!("skipped: kernel {release} has no IPVS (ip_vs): {e}");
            assert_eq!(leftovers(prefix), Vec::<String>::new());
            None
        }
        Err(e) => panic!("lab up {prefix} --proxy-mode ipvs: {e}"),
    }
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

// Scenario: kube-proxy in ipvs mode, healthy, in both iptables backends; inspect reads the mode,
// and the Service with both endpoints from IPVS's virtual services (udp and tcp 53, rr,
// masquerade); the faults without meaning in ipvs mode are refused; nothing is left behind.
#[test]
fn inspect_finds_the_ipvs_mode_service_and_endpoints() {
    for backend in [Backend::Nft, Backend::Legacy] {
        let Some(lab) = ipvs_lab("tiv1", backend) else {
            return;
        };
        assert_eq!(lab.info.proxy_mode, ProxyMode::Ipvs);
        let links = in_node(&lab, &["ip", "-o", "addr", "show", "dev", "kube-ipvs0"]);
        assert!(links.contains("10.96.0.10/32"), "{links}");
        let sets = in_node(&lab, &["ipset", "list", "KUBE-CLUSTER-IP"]);
        assert!(sets.contains("10.96.0.10,udp:53"), "{sets}");
        let node_ns = netns::named(&lab.info.node_netns);
        let report = node::inspect(Some(&node_ns)).expect("inspect");
        assert_eq!(report.proxy_mode, kubeproxy::ProxyMode::Ipvs);
        assert_eq!(report.ipvs_services.len(), 2, "{:?}", report.ipvs_services);
        for s in &report.ipvs_services {
            assert_eq!(
                (s.addr, s.port, s.scheduler.as_str()),
                (lab::SERVICE_IP, 53, "rr")
            );
            let dests: Vec<IpAddr> = s.destinations.iter().map(|d| d.addr.into()).collect();
            assert_eq!(dests.len(), 2, "{s:?}");
            assert!(dests.contains(&DNS0) && dests.contains(&DNS1), "{s:?}");
            assert!(
                s.destinations
                    .iter()
                    .all(|d| d.forward == Forward::Masquerade)
            );
        }
        let svc = report.dns_service.clone().expect("the DNS Service");
        assert!(svc.by_ipvs(), "{svc:?}");
        assert_eq!((svc.ip, svc.port), (IpAddr::V4(lab::SERVICE_IP), 53));
        let mut eps = svc.endpoints.clone();
        eps.sort();
        assert_eq!(eps, [SocketAddr::new(DNS0, 53), SocketAddr::new(DNS1, 53)]);
        assert!(!svc.rejects);
        let text = report.render_text();
        assert!(text.contains("IPVS virtual services"), "{text}");
        assert!(text.contains("udp 10.96.0.10:53"), "{text}");
        let json = report.render_json().expect("json");
        assert!(json.contains("\"ipvs_services\""), "{json}");
        // What trace uses as its Service.
        let for_trace = node::dns_service(Some(&node_ns))
            .expect("read the node")
            .expect("the DNS Service");
        assert_eq!(for_trace, svc);
        assert_eq!(lab.probe(&batch(10)).lost, 0, "{backend}: answered");
        for fault in [
            FaultName::PolicyDrop,
            FaultName::MixedBackend,
            FaultName::StaleConntrack,
            FaultName::EndpointChurn,
        ] {
            match lab::fault("tiv1", fault, None) {
                Err(lab::Error::NotInMode { .. }) => {}
                other => panic!("{fault:?} in ipvs mode: {other:?}"),
            }
        }
    }
    assert_eq!(leftovers("tiv1"), Vec::<String>::new());
    let ipv6 = lab::Shape {
        proxy_mode: ProxyMode::Ipvs,
        ip_family: lab::IpFamily::Ipv6,
        ..lab::Shape::default()
    };
    match lab::up_with("tiv1", &ipv6) {
        Err(lab::Error::IpvsFamily) => {}
        other => panic!("ipvs mode over IPv6: {other:?}"),
    }
    assert_eq!(leftovers("tiv1"), Vec::<String>::new());
}

// Scenario: healthy node in ipvs mode; every query answered, each sent by IPVS to one of the two
// pods (round robin: both used), and the records say IPVS did the NAT.
#[test]
fn healthy_ipvs_mode_every_query_answered_through_ipvs() {
    let Some(lab) = ipvs_lab("tiv2", Backend::Nft) else {
        return;
    };
    let t = traced(&lab, &batch(40), true);
    assert_eq!((t.sent, t.lost), (40, 0), "the healthy lab answers");
    assert_eq!(t.records.len(), 40, "--all gives a record per query");
    assert!(failed(&t).is_empty(), "{:?}", failed(&t));
    for r in &t.records {
        assert_eq!(r.server.ip(), lab.info.service_ip, "sent to the Service IP");
        assert!(
            matches!(r.endpoint, Some(DNS0 | DNS1)),
            "NATed to a pod: {r:?}"
        );
        assert_eq!(r.nat_by, Some(NatBy::Ipvs), "{r:?}");
    }
    for pod in [DNS0, DNS1] {
        let n = t.records.iter().filter(|r| r.endpoint == Some(pod)).count();
        eprintln!("{pod}: {n} of 40 queries");
        assert!(n > 0, "round robin uses {pod}");
    }
}

// Scenario: the Service has no endpoints in ipvs mode: its virtual service has no real servers,
// and IPVS refuses the queries at LOCAL_IN, before any NAT.
#[test]
fn no_endpoints_in_ipvs_mode_is_refused_before_nat() {
    let Some(mut lab) = ipvs_lab("tiv3", Backend::Nft) else {
        return;
    };
    lab.fault(FaultName::NoEndpoints, None);
    let svc = node::dns_service(Some(&netns::named(&lab.info.node_netns)))
        .expect("read the node")
        .expect("the DNS Service");
    assert!(svc.rejects && svc.endpoints.is_empty(), "{svc:?}");
    let t = traced(&lab, &batch(20), false);
    assert_eq!(t.lost, 20);
    let failed = failed(&t);
    assert_eq!(failed.len(), 20, "every query has a record");
    for r in failed {
        assert_eq!(r.endpoint, None, "never NATed: {r:?}");
        let d = r.drop.as_ref().expect("IPVS drops the packet");
        assert_eq!(
            (d.stage, d.leg),
            (Stage::Netfilter, Leg::QueryBeforeDnat),
            "{d:?}"
        );
        assert!(d.why.contains("no real servers"), "{d:?}");
    }
    lab.clear();
    assert_eq!(
        lab.probe(&batch(10)).lost,
        0,
        "fault clear restores the real servers"
    );
}

// Scenario: a DROP for DNS to dns0 in filter OUTPUT, where IPVS sends the rewritten query in ipvs
// mode; the queries IPVS sent to dns0 die at netfilter after the NAT, the others are answered.
#[test]
fn filter_drop_in_ipvs_mode_is_a_netfilter_drop_after_ipvs() {
    let Some(mut lab) = ipvs_lab("tiv4", Backend::Nft) else {
        return;
    };
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
        assert_eq!(r.endpoint, Some(DNS0), "names the pod IPVS chose: {r:?}");
        assert_eq!(r.nat_by, Some(NatBy::Ipvs), "{r:?}");
        let d = r.drop.as_ref().expect("a drop");
        assert_eq!(
            (d.stage, d.leg),
            (Stage::Netfilter, Leg::QueryToPod),
            "{d:?}"
        );
    }
    lab.clear();
    assert_eq!(
        lab.probe(&batch(10)).lost,
        0,
        "fault clear removes the drop"
    );
}
