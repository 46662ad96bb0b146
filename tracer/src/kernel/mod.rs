//! What this kernel offers, read at run time (never from tables in the code: drop-reason numbers,
//! struct layouts and function names change between versions).
//!
//! # Layout
//! - `btf`: struct field offsets for the eBPF programs, `enum skb_drop_reason` names, and
//!   function signatures, from `/sys/kernel/btf/vmlinux`.
//! - `symbols`: kernel code addresses to `function+offset`, and symbol existence, from
//!   `/proc/kallsyms`.
//! - `features`: which hook kinds attach here (kprobes, ftrace function hooks, BTF).
pub mod btf;
pub mod features;
pub mod symbols;
