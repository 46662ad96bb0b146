//! Merges the kernel's records of one query into one `QueryRecord`.
//!
//! A query is keyed by (client address, client port, DNS id, transport): DNAT rewrites the destination of
//! the query and the source of the answer, never the client side, so the key holds across NAT.
//! Evidence of a failure (drop, ICMP error, netfilter verdict) is held for `HOLD` so that records
//! arriving in any order (a REJECT sends its ICMP error before the packet is freed) end in one
//! verdict; an answer ends a query at once.

use std::{
    collections::HashMap,
    net::{IpAddr, SocketAddr},
};

use tracer_common::flow::{Addr, Packet, Slot, flag, is_truncated, proto};

use super::{
    dns,
    event::{IcmpSeen, KernelEvent, Point, SlotMatch, question_of},
    names::Names,
    recent::Recent,
    record::{
        BackendEvidence, CONFIRM_FAILED, Drop, Icmp, Leg, NatBy, NetfilterBackend, QueryRecord,
        Seen, Stage, StageTimes, Verdict,
    },
    transport::{Retries, Transport},
};
use crate::kernel::symbols::{self, Symbolizer};
use classify::icmp_text;
pub use classify::{Classified, classify};

/// How long failure evidence is held before the verdict is final (nanoseconds).
pub const HOLD_NS: u64 = 200_000_000;
/// How many reported queries are remembered, so a later eviction or scan does not report one twice.
const REMEMBERED: usize = 8192;
/// Held queries the table keeps room for after a burst of failures is judged (a burst grows it;
/// room for more than four times what it holds, and this, is given back).
const HELD_ROOM: usize = 256;

type Key = (Addr, u16, u16, u8);

/// What the correlator knows about the node.
#[derive(Debug, Clone, Default)]
pub struct Context {
    /// The DNS Service IP.
    pub service: Option<IpAddr>,
    /// The Service's cluster IPs in other families (a dual-stack Service's IPv6 one).
    pub also_services: Vec<IpAddr>,
    /// The DNS port (host order).
    pub dns_port: u16,
    /// The Service's current endpoints, when known (to call an entry stale).
    pub endpoints: Vec<IpAddr>,
    /// The node's rules hold kube-proxy's "has no endpoints" REJECT for the Service (in ipvs
    /// mode: its virtual service has no real servers).
    pub service_rejects: bool,
    /// kube-proxy's ipvs mode: IPVS, not netfilter's nat table, rewrites the Service's queries.
    pub ipvs: bool,
    /// `enum skb_drop_reason` names.
    pub drop_reasons: HashMap<u32, String>,
    /// Unix time minus monotonic time, microseconds.
    pub clock_offset_us: i64,
    /// A query pending longer than this is unanswered (nanoseconds).
    pub timeout_ns: u64,
}

/// Counts the correlator keeps besides records.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Tally {
    /// Pending queries pushed out of the slot table before their timeout: not judged.
    pub evicted_in_flight: u64,
    /// Records about a query already reported (merged, not printed twice).
    pub merged: u64,
    /// Failure evidence that arrived after its query was judged unanswered (a timeout shorter than
    /// the kernel's own, such as ARP's 3 s): counted, not reported twice.
    pub late_evidence: u64,
    /// Records whose DNS question bytes did not decode (a name cut by the packet's end, or
    /// garbage): their name is left empty, never guessed.
    #[serde(default)]
    pub unreadable_questions: u64,
}

struct Held {
    first_ns: u64,
    /// The query's send time from its slot (0 when no slot matched).
    t_query: u64,
    record: QueryRecord,
}

/// The correlator.
pub struct Correlator {
    ctx: Context,
    names: Names,
    symbols: Symbolizer,
    held: HashMap<Key, Held>,
    reported: Recent<(Key, u64), ()>,
    /// Set by the caller: how much conntrack's `drop` statistic rose since the trace began. While
    /// it exceeds the drops already placed at conntrack, a NETFILTER_DROP at `nf_hook_slow` is the
    /// full table refusing a new flow. (A count, not a "rising now" flag: the statistic rises
    /// before the packet is freed, so a drop read in the next poll is still covered.)
    pub conntrack_drops: u64,
    /// Drops placed at conntrack so far.
    conntrack_placed: u64,
    /// Counts besides records.
    pub tally: Tally,
    /// The server sockets whose receive queue overflowed, by endpoint address.
    overflows: queue::Overflows,
    /// Truncated UDP answers, to link the TCP queries that retry them.
    retries: Retries,
}

