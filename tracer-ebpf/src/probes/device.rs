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
    flow::{Packet, flag, is_truncated, proto, state},
};

use crate::{
    emit::{copy_packet, copy_words, mark_pending, now, scratch, send, slot_for_new, slot_of},
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
    // IPv4 UDP first and on its own (see `parse::tc_udp4`): each arm below gets its own copy of
    // the handlers. A UDP datagram is no ICMP error, so its Other needs no second look.
    match parse::tc_udp4(ctx) {
        Some(parsed) => on_parsed(ctx, ingress, parsed),
        None => match parse::tc_other(ctx) {
            Parsed::Other => icmp_error(ctx, ingress),
            parsed => on_parsed(ctx, ingress, parsed),
        },
    }
    NEXT
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
    let Some((index, slot)) = slot_for_new(&packet.saddr, packet.sport, packet.dns_id) else {
        return;
    };
    let same = slot.query.saddr == packet.saddr
        && slot.query.sport == packet.sport
        && slot.query.dns_id == packet.dns_id
        && slot.query.proto == packet.proto;
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
        if let Some(e) = scratch(kind::EVICTED, &slot.query) {
            copy_words(&mut e.slot, slot);
            send(e);
        }
    }
    count(counter::QUERIES);
    mark_pending(index, true);
    copy_packet(&mut slot.query, packet);
    slot.state = state::PENDING;
    slot.flags = 0;
    slot.retries = 0;
    let t = now();
    slot.t_query = t;
    // Volatile: plain zero stores to neighbouring fields become a call to a byte-loop memset.
    // SAFETY: fields of a valid map value.
    unsafe {
        core::ptr::write_volatile(&mut slot.t_reply, 0);
        if from_node {
            // No client link; the query is at its endpoint already.
            core::ptr::write_volatile(&mut slot.client_ifindex, 0);
            core::ptr::write_volatile(&mut slot.endpoint_ip, packet.daddr);
            core::ptr::write_volatile(&mut slot.endpoint_ifindex, ifindex);
            core::ptr::write_volatile(&mut slot.t_endpoint, t);
        } else {
            core::ptr::write_volatile(&mut slot.client_ifindex, ifindex);
            core::ptr::write_volatile(&mut slot.endpoint_ip, [0; 4]);
            core::ptr::write_volatile(&mut slot.endpoint_ifindex, 0);
            core::ptr::write_volatile(&mut slot.t_endpoint, 0);
        }
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
            slot.t_endpoint = now();
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
            slot.t_reply = now();
            slot.client_ifindex == 0
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
    if (slow
        || slot.flags & flag::EVIDENCE != 0
        || config().export_all != 0
        || is_truncated(packet)
        || packet.proto == proto::TCP)
        && let Some(e) = scratch(kind::ANSWERED, packet)
    {
        e.ts = t;
        // SAFETY: as above.
        e.ifindex = unsafe { (*ctx.skb.skb).ifindex };
        copy_words(&mut e.slot, slot);
        send(e);
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
