//! Conntrack stage (kprobe/fentry tier): `__nf_conntrack_confirm` refusing a DNS packet's new
//! entry (an insert race it could not resolve). Exported only when it refuses.

use aya_ebpf::{
    macros::{fexit, kprobe, kretprobe},
    programs::{FExitContext, ProbeContext, RetProbeContext},
};
use tracer_common::{counter, event::kind, flow::flag};

use crate::{
    emit::send,
    probes::{drop::skb_record, stash},
};

const NF_ACCEPT: u32 = 1;

#[kprobe]
pub fn conntrack_confirm_enter(ctx: ProbeContext) -> u32 {
    let skb: *const u8 = ctx.arg(0).unwrap_or(core::ptr::null());
    stash::put(stash::CONFIRM, skb, core::ptr::null());
    0
}

#[kretprobe]
pub fn conntrack_confirm_exit(ctx: RetProbeContext) -> u32 {
    let verdict: u32 = ctx.ret();
    if let Some((skb, _)) = stash::take(stash::CONFIRM) {
        confirmed(skb, verdict);
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
        return;
    }
    if let Some(e) = skb_record(skb, kind::CONFIRM, counter::DEEP_EVENTS, flag::DROPPED) {
        e.reason = verdict;
        send(e);
    }
}
