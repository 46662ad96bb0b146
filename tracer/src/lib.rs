//! tracer: follows every UDP/53 query on a Kubernetes node through the Service IP, conntrack and
//! DNAT to the DNS pod and back, and says where each unanswered one died and why.
//!
//! # Layout
//! - `cli`: every command-line type.
//! - `netns`: running code inside another network namespace.
//! - `lab`: the simulated node (namespaces, bridge, kube-proxy rules, DNS pods) and its faults.
//! - `measure`: active DNS queries at a fixed rate, with loss and latency.
//! - `node`: the node's state without eBPF (iptables backend, kube-proxy, conntrack), as findings.
pub mod cli;
pub mod lab;
pub mod measure;
pub mod netns;
pub mod node;
