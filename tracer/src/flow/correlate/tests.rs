use tracer_common::flow::{QUESTION_LEN, SLOTS, state};

use super::*;
use crate::flow::event::{NfHook, SocketHook};

const SERVICE: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(10, 96, 0, 10));
const CLIENT: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(10, 244, 0, 20));
const POD: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(10, 244, 0, 10));
const SECOND: u64 = 1_000_000_000;

fn raw(ip: IpAddr) -> tracer_common::flow::Addr {
    raw_addr(ip)
}

fn be(port: u16) -> u16 {
    u16::from_ne_bytes(port.to_be_bytes())
}

fn correlator() -> Correlator {
    let reasons = [
        (2, "NETFILTER_DROP"),
        (3, "NO_SOCKET"),
        (4, "SOCKET_RCVBUFF"),
    ]
    .into_iter()
    .map(|(v, n)| (v, n.to_owned()))
    .collect();
    Correlator::new(
        Context {
            service: Some(SERVICE),
            also_services: vec![],
            dns_port: 53,
            endpoints: vec![POD],
            drop_reasons: reasons,
            timeout_ns: 5 * SECOND,
            ..Context::default()
        },
        Names::new(0, &HashMap::new()),
    )
}

/// The query from CLIENT:40000 id 7, to `to`.
fn query(to: IpAddr) -> Packet {
    Packet {
        saddr: raw(CLIENT),
        daddr: raw(to),
        sport: be(40000),
        dport: be(53),
        dns_id: 7u16.to_be(),
        dns_flags: 0,
        proto: tracer_common::flow::proto::UDP,
        syn: 0,
        _pad: 0,
    }
}

/// The answer to `query(from)`, from `from`, as it reaches the client.
fn answer_from(from: IpAddr) -> Packet {
    let q = query(from);
    Packet {
        saddr: q.daddr,
        daddr: q.saddr,
        sport: q.dport,
        dport: q.sport,
        ..q
    }
}

/// The query's slot as the kernel keeps it: sent at 1 s, at the pod at `endpoint_ns`.
fn slot(endpoint_ns: u64, flags: u16) -> Slot {
    let mut s = Slot {
        state: state::PENDING,
        flags,
        t_query: SECOND,
        nat_ip: raw(POD),
        nat_port: be(53),
        ..Slot::EMPTY
    };
    set_query(&mut s, query(SERVICE));
    if endpoint_ns != 0 {
        s.endpoint_ip = raw(POD);
        at_endpoint(&mut s, endpoint_ns);
    }
    s
}

/// Writes `p` into `s` as the kernel writes a new query.
fn set_query(s: &mut Slot, p: Packet) {
    (s.saddr, s.daddr, s.sport, s.dport) = (p.saddr, p.daddr, p.sport, p.dport);
    (s.dns_id, s.dns_flags, s.proto) = (p.dns_id, p.dns_flags, p.proto);
}

/// Marks `s`'s query seen at its endpoint at `t`, as the kernel does.
fn at_endpoint(s: &mut Slot, t: u64) {
    s.endpoint_ticks = tracer_common::flow::ticks_after(s.t_query, t);
    s.flags |= flag::AT_ENDPOINT;
}

/// Marks `s`'s answer sent by its endpoint at `t`, as the kernel does.
fn replied(s: &mut Slot, t: u64) {
    s.reply_ticks = tracer_common::flow::ticks_after(s.t_query, t);
    s.flags |= flag::REPLIED;
}

/// Where the kernel saw `packet`, at `ts`.
fn point(ts: u64, packet: Packet) -> Point {
    Point {
        ts,
        netns: 0,
        ifindex: 0,
        packet,
    }
}

/// What the kernel knew of a failure record's query: the slot while it is pending.
fn matched(slot: Slot) -> SlotMatch {
    if slot.state == state::PENDING {
        SlotMatch::Pending(Box::new(slot))
    } else {
        SlotMatch::Unmatched {
            question: question_of(&slot).to_vec(),
        }
    }
}

