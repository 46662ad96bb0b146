//! Per-query state and packet summaries.

/// Bytes of the DNS question copied from the packet: the wire-format name, then type and class.
/// A name is at most 255 bytes on the wire (RFC 1035 2.3.4), so 259 hold any question; rounded up
/// to 264 so that `Slot` stays a multiple of 8 bytes without implicit padding. The kernel copies
/// only up to the datagram's end, so a short name costs a short copy.
pub const QUESTION_LEN: usize = 264;
const _: () = assert!(QUESTION_LEN >= 255 + 4 && QUESTION_LEN.is_multiple_of(8));

/// Slots in the per-query table; a power of two (the index is a masked hash).
pub const SLOTS: u32 = 4096;

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
    /// Flags that mean the query's failure evidence was exported.
    pub const EVIDENCE: u16 = DROPPED | ICMP;
}

/// One query in flight, kept in the kernel from the moment the client sends it until its answer
/// reaches the client. Indexed by a hash of (client address, client port, DNS id); matched on
/// those and the transport.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Slot {
    /// The query as the client sent it (destination: the Service IP, or a pod IP).
    pub query: Packet,
    /// `state::*`.
    pub state: u16,
    /// `flag::*`.
    pub flags: u16,
    /// Times the client sent the same query again (same socket and id) before an answer.
    pub retries: u16,
    /// Bytes of `question` this query wrote (the rest is left from earlier queries).
    pub question_len: u16,
    /// Interface index of the client's node-side link.
    pub client_ifindex: u32,
    /// Interface index of the endpoint's node-side link.
    pub endpoint_ifindex: u32,
    /// The endpoint (pod IP) the query was delivered to after DNAT, zero until seen.
    pub endpoint_ip: Addr,
    /// The destination NAT rewrote the query to (kprobe/fentry tier), zero until seen.
    pub nat_ip: Addr,
    /// The destination port NAT rewrote the query to, network order, 0 until seen.
    pub nat_port: u16,
    /// Explicit padding.
    pub _pad: u16,
    /// When the query left the client (bpf_ktime_get_ns).
    pub t_query: u64,
    /// When it reached the endpoint's link, 0 until seen.
    pub t_endpoint: u64,
    /// When the endpoint's answer left it, 0 until seen.
    pub t_reply: u64,
    /// The question, raw: the wire-format name, then type and class; zero padded.
    pub question: [u8; QUESTION_LEN],
}

impl Slot {
    /// An empty slot (also the array map's initial value).
    pub const EMPTY: Slot = Slot {
        query: Packet {
            saddr: [0; 4],
            daddr: [0; 4],
            sport: 0,
            dport: 0,
            dns_id: 0,
            dns_flags: 0,
            proto: 0,
            syn: 0,
            _pad: 0,
        },
        state: state::FREE,
        flags: 0,
        retries: 0,
        question_len: 0,
        client_ifindex: 0,
        endpoint_ifindex: 0,
        endpoint_ip: [0; 4],
        nat_ip: [0; 4],
        nat_port: 0,
        _pad: 0,
        t_query: 0,
        t_endpoint: 0,
        t_reply: 0,
        question: [0; QUESTION_LEN],
    };
}

/// The slot index of a query: FNV-1a over (client address folded to one word, client port, DNS
/// id), masked. The fold (three XORs) keeps IPv4's cost what it was with a 4-byte address.
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
    h & (SLOTS - 1)
}

#[cfg(feature = "user")]
unsafe impl aya::Pod for Slot {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_are_pinned() {
        assert_eq!(core::mem::size_of::<Packet>(), 44);
        assert_eq!(
            core::mem::size_of::<Slot>(),
            44 + 16 + 32 + 4 + 24 + QUESTION_LEN
        );
        // The slot table is SLOTS of these: 384 bytes each, 1.5 MiB in all.
        assert_eq!(core::mem::size_of::<Slot>(), 384);
    }

    #[test]
    fn slot_index_stays_in_table_and_spreads() {
        let a = slot_index(&v4_mapped(0x0a_f4_00_05), 40000, 1);
        let b = slot_index(&v4_mapped(0x0a_f4_00_05), 40000, 2);
        assert!(a < SLOTS && b < SLOTS);
        assert_ne!(a, b);
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
