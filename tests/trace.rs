//! `tracer trace` against the lab, on each backend: every fault's queries are attributed to the
//! stage that ate them. Run as root, one test at a time (`--test-threads=1`).

mod common;

use std::{
    collections::HashSet,
    net::{IpAddr, Ipv4Addr, SocketAddr, UdpSocket},
    sync::Barrier,
    time::Duration,
};

use common::{BACKENDS, LabGuard, batch, has_drop_reasons, tier};
use hickory_proto::{
    op::{Message, Query},
    rr::{Name, RecordType},
};
use tracer::{
    flow::record::{BackendEvidence, Drop, Leg, NetfilterBackend, QueryRecord, Stage, Verdict},
    kernel::symbols,
    lab::FaultName,
    measure::BatchSpec,
    netns,
    node::Backend,
    probes::plan::{Fate, Tier},
    report::trace::TraceSummary,
    trace::Settings,
};
use tracer_common::flow::{slot_index, v4_mapped};

const DNS0: IpAddr = IpAddr::V4(Ipv4Addr::new(10, 244, 0, 10));
const DNS1: IpAddr = IpAddr::V4(Ipv4Addr::new(10, 244, 0, 11));

struct Traced {
    records: Vec<QueryRecord>,
    summary: TraceSummary,
    sent: u32,
    lost: u32,
}

impl Traced {
    fn failed(&self) -> Vec<&QueryRecord> {
        self.records
            .iter()
            .filter(|r| r.verdict != Verdict::Answered)
            .collect()
    }
}

impl Traced {
    /// The tier the trace ran on.
    fn tier(&self) -> Tier {
        self.summary.plan.as_ref().expect("the plan").tier
    }

    /// Whether `program` was attached.
    fn attached(&self, program: &str) -> bool {
        self.summary
            .plan
            .as_ref()
            .expect("the plan")
            .outcomes
            .iter()
            .any(|o| o.program == program && matches!(o.fate, Fate::Attached { .. }))
    }

    /// Whether the deep tier's NAT and conntrack stages ran (kprobe or fentry).
    fn deep_nat(&self) -> bool {
        self.attached("nat_manip_fexit") || self.attached("nat_manip_exit")
    }

    /// Whether a netfilter verdict program for `backend` ran.
    fn deep_verdicts(&self, backend: Backend) -> bool {
        match backend {
            Backend::Nft => {
                self.attached("netfilter_nft_fexit") || self.attached("netfilter_nft_exit")
            }
            Backend::Legacy => {
                self.attached("netfilter_ipt_fexit") || self.attached("netfilter_ipt_exit")
            }
        }
    }
}

/// On kernels with drop reasons, the reason; before 5.17 the code location's function.
fn assert_reason(d: &Drop, reason: &str, function_before_5_17: &str) {
    if has_drop_reasons() {
        assert_eq!(d.reason, reason, "{d:?}");
    } else {
        assert_eq!(
            symbols::function(&d.location),
            function_before_5_17,
            "placed by location: {d:?}"
        );
    }
}

/// Starts the tracer on the lab, sends `spec` from client0, waits out the timeout, stops. The
/// tier is `TRACER_TEST_TIER`'s, and the trace must have run on it.
fn traced(lab: &LabGuard, spec: &BatchSpec, settings: Settings) -> Traced {
    let wait = settings.timeout + Duration::from_millis(500);
    let settings = Settings {
        tier: tier(),
        ..settings
    };
    let tracer = common::trace_lab(&lab.info, &settings);
    if let Some(t) = settings.tier {
        assert_eq!(
            tracer.plan().tier,
            t,
            "the trace runs on the tier asked for"
        );
    }
    let result = lab.probe(spec);
    std::thread::sleep(wait);
    let (records, summary) = tracer.finish().expect("finish");
    Traced {
        records,
        summary,
        sent: result.sent,
        lost: result.lost,
    }
}

fn quick() -> Settings {
    Settings {
        timeout: Duration::from_secs(1),
        ..Settings::default()
    }
}

