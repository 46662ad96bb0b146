//! The load-time configuration: one global (`CONFIG`) set with `EbpfLoader::override_global`.

/// Byte offsets of the kernel struct fields the programs read, taken from the running kernel's
/// BTF at load time (a poor man's CO-RE: aya's Rust programs have no field relocations).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct KernelOffsets {
    /// `sk_buff.head` (unsigned char *).
    pub skb_head: u32,
    /// `sk_buff.network_header` (u16, offset from head).
    pub skb_network_header: u32,
    /// `sk_buff.dev` (struct net_device *).
    pub skb_dev: u32,
    /// `sk_buff.sk` (struct sock *), used when the skb has no device yet.
    pub skb_sk: u32,
    /// `net_device.ifindex` (int).
    pub dev_ifindex: u32,
    /// `net_device.nd_net.net` (struct net *).
    pub dev_net: u32,
    /// `sock.__sk_common.skc_net.net` (struct net *).
    pub sk_net: u32,
    /// `net.ns.inum` (unsigned int): the network namespace's inode number.
    pub net_inum: u32,
    /// `xt_table.name` (char[]), for the legacy table verdict probe.
    pub xt_table_name: u32,
    /// `nft_chain.table` (struct nft_table *), for the nf_tables verdict probe.
    pub nft_chain_table: u32,
    /// `nft_chain.name` (char *).
    pub nft_chain_name: u32,
    /// `nft_table.name` (char *).
    pub nft_table_name: u32,
    /// `nft_pktinfo.skb` (struct sk_buff *).
    pub nft_pktinfo_skb: u32,
    /// Argument index of the `struct sk_buff *` in `ipt_do_table`: 0 before 5.16
    /// `(skb, state, table)`, 1 since `(priv, skb, state)`. The state follows the skb in both.
    pub ipt_skb_arg: u32,
    /// `nf_hook_state.hook` (u8): which netfilter hook a table runs at.
    pub hook_state_hook: u32,
    /// `sock.sk_backlog.rmem_alloc` (atomic_t): bytes in the receive queue.
    pub sk_rmem_alloc: u32,
    /// `sock.sk_rcvbuf` (int).
    pub sk_rcvbuf: u32,
    /// `sock.sk_drops` (atomic_t); `MISSING` where this kernel has none.
    pub sk_drops: u32,
    /// `sock.sk_drop_counters` (struct numa_drop_counters *, 6.18+; UDP counts its drops
    /// there); `MISSING` before.
    pub sk_drop_counters: u32,
    /// `numa_drop_counters.drops0` (atomic_t); `MISSING` before 6.18.
    pub numa_drops0: u32,
    /// `numa_drop_counters.drops1` (atomic_t); `MISSING` before 6.18.
    pub numa_drops1: u32,
}

impl KernelOffsets {
    /// The offset of a field this kernel does not have (0 is a real offset: `nft_pktinfo.skb`).
    pub const MISSING: u32 = u32::MAX;
}

impl Config {
    /// A `not_drops` entry this kernel has no value for.
    pub const NOT_A_REASON: u32 = u32::MAX;
}

/// Filters and switches. Addresses and ports are in network byte order, as in the packet. The
/// kernel tells queries from answers by direction and port, so it needs no Service IP.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Config {
    /// Only this pod IP (IPv4-mapped for IPv4), as client or endpoint; all zero means any.
    pub pod_ip: crate::flow::Addr,
    /// Non-zero: only namespaces listed in the `NETNS_FILTER` map are traced.
    pub netns_filter: u32,
    /// Non-zero: export a record for every query, answered ones included (`--all`).
    pub export_all: u32,
    /// The DNS port (53), network order.
    pub dns_port: u16,
    /// Explicit padding (no implicit padding crosses the kernel boundary).
    pub _pad: u16,
    /// `enum skb_drop_reason` values that are not drops (`SKB_NOT_DROPPED_YET`,
    /// `SKB_CONSUMED`), from this kernel's BTF; `NOT_A_REASON` where it has no such value.
    pub not_drops: [u32; 2],
    /// Explicit padding before the 8-byte field.
    pub _pad2: u32,
    /// Answers slower than this are exported (nanoseconds).
    pub slow_ns: u64,
    /// Offsets of kernel struct fields.
    pub offsets: KernelOffsets,
    /// Explicit padding to the struct's alignment.
    pub _pad_end: u32,
}

#[cfg(feature = "user")]
unsafe impl aya::Pod for Config {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_are_pinned() {
        assert_eq!(core::mem::size_of::<KernelOffsets>(), 84);
        assert_eq!(core::mem::size_of::<Config>(), 48 + 84 + 4);
    }
}
