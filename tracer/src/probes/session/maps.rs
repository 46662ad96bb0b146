//! Reading the session's maps: the ring buffer of records, the per-CPU counters and latency
//! histogram, and the slot table of queries in flight.

use aya::{
    Ebpf,
    maps::{Array, MapData, PerCpuArray, RingBuf},
};
use tracer_common::{
    counter,
    event::{EVENTS_CAPACITY, Event},
    flow::{SLOTS, Slot},
};

use super::{Error, Session};

/// Counters summed over CPUs.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Counters {
    /// Queries seen leaving a client.
    pub queries: u64,
    /// Queries seen reaching an endpoint after DNAT.
    pub at_endpoint: u64,
    /// Answers seen leaving an endpoint.
    pub from_endpoint: u64,
    /// Answers delivered to the asking client.
    pub answered: u64,
    /// Answers slower than the threshold.
    pub slow: u64,
    /// DNS packets dropped.
    pub drops: u64,
    /// ICMP errors about DNS packets.
    pub icmp: u64,
    /// Pending queries pushed out of the slot table by newer ones.
    pub evicted: u64,
    /// Endpoint packets or answers with no matching query.
    pub unmatched: u64,
    /// DNS-port packets that did not parse.
    pub parse_errors: u64,
    /// Records lost to a full ring buffer.
    pub lost_events: u64,
    /// Socket-side drops.
    pub socket_drops: u64,
    /// Netfilter/NAT/conntrack-confirm events (kprobe/fentry tier).
    pub deep_events: u64,
}

/// The maps userspace reads, taken out of the loaded object.
pub(super) struct Maps {
    events: RingBuf<MapData>,
    counters: PerCpuArray<MapData, u64>,
    latency: PerCpuArray<MapData, u64>,
    slots: Array<MapData, Slot>,
    pending: Array<MapData, [u8; SLOTS as usize]>,
}

impl Maps {
    /// Takes the maps out of `ebpf` (the programs keep their own references).
    pub(super) fn take(ebpf: &mut Ebpf) -> Result<Maps, Error> {
        Ok(Maps {
            events: RingBuf::try_from(take_map(ebpf, "EVENTS")?).map_err(|source| Error::Map {
                name: "EVENTS",
                source,
            })?,
            counters: PerCpuArray::try_from(take_map(ebpf, "COUNTERS")?).map_err(|source| {
                Error::Map {
                    name: "COUNTERS",
                    source,
                }
            })?,
            latency: PerCpuArray::try_from(take_map(ebpf, "LATENCY")?).map_err(|source| {
                Error::Map {
                    name: "LATENCY",
                    source,
                }
            })?,
            pending: Array::try_from(take_map(ebpf, "PENDING")?).map_err(|source| Error::Map {
                name: "PENDING",
                source,
            })?,
            slots: Array::try_from(take_map(ebpf, "QUERY_SLOTS")?).map_err(|source| {
                Error::Map {
                    name: "QUERY_SLOTS",
                    source,
                }
            })?,
        })
    }
}

fn take_map(ebpf: &mut Ebpf, name: &'static str) -> Result<aya::maps::Map, Error> {
    ebpf.take_map(name)
        .ok_or(Error::Missing { kind: "map", name })
}

impl Session {
    /// Hands the records waiting in the ring buffer to `f`, at most a full buffer's worth
    /// ([`EVENTS_CAPACITY`]); returns how many it took. A record shorter than an `Event`, or one
    /// `f` refuses (returns `Err`: it could not decode it), is counted in `malformed_records`.
    /// The bound keeps a kernel writing faster than this reader from holding it here, and its
    /// batch growing, for ever: the rest waits for the next call, and what the full buffer
    /// refuses meanwhile is counted as lost events.
    pub fn drain<E>(&mut self, mut f: impl FnMut(Event) -> Result<(), E>) -> usize {
        let mut n = 0;
        for _ in 0..EVENTS_CAPACITY {
            let Some(item) = self.maps.events.next() else {
                break;
            };
            if item.len() < std::mem::size_of::<Event>() {
                self.malformed_records += 1;
                continue;
            }
            // SAFETY: the kernel wrote an `Event` (same #[repr(C)] type); read unaligned.
            let e = unsafe { std::ptr::read_unaligned(item.as_ptr() as *const Event) };
            match f(e) {
                Ok(()) => n += 1,
                Err(_) => self.malformed_records += 1,
            }
        }
        n
    }

    /// The per-CPU counters, summed.
    pub fn counters(&self) -> Result<Counters, Error> {
        let get = |i: u32| -> Result<u64, Error> {
            Ok(self
                .maps
                .counters
                .get(&i, 0)
                .map_err(|source| Error::Map {
                    name: "COUNTERS",
                    source,
                })?
                .iter()
                .sum())
        };
        Ok(Counters {
            queries: get(counter::QUERIES)?,
            at_endpoint: get(counter::AT_ENDPOINT)?,
            from_endpoint: get(counter::FROM_ENDPOINT)?,
            answered: get(counter::ANSWERED)?,
            slow: get(counter::SLOW)?,
            drops: get(counter::DROPS)?,
            icmp: get(counter::ICMP)?,
            evicted: get(counter::EVICTED)?,
            unmatched: get(counter::UNMATCHED)?,
            parse_errors: get(counter::PARSE_ERRORS)?,
            lost_events: get(counter::LOST_EVENTS)?,
            socket_drops: get(counter::SOCKET_DROPS)?,
            deep_events: get(counter::DEEP_EVENTS)?,
        })
    }

    /// The latency histogram (log2 microsecond buckets), summed over CPUs.
    pub fn latency_histogram(&self) -> Result<Vec<u64>, Error> {
        (0..counter::LATENCY_BUCKETS)
            .map(|i| {
                Ok(self
                    .maps
                    .latency
                    .get(&i, 0)
                    .map_err(|source| Error::Map {
                        name: "LATENCY",
                        source,
                    })?
                    .iter()
                    .sum())
            })
            .collect()
    }

    /// Every slot holding a query still waiting for its answer: the kernel's pending index says
    /// which to read (one lookup, then one per query in flight, not one per slot).
    pub fn pending(&self) -> Result<Vec<Slot>, Error> {
        let marks = self.maps.pending.get(&0, 0).map_err(|source| Error::Map {
            name: "PENDING",
            source,
        })?;
        // Sized once: a Vec grown slot by slot every scan (a thousand slots and more with a
        // lossy node) reallocated through every power of two, and fragmented the heap.
        let mut out = Vec::with_capacity(marks.iter().filter(|m| **m != 0).count());
        for i in (0..SLOTS).filter(|i| marks[*i as usize] != 0) {
            let s = self.maps.slots.get(&i, 0).map_err(|source| Error::Map {
                name: "QUERY_SLOTS",
                source,
            })?;
            if s.state == tracer_common::flow::state::PENDING {
                out.push(s);
            }
        }
        Ok(out)
    }
}