/// A NETFILTER_DROP (reason 2 in `correlator()`'s table) of `packet`, freed at no location.
fn netfilter_drop(ts: u64, packet: Packet, slot: Slot) -> KernelEvent {
    KernelEvent::Drop {
        at: point(ts, packet),
        slot: matched(slot),
        reason: 2,
        location: None,
    }
}

/// A table of `backend` returned NF_DROP (0) for `packet`.
fn verdict(
    ts: u64,
    packet: Packet,
    slot: Slot,
    backend: NetfilterBackend,
    hook: Option<NfHook>,
    chain: Option<&str>,
) -> KernelEvent {
    KernelEvent::Verdict {
        at: point(ts, packet),
        slot: matched(slot),
        backend,
        verdict: 0,
        hook,
        table: "filter".to_owned(),
        chain: chain.map(str::to_owned),
    }
}

#[test]
fn an_answer_ends_the_query_with_its_path_nat_and_confirmation() {
    let mut c = correlator();
    let s = slot(SECOND + 100_000, flag::NATTED | flag::CONFIRMED);
    let answered = KernelEvent::Answered {
        at: point(SECOND + 500_000, answer_from(SERVICE)),
        slot: s,
    };
    let out = c.push(&answered, 0);
    assert_eq!(out.len(), 1);
    let r = &out[0];
    assert_eq!(r.verdict, Verdict::Answered);
    assert_eq!(r.latency_us, Some(500));
    assert_eq!(r.endpoint, Some(POD));
    assert_eq!(r.nat, Some(SocketAddr::new(POD, 53)));
    assert!(r.confirmed);
    assert_eq!(r.last_seen, Seen::Delivered);
}

#[test]
fn a_verdict_then_its_drop_make_one_dropped_record_with_table_chain_and_location() {
    let mut c = correlator();
    let s = slot(0, flag::DROPPED);
    let xtables = verdict(
        2 * SECOND,
        query(POD),
        s,
        NetfilterBackend::Xtables,
        Some(NfHook::Forward),
        None,
    );
    assert!(
        c.push(&xtables, 0).is_empty(),
        "held until the drop arrives"
    );
    let drop = netfilter_drop(2 * SECOND + 10, query(POD), s);
    c.push(&drop, 0);
    let out = c.flush(2 * SECOND + HOLD_NS, false);
    assert_eq!(out.len(), 1, "one record per query");
    let d = out[0].drop.as_ref().expect("the drop");
    assert_eq!(out[0].verdict, Verdict::Dropped);
    assert_eq!(d.stage, Stage::Netfilter);
    assert_eq!(d.backend, Some(NetfilterBackend::Xtables));
    assert_eq!(d.backend_from, Some(BackendEvidence::VerdictProbe));
    assert_eq!(d.table.as_deref(), Some("filter"));
    assert_eq!(d.chain.as_deref(), Some("FORWARD"));
    assert_eq!(
        d.reason, "NETFILTER_DROP",
        "the drop's reason fills the verdict's"
    );
    assert_eq!(d.leg, Leg::QueryToPod);
}

#[test]
fn a_drop_then_its_verdict_keep_the_location_and_take_the_chain() {
    let mut c = correlator();
    let s = slot(0, flag::DROPPED);
    let drop = netfilter_drop(2 * SECOND, query(POD), s);
    c.push(&drop, 0);
    let nftables = verdict(
        2 * SECOND + 10,
        query(POD),
        s,
        NetfilterBackend::NfTables,
        None,
        Some("FORWARD"),
    );
    c.push(&nftables, 0);
    let out = c.flush(0, true);
    let d = out[0].drop.as_ref().unwrap();
    assert_eq!(
        (d.backend, d.chain.as_deref()),
        (Some(NetfilterBackend::NfTables), Some("FORWARD"))
    );
    assert_eq!(d.backend_from, Some(BackendEvidence::VerdictProbe));
    assert_eq!(d.reason, "NETFILTER_DROP");
    assert!(!d.location.is_empty(), "the drop record placed it: {d:?}");
}

