//! Arguments a kprobe keeps for its kretprobe, per CPU and per function (the netfilter and NAT
//! paths run with bottom halves off, so entry and return happen on one CPU; a nested call of the
//! same function on that CPU, e.g. a REJECT's ICMP going through OUTPUT, overwrites the outer one).

use aya_ebpf::{macros::map, maps::PerCpuArray};

pub const IPT: u32 = 0;
pub const NFT: u32 = 1;
pub const NAT: u32 = 2;
pub const CONFIRM: u32 = 3;

/// Two pointers per function.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct Args {
    a: u64,
    b: u64,
}

#[map]
static STASH: PerCpuArray<Args> = PerCpuArray::with_max_entries(4, 0);

#[inline(always)]
pub fn put(which: u32, a: *const u8, b: *const u8) {
    if let Some(s) = STASH.get_ptr_mut(which) {
        // SAFETY: per-CPU value.
        unsafe {
            *s = Args {
                a: a as u64,
                b: b as u64,
            }
        };
    }
}

#[inline(always)]
pub fn take(which: u32) -> Option<(*const u8, *const u8)> {
    let s = STASH.get_ptr_mut(which)?;
    // SAFETY: per-CPU value.
    let s = unsafe { &mut *s };
    if s.a == 0 {
        return None;
    }
    let out = (s.a as *const u8, s.b as *const u8);
    s.a = 0;
    Some(out)
}
