//! The conntrack table over ctnetlink, read-only: statistics, UDP entries, and the NEW/DESTROY
//! event stream. (The lab's writes, bulk create and delete, are in `lab::conntrack`.)
//!
//! Every function works on the network namespace of the calling thread: a netlink socket belongs to
//! the namespace of the thread that opened it. To look into another namespace, call these inside
//! [`crate::netns::run_in`]. An [`Events`] subscription keeps the namespace it was opened in, so it
//! may be opened inside `run_in` and then read from any thread.
//!
//! Messages are built and parsed with `netlink-packet-netfilter` and sent through
//! [`netlink`]; the statistics messages (`IPCTNL_MSG_CT_GET_STATS_CPU`,
//! `IPCTNL_MSG_CT_GET_STATS`) come back from it as raw attributes, decoded here.

mod events;
pub(crate) mod netlink;

use std::{io, net::IpAddr, path::PathBuf};

use netlink_packet_core::{DecodeError, DefaultNla, NLM_F_DUMP, Nla};
use netlink_packet_netfilter::{
    NetfilterMessage, NetfilterMessageInner,
    conntrack::{
        ConntrackAttribute, ConntrackMessage, IPTuple, ProtoTuple, Protocol, Tuple as NlTuple,
    },
};
use serde::Serialize;

pub use self::events::{Event, EventKind, Events};
use self::netlink::{
    Ctnetlink, IPCTNL_MSG_CT_GET, IPCTNL_MSG_CT_GET_STATS, IPCTNL_MSG_CT_GET_STATS_CPU, Request,
};

// include/uapi/linux/netfilter/nfnetlink_conntrack.h
pub(crate) const CTA_ID: u16 = 12;
const CTA_ZONE: u16 = 18;
const CTA_STATS_FOUND: u16 = 2;
const CTA_STATS_INVALID: u16 = 4;
const CTA_STATS_INSERT: u16 = 8;
const CTA_STATS_INSERT_FAILED: u16 = 9;
const CTA_STATS_DROP: u16 = 10;
const CTA_STATS_EARLY_DROP: u16 = 11;
const CTA_STATS_ERROR: u16 = 12;
const CTA_STATS_SEARCH_RESTART: u16 = 13;
const CTA_STATS_CLASH_RESOLVE: u16 = 14;
const CTA_STATS_CHAIN_TOOLONG: u16 = 15;
const CTA_STATS_GLOBAL_ENTRIES: u16 = 1;
const CTA_STATS_GLOBAL_MAX_ENTRIES: u16 = 2;

/// Where the namespace's conntrack sizes live (read in the calling thread's namespace).
const BUCKETS_PATH: &str = "/proc/sys/net/netfilter/nf_conntrack_buckets";

/// What went wrong talking to ctnetlink.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("failed to open a ctnetlink socket: {source}")]
    Socket { source: io::Error },
    #[error("failed to send {what} to ctnetlink: {source}")]
    Send {
        what: &'static str,
        source: io::Error,
    },
    #[error("failed to receive the answer to {what} from ctnetlink: {source}")]
    Recv {
        what: &'static str,
        source: io::Error,
    },
    #[error("failed to decode the answer to {what} from ctnetlink: {source}")]
    Decode {
        what: &'static str,
        source: DecodeError,
    },
    #[error("ctnetlink refused {what}: {source}")]
    Refused {
        what: &'static str,
        source: io::Error,
    },
    #[error("the answer to {what} from ctnetlink lacks {field}")]
    Missing {
        what: &'static str,
        field: &'static str,
    },
    #[error("failed to read {path}: {source}")]
    ReadProc { path: PathBuf, source: io::Error },
    #[error("failed to parse {path}: {value:?} is not a number")]
    ParseProc { path: PathBuf, value: String },
}

/// One direction of a connection as conntrack stores it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
pub struct Tuple {
    /// Source address.
    pub src: IpAddr,
    /// Destination address.
    pub dst: IpAddr,
    /// IP protocol number (17 for UDP).
    pub proto: u8,
    /// Source port (0 for protocols without ports).
    pub sport: u16,
    /// Destination port (0 for protocols without ports).
    pub dport: u16,
}

