//! Netfilter stage (kprobe/fentry tier): the verdict of each iptables-legacy table
//! (`ipt_do_table`) and nf_tables chain (`nft_do_chain`) on a DNS packet, exported when it is a
//! drop, with the backend and the table (and chain) name. Kernels without kprobes or ftrace hooks
//! cannot attach these; there the drop stage's code location tells the backend instead.

use aya_ebpf::{
    helpers::{bpf_probe_read_kernel, bpf_probe_read_kernel_str_bytes},
    macros::{fexit, kprobe, kretprobe},
    programs::{FExitContext, ProbeContext, RetProbeContext},
};
use tracer_common::{counter, event::kind};

use crate::{
    emit::send,
    maps::config,
    probes::{drop::skb_record, stash},
};

const NF_DROP: u32 = 0;
/// `Event::location` of a VERDICT record: which backend.
const LEGACY: u64 = 1;
const NFTABLES: u64 = 2;

#[kprobe]
pub fn netfilter_ipt_enter(ctx: ProbeContext) -> u32 {
    // Read both arguments, then pick: the verifier refuses a context offset chosen at run time.
    let a0: *const u8 = ctx.arg(0).unwrap_or(core::ptr::null());
    let a1: *const u8 = ctx.arg(1).unwrap_or(core::ptr::null());
    let (skb, table) = if config().offsets.ipt_skb_arg == 0 {
        (a0, a1)
    } else {
        (a1, a0)
    };
    stash::put(stash::IPT, skb, table);
    0
}

#[kretprobe]
pub fn netfilter_ipt_exit(ctx: RetProbeContext) -> u32 {
    let verdict: u32 = ctx.ret();
    if let Some((skb, table)) = stash::take(stash::IPT) {
        ipt_verdict(skb, table, verdict);
    }
    0
}

#[fexit(function = "ipt_do_table")]
pub fn netfilter_ipt_fexit(ctx: FExitContext) -> u32 {
    // ipt_do_table(void *priv, struct sk_buff *skb, const struct nf_hook_state *state) since
    // 5.17; the loader refuses this program on older layouts (the verifier checks arg types).
    let table: *const u8 = ctx.arg(0);
    let skb: *const u8 = ctx.arg(1);
    let verdict: u32 = ctx.arg(3);
    ipt_verdict(skb, table, verdict);
    0
}

#[inline(always)]
fn ipt_verdict(skb: *const u8, table: *const u8, verdict: u32) {
    if verdict & 0xff != NF_DROP {
        return;
    }
    if let Some(e) = skb_record(skb, kind::VERDICT, counter::DEEP_EVENTS, 0) {
        e.reason = verdict;
        e.location = LEGACY;
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
    stash::put(stash::NFT, pkt, chain);
    0
}

#[kretprobe]
pub fn netfilter_nft_exit(ctx: RetProbeContext) -> u32 {
    let verdict: u32 = ctx.ret();
    if let Some((pkt, chain)) = stash::take(stash::NFT) {
        nft_verdict(pkt, chain, verdict);
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
    if verdict & 0xff != NF_DROP {
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
        e.location = NFTABLES;
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
