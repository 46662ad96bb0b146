//! Records the kernel exports through the ring buffer. One fixed-size record keeps the reader
//! simple; the kernel writes them only for failed, slow or asked-for queries, so size is not hot.

use crate::flow::Slot;

/// What a record says.
pub mod kind {
    /// An answer reached its client (exported when slow, after a drop, or with `--all`).
    pub const ANSWERED: u32 = 1;
    /// A DNS packet was freed with a drop reason (`skb:kfree_skb`).
    pub const DROP: u32 = 2;
    /// An ICMP error was sent about a DNS packet (`icmp:icmp_send`), or seen on a pod link.
    pub const ICMP: u32 = 3;
    /// A socket refused the packet (`udp:udp_fail_queue_rcv_skb`, `sock:sock_rcvqueue_full`).
    pub const SOCKET_DROP: u32 = 4;
    /// A pending query was pushed out of its slot by a newer one: not answered so far.
    pub const EVICTED: u32 = 5;
    /// Conntrack confirmed (or refused) a DNS packet's entry (`__nf_conntrack_confirm` return).
    pub const CONFIRM: u32 = 8;
    /// An iptables/nftables table dropped a DNS packet (`ipt_do_table`, `nft_do_chain` return).
    pub const VERDICT: u32 = 9;
}

/// `Event::location` of a VERDICT record: the netfilter backend whose table returned it.
pub mod backend {
    /// Legacy xtables (`ipt_do_table`: iptables-legacy).
    pub const XTABLES: u64 = 1;
    /// nf_tables (`nft_do_chain`: iptables-nft, nft).
    pub const NFTABLES: u64 = 2;
}

/// `Event::location` of a SOCKET_DROP record: which socket-side hook refused the packet.
pub mod socket_hook {
    /// `udp:udp_fail_queue_rcv_skb`.
    pub const UDP_FAIL_QUEUE: u64 = 1;
    /// `sock:sock_rcvqueue_full`.
    pub const RCVQUEUE_FULL: u64 = 2;
}

/// `Event::location` of an ICMP record: where the error was seen.
pub mod icmp_seen {
    /// Sent, at `icmp:icmp_send` (IPv4, 5.16+): `netns` and `ifindex` are the refused packet's.
    pub const SENT: u64 = 0;
    /// An ICMP error leaving a pod, on its link (TC ingress, the pod links' namespace): the pod
    /// sent it. IPv6 always; IPv4 where `icmp:icmp_send` did not see it first.
    pub const LEAVING_POD: u64 = 1;
    /// An ICMP error reaching the client, on its link (TC egress, the pod links' namespace):
    /// the node sent it.
    pub const REACHING_CLIENT: u64 = 2;
}

/// `Event::hook` when the hook is not known.
pub const NO_HOOK: u32 = u32::MAX;

/// Bytes of a netfilter table or chain name carried by `VERDICT` records.
pub const NAME_LEN: usize = 32;

/// The ring buffer's size (bytes).
pub const EVENTS_BYTES: u32 = 2 << 20;
/// How many records fit in the ring buffer at once (each behind an 8-byte header): 3799.
pub const EVENTS_CAPACITY: usize = EVENTS_BYTES as usize / (core::mem::size_of::<Event>() + 8);

/// One exported record.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct Event {
    /// When it happened (bpf_ktime_get_ns, CLOCK_MONOTONIC).
    pub ts: u64,
    /// `kind::*`.
    pub kind: u32,
    /// Network namespace (inode number) where it happened.
    pub netns: u32,
    /// Interface index in that namespace (0 when the packet had no device).
    pub ifindex: u32,
    /// DROP: `enum skb_drop_reason` value; SOCKET_DROP: the queueing return code
    /// (`udp_fail_queue_rcv_skb`), 0 for `sock_rcvqueue_full`; ICMP: type << 8 | code; VERDICT:
    /// the netfilter verdict; CONFIRM: the confirm result.
    pub reason: u32,
    /// DROP: the code address that freed the packet (0 when the kernel's tracepoint has no
    /// location); VERDICT: `backend::*`; SOCKET_DROP: `socket_hook::*`; ICMP: `icmp_seen::*`.
    pub location: u64,
    /// VERDICT from xtables: the netfilter hook (`enum nf_inet_hooks`: 0 PREROUTING .. 4
    /// POSTROUTING); `NO_HOOK` otherwise.
    pub hook: u32,
    /// The packet as it was at this point. For ANSWERED/EVICTED, the query's slot below
    /// holds the path; here `packet` is the packet the event saw.
    pub packet: crate::flow::Packet,
    /// DROP/ICMP/SOCKET_DROP/VERDICT/CONFIRM: the packet's DNS question; ANSWERED/EVICTED: the
    /// query's slot (times, endpoint, question).
    pub slot: Slot,
    /// VERDICT: the table name.
    pub name: [u8; NAME_LEN],
    /// VERDICT: the chain name (nf_tables only).
    pub chain: [u8; NAME_LEN],
    /// SOCKET_DROP: the refusing socket's receive queue at that moment.
    pub sock: SockQueue,
}

/// A socket's receive queue as the kernel's `struct sock` held it when it refused a packet.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SockQueue {
    /// `sk_rmem_alloc`: bytes queued (the packets' truesize), read after the refusal.
    pub rmem: u32,
    /// `sk_rcvbuf`: the queue's limit in bytes (0: not read).
    pub rcvbuf: u32,
    /// `sk_drops` (plus the per-NUMA drop counters of kernels that have them): packets this
    /// socket has dropped since it was opened, this one included.
    pub drops: u32,
    /// Explicit padding.
    pub _pad: u32,
}

#[cfg(feature = "user")]
unsafe impl aya::Pod for Event {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn size_is_pinned() {
        assert_eq!(
            core::mem::size_of::<Event>(),
            8 + 16 + 8 + 4 + 44 + core::mem::size_of::<Slot>() + 2 * NAME_LEN + 16
        );
        assert_eq!(core::mem::size_of::<Event>(), 544);
        assert_eq!(EVENTS_CAPACITY, 3799);
    }
}
