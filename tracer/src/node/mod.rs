//! The node's state without eBPF, read-only: iptables backend, kube-proxy and the DNS service,
//! the conntrack table, kernel facts; turned into findings with evidence.
//!
//! # Layout
//! - `backend`: which iptables backend holds kube-proxy's rules (legacy, nft, mixed, stale).
//! - `conntrack`: the conntrack table over ctnetlink, read-only (statistics, entries, events).
//! - `ctnetlink`: the ctnetlink socket and its one receive loop (the lab writes through it too).
//! - `facts`: kernel and OS release, BTF and hook tier, br_netfilter, rp_filter, UDP timeouts.
//! - `inspect`: the findings (severity, evidence, action), text and JSON; the DNS Service and its
//!   rule counters for `tracer trace`.
//! - `kubeproxy`: `iptables-save` parsing, kube-proxy's mode, the DNS Service and its rule counters.
pub mod backend;
pub mod conntrack;
pub(crate) mod ctnetlink;
pub mod facts;
pub mod inspect;
pub mod kubeproxy;

pub use inspect::{Report, dns_counters, dns_service, inspect, inspect_with_tier};
pub use kubeproxy::{DnsService, RuleCounter, counter_deltas};
