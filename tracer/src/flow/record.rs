//! One record per DNS query: its verdict, its path, and where and why it died.

use std::net::{IpAddr, SocketAddr};

pub use super::rulepath::{RulePath, RuleStep};
use super::transport::{Transport, UdpLeg};
use crate::{node::Backend, probes::table::Stage as ProbeStage};

/// How a query ended.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum Verdict {
    /// The answer reached the client.
    Answered,
    /// Refused with an ICMP error (REJECT rule, closed port).
    Rejected,
    /// Freed by the kernel with a drop reason.
    Dropped,
    /// No answer, no drop seen: the last stage seen says how far it got.
    Unanswered,
}

impl std::fmt::Display for Verdict {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Verdict::Answered => "answered",
            Verdict::Rejected => "rejected",
            Verdict::Dropped => "dropped",
            Verdict::Unanswered => "unanswered",
        })
    }
}

/// Where on the path something happened, relative to DNAT.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Leg {
    /// The query, still addressed to the Service IP (before DNAT).
    QueryBeforeDnat,
    /// The query, addressed to a pod (after DNAT, or sent to the pod directly).
    QueryToPod,
    /// The answer on its way back.
    Answer,
}

impl std::fmt::Display for Leg {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::QueryBeforeDnat => "query before DNAT",
            Self::QueryToPod => "query after DNAT",
            Self::Answer => "answer",
        })
    }
}

/// What rewrote a query's destination from the Service to a pod, where it was not netfilter's
/// nat table (kube-proxy's iptables and nftables modes DNAT there).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NatBy {
    /// IPVS (kube-proxy's ipvs mode): `ip_vs_in` takes the query at LOCAL_IN (the ClusterIP is
    /// local, on kube-ipvs0), rewrites its destination and sends it on through LOCAL_OUT
    /// (`ip_vs_nat_xmit`); with `net.ipv4.vs.conntrack=1` conntrack's reply tuple follows.
    Ipvs,
}

impl std::fmt::Display for NatBy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Ipvs => "IPVS (ip_vs_in at LOCAL_IN, then OUTPUT; not netfilter's nat table)",
        })
    }
}

/// The furthest point of the path a query was seen at, in path order.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "snake_case")]
pub enum Seen {
    /// Not seen on a pod link (a drop or ICMP error was the only trace).
    Nowhere,
    /// Left the client.
    Sent,
    /// Reached the endpoint's link after DNAT.
    AtEndpoint,
    /// The endpoint answered.
    AnsweredByEndpoint,
    /// The answer reached the client.
    Delivered,
}

impl Seen {
    /// Every point, in path order.
    pub const ALL: [Seen; 5] = [
        Seen::Nowhere,
        Seen::Sent,
        Seen::AtEndpoint,
        Seen::AnsweredByEndpoint,
        Seen::Delivered,
    ];

    /// Its name, as in JSON (`at_endpoint`).
    pub fn name(self) -> &'static str {
        match self {
            Seen::Nowhere => "nowhere",
            Seen::Sent => "sent",
            Seen::AtEndpoint => "at_endpoint",
            Seen::AnsweredByEndpoint => "answered_by_endpoint",
            Seen::Delivered => "delivered",
        }
    }

    /// The point named `name` (`at_endpoint`), or by its Rust name (`AtEndpoint`), which reports
    /// written before `Seen` had a name used in their cause keys.
    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL
            .into_iter()
            .find(|s| s.name() == name || format!("{s:?}") == name)
    }
}

impl std::fmt::Display for Seen {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// Where on the packet path a query died, as the kernel names the stage. Not
/// [`crate::probes::table::Stage`], which groups the tracer's programs: [`Stage::recorded_by`]
/// names the program groups whose records place a drop here.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum Stage {
    /// An iptables/nftables rule, or a netfilter hook.
    Netfilter,
    /// Conntrack refused the flow (table full, or an insert clash it could not resolve).
    Conntrack,
    /// The IP layer (routing, an address the host does not own).
    Routing,
    /// The bridge flooded a copy to a pod it was not addressed to.
    Bridge,
    /// The next hop's address did not resolve.
    Neighbour,
    /// The receiving socket: none listening, or it refused the packet.
    Socket,
    /// A drop reason no stage above claims.
    Kernel,
}