/// The `IPS_*` status bits that matter for DNS (include/uapi/linux/netfilter/nf_conntrack_common.h).
pub mod status {
    /// A packet was seen in the reply direction.
    pub const SEEN_REPLY: u32 = 1 << 1;
    /// The entry is assured: never early-dropped when the table is full.
    pub const ASSURED: u32 = 1 << 2;
    /// The entry is in the hash table.
    pub const CONFIRMED: u32 = 1 << 3;
    /// Source NAT applies.
    pub const SRC_NAT: u32 = 1 << 4;
    /// Destination NAT applies (a Service IP was rewritten to an endpoint).
    pub const DST_NAT: u32 = 1 << 5;
    /// The entry is being removed.
    pub const DYING: u32 = 1 << 9;
}

/// One conntrack entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Entry {
    /// The direction of the first packet (for DNS: client -> Service IP).
    pub orig: Tuple,
    /// The expected answer (after DNAT: endpoint -> client).
    pub reply: Tuple,
    /// `IPS_*` bits, see [`status`].
    pub status: u32,
    /// Seconds left before the entry expires; absent in DESTROY events.
    pub timeout: Option<u32>,
    /// Connection mark.
    pub mark: u32,
    /// The kernel's id of the entry (stable while it lives).
    pub id: Option<u32>,
    /// Conntrack zone (0 when absent).
    pub zone: u16,
}

impl Entry {
    /// Whether the entry is assured (not early-dropped by a full table).
    pub fn assured(&self) -> bool {
        self.status & status::ASSURED != 0
    }

    /// Whether a reply was ever seen: an unreplied UDP/53 entry is a query nobody answered.
    pub fn seen_reply(&self) -> bool {
        self.status & status::SEEN_REPLY != 0
    }

    /// Whether the destination was NATed (orig dst differs from reply src).
    pub fn dnat(&self) -> bool {
        self.status & status::DST_NAT != 0 || self.orig.dst != self.reply.src
    }
}

/// Per-CPU conntrack statistics (`conntrack -S`), one per possible CPU.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct CpuStats {
    /// The CPU number (for a sum: the number of CPUs summed).
    pub cpu: u16,
    /// Lookups that found an entry.
    pub found: u32,
    /// Packets conntrack could not track (malformed, or no helper accepted them).
    pub invalid: u32,
    /// Entries inserted.
    pub insert: u32,
    /// Inserts that failed (a clash that could not be resolved).
    pub insert_failed: u32,
    /// New flows dropped because the table was full (or an unresolved clash dropped the packet).
    pub drop: u32,
    /// Entries evicted to make room in a full table.
    pub early_drop: u32,
    /// ICMP errors that could not be matched, and other errors.
    pub error: u32,
    /// Lookups restarted because the hash table changed under them.
    pub search_restart: u32,
    /// Insert clashes resolved (parallel A/AAAA queries from one socket).
    pub clash_resolve: u32,
    /// Inserts refused because a hash chain was too long.
    pub chaintoolong: u32,
}

impl CpuStats {
    /// The sum over all CPUs; `cpu` holds the number of CPUs summed.
    pub fn sum(all: &[CpuStats]) -> CpuStats {
        let mut total = CpuStats {
            cpu: all.len() as u16,
            ..CpuStats::default()
        };
        for s in all {
            total.found = total.found.wrapping_add(s.found);
            total.invalid = total.invalid.wrapping_add(s.invalid);
            total.insert = total.insert.wrapping_add(s.insert);
            total.insert_failed = total.insert_failed.wrapping_add(s.insert_failed);
            total.drop = total.drop.wrapping_add(s.drop);
            total.early_drop = total.early_drop.wrapping_add(s.early_drop);
            total.error = total.error.wrapping_add(s.error);
            total.search_restart = total.search_restart.wrapping_add(s.search_restart);
            total.clash_resolve = total.clash_resolve.wrapping_add(s.clash_resolve);
            total.chaintoolong = total.chaintoolong.wrapping_add(s.chaintoolong);
        }
        total
    }

