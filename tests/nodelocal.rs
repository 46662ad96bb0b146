//! NodeLocal DNSCache (`lab up --nodelocal`), in both iptables backends: a caching dnsmasq in the
//! node namespace on 169.254.20.10 and the kube-dns ClusterIP, node-cache's NOTRACK and ACCEPT
//! rules, and misses sent to the CoreDNS pods through the `kube-dns-upstream` Service.
//!
//! Run as root, one test at a time: `cargo test --release -p tracer --test nodelocal --
//! --test-threads=1`.

mod common;

use std::{
    net::{IpAddr, SocketAddr},
    time::Duration,
};

use common::{BACKENDS, LabGuard, answer_addresses, in_node, leftovers, tier};
use tracer::{
    flow::{
        cache::{CacheOutcome, CacheTally},
        record::{QueryRecord, Verdict},
    },
    lab::{self, NODELOCAL_IP, UPSTREAM_IP},
    measure::{self, BatchSpec, Outcome, RecordType, ResponseCode},
    node::Backend,
    report::trace::TraceSummary,
    trace::Settings,
};

/// Lab `prefix` with the cache and one client pod.
fn nodelocal_lab(prefix: &str, backend: Backend) -> LabGuard {
    let shape = lab::Shape {
        backend,
        nodelocal: true,
        ..lab::Shape::default()
    };
    let info = lab::up_with(prefix, &shape)
        .unwrap_or_else(|e| panic!("lab up {prefix} --nodelocal --backend {backend}: {e}"));
    LabGuard { info }
}

/// `count` A queries for `name`, one at a time.
fn lookups(name: &str, count: u32) -> BatchSpec {
    BatchSpec {
        names: vec![name.to_owned()],
        qtypes: vec![RecordType::A],
        count,
        rate: 50.0,
        timeout: Duration::from_secs(1),
        ..BatchSpec::default()
    }
}

/// The cache's log lines that contain `needle`.
fn log_lines(lab: &LabGuard, needle: &str) -> usize {
    let cache = lab.info.nodelocal.as_ref().expect("the lab runs the cache");
    std::fs::read_to_string(&cache.log)
        .expect("the cache's log")
        .lines()
        .filter(|l| l.contains(needle))
        .count()
}

/// Scenario: a client pod asks the cache at 169.254.20.10 for whoami twice. The first query is
/// a miss the cache sends to kube-dns-upstream, which kube-proxy DNATs to a CoreDNS pod (the
/// answer names that pod); the second is answered from the cache. A query to the kube-dns
/// ClusterIP is answered by the cache too (node-cache holds that address), not DNATed.
#[test]
fn the_cache_answers_misses_from_a_pod_and_repeats_itself() {
    for (i, backend) in BACKENDS.into_iter().enumerate() {
        let prefix = format!("tnl{}", i + 1);
        {
            let lab = nodelocal_lab(&prefix, backend);
            let cache = lab
                .info
                .nodelocal
                .clone()
                .expect("lab info names the cache");
            assert!(cache.pid.is_some(), "the cache runs: {cache:?}");
            assert_eq!(cache.upstream_ip, UPSTREAM_IP);
            let client = &lab.info.clients[0].netns;
            let at_cache = SocketAddr::from((NODELOCAL_IP, 53));
            let result = measure::query_batch(Some(client), at_cache, &lookups(lab::WHOAMI, 2))
                .expect("query the cache");
            let answers = answer_addresses(&result);
            assert_eq!(answers.len(), 2, "{backend}: both answered: {result:?}");
            assert_eq!(
                answers[0], answers[1],
                "{backend}: the repeat is the cached answer"
            );
            let pods: Vec<IpAddr> = lab.info.endpoints.iter().map(|p| p.ip.into()).collect();
            assert!(
                pods.contains(&answers[0]),
                "{backend}: a CoreDNS pod answered the miss"
            );
            let forwarded = format!("forwarded {} to {UPSTREAM_IP}", lab::WHOAMI);
            assert_eq!(
                log_lines(&lab, &forwarded),
                1,
                "{backend}: one miss went upstream"
            );
            let cached = format!("cached {} is {}", lab::WHOAMI, answers[0]);
            assert_eq!(
                log_lines(&lab, &cached),
                1,
                "{backend}: one answer from the cache"
            );
            // The kube-dns ClusterIP is the cache's too: the query is not DNATed to a pod.
            let at_service = SocketAddr::from((lab.info.service_ip, 53));
            let result =
                measure::query_batch(Some(client), at_service, &lookups(lab::WHOAMI, 1)).unwrap();
            assert_eq!(answer_addresses(&result), vec![answers[0]], "{backend}");
            assert_eq!(
                log_lines(&lab, &cached),
                2,
                "{backend}: answered from the cache"
            );
            let raw = in_node(&lab, &[&format!("iptables-{backend}-save"), "-t", "raw"]);
            let notrack = raw.lines().filter(|l| l.ends_with("-j NOTRACK")).count();
            assert_eq!(notrack, 16, "{backend}: node-cache's NOTRACK rules:\n{raw}");
            let filter = in_node(&lab, &[&format!("iptables-{backend}-save"), "-t", "filter"]);
            assert!(filter.contains(&format!(
                "-A INPUT -d {NODELOCAL_IP}/32 -p udp -m udp --dport 53 -j ACCEPT"
            )));
        }
        assert_eq!(leftovers(&prefix), Vec::<String>::new(), "{backend}");
    }
}

