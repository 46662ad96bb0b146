//! DNS over TCP, on each backend: a TCP query followed per message and attributed to the pod
//! that served it; a truncated UDP answer whose TCP retry dies to the tcp-blocked fault, the loss
//! placed on the TCP leg (the SYN dropped by netfilter after DNAT, naming the pod) and linked to
//! the UDP leg; a connection refused (a reset) by a pod whose server is down.
//! Run as root, one test at a time (`--test-threads=1`); labs `tdt1`, `tdt2`, `tdt3`.

mod common;

use std::{
    net::{IpAddr, Ipv4Addr},
    process::Command,
    time::Duration,
};

use common::{BACKENDS, LabGuard, has_drop_reasons, leftovers, tier};
use tracer::{
    flow::{
        record::{Leg, QueryRecord, Stage, Verdict},
        transport::Transport,
    },
    lab::{self, FaultName},
    report::trace::TraceSummary,
    trace::Settings,
};

const DNS0: IpAddr = IpAddr::V4(Ipv4Addr::new(10, 244, 0, 10));
const DNS_IPS: [IpAddr; 2] = [DNS0, IpAddr::V4(Ipv4Addr::new(10, 244, 0, 11))];

/// What `dig` printed and how it exited.
struct Dig {
    stdout: String,
    success: bool,
}

/// Runs `dig` from client0's namespace with `args` (one try, 2 s per try).
fn dig(lab: &LabGuard, args: &[&str]) -> Dig {
    let out = Command::new("ip")
        .args(["netns", "exec", &lab.info.clients[0].netns, "dig"])
        .args(["+tries=1", "+timeout=2"])
        .args(args)
        .output()
        .expect("run dig (dnsutils, installed by cargo xtask setup)");
    Dig {
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        success: out.status.success(),
    }
}

/// Starts the tracer on the lab, runs `traffic` while polling it every 50 ms, waits out the
/// timeout and the hold, stops.
fn traced<T: Send>(
    lab: &LabGuard,
    traffic: impl FnOnce() -> T + Send,
) -> (Vec<QueryRecord>, TraceSummary, T) {
    let settings = Settings {
        tier: tier(),
        timeout: Duration::from_secs(3),
        ..Settings::default()
    };
    let mut tracer = common::trace_lab(&lab.info, &settings);
    let mut records = Vec::new();
    let out = std::thread::scope(|s| {
        let sender = s.spawn(traffic);
        while !sender.is_finished() {
            records.extend(tracer.poll().expect("poll"));
            std::thread::sleep(Duration::from_millis(50));
        }
        sender.join().expect("the traffic thread")
    });
    let until = std::time::Instant::now() + Duration::from_millis(1500);
    while std::time::Instant::now() < until {
        records.extend(tracer.poll().expect("poll"));
        std::thread::sleep(Duration::from_millis(50));
    }
    let (rest, summary) = tracer.finish().expect("finish");
    records.extend(rest);
    (records, summary, out)
}

fn over(records: &[QueryRecord], transport: Transport) -> Vec<&QueryRecord> {
    records
        .iter()
        .filter(|r| r.transport == transport)
        .collect()
}

// Scenario: a healthy lab; client0 asks whoami over TCP through the Service, twice on one
// connection (dig's +keepopen), and large.cluster.local over TCP. Every TCP query is a record
// of its own (every TCP answer is exported), attributed to the pod that served it.
#[test]
fn tcp_queries_are_followed_per_message_and_attributed_to_their_pod() {
    for backend in BACKENDS {
        let lab = LabGuard::up("tdt1", backend);
        let server = format!("@{}", lab.info.service_ip);
        let (records, summary, digs) = traced(&lab, || {
            let two = dig(
                &lab,
                &[
                    &server,
                    "+tcp",
                    "+keepopen",
                    "+short",
                    lab::WHOAMI,
                    lab::WHOAMI,
                ],
            );
            let large = dig(&lab, &[&server, "+tcp", "TXT", lab::LARGE]);
            (two, large)
        });
        let (two, large) = digs;
        assert!(two.success && large.success, "{backend:?}: dig failed");
        let served: Vec<IpAddr> = two
            .stdout
            .lines()
            .map(|l| l.trim().parse().expect("an address"))
            .collect();
        assert_eq!(served.len(), 2, "{backend:?}: {}", two.stdout);
        assert!(large.stdout.contains("ANSWER: 1"), "{}", large.stdout);
        let tcp = over(&records, Transport::Tcp);
        assert_eq!(
            tcp.len(),
            3,
            "{backend:?}: one record per TCP query: {tcp:#?}"
        );
        assert!(
            tcp.iter()
                .all(|r| r.verdict == Verdict::Answered && !r.connection)
        );
        let whoami: Vec<&&QueryRecord> = tcp
            .iter()
            .filter(|r| r.name.as_deref() == Some("whoami.cluster.local."))
            .collect();
        assert_eq!(whoami.len(), 2, "{backend:?}: {tcp:#?}");
        assert_eq!(
            whoami[0].client, whoami[1].client,
            "{backend:?}: two messages on one connection"
        );
        assert_ne!(whoami[0].id, whoami[1].id);
        for (r, ip) in whoami.iter().zip(&served) {
            assert_eq!(r.endpoint, Some(*ip), "{backend:?}: the pod that answered");
        }
        let large_r = tcp.iter().find(|r| r.qtype.as_deref() == Some("TXT"));
        assert!(
            large_r.is_some_and(|r| r.endpoint.is_some_and(|e| DNS_IPS.contains(&e))),
            "{backend:?}: {tcp:#?}"
        );
        let c = &summary.counters;
        assert!(
            c.queries >= 3 && c.at_endpoint >= 3 && c.answered >= 3,
            "{backend:?}: the TC programs saw the TCP queries: {c:?}"
        );
        assert_eq!(
            c.parse_errors, 0,
            "{backend:?}: ACKs are not malformed: {c:?}"
        );
        drop(lab);
        assert_eq!(leftovers("tdt1"), Vec::<String>::new());
    }
}