    /// What changed since `earlier` (counters are 32-bit in the kernel and may wrap).
    pub fn delta(&self, earlier: &CpuStats) -> CpuStats {
        CpuStats {
            cpu: self.cpu,
            found: self.found.wrapping_sub(earlier.found),
            invalid: self.invalid.wrapping_sub(earlier.invalid),
            insert: self.insert.wrapping_sub(earlier.insert),
            insert_failed: self.insert_failed.wrapping_sub(earlier.insert_failed),
            drop: self.drop.wrapping_sub(earlier.drop),
            early_drop: self.early_drop.wrapping_sub(earlier.early_drop),
            error: self.error.wrapping_sub(earlier.error),
            search_restart: self.search_restart.wrapping_sub(earlier.search_restart),
            clash_resolve: self.clash_resolve.wrapping_sub(earlier.clash_resolve),
            chaintoolong: self.chaintoolong.wrapping_sub(earlier.chaintoolong),
        }
    }

    /// `(name, value)` pairs in the order `conntrack -S` prints them.
    pub fn fields(&self) -> [(&'static str, u32); 10] {
        [
            ("found", self.found),
            ("invalid", self.invalid),
            ("insert", self.insert),
            ("insert_failed", self.insert_failed),
            ("drop", self.drop),
            ("early_drop", self.early_drop),
            ("error", self.error),
            ("search_restart", self.search_restart),
            ("clash_resolve", self.clash_resolve),
            ("chaintoolong", self.chaintoolong),
        ]
    }
}

/// The size of the namespace's table.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Table {
    /// Entries in this namespace.
    pub count: u32,
    /// `nf_conntrack_max`: global, and the limit each namespace's count is checked against.
    pub max: u32,
    /// Hash buckets (`nf_conntrack_buckets`).
    pub buckets: u32,
}

/// A request without attributes.
fn query(message_type: u8, flags: u16) -> Request {
    Request {
        message_type,
        flags,
        attributes: Vec::new(),
    }
}

/// The per-CPU statistics of the calling thread's namespace.
pub fn stats() -> Result<Vec<CpuStats>, Error> {
    const WHAT: &str = "the per-CPU statistics request";
    let mut nl = Ctnetlink::open()?;
    let replies = nl.request(WHAT, query(IPCTNL_MSG_CT_GET_STATS_CPU, NLM_F_DUMP))?;
    let mut out = Vec::new();
    for reply in replies {
        if let NetfilterMessageInner::Conntrack(ConntrackMessage::Other { attributes, .. }) =
            &reply.inner
        {
            out.push(parse_cpu_stats(reply.header.res_id, attributes));
        }
    }
    Ok(out)
}

/// The number of entries in the calling thread's namespace.
pub fn count() -> Result<u32, Error> {
    Ok(global_stats()?.0)
}

/// Count, max and buckets of the calling thread's namespace.
pub fn table() -> Result<Table, Error> {
    let (count, max) = global_stats()?;
    Ok(Table {
        count,
        max,
        buckets: read_proc_u32(BUCKETS_PATH)?,
    })
}

/// `(count, max)` from `IPCTNL_MSG_CT_GET_STATS`.
fn global_stats() -> Result<(u32, u32), Error> {
    const WHAT: &str = "the global statistics request";
    let mut nl = Ctnetlink::open()?;
    let replies = nl.request(WHAT, query(IPCTNL_MSG_CT_GET_STATS, 0))?;
    let attributes = replies
        .iter()
        .find_map(|r| match &r.inner {
            NetfilterMessageInner::Conntrack(ConntrackMessage::Other { attributes, .. }) => {
                Some(attributes)
            }
            _ => None,
        })
        .ok_or(Error::Missing {
            what: WHAT,
            field: "a statistics message",
        })?;
    let get = |kind, field| {
        attributes
            .iter()
            .find(|a| a.kind() == kind)
            .and_then(|a| be_u32(&nla_value(a)))
            .ok_or(Error::Missing { what: WHAT, field })
    };
    Ok((
        get(CTA_STATS_GLOBAL_ENTRIES, "CTA_STATS_GLOBAL_ENTRIES")?,
        get(CTA_STATS_GLOBAL_MAX_ENTRIES, "CTA_STATS_GLOBAL_MAX_ENTRIES")?,
    ))
}