#[test]
fn a_verdict_before_dnat_where_the_rules_reject_names_the_reject() {
    let mut c = correlator();
    c.ctx.service_rejects = true;
    let s = slot(0, flag::DROPPED);
    let nftables = verdict(
        2 * SECOND,
        query(SERVICE),
        s,
        NetfilterBackend::NfTables,
        None,
        Some("FORWARD"),
    );
    c.push(&nftables, 0);
    let out = c.flush(0, true);
    let d = out[0].drop.as_ref().unwrap();
    assert_eq!(d.leg, Leg::QueryBeforeDnat);
    assert!(
        d.why.contains("REJECT for a Service without endpoints"),
        "{d:?}"
    );
}

#[test]
fn nf_hook_slow_alone_names_no_backend_and_nft_do_chain_does() {
    assert_eq!(
        classify("NETFILTER_DROP", "nf_hook_slow", false).backend,
        None
    );
    assert_eq!(
        classify("NETFILTER_DROP", "nf_hook_slow", true).stage,
        Stage::Conntrack
    );
    assert_eq!(
        classify("NETFILTER_DROP", "nft_do_chain", false).backend,
        Some(NetfilterBackend::NfTables)
    );
    assert_eq!(
        classify("", "__udp4_lib_rcv", false).stage,
        Stage::Socket,
        "placed by location"
    );
    assert_eq!(
        classify("", "neigh_invalidate", false).stage,
        Stage::Neighbour
    );
}

/// Every stage a drop reason or location can place, and the backend only a location inside
/// nf_tables proves.
#[test]
fn classify_places_each_reason_at_its_stage() {
    for (reason, function, stage) in [
        ("NETFILTER_DROP", "nf_hook_slow", Stage::Netfilter),
        ("NETFILTER_DROP", "ipt_do_table", Stage::Netfilter),
        ("NO_SOCKET", "__udp4_lib_rcv", Stage::Socket),
        ("SOCKET_REFUSED", "udp_fail_queue_rcv_skb", Stage::Socket),
        ("SOCKET_RCVBUFF", "__udp_queue_rcv_skb", Stage::Socket),
        ("UDP_CSUM", "__udp4_lib_rcv", Stage::Socket),
        ("OTHERHOST", "ip_rcv_core", Stage::Bridge),
        ("IP_INADDRERRORS", "ip_rcv_finish", Stage::Routing),
        ("IP_NOPROTO", "ip_local_deliver", Stage::Routing),
        ("NEIGH_FAILED", "neigh_invalidate", Stage::Neighbour),
        ("TC_INGRESS", "tcf_classify", Stage::Kernel),
    ] {
        let c = classify(reason, function, false);
        assert_eq!((c.stage, c.backend), (stage, None), "{reason} @ {function}");
        assert!(!c.why.is_empty());
    }
}

/// A drop freed inside nft_do_chain names nf_tables from its location, with no verdict probe.
#[test]
fn a_drop_inside_nft_do_chain_names_nf_tables_from_its_location() {
    let mut c = correlator();
    let s = slot(0, flag::DROPPED);
    c.push(&netfilter_drop(2 * SECOND, query(POD), s), 0);
    let mut r = c.flush(0, true).remove(0);
    r.drop = None;
    add_drop(
        &mut r,
        "NETFILTER_DROP".to_owned(),
        "nft_do_chain+0x3e8".to_owned(),
        false,
        Place {
            leg: Leg::QueryToPod,
            at: "n/d0".to_owned(),
            stale: String::new(),
        },
    );
    let d = r.drop.as_ref().unwrap();
    assert_eq!(
        (d.stage, d.backend, d.backend_from),
        (
            Stage::Netfilter,
            Some(NetfilterBackend::NfTables),
            Some(BackendEvidence::Location)
        )
    );
}

