//! tracer: follows every UDP/53 query on a Kubernetes node through the Service IP, conntrack and
//! DNAT to the DNS pod and back, and says where each unanswered one died and why.
//!
//! # Layout
//! - `cmd`: one file per command: arguments -> domain call -> rendering.
//! - `cli`: every command-line type (clap only).
//! - `flow`: kernel records to one record per query (correlation across NAT, DNS questions).
//! - `kernel`: what this kernel offers (BTF offsets, drop-reason names, symbols, hook support).
//! - `links`: a namespace's interfaces and their kinds (`ip -o -d link`).
//! - `netns`: running code inside another network namespace.
//! - `lab`: the simulated node (namespaces, bridge, kube-proxy rules, DNS pods) and its faults.
//! - `measure`: active DNS queries at a fixed rate, with loss and latency.
//! - `probes`: the eBPF programs: table, per-kernel plan, load/attach/read session.
//! - `report`: the data models of results, rendered as text or JSON.
//! - `ruletrace`: which netfilter rule gave a DNS packet which verdict (nftrace; legacy TRACE).
//! - `trace`: a running trace: hooks -> records -> correlator -> per-query records -> summary.
//! - `node`: the node's state without eBPF (iptables backend, kube-proxy, conntrack), as findings.
//! - `validate`: the lab's scenarios, each checked for detection and attribution.
//! - `vm`: another kernel (Debian's 5.10, 6.1, 6.12) booted under qemu on this machine's root, one command run in it.
pub mod cli;
pub mod cmd;
pub mod flow;
pub mod kernel;
pub mod lab;
pub mod links;
pub mod measure;
pub mod netns;
pub mod node;
pub mod probes;
pub mod report;
pub mod ruletrace;
pub mod trace;
pub mod validate;
pub mod vm;
