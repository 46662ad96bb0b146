//! The kernel's records decoded once: each ring-buffer `Event` becomes a `KernelEvent`, one
//! variant per `kind::*` with typed, named fields, so nothing after this reads `kind`, `reason`,
//! `location` or `hook` for what they mean in one kind or another.
//!
//! A record the decoder cannot read (an unknown kind, a constant out of range) is an `Error`,
//! counted by the caller as a malformed record, never guessed at.

use tracer_common::{
    event::{Event, NAME_LEN, NO_HOOK, backend, icmp_seen, kind, socket_hook},
    flow::{Packet, Slot, state},
};

use super::record::{NetfilterBackend, SocketQueue};

/// Why a record could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    #[error("unknown record kind {kind}")]
    UnknownKind { kind: u32 },
    #[error("verdict record names unknown netfilter backend {value}")]
    UnknownBackend { value: u64 },
    #[error("verdict record names unknown netfilter hook {value}")]
    UnknownHook { value: u32 },
    #[error("socket drop record names unknown socket hook {value}")]
    UnknownSocketHook { value: u64 },
    #[error("ICMP record names unknown place {value}")]
    UnknownIcmpSeen { value: u64 },
    #[error("ICMP record holds type and code {value:#x}, wider than a byte each")]
    IcmpOutOfRange { value: u32 },
    #[error("record of kind {kind} holds a slot in unknown state {value}")]
    UnknownSlotState { kind: u32, value: u16 },
}

/// Where and when the kernel saw the packet a record is about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Point {
    /// When (bpf_ktime_get_ns, CLOCK_MONOTONIC).
    pub ts: u64,
    /// The network namespace (inode number).
    pub netns: u32,
    /// The interface index in that namespace (0 when the packet had no device).
    pub ifindex: u32,
    /// The packet as it was there.
    pub packet: Packet,
}

/// What the kernel knew of a failure record's query when it wrote the record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SlotMatch {
    /// The query's slot, still pending: its path so far (boxed: a slot is 384 bytes, most of
    /// them the question).
    Pending(Box<Slot>),
    /// No pending slot matched the packet: only the packet's own DNS question bytes (wire format).
    Unmatched {
        /// The question bytes the kernel copied from the packet (possibly none).
        question: Vec<u8>,
    },
}

/// The socket-side hook that refused a packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SocketHook {
    /// `udp:udp_fail_queue_rcv_skb`, with the error the queueing returned.
    UdpFailQueue {
        /// The tracepoint's return code (a negative errno).
        rc: i32,
    },
    /// `sock:sock_rcvqueue_full`.
    RcvqueueFull,
}

impl SocketHook {
    /// The tracepoint's name, as the kernel calls it.
    pub fn name(self) -> &'static str {
        match self {
            Self::UdpFailQueue { .. } => "udp_fail_queue_rcv_skb",
            Self::RcvqueueFull => "sock_rcvqueue_full",
        }
    }
}

/// `enum nf_inet_hooks`: the netfilter hook an xtables table ran at.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NfHook {
    Prerouting,
    Input,
    Forward,
    Output,
    Postrouting,
}

impl NfHook {
    /// In the kernel's order: the index is the `enum nf_inet_hooks` value.
    const ALL: [Self; 5] = [
        Self::Prerouting,
        Self::Input,
        Self::Forward,
        Self::Output,
        Self::Postrouting,
    ];

    /// The hook of an `enum nf_inet_hooks` value; `None` for `NO_HOOK`.
    fn decode(value: u32) -> Result<Option<Self>, Error> {
        if value == NO_HOOK {
            return Ok(None);
        }
        usize::try_from(value)
            .ok()
            .and_then(|i| Self::ALL.get(i).copied())
            .map(Some)
            .ok_or(Error::UnknownHook { value })
    }

    /// The built-in chain iptables runs at this hook.
    pub fn chain(self) -> &'static str {
        match self {
            Self::Prerouting => "PREROUTING",
            Self::Input => "INPUT",
            Self::Forward => "FORWARD",
            Self::Output => "OUTPUT",
            Self::Postrouting => "POSTROUTING",
        }
    }
}