/// An address as the kernel carries it (four wire words, IPv4-mapped for IPv4).
pub fn addr(raw: Addr) -> IpAddr {
    let mut b = [0u8; 16];
    for (chunk, word) in b.chunks_exact_mut(4).zip(raw) {
        chunk.copy_from_slice(&word.to_ne_bytes());
    }
    std::net::Ipv6Addr::from(b).to_canonical()
}

/// The kernel side's form of an address (the inverse of [`addr`]).
pub fn raw_addr(ip: IpAddr) -> Addr {
    let b = match ip {
        IpAddr::V4(v4) => v4.to_ipv6_mapped().octets(),
        IpAddr::V6(v6) => v6.octets(),
    };
    let word = |i: usize| u32::from_ne_bytes([b[i], b[i + 1], b[i + 2], b[i + 3]]);
    [word(0), word(4), word(8), word(12)]
}

fn port(raw: u16) -> u16 {
    u16::from_be_bytes(raw.to_ne_bytes())
}

impl Correlator {
    /// A correlator for `ctx`.
    pub fn new(ctx: Context, names: Names) -> Self {
        Self {
            ctx,
            names,
            symbols: Symbolizer::default(),
            held: HashMap::new(),
            reported: Recent::new(REMEMBERED),
            conntrack_drops: 0,
            conntrack_placed: 0,
            tally: Tally::default(),
            overflows: queue::Overflows::default(),
            retries: Retries::default(),
        }
    }

    /// The names it gives namespaces and interfaces (to teach it a pod link that appeared).
    pub fn names_mut(&mut self) -> &mut Names {
        &mut self.names
    }

    /// The Service's endpoints now (the rules changed during the trace).
    pub fn set_endpoints(&mut self, endpoints: Vec<IpAddr>) {
        self.ctx.endpoints = endpoints;
    }

    fn unix_us(&self, mono_ns: u64) -> u64 {
        ((mono_ns / 1000) as i64 + self.ctx.clock_offset_us).max(0) as u64
    }

    fn remember(&mut self, key: Key, t_query: u64) {
        self.reported.insert((key, t_query), ());
    }

    fn is_service(&self, ip: IpAddr) -> bool {
        Some(ip) == self.ctx.service || self.ctx.also_services.contains(&ip)
    }

    fn leg(&self, p: &Packet) -> Leg {
        if port(p.sport) == self.ctx.dns_port {
            Leg::Answer
        } else if self.is_service(addr(p.daddr)) {
            Leg::QueryBeforeDnat
        } else {
            Leg::QueryToPod
        }
    }

    /// A record from what the kernel knew: the query's slot when one matched, else the packet.
    fn base(&mut self, ts: u64, known: Known<'_>, links_netns: u32) -> QueryRecord {
        let (q, question, s) = match known {
            Known::Slot(s) => (s.query(), question_of(s), Some(s)),
            Known::Packet(p, question) => (query_of(p, self.ctx.dns_port), question, None),
        };
        let raw = question;
        let question = dns::question(raw);
        if question.name.is_none() && raw.iter().any(|b| *b != 0) {
            self.tally.unreadable_questions += 1;
        }
        let seen = match s {
            None => Seen::Nowhere,
            Some(s) if s.t_reply() != 0 => Seen::AnsweredByEndpoint,
            Some(s) if s.t_endpoint() != 0 => Seen::AtEndpoint,
            Some(_) => Seen::Sent,
        };
        let first = s.map(|s| s.t_query).filter(|t| *t != 0).unwrap_or(ts);
        QueryRecord {
            time_us: self.unix_us(first),
            client: SocketAddr::new(addr(q.saddr), port(q.sport)),
            server: SocketAddr::new(addr(q.daddr), port(q.dport)),
            id: u16::from_be_bytes(q.dns_id.to_ne_bytes()),
            transport: Transport::of(q.proto),
            connection: q.syn != 0,
            truncated: false,
            retry_of: None,
            name: question.name,
            qtype: question.qtype,
            verdict: Verdict::Unanswered,
            endpoint: s
                .filter(|s| s.flags & flag::AT_ENDPOINT != 0)
                .map(|s| addr(s.endpoint_ip)),
            nat: s
                .filter(|s| s.flags & flag::NATTED != 0)
                .map(|s| SocketAddr::new(addr(s.nat_ip), port(s.nat_port))),
            nat_by: self.ctx.ipvs.then_some(NatBy::Ipvs),
            confirmed: s.is_some_and(|s| s.flags & flag::CONFIRMED != 0),
            client_link: s
                .filter(|s| s.client_ifindex != 0)
                .map(|s| self.names.link(links_netns, s.client_ifindex)),
            endpoint_link: s
                .filter(|s| s.flags & flag::AT_ENDPOINT != 0 && s.endpoint_ifindex != 0)
                .map(|s| self.names.link(links_netns, s.endpoint_ifindex)),
            latency_us: None,
            stages: StageTimes::default(),
            last_seen: seen,
            retries: s.map_or(0, |s| s.retries.into()),
            drop: None,
            icmp: None,
            conntrack: None,
            rules: None,
            stale: None,
            queued: None,
            cache: None,
        }
    }

