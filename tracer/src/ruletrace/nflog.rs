//! The legacy (xtables) trace as nfnetlink_log delivers it: `NFULNL_MSG_PACKET` messages whose
//! prefix is `TRACE: TABLE:CHAIN:rule|return|policy:NUMBER` (net/ipv4/netfilter/ip_tables.c) and
//! whose payload is the packet; and the rules of `iptables-legacy-save` those numbers point at.
//! Legacy tracing reports the rule that matched, not its verdict: the verdict is read from the
//! rule's target (`-j ACCEPT`, a user chain, ...), the policy from the chain's header.
//!
//! Parsed with netlink-packet-core's bounded NLA iterator, like [`super::message`]; the numbers are
//! from the kernel's `include/uapi/linux/netfilter/nfnetlink_log.h`.

use std::collections::{HashMap, HashSet};

use netlink_packet_core::{NLMSG_ERROR, NlaBuffer, NlasIterator};

use super::{
    message::{Family, Malformed, TraceMessage, TraceType, Verdict, tuple},
    rules::{RuleRef, save_comment},
};

/// `NFNL_SUBSYS_ULOG << 8 | NFULNL_MSG_PACKET`.
const NFULNL_PACKET_MSG_TYPE: u16 = 4 << 8;
const NLMSG_HDRLEN: usize = 16;
const NFGENMSG_LEN: usize = 4;
const NFULA_MARK: u16 = 2;
const NFULA_IFINDEX_INDEV: u16 = 4;
const NFULA_IFINDEX_OUTDEV: u16 = 5;
const NFULA_PAYLOAD: u16 = 9;
const NFULA_PREFIX: u16 = 10;

/// One nflog message of a traced packet, before its rule is looked up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct LogMessage {
    /// The prefix's table, chain, kind and number.
    pub table: String,
    pub chain: String,
    pub kind: TraceType,
    pub number: u64,
    /// The packet's first bytes (IPv4).
    pub payload: Vec<u8>,
    pub iif: Option<u32>,
    pub oif: Option<u32>,
    pub mark: Option<u32>,
}

/// What one netlink message of the nflog socket is.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Received {
    /// A TRACE message.
    Trace(LogMessage),
    /// An ack or error for request `seq` (`0` for success, else the errno).
    Ack { seq: u32, errno: i32 },
    /// Anything else (a logged packet without a TRACE prefix): ignored.
    Other,
}

