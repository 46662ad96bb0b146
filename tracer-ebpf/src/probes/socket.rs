//! Socket stage: a DNS server's socket refusing a packet (receive queue full, or the UDP layer
//! failing to queue it). The kernel also frees these with a drop reason; these hooks add which
//! socket-side path refused it, and the socket's receive queue at that moment.

use aya_ebpf::{
    helpers::bpf_probe_read_kernel, macros::btf_tracepoint, programs::BtfTracePointContext,
};
use tracer_common::{
    config::KernelOffsets,
    counter,
    event::{SockQueue, kind, socket_hook},
    flow::flag,
};

use crate::{emit::send, maps::config, probes::drop::skb_record};

#[btf_tracepoint(function = "udp_fail_queue_rcv_skb")]
pub fn socket_udp_fail_queue(ctx: BtfTracePointContext) -> i32 {
    // TP_PROTO(int rc, struct sock *sk, struct sk_buff *skb) since 6.4; the loader skips this
    // program where the tracepoint has no skb (2 arguments).
    let rc: i32 = ctx.arg(0);
    let sk: *const u8 = ctx.arg(1);
    let skb: *const u8 = ctx.arg(2);
    if let Some(e) = skb_record(skb, kind::SOCKET_DROP, counter::SOCKET_DROPS, flag::DROPPED) {
        e.reason = rc as u32;
        e.location = socket_hook::UDP_FAIL_QUEUE;
        e.sock = queue_of(sk);
        send(e);
    }
    0
}

#[btf_tracepoint(function = "sock_rcvqueue_full")]
pub fn socket_rcvqueue_full(ctx: BtfTracePointContext) -> i32 {
    // TP_PROTO(struct sock *sk, struct sk_buff *skb)
    let sk: *const u8 = ctx.arg(0);
    let skb: *const u8 = ctx.arg(1);
    if let Some(e) = skb_record(skb, kind::SOCKET_DROP, counter::SOCKET_DROPS, flag::DROPPED) {
        e.location = socket_hook::RCVQUEUE_FULL;
        e.sock = queue_of(sk);
        send(e);
    }
    0
}

#[inline(always)]
fn field<T: Default>(base: *const u8, offset: u32) -> T {
    if base.is_null() || offset == KernelOffsets::MISSING {
        return T::default();
    }
    // SAFETY: bpf_probe_read_kernel checks the address and fails cleanly.
    unsafe { bpf_probe_read_kernel(base.wrapping_add(offset as usize) as *const T) }
        .unwrap_or_default()
}

/// The receive queue of `sk`: bytes queued, its limit, and its drops (`sk_drops`, plus the
/// per-NUMA counters where the kernel keeps UDP's drops there, as `sk_drops_read` adds them).
#[inline(always)]
fn queue_of(sk: *const u8) -> SockQueue {
    let o = &config().offsets;
    let counters: *const u8 = if o.sk_drop_counters == KernelOffsets::MISSING {
        core::ptr::null()
    } else {
        field::<usize>(sk, o.sk_drop_counters) as *const u8
    };
    let drops = field::<i32>(sk, o.sk_drops)
        .wrapping_add(field::<i32>(counters, o.numa_drops0))
        .wrapping_add(field::<i32>(counters, o.numa_drops1));
    SockQueue {
        rmem: field::<i32>(sk, o.sk_rmem_alloc) as u32,
        rcvbuf: field::<i32>(sk, o.sk_rcvbuf) as u32,
        drops: drops as u32,
        _pad: 0,
    }
}
