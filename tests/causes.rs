//! `tracer trace` naming causes the kernel's evidence only points at, on each backend: an
//! overloaded server's losses named as its full socket receive queue, with the queue's figures;
//! late answers named as their expired conntrack entry, with the delay and the timeout.
//! Run as root, one test at a time (`--test-threads=1`); labs `trov` and `trlr`.

mod common;

use std::{
    net::{IpAddr, Ipv4Addr, SocketAddr},
    time::Duration,
};

use common::{BACKENDS, LabGuard, has_drop_reasons, leftovers, tier, whoami};
use tracer::{
    flow::{
        cause::Cause,
        record::{QueryRecord, Seen, Stage, Verdict},
    },
    lab::FaultName,
    measure::{BatchResult, BatchSpec, Outcome},
    report::trace::TraceSummary,
    trace::Settings,
};

const DNS0: IpAddr = IpAddr::V4(Ipv4Addr::new(10, 244, 0, 10));

struct Traced {
    records: Vec<QueryRecord>,
    summary: TraceSummary,
    result: BatchResult,
}

/// Starts the tracer on the lab, sends `spec` from client0 while polling the tracer every 50 ms
/// (as `tracer trace` does), waits out `settings.timeout` and `extra`, stops.
fn traced(lab: &LabGuard, spec: &BatchSpec, settings: Settings, extra: Duration) -> Traced {
    let settings = Settings {
        tier: tier(),
        ..settings
    };
    let mut tracer = common::trace_lab(&lab.info, &settings);
    let mut records = Vec::new();
    let result = std::thread::scope(|s| {
        let sender = s.spawn(|| lab.probe(spec));
        while !sender.is_finished() {
            records.extend(tracer.poll().expect("poll"));
            std::thread::sleep(Duration::from_millis(50));
        }
        sender.join().expect("the query thread")
    });
    let until = std::time::Instant::now() + settings.timeout + extra;
    while std::time::Instant::now() < until {
        records.extend(tracer.poll().expect("poll"));
        std::thread::sleep(Duration::from_millis(50));
    }
    let (rest, summary) = tracer.finish().expect("finish");
    records.extend(rest);
    Traced {
        records,
        summary,
        result,
    }
}

fn answered(result: &BatchResult) -> usize {
    result
        .queries
        .iter()
        .filter(|q| matches!(q.outcome, Outcome::Answered { .. }))
        .count()
}

