//! Netfilter stage (kprobe/fentry tier): the verdict of each iptables-legacy table
//! (`ipt_do_table`) and nf_tables chain (`nft_do_chain`) on a DNS packet, exported when it is a
//! drop, with the backend and the table and chain (xtables: table and hook) names. Kernels
//! without kprobes or ftrace hooks cannot attach these; there the drop's code location and the
//! rules' packet counters tell the backend instead.

use aya_ebpf::{
    helpers::{bpf_probe_read_kernel, bpf_probe_read_kernel_str_bytes},
    macros::{fexit, kprobe, kretprobe},
    programs::{FExitContext, ProbeContext, RetProbeContext},
};
use tracer_common::{
    counter,
    event::{backend, kind},
};

use crate::{
    emit::send,
    maps::config,
    probes::{drop::skb_record, stash},
};

const NF_DROP: u32 = 0;
const NF_STOLEN: u32 = 2;

/// A drop: NF_DROP, or (6.1's nf_tables, with `NF_DROP_REASON`) the table freed the packet
/// itself and says so with NF_STOLEN and an errno in the upper bits.
#[inline(always)]
fn is_drop(verdict: u32) -> bool {
    let v = verdict & 0xff;
    v == NF_DROP || (v == NF_STOLEN && verdict >> 16 != 0)
}

/// `nf_hook_state.hook` of `state`.
#[inline(always)]
fn hook_of(state: *const u8) -> u32 {
    let at = state.wrapping_add(config().offsets.hook_state_hook as usize);
    // SAFETY: the helper checks the address.
    unsafe { bpf_probe_read_kernel(at) }.map_or(tracer_common::event::NO_HOOK, |h: u8| u32::from(h))
}

#[kprobe]
pub fn netfilter_ipt_enter(ctx: ProbeContext) -> u32 {
    // Read every argument, then pick: the verifier refuses a context offset chosen at run time.
    // Before 5.16 ipt_do_table(skb, state, table), since (priv, skb, state).
    let a0: *const u8 = ctx.arg(0).unwrap_or(core::ptr::null());
    let a1: *const u8 = ctx.arg(1).unwrap_or(core::ptr::null());
    let a2: *const u8 = ctx.arg(2).unwrap_or(core::ptr::null());
    let (skb, state, table) = if config().offsets.ipt_skb_arg == 0 {
        (a0, a1, a2)
    } else {
        (a1, a2, a0)
    };
    stash::put(
        stash::IPT,
        skb as u64,
        table as u64,
        u64::from(hook_of(state)),
    );
    0
}

#[kretprobe]
pub fn netfilter_ipt_exit(ctx: RetProbeContext) -> u32 {
    let verdict: u32 = ctx.ret();
    if let Some(a) = stash::take(stash::IPT) {
        ipt_verdict(a.a as *const u8, a.b as *const u8, a.c as u32, verdict);
    }
    0
}

#[fexit(function = "ipt_do_table")]
pub fn netfilter_ipt_fexit(ctx: FExitContext) -> u32 {
    // ipt_do_table(void *priv, struct sk_buff *skb, const struct nf_hook_state *state) since
    // 5.16; the loader refuses this program on older layouts (the verifier checks arg types).
    let table: *const u8 = ctx.arg(0);
    let skb: *const u8 = ctx.arg(1);
    let state: *const u8 = ctx.arg(2);
    let verdict: u32 = ctx.arg(3);
    ipt_verdict(skb, table, hook_of(state), verdict);
    0
}

#[inline(always)]
fn ipt_verdict(skb: *const u8, table: *const u8, hook: u32, verdict: u32) {
    if !is_drop(verdict) {
        return;
    }
    if let Some(e) = skb_record(skb, kind::VERDICT, counter::DEEP_EVENTS, 0) {
        e.reason = verdict;
        e.location = backend::XTABLES;
        e.hook = hook;
        let name = table.wrapping_add(config().offsets.xt_table_name as usize);
        // SAFETY: the helper checks the address and bounds the copy.
        let _ = unsafe { bpf_probe_read_kernel_str_bytes(name, &mut e.name) };
        send(e);
    }
}

#[kprobe]
pub fn netfilter_nft_enter(ctx: ProbeContext) -> u32 {
    let pkt: *const u8 = ctx.arg(0).unwrap_or(core::ptr::null());
    let chain: *const u8 = ctx.arg(1).unwrap_or(core::ptr::null());
    stash::put(stash::NFT, pkt as u64, chain as u64, 0);
    0
}

#[kretprobe]
pub fn netfilter_nft_exit(ctx: RetProbeContext) -> u32 {
    let verdict: u32 = ctx.ret();
    if let Some(a) = stash::take(stash::NFT) {
        nft_verdict(a.a as *const u8, a.b as *const u8, verdict);
    }
    0
}

#[fexit(function = "nft_do_chain")]
pub fn netfilter_nft_fexit(ctx: FExitContext) -> u32 {
    // unsigned int nft_do_chain(struct nft_pktinfo *pkt, void *priv)
    let pkt: *const u8 = ctx.arg(0);
    let chain: *const u8 = ctx.arg(1);
    let verdict: u32 = ctx.arg(2);
    nft_verdict(pkt, chain, verdict);
    0
}

#[inline(always)]
fn nft_verdict(pkt: *const u8, chain: *const u8, verdict: u32) {
    if !is_drop(verdict) {
        return;
    }
    let o = &config().offsets;
    // SAFETY: probe reads check the address.
    let Ok(skb) = (unsafe {
        bpf_probe_read_kernel(pkt.wrapping_add(o.nft_pktinfo_skb as usize) as *const *const u8)
    }) else {
        return;
    };
    if let Some(e) = skb_record(skb, kind::VERDICT, counter::DEEP_EVENTS, 0) {
        e.reason = verdict;
        e.location = backend::NFTABLES;
        // SAFETY: probe reads check the address and bound the copies.
        unsafe {
            if let Ok(name) = bpf_probe_read_kernel(
                chain.wrapping_add(o.nft_chain_name as usize) as *const *const u8
            ) {
                let _ = bpf_probe_read_kernel_str_bytes(name, &mut e.chain);
            }
            if let Ok(table) = bpf_probe_read_kernel(
                chain.wrapping_add(o.nft_chain_table as usize) as *const *const u8
            ) && let Ok(name) = bpf_probe_read_kernel(
                table.wrapping_add(o.nft_table_name as usize) as *const *const u8,
            ) {
                let _ = bpf_probe_read_kernel_str_bytes(name, &mut e.name);
            }
        }
        send(e);
    }
}
