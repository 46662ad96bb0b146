//! `NFT_MSG_TRACE` messages of the `NFNLGRP_NFTRACE` group, parsed from raw datagrams with
//! netlink-packet-core's bounds-checked NLA iterator (netlink-packet-netfilter 0.4 hands these
//! messages over as untyped attributes). A message this module cannot read is reported as
//! [`Malformed`] for the caller to count; nothing here panics on what the kernel sends.
//!
//! Every number below is from the kernel's `include/uapi/linux/netfilter/nf_tables.h`,
//! `nfnetlink.h` and `netfilter.h`; the encoding (big-endian integers, which attribute comes when)
//! from `net/netfilter/nf_tables_trace.c`.

use std::{
    fmt,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
};

use netlink_packet_core::{NLMSG_ERROR, NLMSG_OVERRUN, NlaBuffer, NlasIterator};

/// `NFNL_SUBSYS_NFTABLES << 8 | NFT_MSG_TRACE`.
pub(crate) const NFT_TRACE_MSG_TYPE: u16 = 10 << 8 | 17;
/// `NFNLGRP_NFTRACE`: the multicast group of trace messages.
pub(crate) const NFNLGRP_NFTRACE: u32 = 9;

const NLMSG_HDRLEN: usize = 16;
const NFGENMSG_LEN: usize = 4;

// enum nft_trace_attributes
const NFTA_TRACE_TABLE: u16 = 1;
const NFTA_TRACE_CHAIN: u16 = 2;
const NFTA_TRACE_RULE_HANDLE: u16 = 3;
const NFTA_TRACE_TYPE: u16 = 4;
const NFTA_TRACE_VERDICT: u16 = 5;
const NFTA_TRACE_ID: u16 = 6;
const NFTA_TRACE_NETWORK_HEADER: u16 = 8;
const NFTA_TRACE_TRANSPORT_HEADER: u16 = 9;
const NFTA_TRACE_IIF: u16 = 10;
const NFTA_TRACE_OIF: u16 = 12;
const NFTA_TRACE_MARK: u16 = 14;
const NFTA_TRACE_NFPROTO: u16 = 15;
const NFTA_TRACE_POLICY: u16 = 16;

// enum nft_verdict_attributes
const NFTA_VERDICT_CODE: u16 = 1;
const NFTA_VERDICT_CHAIN: u16 = 2;

// enum nft_trace_types
const NFT_TRACETYPE_POLICY: u32 = 1;
const NFT_TRACETYPE_RETURN: u32 = 2;
const NFT_TRACETYPE_RULE: u32 = 3;

/// What a rule (or a base chain's policy) decided for a packet: the netfilter verdicts
/// (`NF_*`, final for the hook) and nf_tables' own (`NFT_*`, which move within the ruleset).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    /// `NF_ACCEPT`: the packet leaves this hook's chain for the next one.
    Accept,
    /// `NF_DROP` (also what `reject` returns).
    Drop,
    /// `NF_STOLEN`: a statement took the packet.
    Stolen,
    /// `NF_QUEUE` to this queue number.
    Queue(u16),
    /// `NF_REPEAT`.
    Repeat,
    /// `NF_STOP` (deprecated).
    Stop,
    /// `NFT_CONTINUE`: evaluation goes on with the next rule (a statement without a verdict).
    Continue,
    /// `NFT_BREAK`.
    Break,
    /// `NFT_JUMP` to this chain.
    Jump(String),
    /// `NFT_GOTO` to this chain.
    Goto(String),
    /// `NFT_RETURN`, or the end of a non-base chain reached (then the step names no rule).
    Return,
    /// A code this module does not know.
    Other(i32),
}

impl Verdict {
    /// The verdict for a code and, for jump and goto, the target chain.
    fn from_code(code: i32, chain: Option<String>) -> Result<Verdict, Malformed> {
        Ok(match code {
            -1 => Verdict::Continue,
            -2 => Verdict::Break,
            -3 => Verdict::Jump(chain.ok_or(Malformed("jump verdict without a chain"))?),
            -4 => Verdict::Goto(chain.ok_or(Malformed("goto verdict without a chain"))?),
            -5 => Verdict::Return,
            // NF_VERDICT_MASK: the upper 16 bits carry a queue number or an errno.
            c if c >= 0 => match c & 0xff {
                0 => Verdict::Drop,
                1 => Verdict::Accept,
                2 => Verdict::Stolen,
                3 => Verdict::Queue((c as u32 >> 16) as u16),
                4 => Verdict::Repeat,
                5 => Verdict::Stop,
                _ => Verdict::Other(c),
            },
            c => Verdict::Other(c),
        })
    }