/// A conntrack confirm that failed, with no drop record, is a conntrack drop.
#[test]
fn a_failed_confirm_alone_is_a_conntrack_drop() {
    let mut c = correlator();
    let s = slot(SECOND + 100, flag::DROPPED);
    let refused = KernelEvent::Confirm {
        at: point(2 * SECOND, query(POD)),
        slot: matched(s),
        result: 0,
    };
    c.push(&refused, 0);
    let out = c.flush(0, true);
    assert_eq!(out[0].verdict, Verdict::Dropped);
    let d = out[0].drop.as_ref().unwrap();
    assert_eq!(
        (d.stage, d.reason.as_str(), d.backend),
        (Stage::Conntrack, "CONFIRM_FAILED", None)
    );
}

/// A socket refusing the packet is a drop at the socket stage, named by its hook.
#[test]
fn a_socket_refusal_is_a_socket_drop() {
    let mut c = correlator();
    let s = slot(SECOND + 100, flag::DROPPED);
    let refused = KernelEvent::SocketDrop {
        at: point(2 * SECOND, query(POD)),
        slot: matched(s),
        hook: SocketHook::UdpFailQueue { rc: -105 },
        queue: None,
    };
    c.push(&refused, 0);
    let out = c.flush(0, true);
    let d = out[0].drop.as_ref().unwrap();
    assert_eq!(
        (d.stage, d.reason.as_str(), d.location.as_str()),
        (Stage::Socket, "SOCKET_REFUSED", "udp_fail_queue_rcv_skb")
    );
}

/// An overloaded server: its full receive queue refuses query 7 (named with the queue's figures,
/// even after the kernel's own free of the packet), and query 8, delivered just before and never
/// answered, is named as queued behind that queue rather than left without a cause.
#[test]
fn a_full_receive_queue_names_its_drops_and_the_queries_stuck_in_it() {
    let mut c = correlator();
    let q = crate::flow::record::SocketQueue {
        rmem: 9216,
        rcvbuf: 8192,
        drops: 3,
    };
    let refused = slot(2 * SECOND, flag::DROPPED);
    let freed = KernelEvent::Drop {
        at: point(2 * SECOND, query(POD)),
        slot: matched(refused),
        reason: 4,
        location: None,
    };
    c.push(&freed, 0);
    let full = KernelEvent::SocketDrop {
        at: point(2 * SECOND, query(POD)),
        slot: matched(refused),
        hook: SocketHook::UdpFailQueue { rc: -12 },
        queue: Some(q),
    };
    c.push(&full, 0);
    let out = c.flush(0, true);
    let d = out[0].drop.as_ref().unwrap();
    assert_eq!(
        (d.stage, d.reason.as_str(), d.location.as_str(), d.socket),
        (
            Stage::Socket,
            "SOCKET_RCVBUFF",
            "udp_fail_queue_rcv_skb",
            Some(q)
        )
    );
    assert!(
        d.why
            .contains("receive queue was full (rmem 9216 of rcvbuf 8192 bytes, 3 drops)"),
        "{}",
        d.why
    );
    let mut stuck = slot(SECOND + 500, 0);
    stuck.sport = be(40001);
    let mut late = slot(SECOND + 500, 0);
    late.sport = be(40002);
    late.t_query = 60 * SECOND;
    at_endpoint(&mut late, 60 * SECOND);
    let out = c.scan(&[stuck, late], 70 * SECOND, 0);
    assert_eq!(out.len(), 2);
    let queued = out[0]
        .queued
        .as_ref()
        .expect("queued behind the full queue");
    assert_eq!(
        (queued.endpoint, queued.queue),
        (SocketAddr::new(POD, 53), q)
    );
    assert_eq!(
        crate::flow::cause::Cause::of(&out[0]).to_string(),
        "queued behind a full receive queue at 10.244.0.10:53, never read"
    );
    assert_eq!(out[1].queued, None, "delivered long after the overflow");
}

