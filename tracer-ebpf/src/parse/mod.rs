//! Bounds-checked header reads: from a TC packet (direct access) and from an `sk_buff` pointer
//! (probe reads, for tracepoints and kprobes). `icmp`: ICMP and ICMPv6 errors about queries (TC).

use aya_ebpf::{
    helpers::{bpf_probe_read_kernel, bpf_skb_load_bytes},
    programs::TcContext,
};
use network_types::{
    eth::EthHdr,
    ip::{Ipv4Hdr, Ipv6Hdr},
    udp::UdpHdr,
};
use tracer_common::{
    counter,
    flow::{Addr, Packet, QUESTION_LEN, is_unset, proto, v4_mapped},
};

use crate::maps::{config, count};

mod icmp;
pub use icmp::tc_icmp_error;

const ETH_P_IP: u16 = 0x0800;
const ETH_P_IPV6: u16 = 0x86dd;
const IPPROTO_UDP: u8 = proto::UDP;
const IPPROTO_TCP: u8 = proto::TCP;
/// TCP header bytes read: ports, sequence and acknowledgement numbers, data offset, flags.
const TCP_FIXED: usize = 14;
const TCP_MIN_HEADER: usize = 20;
const TCP_SYN: u8 = 0x02;
const TCP_ACK: u8 = 0x10;
/// A DNS message over TCP: its 2-byte length, then the DNS header (RFC 7766).
const TCP_PREFIX: usize = 2;
const TCP_MESSAGE_START: usize = TCP_PREFIX + DNS_HEADER_LEN;
/// IPv6 extension headers walked to reach UDP: hop-by-hop, routing, fragment, destination options.
const NEXTHDR_HOP: u8 = 0;
const NEXTHDR_ROUTING: u8 = 43;
const NEXTHDR_FRAGMENT: u8 = 44;
const NEXTHDR_DEST: u8 = 60;
/// Extension headers walked before giving up (counted as a parse error).
const MAX_EXT_HEADERS: usize = 4;
/// DNS header: id, flags, four counts.
pub const DNS_HEADER_LEN: usize = 12;

/// What a packet turned out to be.
pub enum Parsed {
    /// Not UDP or TCP to or from the DNS port, or a TCP segment that starts no DNS message (an
    /// ACK, a message's continuation): not ours.
    Other,
    /// A DNS packet: its summary, and where its question is.
    Dns {
        packet: Packet,
        question: QuestionAt,
    },
    /// UDP or TCP on the DNS port, but too short or fragmented to read: counted, never guessed at.
    Malformed,
}

impl Parsed {
    /// The same, with the question's offset moved by `base` (a parser that read relative to a
    /// header hands its result to one that knows where that header is).
    #[inline(always)]
    fn at(self, base: usize) -> Parsed {
        match self {
            Parsed::Dns { packet, question } => Parsed::Dns {
                packet,
                question: QuestionAt {
                    off: base + question.off,
                    avail: question.avail,
                },
            },
            other => other,
        }
    }
}

/// Where a DNS packet's question starts (an offset into a TC packet, or a kernel address for an
/// `sk_buff`), and how many bytes of the datagram follow the DNS header (the UDP length's word).
#[derive(Clone, Copy)]
pub struct QuestionAt {
    /// Start of the question.
    pub off: usize,
    /// Bytes from there to the end of the UDP payload: the question and any records after it.
    pub avail: usize,
}

/// The IPv4 header length of a well-formed IPv4 header, else `None` (not ours).
#[inline(always)]
fn ihl4(ip: &Ipv4Hdr) -> Option<usize> {
    let ihl = (ip.vihl & 0x0f) as usize * 4;
    (ip.vihl >> 4 == 4 && (Ipv4Hdr::LEN..=60).contains(&ihl)).then_some(ihl)
}

/// The (source, destination) ports, network order, when either is the DNS port.
#[inline(always)]
fn dns_ports(udp: &UdpHdr) -> Option<(u16, u16)> {
    dns_ports_of(udp.src, udp.dst)
}