    /// Whether the verdict ends the packet's walk through this hook (accept, drop, queue, ...),
    /// as opposed to moving within the ruleset (continue, jump, goto, return).
    pub fn is_final(&self) -> bool {
        matches!(
            self,
            Verdict::Accept
                | Verdict::Drop
                | Verdict::Stolen
                | Verdict::Queue(_)
                | Verdict::Repeat
                | Verdict::Stop
        )
    }
}

impl fmt::Display for Verdict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Verdict::Accept => f.write_str("accept"),
            Verdict::Drop => f.write_str("drop"),
            Verdict::Stolen => f.write_str("stolen"),
            Verdict::Queue(n) => write!(f, "queue {n}"),
            Verdict::Repeat => f.write_str("repeat"),
            Verdict::Stop => f.write_str("stop"),
            Verdict::Continue => f.write_str("continue"),
            Verdict::Break => f.write_str("break"),
            Verdict::Jump(c) => write!(f, "jump {c}"),
            Verdict::Goto(c) => write!(f, "goto {c}"),
            Verdict::Return => f.write_str("return"),
            Verdict::Other(c) => write!(f, "verdict {c}"),
        }
    }
}

/// A table's family (the `nfgenmsg` family of a trace message, `family` in `nft -j`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Family {
    /// `inet`: IPv4 and IPv6.
    Inet,
    /// `ip`: IPv4 (iptables-nft's tables).
    Ip,
    /// `ip6`: IPv6 (ip6tables-nft's tables).
    Ip6,
    /// `arp`.
    Arp,
    /// `bridge`.
    Bridge,
    /// `netdev`.
    Netdev,
    /// An `NFPROTO_*` number this module does not name.
    Other(u8),
}

impl Family {
    /// The family of an `NFPROTO_*` number.
    pub fn from_nfproto(n: u8) -> Family {
        match n {
            1 => Family::Inet,
            2 => Family::Ip,
            3 => Family::Arp,
            5 => Family::Netdev,
            7 => Family::Bridge,
            10 => Family::Ip6,
            n => Family::Other(n),
        }
    }

    /// The family nft names so (`ip`, `inet`, ...).
    pub fn from_name(name: &str) -> Family {
        match name {
            "inet" => Family::Inet,
            "ip" => Family::Ip,
            "ip6" => Family::Ip6,
            "arp" => Family::Arp,
            "bridge" => Family::Bridge,
            "netdev" => Family::Netdev,
            _ => Family::Other(0),
        }
    }
}

impl fmt::Display for Family {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Family::Inet => f.write_str("inet"),
            Family::Ip => f.write_str("ip"),
            Family::Ip6 => f.write_str("ip6"),
            Family::Arp => f.write_str("arp"),
            Family::Bridge => f.write_str("bridge"),
            Family::Netdev => f.write_str("netdev"),
            Family::Other(n) => write!(f, "family {n}"),
        }
    }
}

/// A packet's addresses, ports and IP protocol, from the headers the kernel copies into the first
/// trace message of each base chain it runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize)]
pub struct Tuple {
    /// Source address.
    pub src: IpAddr,
    /// Destination address.
    pub dst: IpAddr,
    /// Source port (0 when the transport header was not copied).
    pub sport: u16,
    /// Destination port (0 when the transport header was not copied).
    pub dport: u16,
    /// IP protocol number (17 UDP, 6 TCP); for IPv6 the first next-header value.
    pub proto: u8,
}

impl fmt::Display for Tuple {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let proto = match self.proto {
            6 => "tcp".to_owned(),
            17 => "udp".to_owned(),
            p => format!("proto {p}"),
        };
        let (src, dst) = (
            std::net::SocketAddr::new(self.src, self.sport),
            std::net::SocketAddr::new(self.dst, self.dport),
        );
        write!(f, "{proto} {src} -> {dst}")
    }
}

/// Which kind of step a trace message reports (`enum nft_trace_types`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum TraceType {
    /// A base chain's policy decided.
    Policy,
    /// A chain returned (explicitly, or by reaching its end).
    Return,
    /// A rule matched and gave a verdict.
    Rule,
    Other(u32),
}