/// Reads a number from a file under /proc/sys (in the calling thread's namespace).
pub(crate) fn read_proc_u32(path: &str) -> Result<u32, Error> {
    let text = std::fs::read_to_string(path).map_err(|source| Error::ReadProc {
        path: path.into(),
        source,
    })?;
    text.trim().parse().map_err(|_| Error::ParseProc {
        path: path.into(),
        value: text.trim().to_owned(),
    })
}

/// Every entry (IPv4 and IPv6) of the calling thread's namespace.
pub fn dump() -> Result<Vec<Entry>, Error> {
    const WHAT: &str = "the table dump";
    let mut nl = Ctnetlink::open()?;
    let replies = nl.request(WHAT, query(IPCTNL_MSG_CT_GET, NLM_F_DUMP))?;
    Ok(replies.iter().filter_map(entry_of).collect())
}

/// The UDP entries whose original destination port is `port` (53 for DNS).
pub fn dump_udp(port: u16) -> Result<Vec<Entry>, Error> {
    Ok(dump()?
        .into_iter()
        .filter(|e| e.orig.proto == libc::IPPROTO_UDP as u8 && e.orig.dport == port)
        .collect())
}

/// The value bytes of a raw attribute.
pub(crate) fn nla_value(nla: &DefaultNla) -> Vec<u8> {
    let mut value = vec![0; nla.value_len()];
    nla.emit_value(&mut value);
    value
}

pub(crate) fn be_u32(value: &[u8]) -> Option<u32> {
    Some(u32::from_be_bytes(value.get(..4)?.try_into().ok()?))
}

/// Per-CPU statistics from the raw attributes of one `IPCTNL_MSG_CT_GET_STATS_CPU` answer.
fn parse_cpu_stats(cpu: u16, attributes: &[DefaultNla]) -> CpuStats {
    let mut s = CpuStats {
        cpu,
        ..CpuStats::default()
    };
    for a in attributes {
        let Some(v) = be_u32(&nla_value(a)) else {
            continue;
        };
        match a.kind() {
            CTA_STATS_FOUND => s.found = v,
            CTA_STATS_INVALID => s.invalid = v,
            CTA_STATS_INSERT => s.insert = v,
            CTA_STATS_INSERT_FAILED => s.insert_failed = v,
            CTA_STATS_DROP => s.drop = v,
            CTA_STATS_EARLY_DROP => s.early_drop = v,
            CTA_STATS_ERROR => s.error = v,
            CTA_STATS_SEARCH_RESTART => s.search_restart = v,
            CTA_STATS_CLASH_RESOLVE => s.clash_resolve = v,
            CTA_STATS_CHAIN_TOOLONG => s.chaintoolong = v,
            _ => {}
        }
    }
    s
}

/// A tuple as ctnetlink attributes (for requests naming an entry).
pub(crate) fn nl_tuple_of(t: &Tuple) -> Vec<NlTuple> {
    vec![
        NlTuple::Ip(vec![
            IPTuple::SourceAddress(t.src),
            IPTuple::DestinationAddress(t.dst),
        ]),
        NlTuple::Proto(vec![
            ProtoTuple::Protocol(Protocol::from(t.proto)),
            ProtoTuple::SourcePort(t.sport),
            ProtoTuple::DestinationPort(t.dport),
        ]),
    ]
}

fn tuple_of(parts: &[NlTuple]) -> Option<Tuple> {
    let (mut src, mut dst, mut proto, mut sport, mut dport) = (None, None, None, 0, 0);
    for part in parts {
        match part {
            NlTuple::Ip(ips) => {
                for ip in ips {
                    match ip {
                        IPTuple::SourceAddress(a) => src = Some(*a),
                        IPTuple::DestinationAddress(a) => dst = Some(*a),
                        _ => {}
                    }
                }
            }
            NlTuple::Proto(protos) => {
                for p in protos {
                    match p {
                        ProtoTuple::Protocol(p) => proto = Some(u8::from(*p)),
                        ProtoTuple::SourcePort(p) => sport = *p,
                        ProtoTuple::DestinationPort(p) => dport = *p,
                        _ => {}
                    }
                }
            }
            _ => {}
        }
    }
    Some(Tuple {
        src: src?,
        dst: dst?,
        proto: proto?,
        sport,
        dport,
    })
}