// Scenario: healthy node; every query answered, the path shows the Service IP rewritten to a pod.
#[test]
fn healthy_every_query_answered_through_dnat() {
    for backend in BACKENDS {
        let lab = LabGuard::up("trth", backend);
        let t = traced(
            &lab,
            &batch(40),
            Settings {
                all: true,
                ..quick()
            },
        );
        assert_eq!(
            (t.sent, t.lost),
            (40, 0),
            "{backend:?}: the healthy lab answers every query"
        );
        assert_eq!(
            t.summary.counters.answered, 40,
            "{backend:?}: the kernel saw every answer delivered"
        );
        assert_eq!(t.summary.counters.queries, 40, "{backend:?}");
        assert_eq!(t.summary.counters.lost_events, 0);
        assert!(t.failed().is_empty(), "{backend:?}: {:?}", t.failed());
        let answered: Vec<_> = t
            .records
            .iter()
            .filter(|r| r.verdict == Verdict::Answered)
            .collect();
        assert_eq!(
            answered.len(),
            40,
            "{backend:?}: --all gives a record per query"
        );
        let mut unconfirmed = 0;
        for r in answered {
            assert_eq!(r.server.ip(), lab.info.service_ip, "sent to the Service IP");
            assert!(
                matches!(r.endpoint, Some(DNS0 | DNS1)),
                "DNATed to a pod: {r:?}"
            );
            assert_eq!(
                r.name.as_deref(),
                Some("kubernetes.default.svc.cluster.local.")
            );
            assert!(
                r.stages.to_endpoint_us.is_some()
                    && r.stages.in_endpoint_us.is_some()
                    && r.stages.back_us.is_some()
            );
            assert_eq!(
                r.client_link.as_deref(),
                Some("trthc0"),
                "named after the client's node-side link"
            );
            // The deep tier sees the DNAT itself and the entry conntrack confirmed.
            if t.deep_nat() {
                assert_eq!(
                    r.nat.map(|n| n.ip()),
                    r.endpoint,
                    "the NAT stage names the DNAT target the pod link saw: {r:?}"
                );
                unconfirmed += usize::from(!r.confirmed);
            }
        }
        // A deep hook can miss a call: the kernel skips a kprobe hit while another kprobe
        // program runs on that CPU, and before 6.7 counts it nowhere a tool can read. One
        // confirm in 480 went unseen in a matrix run (6.1, kprobe tier); more than one in twenty
        // is the stage failing.
        if t.deep_nat() {
            assert!(
                unconfirmed <= 2,
                "{backend:?}: conntrack confirmed the queries' entries, {unconfirmed} of 40 unseen"
            );
        }
        if t.tier() != Tier::Tracepoint {
            assert!(
                t.deep_nat(),
                "{backend:?}: the NAT stage attached on the deep tier"
            );
            assert!(
                t.summary.counters.deep_events >= 80,
                "{backend:?}: the deep hooks saw each query's NAT and confirm: {:?}",
                t.summary.counters
            );
        }
    }
}

// Scenario: a DROP in filter FORWARD for DNS to dns0; half the queries die after DNAT to it.
#[test]
fn filter_drop_is_a_netfilter_drop_after_dnat_naming_the_pod() {
    for backend in BACKENDS {
        let mut lab = LabGuard::up("trtf", backend);
        lab.fault(FaultName::FilterDrop, Some(0));
        let t = traced(&lab, &batch(40), quick());
        assert!(
            t.lost > 0 && t.lost < 40,
            "{backend:?}: one of two endpoints drops: lost {}",
            t.lost
        );
        let failed = t.failed();
        assert_eq!(
            failed.len() as u32,
            t.lost,
            "{backend:?}: every lost query has a record"
        );
        for r in failed {
            assert_eq!(r.verdict, Verdict::Dropped, "{r:?}");
            assert_eq!(
                r.endpoint,
                Some(DNS0),
                "names the pod it was sent to: {r:?}"
            );
            let d = r.drop.as_ref().unwrap();
            assert_eq!(
                (d.stage, d.leg),
                (Stage::Netfilter, Leg::QueryToPod),
                "{d:?}"
            );
            assert_reason(d, "NETFILTER_DROP", "nf_hook_slow");
            assert_eq!(
                d.backend,
                Some(NetfilterBackend::from(backend)),
                "the verdict probe, the location or the rule counters tell the backend: {d:?}"
            );
            if t.deep_verdicts(backend) {
                assert_eq!(
                    (d.table.as_deref(), d.chain.as_deref()),
                    (Some("filter"), Some("FORWARD")),
                    "the verdict probe names the table and chain: {d:?}"
                );
                assert_eq!(d.backend_from, Some(BackendEvidence::VerdictProbe), "{d:?}");
            }
            if t.deep_nat() {
                assert_eq!(r.nat.map(|n| n.ip()), Some(DNS0), "DNATed to dns0: {r:?}");
            }
        }
        if t.tier() != Tier::Tracepoint && !t.deep_verdicts(backend) {
            eprintln!(
                "{backend:?}: no netfilter verdict program on the {} tier here (module BTF missing?)",
                t.tier()
            );
        }
    }
}