/// One kernel record, decoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KernelEvent {
    /// An answer reached its client (exported when slow, after a drop, or with `--all`).
    Answered {
        /// When it was delivered, and the answer packet.
        at: Point,
        /// The query's slot as it was when the answer arrived.
        slot: Slot,
    },
    /// A pending query was pushed out of its slot by a newer one.
    Evicted {
        /// When (the packet is the evicted query).
        at: Point,
        /// The evicted query's slot.
        slot: Slot,
    },
    /// A DNS packet was freed with a drop reason (`skb:kfree_skb`).
    Drop {
        /// Where it was freed.
        at: Point,
        /// Its query's slot, if still pending.
        slot: SlotMatch,
        /// The kernel's `enum skb_drop_reason` value (0 before 5.17), named via BTF later.
        reason: u32,
        /// The code address that freed it; `None` when the tracepoint gave none.
        location: Option<u64>,
    },
    /// A socket refused the packet.
    SocketDrop {
        /// Where.
        at: Point,
        /// Its query's slot, if still pending.
        slot: SlotMatch,
        /// Which hook saw the refusal.
        hook: SocketHook,
        /// The socket's receive queue then; `None` when the kernel's record has none.
        queue: Option<SocketQueue>,
    },
    /// An ICMP error was sent about a DNS packet (`icmp:icmp_send`), or an ICMP or ICMPv6 error
    /// about one was seen on a pod link.
    Icmp {
        /// Where.
        at: Point,
        /// Its query's slot, if still pending.
        slot: SlotMatch,
        /// Where it was seen.
        seen: IcmpSeen,
        /// The ICMP type.
        icmp_type: u8,
        /// The ICMP code.
        code: u8,
    },
    /// A netfilter table returned a drop for a DNS packet (`ipt_do_table`, `nft_do_chain`).
    Verdict {
        /// Where.
        at: Point,
        /// Its query's slot, if still pending.
        slot: SlotMatch,
        /// The netfilter implementation whose table returned it.
        backend: NetfilterBackend,
        /// The verdict as the table returned it (NF_DROP, or NF_STOLEN with an errno above).
        verdict: u32,
        /// The hook the table ran at (xtables only).
        hook: Option<NfHook>,
        /// The table's name.
        table: String,
        /// The chain's name (nf_tables only).
        chain: Option<String>,
    },
    /// Conntrack refused to confirm a DNS packet's new entry (`__nf_conntrack_confirm`).
    Confirm {
        /// Where.
        at: Point,
        /// Its query's slot, if still pending.
        slot: SlotMatch,
        /// What `__nf_conntrack_confirm` returned (a netfilter verdict other than NF_ACCEPT).
        result: u32,
    },
}

impl KernelEvent {
    /// For failure evidence (every kind but an answer or an eviction): where it was seen and
    /// what the kernel knew of its query.
    pub fn evidence(&self) -> Option<(&Point, &SlotMatch)> {
        match self {
            Self::Answered { .. } | Self::Evicted { .. } => None,
            Self::Drop { at, slot, .. }
            | Self::SocketDrop { at, slot, .. }
            | Self::Icmp { at, slot, .. }
            | Self::Verdict { at, slot, .. }
            | Self::Confirm { at, slot, .. } => Some((at, slot)),
        }
    }
}

/// Where an ICMP error was seen.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IcmpSeen {
    /// At `icmp:icmp_send`, where it was sent (IPv4): the refused packet's namespace and link.
    Sent,
    /// An error leaving a pod, on the pod's link (in the pod links' namespace).
    LeavingPod,
    /// An error reaching the client, on its link (in the pod links' namespace): the node sent
    /// it.
    ReachingClient,
}

impl TryFrom<&Event> for KernelEvent {
    type Error = Error;

