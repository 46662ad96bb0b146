//! Device stage: TC on the node side of every pod link. Ingress sees what a pod sends (queries
//! from clients, answers from DNS pods), egress what a pod receives (queries after DNAT, answers
//! after un-DNAT). The healthy fast path only updates the query's slot and per-CPU counters.
//! A query no pod link saw leave was sent from the node itself (a node-local DNS cache's miss,
//! a hostNetwork pod): it takes its slot where it reaches the DNS pod's link, with no client
//! link, and the pod's answer on that link ends it (the node's stack takes it from there).

use aya_ebpf::{bindings::TC_ACT_UNSPEC, macros::classifier, programs::TcContext};
use tracer_common::{
    counter,
    event::{NO_HOOK, icmp_seen, kind},
    flow::{Packet, Slot, flag, is_truncated, proto, state, ticks_after},
};

use crate::{
    emit::{copy_words, mark_pending, now, scratch, send, set_query, slot_for_new, slot_of},
    maps::{LATENCY, config, count},
    parse::{self, Parsed, QuestionAt},
};

/// The verdict of an observer: let the next program (or the stack) decide.
const NEXT: i32 = TC_ACT_UNSPEC;

// Inlined: the handlers made each program big enough for LLVM to leave one behind a BPF-to-BPF
// call otherwise.
#[classifier]
#[inline(always)]
pub fn device_tc_ingress(ctx: TcContext) -> i32 {
    try_device(&ctx, true)
}

#[classifier]
#[inline(always)]
pub fn device_tc_egress(ctx: TcContext) -> i32 {
    try_device(&ctx, false)
}

#[inline(always)]
fn try_device(ctx: &TcContext, ingress: bool) -> i32 {
    // IPv4 UDP first and on its own (see `parse::tc_udp4`), with its own copy of the handlers.
    // A UDP datagram is no ICMP error, so its Other needs no second look.
    match parse::tc_udp4(ctx) {
        Some(parsed) => on_parsed(ctx, ingress, parsed),
        None => match parse::tc_other(ctx) {
            Parsed::Other => icmp_error(ctx, ingress),
            parsed => on_parsed(ctx, ingress, parsed),
        },
    }
    NEXT
}

/// Exports `slot` (its query `packet`) as a record of `kind`, seen at `t` on `ifindex`. Out of
/// line, behind a BPF-to-BPF call: inlined at each of its call sites (in each arm above), the
/// record's zeroing and the slot's copy (about 170 instructions each time) made the programs
/// eight times the size of their IPv4 UDP path, its hot blocks spread among the cold ones.
#[inline(never)]
fn export(kind: u32, packet: &Packet, slot: &Slot, t: u64, ifindex: u32) {
    if let Some(e) = scratch(kind, packet) {
        e.ts = t;
        e.ifindex = ifindex;
        copy_words(&mut e.slot, slot);
        send(e);
    }
}

#[inline(always)]
fn on_parsed(ctx: &TcContext, ingress: bool, parsed: Parsed) {
    match parsed {
        Parsed::Other => {}
        Parsed::Malformed => count(counter::PARSE_ERRORS),
        Parsed::Dns { packet, question } => {
            if parse::wanted(&packet) {
                let is_query = packet.dport == config().dns_port;
                match (ingress, is_query) {
                    (true, true) => query_sent(ctx, &packet, question, false),
                    (false, true) => query_at_endpoint(ctx, &packet, question),
                    (true, false) => answer_from_endpoint(ctx, &packet),
                    (false, false) => answer_delivered(ctx, &packet),
                }
            }
        }
    }
}

/// A client sent a query (`from_node`: the node did, and this is the DNS pod's link): take its
/// slot. A pending query found there is reported first.
#[inline(always)]
fn query_sent(ctx: &TcContext, packet: &Packet, question: QuestionAt, from_node: bool) {
    let Some((index, slot)) =
        slot_for_new(&packet.saddr, packet.sport, packet.dns_id, packet.proto)
    else {
        return;
    };
    let same = slot.holds(&packet.saddr, packet.sport, packet.dns_id, packet.proto);
    // SAFETY: the TC context's skb is valid for the program's run.
    let ifindex = unsafe { (*ctx.skb.skb).ifindex };
    if slot.state == state::PENDING {
        if same {
            // The same query again: from the client's link a retry (latency counts from the first
            // send); from another link the same packet surfacing there (the bridge device when
            // no DNAT made it bridged), not a new query.
            if ifindex == slot.client_ifindex {
                slot.retries += 1;
            }
            return;
        }
        count(counter::EVICTED);
        export(kind::EVICTED, &slot.query(), slot, now(), 0);
    }
    count(counter::QUERIES);
    mark_pending(index, true);
    set_query(slot, packet);
    slot.state = state::PENDING;
    slot.retries = 0;
    slot.t_query = now();
    // The endpoint's fields are told valid by the flags alone: nothing to zero.
    if from_node {
        // No client link; the query is at its endpoint already.
        slot.flags = flag::FROM_NODE | flag::AT_ENDPOINT;
        slot.client_ifindex = 0;
        slot.endpoint_ip = packet.daddr;
        slot.endpoint_ifindex = ifindex;
        slot.endpoint_ticks = 0;
    } else {
        slot.flags = 0;
        slot.client_ifindex = ifindex;
    }
    slot.question_len = parse::tc_question(ctx, question, &mut slot.question);
}

