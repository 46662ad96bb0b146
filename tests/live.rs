//! A node that changes while the tracer runs: a pod added after the start gets the TC programs
//! and its queries are traced under its link's name, deleting it lets the link go; a CoreDNS pod
//! replaced during traffic is followed in the Service's rules, and the queries a stale conntrack
//! entry still sends to the old pod are named so. Run as root, one test at a time
//! (`--test-threads=1`).

mod common;

use std::{
    net::SocketAddr,
    time::{Duration, Instant},
};

use common::{BACKENDS, LabGuard, batch, tier};
use tracer::{
    flow::record::{QueryRecord, Verdict},
    lab::{self, FaultName, REPLACEMENT_IPS},
    measure::{BatchResult, BatchSpec, query_batch},
    node::Backend,
    trace::{Settings, Tracer},
};

const PREFIX: &str = "tlv";
const CHURN_PREFIX: &str = "tlc";
const QUERIES: u32 = 40;

/// Polls until `done` says so or `within` passes, keeping the records polled.
fn poll_until(
    tracer: &mut Tracer,
    records: &mut Vec<QueryRecord>,
    within: Duration,
    done: impl Fn(&Tracer) -> bool,
) -> bool {
    let deadline = Instant::now() + within;
    loop {
        records.extend(tracer.poll().expect("poll"));
        if done(tracer) {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

// Scenario: healthy node, the tracer running; a client pod appears, sends a batch through the
// Service IP and goes away. Its link is counted added then removed, and every query it sent has
// a record naming its link.
#[test]
fn a_pod_added_after_the_start_is_traced_and_let_go() {
    let lab = LabGuard::up(PREFIX, Backend::Nft);
    let settings = Settings {
        tier: tier(),
        all: true,
        timeout: Duration::from_secs(1),
        ..Settings::default()
    };
    let mut tracer = common::trace_lab(&lab.info, &settings);
    let mut records = Vec::new();
    records.extend(tracer.poll().expect("poll"));
    assert_eq!(tracer.links_changed(), (0, 0));

    let pod = lab::add_pod(PREFIX, "late").expect("add a pod");
    assert!(
        poll_until(&mut tracer, &mut records, Duration::from_secs(5), |t| {
            t.links_changed().0 == 1
        }),
        "the new pod link {} was not attached: {:?}",
        pod.host_ifname,
        tracer.links_changed()
    );

    let server = SocketAddr::from((lab.info.service_ip, lab.info.dns_port));
    let spec = batch(QUERIES);
    let result: BatchResult = std::thread::scope(|scope| {
        let sender = scope.spawn(|| query_batch(Some(&pod.netns), server, &spec));
        while !sender.is_finished() {
            records.extend(tracer.poll().expect("poll"));
            std::thread::sleep(Duration::from_millis(50));
        }
        sender.join().expect("query thread").expect("query batch")
    });
    // Past the trace's timeout, so every query is judged before the pod goes.
    let wait = settings.timeout + Duration::from_millis(500);
    poll_until(&mut tracer, &mut records, wait, |_| false);

    lab::del_pod(PREFIX, "late").expect("delete the pod");
    assert!(
        poll_until(&mut tracer, &mut records, Duration::from_secs(5), |t| {
            t.links_changed().1 == 1
        }),
        "the pod link {} was not let go: {:?}",
        pod.host_ifname,
        tracer.links_changed()
    );
    let (rest, summary) = tracer.finish().expect("finish");
    records.extend(rest);

    eprintln!(
        "sent {} lost {}; records {}; links added {} removed {}",
        result.sent,
        result.lost,
        records.len(),
        summary.links_added,
        summary.links_removed
    );
    assert_eq!((summary.links_added, summary.links_removed), (1, 1));
    assert_eq!(result.sent, QUERIES);
    assert_eq!(result.lost, 0, "a healthy node answers every query");
    assert_eq!(
        records.len(),
        result.sent as usize,
        "one record per query sent: {records:#?}"
    );
    for r in &records {
        assert_eq!(r.client.ip(), pod.ip, "{r:?}");
        assert_eq!(r.verdict, Verdict::Answered, "{r:?}");
        assert_eq!(
            r.client_link.as_deref(),
            Some(pod.host_ifname.as_str()),
            "{r:?}"
        );
    }
    assert!(
        summary
            .text()
            .contains("pod links during the trace: 1 added, 1 removed"),
        "{}",
        summary.text()
    );
    let json = serde_json::to_value(&summary).expect("summary as JSON");
    assert_eq!(json["links_added"], 1);
    assert_eq!(json["links_removed"], 1);
}

/// Sends `spec` from client0 to the Service while polling the tracer.
fn send_polling(
    lab: &LabGuard,
    tracer: &mut Tracer,
    records: &mut Vec<QueryRecord>,
    spec: &BatchSpec,
) -> BatchResult {
    std::thread::scope(|scope| {
        let sender = scope.spawn(|| lab.probe(spec));
        while !sender.is_finished() {
            records.extend(tracer.poll().expect("poll"));
            std::thread::sleep(Duration::from_millis(50));
        }
        sender.join().expect("query thread")
    })
}

// Scenario: a client socket asks the Service; its CoreDNS pod is then replaced (a new address in
// the Service, the old one gone, the UDP conntrack entry left). The tracer sees the endpoints
// change, and names the socket's next queries, which the entry sends to the old address, a stale
// conntrack entry: created during the trace, endpoint removed at the change, `conntrack -D` to
// clear it, which clears it when run as printed. A new socket is answered by the replacement.
#[test]
fn endpoint_churn_names_the_stale_entry_and_when_its_endpoint_went() {
    const PORT: u16 = 45053;
    for backend in BACKENDS {
        let mut lab = LabGuard::up(CHURN_PREFIX, backend);
        // Long enough for the node to give up resolving the gone pod's address (3 s), so the
        // stale queries' drops are seen before they are judged.
        let settings = Settings {
            tier: tier(),
            all: true,
            timeout: Duration::from_secs(5),
            ..Settings::default()
        };
        let mut tracer = common::trace_lab(&lab.info, &settings);
        let mut records = Vec::new();
        let pinned = BatchSpec {
            source_port: Some(PORT),
            rate: 20.0,
            ..batch(3)
        };
        let before = send_polling(&lab, &mut tracer, &mut records, &pinned);
        assert_eq!(before.lost, 0, "{backend:?}: answered before the churn");
        // Answered records are complete within a second.
        poll_until(&mut tracer, &mut records, Duration::from_secs(2), |_| false);
        assert_eq!(records.len(), 3, "{backend:?}: {records:#?}");
        let old = records[0].endpoint.expect("the pinned socket's endpoint");
        let pod = lab
            .info
            .endpoints
            .iter()
            .position(|p| p.ip == old)
            .expect("a DNS pod") as u8;

        lab.fault(FaultName::EndpointChurn, Some(pod));
        // Past the legacy backend's re-read period (2 s), so the change is noticed before the
        // queries go out.
        poll_until(&mut tracer, &mut records, Duration::from_secs(3), |_| false);
        let stale = send_polling(&lab, &mut tracer, &mut records, &pinned);
        let fresh = send_polling(&lab, &mut tracer, &mut records, &batch(5));
        let wait = settings.timeout + Duration::from_millis(500);
        poll_until(&mut tracer, &mut records, wait, |_| false);
        let (rest, summary) = tracer.finish().expect("finish");
        records.extend(rest);

        assert_eq!(
            stale.lost, 3,
            "{backend:?}: the entry keeps the socket on the old pod"
        );
        assert_eq!(
            fresh.lost, 0,
            "{backend:?}: new sockets reach the Service's endpoints"
        );
        assert_eq!(
            records.len(),
            11,
            "{backend:?}: one record per query: {records:#?}"
        );
        let replacement = std::net::IpAddr::from(REPLACEMENT_IPS[usize::from(pod)]);
        assert_eq!(
            summary.endpoint_changes.len(),
            1,
            "{backend:?}: {summary:#?}"
        );
        let change = &summary.endpoint_changes[0];
        assert_eq!(
            (change.removed.clone(), change.added.clone()),
            (vec![old], vec![replacement])
        );
        let named: Vec<&QueryRecord> = records.iter().filter(|r| r.stale.is_some()).collect();
        assert_eq!(named.len(), 3, "{backend:?}: {records:#?}");
        for r in named {
            assert_ne!(r.verdict, Verdict::Answered, "{r:?}");
            assert!(r.drop.is_some(), "the drop is seen: {r:?}");
            assert_eq!(r.client.port(), PORT, "{r:?}");
            let s = r.stale.as_ref().expect("named stale");
            assert_eq!(s.endpoint, old, "{r:?}");
            assert_eq!(s.removed_us, Some(change.noticed_us), "{r:?}");
            let created = s
                .created_us
                .expect("the entry was created during the trace");
            assert!(created < change.noticed_us, "{r:?}");
            let text = s.to_string();
            assert!(
                text.contains(&format!(
                    "conntrack -D -p udp --orig-src {} --sport {PORT}",
                    r.client.ip()
                )),
                "{text}"
            );
        }
        for r in records.iter().filter(|r| r.client.port() != PORT) {
            assert_eq!(r.verdict, Verdict::Answered, "{r:?}");
            assert!(r.stale.is_none(), "{r:?}");
        }
        assert_eq!(summary.stale_entries.len(), 1, "{backend:?}: {summary:#?}");
        assert_eq!(summary.stale_entries[0].queries, 3);
        let text = summary.text();
        assert!(
            text.contains(&format!("removed {old}, added {replacement}")),
            "{text}"
        );
        assert!(text.contains("lost to a stale conntrack entry"), "{text}");

        // The command it names, run as printed, clears the entry: the socket's next queries
        // reach the replacement.
        let command = summary.stale_entries[0].entry.clear_command();
        let node = format!("ip netns exec {} conntrack -D ", lab.info.node_netns);
        assert!(command.starts_with(&node), "{command}");
        let out = std::process::Command::new("sh")
            .args(["-c", &command])
            .output()
            .expect("sh");
        assert!(
            out.status.success(),
            "{command}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let cleared = lab.probe(&pinned);
        assert_eq!(
            cleared.lost, 0,
            "{backend:?}: answered once `{command}` ran"
        );
    }
}
