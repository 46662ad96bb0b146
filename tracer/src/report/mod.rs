//! One data model per command, rendered as text or JSON.
//!
//! # Layout
//! - `document`: the versioned report file (`--report`) that `compare` reads.
//! - `doctor`: what `doctor` found: the verdict, the ranked causes with evidence and fix, the
//!   checks.
//! - `compare`: two reports side by side, with regressions flagged against thresholds.
//! - `fleet`: many nodes' reports side by side, with the nodes that differ from the rest
//!   flagged.
//! - `metrics`: the Prometheus metrics of `trace --metrics` (every query record, the kernel's
//!   counters, conntrack, what the node is), rendered as OpenMetrics text.
//! - `trace`: the trace summary (counts by verdict, stage, reason and endpoint, latency, what
//!   was lost or skipped), the per-query line and the JSON lines of `trace --output json`.
//! - `validation`: what `validate` found, scenario by scenario.
pub mod compare;
pub mod doctor;
pub mod document;
pub mod fleet;
pub mod metrics;
pub mod trace;
pub mod validation;