/// Scenario: with no endpoints, kube-proxy REJECTs the cache's miss to kube-dns-upstream in filter
/// OUTPUT, so the cache's send fails at once and it answers the client REFUSED itself: the client
/// sees the cache's error, never the REJECT.
#[test]
fn a_miss_without_endpoints_is_refused_by_the_cache() {
    let mut lab = nodelocal_lab("tnl3", Backend::Nft);
    lab.fault(lab::FaultName::NoEndpoints, None);
    let client = lab.info.clients[0].netns.clone();
    let at_cache = SocketAddr::from((NODELOCAL_IP, 53));
    let result = measure::query_batch(Some(&client), at_cache, &lookups("gone.cluster.local", 1))
        .expect("query the cache");
    match &result.queries[0].outcome {
        Outcome::Answered { rcode, .. } => assert_eq!(*rcode, ResponseCode::Refused),
        other => panic!("the cache answers: {other:?}"),
    }
    assert_eq!(
        log_lines(&lab, "query[A] gone.cluster.local from 10.244.0.20"),
        1
    );
    drop(lab);
    assert_eq!(leftovers("tnl3"), Vec::<String>::new());
}

/// `--nodelocal` models node-cache in kube-proxy's iptables mode over IPv4 and says so.
#[test]
fn nodelocal_refuses_nftables_mode_and_ipv6() {
    for shape in [
        lab::Shape {
            nodelocal: true,
            proxy_mode: lab::ProxyMode::Nftables,
            ..lab::Shape::default()
        },
        lab::Shape {
            nodelocal: true,
            ip_family: lab::IpFamily::Dual,
            ..lab::Shape::default()
        },
    ] {
        match lab::up_with("tnl4", &shape) {
            Err(lab::Error::NodeLocalShape) => {}
            other => panic!("{shape:?}: {other:?}"),
        }
    }
    assert_eq!(leftovers("tnl4"), Vec::<String>::new());
}

/// Starts the tracer on the nodelocal lab (every query a record), runs `send`, waits out the
/// timeout and stops.
fn traced(lab: &LabGuard, send: impl FnOnce()) -> (Vec<QueryRecord>, TraceSummary) {
    let settings = Settings {
        tier: tier(),
        all: true,
        timeout: Duration::from_secs(1),
        ..Settings::default()
    };
    let tracer = common::trace_lab(&lab.info, &settings);
    send();
    std::thread::sleep(Duration::from_millis(2500));
    tracer.finish().expect("finish")
}

