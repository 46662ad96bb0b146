//! ICMP and ICMPv6 errors about DNS queries, read off the wire by TC: the quoted query and the
//! error's type and code.

use aya_ebpf::programs::TcContext;
use network_types::{
    eth::EthHdr,
    ip::{Ipv4Hdr, Ipv6Hdr},
    udp::UdpHdr,
};
use tracer_common::flow::Packet;

use super::{
    DNS_HEADER_LEN, ETH_P_IP, ETH_P_IPV6, IPPROTO_UDP, addr6, dns_ports, ihl4, packet, packet_of,
    ptr_at,
};
use crate::maps::config;

/// ICMP and ICMPv6 (protocol 1, next header 58) and their error types: destination
/// unreachable, time exceeded, parameter problem (ICMP 3, 11, 12); destination unreachable,
/// packet too big, time exceeded, parameter problem (ICMPv6 1-4: RFC 4443's errors).
const IPPROTO_ICMP: u8 = 1;
const IPPROTO_ICMPV6: u8 = 58;
/// The ICMP header before the quoted packet (the same 8 bytes in both families): type, code,
/// checksum, and 4 bytes of type-specific data.
const ICMP_HEADER_LEN: usize = 8;

/// An ICMP or ICMPv6 error about a DNS query, in an Ethernet frame seen by TC: the quoted query
/// (as the error carries it) and `type << 8 | code`. `None` for anything else, without counting:
/// an error about other traffic is not ours, and one cut short is only evidence missing. Only
/// the common shape is read: no IPv6 extension headers before the ICMPv6 header or inside the
/// quoted packet.
#[inline(always)]
pub fn tc_icmp_error(ctx: &TcContext) -> Option<(Packet, u32)> {
    let eth = ptr_at::<EthHdr>(ctx, 0)?;
    // SAFETY: bounds checked by ptr_at.
    match u16::from_be(unsafe { (*eth).ether_type }) {
        ETH_P_IP => tc_icmp4_error(ctx),
        ETH_P_IPV6 => tc_icmp6_error(ctx),
        _ => None,
    }
}

#[inline(always)]
fn tc_icmp4_error(ctx: &TcContext) -> Option<(Packet, u32)> {
    let ip = ctx.load::<Ipv4Hdr>(EthHdr::LEN).ok()?;
    let ihl = (ip.vihl & 0x0f) as usize * 4;
    if ip.vihl >> 4 != 4 || ip.proto != IPPROTO_ICMP || !(Ipv4Hdr::LEN..=60).contains(&ihl) {
        return None;
    }
    let icmp_off = EthHdr::LEN + ihl;
    let icmp = ctx.load::<[u8; ICMP_HEADER_LEN]>(icmp_off).ok()?;
    if !matches!(icmp[0], 3 | 11 | 12) {
        return None;
    }
    let inner_off = icmp_off + ICMP_HEADER_LEN;
    let inner = ctx.load::<Ipv4Hdr>(inner_off).ok()?;
    let inner_ihl = ihl4(&inner)?;
    if inner.proto != IPPROTO_UDP {
        return None;
    }
    // Only a first fragment (or a whole datagram) quotes the UDP header.
    if u16::from_be_bytes(inner.frags) & 0x1fff != 0 {
        return None;
    }
    let udp = ctx.load::<UdpHdr>(inner_off + inner_ihl).ok()?;
    let ports = query_ports(&udp)?;
    let dns = ctx
        .load::<[u8; DNS_HEADER_LEN]>(inner_off + inner_ihl + UdpHdr::LEN)
        .ok()?;
    Some((packet(&inner, ports, &dns), type_code(&icmp)))
}

#[inline(always)]
fn tc_icmp6_error(ctx: &TcContext) -> Option<(Packet, u32)> {
    let ip = ctx.load::<Ipv6Hdr>(EthHdr::LEN).ok()?;
    if ip.version() != 6 || ip.next_hdr != IPPROTO_ICMPV6 {
        return None;
    }
    let icmp_off = EthHdr::LEN + Ipv6Hdr::LEN;
    let icmp = ctx.load::<[u8; ICMP_HEADER_LEN]>(icmp_off).ok()?;
    if !(1..=4).contains(&icmp[0]) {
        return None;
    }
    let inner_off = icmp_off + ICMP_HEADER_LEN;
    let inner = ctx.load::<Ipv6Hdr>(inner_off).ok()?;
    if inner.next_hdr != IPPROTO_UDP {
        return None;
    }
    let udp = ctx.load::<UdpHdr>(inner_off + Ipv6Hdr::LEN).ok()?;
    let ports = query_ports(&udp)?;
    let dns = ctx
        .load::<[u8; DNS_HEADER_LEN]>(inner_off + Ipv6Hdr::LEN + UdpHdr::LEN)
        .ok()?;
    let packet = packet_of(
        addr6(&inner.src_addr),
        addr6(&inner.dst_addr),
        ports,
        &dns,
        IPPROTO_UDP,
    );
    Some((packet, type_code(&icmp)))
}

/// The ports of a quoted query (to the DNS port); `None` for anything else, an answer included:
/// a query's fate is told by its own records.
#[inline(always)]
fn query_ports(udp: &UdpHdr) -> Option<(u16, u16)> {
    let ports = dns_ports(udp)?;
    (ports.1 == config().dns_port).then_some(ports)
}

#[inline(always)]
fn type_code(icmp: &[u8; ICMP_HEADER_LEN]) -> u32 {
    (u32::from(icmp[0]) << 8) | u32::from(icmp[1])
}