impl Stage {
    /// Every stage, in path order.
    pub const ALL: [Stage; 7] = [
        Stage::Netfilter,
        Stage::Conntrack,
        Stage::Routing,
        Stage::Bridge,
        Stage::Neighbour,
        Stage::Socket,
        Stage::Kernel,
    ];

    /// Its name, as in JSON and text (`netfilter`).
    pub fn name(self) -> &'static str {
        match self {
            Stage::Netfilter => "netfilter",
            Stage::Conntrack => "conntrack",
            Stage::Routing => "routing",
            Stage::Bridge => "bridge",
            Stage::Neighbour => "neighbour",
            Stage::Socket => "socket",
            Stage::Kernel => "kernel",
        }
    }

    /// The stage named `name`.
    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|s| s.name() == name)
    }

    /// The program groups whose records can place a drop at this stage: the drop-reason
    /// programs (`skb:kfree_skb`) for every stage, and the stage's own programs where it has
    /// some (netfilter verdicts, conntrack confirm, socket refusals).
    pub fn recorded_by(self) -> &'static [ProbeStage] {
        match self {
            Stage::Netfilter => &[ProbeStage::Netfilter, ProbeStage::Drop],
            Stage::Conntrack => &[ProbeStage::Conntrack, ProbeStage::Drop],
            Stage::Socket => &[ProbeStage::Socket, ProbeStage::Drop],
            Stage::Routing | Stage::Bridge | Stage::Neighbour | Stage::Kernel => {
                &[ProbeStage::Drop]
            }
        }
    }
}

impl std::fmt::Display for Stage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// The kernel's netfilter implementation whose table dropped a packet. Not
/// [`crate::node::Backend`], the iptables flavour that wrote the rules; iptables-nft's rules
/// run in nf_tables and iptables-legacy's in xtables, hence the `From`.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
pub enum NetfilterBackend {
    /// nf_tables (`nft_do_chain`: iptables-nft, nft).
    #[serde(rename = "nf_tables")]
    NfTables,
    /// Legacy xtables (`ipt_do_table`: iptables-legacy).
    #[serde(rename = "xtables")]
    Xtables,
}

impl From<Backend> for NetfilterBackend {
    fn from(b: Backend) -> Self {
        match b {
            Backend::Nft => Self::NfTables,
            Backend::Legacy => Self::Xtables,
        }
    }
}

impl std::fmt::Display for NetfilterBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::NfTables => "nf_tables",
            Self::Xtables => "xtables",
        })
    }
}

/// What told a drop's netfilter backend.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub enum BackendEvidence {
    /// A verdict probe saw the table return the drop (`ipt_do_table`, `nft_do_chain`).
    #[serde(rename = "verdict probe")]
    VerdictProbe,
    /// The packet was freed inside `nft_do_chain`.
    #[serde(rename = "location")]
    Location,
    /// The DROP/REJECT rules on the DNS path whose counters moved were all in one backend.
    #[serde(rename = "rule counters")]
    RuleCounters,
}

impl std::fmt::Display for BackendEvidence {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::VerdictProbe => "verdict probe",
            Self::Location => "location",
            Self::RuleCounters => "rule counters",
        })
    }
}

/// The reason of a conntrack drop whose entry could not be inserted (a clash it could not resolve).
pub const CONFIRM_FAILED: &str = "CONFIRM_FAILED";