/// Client legs: the records of queries to the cache for `name` (records spell it with the
/// root's dot).
fn client_legs<'a>(records: &'a [QueryRecord], name: &str) -> Vec<&'a QueryRecord> {
    let fqdn = format!("{name}.");
    records
        .iter()
        .filter(|r| r.server.ip() == IpAddr::from(NODELOCAL_IP))
        .filter(|r| r.name.as_deref() == Some(fqdn.as_str()))
        .collect()
}

/// Scenario: a client pod looks up five new names at 169.254.20.10, then the same five again.
/// Each first lookup is a miss: one lookup with two legs, the client's query to the cache and
/// the cache's query from the node namespace through kube-proxy's DNAT to a CoreDNS pod, which
/// is named. Each repeat is a hit: one leg, answered by the cache.
#[test]
fn the_tracer_tells_hits_from_misses_with_both_legs_of_a_miss() {
    for (i, backend) in BACKENDS.into_iter().enumerate() {
        let prefix = format!("tnl{}", i + 1);
        let lab = nodelocal_lab(&prefix, backend);
        let names: Vec<String> = (0..5)
            .map(|n| format!("new{n}.{prefix}.cluster.local"))
            .collect();
        let client = lab.info.clients[0].netns.clone();
        let at_cache = SocketAddr::from((NODELOCAL_IP, 53));
        let spec = BatchSpec {
            names: names.clone(),
            count: 5,
            ..lookups("", 5)
        };
        let (records, summary) = traced(&lab, || {
            for _ in 0..2 {
                let r = measure::query_batch(Some(&client), at_cache, &spec).expect("query");
                assert_eq!(r.lost, 0, "{backend}: {r:?}");
            }
        });
        let pods: Vec<IpAddr> = lab.info.endpoints.iter().map(|p| p.ip.into()).collect();
        for name in &names {
            let legs = client_legs(&records, name);
            assert_eq!(legs.len(), 2, "{backend} {name}: two lookups: {records:#?}");
            let miss = legs[0].cache.as_ref().expect("a cache lookup");
            assert_eq!(
                miss.outcome,
                CacheOutcome::Miss,
                "{backend} {name}: {:#?}",
                legs[0]
            );
            assert_eq!(miss.upstream.len(), 1, "{backend} {name}: {miss:#?}");
            let up = &miss.upstream[0];
            assert_eq!(up.verdict, Verdict::Answered, "{backend} {name}: {up:#?}");
            assert!(up.client_link.is_none(), "sent from the node namespace");
            assert!(pods.contains(&miss.served_by().expect("a pod served the miss")));
            let hit = legs[1].cache.as_ref().expect("a cache lookup");
            assert_eq!(
                (hit.outcome, hit.upstream.len()),
                (CacheOutcome::Hit, 0),
                "{backend}"
            );
        }
        assert_eq!(
            summary.cache,
            Some(CacheTally {
                hits: 5,
                misses: 5,
                unanswered: 0,
                upstream_unlinked: 0
            }),
            "{backend}"
        );
        drop(lab);
        assert_eq!(leftovers(&prefix), Vec::<String>::new(), "{backend}");
    }
}