/// The entry in a ctnetlink NEW/GET/DELETE message, if it has both tuples.
pub fn entry_of(msg: &NetfilterMessage) -> Option<Entry> {
    let attributes = match &msg.inner {
        NetfilterMessageInner::Conntrack(
            ConntrackMessage::New(a) | ConntrackMessage::Get(a) | ConntrackMessage::Delete(a),
        ) => a,
        _ => return None,
    };
    let (mut orig, mut reply, mut st, mut timeout, mut mark, mut id, mut zone) =
        (None, None, 0, None, 0, None, 0);
    for a in attributes {
        match a {
            ConntrackAttribute::CtaTupleOrig(t) => orig = tuple_of(t),
            ConntrackAttribute::CtaTupleReply(t) => reply = tuple_of(t),
            ConntrackAttribute::CtaStatus(s) => st = s.bits(),
            ConntrackAttribute::CtaTimeout(t) => timeout = Some(*t),
            ConntrackAttribute::CtaMark(m) => mark = *m,
            ConntrackAttribute::Other(nla) if nla.kind() == CTA_ID => id = be_u32(&nla_value(nla)),
            ConntrackAttribute::Other(nla) if nla.kind() == CTA_ZONE => {
                zone = nla_value(nla)
                    .get(..2)
                    .map_or(0, |b| u16::from_be_bytes([b[0], b[1]]));
            }
            _ => {}
        }
    }
    Some(Entry {
        orig: orig?,
        reply: reply?,
        status: st,
        timeout,
        mark,
        id,
        zone,
    })
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use netlink_packet_core::NetlinkPayload;

    use super::{
        netlink::{IPCTNL_MSG_CT_NEW, split},
        *,
    };

    /// NFNL_SUBSYS_CTNETLINK in the high byte of every ctnetlink message type.
    const CT_TYPE_BASE: u16 = 1 << 8;

    /// A ctnetlink message as the kernel sends it, built by hand.
    fn raw_message(message_type: u8, seq: u32, res_id: u16, attrs: &[(u16, Vec<u8>)]) -> Vec<u8> {
        let mut payload = vec![2u8, 0];
        payload.extend(res_id.to_be_bytes());
        for (kind, value) in attrs {
            let len = 4 + value.len();
            payload.extend((len as u16).to_ne_bytes());
            payload.extend(kind.to_ne_bytes());
            payload.extend(value);
            payload.resize((payload.len() + 3) & !3, 0);
        }
        let mut out = Vec::new();
        out.extend(((16 + payload.len()) as u32).to_ne_bytes());
        out.extend((CT_TYPE_BASE | message_type as u16).to_ne_bytes());
        out.extend(0u16.to_ne_bytes());
        out.extend(seq.to_ne_bytes());
        out.extend(0u32.to_ne_bytes());
        out.extend(payload);
        out
    }

    fn nested(attrs: &[(u16, Vec<u8>)]) -> Vec<u8> {
        let mut out = Vec::new();
        for (kind, value) in attrs {
            out.extend(((4 + value.len()) as u16).to_ne_bytes());
            out.extend((kind | 0x8000).to_ne_bytes());
            out.extend(value);
            out.resize((out.len() + 3) & !3, 0);
        }
        out
    }

    fn tuple(src: [u8; 4], dst: [u8; 4], sport: u16, dport: u16) -> Vec<u8> {
        nested(&[
            (1, nested(&[(1, src.to_vec()), (2, dst.to_vec())])),
            (
                2,
                nested(&[
                    (1, vec![17]),
                    (2, sport.to_be_bytes().to_vec()),
                    (3, dport.to_be_bytes().to_vec()),
                ]),
            ),
        ])
    }

    #[test]
    fn per_cpu_stats_parse_from_raw_attributes() {
        let attrs: Vec<(u16, Vec<u8>)> = [
            (CTA_STATS_FOUND, 7u32),
            (CTA_STATS_INVALID, 1),
            (CTA_STATS_INSERT, 100),
            (CTA_STATS_INSERT_FAILED, 2),
            (CTA_STATS_DROP, 3),
            (CTA_STATS_EARLY_DROP, 4),
            (CTA_STATS_ERROR, 5),
            (CTA_STATS_SEARCH_RESTART, 6),
            (CTA_STATS_CLASH_RESOLVE, 8),
            (CTA_STATS_CHAIN_TOOLONG, 9),
        ]
        .into_iter()
        .map(|(k, v)| (k, v.to_be_bytes().to_vec()))
        .collect();
        let raw = raw_message(IPCTNL_MSG_CT_GET_STATS_CPU, 1, 1, &attrs);
        let msg = split(&raw).next().unwrap().unwrap();
        let NetlinkPayload::InnerMessage(inner) = msg.payload else {
            panic!("not an inner message")
        };
        let NetfilterMessageInner::Conntrack(ConntrackMessage::Other { attributes, .. }) =
            &inner.inner
        else {
            panic!("stats message not left raw: {inner:?}")
        };
        let s = parse_cpu_stats(inner.header.res_id, attributes);
        assert_eq!(s.cpu, 1);
        assert_eq!(
            s.fields().map(|(_, v)| v),
            [7, 1, 100, 2, 3, 4, 5, 6, 8, 9],
            "fields in conntrack -S order"
        );
        let total = CpuStats::sum(&[s, s]);
        assert_eq!((total.cpu, total.drop, total.clash_resolve), (2, 6, 16));
        assert_eq!(total.delta(&s).insert, 100);
    }

    #[test]
    fn dnat_entry_parses_with_id_status_and_timeout() {
        let attrs = vec![
            (
                1 | 0x8000,
                tuple([10, 244, 0, 2], [10, 96, 0, 10], 40000, 53),
            ),
            (
                2 | 0x8000,
                tuple([10, 244, 0, 11], [10, 244, 0, 2], 53, 40000),
            ),
            (
                3,
                (status::ASSURED | status::SEEN_REPLY | status::DST_NAT | status::CONFIRMED)
                    .to_be_bytes()
                    .to_vec(),
            ),
            (7, 29u32.to_be_bytes().to_vec()),
            (8, 0u32.to_be_bytes().to_vec()),
            (CTA_ID, 0xdead_beefu32.to_be_bytes().to_vec()),
        ];
        // Two messages in one datagram, as dumps arrive.
        let mut raw = raw_message(IPCTNL_MSG_CT_NEW, 9, 0, &attrs);
        raw.extend(raw_message(IPCTNL_MSG_CT_NEW, 9, 0, &attrs));
        let entries: Vec<Entry> = split(&raw)
            .map(|m| match m.unwrap().payload {
                NetlinkPayload::InnerMessage(inner) => entry_of(&inner).unwrap(),
                other => panic!("unexpected {other:?}"),
            })
            .collect();
        assert_eq!(entries.len(), 2);
        let e = &entries[0];
        assert_eq!(e.orig.dst, IpAddr::V4(Ipv4Addr::new(10, 96, 0, 10)));
        assert_eq!(e.reply.src, IpAddr::V4(Ipv4Addr::new(10, 244, 0, 11)));
        assert_eq!((e.orig.sport, e.orig.dport, e.orig.proto), (40000, 53, 17));
        assert!(e.assured() && e.seen_reply() && e.dnat());
        assert_eq!((e.timeout, e.id), (Some(29), Some(0xdead_beef)));
    }

    #[test]
    fn truncated_datagram_is_an_error_not_a_panic() {
        let raw = raw_message(
            IPCTNL_MSG_CT_NEW,
            1,
            0,
            &[(7, 29u32.to_be_bytes().to_vec())],
        );
        let mut bad = raw.clone();
        bad[0] = 200; // claims more bytes than there are
        assert!(split(&bad).next().unwrap().is_err());
        assert!(split(&raw[..10]).next().is_none());
    }
}