/// A drop: stage, kernel reason and code location, and what tells the netfilter backend.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Drop {
    /// The stage, as the kernel names it: netfilter, conntrack, neighbour, socket, ...
    pub stage: Stage,
    /// `enum skb_drop_reason` name from this kernel's BTF (or the socket hook's name).
    pub reason: String,
    /// Code location (`function+0xoff`).
    pub location: String,
    /// The netfilter backend, `nf_tables` or `xtables`, from evidence that holds on every
    /// kernel: a verdict probe, a free inside `nft_do_chain`, or the rule counters that moved.
    pub backend: Option<NetfilterBackend>,
    /// What told the backend: `verdict probe`, `location`, `rule counters`.
    #[serde(default)]
    pub backend_from: Option<BackendEvidence>,
    /// The netfilter table when a verdict probe saw it.
    pub table: Option<String>,
    /// The chain: nf_tables' chain name, or for xtables the hook the table ran at
    /// (PREROUTING, INPUT, FORWARD, OUTPUT, POSTROUTING).
    #[serde(default)]
    pub chain: Option<String>,
    /// Which leg of the path.
    pub leg: Leg,
    /// Namespace and interface where it was dropped.
    pub at: String,
    /// A plain-words explanation.
    pub why: String,
    /// When the packet was dropped (Unix time, microseconds).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub time_us: Option<u64>,
    /// A socket refusal: the socket's receive queue at that moment.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub socket: Option<SocketQueue>,
}

/// A socket's receive queue as the kernel held it when the socket refused a packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub struct SocketQueue {
    /// Bytes queued (`sk_rmem_alloc`: the packets' truesize).
    pub rmem: u32,
    /// The queue's limit in bytes (`sk_rcvbuf`).
    pub rcvbuf: u32,
    /// Packets the socket dropped since it was opened (`sk_drops`), this one included.
    pub drops: u32,
}

impl std::fmt::Display for SocketQueue {
    /// `rmem 8448 of rcvbuf 8192 bytes, 12 drops`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "rmem {} of rcvbuf {} bytes, {} drops",
            self.rmem, self.rcvbuf, self.drops
        )
    }
}

/// An unanswered query delivered into a server socket that overflowed around then: it sat in
/// a full receive queue the server was not reading.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Queued {
    /// The server socket (endpoint address and port).
    pub endpoint: SocketAddr,
    /// The queue at that socket's overflow closest in time.
    pub queue: SocketQueue,
}

/// An ICMP error sent about the query.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Icmp {
    /// e.g. `port unreachable`.
    pub what: String,
    /// Who sent it: namespace and interface.
    pub by: String,
    /// Which leg (before DNAT: a REJECT rule for the Service; to a pod: a closed port there).
    pub leg: Leg,
}

/// Per-stage times of an answered query, in microseconds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct StageTimes {
    /// Client link to the endpoint's link (conntrack, DNAT, forwarding).
    pub to_endpoint_us: Option<u64>,
    /// Inside the endpoint (the DNS server's work).
    pub in_endpoint_us: Option<u64>,
    /// Endpoint's answer back to the client (un-DNAT, forwarding).
    pub back_us: Option<u64>,
}

/// One DNS query.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct QueryRecord {
    /// When the query was first seen (Unix time, microseconds).
    pub time_us: u64,
    /// The asking socket.
    pub client: SocketAddr,
    /// Where the client sent it (the Service IP, or a pod).
    pub server: SocketAddr,
    /// DNS transaction id.
    pub id: u16,
    /// `udp` or `tcp`.
    #[serde(default)]
    pub transport: Transport,
    /// A TCP connection to the DNS port that failed before it carried a query (its SYN was
    /// dropped or refused): no id, no name.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub connection: bool,
    /// The answer had the TC bit: too large for UDP, the client should retry over TCP.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub truncated: bool,
    /// A TCP query or connection retrying a truncated UDP answer: that UDP query.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_of: Option<UdpLeg>,
    /// Queried name, when decodable.
    pub name: Option<String>,
    /// Query type.
    pub qtype: Option<String>,
    /// How it ended.
    pub verdict: Verdict,
    /// The pod the query was sent to after DNAT, when seen.
    pub endpoint: Option<IpAddr>,
    /// The destination NAT rewrote the query to, as the NAT stage saw it (kprobe/fentry tier).
    #[serde(default)]
    pub nat: Option<SocketAddr>,
    /// What does the Service's NAT when it is not netfilter's nat table (IPVS).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nat_by: Option<NatBy>,
    /// Conntrack confirmed the query's entry (kprobe/fentry tier; `false` when not seen).
    #[serde(default)]
    pub confirmed: bool,
    /// The client's node-side link.
    pub client_link: Option<String>,
    /// The endpoint's node-side link.
    pub endpoint_link: Option<String>,
    /// Latency to the answer (answered only).
    pub latency_us: Option<u64>,
    /// Per-stage times (answered only).
    pub stages: StageTimes,
    /// The last stage the query was seen at.
    pub last_seen: Seen,
    /// Times the client re-sent it.
    pub retries: u32,
    /// The drop, if one was seen (an answered query may have lost a first copy).
    pub drop: Option<Drop>,
    /// The ICMP error, if one was sent.
    pub icmp: Option<Icmp>,
    /// The conntrack entry the query created (from ctnetlink NEW events), or why there is none.
    pub conntrack: Option<String>,
    /// With `trace --rules`: the netfilter chains the query went through and the rule (or policy)
    /// that decided its fate, from netfilter's own tracing.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rules: Option<RulePath>,
    /// The query followed a conntrack entry to an address that was no longer an endpoint.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stale: Option<StaleEntry>,
    /// Unanswered, delivered into a server socket whose receive queue overflowed around then.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub queued: Option<Queued>,
    /// A query to the node's DNS cache (NodeLocal DNSCache): hit or miss, and on a miss the
    /// cache's queries upstream.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cache: Option<super::cache::CacheLookup>,
}