// Scenario: the Service has no endpoints; kube-proxy's REJECT refuses queries before DNAT. The
// kernel rate-limits the ICMP errors before its tracepoint, so some refusals carry no ICMP: those
// are drops before DNAT that the rules explain.
#[test]
fn no_endpoints_is_rejected_before_dnat() {
    for backend in BACKENDS {
        let mut lab = LabGuard::up("trtn", backend);
        lab.fault(FaultName::NoEndpoints, None);
        let t = traced(&lab, &batch(20), quick());
        assert_eq!(t.lost, 20, "{backend:?}");
        let failed = t.failed();
        assert_eq!(failed.len(), 20, "{backend:?}: every query has a record");
        // The first ICMP error is sent (the rest are rate-limited): seen at icmp_send, or on
        // 5.10 (no such tracepoint) reaching the client's link.
        assert!(
            failed.iter().any(|r| r.verdict == Verdict::Rejected),
            "{backend:?}: the first ICMP error is sent"
        );
        for r in failed {
            assert_eq!(r.endpoint, None, "never DNATed: {r:?}");
            assert_eq!(
                r.retries, 0,
                "the same packet seen on the bridge is not a retry"
            );
            let d = r.drop.as_ref().expect("the REJECT drops the packet");
            assert_eq!(
                (d.stage, d.leg),
                (Stage::Netfilter, Leg::QueryBeforeDnat),
                "{d:?}"
            );
            match &r.icmp {
                Some(icmp) => {
                    assert_eq!(r.verdict, Verdict::Rejected);
                    assert_eq!(
                        (icmp.what.as_str(), icmp.leg),
                        ("port unreachable", Leg::QueryBeforeDnat)
                    );
                }
                None => assert!(
                    d.why.contains("REJECT for a Service without endpoints"),
                    "{d:?}"
                ),
            }
        }
    }
}

// Scenario: the DNS server in dns0 stopped: its queries hit a closed port inside the pod.
#[test]
fn pod_down_is_no_socket_in_the_pod() {
    for backend in BACKENDS {
        let mut lab = LabGuard::up("trtp", backend);
        lab.fault(FaultName::PodDown, Some(0));
        let t = traced(&lab, &batch(40), quick());
        assert!(t.lost > 0 && t.lost < 40, "{backend:?}: lost {}", t.lost);
        assert_eq!(
            t.failed().len() as u32,
            t.lost,
            "{backend:?}: every lost query has a record"
        );
        for r in t.failed() {
            assert_eq!(r.endpoint, Some(DNS0), "{r:?}");
            let d = r.drop.as_ref().expect("a drop");
            assert_eq!(d.stage, Stage::Socket, "{d:?}");
            assert_reason(d, "NO_SOCKET", "__udp4_lib_rcv");
            assert!(
                d.at.starts_with("trtp-dns0/"),
                "inside the pod's namespace: {d:?}"
            );
            // The port-unreachable error is rate-limited, so only some queries carry one.
            assert!(
                r.icmp.as_ref().is_none_or(|i| i.what == "port unreachable"),
                "{r:?}"
            );
        }
    }
}

// Scenario: conntrack table full; new flows die at conntrack, with the table-full evidence.
#[test]
fn conntrack_full_is_dropped_at_conntrack_with_evidence() {
    for backend in BACKENDS {
        let mut lab = LabGuard::up("trtc", backend);
        lab.fault(FaultName::ConntrackFull, None);
        let t = traced(&lab, &batch(10), quick());
        assert_eq!(t.lost, 10, "{backend:?}");
        let failed = t.failed();
        assert_eq!(failed.len(), 10);
        for r in failed {
            let d = r.drop.as_ref().expect("a drop");
            assert_eq!(d.stage, Stage::Conntrack, "{d:?}");
            assert_reason(d, "NETFILTER_DROP", "nf_hook_slow");
            assert!(d.why.contains("full"), "{d:?}");
        }
        let delta = t
            .summary
            .conntrack_delta
            .expect("conntrack statistics over the trace");
        assert!(
            delta.drop >= 10,
            "conntrack's drop counter rose with each refused flow: {delta:?}"
        );
    }
}