    /// Takes one kernel record; returns the records it completes. `links_netns` is the inode of
    /// the namespace the TC programs (and so the slots' interface indexes) live in.
    pub fn push(&mut self, e: &KernelEvent, links_netns: u32) -> Vec<QueryRecord> {
        let mut out = Vec::new();
        match e {
            KernelEvent::Answered { at, slot: s } => {
                let key = key_of(&s.query());
                let mut r = self.base(at.ts, Known::Slot(s), links_netns);
                r.verdict = Verdict::Answered;
                r.last_seen = Seen::Delivered;
                r.truncated = s.proto == proto::UDP && is_truncated(&at.packet);
                r.latency_us = Some(at.ts.saturating_sub(s.t_query) / 1000);
                let us = |a: u64, b: u64| (a != 0 && b != 0 && b >= a).then(|| (b - a) / 1000);
                r.stages = StageTimes {
                    to_endpoint_us: us(s.t_query, s.t_endpoint()),
                    in_endpoint_us: us(s.t_endpoint(), s.t_reply()),
                    back_us: us(s.t_reply(), at.ts),
                };
                if let Some(h) = self.held.remove(&key) {
                    r.drop = h.record.drop;
                    r.icmp = h.record.icmp;
                    self.tally.merged += 1;
                }
                // An answer from another address than the one the client asked was not
                // un-DNATed (its conntrack entry was gone): a connected client socket refuses it.
                // Held like failure evidence, so that the client's drop ends it.
                if at.packet.saddr != s.daddr && r.drop.is_none() && r.icmp.is_none() {
                    let held = Held {
                        first_ns: at.ts,
                        t_query: s.t_query,
                        record: r,
                    };
                    self.held.insert(key, held);
                    return out;
                }
                self.remember(key, s.t_query);
                out.push(r);
            }
            KernelEvent::Evicted { at, slot: s } => {
                let key = key_of(&s.query());
                // A slot flagged with a drop or ICMP error was reported through that evidence.
                if s.flags & flag::EVIDENCE != 0
                    || self.reported.contains(&(key, s.t_query))
                    || self.held.contains_key(&key)
                {
                    self.tally.merged += 1;
                } else if at.ts.saturating_sub(s.t_query) >= self.ctx.timeout_ns {
                    let mut r = self.base(at.ts, Known::Slot(s), links_netns);
                    r.queued = self.overflows.queued(&r, s, &self.ctx);
                    self.remember(key, s.t_query);
                    out.push(r);
                } else {
                    self.tally.evicted_in_flight += 1;
                }
            }
            KernelEvent::Drop { .. }
            | KernelEvent::SocketDrop { .. }
            | KernelEvent::Icmp { .. }
            | KernelEvent::Verdict { .. }
            | KernelEvent::Confirm { .. } => self.evidence(e, links_netns),
        }
        self.link(out)
    }

    /// Links each TCP record to the truncated UDP answer it retried (records in time order).
    fn link(&mut self, mut out: Vec<QueryRecord>) -> Vec<QueryRecord> {
        for r in &mut out {
            self.retries.link(r);
        }
        out
    }