#[test]
fn an_icmp_error_with_a_drop_is_rejected_before_dnat() {
    let mut c = correlator();
    let s = slot(0, flag::DROPPED | flag::ICMP);
    let unreachable = KernelEvent::Icmp {
        at: point(2 * SECOND, query(SERVICE)),
        slot: matched(s),
        seen: IcmpSeen::Sent,
        icmp_type: 3,
        code: 3,
    };
    c.push(&unreachable, 0);
    let drop = netfilter_drop(2 * SECOND, query(SERVICE), s);
    c.push(&drop, 0);
    let out = c.flush(0, true);
    assert_eq!(out.len(), 1);
    assert_eq!(out[0].verdict, Verdict::Rejected);
    let icmp = out[0].icmp.as_ref().unwrap();
    assert_eq!(
        (icmp.what.as_str(), icmp.leg),
        ("port unreachable", Leg::QueryBeforeDnat)
    );
}

#[test]
fn an_icmp_error_seen_at_the_client_then_a_drop_at_the_pod_names_the_endpoint() {
    // Neighbour resolution failed for the pod (5.10, no icmp_send tracepoint): the host
    // unreachable is seen reaching the client with the Service address restored, the drop of
    // the queued packet after it, addressed to the pod.
    let mut c = correlator();
    let s = slot(0, flag::DROPPED | flag::ICMP);
    let unreachable = KernelEvent::Icmp {
        at: point(2 * SECOND, query(SERVICE)),
        slot: matched(s),
        seen: IcmpSeen::ReachingClient,
        icmp_type: 3,
        code: 1,
    };
    c.push(&unreachable, 0);
    c.push(&netfilter_drop(2 * SECOND, query(POD), s), 0);
    let out = c.flush(0, true);
    assert_eq!(out.len(), 1);
    assert_eq!(out[0].endpoint, Some(POD), "{:?}", out[0]);
    let icmp = out[0].icmp.as_ref().unwrap();
    assert_eq!(icmp.what, "host unreachable");
    assert!(
        icmp.by
            .starts_with("the node (seen reaching the client at "),
        "{icmp:?}"
    );
    assert_eq!(out[0].drop.as_ref().unwrap().leg, Leg::QueryToPod);
}

#[test]
fn a_query_past_its_timeout_is_unanswered_once() {
    let mut c = correlator();
    let s = slot(SECOND + 100, 0);
    assert!(c.scan(&[s], 2 * SECOND, 0).is_empty(), "not yet timed out");
    let out = c.scan(&[s], 7 * SECOND, 0);
    assert_eq!(out.len(), 1);
    assert_eq!(
        (out[0].verdict, out[0].last_seen),
        (Verdict::Unanswered, Seen::AtEndpoint)
    );
    assert!(c.scan(&[s], 8 * SECOND, 0).is_empty(), "reported once");
    // Its drop arriving after the verdict is counted, not reported again.
    let late = netfilter_drop(8 * SECOND, query(POD), s);
    c.push(&late, 0);
    assert!(c.flush(0, true).is_empty());
    assert_eq!(c.tally.late_evidence, 1);
}

#[test]
fn evictions_are_judged_by_age_and_never_lost() {
    let mut c = correlator();
    let evicted = |ts, slot| KernelEvent::Evicted {
        at: point(ts, query(SERVICE)),
        slot,
    };
    let young = evicted(2 * SECOND, slot(0, 0));
    assert!(c.push(&young, 0).is_empty());
    assert_eq!(
        c.tally.evicted_in_flight, 1,
        "pushed out in flight: counted"
    );
    let old = evicted(9 * SECOND, slot(0, 0));
    let out = c.push(&old, 0);
    assert_eq!(out.len(), 1);
    assert_eq!(out[0].verdict, Verdict::Unanswered);
    let flagged = evicted(9 * SECOND, slot(0, flag::DROPPED));
    assert!(c.push(&flagged, 0).is_empty(), "its drop reported it");
    assert_eq!(c.tally.merged, 1);
}

