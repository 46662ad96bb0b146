//! The node's state without eBPF, read-only: iptables backend, kube-proxy and the DNS service,
//! the conntrack table, kernel facts; turned into findings with evidence.
//!
//! # Layout
//! - `backend`: which iptables backend holds kube-proxy's rules (legacy, nft, mixed, stale).
//! - `conntrack`: the conntrack table over ctnetlink (statistics, entries, bulk create/delete, events).
//! - `kubeproxy`: `iptables-save` parsing, kube-proxy's mode, the DNS Service and its rule counters.
pub mod backend;
pub mod conntrack;
pub mod kubeproxy;
