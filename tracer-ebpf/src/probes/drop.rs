//! Drop stage: every DNS packet the kernel frees with a drop reason (`skb:kfree_skb`), and every
//! ICMP error it sends about one (`icmp:icmp_send`: REJECT rules, closed ports). Both fire only
//! when something goes wrong, so they export a record each time.

use aya_ebpf::{macros::btf_tracepoint, programs::BtfTracePointContext};
use tracer_common::{
    counter,
    event::{Event, kind},
    flow::{Packet, Slot, flag, state},
};

use crate::{
    emit::{copy_words, scratch, send, slot_of},
    maps::{NETNS_FILTER, config, count},
    parse::{self, Parsed, QuestionAt},
};

/// `skb:kfree_skb` since 5.17: TP_PROTO(struct sk_buff *skb, void *location,
/// enum skb_drop_reason reason, ...). The loader picks this one when the tracepoint has the reason.
#[btf_tracepoint(function = "kfree_skb")]
pub fn drop_kfree_skb(ctx: BtfTracePointContext) -> i32 {
    let skb: *const u8 = ctx.arg(0);
    let location: u64 = ctx.arg(1);
    let reason: u32 = ctx.arg(2);
    let not_drops = config().not_drops;
    if reason == not_drops[0] || reason == not_drops[1] {
        return 0;
    }
    dropped(skb, location, reason);
    0
}

/// `skb:kfree_skb` before 5.17: TP_PROTO(struct sk_buff *skb, void *location), no reason (freed
/// packets that were not drops go to `skb:consume_skb` there). Drops are placed by location.
#[btf_tracepoint(function = "kfree_skb")]
pub fn drop_kfree_skb_noreason(ctx: BtfTracePointContext) -> i32 {
    let skb: *const u8 = ctx.arg(0);
    let location: u64 = ctx.arg(1);
    dropped(skb, location, 0);
    0
}

#[inline(always)]
fn dropped(skb: *const u8, location: u64, reason: u32) {
    if let Some(e) = skb_record(skb, kind::DROP, counter::DROPS, flag::DROPPED) {
        e.reason = reason;
        e.location = location;
        send(e);
    }
}

#[btf_tracepoint(function = "icmp_send")]
pub fn drop_icmp_send(ctx: BtfTracePointContext) -> i32 {
    // TP_PROTO(const struct sk_buff *skb, int type, int code): skb is the packet refused.
    let skb: *const u8 = ctx.arg(0);
    let icmp_type: u32 = ctx.arg(1);
    let code: u32 = ctx.arg(2);
    if let Some(e) = skb_record(skb, kind::ICMP, counter::ICMP, flag::ICMP) {
        e.reason = (icmp_type << 8) | (code & 0xff);
        send(e);
    }
    0
}

/// Parses `skb`; for a wanted DNS packet in a traced namespace, returns the packet, where its
/// question is, and the query's slot if it is still pending.
#[inline(always)]
pub fn skb_packet_slot(
    skb: *const u8,
) -> Option<(Packet, QuestionAt, parse::Place, Option<&'static mut Slot>)> {
    let (packet, question) = match parse::skb_packet(skb) {
        Parsed::Dns { packet, question } => (packet, question),
        Parsed::Malformed => {
            count(counter::PARSE_ERRORS);
            return None;
        }
        Parsed::Other => return None,
    };
    if !parse::wanted(&packet) {
        return None;
    }
    let place = parse::skb_place(skb);
    // SAFETY: lookup in a hash map of plain values.
    if config().netns_filter != 0 && unsafe { NETNS_FILTER.get(place.netns) }.is_none() {
        return None;
    }
    let (client_ip, client_port) = parse::client_of(&packet);
    // A SYN carries no query: no slot is its.
    let slot = match slot_of(&client_ip, client_port, packet.dns_id, packet.proto) {
        Some((_, slot)) if slot.state == state::PENDING && packet.syn == 0 => Some(slot),
        _ => None,
    };
    Some((packet, question, place, slot))
}

/// Parses `skb`; for a wanted DNS packet, counts it, marks its query's slot with `mark` and
/// returns a record holding the packet and the query's path so far (or the packet's question).
#[inline(always)]
pub fn skb_record(
    skb: *const u8,
    kind: u32,
    counter: u32,
    mark: u16,
) -> Option<&'static mut Event> {
    let (packet, question, place, slot) = skb_packet_slot(skb)?;
    count(counter);
    let e = scratch(kind, &packet)?;
    e.netns = place.netns;
    e.ifindex = place.ifindex;
    e.hook = tracer_common::event::NO_HOOK;
    match slot {
        Some(slot) => {
            slot.flags |= mark;
            copy_words(&mut e.slot, slot);
        }
        None => {
            // Up to the datagram's end (by its UDP length), never past it.
            e.slot.question_len = parse::skb_question(question, &mut e.slot.question);
        }
    }
    Some(e)
}
