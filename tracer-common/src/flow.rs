//! Per-query state and packet summaries.

/// Bytes of the DNS question copied from the packet: the wire-format name, then type and class.
/// A name is at most 255 bytes on the wire (RFC 1035 2.3.4), so 259 hold any question; rounded up
/// to 264 so that `Slot` stays a multiple of 8 bytes without implicit padding. The kernel copies
/// only up to the datagram's end, so a short name costs a short copy.
pub const QUESTION_LEN: usize = 264;
const _: () = assert!(QUESTION_LEN >= 255 + 4 && QUESTION_LEN.is_multiple_of(8));

/// Slots in the per-query table; a power of two (the index is a masked hash).
pub const SLOTS: u32 = 4096;

/// Slots a query may take: the table is two-way set-associative. With one slot per query, the A
/// and AAAA sent at once from one socket shared a slot once in 4096 lookups; the second took it
/// before the first reached its DNS pod, where the first then looked sent by the node. In two
/// ways both are kept, and two CPUs claiming a set at once each take their own way.
pub const WAYS: u32 = 2;

/// An IP address as the kernel side carries it: 16 bytes in network order, as four words read
/// from the wire (`u32::from_ne_bytes` of each 4-byte group). IPv6 as is; IPv4 as an IPv4-mapped
/// IPv6 address (`::ffff:a.b.c.d`), so that both families share one layout and one compare.
pub type Addr = [u32; 4];

/// The third word of an IPv4-mapped address (`::ffff:0:0/96`).
pub const V4_MAPPED: u32 = u32::from_ne_bytes([0, 0, 0xff, 0xff]);

/// The IPv4-mapped form of an IPv4 address given as its wire word.
#[inline(always)]
pub const fn v4_mapped(v4: u32) -> Addr {
    [0, 0, V4_MAPPED, v4]
}

/// Whether `a` is an IPv4 address (IPv4-mapped).
#[inline(always)]
pub const fn is_v4(a: &Addr) -> bool {
    a[0] == 0 && a[1] == 0 && a[2] == V4_MAPPED
}

/// Whether `a` is all zero (no address).
#[inline(always)]
pub const fn is_unset(a: &Addr) -> bool {
    a[0] | a[1] | a[2] | a[3] == 0
}

/// The addresses of one packet (network byte order, as on the wire) and its DNS header.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Packet {
    /// Source address (IPv4-mapped for IPv4).
    pub saddr: Addr,
    /// Destination address (IPv4-mapped for IPv4).
    pub daddr: Addr,
    /// UDP or TCP source port.
    pub sport: u16,
    /// UDP or TCP destination port.
    pub dport: u16,
    /// DNS transaction id (0 for a SYN).
    pub dns_id: u16,
    /// DNS flags (QR, opcode, rcode ...), as the wire's two bytes read as one native word (0 for
    /// a SYN); see [`is_truncated`].
    pub dns_flags: u16,
    /// `proto::UDP` or `proto::TCP`: part of the query's key, so that a TCP query never matches
    /// a UDP one.
    pub proto: u8,
    /// 1: a TCP SYN opening a connection to the DNS port, which carries no DNS message (only the
    /// drop stage reports these: a connection that never got to send its query); 0: a DNS message.
    pub syn: u8,
    /// Explicit padding.
    pub _pad: u16,
}

/// IP protocol numbers of the transports DNS uses.
pub mod proto {
    /// UDP.
    pub const UDP: u8 = 17;
    /// TCP (RFC 7766: each message prefixed by its 2-byte length).
    pub const TCP: u8 = 6;
}

/// Whether a DNS packet's header has the TC (truncated) bit: the first flags byte's bit 1.
#[inline(always)]
pub const fn is_truncated(p: &Packet) -> bool {
    p.dns_flags.to_ne_bytes()[0] & 0x02 != 0
}

/// A slot's state.
pub mod state {
    /// Never used, or the query was answered and the slot may be reused.
    pub const FREE: u16 = 0;
    /// Query seen, no answer yet.
    pub const PENDING: u16 = 1;
}

