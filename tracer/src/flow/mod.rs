//! From kernel records to one record per DNS query.
//!
//! # Layout
//! - `event`: the kernel's ring-buffer records decoded once into `KernelEvent`, one typed variant per
//!   kind (an unreadable record is an error, counted as malformed).
//! - `dns`: the question (name, type) from the raw bytes the kernel copied.
//! - `names`: namespace and interface names for the numbers in records.
//! - `record`: the per-query record (verdict, path, where and why it died) and its typed parts
//!   (stage, netfilter backend and what told it, how far a query was seen).
//! - `rulepath`: the netfilter chains and deciding rule of a failed query (`trace --rules`).
//! - `transport`: UDP or TCP, and the link from a truncated UDP answer to its TCP retry.
//! - `cause`: where and why a failed query died as one value, the key of the counts by cause.
//! - `recent`: the last N keys inserted (reported queries, conntrack entries, rule paths,
//!   namespace and link names), in a table allocated once that never grows.
//! - `correlate`: merges the records of one query (drop, ICMP, eviction, answer) across NAT,
//!   holding each briefly so evidence arriving in any order ends up in one verdict.
//! - `cache`: NodeLocal DNSCache: a client's query to the node's cache and the cache's query
//!   upstream on a miss, linked into one lookup (hit or miss, and the pod that served the miss).
pub mod cache;
pub mod cause;
pub mod correlate;
pub mod dns;
pub mod event;
pub mod names;
pub mod recent;
pub mod record;
pub mod rulepath;
pub mod transport;