    fn try_from(e: &Event) -> Result<Self, Error> {
        let at = Point {
            ts: e.ts,
            netns: e.netns,
            ifindex: e.ifindex,
            packet: e.packet,
        };
        Ok(match e.kind {
            kind::ANSWERED => Self::Answered { at, slot: e.slot },
            kind::EVICTED => Self::Evicted { at, slot: e.slot },
            kind::DROP => Self::Drop {
                at,
                slot: slot_match(e)?,
                reason: e.reason,
                location: (e.location != 0).then_some(e.location),
            },
            kind::SOCKET_DROP => Self::SocketDrop {
                at,
                slot: slot_match(e)?,
                hook: match e.location {
                    socket_hook::UDP_FAIL_QUEUE => SocketHook::UdpFailQueue {
                        rc: i32::from_ne_bytes(e.reason.to_ne_bytes()),
                    },
                    socket_hook::RCVQUEUE_FULL => SocketHook::RcvqueueFull,
                    value => return Err(Error::UnknownSocketHook { value }),
                },
                queue: (e.sock.rcvbuf != 0).then_some(SocketQueue {
                    rmem: e.sock.rmem,
                    rcvbuf: e.sock.rcvbuf,
                    drops: e.sock.drops,
                }),
            },
            kind::ICMP => {
                // `reason` is type << 8 | code: the two low bytes, big end first.
                let [0, 0, icmp_type, code] = e.reason.to_be_bytes() else {
                    return Err(Error::IcmpOutOfRange { value: e.reason });
                };
                Self::Icmp {
                    at,
                    slot: slot_match(e)?,
                    seen: match e.location {
                        icmp_seen::SENT => IcmpSeen::Sent,
                        icmp_seen::LEAVING_POD => IcmpSeen::LeavingPod,
                        icmp_seen::REACHING_CLIENT => IcmpSeen::ReachingClient,
                        value => return Err(Error::UnknownIcmpSeen { value }),
                    },
                    icmp_type,
                    code,
                }
            }
            kind::VERDICT => Self::Verdict {
                at,
                slot: slot_match(e)?,
                backend: match e.location {
                    backend::XTABLES => NetfilterBackend::Xtables,
                    backend::NFTABLES => NetfilterBackend::NfTables,
                    value => return Err(Error::UnknownBackend { value }),
                },
                verdict: e.reason,
                hook: NfHook::decode(e.hook)?,
                table: name(&e.name),
                chain: Some(name(&e.chain)).filter(|c| !c.is_empty()),
            },
            kind::CONFIRM => Self::Confirm {
                at,
                slot: slot_match(e)?,
                result: e.reason,
            },
            kind => return Err(Error::UnknownKind { kind }),
        })
    }
}

/// The bytes of a slot's question this query wrote (the slot keeps older queries' bytes after).
pub fn question_of(slot: &Slot) -> &[u8] {
    &slot.question[..usize::from(slot.question_len).min(slot.question.len())]
}

/// A failure record's slot: pending, or (free) only the packet's question.
fn slot_match(e: &Event) -> Result<SlotMatch, Error> {
    match e.slot.state {
        state::PENDING => Ok(SlotMatch::Pending(Box::new(e.slot))),
        state::FREE => Ok(SlotMatch::Unmatched {
            question: question_of(&e.slot).to_vec(),
        }),
        value => Err(Error::UnknownSlotState {
            kind: e.kind,
            value,
        }),
    }
}

/// A NUL-padded name: the bytes before the first NUL (all of them when there is none), as
/// lossy UTF-8.
fn name(bytes: &[u8; NAME_LEN]) -> String {
    let end = bytes.iter().position(|c| *c == 0).unwrap_or(bytes.len());
    String::from_utf8_lossy(&bytes[..end]).into_owned()
}

#[cfg(test)]
mod tests {
    use tracer_common::flow::QUESTION_LEN;

    use super::*;

    const QUESTION: &[u8] = b"\x0akubernetes\x07default\x00\x00\x01\x00\x01";

    fn packet() -> Packet {
        Packet {
            saddr: [0, 0, 0, 1],
            daddr: [0, 0, 0, 2],
            sport: 3,
            dport: 4,
            dns_id: 5,
            dns_flags: 0,
            proto: tracer_common::flow::proto::UDP,
            syn: 0,
            _pad: 0,
        }
    }

    /// A pending slot for `packet()`'s query.
    fn pending() -> Slot {
        let p = packet();
        Slot {
            saddr: p.saddr,
            daddr: p.daddr,
            sport: p.sport,
            dport: p.dport,
            dns_id: p.dns_id,
            proto: p.proto,
            state: state::PENDING,
            t_query: 7,
            ..Slot::EMPTY
        }
    }

