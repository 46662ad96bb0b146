//! Bounds-checked header reads: from a TC packet (direct access) and from an `sk_buff` pointer
//! (probe reads, for tracepoints and kprobes).

use aya_ebpf::{
    helpers::{bpf_probe_read_kernel, bpf_skb_load_bytes},
    programs::TcContext,
};
use network_types::{eth::EthHdr, ip::Ipv4Hdr, udp::UdpHdr};
use tracer_common::{
    counter,
    flow::{Packet, QUESTION_LEN},
};

use crate::maps::{config, count};

const ETH_P_IP: u16 = 0x0800;
const IPPROTO_UDP: u8 = 17;
/// DNS header: id, flags, four counts.
pub const DNS_HEADER_LEN: usize = 12;

/// What a packet turned out to be.
pub enum Parsed {
    /// Not UDP to or from the DNS port: not ours.
    Other,
    /// A DNS packet: its summary, and where its question is.
    Dns {
        packet: Packet,
        question: QuestionAt,
    },
    /// UDP on the DNS port, but too short or fragmented to read: counted, never guessed at.
    Malformed,
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

/// The IPv4 header length when `ip` carries UDP, else `None` (not ours).
#[inline(always)]
fn udp_ihl(ip: &Ipv4Hdr) -> Option<usize> {
    let ihl = (ip.vihl & 0x0f) as usize * 4;
    (ip.vihl >> 4 == 4 && ip.proto == IPPROTO_UDP && (Ipv4Hdr::LEN..=60).contains(&ihl))
        .then_some(ihl)
}

/// The (source, destination) ports, network order, when either is the DNS port.
#[inline(always)]
fn dns_ports(udp: &UdpHdr) -> Option<(u16, u16)> {
    let port = config().dns_port;
    let (sport, dport) = (u16::from_ne_bytes(udp.src), u16::from_ne_bytes(udp.dst));
    (sport == port || dport == port).then_some((sport, dport))
}

/// Bytes after the DNS header by the UDP length; `None` when the datagram is shorter than the UDP
/// and DNS headers (malformed).
#[inline(always)]
fn question_avail(udp: &UdpHdr) -> Option<usize> {
    (u16::from_be_bytes(udp.len) as usize).checked_sub(UdpHdr::LEN + DNS_HEADER_LEN)
}

/// A fragment (other than a whole datagram) cannot be read as DNS.
#[inline(always)]
fn is_fragment(ip: &Ipv4Hdr) -> bool {
    u16::from_be_bytes(ip.frags) & 0x3fff != 0
}

#[inline(always)]
fn packet(ip: &Ipv4Hdr, (sport, dport): (u16, u16), dns: &[u8; DNS_HEADER_LEN]) -> Packet {
    Packet {
        saddr: u32::from_ne_bytes(ip.src_addr),
        daddr: u32::from_ne_bytes(ip.dst_addr),
        sport,
        dport,
        dns_id: u16::from_ne_bytes([dns[0], dns[1]]),
        dns_flags: u16::from_ne_bytes([dns[2], dns[3]]),
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

/// Parses an Ethernet frame seen by TC.
#[inline(always)]
pub fn tc_packet(ctx: &TcContext) -> Parsed {
    let Some(eth) = ptr_at::<EthHdr>(ctx, 0) else {
        return Parsed::Other;
    };
    // SAFETY: bounds checked by ptr_at.
    if u16::from_be(unsafe { (*eth).ether_type }) != ETH_P_IP {
        return Parsed::Other;
    }
    let Some(ip) = ptr_at::<Ipv4Hdr>(ctx, EthHdr::LEN) else {
        return Parsed::Other;
    };
    // SAFETY: bounds checked by ptr_at.
    let ip = unsafe { &*ip };
    let Some(ihl) = udp_ihl(ip) else {
        return Parsed::Other;
    };
    let udp_off = EthHdr::LEN + ihl;
    let Some(udp) = ptr_at::<UdpHdr>(ctx, udp_off) else {
        return Parsed::Other;
    };
    // SAFETY: bounds checked by ptr_at.
    let udp = unsafe { &*udp };
    let Some(ports) = dns_ports(udp) else {
        return Parsed::Other;
    };
    if is_fragment(ip) {
        return Parsed::Malformed;
    }
    let Some(avail) = question_avail(udp) else {
        return Parsed::Malformed;
    };
    let dns_off = udp_off + UdpHdr::LEN;
    let Some(dns) = ptr_at::<[u8; DNS_HEADER_LEN]>(ctx, dns_off) else {
        return Parsed::Malformed;
    };
    // SAFETY: bounds checked by ptr_at.
    Parsed::Dns {
        packet: packet(ip, ports, unsafe { &*dns }),
        question: QuestionAt {
            off: dns_off + DNS_HEADER_LEN,
            avail,
        },
    }
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

/// Parses the IPv4/UDP/DNS headers of an `sk_buff` at its network header.
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
    let Some(ihl) = udp_ihl(&ip) else {
        return Parsed::Other;
    };
    let Some(udp) = read::<UdpHdr>(ip_ptr.wrapping_add(ihl)) else {
        return Parsed::Other;
    };
    let Some(ports) = dns_ports(&udp) else {
        return Parsed::Other;
    };
    if is_fragment(&ip) {
        return Parsed::Malformed;
    }
    let Some(avail) = question_avail(&udp) else {
        return Parsed::Malformed;
    };
    let dns_ptr = ip_ptr.wrapping_add(ihl + UdpHdr::LEN);
    let Some(dns) = read::<[u8; DNS_HEADER_LEN]>(dns_ptr) else {
        return Parsed::Malformed;
    };
    Parsed::Dns {
        packet: packet(&ip, ports, &dns),
        question: QuestionAt {
            off: dns_ptr as usize + DNS_HEADER_LEN,
            avail,
        },
    }
}

/// Whether a packet passes the pod filter (`--pod-ip`).
#[inline(always)]
pub fn wanted(packet: &Packet) -> bool {
    let pod = config().pod_ip;
    pod == 0 || packet.saddr == pod || packet.daddr == pod
}

/// The client side of a DNS packet: (address, port) of whoever sent the query.
#[inline(always)]
pub fn client_of(packet: &Packet) -> (u32, u16) {
    if packet.dport == config().dns_port {
        (packet.saddr, packet.sport)
    } else {
        (packet.daddr, packet.dport)
    }
}
