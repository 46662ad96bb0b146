//! NAT stage (kprobe/fentry tier): `nf_nat_manip_pkt` rewriting a DNS packet. The DNAT of a query
//! to a pod is written into the query's slot, so every exported query names the NAT target the
//! kernel chose; nothing is exported per rewrite.

use aya_ebpf::{
    macros::{fexit, kprobe, kretprobe},
    programs::{FExitContext, ProbeContext, RetProbeContext},
};
use tracer_common::{counter, flow::flag};

use crate::{
    maps::{config, count},
    probes::{drop::skb_packet_slot, stash},
};

/// `enum nf_nat_manip_type`: the destination is rewritten.
const NF_NAT_MANIP_DST: u32 = 1;

#[kprobe]
pub fn nat_manip_enter(ctx: ProbeContext) -> u32 {
    // nf_nat_manip_pkt(struct sk_buff *skb, struct nf_conn *ct, enum nf_nat_manip_type mtype, dir)
    let skb: *const u8 = ctx.arg(0).unwrap_or(core::ptr::null());
    let mtype: u64 = ctx.arg(2).unwrap_or(0);
    stash::put(stash::NAT, skb as u64, mtype, 0);
    0
}

#[kretprobe]
pub fn nat_manip_exit(_ctx: RetProbeContext) -> u32 {
    if let Some(a) = stash::take(stash::NAT) {
        nat_done(a.a as *const u8, a.b as u32);
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

/// After the rewrite: a query's new destination goes into its slot, where every exported record
/// of the query carries it.
#[inline(always)]
fn nat_done(skb: *const u8, mtype: u32) {
    let Some((packet, _, _, slot)) = skb_packet_slot(skb) else {
        return;
    };
    count(counter::DEEP_EVENTS);
    if mtype == NF_NAT_MANIP_DST
        && packet.dport == config().dns_port
        && let Some(slot) = slot
    {
        slot.nat_ip = packet.daddr;
        slot.nat_port = packet.dport;
        slot.flags |= flag::NATTED;
    }
}