/// Scenario: the Service has no endpoints. kube-proxy REJECTs the cache's query upstream, and the
/// cache answers the client itself with an error: the failure is placed on the upstream leg,
/// while the client leg is answered.
#[test]
fn a_failed_upstream_leg_is_placed_on_the_upstream_leg() {
    for (i, backend) in BACKENDS.into_iter().enumerate() {
        let prefix = format!("tnl{}", i + 1);
        let mut lab = nodelocal_lab(&prefix, backend);
        lab.fault(lab::FaultName::NoEndpoints, None);
        let names: Vec<String> = (0..3).map(|n| format!("gone{n}.cluster.local")).collect();
        let client = lab.info.clients[0].netns.clone();
        let at_cache = SocketAddr::from((NODELOCAL_IP, 53));
        let spec = BatchSpec {
            names: names.clone(),
            count: 3,
            ..lookups("", 3)
        };
        let (records, summary) = traced(&lab, || {
            measure::query_batch(Some(&client), at_cache, &spec).expect("query");
        });
        for name in &names {
            let legs = client_legs(&records, name);
            assert_eq!(legs.len(), 1, "{backend} {name}: {records:#?}");
            let miss = legs[0].cache.as_ref().expect("a cache lookup");
            assert_eq!(
                miss.outcome,
                CacheOutcome::Miss,
                "{backend}: {:#?}",
                legs[0]
            );
            assert!(!miss.upstream.is_empty(), "{backend}");
            for up in &miss.upstream {
                assert_ne!(up.verdict, Verdict::Answered, "{backend}: {up:#?}");
                assert_eq!(
                    up.server.ip(),
                    IpAddr::from(UPSTREAM_IP),
                    "{backend}: {up:#?}"
                );
            }
            assert_eq!(miss.served_by(), None);
        }
        let cache = summary.cache.expect("cache counts");
        assert_eq!((cache.hits, cache.misses), (0, 3), "{backend}: {cache:?}");
        drop(lab);
        assert_eq!(leftovers(&prefix), Vec::<String>::new(), "{backend}");
    }
}

/// Scenario: `tracer inspect` of the node reports the cache: the `nodelocaldns` link with its two
/// addresses, dnsmasq's two UDP sockets on them, node-cache's 16 NOTRACK and 8 ACCEPT rules in
/// the lab's backend (text and JSON); with the cache stopped, an error that nothing listens.
#[test]
fn inspect_reports_the_cache_its_listeners_and_rules() {
    for (i, backend) in BACKENDS.into_iter().enumerate() {
        let prefix = format!("tnl{}", i + 1);
        let lab = nodelocal_lab(&prefix, backend);
        let node = tracer::netns::named(&lab.info.node_netns);
        let report = tracer::node::inspect(Some(&node)).expect("inspect");
        let cache = report.nodelocal.as_ref().expect("the cache is found");
        assert_eq!(cache.link, "nodelocaldns");
        let expected: Vec<IpAddr> = vec![NODELOCAL_IP.into(), lab.info.service_ip.into()];
        assert_eq!(cache.addresses, expected, "{backend}");
        let listening: Vec<SocketAddr> =
            expected.iter().map(|ip| SocketAddr::new(*ip, 53)).collect();
        assert_eq!(cache.listeners, listening, "{backend}");
        assert_eq!(
            (cache.notrack().count(), cache.accepts().count()),
            (16, 8),
            "{backend}: {:#?}",
            cache.rules
        );
        assert_eq!(cache.backends(), vec![backend]);
        let ids: Vec<&str> = report.findings.iter().map(|f| f.id).collect();
        assert!(ids.contains(&"nodelocal-dns-cache"), "{ids:?}");
        assert!(!ids.contains(&"nodelocal-not-listening"), "{ids:?}");
        assert!(!ids.contains(&"nodelocal-no-notrack"), "{ids:?}");
        let text = report.render_text();
        assert!(text.contains("nodelocal dns cache: link nodelocaldns (169.254.20.10, 10.96.0.10), 2 UDP listeners on port 53, 16 NOTRACK and 8 ACCEPT rules"), "{text}");
        let json: serde_json::Value = serde_json::from_str(&report.render_json().unwrap()).unwrap();
        assert_eq!(json["nodelocal"]["listeners"].as_array().unwrap().len(), 2);
        // The cache stops: the link and rules stay, nothing listens.
        let pid = lab
            .info
            .nodelocal
            .as_ref()
            .unwrap()
            .pid
            .expect("the cache's pid");
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid),
            nix::sys::signal::Signal::SIGTERM,
        )
        .expect("stop the cache");
        std::thread::sleep(Duration::from_millis(500));
        let report = tracer::node::inspect(Some(&node)).expect("inspect");
        let ids: Vec<&str> = report.findings.iter().map(|f| f.id).collect();
        assert!(
            ids.contains(&"nodelocal-not-listening"),
            "{backend}: {ids:?}"
        );
        drop(lab);
        assert_eq!(leftovers(&prefix), Vec::<String>::new(), "{backend}");
    }
}
