//! Scenario tests of `tracer lab`: the node comes up and goes away cleanly, the healthy Service
//! answers every query in both iptables backends, and every fault breaks DNS the way it should
//! until `fault clear`. Run as root, one at a time (`--test-threads=1`): they change kernel state.

mod common;

use common::{LabGuard, answer_addresses, batch, leftovers, whoami};
use tracer::{
    lab::{self, FaultName},
    measure::{BatchSpec, Outcome},
    node::Backend,
};

/// Healthy after `fault clear`: every query of a batch answered.
fn assert_all_answered(lab: &LabGuard, what: &str) {
    let result = lab.probe(&batch(50));
    assert_eq!(
        (result.answered, result.lost),
        (50, 0),
        "{what}: {result:?}"
    );
}

/// Scenario: up, down, down again; and up after a killed run cleans what that run left.
#[test]
fn up_and_down_leave_nothing_behind() {
    let prefix = "trt1";
    {
        let lab = LabGuard::up_with_clients(prefix, Backend::Nft, 2);
        assert_eq!(lab.info.clients.len(), 2);
        let left = leftovers(prefix);
        // node, dns0, dns1, client0, client1 + two dnsmasq + the state directory.
        assert_eq!(
            left.iter().filter(|l| l.starts_with("namespace")).count(),
            5,
            "{left:?}"
        );
        assert_eq!(
            left.iter().filter(|l| l.starts_with("process")).count(),
            2,
            "{left:?}"
        );
        // A killed run's remains: a namespace the next `up` must remove.
        std::process::Command::new("ip")
            .args(["netns", "add", "trt1-client9"])
            .status()
            .unwrap();
    }
    assert_eq!(leftovers(prefix), Vec::<String>::new());
    lab::down(prefix).expect("down when already down");
    assert_eq!(lab::info(prefix).unwrap(), None);

    std::process::Command::new("ip")
        .args(["netns", "add", "trt1-client9"])
        .status()
        .unwrap();
    let lab = LabGuard::up(prefix, Backend::Nft);
    assert!(!leftovers(prefix).iter().any(|l| l.contains("trt1-client9")));
    drop(lab);
    assert_eq!(leftovers(prefix), Vec::<String>::new());
}

/// Scenario: healthy node, each backend: every query through the Service IP answered, and the
/// flows balanced over both DNS pods.
#[test]
fn healthy_lab_answers_every_query_in_both_backends() {
    for (prefix, backend) in [("trt2", Backend::Nft), ("trt3", Backend::Legacy)] {
        let lab = LabGuard::up(prefix, backend);
        let result = lab.probe(&whoami(50));
        assert_eq!(
            (result.sent, result.answered, result.lost),
            (50, 50, 0),
            "{backend:?}: {result:?}"
        );
        let served: Vec<_> = answer_addresses(&result);
        for pod in &lab.info.endpoints {
            assert!(
                served.contains(&pod.ip.into()),
                "{backend:?}: no answer from {}",
                pod.name
            );
        }
        let result = lab.probe(&batch(50));
        assert_eq!(result.answered, 50, "{backend:?}: {result:?}");
    }
}

/// Scenario: DROP for DNS to dns0 in filter FORWARD: about half the flows die, every answer comes
/// from dns1; without --pod, everything dies.
#[test]
fn filter_drop_loses_the_flows_to_the_dropped_pod() {
    let mut lab = LabGuard::up("trt4", Backend::Nft);
    let dns1 = lab.info.endpoints[1].ip;
    lab.fault(FaultName::FilterDrop, Some(0));
    let result = lab.probe(&whoami(100));
    assert!(
        (20..=80).contains(&result.lost),
        "about half lost: {result:?}"
    );
    assert!(
        answer_addresses(&result).iter().all(|a| *a == dns1),
        "{result:?}"
    );
    lab.clear();
    assert_all_answered(&lab, "after clear");

    lab.fault(FaultName::FilterDrop, None);
    assert_eq!(lab.probe(&batch(30)).answered, 0);
    lab.clear();
    assert_all_answered(&lab, "after clear");
}

/// Scenario: kube-proxy's REJECT for a service without endpoints: nothing answered, and the
/// kernel's port unreachable reaches the client (rate-limited, so not for every query).
#[test]
fn no_endpoints_rejects() {
    let mut lab = LabGuard::up("trt5", Backend::Nft);
    lab.fault(FaultName::NoEndpoints, None);
    let result = lab.probe(&batch(30));
    assert_eq!(result.answered, 0, "{result:?}");
    assert!(
        result.queries.iter().any(|q| q.outcome == Outcome::Refused),
        "{result:?}"
    );
    lab.clear();
    assert_all_answered(&lab, "after clear");
}

/// Scenario: stale kube-proxy rules in the other backend DNAT the Service to a dead endpoint and
/// win (their NAT table registered last): nothing answered, in both directions of the mix.
#[test]
fn mixed_backend_stale_rules_win() {
    for (prefix, backend, other_save) in [
        ("trt6", Backend::Nft, "iptables-legacy-save"),
        ("trt7", Backend::Legacy, "iptables-nft-save"),
    ] {
        let mut lab = LabGuard::up(prefix, backend);
        lab.fault(FaultName::MixedBackend, None);
        let out = std::process::Command::new("ip")
            .args([
                "netns",
                "exec",
                &lab.info.node_netns,
                other_save,
                "-t",
                "nat",
            ])
            .output()
            .unwrap();
        assert!(
            String::from_utf8_lossy(&out.stdout).contains("10.244.0.99:53"),
            "{backend:?}: stale rules present"
        );
        let result = lab.probe(&batch(30));
        assert_eq!(result.answered, 0, "{backend:?}: {result:?}");
        lab.clear();
        assert_all_answered(&lab, "after clear");
    }
}