// Scenario: a link down on dns0's node side: queries DNATed to it never reach a pod.
#[test]
fn pod_link_down_dies_at_neighbour_resolution() {
    for backend in BACKENDS {
        let mut lab = LabGuard::up("trtl", backend);
        lab.fault(FaultName::PodLinkDown, Some(0));
        let settings = Settings {
            timeout: Duration::from_secs(5),
            ..Settings::default()
        };
        let t = traced(&lab, &batch(20), settings);
        assert!(t.lost > 0 && t.lost < 20, "{backend:?}: lost {}", t.lost);
        assert_eq!(
            t.failed().len() as u32,
            t.lost,
            "{backend:?}: every lost query has a record"
        );
        for r in t.failed() {
            assert_eq!(r.endpoint, Some(DNS0), "{r:?}");
            let d = r.drop.as_ref().expect("a drop");
            assert_eq!(d.stage, Stage::Neighbour, "{d:?}");
            assert!(
                d.reason.starts_with("NEIGH_") || !has_drop_reasons(),
                "{d:?}"
            );
        }
    }
}

// Scenario: an endpoint removed while a client's UDP conntrack entry still points at it.
#[test]
fn stale_conntrack_sends_queries_to_a_removed_endpoint() {
    for backend in BACKENDS {
        let mut lab = LabGuard::up("trts", backend);
        let info = lab.fault(FaultName::StaleConntrack, None).clone();
        let port = info
            .stale_source_port
            .expect("the fault names the stale client port");
        let spec = BatchSpec {
            source_port: Some(port),
            ..batch(10)
        };
        let t = traced(
            &lab,
            &spec,
            Settings {
                timeout: Duration::from_secs(5),
                ..Settings::default()
            },
        );
        assert_eq!(
            t.lost, 10,
            "{backend:?}: every query follows the stale entry"
        );
        let failed = t.failed();
        assert_eq!(failed.len(), 10);
        let node = tracer::netns::named(&info.node_netns);
        let live = tracer::node::dns_service(Some(&node))
            .expect("read the rules")
            .expect("the Service")
            .endpoint_ips();
        for r in failed {
            let ep = r.endpoint.expect("DNATed by the stale entry");
            assert!(
                !live.contains(&ep),
                "{ep} is no longer an endpoint ({live:?}): {r:?}"
            );
            let d = r.drop.as_ref().expect("a drop");
            assert!(d.why.contains("not an endpoint"), "{d:?}");
            // Made before the trace, to an endpoint gone before it: both times unknown.
            let s = r.stale.as_ref().expect("named a stale conntrack entry");
            assert_eq!(
                (s.endpoint, s.created_us, s.removed_us),
                (ep, None, None),
                "{r:?}"
            );
            assert_eq!(s.client.port(), port);
        }
        assert_eq!(
            t.summary.stale_entries.len(),
            1,
            "{:?}",
            t.summary.stale_entries
        );
        assert_eq!(t.summary.stale_entries[0].queries, 10);
    }
}

// Scenario: stale kube-proxy rules in the other backend DNAT the Service to a dead address.
#[test]
fn mixed_backend_sends_queries_to_a_stale_rules_target() {
    for backend in BACKENDS {
        let mut lab = LabGuard::up("trtm", backend);
        lab.fault(FaultName::MixedBackend, None);
        let t = traced(
            &lab,
            &batch(10),
            Settings {
                timeout: Duration::from_secs(5),
                ..Settings::default()
            },
        );
        assert!(t.lost > 0, "{backend:?}");
        assert_eq!(t.failed().len() as u32, t.lost, "{backend:?}");
        for r in t.failed() {
            let d = r.drop.as_ref().expect("a drop");
            assert!(d.why.contains("not an endpoint"), "{d:?}");
            // Conntrack saw the flow created there: the stale rule did it, not an old entry.
            assert!(r.stale.is_none(), "{r:?}");
        }
        assert!(t.summary.stale_entries.is_empty(), "{backend:?}");
    }
}

