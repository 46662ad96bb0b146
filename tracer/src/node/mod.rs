//! The node's state without eBPF, read-only: iptables backend, kube-proxy and the DNS service,
//! the conntrack table, kernel facts; turned into findings with evidence.
//!
//! # Layout
//! - `conntrack`: the conntrack table over ctnetlink (statistics, entries, bulk create/delete, events).
pub mod conntrack;