    fn evidence(&mut self, e: &KernelEvent, links_netns: u32) {
        let Some((point, slot)) = e.evidence() else {
            return;
        };
        let p = &point.packet;
        let key = key_of(&query_of(p, self.ctx.dns_port));
        if let SlotMatch::Pending(s) = slot
            && self.reported.contains(&(key, s.t_query))
        {
            self.tally.late_evidence += 1;
            return;
        }
        // A SYN sent again on a connection already reported: one record per connection.
        if p.syn != 0 && !self.held.contains_key(&key) && self.reported.contains(&(key, 0)) {
            self.tally.merged += 1;
            return;
        }
        let leg = self.leg(p);
        // An ICMP error taken off a pod link (TC) is in the pod links' namespace.
        let netns = match e {
            KernelEvent::Icmp { seen, .. } if *seen != IcmpSeen::Sent => links_netns,
            _ => point.netns,
        };
        let at = format!(
            "{}/{}",
            self.names.netns(netns),
            self.names.link(netns, point.ifindex)
        );
        if !self.held.contains_key(&key) {
            let held = self.hold(point, slot, leg, links_netns);
            self.held.insert(key, held);
        }
        let (reason, location) = self.reason_and_location(e);
        let mut stale = self.stale_note(p, leg);
        if self.ctx.service_rejects
            && leg == Leg::QueryBeforeDnat
            && (reason == "NETFILTER_DROP"
                || matches!(e, KernelEvent::Verdict { .. })
                // Before 5.17 (no reasons) a netfilter drop is placed by its location.
                || (reason.is_empty() && symbols::function(&location) == "nf_hook_slow"))
        {
            stale.push_str(if self.ctx.ipvs {
                "; IPVS's virtual service for the Service has no real servers: ip_vs_in refuses the \
                 query at LOCAL_IN (its ICMP error is rate-limited per host, so most clients just time out)"
            } else {
                "; the rules hold kube-proxy's REJECT for a Service without endpoints (its ICMP error is \
                 rate-limited per host, so most clients just time out)"
            });
        }
        let conntrack_dropping = self.conntrack_drops > self.conntrack_placed;
        let at_us = self.unix_us(point.ts);
        let Some(held) = self.held.get_mut(&key) else {
            return;
        };
        let r = &mut held.record;
        // A first record from the client's side (an ICMP error on its link) names no endpoint.
        if r.endpoint.is_none() {
            r.endpoint = endpoint_of(p, leg);
        }
        let place = Place { leg, at, stale };
        match e {
            KernelEvent::Icmp {
                seen,
                icmp_type,
                code,
                ..
            } => {
                r.icmp = Some(Icmp {
                    what: icmp_text(addr(p.saddr).is_ipv6(), *icmp_type, *code),
                    by: match seen {
                        IcmpSeen::Sent => place.at,
                        IcmpSeen::LeavingPod => format!("{} (leaving the pod)", place.at),
                        IcmpSeen::ReachingClient => {
                            format!("the node (seen reaching the client at {})", place.at)
                        }
                    },
                    leg,
                });
            }
            KernelEvent::SocketDrop { queue, .. } => {
                if let Some(q) = queue {
                    self.overflows.saw(point.ts, p, *q);
                }
                queue::add_socket_drop(r, reason, location, *queue, place);
            }
            KernelEvent::Drop { .. } => {
                let placed = add_drop(r, reason, location, conntrack_dropping, place);
                self.conntrack_placed += u64::from(placed == Some(Stage::Conntrack));
            }
            KernelEvent::Verdict {
                backend,
                hook,
                table,
                chain,
                ..
            } => {
                // xtables names no chain: the hook its table ran at names the built-in one.
                let chain = match backend {
                    NetfilterBackend::Xtables => hook.map(|h| h.chain().to_owned()),
                    NetfilterBackend::NfTables => chain.clone(),
                };
                add_verdict(r, *backend, table, chain, place);
            }
            KernelEvent::Confirm { .. } if r.drop.is_none() => {
                r.drop = Some(Drop {
                    stage: Stage::Conntrack,
                    reason: CONFIRM_FAILED.to_owned(),
                    location: "__nf_conntrack_confirm".to_owned(),
                    backend: None,
                    backend_from: None,
                    table: None,
                    chain: None,
                    leg,
                    at: place.at,
                    why: "conntrack could not insert the new entry (a clash it could not resolve)"
                        .to_owned(),
                    time_us: None,
                    socket: None,
                });
            }
            _ => {}
        }
        if let Some(d) = r.drop.as_mut() {
            d.time_us.get_or_insert(at_us);
        }
    }