/// Slot flags.
pub mod flag {
    /// A drop of this query or of its answer was exported: export the answer if it still comes.
    pub const DROPPED: u16 = 1;
    /// An ICMP error was sent about this query.
    pub const ICMP: u16 = 2;
    /// Conntrack confirmed the query's new entry (kprobe/fentry tier).
    pub const CONFIRMED: u16 = 4;
    /// NAT rewrote the query's destination (kprobe/fentry tier): `nat_ip`/`nat_port` hold it.
    pub const NATTED: u16 = 8;
    /// The query reached its endpoint's link: `endpoint_ticks` holds when.
    pub const AT_ENDPOINT: u16 = 16;
    /// The endpoint's answer left it: `reply_ticks` holds when.
    pub const REPLIED: u16 = 32;
    /// The node sent the query (no client link): the endpoint's answer ends it.
    pub const FROM_NODE: u16 = 64;
    /// Flags that mean the query's failure evidence was exported.
    pub const EVIDENCE: u16 = DROPPED | ICMP;
}

/// One query in flight, kept in the kernel from the moment the client sends it until its answer
/// reaches the client. Indexed by a hash of (client address, client port, DNS id); matched on
/// those and the transport.
///
/// Laid out for the cache: the table is page-aligned (`BPF_F_MMAPABLE`) and a slot is 6 cache
/// lines, so the first 64 bytes are one line, and they hold all that the programs after the
/// query's first touch (the key, state and flags, the endpoint, the times). The query's first
/// program writes the rest: its destination, client link and question.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Slot {
    /// The client's address (IPv4-mapped for IPv4): part of the key.
    pub saddr: Addr,
    /// The client's port: part of the key.
    pub sport: u16,
    /// The DNS transaction id: part of the key.
    pub dns_id: u16,
    /// `state::*`.
    pub state: u16,
    /// `flag::*`.
    pub flags: u16,
    /// `proto::UDP` or `proto::TCP`: part of the key.
    pub proto: u8,
    /// Explicit padding.
    pub _pad: u8,
    /// Times the client sent the same query again (same socket and id) before an answer.
    pub retries: u16,
    /// Interface index of the endpoint's node-side link (with `flag::AT_ENDPOINT`).
    pub endpoint_ifindex: u32,
    /// The endpoint (pod IP) the query was delivered to after DNAT (with `flag::AT_ENDPOINT`).
    pub endpoint_ip: Addr,
    /// When the query left the client (bpf_ktime_get_ns).
    pub t_query: u64,
    /// Ticks (`TICK_SHIFT`) after `t_query` the query reached the endpoint's link
    /// (`flag::AT_ENDPOINT`).
    pub endpoint_ticks: u32,
    /// Ticks (`TICK_SHIFT`) after `t_query` the endpoint's answer left it (`flag::REPLIED`).
    pub reply_ticks: u32,
    // The second cache line: written by the query's first program, read by userspace.
    /// The query's destination (the Service IP, or a pod IP).
    pub daddr: Addr,
    /// The query's destination port.
    pub dport: u16,
    /// The query's DNS flags (see `Packet::dns_flags`).
    pub dns_flags: u16,
    /// Interface index of the client's node-side link (0: the node sent the query).
    pub client_ifindex: u32,
    /// The destination NAT rewrote the query to (kprobe/fentry tier, `flag::NATTED`).
    pub nat_ip: Addr,
    /// The destination port NAT rewrote the query to, network order (`flag::NATTED`).
    pub nat_port: u16,
    /// Bytes of `question` this query wrote (the rest is left from earlier queries).
    pub question_len: u16,
    /// Explicit padding.
    pub _pad2: u32,
    /// The question, raw: the wire-format name, then type and class; zero padded.
    pub question: [u8; QUESTION_LEN],
    /// Explicit padding to a whole number of cache lines.
    pub _pad_end: u64,
}

impl Slot {
    /// An empty slot (also the array map's initial value).
    pub const EMPTY: Slot = Slot {
        saddr: [0; 4],
        sport: 0,
        dns_id: 0,
        state: state::FREE,
        flags: 0,
        proto: 0,
        _pad: 0,
        retries: 0,
        endpoint_ifindex: 0,
        endpoint_ip: [0; 4],
        t_query: 0,
        endpoint_ticks: 0,
        reply_ticks: 0,
        daddr: [0; 4],
        dport: 0,
        dns_flags: 0,
        client_ifindex: 0,
        nat_ip: [0; 4],
        nat_port: 0,
        question_len: 0,
        _pad2: 0,
        question: [0; QUESTION_LEN],
        _pad_end: 0,
    };

    /// The query as the client sent it.
    pub const fn query(&self) -> Packet {
        Packet {
            saddr: self.saddr,
            daddr: self.daddr,
            sport: self.sport,
            dport: self.dport,
            dns_id: self.dns_id,
            dns_flags: self.dns_flags,
            proto: self.proto,
            syn: 0,
            _pad: 0,
        }
    }