// Scenario: dns0's server stops reading with a small receive buffer (server-overload); a burst
// through the Service fills its queue. The queries the kernel refused are named as the full
// queue with its figures; the ones that sat in it, as queued behind it, never read; dns1 answers
// the rest.
#[test]
fn overloaded_server_losses_are_its_full_receive_queue() {
    for backend in BACKENDS {
        let mut lab = LabGuard::up("trov", backend);
        lab.fault(FaultName::ServerOverload, Some(0));
        let t = traced(
            &lab,
            &whoami(60),
            Settings {
                timeout: Duration::from_secs(1),
                ..Settings::default()
            },
            Duration::from_millis(1500),
        );
        let (sent, lost) = (t.result.sent, t.result.lost);
        assert_eq!(sent, 60, "{backend:?}");
        assert!(
            lost > 0 && lost < 60,
            "{backend:?}: dns0 stopped reading: lost {lost}"
        );
        assert_eq!(
            answered(&t.result) as u32,
            sent - lost,
            "{backend:?}: dns1 answered the rest"
        );
        let c = &t.summary.counters;
        assert_eq!(
            c.queries, 60,
            "{backend:?}: every query left the client: {c:?}"
        );
        assert!(
            c.at_endpoint >= 60 && c.socket_drops > 0 && c.drops > 0,
            "{backend:?}: every query reached a pod, and the socket stage refused some: {c:?}"
        );
        assert_eq!(c.lost_events, 0, "{backend:?}");
        let failed: Vec<&QueryRecord> = t
            .records
            .iter()
            .filter(|r| r.verdict != Verdict::Answered)
            .collect();
        // A query pushed out of its slot by a newer one in the burst is counted, not recorded.
        assert_eq!(
            failed.len() as u64 + t.summary.tally.evicted_in_flight,
            u64::from(lost),
            "{backend:?}: one record per lost query: tally {:?}, in flight at end {}, counters {c:?}, \
             {failed:#?}",
            t.summary.tally,
            t.summary.in_flight_at_end
        );
        let server = SocketAddr::from((DNS0, 53));
        let refused: Vec<&QueryRecord> = failed
            .iter()
            .copied()
            .filter(|r| r.verdict == Verdict::Dropped)
            .collect();
        let queued: Vec<&QueryRecord> = failed
            .iter()
            .copied()
            .filter(|r| r.verdict == Verdict::Unanswered)
            .collect();
        assert_eq!(
            refused.len() + queued.len(),
            failed.len(),
            "{backend:?}: each lost query refused or queued: {failed:#?}"
        );
        assert!(
            !refused.is_empty() && !queued.is_empty(),
            "{backend:?}: the queue filled, then refused: {} refused, {} queued",
            refused.len(),
            queued.len()
        );
        let mut most_drops = 0;
        for r in &refused {
            assert_eq!(r.endpoint, Some(DNS0), "{backend:?}: {r:?}");
            let d = r.drop.as_ref().unwrap();
            assert_eq!(d.stage, Stage::Socket, "{backend:?}: {d:?}");
            assert_eq!(d.location, "udp_fail_queue_rcv_skb", "{backend:?}: {d:?}");
            if has_drop_reasons() {
                assert_eq!(d.reason, "SOCKET_RCVBUFF", "{backend:?}: {d:?}");
            }
            let q = d.socket.expect("the socket's queue figures");
            assert_eq!(
                q.rcvbuf,
                2 * 4096,
                "{backend:?}: the lab's SO_RCVBUF, doubled by the kernel: {q:?}"
            );
            assert!(
                q.rmem > 0 && q.drops >= 1,
                "{backend:?}: a full queue that dropped: {q:?}"
            );
            assert!(
                d.why.contains(&format!(
                    "the server's socket receive queue was full (rmem {} of rcvbuf {} bytes, {} drops): \
                     the server is not reading fast enough",
                    q.rmem, q.rcvbuf, q.drops
                )),
                "{backend:?}: {}",
                d.why
            );
            assert_eq!(
                Cause::of(r).to_string(),
                "socket: SOCKET_RCVBUFF @ udp_fail_queue_rcv_skb"
            );
            most_drops = most_drops.max(q.drops);
        }
        assert!(
            most_drops as usize >= refused.len(),
            "{backend:?}: the socket counted every refusal: {most_drops} < {}",
            refused.len()
        );
        for r in &queued {
            assert_eq!(
                (r.endpoint, r.last_seen),
                (Some(DNS0), Seen::AtEndpoint),
                "{backend:?}: delivered to dns0, never answered: {r:?}"
            );
            let q = r.queued.as_ref().expect("named as queued");
            assert_eq!(q.endpoint, server, "{backend:?}");
            assert_eq!(q.queue.rcvbuf, 2 * 4096, "{backend:?}");
            assert_eq!(
                Cause::of(r).to_string(),
                "queued behind a full receive queue at 10.244.0.10:53, never read"
            );
        }
        // Cleared, dns0 serves again.
        lab.clear();
        let after = lab.probe(&whoami(20));
        assert_eq!(after.lost, 0, "{backend:?}: clear restarts dns0");
    }
    assert!(leftovers("trov").is_empty(), "{:?}", leftovers("trov"));
}