#[inline(always)]
fn dns_ports_of(src: [u8; 2], dst: [u8; 2]) -> Option<(u16, u16)> {
    let port = config().dns_port;
    let (sport, dport) = (u16::from_ne_bytes(src), u16::from_ne_bytes(dst));
    (sport == port || dport == port).then_some((sport, dport))
}

/// A TCP segment on the DNS port, given its first `TCP_FIXED` header bytes `t`, the bytes from
/// its header to the end of the IP packet (`l4_len`), and `read(offset from the TCP header)`
/// for the 14 bytes a DNS message starts with. A segment whose payload starts a DNS message (a
/// length that covers a DNS header, one question, and the QR bit that fits the direction) is a
/// DNS packet; with `syns`, so is a SYN opening a connection to the DNS port (no id, no
/// question). Every other segment (an ACK, a message's continuation, a FIN) is not ours.
#[inline(always)]
fn tcp<R: Fn(usize) -> Option<[u8; TCP_MESSAGE_START]>>(
    (saddr, daddr): (Addr, Addr),
    t: &[u8; TCP_FIXED],
    l4_len: usize,
    read: R,
    syns: bool,
) -> Parsed {
    let Some(ports) = dns_ports_of([t[0], t[1]], [t[2], t[3]]) else {
        return Parsed::Other;
    };
    let doff = (t[12] >> 4) as usize * 4;
    if doff < TCP_MIN_HEADER || l4_len < doff {
        return Parsed::Malformed;
    }
    let payload = l4_len - doff;
    if payload == 0 {
        if syns && t[13] & (TCP_SYN | TCP_ACK) == TCP_SYN {
            let mut packet = packet_of(saddr, daddr, ports, &[0; DNS_HEADER_LEN], IPPROTO_TCP);
            packet.syn = 1;
            let question = QuestionAt { off: 0, avail: 0 };
            return Parsed::Dns { packet, question };
        }
        return Parsed::Other;
    }
    if payload < TCP_MESSAGE_START {
        return Parsed::Other;
    }
    let Some(m) = read(doff) else {
        return Parsed::Malformed;
    };
    let len = u16::from_be_bytes([m[0], m[1]]) as usize;
    let qdcount = u16::from_be_bytes([m[6], m[7]]);
    let is_answer = m[4] & 0x80 != 0;
    if len < DNS_HEADER_LEN || qdcount != 1 || is_answer == (ports.1 == config().dns_port) {
        return Parsed::Other;
    }
    let dns = [
        m[2], m[3], m[4], m[5], m[6], m[7], m[8], m[9], m[10], m[11], m[12], m[13],
    ];
    Parsed::Dns {
        packet: packet_of(saddr, daddr, ports, &dns, IPPROTO_TCP),
        question: QuestionAt {
            off: doff + TCP_MESSAGE_START,
            avail: len.min(payload - TCP_PREFIX) - DNS_HEADER_LEN,
        },
    }
}

/// The IPv4 packet's TCP segment, read through `read(offset from the TCP header)`.
#[inline(always)]
fn tcp4<R: Fn(usize) -> Option<[u8; TCP_MESSAGE_START]>>(
    ip: &Ipv4Hdr,
    ihl: usize,
    t: Option<[u8; TCP_FIXED]>,
    read: R,
    syns: bool,
) -> Parsed {
    let Some(t) = t else {
        return Parsed::Other;
    };
    let addrs = (
        v4_mapped(u32::from_ne_bytes(ip.src_addr)),
        v4_mapped(u32::from_ne_bytes(ip.dst_addr)),
    );
    if is_fragment(ip) {
        return if dns_ports_of([t[0], t[1]], [t[2], t[3]]).is_some() {
            Parsed::Malformed
        } else {
            Parsed::Other
        };
    }
    let Some(l4_len) = (u16::from_be_bytes(ip.tot_len) as usize).checked_sub(ihl) else {
        return Parsed::Malformed;
    };
    tcp(addrs, &t, l4_len, read, syns)
}

/// Bytes after the DNS header by the UDP length; `None` (malformed) outside [headers, `l4_len`].
#[inline(always)]
fn question_avail(udp: &UdpHdr, l4_len: usize) -> Option<usize> {
    let len = u16::from_be_bytes(udp.len) as usize;
    (len <= l4_len)
        .then_some(len)?
        .checked_sub(UdpHdr::LEN + DNS_HEADER_LEN)
}