    /// Whether this slot holds the query (client address, client port, DNS id, transport).
    #[inline(always)]
    pub fn holds(&self, client_ip: &Addr, client_port: u16, dns_id: u16, proto: u8) -> bool {
        self.saddr == *client_ip
            && self.sport == client_port
            && self.dns_id == dns_id
            && self.proto == proto
    }

    /// When the query reached its endpoint's link (bpf_ktime_get_ns), 0 until seen.
    pub const fn t_endpoint(&self) -> u64 {
        self.t_after(flag::AT_ENDPOINT, self.endpoint_ticks)
    }

    /// When the endpoint's answer left it (bpf_ktime_get_ns), 0 until seen.
    pub const fn t_reply(&self) -> u64 {
        self.t_after(flag::REPLIED, self.reply_ticks)
    }

    const fn t_after(&self, seen: u16, ticks: u32) -> u64 {
        if self.flags & seen == 0 {
            0
        } else {
            self.t_query + ((ticks as u64) << TICK_SHIFT)
        }
    }
}

/// A slot's later times are kept as ticks of 2^10 ns (1.024 µs) after its query, in 32 bits (73
/// minutes): a shift, where microseconds would cost the programs a 64-bit division each.
pub const TICK_SHIFT: u32 = 10;

/// Ticks from `t0` to `t` (nanoseconds), as a slot keeps them (saturating).
#[inline(always)]
pub fn ticks_after(t0: u64, t: u64) -> u32 {
    let ticks = t.saturating_sub(t0) >> TICK_SHIFT;
    if ticks > u32::MAX as u64 {
        u32::MAX
    } else {
        ticks as u32
    }
}

/// The first slot of a query's set (its `WAYS` slots follow): FNV-1a over (client address folded
/// to one word, client port, DNS id), masked. The fold (three XORs) keeps IPv4's cost what it was
/// with a 4-byte address.
#[inline(always)]
pub fn slot_index(client_ip: &Addr, client_port: u16, dns_id: u16) -> u32 {
    let folded = client_ip[0] ^ client_ip[1] ^ client_ip[2] ^ client_ip[3];
    let mut h: u32 = 0x811c_9dc5;
    for b in folded.to_ne_bytes() {
        h = (h ^ b as u32).wrapping_mul(0x0100_0193);
    }
    for b in client_port.to_ne_bytes() {
        h = (h ^ b as u32).wrapping_mul(0x0100_0193);
    }
    for b in dns_id.to_ne_bytes() {
        h = (h ^ b as u32).wrapping_mul(0x0100_0193);
    }
    h & (SLOTS - 1) & !(WAYS - 1)
}

#[cfg(feature = "user")]
unsafe impl aya::Pod for Slot {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_are_pinned() {
        assert_eq!(core::mem::size_of::<Packet>(), 44);
        // The slot table is SLOTS of these: 384 bytes (6 cache lines) each, 1.5 MiB in all.
        assert_eq!(core::mem::size_of::<Slot>(), 384);
        // What the programs after a query's first touch is in its first cache line.
        assert_eq!(core::mem::offset_of!(Slot, reply_ticks), 60);
        assert_eq!(core::mem::offset_of!(Slot, daddr), 64);
        assert_eq!(core::mem::offset_of!(Slot, question), 112);
    }

    #[test]
    fn slot_index_stays_in_table_and_spreads() {
        let a = slot_index(&v4_mapped(0x0a_f4_00_05), 40000, 1);
        let b = slot_index(&v4_mapped(0x0a_f4_00_05), 40000, 2);
        assert!(a < SLOTS && b < SLOTS);
        assert_ne!(a, b);
        assert_eq!((a % WAYS, b % WAYS), (0, 0), "the first slot of a set");
        let c = slot_index(&[0xfd, 0, 0, 5], 40000, 1);
        assert!(c < SLOTS);
    }

    #[test]
    fn v4_mapped_is_recognised() {
        let a = v4_mapped(u32::from_ne_bytes([10, 244, 0, 5]));
        assert!(is_v4(&a) && !is_unset(&a));
        let bytes: [u8; 16] = unsafe { core::mem::transmute(a) };
        assert_eq!(bytes[10..], [0xff, 0xff, 10, 244, 0, 5]);
        assert!(!is_v4(&[u32::from_ne_bytes([0xfd, 0, 0, 0x10]), 0, 0, 1]));
    }
}