/// The messages of one datagram (see [`super::message::messages`] for the framing rules).
pub(crate) fn messages(mut bytes: &[u8]) -> impl Iterator<Item = Result<Received, Malformed>> + '_ {
    std::iter::from_fn(move || {
        if bytes.is_empty() {
            return None;
        }
        let len = bytes
            .get(..4)
            .map_or(0, |b| u32::from_ne_bytes([b[0], b[1], b[2], b[3]]) as usize);
        if len < NLMSG_HDRLEN || len > bytes.len() {
            bytes = &[];
            return Some(Err(Malformed("netlink message length out of bounds")));
        }
        let (msg, rest) = bytes.split_at(len);
        bytes = rest.get(((len + 3) & !3) - len..).unwrap_or_default();
        let kind = u16::from_ne_bytes([msg[4], msg[5]]);
        let seq = u32::from_ne_bytes([msg[8], msg[9], msg[10], msg[11]]);
        Some(match kind {
            NFULNL_PACKET_MSG_TYPE => parse(&msg[NLMSG_HDRLEN..]),
            NLMSG_ERROR => msg
                .get(NLMSG_HDRLEN..NLMSG_HDRLEN + 4)
                .map(|e| Received::Ack {
                    seq,
                    errno: -i32::from_ne_bytes([e[0], e[1], e[2], e[3]]),
                })
                .ok_or(Malformed("netlink error message without an errno")),
            _ => Ok(Received::Other),
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

fn parse(payload: &[u8]) -> Result<Received, Malformed> {
    let attrs = payload
        .get(NFGENMSG_LEN..)
        .ok_or(Malformed("nflog message without an nfgenmsg header"))?;
    let (mut prefix, mut packet) = (None, None);
    let (mut iif, mut oif, mut mark) = (None, None, None);
    for nla in NlasIterator::new(attrs) {
        let nla: NlaBuffer<&[u8]> = nla.map_err(|_| Malformed("attribute out of bounds"))?;
        let (kind, len) = (nla.kind(), usize::from(nla.length()));
        let value = nla.into_inner().get(4..len).unwrap_or_default();
        match kind {
            NFULA_PREFIX => prefix = Some(value),
            NFULA_PAYLOAD => packet = Some(value),
            NFULA_IFINDEX_INDEV => iif = Some(be32(value)?),
            NFULA_IFINDEX_OUTDEV => oif = Some(be32(value)?),
            NFULA_MARK => mark = Some(be32(value)?),
            _ => {}
        }
    }
    let Some(prefix) = prefix else {
        return Ok(Received::Other);
    };
    let end = prefix.iter().position(|&b| b == 0).unwrap_or(prefix.len());
    let prefix = String::from_utf8_lossy(&prefix[..end]);
    let Some(trace) = prefix.trim_end().strip_prefix("TRACE: ") else {
        return Ok(Received::Other);
    };
    let (table, chain, kind, number) = parse_prefix(trace)?;
    Ok(Received::Trace(LogMessage {
        table: table.to_owned(),
        chain: chain.to_owned(),
        kind,
        number,
        payload: packet.unwrap_or_default().to_vec(),
        iif,
        oif,
        mark,
    }))
}

/// `TABLE:CHAIN:KIND:NUMBER` (chain names may hold `:`; table names and the rest do not).
fn parse_prefix(trace: &str) -> Result<(&str, &str, TraceType, u64), Malformed> {
    let bad = Malformed("TRACE prefix not TABLE:CHAIN:KIND:NUMBER");
    let (table, rest) = trace.split_once(':').ok_or(bad)?;
    let mut tail = rest.rsplitn(3, ':');
    let number = tail.next().and_then(|n| n.parse().ok()).ok_or(bad)?;
    let kind = match tail.next().ok_or(bad)? {
        "rule" => TraceType::Rule,
        "return" => TraceType::Return,
        "policy" => TraceType::Policy,
        _ => return Err(bad),
    };
    let chain = tail.next().filter(|c| !c.is_empty()).ok_or(bad)?;
    Ok((table, chain, kind, number))
}

/// A legacy table's chains from `iptables-legacy-save`: each chain's policy and rules.
#[derive(Debug, Default)]
pub(crate) struct LegacyBook {
    /// `(table, chain)` -> the `-A` lines (without `-A CHAIN `), in order.
    rules: HashMap<(String, String), Vec<String>>,
    /// `(table, chain)` -> the policy of a built-in chain.
    policies: HashMap<(String, String), String>,
    /// `(table, chain)` of user-defined chains.
    user_chains: HashSet<(String, String)>,
}

impl LegacyBook {
    pub(crate) fn parse(save: &str) -> LegacyBook {
        let mut book = LegacyBook::default();
        let mut table = String::new();
        for line in save.lines() {
            if let Some(name) = line.strip_prefix('*') {
                table = name.trim().to_owned();
            } else if let Some(header) = line.strip_prefix(':') {
                let mut parts = header.split_whitespace();
                let (Some(chain), Some(policy)) = (parts.next(), parts.next()) else {
                    continue;
                };
                let key = (table.clone(), chain.to_owned());
                if policy == "-" {
                    book.user_chains.insert(key);
                } else {
                    book.policies.insert(key, policy.to_owned());
                }
            } else if let Some(rest) = line.strip_prefix("-A ") {
                let (chain, rule) = rest.split_once(' ').unwrap_or((rest, ""));
                book.rules
                    .entry((table.clone(), chain.to_owned()))
                    .or_default()
                    .push(rule.to_owned());
            }
        }
        book
    }

    /// The rule a TRACE message names (`rule:N` is 1-based), if the book has it.
    pub(crate) fn rule(&self, table: &str, chain: &str, number: u64) -> Option<&str> {
        let index = usize::try_from(number.checked_sub(1)?).ok()?;
        let rules = self.rules.get(&(table.to_owned(), chain.to_owned()))?;
        rules.get(index).map(String::as_str)
    }

    /// The verdict of a rule's target: built-in verdicts, a jump or goto to a user chain, the
    /// NAT targets (which accept), REJECT (which drops); any other target lets the packet go on.
    fn verdict(&self, table: &str, rule: &str) -> Verdict {
        let tokens = tokens(rule);
        let find = |flag: &str| {
            tokens
                .iter()
                .position(|t| t == flag)
                .and_then(|i| tokens.get(i + 1))
        };
        if let Some(chain) = find("-g") {
            return Verdict::Goto(chain.clone());
        }
        match find("-j").map(String::as_str) {
            Some("ACCEPT" | "DNAT" | "SNAT" | "MASQUERADE" | "REDIRECT") => Verdict::Accept,
            Some("DROP" | "REJECT") => Verdict::Drop,
            Some("RETURN") => Verdict::Return,
            Some(target)
                if self
                    .user_chains
                    .contains(&(table.to_owned(), target.to_owned())) =>
            {
                Verdict::Jump(target.to_owned())
            }
            _ => Verdict::Continue,
        }
    }

    /// The trace message, and its rule, of a TRACE log message; `id` groups one packet's.
    pub(crate) fn translate(&self, msg: LogMessage, id: u32) -> (TraceMessage, Option<RuleRef>) {
        let (verdict, rule) = match msg.kind {
            TraceType::Rule => {
                let text = self.rule(&msg.table, &msg.chain, msg.number);
                let verdict = text.map_or(Verdict::Continue, |t| self.verdict(&msg.table, t));
                let rule = RuleRef {
                    handle: msg.number,
                    text: text.unwrap_or_default().to_owned(),
                    comment: text.and_then(save_comment),
                    number: text.map(|_| msg.number),
                };
                (verdict, Some(rule))
            }
            TraceType::Return => (Verdict::Return, None),
            _ => {
                let key = (msg.table.clone(), msg.chain.clone());
                let verdict = match self.policies.get(&key).map(String::as_str) {
                    Some("DROP") => Verdict::Drop,
                    _ => Verdict::Accept,
                };
                (verdict, None)
            }
        };
        let header_len = usize::from(msg.payload.first().copied().unwrap_or(0) & 0x0f) * 4;
        let transport = msg.payload.get(header_len..).unwrap_or_default();
        let trace = TraceMessage {
            id,
            family: Family::Ip,
            nfproto: Some(2),
            kind: msg.kind,
            table: msg.table,
            chain: msg.chain,
            handle: rule.as_ref().map(|r| r.handle),
            verdict,
            tuple: tuple(&msg.payload, transport),
            iif: msg.iif,
            oif: msg.oif,
            mark: msg.mark,
        };
        (trace, rule)
    }
}

/// The packet key of a legacy trace message: nflog has no trace id, so one packet's messages are
/// grouped by source, source port, protocol and IPv4 identification (DNAT does not change them).
pub(crate) fn packet_id(payload: &[u8]) -> u32 {
    let header_len = usize::from(payload.first().copied().unwrap_or(0) & 0x0f) * 4;
    let mut key = Vec::with_capacity(10);
    key.extend_from_slice(payload.get(4..6).unwrap_or_default()); // identification
    key.extend_from_slice(payload.get(9..10).unwrap_or_default()); // protocol
    key.extend_from_slice(payload.get(12..16).unwrap_or_default()); // source
    key.extend_from_slice(payload.get(header_len..header_len + 2).unwrap_or_default());
    // FNV-1a.
    key.iter().fold(0x811c_9dc5u32, |h, &b| {
        (h ^ u32::from(b)).wrapping_mul(0x0100_0193)
    })
}

/// The words of an iptables-save rule, `"…"` quoting (with `\"` escapes) kept together.
pub(crate) fn tokens(rule: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut chars = rule.chars().peekable();
    while let Some(&c) = chars.peek() {
        if c.is_whitespace() {
            chars.next();
            continue;
        }
        let mut word = String::new();
        let mut quoted = false;
        while let Some(c) = chars.next() {
            match c {
                '"' => quoted = !quoted,
                '\\' if quoted => word.extend(chars.next()),
                c if c.is_whitespace() && !quoted => break,
                c => word.push(c),
            }
        }
        out.push(word);
    }
    out
}