    /// A record of `kind` as the kernel's `skb_record` leaves it: no slot matched, the packet's
    /// question copied.
    fn raw(kind: u32) -> Event {
        let mut slot = Slot::EMPTY;
        slot.question[..QUESTION.len()].copy_from_slice(QUESTION);
        slot.question_len = QUESTION.len() as u16;
        Event {
            ts: 9,
            kind,
            netns: 10,
            ifindex: 11,
            reason: 0,
            location: 0,
            hook: NO_HOOK,
            packet: packet(),
            slot,
            name: [0; NAME_LEN],
            chain: [0; NAME_LEN],
            sock: tracer_common::event::SockQueue::default(),
        }
    }

    fn padded(s: &str) -> [u8; NAME_LEN] {
        let mut n = [0; NAME_LEN];
        n[..s.len()].copy_from_slice(s.as_bytes());
        n
    }

    fn decode(e: &Event) -> Result<KernelEvent, Error> {
        KernelEvent::try_from(e)
    }

    fn at() -> Point {
        Point {
            ts: 9,
            netns: 10,
            ifindex: 11,
            packet: packet(),
        }
    }

    fn unmatched() -> SlotMatch {
        SlotMatch::Unmatched {
            question: QUESTION.to_vec(),
        }
    }

    #[test]
    fn answers_and_evictions_carry_their_slot() {
        for (kind, wrap) in [
            (
                kind::ANSWERED,
                (|at, slot| KernelEvent::Answered { at, slot }) as fn(_, _) -> _,
            ),
            (kind::EVICTED, |at, slot| KernelEvent::Evicted { at, slot }),
        ] {
            let e = Event {
                slot: pending(),
                ..raw(kind)
            };
            assert_eq!(decode(&e), Ok(wrap(at(), pending())), "kind {kind}");
        }
    }

    #[test]
    fn a_drop_keeps_its_reason_and_a_zero_location_is_none() {
        let mut e = raw(kind::DROP);
        e.reason = 2;
        e.location = 0xffff_ffff_8100_0000;
        let drop = |location| KernelEvent::Drop {
            at: at(),
            slot: unmatched(),
            reason: 2,
            location,
        };
        assert_eq!(decode(&e), Ok(drop(Some(0xffff_ffff_8100_0000))));
        e.location = 0;
        assert_eq!(decode(&e), Ok(drop(None)));
    }

    #[test]
    fn a_pending_slot_is_matched_and_a_free_one_gives_only_the_question() {
        let e = Event {
            slot: pending(),
            ..raw(kind::CONFIRM)
        };
        let Ok(KernelEvent::Confirm { slot, .. }) = decode(&e) else {
            panic!("a confirm");
        };
        assert_eq!(slot, SlotMatch::Pending(Box::new(pending())));
        // Only the bytes the query wrote: a stale tail after `question_len` is not the question.
        let mut e = raw(kind::CONFIRM);
        e.slot.question_len = 4;
        let Ok(KernelEvent::Confirm { slot, .. }) = decode(&e) else {
            panic!("a confirm");
        };
        assert_eq!(
            slot,
            SlotMatch::Unmatched {
                question: QUESTION[..4].to_vec()
            }
        );
        e.slot.question_len = u16::MAX;
        let Ok(KernelEvent::Confirm { slot, .. }) = decode(&e) else {
            panic!("a confirm");
        };
        assert!(
            matches!(slot, SlotMatch::Unmatched { question } if question.len() == QUESTION_LEN),
            "bounded by the slot's bytes"
        );
    }

    #[test]
    fn socket_drops_name_their_hook() {
        let mut e = raw(kind::SOCKET_DROP);
        e.location = socket_hook::UDP_FAIL_QUEUE;
        e.reason = (-12i32) as u32;
        let Ok(KernelEvent::SocketDrop { hook, .. }) = decode(&e) else {
            panic!("a socket drop");
        };
        assert_eq!(hook, SocketHook::UdpFailQueue { rc: -12 });
        assert_eq!(hook.name(), "udp_fail_queue_rcv_skb");
        e.sock.rmem = 9216;
        e.sock.rcvbuf = 8192;
        e.sock.drops = 3;
        let Ok(KernelEvent::SocketDrop { queue, .. }) = decode(&e) else {
            panic!("a socket drop");
        };
        assert_eq!(
            queue,
            Some(SocketQueue {
                rmem: 9216,
                rcvbuf: 8192,
                drops: 3
            })
        );
        e.location = socket_hook::RCVQUEUE_FULL;
        let Ok(KernelEvent::SocketDrop { hook, .. }) = decode(&e) else {
            panic!("a socket drop");
        };
        assert_eq!(hook.name(), "sock_rcvqueue_full");
    }