/// The bytes an IPv4 packet says follow its header (`tot_len` less the header).
#[inline(always)]
fn l4_len4(ip: &Ipv4Hdr, ihl: usize) -> usize {
    (u16::from_be_bytes(ip.tot_len) as usize).saturating_sub(ihl)
}

/// A query asks exactly one question (RFC 1035 allows more; no server answers them). Answers are
/// left alone: an error answer may carry no question.
#[inline(always)]
fn one_question(dns: &[u8; DNS_HEADER_LEN]) -> bool {
    dns[2] & 0x80 != 0 || u16::from_be_bytes([dns[4], dns[5]]) == 1
}

/// A fragment (other than a whole datagram) cannot be read as DNS.
#[inline(always)]
fn is_fragment(ip: &Ipv4Hdr) -> bool {
    u16::from_be_bytes(ip.frags) & 0x3fff != 0
}

#[inline(always)]
fn packet(ip: &Ipv4Hdr, ports: (u16, u16), dns: &[u8; DNS_HEADER_LEN]) -> Packet {
    packet_of(
        v4_mapped(u32::from_ne_bytes(ip.src_addr)),
        v4_mapped(u32::from_ne_bytes(ip.dst_addr)),
        ports,
        dns,
        IPPROTO_UDP,
    )
}

/// An IPv6 address as four wire words.
#[inline(always)]
fn addr6(a: &[u8; 16]) -> Addr {
    [
        u32::from_ne_bytes([a[0], a[1], a[2], a[3]]),
        u32::from_ne_bytes([a[4], a[5], a[6], a[7]]),
        u32::from_ne_bytes([a[8], a[9], a[10], a[11]]),
        u32::from_ne_bytes([a[12], a[13], a[14], a[15]]),
    ]
}

#[inline(always)]
fn packet_of(
    saddr: Addr,
    daddr: Addr,
    (sport, dport): (u16, u16),
    dns: &[u8; DNS_HEADER_LEN],
    proto: u8,
) -> Packet {
    Packet {
        saddr,
        daddr,
        sport,
        dport,
        dns_id: u16::from_ne_bytes([dns[0], dns[1]]),
        dns_flags: u16::from_ne_bytes([dns[2], dns[3]]),
        proto,
        syn: 0,
        _pad: 0,
    }
}

#[inline(always)]
fn ptr_at<T>(ctx: &TcContext, off: usize) -> Option<*const T> {
    let start = ctx.data();
    let end = ctx.data_end();
    if start + off + core::mem::size_of::<T>() > end {
        return None;
    }
    Some((start + off) as *const T)
}

/// The IPv4 header of an Ethernet frame seen by TC, with its length, when it has a well-formed
/// one.
#[inline(always)]
fn tc_ipv4(ctx: &TcContext) -> Option<(&Ipv4Hdr, usize)> {
    let eth = ptr_at::<EthHdr>(ctx, 0)?;
    // SAFETY: bounds checked by ptr_at.
    if u16::from_be(unsafe { (*eth).ether_type }) != ETH_P_IP {
        return None;
    }
    // SAFETY: bounds checked by ptr_at; the packet outlives the program's run.
    let ip = unsafe { &*ptr_at::<Ipv4Hdr>(ctx, EthHdr::LEN)? };
    Some((ip, ihl4(ip)?))
}

