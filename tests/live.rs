//! Pod links that come and go while the tracer runs: a pod added after the start gets the TC
//! programs and its queries are traced under its link's name; deleting it lets the link go. Run
//! as root, one test at a time (`--test-threads=1`).

mod common;

use std::{
    net::SocketAddrV4,
    time::{Duration, Instant},
};

use common::{LabGuard, batch, tier};
use tracer::{
    flow::record::{QueryRecord, Verdict},
    lab,
    measure::{BatchResult, query_batch},
    node::Backend,
    trace::{Settings, Target, Tracer},
};

const PREFIX: &str = "tlv";
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
    let mut tracer = Tracer::start(Target::lab(&lab.info).expect("lab target"), &settings)
        .expect("start the tracer");
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

    let server = SocketAddrV4::new(lab.info.service_ip, lab.info.dns_port);
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
        assert_eq!(*r.client.ip(), pod.ip, "{r:?}");
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