    /// A held record for the first evidence of a query: what the kernel knew of it, with the
    /// endpoint the evidence's packet names when the slot had none.
    fn hold(&mut self, at: &Point, slot: &SlotMatch, leg: Leg, links_netns: u32) -> Held {
        let p = &at.packet;
        let (known, t_query) = match slot {
            SlotMatch::Pending(s) => (Known::Slot(s), s.t_query),
            SlotMatch::Unmatched { question } => (Known::Packet(p, question), 0),
        };
        let mut record = self.base(at.ts, known, links_netns);
        if record.endpoint.is_none() {
            record.endpoint = endpoint_of(p, leg);
        }
        Held {
            first_ns: at.ts,
            t_query,
            record,
        }
    }

    /// A drop record's reason (empty before 5.17) and code location; a socket refusal's hook.
    fn reason_and_location(&mut self, e: &KernelEvent) -> (String, String) {
        match e {
            KernelEvent::Drop {
                reason, location, ..
            } => (
                if self.ctx.drop_reasons.is_empty() {
                    // Before 5.17: no reasons; the location places the drop.
                    String::new()
                } else {
                    self.ctx
                        .drop_reasons
                        .get(reason)
                        .cloned()
                        .unwrap_or_else(|| format!("reason {reason}"))
                },
                match location {
                    Some(a) => self
                        .symbols
                        .resolve(*a)
                        .unwrap_or_else(|_| format!("{a:#x}")),
                    // The tracepoint gave no location: the null address says so.
                    None => format!("{:#x}", 0),
                },
            ),
            KernelEvent::SocketDrop { hook, .. } => (queue::reason(*hook), hook.name().to_owned()),
            _ => (String::new(), String::new()),
        }
    }

    fn stale_note(&self, p: &Packet, leg: Leg) -> String {
        let pod = match leg {
            Leg::QueryToPod => addr(p.daddr),
            Leg::Answer => addr(p.saddr),
            Leg::QueryBeforeDnat => return String::new(),
        };
        if !self.ctx.endpoints.is_empty()
            && !self.ctx.endpoints.contains(&pod)
            && !self.is_service(pod)
        {
            format!(
                "; {pod} is not an endpoint of the Service: a stale conntrack entry or stale rule sent it there"
            )
        } else {
            String::new()
        }
    }

    /// Finalises held queries older than `HOLD_NS` (all of them with `force`).
    pub fn flush(&mut self, now_ns: u64, force: bool) -> Vec<QueryRecord> {
        let due: Vec<Key> = self
            .held
            .iter()
            .filter(|(_, h)| force || now_ns.saturating_sub(h.first_ns) >= HOLD_NS)
            .map(|(k, _)| *k)
            .collect();
        let mut out = Vec::new();
        for key in due {
            let Some(h) = self.held.remove(&key) else {
                continue;
            };
            let mut r = h.record;
            r.verdict = if r.icmp.is_some() {
                Verdict::Rejected
            } else if r.drop.is_some() {
                Verdict::Dropped
            } else if r.verdict == Verdict::Answered {
                // A held answer the client took after all (an unconnected socket).
                Verdict::Answered
            } else {
                Verdict::Unanswered
            };
            self.remember(key, h.t_query);
            out.push(r);
        }
        let room = self.held.len().max(HELD_ROOM);
        if self.held.capacity() > 4 * room {
            self.held.shrink_to(2 * room);
        }
        out.sort_by_key(|r| r.time_us);
        self.link(out)
    }

    /// Judges slots still pending: older than the timeout and not yet reported means unanswered.
    pub fn scan(&mut self, pending: &[Slot], now_ns: u64, links_netns: u32) -> Vec<QueryRecord> {
        let mut out = Vec::new();
        for s in pending {
            let key = key_of(&s.query());
            if now_ns.saturating_sub(s.t_query) < self.ctx.timeout_ns
                || s.flags & flag::EVIDENCE != 0
                || self.reported.contains(&(key, s.t_query))
                || self.held.contains_key(&key)
            {
                continue;
            }
            let mut r = self.base(now_ns, Known::Slot(s), links_netns);
            r.queued = self.overflows.queued(&r, s, &self.ctx);
            self.remember(key, s.t_query);
            out.push(r);
        }
        self.link(out)
    }
}

