//! Conntrack stage (kprobe/fentry tier): `__nf_conntrack_confirm` on a DNS query. A confirmed
//! entry is marked in the query's slot; a refused one (an insert race it could not resolve) is
//! exported.

use aya_ebpf::{
    macros::{fexit, kprobe, kretprobe},
    programs::{FExitContext, ProbeContext, RetProbeContext},
};
use tracer_common::{counter, event::kind, flow::flag};

use crate::{
    emit::send,
    maps::count,
    probes::{
        drop::{skb_packet_slot, skb_record},
        stash,
    },
};

const NF_ACCEPT: u32 = 1;

#[kprobe]
pub fn conntrack_confirm_enter(ctx: ProbeContext) -> u32 {
    let skb: *const u8 = ctx.arg(0).unwrap_or(core::ptr::null());
    stash::put(stash::CONFIRM, skb as u64, 0, 0);
    0
}

#[kretprobe]
pub fn conntrack_confirm_exit(ctx: RetProbeContext) -> u32 {
    let verdict: u32 = ctx.ret();
    if let Some(a) = stash::take(stash::CONFIRM) {
        confirmed(a.a as *const u8, verdict);
    }
    0
}

#[fexit(function = "__nf_conntrack_confirm")]
pub fn conntrack_confirm_fexit(ctx: FExitContext) -> u32 {
    let skb: *const u8 = ctx.arg(0);
    let verdict: u32 = ctx.arg(1);
    confirmed(skb, verdict);
    0
}

#[inline(always)]
fn confirmed(skb: *const u8, verdict: u32) {
    if verdict == NF_ACCEPT {
        if let Some((_, _, _, Some(slot))) = skb_packet_slot(skb) {
            count(counter::DEEP_EVENTS);
            slot.flags |= flag::CONFIRMED;
        }
        return;
    }
    if let Some(e) = skb_record(skb, kind::CONFIRM, counter::DEEP_EVENTS, flag::DROPPED) {
        e.reason = verdict;
        send(e);
    }
}
