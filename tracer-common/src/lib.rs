//! Types shared by the eBPF programs and the loader: every struct here crosses the kernel/user
//! boundary (ring buffer, maps or a global), so each is `#[repr(C)]`, `Copy`, without `bool` and
//! without implicit padding, and its size is pinned by a unit test.
//!
//! # Layout
//! - `config`: the one global the loader writes before load (filters, kernel struct offsets).
//! - `event`: what the kernel exports through the ring buffer (failed, slow or asked-for queries).
//! - `flow`: per-query state kept in the kernel (the slot table) and the packet summary.
//! - `counter`: indexes of the per-CPU counters and the latency histogram.
#![no_std]

pub mod config;
pub mod counter;
pub mod event;
pub mod flow;
