//! Names as long as DNS allows, traced whole: the kernel copies a query's question up to the
//! datagram's end (a 255-byte name and its type and class), where it once stopped at 64 bytes
//! and the record named nothing. On each backend. Run as root, one test at a time
//! (`--test-threads=1`).

mod common;

use std::{
    net::{IpAddr, SocketAddr},
    time::Duration,
};

use common::{BACKENDS, LabGuard, batch, tier};
use tracer::{
    flow::record::{QueryRecord, Verdict},
    lab::{FaultName, LONG_NAME, LONG_NAME_IP},
    measure::{self, BatchResult, BatchSpec, RecordType},
    report::trace::TraceSummary,
    trace::Settings,
};

/// Queries per batch.
const COUNT: u32 = 10;

/// `count` A queries for the lab's 253-character name.
fn long_name(count: u32) -> BatchSpec {
    BatchSpec {
        names: vec![LONG_NAME.to_owned()],
        qtypes: vec![RecordType::A],
        ..batch(count)
    }
}

/// The name as records carry it (fully qualified).
fn fqdn() -> String {
    format!("{LONG_NAME}.")
}

/// Starts the tracer on the lab, runs `send`, waits out the timeout, stops. The tier is
/// `TRACER_TEST_TIER`'s, and the trace must have run on it.
fn traced(
    lab: &LabGuard,
    settings: Settings,
    send: impl FnOnce() -> BatchResult,
) -> (Vec<QueryRecord>, TraceSummary, BatchResult) {
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
    let result = send();
    std::thread::sleep(wait);
    let (records, summary) = tracer.finish().expect("finish");
    (records, summary, result)
}

// Scenario: a client pod asks a healthy node for a name of 253 characters (255 bytes on the
// wire); every query is answered, and with `--all` every record names the whole name, copied into
// the query's slot at the client's link (TC).
#[test]
fn the_longest_name_is_traced_whole_from_a_pod() {
    for backend in BACKENDS {
        let lab = LabGuard::up("trln", backend);
        let settings = Settings {
            all: true,
            timeout: Duration::from_secs(1),
            ..Settings::default()
        };
        let (records, summary, result) = traced(&lab, settings, || lab.probe(&long_name(COUNT)));
        assert_eq!(
            (result.sent, result.lost),
            (COUNT, 0),
            "{backend:?}: the lab answers the long name"
        );
        assert!(
            common::answer_addresses(&result)
                .iter()
                .all(|a| *a == IpAddr::V4(LONG_NAME_IP)),
            "{backend:?}: {result:?}"
        );
        let c = &summary.counters;
        assert_eq!((c.queries, c.answered), (COUNT.into(), COUNT.into()));
        assert_eq!(c.parse_errors, 0, "{backend:?}");
        assert_eq!(summary.tally.unreadable_questions, 0, "{backend:?}");
        assert_eq!(
            records.len() as u32,
            COUNT,
            "{backend:?}: a record per query: {records:?}"
        );
        for r in &records {
            assert_eq!(r.verdict, Verdict::Answered, "{backend:?}: {r:?}");
            assert_eq!(r.name, Some(fqdn()), "{backend:?}: the whole name");
            assert_eq!(r.qtype.as_deref(), Some("A"), "{backend:?}");
        }
    }
}

// Scenario: the node itself (a host-network client, which crosses no pod link) asks for the long
// name while the DNS Service has no endpoints; kube-proxy's REJECT refuses every query in OUTPUT.
// No slot holds these queries: each record's name comes from the refused packet's own bytes,
// copied at the ICMP error and the drop (`sk_buff` reads, not TC).
#[test]
fn the_longest_name_is_traced_whole_from_a_refused_packet() {
    for backend in BACKENDS {
        let mut lab = LabGuard::up("trln", backend);
        lab.fault(FaultName::NoEndpoints, None);
        let node = lab.info.node_netns.clone();
        let server = SocketAddr::from((lab.info.service_ip, lab.info.dns_port));
        let settings = Settings {
            timeout: Duration::from_secs(2),
            ..Settings::default()
        };
        let (records, summary, result) = traced(&lab, settings, || {
            measure::query_batch(Some(&node), server, &long_name(COUNT)).expect("query batch")
        });
        assert_eq!(
            (result.sent, result.lost),
            (COUNT, COUNT),
            "{backend:?}: no endpoints, no answers"
        );
        let c = &summary.counters;
        assert_eq!(c.queries, 0, "{backend:?}: no pod link saw them");
        assert_eq!(c.parse_errors, 0, "{backend:?}");
        assert_eq!(summary.tally.unreadable_questions, 0, "{backend:?}");
        let failed: Vec<_> = records
            .iter()
            .filter(|r| r.verdict != Verdict::Answered)
            .collect();
        assert_eq!(
            failed.len() as u32,
            COUNT,
            "{backend:?}: a record per refused query: {records:?}"
        );
        for r in failed {
            assert!(r.icmp.is_some() || r.drop.is_some(), "{backend:?}: {r:?}");
            assert_eq!(r.name, Some(fqdn()), "{backend:?}: the whole name: {r:?}");
            assert_eq!(r.qtype.as_deref(), Some("A"), "{backend:?}");
        }
    }
}