/// The query reached a DNS pod's link, after DNAT; without a pending slot the node sent it.
#[inline(always)]
fn query_at_endpoint(ctx: &TcContext, packet: &Packet, question: QuestionAt) {
    count(counter::AT_ENDPOINT);
    match slot_of(&packet.saddr, packet.sport, packet.dns_id, packet.proto) {
        Some((_, slot)) if slot.state == state::PENDING => {
            slot.endpoint_ip = packet.daddr;
            // SAFETY: as above.
            slot.endpoint_ifindex = unsafe { (*ctx.skb.skb).ifindex };
            slot.endpoint_ticks = ticks_after(slot.t_query, now());
            slot.flags |= flag::AT_ENDPOINT;
        }
        _ => query_sent(ctx, packet, question, true),
    }
}

/// A DNS pod sent its answer; to a query the node sent, that ends the query.
#[inline(always)]
fn answer_from_endpoint(ctx: &TcContext, packet: &Packet) {
    count(counter::FROM_ENDPOINT);
    let from_node = match slot_of(&packet.daddr, packet.dport, packet.dns_id, packet.proto) {
        Some((_, slot)) if slot.state == state::PENDING => {
            slot.reply_ticks = ticks_after(slot.t_query, now());
            slot.flags |= flag::REPLIED;
            slot.flags & flag::FROM_NODE != 0
        }
        _ => {
            count(counter::UNMATCHED);
            false
        }
    };
    if from_node {
        answer_delivered(ctx, packet);
    }
}

/// The answer reached the client that asked (or, for a query the node sent, left the DNS pod):
/// the query is done.
#[inline(always)]
fn answer_delivered(ctx: &TcContext, packet: &Packet) {
    let Some((index, slot)) = slot_of(&packet.daddr, packet.dport, packet.dns_id, packet.proto)
    else {
        count(counter::UNMATCHED);
        return;
    };
    if slot.state != state::PENDING {
        count(counter::UNMATCHED);
        return;
    }
    count(counter::ANSWERED);
    let t = now();
    let latency_us = (t - slot.t_query) / 1000;
    let bucket = if latency_us == 0 {
        0
    } else {
        63 - latency_us.leading_zeros()
    };
    let bucket = bucket.min(tracer_common::counter::LATENCY_BUCKETS - 1);
    if let Some(b) = LATENCY.get_ptr_mut(bucket) {
        // SAFETY: per-CPU value.
        unsafe { *b += 1 };
    }
    slot.state = state::FREE;
    mark_pending(index, false);
    let slow = t - slot.t_query > config().slow_ns;
    if slow {
        count(counter::SLOW);
    }
    // A truncated answer and every TCP answer are exported too: userspace links the one to the
    // TCP retry it causes.
    if slow
        || slot.flags & flag::EVIDENCE != 0
        || config().export_all != 0
        || is_truncated(packet)
        || packet.proto == proto::TCP
    {
        // SAFETY: as above.
        let ifindex = unsafe { (*ctx.skb.skb).ifindex };
        export(kind::ANSWERED, packet, slot, t, ifindex);
    }
}

/// An ICMP error about a pending query, taken off the wire: IPv6 has no `icmp:icmp_send`, and
/// kernels before 5.16 have none for IPv4 either (where they have it, it marks the slot first).
/// Leaving a pod (ingress), that pod sent it (a closed port); reaching the client (egress)
/// unmarked, the node sent it (a REJECT rule). The slot is marked so each error is told once.
#[inline(always)]
fn icmp_error(ctx: &TcContext, ingress: bool) {
    let Some((packet, type_code)) = parse::tc_icmp_error(ctx) else {
        return;
    };
    if !parse::wanted(&packet) {
        return;
    }
    let Some((_, slot)) = slot_of(&packet.saddr, packet.sport, packet.dns_id, packet.proto) else {
        return;
    };
    if slot.state != state::PENDING || slot.flags & flag::ICMP != 0 {
        return;
    }
    count(counter::ICMP);
    slot.flags |= flag::ICMP;
    if let Some(e) = scratch(kind::ICMP, &packet) {
        e.reason = type_code;
        // SAFETY: the TC context's skb is valid for the program's run.
        e.ifindex = unsafe { (*ctx.skb.skb).ifindex };
        e.location = if ingress {
            icmp_seen::LEAVING_POD
        } else {
            icmp_seen::REACHING_CLIENT
        };
        e.hook = NO_HOOK;
        copy_words(&mut e.slot, slot);
        send(e);
    }
}