    #[test]
    fn an_icmp_error_splits_type_and_code() {
        let mut e = raw(kind::ICMP);
        e.reason = 3 << 8 | 13;
        assert_eq!(
            decode(&e),
            Ok(KernelEvent::Icmp {
                at: at(),
                slot: unmatched(),
                seen: IcmpSeen::Sent,
                icmp_type: 3,
                code: 13,
            })
        );
        e.location = icmp_seen::REACHING_CLIENT;
        assert!(matches!(
            decode(&e),
            Ok(KernelEvent::Icmp {
                seen: IcmpSeen::ReachingClient,
                ..
            })
        ));
        e.location = 7;
        assert_eq!(decode(&e), Err(Error::UnknownIcmpSeen { value: 7 }));
        e.location = icmp_seen::SENT;
        e.reason = 0x1_0003;
        assert_eq!(decode(&e), Err(Error::IcmpOutOfRange { value: 0x1_0003 }));
    }

    #[test]
    fn verdicts_name_backend_table_and_chain_or_hook() {
        let mut e = raw(kind::VERDICT);
        e.location = backend::XTABLES;
        e.hook = 2;
        e.name = padded("filter");
        assert_eq!(
            decode(&e),
            Ok(KernelEvent::Verdict {
                at: at(),
                slot: unmatched(),
                backend: NetfilterBackend::Xtables,
                verdict: 0,
                hook: Some(NfHook::Forward),
                table: "filter".to_owned(),
                chain: None,
            })
        );
        e.location = backend::NFTABLES;
        e.hook = NO_HOOK;
        e.chain = padded("KUBE-SERVICES");
        let Ok(KernelEvent::Verdict {
            backend,
            hook,
            chain,
            ..
        }) = decode(&e)
        else {
            panic!("a verdict");
        };
        assert_eq!(
            (backend, hook, chain.as_deref()),
            (NetfilterBackend::NfTables, None, Some("KUBE-SERVICES"))
        );
    }

    #[test]
    fn every_hook_names_its_chain() {
        let chains: Vec<_> = (0..)
            .map_while(|v| NfHook::decode(v).ok().flatten())
            .map(NfHook::chain)
            .collect();
        assert_eq!(
            chains,
            ["PREROUTING", "INPUT", "FORWARD", "OUTPUT", "POSTROUTING"]
        );
    }

    #[test]
    fn an_unterminated_or_invalid_name_is_read_whole_and_lossily() {
        let mut e = raw(kind::VERDICT);
        e.location = backend::NFTABLES;
        e.name = [b'x'; NAME_LEN];
        e.chain = padded("ch\u{e9}");
        e.chain[2] = 0xff;
        let Ok(KernelEvent::Verdict { table, chain, .. }) = decode(&e) else {
            panic!("a verdict");
        };
        assert_eq!(table, "x".repeat(NAME_LEN));
        assert_eq!(chain.as_deref(), Some("ch\u{fffd}\u{fffd}"));
    }

    #[test]
    fn unknown_kinds_and_constants_are_errors() {
        assert_eq!(
            decode(&raw(u32::MAX)),
            Err(Error::UnknownKind { kind: u32::MAX })
        );
        let mut e = raw(kind::VERDICT);
        e.location = backend::XTABLES + backend::NFTABLES;
        assert_eq!(decode(&e), Err(Error::UnknownBackend { value: e.location }));
        e.location = backend::XTABLES;
        e.hook = 5;
        assert_eq!(decode(&e), Err(Error::UnknownHook { value: 5 }));
        let mut e = raw(kind::SOCKET_DROP);
        e.location = 0;
        assert_eq!(decode(&e), Err(Error::UnknownSocketHook { value: 0 }));
        let mut e = raw(kind::DROP);
        e.slot.state = state::PENDING + 1;
        assert_eq!(
            decode(&e),
            Err(Error::UnknownSlotState {
                kind: kind::DROP,
                value: state::PENDING + 1
            })
        );
    }
}
