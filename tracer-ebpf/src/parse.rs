//! Bounds-checked header reads: from a TC packet (direct access) and from an `sk_buff` pointer
//! (probe reads, for tracepoints and kprobes).

use aya_ebpf::{
    helpers::{bpf_probe_read_kernel, bpf_skb_load_bytes},
    programs::TcContext,
};
use network_types::{eth::EthHdr, ip::Ipv4Hdr, udp::UdpHdr};
use tracer_common::flow::{Packet, QUESTION_LEN};

use crate::maps::config;

const ETH_P_IP: u16 = 0x0800;
const IPPROTO_UDP: u8 = 17;
/// DNS header: id, flags, four counts.
pub const DNS_HEADER_LEN: usize = 12;

/// What a packet turned out to be.
pub enum Parsed {
    /// Not UDP to or from the DNS port: not ours.
    Other,
    /// A DNS packet: its summary, and where its question starts (an offset into a TC packet,
    /// or a kernel address for an `sk_buff`).
    Dns { packet: Packet, question_off: usize },
    /// UDP on the DNS port, but too short or fragmented to read: counted, never guessed at.
    Malformed,
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
    let Some(ports) = dns_ports(unsafe { &*udp }) else {
        return Parsed::Other;
    };
    if is_fragment(ip) {
        return Parsed::Malformed;
    }
    let dns_off = udp_off + UdpHdr::LEN;
    let Some(dns) = ptr_at::<[u8; DNS_HEADER_LEN]>(ctx, dns_off) else {
        return Parsed::Malformed;
    };
    // SAFETY: bounds checked by ptr_at.
    Parsed::Dns {
        packet: packet(ip, ports, unsafe { &*dns }),
        question_off: dns_off + DNS_HEADER_LEN,
    }
}

/// Copies up to `QUESTION_LEN` bytes of the question into `dst` and returns how many. The verifier
/// wants every load length proven non-zero and bounded, and LLVM folds a `min()` or a per-byte
/// bound check into forms it cannot follow: so a full 64-byte load when the packet has them, two
/// overlapping 32-byte loads when it has 32 to 63, else one constant-size load per set bit of the
/// remaining length; each straight into `dst` (a copy through a temporary would be a byte loop,
/// see `emit::copy_words`). `dst` is not cleared.
// Every chunk has the same shape (`cur + n <= QUESTION_LEN`), the 1-byte one included.
#[allow(clippy::int_plus_one)]
#[inline(always)]
pub fn tc_question(ctx: &TcContext, off: usize, dst: &mut [u8; QUESTION_LEN]) -> u16 {
    let len = ctx.len() as usize;
    if off >= len {
        return 0;
    }
    let rem = len - off;
    let skb = ctx.skb.skb as *const _;
    let base = dst.as_mut_ptr();
    if rem >= QUESTION_LEN {
        // SAFETY: dst holds QUESTION_LEN bytes; the helper checks the packet side.
        let ok =
            unsafe { bpf_skb_load_bytes(skb, off as u32, base as *mut _, QUESTION_LEN as u32) }
                == 0;
        return if ok { QUESTION_LEN as u16 } else { 0 };
    }
    const HALF: usize = QUESTION_LEN / 2;
    if rem >= HALF {
        // The usual case (a name of 20 to 51 bytes): two overlapping 32-byte loads, the second
        // ending where the packet ends, instead of one load per set bit of the length.
        let tail = rem - HALF;
        if tail > HALF {
            return 0;
        }
        // SAFETY: both loads stay inside dst: [0, 32) and [tail, tail + 32) with tail <= 32.
        let ok = unsafe {
            bpf_skb_load_bytes(skb, off as u32, base as *mut _, HALF as u32) == 0
                && bpf_skb_load_bytes(
                    skb,
                    (off + tail) as u32,
                    base.add(tail) as *mut _,
                    HALF as u32,
                ) == 0
        };
        return if ok { rem as u16 } else { 0 };
    }
    let mut cur = 0usize;
    macro_rules! chunk {
        ($n:expr) => {
            if rem & $n != 0 && cur + $n <= QUESTION_LEN {
                // SAFETY: cur + n <= QUESTION_LEN, checked just above.
                if unsafe {
                    bpf_skb_load_bytes(skb, (off + cur) as u32, base.add(cur) as *mut _, $n)
                } != 0
                {
                    return cur as u16;
                }
                cur += $n;
            }
        };
    }
    chunk!(16);
    chunk!(8);
    chunk!(4);
    chunk!(2);
    chunk!(1);
    cur as u16
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
    let Some(ports) = read::<UdpHdr>(ip_ptr.wrapping_add(ihl))
        .as_ref()
        .and_then(dns_ports)
    else {
        return Parsed::Other;
    };
    if is_fragment(&ip) {
        return Parsed::Malformed;
    }
    let dns_ptr = ip_ptr.wrapping_add(ihl + UdpHdr::LEN);
    let Some(dns) = read::<[u8; DNS_HEADER_LEN]>(dns_ptr) else {
        return Parsed::Malformed;
    };
    Parsed::Dns {
        packet: packet(&ip, ports, &dns),
        question_off: dns_ptr as usize + DNS_HEADER_LEN,
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
