//! The tracer's kernel side.
//!
//! # Layout
//! - `maps`: every map, and the load-time `CONFIG` global.
//! - `parse`: bounds-checked header reads (TC packets, `sk_buff` pointers).
//! - `emit`: ring-buffer records and the per-query slot table.
//! - `probes/`: one file per pipeline stage: device (TC), netfilter, nat, conntrack, drop, socket.
#![no_std]
#![no_main]

mod emit;
mod maps;
mod parse;
mod probes;

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