/// Parses an IPv4 UDP frame seen by TC, the fast path: `None` for every other frame, which
/// `tc_other` reads. Kept apart so that its summary reaches the device stage alone: merged with
/// the other families' and TCP's, it went through the stack field by field and its
/// IPv4-mapped words were no longer constants (about 30 ns a packet, measured with
/// BPF_PROG_TEST_RUN).
#[inline(always)]
pub fn tc_udp4(ctx: &TcContext) -> Option<Parsed> {
    let (ip, ihl) = tc_ipv4(ctx)?;
    if ip.proto != IPPROTO_UDP {
        return None;
    }
    let udp_off = EthHdr::LEN + ihl;
    let Some(udp) = ptr_at::<UdpHdr>(ctx, udp_off) else {
        return Some(Parsed::Other);
    };
    // SAFETY: bounds checked by ptr_at.
    let udp = unsafe { &*udp };
    let Some(ports) = dns_ports(udp) else {
        return Some(Parsed::Other);
    };
    if is_fragment(ip) {
        return Some(Parsed::Malformed);
    }
    let Some(avail) = question_avail(udp, l4_len4(ip, ihl)) else {
        return Some(Parsed::Malformed);
    };
    let dns_off = udp_off + UdpHdr::LEN;
    let Some(dns) = ptr_at::<[u8; DNS_HEADER_LEN]>(ctx, dns_off) else {
        return Some(Parsed::Malformed);
    };
    // SAFETY: bounds checked by ptr_at.
    let dns = unsafe { &*dns };
    if !one_question(dns) {
        return Some(Parsed::Malformed);
    }
    Some(Parsed::Dns {
        packet: packet(ip, ports, dns),
        question: QuestionAt {
            off: dns_off + DNS_HEADER_LEN,
            avail,
        },
    })
}

/// Parses a TC frame that `tc_udp4` did not take: IPv4 TCP, IPv6 UDP and TCP.
#[inline(always)]
pub fn tc_other(ctx: &TcContext) -> Parsed {
    let Some((ip, ihl)) = tc_ipv4(ctx) else {
        return tc_packet6(ctx);
    };
    if ip.proto != IPPROTO_TCP {
        return Parsed::Other;
    }
    let tcp_off = EthHdr::LEN + ihl;
    let read = |off| ctx.load::<[u8; TCP_MESSAGE_START]>(tcp_off + off).ok();
    tcp4(ip, ihl, ctx.load(tcp_off).ok(), read, false).at(tcp_off)
}

/// Where an IPv6 packet's UDP or TCP header is, after its extension headers.
enum Walk {
    /// UDP header at this offset from the IPv6 header.
    Udp(usize),
    /// TCP header at this offset from the IPv6 header.
    Tcp(usize),
    /// Not UDP or TCP, or a fragment other than the first (no UDP header to read): not ours.
    Other,
    /// More extension headers than we walk, or one that could not be read: counted.
    Unreadable,
}

/// Walks the extension headers of an IPv6 packet whose fixed header says `next`, reading each
/// header's first 8 bytes through `read8(offset from the IPv6 header)`. At most
/// `MAX_EXT_HEADERS` are walked (a loop the verifier sees bounded; 5.10 unrolls nothing for us).
/// A fragment header is followed only on the first fragment (offset 0): later ones carry no
/// UDP header.
#[inline(always)]
fn walk6(mut next: u8, read8: impl Fn(usize) -> Option<[u8; 8]>) -> Walk {
    let mut off = Ipv6Hdr::LEN;
    for _ in 0..MAX_EXT_HEADERS {
        if next == IPPROTO_UDP {
            return Walk::Udp(off);
        }
        if next == IPPROTO_TCP {
            return Walk::Tcp(off);
        }
        let len = match next {
            NEXTHDR_HOP | NEXTHDR_ROUTING | NEXTHDR_DEST => None,
            NEXTHDR_FRAGMENT => Some(8),
            _ => return Walk::Other,
        };
        let Some(h) = read8(off) else {
            return Walk::Unreadable;
        };
        let len = match len {
            Some(l) => l,
            None => (h[1] as usize + 1) * 8,
        };
        if next == NEXTHDR_FRAGMENT && u16::from_be_bytes([h[2], h[3]]) & 0xfff8 != 0 {
            return Walk::Other;
        }
        next = h[0];
        off += len;
    }
    match next {
        IPPROTO_UDP => Walk::Udp(off),
        IPPROTO_TCP => Walk::Tcp(off),
        _ => Walk::Unreadable,
    }
}