/// A UDP conntrack entry that outlived its endpoint: kube-proxy removed the endpoint (a CoreDNS
/// pod replaced) but not the entry, which the client's socket keeps alive by asking again.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct StaleEntry {
    /// The client socket the entry belongs to.
    pub client: SocketAddr,
    /// The Service address it was sent to.
    pub service: SocketAddr,
    /// The address the entry still sends it to.
    pub endpoint: IpAddr,
    /// When conntrack created the entry (Unix µs); `None`: before the trace started.
    pub created_us: Option<u64>,
    /// When the tracer saw the endpoint leave the Service's rules (Unix µs); `None`: it was
    /// already gone when the trace started.
    pub removed_us: Option<u64>,
    /// The named network namespace the entry lives in (the lab's node); `None`: the tracer's own.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub netns: Option<String>,
}

impl StaleEntry {
    /// The command that deletes the entry (the client's next query then makes a fresh one), run
    /// in the entry's namespace.
    pub fn clear_command(&self) -> String {
        let run =
            crate::netns::exec_prefix(self.netns.as_deref().map(crate::netns::named).as_deref());
        format!(
            "{run}conntrack -D -p udp --orig-src {} --sport {} --orig-dst {} --dport {}",
            self.client.ip(),
            self.client.port(),
            self.service.ip(),
            self.service.port()
        )
    }
}

/// `stale conntrack entry (created 12:00:01, endpoint removed 12:00:05): `conntrack -D …`
/// clears it` (times in UTC).
impl std::fmt::Display for StaleEntry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let at = |t: Option<u64>| match t {
            Some(us) => clock(us),
            None => "before the trace".to_owned(),
        };
        write!(
            f,
            "stale conntrack entry to {} (created {}, endpoint removed {}): `{}` clears it",
            self.endpoint,
            at(self.created_us),
            at(self.removed_us),
            self.clear_command()
        )
    }
}

/// `hh:mm:ss.mmm` (UTC) of a Unix time in µs.
pub fn clock(us: u64) -> String {
    let day_ms = (us / 1000) % 86_400_000;
    format!(
        "{:02}:{:02}:{:02}.{:03}",
        day_ms / 3_600_000,
        day_ms / 60_000 % 60,
        day_ms / 1000 % 60,
        day_ms % 1000
    )
}