/// Scenario: the node's conntrack table is full of assured entries: new flows are dropped and
/// conntrack counts the drops.
#[test]
fn conntrack_full_drops_new_flows() {
    let mut lab = LabGuard::up("trt8", Backend::Nft);
    lab.fault(FaultName::ConntrackFull, None);
    let before = lab.conntrack_stats();
    let result = lab.probe(&batch(50));
    let delta = lab.conntrack_stats().delta(&before);
    // A few flows may get in by early-dropping an unassured entry of the lab's own traffic.
    assert!(result.lost >= 45, "{result:?}");
    assert!(delta.drop >= 45, "conntrack drop statistic: {delta:?}");
    lab.clear();
    assert_all_answered(&lab, "after clear");
}

/// Scenario: one DNS server stopped, or one pod's link down: about half the flows die, every
/// answer comes from the other pod.
#[test]
fn pod_down_and_link_down_lose_half() {
    let mut lab = LabGuard::up("trt9", Backend::Nft);
    for (fault, pod) in [
        (FaultName::PodDown, None),
        (FaultName::PodDown, Some(1)),
        (FaultName::PodLinkDown, None),
    ] {
        let alive = lab.info.endpoints[usize::from(1 - pod.unwrap_or(0))].ip;
        lab.fault(fault, pod);
        let result = lab.probe(&whoami(100));
        assert!(
            (20..=80).contains(&result.lost),
            "{fault:?} {pod:?}: about half lost: {result:?}"
        );
        assert!(
            answer_addresses(&result).iter().all(|a| *a == alive),
            "{fault:?} {pod:?}: {result:?}"
        );
        lab.clear();
        assert_all_answered(&lab, "after clear");
    }
}

/// Scenario: dns0's endpoint removed with its pod while client0's UDP entry still points to it:
/// the client that keeps its source port loses every query, fresh ports are answered by dns1.
#[test]
fn stale_conntrack_strands_the_client_that_keeps_its_port() {
    let mut lab = LabGuard::up("trt10", Backend::Nft);
    let port = lab
        .fault(FaultName::StaleConntrack, None)
        .stale_source_port
        .expect("stale port");
    let stale = lab.probe(&BatchSpec {
        source_port: Some(port),
        ..batch(20)
    });
    assert_eq!(stale.answered, 0, "{stale:?}");
    let fresh = lab.probe(&whoami(20));
    assert_eq!(fresh.answered, 20, "{fresh:?}");
    assert!(
        answer_addresses(&fresh)
            .iter()
            .all(|a| *a == lab.info.endpoints[1].ip)
    );
    lab.clear();
    let again = lab.probe(&BatchSpec {
        source_port: Some(port),
        ..batch(20)
    });
    assert_eq!(again.answered, 20, "after clear: {again:?}");
}

/// Scenario: parallel A and AAAA from one socket: conntrack's insert clashes rise, and this
/// kernel resolves every one of them (nothing lost, no insert_failed).
#[test]
fn conntrack_race_clashes_are_resolved() {
    let cpus = std::thread::available_parallelism().map_or(1, usize::from);
    if cpus < 2 {
        eprintln!(
            "skipped: the race needs two CPUs processing one flow at once, this machine has {cpus}"
        );
        return;
    }
    let mut lab = LabGuard::up("trt11", Backend::Nft);
    lab.fault(FaultName::ConntrackRace, None);
    let before = lab.conntrack_stats();
    let result = lab.probe(&BatchSpec {
        parallel_a_aaaa: true,
        ..batch(200)
    });
    let delta = lab.conntrack_stats().delta(&before);
    assert_eq!((result.sent, result.answered), (400, 400), "{result:?}");
    assert!(delta.clash_resolve > 0, "{delta:?}");
    assert_eq!((delta.insert_failed, delta.drop), (0, 0), "{delta:?}");
    lab.clear();
    assert_all_answered(&lab, "after clear");
}

/// Bad input gets a clear error, not a half-built lab.
#[test]
fn bad_prefixes_and_faults_are_refused() {
    assert!(matches!(
        lab::up("Bad-Prefix", Backend::Nft, 1),
        Err(lab::Error::Prefix { .. })
    ));
    assert!(matches!(
        lab::fault("trt12", FaultName::PodDown, None),
        Err(lab::Error::NotUp { .. })
    ));
    let lab = LabGuard::up("trt12", Backend::Nft);
    assert!(matches!(
        lab::fault("trt12", FaultName::PodDown, Some(2)),
        Err(lab::Error::NoSuchPod { .. })
    ));
    assert!(matches!(
        lab::fault("trt12", FaultName::NoEndpoints, Some(0)),
        Err(lab::Error::PodNotAllowed { .. })
    ));
    lab::fault("trt12", FaultName::PodDown, None).unwrap();
    assert!(matches!(
        lab::fault("trt12", FaultName::PodDown, None),
        Err(lab::Error::FaultActive { .. })
    ));
    drop(lab);
    assert_eq!(leftovers("trt12"), Vec::<String>::new());
}