/// One `NFT_MSG_TRACE` message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct TraceMessage {
    /// `NFTA_TRACE_ID`: the same for every message about one packet (a hash of the skb).
    pub id: u32,
    /// The `nfgenmsg` family: the family of the base chain's table.
    pub family: Family,
    /// `NFTA_TRACE_NFPROTO`: the packet's protocol family (differs from `family` in inet tables).
    pub nfproto: Option<u32>,
    pub kind: TraceType,
    pub table: String,
    pub chain: String,
    /// `NFTA_TRACE_RULE_HANDLE`: absent for policies and implicit returns.
    pub handle: Option<u64>,
    /// `NFTA_TRACE_VERDICT` for rule and return messages, the policy for policy messages.
    pub verdict: Verdict,
    pub tuple: Option<Tuple>,
    pub iif: Option<u32>,
    pub oif: Option<u32>,
    pub mark: Option<u32>,
}

/// Why a message could not be read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Malformed(pub &'static str);

impl fmt::Display for Malformed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.0)
    }
}

/// The messages of one datagram: `Ok(Some)` for a trace message, `Ok(None)` for any other
/// message (ignored), `Err` for one that could not be read (after which the rest of the datagram
/// is skipped: its framing can no longer be trusted).
pub(crate) fn messages(
    mut bytes: &[u8],
) -> impl Iterator<Item = Result<Option<TraceMessage>, Malformed>> + '_ {
    std::iter::from_fn(move || {
        if bytes.is_empty() {
            return None;
        }
        if bytes.len() < NLMSG_HDRLEN {
            bytes = &[];
            return Some(Err(Malformed("datagram shorter than a netlink header")));
        }
        let len = u32::from_ne_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]) as usize;
        if len < NLMSG_HDRLEN || len > bytes.len() {
            bytes = &[];
            return Some(Err(Malformed("netlink message length out of bounds")));
        }
        let (msg, rest) = bytes.split_at(len);
        bytes = rest.get(((len + 3) & !3) - len..).unwrap_or_default();
        let kind = u16::from_ne_bytes([msg[4], msg[5]]);
        Some(match kind {
            NFT_TRACE_MSG_TYPE => parse(&msg[NLMSG_HDRLEN..]).map(Some),
            NLMSG_OVERRUN | NLMSG_ERROR => Err(Malformed("netlink error or overrun message")),
            _ => Ok(None),
        })
    })
}

fn be32(value: &[u8]) -> Result<u32, Malformed> {
    let bytes: [u8; 4] = value
        .get(..4)
        .and_then(|b| b.try_into().ok())
        .ok_or(Malformed("32-bit attribute shorter than 4 bytes"))?;
    Ok(u32::from_be_bytes(bytes))
}

fn be64(value: &[u8]) -> Result<u64, Malformed> {
    let bytes: [u8; 8] = value
        .get(..8)
        .and_then(|b| b.try_into().ok())
        .ok_or(Malformed("64-bit attribute shorter than 8 bytes"))?;
    Ok(u64::from_be_bytes(bytes))
}

/// A NUL-terminated name (table and chain names are at most 256 bytes).
fn name(value: &[u8]) -> Result<String, Malformed> {
    let end = value.iter().position(|&b| b == 0).unwrap_or(value.len());
    if end > 256 {
        return Err(Malformed("name longer than 256 bytes"));
    }
    Ok(String::from_utf8_lossy(&value[..end]).into_owned())
}

/// The `(type, value)` of each attribute; the iterator checked each length against the buffer.
fn attributes(payload: &[u8]) -> impl Iterator<Item = Result<(u16, &[u8]), Malformed>> + '_ {
    NlasIterator::new(payload).map(|nla| {
        let nla: NlaBuffer<&[u8]> = nla.map_err(|_| Malformed("attribute out of bounds"))?;
        let (kind, len) = (nla.kind(), usize::from(nla.length()));
        let value = nla.into_inner().get(4..len).unwrap_or_default();
        Ok((kind, value))
    })
}

fn parse_verdict(nested: &[u8]) -> Result<Verdict, Malformed> {
    let (mut code, mut chain) = (None, None);
    for nla in attributes(nested) {
        let (kind, value) = nla?;
        match kind {
            NFTA_VERDICT_CODE => code = Some(be32(value)? as i32),
            NFTA_VERDICT_CHAIN => chain = Some(name(value)?),
            _ => {}
        }
    }
    Verdict::from_code(code.ok_or(Malformed("verdict without a code"))?, chain)
}

