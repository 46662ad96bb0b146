//! Socket stage: a DNS server's socket refusing a packet (receive queue full, or the UDP layer
//! failing to queue it). The kernel also frees these with a drop reason; these hooks add which
//! socket-side path refused it.

use aya_ebpf::{macros::btf_tracepoint, programs::BtfTracePointContext};
use tracer_common::{
    counter,
    event::{kind, socket_hook},
    flow::flag,
};

use crate::{emit::send, probes::drop::skb_record};

#[btf_tracepoint(function = "udp_fail_queue_rcv_skb")]
pub fn socket_udp_fail_queue(ctx: BtfTracePointContext) -> i32 {
    // TP_PROTO(int rc, struct sock *sk, struct sk_buff *skb) since 6.4; the loader skips this
    // program where the tracepoint has no skb (2 arguments).
    let rc: i32 = ctx.arg(0);
    let skb: *const u8 = ctx.arg(2);
    if let Some(e) = skb_record(skb, kind::SOCKET_DROP, counter::SOCKET_DROPS, flag::DROPPED) {
        e.reason = rc as u32;
        e.location = socket_hook::UDP_FAIL_QUEUE;
        send(e);
    }
    0
}

#[btf_tracepoint(function = "sock_rcvqueue_full")]
pub fn socket_rcvqueue_full(ctx: BtfTracePointContext) -> i32 {
    // TP_PROTO(struct sock *sk, struct sk_buff *skb)
    let skb: *const u8 = ctx.arg(1);
    if let Some(e) = skb_record(skb, kind::SOCKET_DROP, counter::SOCKET_DROPS, flag::DROPPED) {
        e.location = socket_hook::RCVQUEUE_FULL;
        send(e);
    }
    0
}
