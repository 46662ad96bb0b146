//! Writing records to the ring buffer, and the per-query slot table.

use aya_ebpf::{
    bindings::BPF_RB_NO_WAKEUP,
    helpers::{bpf_get_smp_processor_id, bpf_ktime_get_ns},
    maps::PerCpuArray,
};
use tracer_common::{
    counter,
    event::Event,
    flow::{Addr, Packet, SLOTS, Slot, WAYS, slot_index, state},
};

use crate::maps::{EVENTS, PENDING, QUERY_SLOTS, count};

/// Scratch space for building a record on the stack-less side (an `Event` is too big for the
/// 512-byte BPF stack together with the rest of a program's frame).
#[aya_ebpf::macros::map]
static SCRATCH: PerCpuArray<Event> = PerCpuArray::with_max_entries(1, 0);

/// Copies `src` to `dst` eight bytes at a time. This target has no inline memcpy or memset:
/// a struct copy or a zeroing becomes a call to a byte-by-byte loop (about 5 instructions a
/// byte). Volatile word accesses keep LLVM from turning this loop back into such a call.
#[inline(always)]
pub fn copy_words<T: Copy>(dst: &mut T, src: &T) {
    const { assert!(core::mem::size_of::<T>().is_multiple_of(8) && core::mem::align_of::<T>() >= 8) };
    let (d, s) = (dst as *mut T as *mut u64, src as *const T as *const u64);
    for i in 0..core::mem::size_of::<T>() / 8 {
        // SAFETY: both point to a whole, 8-aligned T; i stays inside it.
        unsafe { core::ptr::write_volatile(d.add(i), core::ptr::read_volatile(s.add(i))) };
    }
}

/// Stores the packet fields of `$src` (a `Packet`) into the fields of the same names of `$dst` (a
/// `Packet` or a `Slot`): volatile stores (so that no memcpy call comes back), plain loads (so
/// that a summary still in registers, as a parsed one is, is stored from there instead of going
/// through the stack first).
macro_rules! store_packet_fields {
    ($dst:expr, $src:expr) => {{
        let (d, s) = ($dst, $src);
        // SAFETY: every pointer is a field of a valid value.
        unsafe {
            for i in 0..4 {
                core::ptr::write_volatile(&mut d.saddr[i], s.saddr[i]);
                core::ptr::write_volatile(&mut d.daddr[i], s.daddr[i]);
            }
            core::ptr::write_volatile(&mut d.sport, s.sport);
            core::ptr::write_volatile(&mut d.dport, s.dport);
            core::ptr::write_volatile(&mut d.dns_id, s.dns_id);
            core::ptr::write_volatile(&mut d.dns_flags, s.dns_flags);
            core::ptr::write_volatile(&mut d.proto, s.proto);
        }
    }};
}

/// Copies a packet summary field by field (see `store_packet_fields`).
#[inline(always)]
pub fn copy_packet(dst: &mut Packet, src: &Packet) {
    store_packet_fields!(&mut *dst, src);
    // SAFETY: fields of a valid Packet.
    unsafe {
        core::ptr::write_volatile(&mut dst.syn, src.syn);
        core::ptr::write_volatile(&mut dst._pad, 0);
    }
}

/// Writes a new query's packet into its slot (see `store_packet_fields`).
#[inline(always)]
pub fn set_query(dst: &mut Slot, src: &Packet) {
    store_packet_fields!(dst, src);
}

/// Zeroes `dst` eight bytes at a time (see `copy_words`).
#[inline(always)]
pub fn zero_words<T: Copy>(dst: &mut T) {
    const { assert!(core::mem::size_of::<T>().is_multiple_of(8) && core::mem::align_of::<T>() >= 8) };
    let d = dst as *mut T as *mut u64;
    for i in 0..core::mem::size_of::<T>() / 8 {
        // SAFETY: as in copy_words.
        unsafe { core::ptr::write_volatile(d.add(i), 0) };
    }
}

