//! Arguments a kprobe keeps for its kretprobe, per CPU and per function. The netfilter and NAT
//! paths run with bottom halves off, so entry and return happen on one CPU; a nested call of the
//! same function on that CPU (a REJECT's ICMP error going through OUTPUT inside the outer table)
//! returns before the outer one, so each function gets a small stack: push at entry, pop at return.
//!
//! The kernel can run one half of a pair without the other: a kprobe hit while another kprobe
//! program runs on the CPU is skipped, and a kretprobe without a free instance is missed. A
//! skipped return leaves its entry behind; left alone, four of them would fill the stack and
//! silence the function for the rest of the trace. No netfilter call lasts [`STALE_NS`], so an
//! entry that old is a leftover: a push finding one on top starts the stack afresh, and a pop
//! finding one discards it.

use aya_ebpf::{macros::map, maps::PerCpuArray};

use crate::emit::now;

pub const IPT: u32 = 0;
pub const NFT: u32 = 1;
pub const NAT: u32 = 2;
pub const CONFIRM: u32 = 3;
const FUNCTIONS: u32 = 4;
/// Nesting kept per function; deeper calls are not traced (their returns still pop).
const DEPTH: u32 = 4;
/// Age after which a stacked entry is a leftover of a skipped return (see the module doc).
const STALE_NS: u64 = 1_000_000_000;

/// Three values per call, and when the call was stacked.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct Args {
    pub a: u64,
    pub b: u64,
    pub c: u64,
    at: u64,
}

#[map]
static STASH: PerCpuArray<Args> = PerCpuArray::with_max_entries(FUNCTIONS * DEPTH, 0);

/// Calls in progress per function on this CPU.
#[map]
static DEPTHS: PerCpuArray<u32> = PerCpuArray::with_max_entries(FUNCTIONS, 0);

/// Pushes three values for `which`'s return. Fields are stored one by one: a struct store
/// becomes a byte-loop memset plus copy on this target (83 of 116 instructions of a kprobe).
#[inline(always)]
pub fn put(which: u32, a: u64, b: u64, c: u64) {
    let Some(d) = DEPTHS.get_ptr_mut(which) else {
        return;
    };
    let at = now();
    // SAFETY: per-CPU value.
    let mut depth = unsafe { *d };
    if depth > 0 && stacked_at(which, depth.min(DEPTH) - 1) < at.saturating_sub(STALE_NS) {
        depth = 0;
    }
    if depth < DEPTH
        && let Some(s) = STASH.get_ptr_mut(which * DEPTH + depth)
    {
        // SAFETY: per-CPU value; volatile keeps the stores from being merged into a call.
        unsafe {
            core::ptr::write_volatile(&raw mut (*s).a, a);
            core::ptr::write_volatile(&raw mut (*s).b, b);
            core::ptr::write_volatile(&raw mut (*s).c, c);
            core::ptr::write_volatile(&raw mut (*s).at, at);
        }
    }
    // SAFETY: per-CPU value.
    unsafe { *d = depth.saturating_add(1) };
}

#[inline(always)]
pub fn take(which: u32) -> Option<Args> {
    let d = DEPTHS.get_ptr_mut(which)?;
    // SAFETY: per-CPU value.
    let depth = unsafe { *d };
    if depth == 0 {
        return None;
    }
    let depth = depth - 1;
    // SAFETY: per-CPU value.
    unsafe { *d = depth };
    if depth >= DEPTH {
        return None;
    }
    let s = STASH.get_ptr_mut(which * DEPTH + depth)?;
    // SAFETY: per-CPU value.
    let args = unsafe { *s };
    if args.at < now().saturating_sub(STALE_NS) {
        // SAFETY: per-CPU value.
        unsafe { *d = 0 };
        return None;
    }
    (args.a != 0).then_some(args)
}

/// When the entry at `depth` of `which` was stacked (0 when there is none).
#[inline(always)]
fn stacked_at(which: u32, depth: u32) -> u64 {
    STASH
        .get_ptr_mut(which * DEPTH + depth)
        // SAFETY: per-CPU value.
        .map_or(0, |s| unsafe { (*s).at })
}
