//! The node's state without eBPF, read-only: iptables backend, kube-proxy and the DNS service,
//! the conntrack table, kernel facts; turned into findings with evidence.
//!
//! # Layout
//! - `backend`: which iptables backend holds kube-proxy's rules (legacy, nft, mixed, stale).
//! - `conntrack`: the conntrack table over ctnetlink, read-only (statistics, entries, events);
//!   its `netlink` transport, with the one receive loop, is the lab's too.
//! - `facts`: kernel and OS release, BTF and hook tier, br_netfilter, rp_filter, UDP timeouts.
//! - `findings`: one rule function per area (backend, kube-proxy, conntrack, kernel), each
//!   returning findings with typed evidence.
//! - `host`: what doctor reads beside inspect: netfilter modules, `xtables-multi`, kube-proxy's
//!   process and config, the kernel log's conntrack-full lines.
//! - `inspect`: the report (facts, backends, DNS Service, conntrack, findings); the DNS Service and
//!   its rule counters for `tracer trace`.
//! - `ipvs`: IPVS virtual services and real servers over generic netlink (read here, written by
//!   the lab's ipvs mode).
//! - `kubeproxy`: `iptables-save` parsing, kube-proxy's mode, the DNS Service and its rule counters.
//! - `nodelocal`: NodeLocal DNSCache: its link, listeners on its addresses, NOTRACK/ACCEPT rules.
//! - `nft`: `nft -j` JSON: the tables, and the DNS Service in kube-proxy's nftables-mode table.
//! - `render`: the report as text and JSON, and trace's summary lines.
//! - `watch`: the DNS Service's rules followed during a trace (nf_tables notifications, a
//!   cost-bounded period for legacy).
pub mod backend;
pub mod conntrack;
pub mod facts;
pub mod findings;
pub mod host;
pub mod inspect;
pub mod ipv6;
pub mod ipvs;
pub mod kubeproxy;
pub mod nft;
pub mod nodelocal;
pub mod render;
pub mod watch;

pub use backend::Backend;
pub use inspect::{Report, dns_counters, dns_service, inspect, inspect_with_tier};
pub use kubeproxy::{DnsService, RuleCounter, counter_deltas};
