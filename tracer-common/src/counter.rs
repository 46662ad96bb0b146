//! Per-CPU counters the kernel keeps so that the healthy fast path exports nothing.

/// Queries seen leaving a client (TC ingress on the client's link).
pub const QUERIES: u32 = 0;
/// Queries seen entering an endpoint's link after DNAT.
pub const AT_ENDPOINT: u32 = 1;
/// Answers seen leaving an endpoint.
pub const FROM_ENDPOINT: u32 = 2;
/// Answers delivered to the client that asked.
pub const ANSWERED: u32 = 3;
/// Answers slower than the threshold.
pub const SLOW: u32 = 4;
/// DNS packets dropped (`skb:kfree_skb`).
pub const DROPS: u32 = 5;
/// ICMP errors sent about a DNS packet.
pub const ICMP: u32 = 6;
/// Pending queries pushed out of the slot table by a newer one (exported as `EVICTED`).
pub const EVICTED: u32 = 7;
/// Answers or endpoint packets with no matching query in the slot table.
pub const UNMATCHED: u32 = 8;
/// Port-53 packets that did not parse (truncated, IP options past the bound, fragments).
pub const PARSE_ERRORS: u32 = 9;
/// Events the ring buffer had no room for: lost, and shown in every summary.
pub const LOST_EVENTS: u32 = 10;
/// Socket-side drops (`udp:udp_fail_queue_rcv_skb`, `sock:sock_rcvqueue_full`).
pub const SOCKET_DROPS: u32 = 11;
/// Netfilter verdicts, NAT rewrites and confirms seen by the kprobe/fentry tier.
pub const DEEP_EVENTS: u32 = 12;
/// Number of counters.
pub const COUNT: u32 = 13;

/// Latency histogram buckets: bucket `i` holds answers with latency in [2^i, 2^(i+1)) microseconds.
pub const LATENCY_BUCKETS: u32 = 24;
