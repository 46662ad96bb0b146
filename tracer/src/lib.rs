//! tracer: follows every UDP/53 query on a Kubernetes node through the Service IP, conntrack and
//! DNAT to the DNS pod and back, and says where each unanswered one died and why.
//!
//! # Layout
//! Modules depend one way, each only on modules listed below it (`cargo xtask lint` checks it):
//! - `cmd`: one file per command: arguments -> domain call -> rendering (`main` maps the results
//!   to exit codes).
//! - `cli`: every command-line type (clap only).
//! - `doctor`: the checks and a traced probe from a pod, judged: verdict, ranked causes with
//!   evidence and fix, one line per check.
//! - `validate`: the lab's scenarios, each on a fresh lab, checked for detection and attribution.
//! - `trace`: a running trace (hooks -> records -> correlator -> per-query records -> summary |
//!   metrics), its `/metrics` endpoint, and DNS batches sent while it watches.
//! - `report`: the data models of results (the versioned report, the trace summary and its JSON
//!   lines, the Prometheus metrics, validation, compare, fleet), each rendered as text or JSON
//!   (the metrics as OpenMetrics text).
//! - `lab`: the simulated node (namespaces, bridge, kube-proxy rules, DNS pods) and its faults.
//! - `measure`: active DNS queries at a fixed rate, with loss and latency.
//! - `flow`: kernel records to one record per query (correlation across NAT, typed causes, DNS
//!   questions).
//! - `ruletrace`: which netfilter rule gave a DNS packet which verdict (nftrace; legacy TRACE),
//!   with a table or rules of its own that every exit path removes.
//! - `node`: the node's state without eBPF, read-only (iptables backend, kube-proxy, conntrack),
//!   as findings.
//! - `probes`: the eBPF programs: table, per-kernel plan, load/attach/read session.
//! - `vm`: another kernel (Debian's 5.10, 6.1, 6.12) booted under qemu on this machine's root, one
//!   command run in it.
//! - `kernel`: what this kernel offers (BTF offsets, drop-reason names, symbols, hook support).
//! - `links`: a namespace's interfaces, their kinds and veth peers (an RTM_GETLINK dump).
//! - `netlink`: what every netlink family shares (a datagram split into its messages).
//! - `netns`: running code inside another network namespace.
//! - `process`: this process: SIGINT and SIGTERM as a stop request, and the owner tag (pid, start
//!   time) on what it leaves in the kernel, told apart from a killed run's.
pub mod cli;
pub mod cmd;
pub mod doctor;
pub mod flow;
pub mod kernel;
pub mod lab;
pub mod links;
pub mod measure;
pub mod netlink;
pub mod netns;
pub mod node;
pub mod probes;
pub mod process;
pub mod report;
pub mod ruletrace;
pub mod trace;
pub mod validate;
pub mod vm;