// Scenario: dns0's server stalls 2.5 s at a time (throttled-server) while the node's
// nf_conntrack_udp_timeout is 1 s. Its late answers find no conntrack entry: not un-DNATed, they
// reach the client from dns0's own address and the client refuses them. Each is named as an
// answer after the entry expired, with its delay, the timeout and the entry's destroy time.
#[test]
fn late_answers_are_named_as_an_expired_conntrack_entry() {
    for backend in BACKENDS {
        let mut lab = LabGuard::up("trlr", backend);
        lab.fault(FaultName::ThrottledServer, Some(0));
        let node = lab.info.node_netns.clone();
        let timeout = || {
            tracer::netns::run_in(&tracer::netns::named(&node), || {
                std::fs::read_to_string("/proc/sys/net/netfilter/nf_conntrack_udp_timeout")
            })
            .expect("node namespace")
            .expect("the sysctl")
            .trim()
            .to_owned()
        };
        assert_eq!(
            timeout(),
            "1",
            "{backend:?}: the fault shortens the UDP timeout"
        );
        // 30 queries over 6 s, each waited for 4 s: the client's socket is still open when a
        // late answer comes.
        let spec = BatchSpec {
            rate: 5.0,
            timeout: Duration::from_secs(4),
            ..whoami(30)
        };
        let t = traced(
            &lab,
            &spec,
            Settings {
                timeout: Duration::from_secs(5),
                ..Settings::default()
            },
            Duration::from_millis(500),
        );
        let (sent, lost) = (t.result.sent, t.result.lost);
        assert_eq!(sent, 30, "{backend:?}");
        assert!(
            lost > 0 && lost < 30,
            "{backend:?}: dns0 answers late: lost {lost}"
        );
        let c = &t.summary.counters;
        assert!(
            c.queries == 30
                && c.at_endpoint >= 30
                && c.from_endpoint >= 30
                && c.drops >= u64::from(lost),
            "{backend:?}: every query reached a pod, every pod answered, the late answers were dropped: {c:?}"
        );
        let failed: Vec<&QueryRecord> = t
            .records
            .iter()
            .filter(|r| r.verdict != Verdict::Answered)
            .collect();
        assert_eq!(
            failed.len() as u32,
            lost,
            "{backend:?}: one record per lost query: {failed:#?}"
        );
        for r in &failed {
            assert_eq!(r.endpoint, Some(DNS0), "{backend:?}: {r:?}");
            let d = r.drop.as_ref().expect("the client refused the answer");
            assert_eq!(
                (d.stage, d.leg),
                (Stage::Conntrack, tracer::flow::record::Leg::Answer),
                "{backend:?}: {d:?}"
            );
            if has_drop_reasons() {
                assert_eq!(d.reason, "NO_SOCKET", "{backend:?}: {d:?}");
            }
            let delay: u64 = d
                .why
                .strip_prefix("reply came ")
                .and_then(|w| {
                    w.split_once(" ms after the query, after the conntrack entry expired")
                })
                .and_then(|(ms, _)| ms.parse().ok())
                .unwrap_or_else(|| panic!("{backend:?}: named as an expired entry: {}", d.why));
            assert!(
                (1000..4000).contains(&delay),
                "{backend:?}: later than the 1 s timeout, within the client's wait: {}",
                d.why
            );
            assert!(
                d.why
                    .contains("(nf_conntrack_udp_timeout=1s; destroyed at "),
                "{backend:?}: {}",
                d.why
            );
            assert!(
                Cause::of(r).to_string().starts_with("conntrack: "),
                "{backend:?}: {}",
                Cause::of(r)
            );
        }
        lab.clear();
        assert_eq!(
            timeout(),
            "30",
            "{backend:?}: clear restores the UDP timeout"
        );
        let after = lab.probe(&whoami(20));
        assert_eq!(after.lost, 0, "{backend:?}: clear resumes dns0");
    }
    assert!(leftovers("trlr").is_empty(), "{:?}", leftovers("trlr"));
}