/// The UDP or TCP and DNS part of an IPv6 packet, read through `read` (offsets from the IPv6
/// header): the shared tail of `tc_packet6` and `skb_packet6`. The returned question offset is
/// relative to the IPv6 header. `syns` as for `tcp`.
#[inline(always)]
fn dns6<R, D, M>(ip: &Ipv6Hdr, read8: R, read_dns: D, read_msg: M, syns: bool) -> Parsed
where
    R: Fn(usize) -> Option<[u8; 8]>,
    D: Fn(usize) -> Option<[u8; DNS_HEADER_LEN]>,
    M: Fn(usize) -> Option<[u8; TCP_MESSAGE_START]>,
{
    let udp_off = match walk6(ip.next_hdr, &read8) {
        Walk::Udp(off) => off,
        Walk::Tcp(off) => return tcp6(ip, off, read_msg, syns),
        Walk::Other => return Parsed::Other,
        Walk::Unreadable => return Parsed::Malformed,
    };
    let Some(u) = read8(udp_off) else {
        return Parsed::Other;
    };
    let udp = UdpHdr {
        src: [u[0], u[1]],
        dst: [u[2], u[3]],
        len: [u[4], u[5]],
        check: [u[6], u[7]],
    };
    let Some(ports) = dns_ports(&udp) else {
        return Parsed::Other;
    };
    let l4_len =
        (u16::from_be_bytes(ip.payload_len) as usize + Ipv6Hdr::LEN).saturating_sub(udp_off);
    let Some(avail) = question_avail(&udp, l4_len) else {
        return Parsed::Malformed;
    };
    let dns_off = udp_off + UdpHdr::LEN;
    let Some(dns) = read_dns(dns_off) else {
        return Parsed::Malformed;
    };
    if !one_question(&dns) {
        return Parsed::Malformed;
    }
    Parsed::Dns {
        packet: packet_of(
            addr6(&ip.src_addr),
            addr6(&ip.dst_addr),
            ports,
            &dns,
            IPPROTO_UDP,
        ),
        question: QuestionAt {
            off: dns_off + DNS_HEADER_LEN,
            avail,
        },
    }
}

/// The TCP segment of an IPv6 packet at `tcp_off` from its header (offsets of the result from
/// the IPv6 header, as `dns6`'s).
#[inline(always)]
fn tcp6<M: Fn(usize) -> Option<[u8; TCP_MESSAGE_START]>>(
    ip: &Ipv6Hdr,
    tcp_off: usize,
    read_msg: M,
    syns: bool,
) -> Parsed {
    let Some(m) = read_msg(tcp_off) else {
        return Parsed::Other;
    };
    let t = [
        m[0], m[1], m[2], m[3], m[4], m[5], m[6], m[7], m[8], m[9], m[10], m[11], m[12], m[13],
    ];
    let Some(l4_len) =
        (u16::from_be_bytes(ip.payload_len) as usize + Ipv6Hdr::LEN).checked_sub(tcp_off)
    else {
        return Parsed::Malformed;
    };
    let addrs = (addr6(&ip.src_addr), addr6(&ip.dst_addr));
    tcp(addrs, &t, l4_len, |off| read_msg(tcp_off + off), syns).at(tcp_off)
}

/// Parses the IPv6 packet of an Ethernet frame seen by TC, with helper loads (the extension
/// header walk has variable offsets, which direct packet access would make the verifier track).
#[inline(always)]
fn tc_packet6(ctx: &TcContext) -> Parsed {
    let Some(eth) = ptr_at::<EthHdr>(ctx, 0) else {
        return Parsed::Other;
    };
    // SAFETY: bounds checked by ptr_at.
    if u16::from_be(unsafe { (*eth).ether_type }) != ETH_P_IPV6 {
        return Parsed::Other;
    }
    let Ok(ip) = ctx.load::<Ipv6Hdr>(EthHdr::LEN) else {
        return Parsed::Other;
    };
    if ip.version() != 6 {
        return Parsed::Other;
    }
    let base = EthHdr::LEN;
    dns6(
        &ip,
        |off| ctx.load::<[u8; 8]>(base + off).ok(),
        |off| ctx.load::<[u8; DNS_HEADER_LEN]>(base + off).ok(),
        |off| ctx.load::<[u8; TCP_MESSAGE_START]>(base + off).ok(),
        false,
    )
    .at(base)
}

