//! NAT stage (kprobe/fentry tier): `nf_nat_manip_pkt` rewriting a DNS packet (DNAT of a query to
//! a pod, un-DNAT of its answer). Records the rewritten addresses; exported only with `--all`
//! since every DNS packet is rewritten on the healthy path.

use aya_ebpf::{
    macros::{fexit, kprobe, kretprobe},
    programs::{FExitContext, ProbeContext, RetProbeContext},
};
use tracer_common::{counter, event::kind, flow::Packet};

use crate::{
    emit::send,
    maps::{config, count},
    parse::{self, Parsed},
    probes::{drop::skb_record, stash},
};

#[kprobe]
pub fn nat_manip_enter(ctx: ProbeContext) -> u32 {
    // nf_nat_manip_pkt(struct sk_buff *skb, struct nf_conn *ct, enum nf_nat_manip_type mtype, dir)
    let skb: *const u8 = ctx.arg(0).unwrap_or(core::ptr::null());
    let mtype: u64 = ctx.arg(2).unwrap_or(0);
    stash::put(stash::NAT, skb, mtype as *const u8);
    0
}

#[kretprobe]
pub fn nat_manip_exit(_ctx: RetProbeContext) -> u32 {
    if let Some((skb, mtype)) = stash::take(stash::NAT) {
        nat_done(skb, mtype as u32);
    }
    0
}

#[fexit(function = "nf_nat_manip_pkt")]
pub fn nat_manip_fexit(ctx: FExitContext) -> u32 {
    let skb: *const u8 = ctx.arg(0);
    let mtype: u32 = ctx.arg(2);
    nat_done(skb, mtype);
    0
}

/// After the rewrite: count it; with `--all`, export the packet as rewritten.
#[inline(always)]
fn nat_done(skb: *const u8, mtype: u32) {
    if config().export_all == 0 {
        if let Parsed::Dns { packet, .. } = parse::skb_packet(skb)
            && parse::wanted(&packet)
        {
            count(counter::DEEP_EVENTS);
        }
        return;
    }
    if let Some(e) = skb_record(skb, kind::NAT, counter::DEEP_EVENTS, 0) {
        e.reason = mtype;
        let p: Packet = e.packet;
        e.name[..4].copy_from_slice(&p.saddr.to_ne_bytes());
        e.name[4..8].copy_from_slice(&p.daddr.to_ne_bytes());
        send(e);
    }
}