#[cfg(test)]
impl QueryRecord {
    /// For tests: query `id` from 10.244.0.20 port 1000 + `id` to the Service 10.96.0.10:53,
    /// DNATed to 10.244.0.10 and dropped there at `stage` (`NETFILTER_DROP` at
    /// `nft_do_chain+0x3e8`, no backend told).
    pub(crate) fn dropped(id: u16, stage: Stage) -> Self {
        Self {
            time_us: 0,
            client: SocketAddr::new(
                IpAddr::V4(std::net::Ipv4Addr::new(10, 244, 0, 20)),
                1000 + id,
            ),
            server: SocketAddr::new(IpAddr::V4(std::net::Ipv4Addr::new(10, 96, 0, 10)), 53),
            id,
            transport: Transport::Udp,
            connection: false,
            truncated: false,
            retry_of: None,
            name: None,
            qtype: None,
            verdict: Verdict::Dropped,
            endpoint: Some(IpAddr::V4(std::net::Ipv4Addr::new(10, 244, 0, 10))),
            nat: None,
            nat_by: None,
            confirmed: false,
            client_link: None,
            endpoint_link: None,
            latency_us: None,
            stages: StageTimes::default(),
            last_seen: Seen::Sent,
            retries: 0,
            drop: Some(Drop {
                stage,
                reason: "NETFILTER_DROP".to_owned(),
                location: "nft_do_chain+0x3e8".to_owned(),
                backend: None,
                backend_from: None,
                table: None,
                chain: None,
                leg: Leg::QueryToPod,
                at: "t-node/td0".to_owned(),
                why: String::new(),
                time_us: None,
                socket: None,
            }),
            icmp: None,
            conntrack: None,
            rules: None,
            stale: None,
            queued: None,
            cache: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The JSON string of a unit variant.
    fn json<T: serde::Serialize>(v: T) -> String {
        serde_json::to_value(v)
            .unwrap()
            .as_str()
            .unwrap()
            .to_owned()
    }

    /// Each enum's JSON strings are the ones records had when these fields were strings, and
    /// its text is its JSON string.
    #[test]
    fn json_strings_are_the_record_schema_and_the_text() {
        let stages: Vec<String> = Stage::ALL.into_iter().map(json).collect();
        assert_eq!(
            stages,
            [
                "netfilter",
                "conntrack",
                "routing",
                "bridge",
                "neighbour",
                "socket",
                "kernel"
            ]
        );
        for s in Stage::ALL {
            assert_eq!(s.to_string(), json(s));
            assert_eq!(Stage::from_name(&json(s)), Some(s));
            assert_eq!(serde_json::from_value::<Stage>(json(s).into()).unwrap(), s);
        }
        for s in Seen::ALL {
            assert_eq!(s.to_string(), json(s));
            assert_eq!(Seen::from_name(&json(s)), Some(s));
            assert_eq!(Seen::from_name(&format!("{s:?}")), Some(s));
        }
        for (b, name) in [
            (NetfilterBackend::NfTables, "nf_tables"),
            (NetfilterBackend::Xtables, "xtables"),
        ] {
            assert_eq!((json(b), b.to_string()), (name.to_owned(), name.to_owned()));
            assert_eq!(
                serde_json::from_value::<NetfilterBackend>(name.into()).unwrap(),
                b
            );
        }
        for (e, name) in [
            (BackendEvidence::VerdictProbe, "verdict probe"),
            (BackendEvidence::Location, "location"),
            (BackendEvidence::RuleCounters, "rule counters"),
        ] {
            assert_eq!((json(e), e.to_string()), (name.to_owned(), name.to_owned()));
            assert_eq!(
                serde_json::from_value::<BackendEvidence>(name.into()).unwrap(),
                e
            );
        }
    }

    #[test]
    fn iptables_flavours_map_to_the_kernel_backend_their_rules_run_in() {
        assert_eq!(
            NetfilterBackend::from(Backend::Nft),
            NetfilterBackend::NfTables
        );
        assert_eq!(
            NetfilterBackend::from(Backend::Legacy),
            NetfilterBackend::Xtables
        );
    }

    /// Every drop stage is recorded by the drop-reason programs; the stages with programs of
    /// their own are recorded by those too.
    #[test]
    fn every_stage_is_recorded_by_the_drop_programs() {
        for s in Stage::ALL {
            assert!(s.recorded_by().contains(&ProbeStage::Drop), "{s}");
        }
        assert!(
            Stage::Netfilter
                .recorded_by()
                .contains(&ProbeStage::Netfilter)
        );
        assert!(
            Stage::Conntrack
                .recorded_by()
                .contains(&ProbeStage::Conntrack)
        );
        assert!(Stage::Socket.recorded_by().contains(&ProbeStage::Socket));
    }
}