/// A zeroed record of `kind` for `packet` at `ts`, in per-CPU scratch space.
#[inline(always)]
pub fn scratch(kind: u32, packet: &Packet) -> Option<&'static mut Event> {
    let e = SCRATCH.get_ptr_mut(0)?;
    // SAFETY: per-CPU scratch, used by one program at a time on this CPU.
    let e = unsafe { &mut *e };
    zero_words(e);
    e.ts = now();
    e.kind = kind;
    copy_packet(&mut e.packet, packet);
    Some(e)
}

/// Sends a record; a full ring buffer is counted as lost events, never silent.
#[inline(always)]
pub fn send(e: &Event) {
    if EVENTS.output::<Event>(e, BPF_RB_NO_WAKEUP as u64).is_err() {
        count(counter::LOST_EVENTS);
    }
}

/// Monotonic nanoseconds.
#[inline(always)]
pub fn now() -> u64 {
    // SAFETY: helper without preconditions.
    unsafe { bpf_ktime_get_ns() }
}

/// The slot of the query (client address, client port, DNS id, transport), with its index, if one
/// of its set still holds it.
#[inline(always)]
pub fn slot_of(
    client_ip: &Addr,
    client_port: u16,
    dns_id: u16,
    proto: u8,
) -> Option<(u32, &'static mut Slot)> {
    let set = slot_index(client_ip, client_port, dns_id);
    for index in set..set + WAYS {
        let slot = QUERY_SLOTS.get_ptr_mut(index)?;
        // SAFETY: array map value, valid for the program's lifetime; races between CPUs on one
        // slot only blur that one query's times, which userspace tolerates.
        let slot = unsafe { &mut *slot };
        if slot.holds(client_ip, client_port, dns_id, proto) {
            return Some((index, slot));
        }
    }
    None
}

/// Marks a slot as waiting for an answer, or not, in `PENDING` (a byte store: no lost updates
/// between CPUs, unlike bits in a shared word).
#[inline(always)]
pub fn mark_pending(index: u32, pending: bool) {
    if let Some(p) = PENDING.get_ptr_mut(0) {
        // The mask must be done here, on a value the verifier knows nothing of: LLVM drops it
        // where it can prove the index in range (two ways of a set are), and keeps the index on
        // the stack meanwhile, where 5.10's verifier forgets a scalar's bounds.
        // SAFETY: a read of a local.
        let i = (unsafe { core::ptr::read_volatile(&index) } & (SLOTS - 1)) as usize;
        // SAFETY: i < SLOTS, the array's length.
        unsafe { (*p)[i] = u8::from(pending) };
    }
}

/// The slot for a new query, with its index: the one of its set holding that query already (a
/// retry, or the same packet on another link), else a free one, else the one whose query has
/// waited longest (the caller evicts it). Of two free ways this CPU's own is taken: two CPUs
/// claiming one set at once (a lookup's A and AAAA sent from two threads) then take a way each,
/// where nothing else would keep them apart (an atomic compare-and-swap needs 5.12).
#[inline(always)]
pub fn slot_for_new(
    client_ip: &Addr,
    client_port: u16,
    dns_id: u16,
    proto: u8,
) -> Option<(u32, &'static mut Slot)> {
    const { assert!(WAYS == 2) };
    // SAFETY: helper without preconditions.
    let cpu = unsafe { bpf_get_smp_processor_id() };
    let own = slot_index(client_ip, client_port, dns_id) | (cpu & 1);
    let other = own ^ 1;
    // SAFETY: as in slot_of.
    let first = unsafe { &mut *QUERY_SLOTS.get_ptr_mut(own)? };
    // SAFETY: as in slot_of.
    let second = unsafe { &mut *QUERY_SLOTS.get_ptr_mut(other)? };
    let take_other = if first.holds(client_ip, client_port, dns_id, proto) {
        false
    } else if second.holds(client_ip, client_port, dns_id, proto) {
        true
    } else if first.state != state::PENDING {
        false
    } else if second.state != state::PENDING {
        true
    } else {
        second.t_query < first.t_query
    };
    Some(if take_other {
        (other, second)
    } else {
        (own, first)
    })
}