/// How many question bytes to copy when `avail` follow the DNS header: all of them up to
/// `QUESTION_LEN` (the copy ends with the datagram, not at a fixed size), in [1, QUESTION_LEN];
/// `None` when nothing follows. The verifier must see the length bounded (and non-zero, for
/// `bpf_skb_load_bytes`) on the very register handed to the helper, and LLVM may fold a `min()`
/// or a range check into a compare on a copy (`n - 1 > 263`) that older verifiers do not carry
/// back to `n`: so the length minus one goes through a volatile stack slot, which LLVM cannot
/// reason about, then a mask and one unsigned compare on it, and one is added back after (the
/// object shows `r &= 0x1ff; if r > 0x107 goto ..; r += 1` feeding the helper; 5.10, 6.1 and
/// 6.18 verify it).
#[inline(always)]
fn copy_len(avail: usize) -> Option<u32> {
    if avail == 0 {
        return None;
    }
    let last = (avail - 1).min(QUESTION_LEN - 1) as u32;
    // SAFETY: a read of a local.
    let last = unsafe { core::ptr::read_volatile(&last) } & 0x1ff;
    if last >= QUESTION_LEN as u32 {
        return None;
    }
    Some(last + 1)
}

/// Copies the question of a TC packet into `dst`, up to the datagram's end or `QUESTION_LEN`
/// bytes, and returns how many it copied; 0 (and a parse error counted) when the packet holds
/// fewer bytes than its UDP length says. `dst` is not cleared: the bytes past the returned
/// length are an earlier query's.
#[inline(always)]
pub fn tc_question(ctx: &TcContext, q: QuestionAt, dst: &mut [u8; QUESTION_LEN]) -> u16 {
    let Some(n) = copy_len(q.avail) else {
        return 0;
    };
    let skb = ctx.skb.skb as *const _;
    // SAFETY: n <= QUESTION_LEN, the size of dst; the helper checks the packet side.
    if unsafe { bpf_skb_load_bytes(skb, q.off as u32, dst.as_mut_ptr() as *mut _, n) } != 0 {
        count(counter::PARSE_ERRORS);
        return 0;
    }
    n as u16
}

/// Copies the question of an `sk_buff` into `dst` (zeroed by the caller), as `tc_question` does,
/// with a probe read of the kernel's buffer.
#[inline(always)]
pub fn skb_question(q: QuestionAt, dst: &mut [u8; QUESTION_LEN]) -> u16 {
    let Some(n) = copy_len(q.avail) else {
        return 0;
    };
    // SAFETY: n <= QUESTION_LEN, the size of dst; the helper checks the kernel address.
    let ret = unsafe {
        aya_ebpf::helpers::generated::bpf_probe_read_kernel(
            dst.as_mut_ptr() as *mut _,
            n,
            q.off as *const _,
        )
    };
    if ret != 0 {
        count(counter::PARSE_ERRORS);
        return 0;
    }
    n as u16
}

#[inline(always)]
fn read<T>(src: *const u8) -> Option<T> {
    // SAFETY: bpf_probe_read_kernel checks the address and fails cleanly.
    unsafe { bpf_probe_read_kernel(src as *const T).ok() }
}

/// Where a kernel packet was: its namespace and interface.
pub struct Place {
    /// Network namespace inode (0 when unknown).
    pub netns: u32,
    /// Interface index (0 when the packet had no device).
    pub ifindex: u32,
}

/// Reads the namespace and interface of an `sk_buff` (through `skb->dev`, else `skb->sk`).
#[inline(always)]
pub fn skb_place(skb: *const u8) -> Place {
    let o = &config().offsets;
    let dev: *const u8 = read(skb.wrapping_add(o.skb_dev as usize)).unwrap_or(core::ptr::null());
    let (net, ifindex): (*const u8, u32) = if !dev.is_null() {
        (
            read(dev.wrapping_add(o.dev_net as usize)).unwrap_or(core::ptr::null()),
            read::<i32>(dev.wrapping_add(o.dev_ifindex as usize)).unwrap_or(0) as u32,
        )
    } else {
        let sk: *const u8 = read(skb.wrapping_add(o.skb_sk as usize)).unwrap_or(core::ptr::null());
        if sk.is_null() {
            (core::ptr::null(), 0)
        } else {
            (
                read(sk.wrapping_add(o.sk_net as usize)).unwrap_or(core::ptr::null()),
                0,
            )
        }
    };
    let netns = if net.is_null() {
        0
    } else {
        read(net.wrapping_add(o.net_inum as usize)).unwrap_or(0)
    };
    Place { netns, ifindex }
}

