//! One data model per command, rendered as text or JSON.
//!
//! # Layout
//! - `trace`: the trace summary (counts by verdict, stage, reason and endpoint, latency, what
//!   was lost or skipped) and the per-query line.
pub mod trace;