#[test]
fn retries_and_the_question_come_from_the_slot() {
    let mut c = correlator();
    let mut s = slot(0, 0);
    s.retries = 2;
    let q = b"\x0akubernetes\x07default\x00\x00\x01\x00\x01";
    s.question[..q.len()].copy_from_slice(q);
    s.question_len = q.len() as u16;
    assert!(q.len() <= QUESTION_LEN && SLOTS > 0);
    let out = c.scan(&[s], 7 * SECOND, 0);
    assert_eq!(out[0].retries, 2);
    assert_eq!(out[0].name.as_deref(), Some("kubernetes.default."));
    assert_eq!(out[0].qtype.as_deref(), Some("A"));
}

/// A drop of a packet whose query had no pending slot: the record comes from the packet alone
/// (its question, the client side of an answer), seen nowhere on the path.
#[test]
fn a_drop_with_no_slot_is_built_from_the_packet() {
    let mut c = correlator();
    let q = b"\x0akubernetes\x07default\x00\x00\x01\x00\x01";
    let answer = Packet {
        saddr: raw(POD),
        daddr: raw(CLIENT),
        sport: be(53),
        dport: be(40000),
        ..query(POD)
    };
    let drop = KernelEvent::Drop {
        at: point(2 * SECOND, answer),
        slot: SlotMatch::Unmatched {
            question: q.to_vec(),
        },
        reason: 3,
        location: None,
    };
    c.push(&drop, 0);
    let out = c.flush(0, true);
    assert_eq!(out.len(), 1);
    let r = &out[0];
    assert_eq!(
        (r.verdict, r.last_seen, r.retries),
        (Verdict::Dropped, Seen::Nowhere, 0)
    );
    assert_eq!(
        r.client,
        SocketAddr::new(CLIENT, 40000),
        "the answer's ends swapped"
    );
    assert_eq!(r.endpoint, Some(POD), "the answer names its endpoint");
    assert_eq!(r.name.as_deref(), Some("kubernetes.default."));
    let d = r.drop.as_ref().unwrap();
    assert_eq!(
        (d.stage, d.reason.as_str(), d.leg),
        (Stage::Socket, "NO_SOCKET", Leg::Answer)
    );
}

/// A burst of failures grows the held table; once they are judged, its room is given back.
#[test]
fn the_held_table_gives_back_a_bursts_room() {
    let mut c = correlator();
    for id in 0..5000u16 {
        let drop = KernelEvent::Drop {
            at: point(
                2 * SECOND,
                Packet {
                    dns_id: id.to_be(),
                    ..query(POD)
                },
            ),
            slot: SlotMatch::Unmatched { question: vec![] },
            reason: 2,
            location: None,
        };
        c.push(&drop, 0);
    }
    assert!(c.held.capacity() >= 5000, "{}", c.held.capacity());
    assert_eq!(
        c.flush(2 * SECOND + HOLD_NS - 1, false).len(),
        0,
        "not yet due"
    );
    assert!(c.held.capacity() >= 5000, "held queries keep their room");
    assert_eq!(c.flush(2 * SECOND + HOLD_NS, false).len(), 5000);
    assert!(c.held.capacity() <= 4 * HELD_ROOM, "{}", c.held.capacity());
}

/// An answer arriving after a drop of one copy of its query ends it as answered, keeping the
/// drop it merged.
#[test]
fn an_answer_after_a_drop_is_answered_and_keeps_the_drop() {
    let mut c = correlator();
    let s = slot(SECOND + 100, flag::DROPPED);
    c.push(&netfilter_drop(2 * SECOND, query(POD), s), 0);
    let answered = KernelEvent::Answered {
        at: point(3 * SECOND, answer_from(SERVICE)),
        slot: s,
    };
    let out = c.push(&answered, 0);
    assert_eq!(out.len(), 1);
    assert_eq!(out[0].verdict, Verdict::Answered);
    assert!(out[0].drop.is_some(), "the drop is kept");
    assert_eq!(c.tally.merged, 1);
    assert!(c.flush(0, true).is_empty(), "not reported twice");
}