/// Parses the IPv4/UDP/DNS (or TCP/DNS, and SYNs to the DNS port) headers of an `sk_buff` at
/// its network header.
#[inline(always)]
pub fn skb_packet(skb: *const u8) -> Parsed {
    let o = &config().offsets;
    let Some(head) = read::<*const u8>(skb.wrapping_add(o.skb_head as usize)) else {
        return Parsed::Other;
    };
    let Some(nh) = read::<u16>(skb.wrapping_add(o.skb_network_header as usize)) else {
        return Parsed::Other;
    };
    if head.is_null() || nh == u16::MAX {
        return Parsed::Other;
    }
    let ip_ptr = head.wrapping_add(nh as usize);
    let Some(ip) = read::<Ipv4Hdr>(ip_ptr) else {
        return Parsed::Other;
    };
    if ip.vihl >> 4 == 6 {
        return skb_packet6(ip_ptr);
    }
    let Some(ihl) = ihl4(&ip) else {
        return Parsed::Other;
    };
    if ip.proto != IPPROTO_UDP {
        if ip.proto != IPPROTO_TCP {
            return Parsed::Other;
        }
        let tcp_ptr = ip_ptr.wrapping_add(ihl);
        let read_msg = |off| read::<[u8; TCP_MESSAGE_START]>(tcp_ptr.wrapping_add(off));
        return tcp4(&ip, ihl, read(tcp_ptr), read_msg, true).at(tcp_ptr as usize);
    }
    let Some(udp) = read::<UdpHdr>(ip_ptr.wrapping_add(ihl)) else {
        return Parsed::Other;
    };
    let Some(ports) = dns_ports(&udp) else {
        return Parsed::Other;
    };
    if is_fragment(&ip) {
        return Parsed::Malformed;
    }
    let Some(avail) = question_avail(&udp, l4_len4(&ip, ihl)) else {
        return Parsed::Malformed;
    };
    let dns_ptr = ip_ptr.wrapping_add(ihl + UdpHdr::LEN);
    let Some(dns) = read::<[u8; DNS_HEADER_LEN]>(dns_ptr) else {
        return Parsed::Malformed;
    };
    if !one_question(&dns) {
        return Parsed::Malformed;
    }
    Parsed::Dns {
        packet: packet(&ip, ports, &dns),
        question: QuestionAt {
            off: dns_ptr as usize + DNS_HEADER_LEN,
            avail,
        },
    }
}

/// Parses the IPv6/UDP/DNS (or TCP) headers of an `sk_buff` whose network header is at `ip_ptr`.
#[inline(always)]
fn skb_packet6(ip_ptr: *const u8) -> Parsed {
    let Some(ip) = read::<Ipv6Hdr>(ip_ptr) else {
        return Parsed::Other;
    };
    dns6(
        &ip,
        |off| read::<[u8; 8]>(ip_ptr.wrapping_add(off)),
        |off| read::<[u8; DNS_HEADER_LEN]>(ip_ptr.wrapping_add(off)),
        |off| read::<[u8; TCP_MESSAGE_START]>(ip_ptr.wrapping_add(off)),
        true,
    )
    .at(ip_ptr as usize)
}

/// Whether a packet passes the pod filter (`--pod-ip`).
#[inline(always)]
pub fn wanted(packet: &Packet) -> bool {
    let pod = &config().pod_ip;
    is_unset(pod) || packet.saddr == *pod || packet.daddr == *pod
}

/// The client side of a DNS packet: (address, port) of whoever sent the query.
#[inline(always)]
pub fn client_of(packet: &Packet) -> (Addr, u16) {
    if packet.dport == config().dns_port {
        (packet.saddr, packet.sport)
    } else {
        (packet.daddr, packet.dport)
    }
}