// Scenario: a lookup's A and AAAA sent at once from two threads of one socket, with ids that put
// both in one set of the tracer's slot table (as one lookup in 2048 lands): each is followed on
// its own to its pod and back, none evicted, none taken for a query the node sent.
#[test]
fn a_lookup_whose_queries_share_a_slot_set_is_followed_query_by_query() {
    const PAIRS: u16 = 40;
    let lab = LabGuard::up("trts", Backend::Nft);
    let client = &lab.info.clients[0];
    let server = SocketAddr::from((lab.info.service_ip, lab.info.dns_port));
    let socket = netns::run_in(&netns::named(&client.netns), || {
        let s = UdpSocket::bind("0.0.0.0:0")?;
        s.connect(server)?;
        s.set_read_timeout(Some(Duration::from_secs(1)))?;
        Ok::<_, std::io::Error>(s)
    })
    .expect("enter the client pod")
    .expect("client socket");
    let port = socket.local_addr().expect("local address").port();
    let pairs = sharing_pairs(client.ip, port, PAIRS);
    let settings = Settings {
        all: true,
        tier: tier(),
        ..quick()
    };
    let tracer = common::trace_lab(&lab.info, &settings);
    let mut answered = HashSet::new();
    for &(a, aaaa) in &pairs {
        let barrier = Barrier::new(2);
        std::thread::scope(|s| {
            for (id, qtype) in [(a, RecordType::A), (aaaa, RecordType::AAAA)] {
                let (socket, barrier) = (&socket, &barrier);
                s.spawn(move || {
                    let bytes = query(id, qtype);
                    barrier.wait();
                    socket.send(&bytes).expect("send");
                });
            }
        });
        let mut buf = [0u8; 512];
        for _ in 0..2 {
            let n = socket.recv(&mut buf).expect("an answer within 1 s");
            assert!(n >= 12, "a DNS header: {n} bytes");
            answered.insert(u16::from_be_bytes([buf[0], buf[1]]));
        }
    }
    std::thread::sleep(Duration::from_millis(1500));
    let (records, summary) = tracer.finish().expect("finish");
    let sent: HashSet<u16> = pairs.iter().flat_map(|&(a, b)| [a, b]).collect();
    assert_eq!(answered, sent, "the lab answers every query");
    let c = &summary.counters;
    let all = u64::from(2 * PAIRS);
    assert_eq!(
        (c.queries, c.at_endpoint, c.answered, c.evicted, c.unmatched),
        (all, all, all, 0, 0),
        "{c:?}"
    );
    let followed: HashSet<u16> = records
        .iter()
        .filter(|r| r.verdict == Verdict::Answered && r.client.port() == port)
        .inspect(|r| assert_eq!(r.client_link.as_deref(), Some("trtsc0"), "{r:?}"))
        .map(|r| r.id)
        .collect();
    assert_eq!(followed, sent, "one answered record per query");
    assert_eq!(records.len(), sent.len(), "{records:#?}");
}

/// `count` (A, AAAA) id pairs whose queries from `ip`:`port` share a set of the slot table, as
/// the programs key it (the words and ports as read off the wire).
fn sharing_pairs(ip: Ipv4Addr, port: u16, count: u16) -> Vec<(u16, u16)> {
    let addr = v4_mapped(u32::from_ne_bytes(ip.octets()));
    let port = u16::from_ne_bytes(port.to_be_bytes());
    let set = |id: u16| slot_index(&addr, port, u16::from_ne_bytes(id.to_be_bytes()));
    let pairs: Vec<(u16, u16)> = (0..count)
        .map(|i| {
            let a = i.wrapping_mul(1543).wrapping_add(7);
            let b = (1..=u16::MAX)
                .map(|d| a.wrapping_add(d))
                .find(|&b| set(b) == set(a))
                .expect("65535 ids cover every set");
            (a, b)
        })
        .collect();
    assert_eq!(pairs.len(), usize::from(count));
    pairs
}

/// A recursive query for kubernetes.default with `id`.
fn query(id: u16, qtype: RecordType) -> Vec<u8> {
    let mut msg = Message::query();
    msg.metadata.id = id;
    msg.metadata.recursion_desired = true;
    let name = Name::from_ascii("kubernetes.default.svc.cluster.local.").expect("name");
    msg.add_query(Query::query(name, qtype));
    msg.to_vec().expect("encode")
}