/// conntrack's drop statistic rises before the packet is freed, so a drop may be read a poll
/// after the rise: the correlator places as many `nf_hook_slow` drops at conntrack as the
/// statistic rose since the start, whenever they arrive, and the rest at netfilter.
#[test]
fn conntrack_drops_place_as_many_nf_hook_slow_drops_as_the_statistic_rose() {
    const NF_HOOK_SLOW: u64 = 0xffff_ffff_8100_0000;
    let mut c = correlator();
    c.symbols.insert(NF_HOOK_SLOW, "nf_hook_slow+0x9c");
    let drop_from = |port: u16, ts: u64| {
        let mut packet = query(SERVICE);
        packet.sport = be(port);
        let mut s = slot(0, flag::DROPPED);
        set_query(&mut s, packet);
        KernelEvent::Drop {
            at: point(ts, packet),
            slot: matched(s),
            reason: 2,
            location: Some(NF_HOOK_SLOW),
        }
    };
    // The statistic rose by one in an earlier poll; this poll holds two drops.
    c.conntrack_drops = 1;
    c.push(&drop_from(40001, 2 * SECOND), 0);
    c.push(&drop_from(40002, 2 * SECOND + 1), 0);
    let mut records = c.flush(0, true);
    records.sort_by_key(|r| r.client.port());
    let stages: Vec<Option<Stage>> = records
        .iter()
        .map(|r| r.drop.as_ref().map(|d| d.stage))
        .collect();
    assert_eq!(
        stages,
        [Some(Stage::Conntrack), Some(Stage::Netfilter)],
        "{records:#?}"
    );
}

/// An answer from the pod's own address (its DNAT not undone: the conntrack entry expired) is
/// held, not reported answered: the client's refusal of it ends the query, still keyed to the
/// Service it asked. Without a refusal it is answered after the hold.
#[test]
fn an_answer_not_un_dnated_waits_for_the_client_to_take_or_refuse_it() {
    let mut c = correlator();
    let mut s = slot(SECOND + 100, 0);
    replied(&mut s, 3 * SECOND);
    let q = query(POD);
    let answer = Packet {
        saddr: q.daddr,
        daddr: q.saddr,
        sport: q.dport,
        dport: q.sport,
        ..q
    };
    let answered = KernelEvent::Answered {
        at: point(3 * SECOND, answer),
        slot: s,
    };
    assert!(c.push(&answered, 0).is_empty(), "held");
    let refused = KernelEvent::Drop {
        at: point(3 * SECOND + 10, answer),
        slot: SlotMatch::Unmatched { question: vec![] },
        reason: 3,
        location: None,
    };
    c.push(&refused, 0);
    let out = c.flush(0, true);
    assert_eq!(out.len(), 1);
    let d = out[0].drop.as_ref().unwrap();
    assert_eq!(
        (out[0].verdict, out[0].server, d.reason.as_str(), d.leg),
        (
            Verdict::Dropped,
            SocketAddr::new(SERVICE, 53),
            "NO_SOCKET",
            Leg::Answer
        )
    );
    let mut other = s;
    other.sport = be(40001);
    let mut answer2 = answer;
    answer2.dport = be(40001);
    c.push(
        &KernelEvent::Answered {
            at: point(4 * SECOND, answer2),
            slot: other,
        },
        0,
    );
    let out = c.flush(0, true);
    assert_eq!(out[0].verdict, Verdict::Answered, "{out:?}");
}

#[test]
fn addresses_of_both_families_round_trip_through_the_kernel_form() {
    for ip in ["10.244.0.20", "fd00:10:244::14", "::1"] {
        let ip: IpAddr = ip.parse().unwrap();
        assert_eq!(addr(raw_addr(ip)), ip);
    }
    assert!(tracer_common::flow::is_v4(&raw_addr(CLIENT)));
}