/// What a record is built from: the query's slot, or only a packet and its question's bytes.
#[derive(Clone, Copy)]
enum Known<'a> {
    Slot(&'a Slot),
    Packet(&'a Packet, &'a [u8]),
}

/// Where a piece of evidence was seen: its leg, namespace/interface, and a note on the
/// endpoint or the rules (empty, or starting with `; `) for the explanation.
struct Place {
    leg: Leg,
    at: String,
    stale: String,
}

/// Adds a drop record's evidence to a held record; returns the stage of a drop it placed (`None`
/// when the record already had one).
fn add_drop(
    r: &mut QueryRecord,
    reason: String,
    location: String,
    conntrack_dropping: bool,
    place: Place,
) -> Option<Stage> {
    match &mut r.drop {
        // A verdict probe's record came first (xtables returns its verdict before
        // nf_hook_slow frees the packet): add the reason and location to it.
        Some(d) if d.location.is_empty() => {
            d.reason = reason;
            d.location = location;
            None
        }
        // The first drop wins; a later one (the same packet's copy) adds nothing.
        Some(_) => None,
        None => {
            let c = classify(&reason, symbols::function(&location), conntrack_dropping);
            let reset = if r.connection && reason == "NO_SOCKET" {
                ": the kernel answered the SYN with a reset (connection refused)"
            } else {
                ""
            };
            r.drop = Some(Drop {
                stage: c.stage,
                reason,
                location,
                backend: c.backend,
                backend_from: c.backend.map(|_| BackendEvidence::Location),
                table: None,
                chain: None,
                leg: place.leg,
                at: place.at,
                why: c.why + reset + &place.stale,
                time_us: None,
                socket: None,
            });
            Some(c.stage)
        }
    }
}

/// Adds a netfilter verdict record (a table returned DROP) to a held record.
fn add_verdict(
    r: &mut QueryRecord,
    backend: NetfilterBackend,
    table: &str,
    chain: Option<String>,
    place: Place,
) {
    let why = format!(
        "a rule in {backend} table {table}{} dropped it{}",
        chain
            .as_deref()
            .map(|c| format!(" chain {c}"))
            .unwrap_or_default(),
        place.stale
    );
    match &mut r.drop {
        // The kernel freed it inside the table (6.1's nf_tables): the drop record came first.
        Some(d) => {
            d.stage = Stage::Netfilter;
            d.backend = Some(backend);
            d.backend_from = Some(BackendEvidence::VerdictProbe);
            d.table = Some(table.to_owned());
            d.chain = chain;
            d.why = why;
        }
        None => {
            r.drop = Some(Drop {
                stage: Stage::Netfilter,
                reason: "NETFILTER_DROP".to_owned(),
                location: String::new(),
                backend: Some(backend),
                backend_from: Some(BackendEvidence::VerdictProbe),
                table: Some(table.to_owned()),
                chain,
                leg: place.leg,
                at: place.at,
                why,
                time_us: None,
                socket: None,
            })
        }
    }
}

/// The endpoint a packet on `leg` shows: a query's destination past DNAT, an answer's source.
fn endpoint_of(p: &Packet, leg: Leg) -> Option<IpAddr> {
    match leg {
        Leg::QueryToPod => Some(addr(p.daddr)),
        Leg::Answer => Some(addr(p.saddr)),
        Leg::QueryBeforeDnat => None,
    }
}

/// The packet as the client sent it: for an answer, swap the ends.
fn query_of(p: &Packet, dns_port: u16) -> Packet {
    if port(p.sport) == dns_port {
        Packet {
            saddr: p.daddr,
            daddr: p.saddr,
            sport: p.dport,
            dport: p.sport,
            ..*p
        }
    } else {
        *p
    }
}

fn key_of(q: &Packet) -> Key {
    (q.saddr, q.sport, q.dns_id, q.proto)
}

mod classify;
mod queue;
#[cfg(test)]
mod tests;
