//! From kernel records to one record per DNS query.
//!
//! # Layout
//! - `dns`: the question (name, type) from the raw bytes the kernel copied.
//! - `names`: namespace and interface names for the numbers in records.
//! - `record`: the per-query record (verdict, path, where and why it died).
//! - `correlate`: merges the records of one query (drop, ICMP, eviction, answer) across NAT,
//!   holding each briefly so evidence arriving in any order ends up in one verdict.
pub mod correlate;
pub mod dns;
pub mod names;
pub mod record;
