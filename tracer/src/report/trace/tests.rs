use super::*;

#[test]
fn percentiles_are_bucket_upper_bounds() {
    let mut h = vec![0u64; 24];
    h[6] = 90; // 64..128 us
    h[10] = 10; // 1024..2048 us
    let l = Latency::from_histogram(&h);
    assert_eq!(
        (l.count, l.p50_le_us, l.p90_le_us, l.p99_le_us, l.max_lt_us),
        (100, 128, 128, 2048, 2048)
    );
    assert_eq!(Latency::from_histogram(&[0; 24]), Latency::default());
}

/// A summary written before pod links were counted reads back with both counts 0; a new one
/// keeps them.
#[test]
fn link_counts_are_additive_in_json() {
    let s = TraceSummary {
        links_added: 2,
        links_removed: 1,
        ..TraceSummary::default()
    };
    let mut json = serde_json::to_value(&s).expect("to JSON");
    let back: TraceSummary = serde_json::from_value(json.clone()).expect("from JSON");
    assert_eq!((back.links_added, back.links_removed), (2, 1));
    let object = json.as_object_mut().expect("an object");
    object.remove("links_added");
    object.remove("links_removed");
    let old: TraceSummary = serde_json::from_value(json).expect("an older summary");
    assert_eq!((old.links_added, old.links_removed), (0, 0));
    assert!(
        s.text()
            .contains("pod links during the trace: 2 added, 1 removed")
    );
}

/// Failed queries to endpoints past the first ones counted are counted under one key; an
/// endpoint counted keeps counting.
#[test]
fn failed_queries_are_counted_by_endpoint_up_to_the_bound() {
    let mut s = TraceSummary::default();
    let to = |i: usize| {
        let mut r = QueryRecord::dropped(1000, Stage::Neighbour);
        r.endpoint = Some(IpAddr::from([10, 244, (i / 250) as u8, (i % 250) as u8]));
        r
    };
    for i in 0..KEPT_ENDPOINTS + 3 {
        s.add(&to(i));
    }
    s.add(&to(0));
    assert_eq!(s.by_endpoint.len(), KEPT_ENDPOINTS + 1);
    assert_eq!(s.by_endpoint[OTHER_ENDPOINTS], 3);
    assert_eq!(s.by_endpoint["10.244.0.0"], 2);
}

/// Stale entries past the listed ones are counted, not listed; an entry listed keeps
/// counting its queries.
#[test]
fn stale_entries_are_listed_up_to_the_bound() {
    use std::net::SocketAddr;
    let mut s = TraceSummary::default();
    let stale = |port: u16| {
        let mut r = QueryRecord::dropped(port, Stage::Neighbour);
        r.stale = Some(StaleEntry {
            client: SocketAddr::from(([10, 244, 0, 20], port)),
            service: SocketAddr::from(([10, 96, 0, 10], 53)),
            endpoint: IpAddr::from([10, 244, 0, 10]),
            created_us: None,
            removed_us: None,
            netns: None,
        });
        r
    };
    let sockets = KEPT_STALE_ENTRIES as u16 + 3;
    for port in 1000..1000 + sockets {
        s.add(&stale(port));
    }
    s.add(&stale(1000));
    assert_eq!(
        (s.stale_entries.len(), s.stale_queries_unlisted),
        (KEPT_STALE_ENTRIES, 3)
    );
    assert_eq!(s.stale_entries[0].queries, 2);
    assert!(
        s.text()
            .contains("3 more queries lost to stale entries past the 256 listed"),
        "{}",
        s.text()
    );
}

/// Failed queries are counted by typed cause; in JSON the counts are keyed by the cause's
/// text, and a query record keeps its stage, backend and evidence strings.
#[test]
fn summary_counts_by_cause_keyed_by_its_text() {
    use crate::flow::record::{BackendEvidence, NetfilterBackend, Seen};
    let mut s = TraceSummary::default();
    let mut r = QueryRecord::dropped(1, Stage::Netfilter);
    {
        let d = r.drop.as_mut().unwrap();
        d.backend = Some(NetfilterBackend::NfTables);
        d.backend_from = Some(BackendEvidence::RuleCounters);
    }
    s.add(&r);
    s.add(&r);
    let mut lost = QueryRecord::dropped(2, Stage::Netfilter);
    lost.drop = None;
    lost.verdict = Verdict::Unanswered;
    lost.last_seen = Seen::AtEndpoint;
    s.add(&lost);
    let json = serde_json::to_value(&s).unwrap();
    assert_eq!(
        json["by_cause"],
        serde_json::json!({
            "netfilter: NETFILTER_DROP @ nft_do_chain": 2,
            "no drop seen (last seen: at_endpoint)": 1,
        })
    );
    let back: TraceSummary = serde_json::from_value(json).unwrap();
    assert_eq!(back.by_cause, s.by_cause);
    let record = serde_json::to_value(&r).unwrap();
    assert_eq!(
        (
            &record["drop"]["stage"],
            &record["drop"]["backend"],
            &record["drop"]["backend_from"]
        ),
        (
            &serde_json::json!("netfilter"),
            &serde_json::json!("nf_tables"),
            &serde_json::json!("rule counters")
        )
    );
    assert!(s.text().contains("no drop seen (last seen: at_endpoint)"));
    assert!(
        line(&r).contains(
            "| netfilter NETFILTER_DROP at nft_do_chain+0x3e8 [nf_tables, from the rule counters]"
        ),
        "{}",
        line(&r)
    );
}