// Scenario: tcp-blocked. client0 asks large.cluster.local over UDP without EDNS: the answer comes
// back truncated; dig retries over TCP and the node's filter FORWARD drops the SYN after DNAT.
// One UDP record (answered, truncated) and one TCP record (a connection dropped by netfilter on
// the query's leg after DNAT, naming the pod), linked as one lookup.
#[test]
fn tcp_blocked_places_the_loss_on_the_tcp_leg() {
    for backend in BACKENDS {
        let mut lab = LabGuard::up("tdt2", backend);
        lab.fault(FaultName::TcpBlocked, None);
        let server = format!("@{}", lab.info.service_ip);
        let (records, summary, out) =
            traced(&lab, || dig(&lab, &[&server, "+noedns", "TXT", lab::LARGE]));
        assert!(
            !out.success,
            "{backend:?}: the TCP retry must fail: {}",
            out.stdout
        );
        let udp = over(&records, Transport::Udp);
        assert_eq!(udp.len(), 1, "{backend:?}: {records:#?}");
        assert!(
            udp[0].verdict == Verdict::Answered && udp[0].truncated,
            "{backend:?}: {udp:#?}"
        );
        let tcp = over(&records, Transport::Tcp);
        assert_eq!(
            tcp.len(),
            1,
            "{backend:?}: one record per connection: {tcp:#?}"
        );
        let r = tcp[0];
        assert!(r.connection && r.verdict == Verdict::Dropped, "{r:#?}");
        let d = r.drop.as_ref().expect("a drop");
        assert_eq!(d.stage, Stage::Netfilter, "{r:#?}");
        assert_eq!(d.leg, Leg::QueryToPod, "{r:#?}");
        if has_drop_reasons() {
            assert_eq!(d.reason, "NETFILTER_DROP");
        }
        assert!(
            r.endpoint.is_some_and(|e| DNS_IPS.contains(&e)),
            "{backend:?}: names the pod: {r:#?}"
        );
        assert_eq!(r.client.ip(), udp[0].client.ip());
        let leg = r.retry_of.as_ref().expect("linked to the UDP leg");
        assert_eq!((leg.client, leg.id), (udp[0].client, udp[0].id));
        assert_eq!(
            (summary.truncated_answers, summary.retried_over_tcp),
            (1, 1),
            "{backend:?}"
        );
        assert!(
            summary
                .text()
                .contains("truncated, retried over TCP: 1 of 1")
        );
        assert!(tracer::report::trace::line(r).contains("over tcp connection"));
        drop(lab);
        assert_eq!(leftovers("tdt2"), Vec::<String>::new());
    }
}

// Scenario: pod-down on dns0; client0 connects over TCP to dns0 directly: the kernel answers the
// SYN with a reset (no listener). One TCP record, a connection refused at the socket stage.
#[test]
fn a_tcp_connection_to_a_stopped_server_is_refused_at_the_socket() {
    for backend in BACKENDS {
        let mut lab = LabGuard::up("tdt3", backend);
        lab.fault(FaultName::PodDown, Some(0));
        let (records, _, out) = traced(&lab, || {
            dig(&lab, &[&format!("@{DNS0}"), "+tcp", lab::WHOAMI])
        });
        assert!(!out.success, "{backend:?}: {}", out.stdout);
        let tcp = over(&records, Transport::Tcp);
        assert_eq!(tcp.len(), 1, "{backend:?}: {records:#?}");
        let r = tcp[0];
        assert!(r.connection && r.verdict == Verdict::Dropped, "{r:#?}");
        assert_eq!(r.endpoint, Some(DNS0), "{r:#?}");
        let d = r.drop.as_ref().expect("a drop");
        assert_eq!(d.stage, Stage::Socket, "{r:#?}");
        if has_drop_reasons() {
            assert_eq!(d.reason, "NO_SOCKET");
        }
        assert!(d.why.contains("reset"), "{r:#?}");
        assert!(over(&records, Transport::Udp).is_empty(), "{records:#?}");
        drop(lab);
        assert_eq!(leftovers("tdt3"), Vec::<String>::new());
    }
}
