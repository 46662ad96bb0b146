//! Writing records to the ring buffer, and the per-query slot table.

use aya_ebpf::{bindings::BPF_RB_NO_WAKEUP, helpers::bpf_ktime_get_ns, maps::PerCpuArray};
use tracer_common::{
    counter,
    event::{Event, NAME_LEN},
    flow::{Packet, Slot, slot_index},
};

use crate::maps::{EVENTS, QUERY_SLOTS, count};

/// Scratch space for building a record on the stack-less side (an `Event` is too big for the
/// 512-byte BPF stack together with the rest of a program's frame).
#[aya_ebpf::macros::map]
static SCRATCH: PerCpuArray<Event> = PerCpuArray::with_max_entries(1, 0);

/// A zeroed record of `kind` for `packet` at `ts`, in per-CPU scratch space.
#[inline(always)]
pub fn scratch(kind: u32, packet: &Packet) -> Option<&'static mut Event> {
    let e = SCRATCH.get_ptr_mut(0)?;
    // SAFETY: per-CPU scratch, used by one program at a time on this CPU.
    let e = unsafe { &mut *e };
    e.ts = now();
    e.kind = kind;
    e.netns = 0;
    e.ifindex = 0;
    e.reason = 0;
    e.location = 0;
    e.packet = *packet;
    e.slot = Slot::EMPTY;
    e.name = [0; NAME_LEN];
    e.chain = [0; NAME_LEN];
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

/// The slot of the query (client address, client port, DNS id), if it is still that query's.
#[inline(always)]
pub fn slot_of(client_ip: u32, client_port: u16, dns_id: u16) -> Option<&'static mut Slot> {
    let slot = QUERY_SLOTS.get_ptr_mut(slot_index(client_ip, client_port, dns_id))?;
    // SAFETY: array map value, valid for the program's lifetime; races between CPUs on one
    // slot only blur that one query's times, which userspace tolerates.
    let slot = unsafe { &mut *slot };
    let q = &slot.query;
    if q.saddr == client_ip && q.sport == client_port && q.dns_id == dns_id {
        Some(slot)
    } else {
        None
    }
}

/// The raw slot for a new query (whatever it holds now).
#[inline(always)]
pub fn slot_for_new(client_ip: u32, client_port: u16, dns_id: u16) -> Option<&'static mut Slot> {
    let slot = QUERY_SLOTS.get_ptr_mut(slot_index(client_ip, client_port, dns_id))?;
    // SAFETY: as in slot_of.
    Some(unsafe { &mut *slot })
}