/// An IPv6 query to an IPv6 Service, answered by its endpoint: the record prints IPv6 sockets.
#[test]
fn ipv6_query_is_keyed_and_printed_as_ipv6() {
    let svc: IpAddr = "fd00:10:96::a".parse().unwrap();
    let client: IpAddr = "fd00:10:244::14".parse().unwrap();
    let mut c = correlator();
    let mut s = Slot {
        state: state::PENDING,
        t_query: SECOND,
        ..Slot::EMPTY
    };
    set_query(
        &mut s,
        Packet {
            saddr: raw(client),
            daddr: raw(svc),
            ..query(SERVICE)
        },
    );
    let record = c.base(SECOND, Known::Slot(&s), 0);
    assert_eq!(record.client.to_string(), "[fd00:10:244::14]:40000");
    assert_eq!(record.server.to_string(), "[fd00:10:96::a]:53");
}

/// A UDP query and a TCP one with the same client socket and id are two queries: the transport
/// is part of the key.
#[test]
fn udp_and_tcp_queries_with_one_key_do_not_merge() {
    let mut c = correlator();
    let udp = slot(0, 0);
    let tcp = Slot {
        proto: tracer_common::flow::proto::TCP,
        ..udp
    };
    c.push(&netfilter_drop(2 * SECOND, query(POD), udp), 0);
    let tcp_drop = netfilter_drop(
        2 * SECOND,
        Packet {
            proto: tracer_common::flow::proto::TCP,
            ..query(POD)
        },
        tcp,
    );
    c.push(&tcp_drop, 0);
    let out = c.flush(3 * SECOND, true);
    assert_eq!(out.len(), 2, "{out:#?}");
    let transports: Vec<Transport> = out.iter().map(|r| r.transport).collect();
    assert!(transports.contains(&Transport::Udp) && transports.contains(&Transport::Tcp));
}

/// A SYN dropped after a truncated UDP answer: one connection record however often the client
/// sends the SYN again, linked to the UDP query; the truncated answer says so.
#[test]
fn a_dropped_syn_is_one_connection_record_linked_to_the_truncated_answer() {
    let mut c = correlator();
    let mut s = slot(SECOND + 100, 0);
    replied(&mut s, SECOND + 200);
    let mut answer = answer_from(SERVICE);
    // The TC bit: the first flags byte's bit 1, as the kernel reads the wire.
    answer.dns_flags = u16::from_ne_bytes([0x82, 0x80]);
    let out = c.push(
        &KernelEvent::Answered {
            at: point(SECOND + 300, answer),
            slot: s,
        },
        0,
    );
    assert_eq!(out.len(), 1);
    assert!(out[0].truncated && out[0].transport == Transport::Udp);
    let syn = Packet {
        sport: be(40001),
        dns_id: 0,
        proto: tracer_common::flow::proto::TCP,
        syn: 1,
        ..query(POD)
    };
    let unmatched = Slot {
        state: state::FREE,
        ..Slot::EMPTY
    };
    c.push(&netfilter_drop(SECOND + 400, syn, unmatched), 0);
    let out = c.flush(2 * SECOND, false);
    assert_eq!(out.len(), 1, "{out:#?}");
    let r = &out[0];
    assert!(r.connection && r.transport == Transport::Tcp && r.verdict == Verdict::Dropped);
    assert_eq!(r.endpoint, Some(POD));
    assert_eq!(r.retry_of.as_ref().map(|l| l.client.port()), Some(40000));
    // The SYN sent again a second later: merged, not a second record.
    c.push(&netfilter_drop(2 * SECOND + 400, syn, unmatched), 0);
    assert!(c.flush(4 * SECOND, true).is_empty());
    assert_eq!(c.tally.merged, 1);
}
