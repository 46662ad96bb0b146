//! Every map and the load-time configuration.

use aya_ebpf::{
    bindings::BPF_F_MMAPABLE,
    macros::map,
    maps::{Array, HashMap, PerCpuArray, RingBuf},
};
use tracer_common::{
    config::{Config, KernelOffsets},
    counter,
    event::EVENTS_BYTES,
    flow::{SLOTS, Slot},
};

/// Set by the loader with `EbpfLoader::override_global("CONFIG", ..)`; read-only at run time.
#[unsafe(no_mangle)]
static CONFIG: Config = Config {
    pod_ip: [0; 4],
    netns_filter: 0,
    export_all: 0,
    dns_port: 53u16.to_be(),
    _pad: 0,
    not_drops: [Config::NOT_A_REASON; 2],
    _pad2: 0,
    slow_ns: 0,
    offsets: KernelOffsets {
        skb_head: 0,
        skb_network_header: 0,
        skb_dev: 0,
        skb_sk: 0,
        dev_ifindex: 0,
        dev_net: 0,
        sk_net: 0,
        net_inum: 0,
        xt_table_name: 0,
        nft_chain_table: 0,
        nft_chain_name: 0,
        nft_table_name: 0,
        nft_pktinfo_skb: 0,
        ipt_skb_arg: 0,
        hook_state_hook: 0,
        sk_rmem_alloc: 0,
        sk_rcvbuf: 0,
        sk_drops: 0,
        sk_drop_counters: 0,
        numa_drops0: 0,
        numa_drops1: 0,
    },
    _pad_end: 0,
};

/// The configuration, read through a volatile load so that the compiler cannot fold the
/// placeholder values above into the code (the loader rewrites them before load).
#[inline(always)]
pub fn config() -> &'static Config {
    // SAFETY: CONFIG is a valid static; the volatile read only stops constant folding.
    unsafe { &*core::ptr::read_volatile(&&raw const CONFIG) }
}

/// Records for userspace: failed, slow or asked-for queries. Submitted without wakeup; the
/// loader drains it on a timer (a wakeup per record costs 36-45 % of DNS throughput here).
/// 2 MiB holds 3799 records (544 bytes each, 8 of header): with `--all` at 30 k queries/s, 125 ms
/// between drains (the loader drains every 50 ms); a full buffer is counted as lost events.
#[map]
pub static EVENTS: RingBuf = RingBuf::with_byte_size(EVENTS_BYTES, 0);

/// Per-query state, in sets of `flow::WAYS` slots from `flow::slot_index`. Mmapable only for its
/// placement: the kernel then puts the values at a page boundary, so that each slot's first 64
/// bytes are one cache line (an ordinary array's values start 56 bytes into a line on 6.18,
/// wherever `struct bpf_array` happens to end).
#[map]
pub static QUERY_SLOTS: Array<Slot> = Array::with_max_entries(SLOTS, BPF_F_MMAPABLE);

/// A byte per slot, non-zero while its query waits for an answer: userspace reads this one value
/// and then only the slots in flight, instead of all of them every second.
#[map]
pub static PENDING: Array<[u8; SLOTS as usize]> = Array::with_max_entries(1, 0);

/// `counter::*`, per CPU.
#[map]
pub static COUNTERS: PerCpuArray<u64> = PerCpuArray::with_max_entries(counter::COUNT, 0);

/// Latency histogram of answered queries, log2 microseconds, per CPU.
#[map]
pub static LATENCY: PerCpuArray<u64> = PerCpuArray::with_max_entries(counter::LATENCY_BUCKETS, 0);

/// Network namespaces to trace (inode -> 1), consulted when `Config::netns_filter` is set.
#[map]
pub static NETNS_FILTER: HashMap<u32, u8> = HashMap::with_max_entries(256, 0);

/// Adds one to a counter.
#[inline(always)]
pub fn count(index: u32) {
    if let Some(c) = COUNTERS.get_ptr_mut(index) {
        // SAFETY: per-CPU value, no concurrent writer on this CPU.
        unsafe { *c += 1 };
    }
}
