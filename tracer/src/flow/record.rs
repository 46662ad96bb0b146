//! One record per DNS query: its verdict, its path, and where and why it died.

use std::net::{Ipv4Addr, SocketAddrV4};

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

/// The furthest point of the path a query was seen at.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
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

/// A drop: stage, kernel reason and code location, and what tells the netfilter backend.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Drop {
    /// The stage, as the kernel names it: netfilter, conntrack, neighbour, socket, ...
    pub stage: String,
    /// `enum skb_drop_reason` name from this kernel's BTF (or the socket hook's name).
    pub reason: String,
    /// Code location (`function+0xoff`).
    pub location: String,
    /// The netfilter backend, `nf_tables` or `xtables`, from evidence that holds on every
    /// kernel: a verdict probe, a free inside `nft_do_chain`, or the rule counters that moved.
    pub backend: Option<String>,
    /// What told the backend: `verdict probe`, `location`, `rule counters`.
    #[serde(default)]
    pub backend_from: Option<String>,
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
    pub client: SocketAddrV4,
    /// Where the client sent it (the Service IP, or a pod).
    pub server: SocketAddrV4,
    /// DNS transaction id.
    pub id: u16,
    /// Queried name, when decodable.
    pub name: Option<String>,
    /// Query type.
    pub qtype: Option<String>,
    /// How it ended.
    pub verdict: Verdict,
    /// The pod the query was sent to after DNAT, when seen.
    pub endpoint: Option<Ipv4Addr>,
    /// The destination NAT rewrote the query to, as the NAT stage saw it (kprobe/fentry tier).
    #[serde(default)]
    pub nat: Option<SocketAddrV4>,
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
}