/// The attributes of one trace message (after the netlink header).
fn parse(payload: &[u8]) -> Result<TraceMessage, Malformed> {
    let family = payload
        .first()
        .copied()
        .map(Family::from_nfproto)
        .filter(|_| payload.len() >= NFGENMSG_LEN)
        .ok_or(Malformed("trace message without an nfgenmsg header"))?;
    let (mut id, mut kind, mut table, mut chain) = (None, None, None, None);
    let (mut verdict, mut policy, mut nfproto, mut handle) = (None, None, None, None);
    let (mut network, mut transport) = (None, None);
    let (mut iif, mut oif, mut mark) = (None, None, None);
    for nla in attributes(&payload[NFGENMSG_LEN..]) {
        let (attr, value) = nla?;
        match attr {
            NFTA_TRACE_TABLE => table = Some(name(value)?),
            NFTA_TRACE_CHAIN => chain = Some(name(value)?),
            NFTA_TRACE_RULE_HANDLE => handle = Some(be64(value)?),
            NFTA_TRACE_TYPE => kind = Some(be32(value)?),
            NFTA_TRACE_VERDICT => verdict = Some(parse_verdict(value)?),
            NFTA_TRACE_ID => id = Some(be32(value)?),
            NFTA_TRACE_NETWORK_HEADER => network = Some(value),
            NFTA_TRACE_TRANSPORT_HEADER => transport = Some(value),
            NFTA_TRACE_IIF => iif = Some(be32(value)?),
            NFTA_TRACE_OIF => oif = Some(be32(value)?),
            NFTA_TRACE_MARK => mark = Some(be32(value)?),
            NFTA_TRACE_NFPROTO => nfproto = Some(be32(value)?),
            NFTA_TRACE_POLICY => policy = Some(be32(value)?),
            _ => {}
        }
    }
    let kind = match kind.ok_or(Malformed("trace message without a type"))? {
        NFT_TRACETYPE_POLICY => TraceType::Policy,
        NFT_TRACETYPE_RETURN => TraceType::Return,
        NFT_TRACETYPE_RULE => TraceType::Rule,
        other => TraceType::Other(other),
    };
    let verdict = match (kind, verdict, policy) {
        (TraceType::Policy, _, Some(p)) => Verdict::from_code(p as i32, None)?,
        (TraceType::Policy, _, None) => return Err(Malformed("policy trace without a policy")),
        // The end of a non-base chain: the kernel reports `continue` and names no rule.
        (TraceType::Return, Some(Verdict::Continue), _) => Verdict::Return,
        (_, Some(v), _) => v,
        (_, None, _) => return Err(Malformed("rule trace without a verdict")),
    };
    Ok(TraceMessage {
        id: id.ok_or(Malformed("trace message without an id"))?,
        family,
        nfproto,
        kind,
        table: table.ok_or(Malformed("trace message without a table"))?,
        chain: chain.ok_or(Malformed("trace message without a chain"))?,
        handle,
        verdict,
        tuple: network.and_then(|n| tuple(n, transport.unwrap_or_default())),
        iif,
        oif,
        mark,
    })
}

/// The 5-tuple from an IPv4 or IPv6 header and the first bytes of the transport header.
pub(crate) fn tuple(network: &[u8], transport: &[u8]) -> Option<Tuple> {
    let (src, dst, proto): (IpAddr, IpAddr, u8) = match network.first()? >> 4 {
        4 if network.len() >= 20 => {
            let addr = |at: usize| {
                Ipv4Addr::new(
                    network[at],
                    network[at + 1],
                    network[at + 2],
                    network[at + 3],
                )
            };
            (addr(12).into(), addr(16).into(), network[9])
        }
        6 if network.len() >= 40 => {
            let addr = |at: usize| {
                let octets: [u8; 16] = network[at..at + 16].try_into().unwrap_or_default();
                Ipv6Addr::from(octets)
            };
            (addr(8).into(), addr(24).into(), network[6])
        }
        _ => return None,
    };
    let port = |at: usize| {
        transport
            .get(at..at + 2)
            .map_or(0, |b| u16::from_be_bytes([b[0], b[1]]))
    };
    Some(Tuple {
        src,
        dst,
        sport: port(0),
        dport: port(2),
        proto,
    })
}
