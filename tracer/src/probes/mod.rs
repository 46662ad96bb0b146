//! The probes: which exist (`table`), which this kernel gets (`plan`), and loading, attaching and
//! reading them (`session`).
//!
//! # Layout
//! - `table`: one row per eBPF program: stage, hook kind, candidate kernel symbols.
//! - `plan`: the hook tier (fentry, kprobe, tracepoint) and every program's fate, with reasons.
//! - `session`: loads the object with the configuration, attaches what the plan says, drains the
//!   ring buffer, reads counters and the slot table; dropping it detaches everything.
pub mod plan;
pub mod session;
pub mod table;
