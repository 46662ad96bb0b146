//! What a drop's reason and code location say (its stage, the backend, plain words), and ICMP
//! errors' names.

use super::{
    super::record::{NetfilterBackend, Stage},
    queue,
};

/// The name of an ICMP error (`ipv6`: of an ICMPv6 one, RFC 4443).
pub(super) fn icmp_text(ipv6: bool, t: u8, code: u8) -> String {
    if ipv6 {
        return icmp6_text(t, code);
    }
    match (t, code) {
        (3, 0) => "net unreachable".into(),
        (3, 1) => "host unreachable".into(),
        (3, 3) => "port unreachable".into(),
        (3, 9 | 10 | 13) => "administratively prohibited".into(),
        (3, c) => format!("destination unreachable (code {c})"),
        (11, _) => "time exceeded".into(),
        (t, c) => format!("ICMP type {t} code {c}"),
    }
}

fn icmp6_text(t: u8, code: u8) -> String {
    match (t, code) {
        (1, 0) => "no route to destination".into(),
        (1, 1) => "administratively prohibited".into(),
        (1, 3) => "address unreachable".into(),
        (1, 4) => "port unreachable".into(),
        (1, 5) => "source address failed ingress/egress policy".into(),
        (1, 6) => "reject route to destination".into(),
        (1, c) => format!("destination unreachable (code {c})"),
        (2, _) => "packet too big".into(),
        (3, _) => "time exceeded".into(),
        (4, c) => format!("parameter problem (code {c})"),
        (t, c) => format!("ICMPv6 type {t} code {c}"),
    }
}

/// What a drop's reason and code location say: its stage, the netfilter backend when the
/// location proves one, and a plain-words explanation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Classified {
    /// The stage.
    pub stage: Stage,
    /// The backend, when only one could have freed the packet there.
    pub backend: Option<NetfilterBackend>,
    /// Why, in plain words.
    pub why: String,
}

/// The stage, backend and explanation of a drop from its reason and code location.
pub fn classify(reason: &str, function: &str, conntrack_dropping: bool) -> Classified {
    let at = |stage, why: &str| Classified {
        stage,
        backend: None,
        why: why.to_owned(),
    };
    match (reason, function) {
        // Only nf_tables code frees a packet inside nft_do_chain, on every kernel; the reverse
        // does not hold (6.1's nf_tables drops are freed in nf_hook_slow, like xtables').
        (_, "nft_do_chain") => Classified {
            backend: Some(NetfilterBackend::NfTables),
            ..at(
                Stage::Netfilter,
                "an nf_tables rule (iptables-nft or nft) dropped it",
            )
        },
        ("NETFILTER_DROP" | "", "nf_hook_slow") if conntrack_dropping => at(
            Stage::Conntrack,
            "conntrack refused a new flow while its drop counter rose: the table is full",
        ),
        ("NETFILTER_DROP" | "", "nf_hook_slow") => at(
            Stage::Netfilter,
            "a netfilter rule dropped it (iptables-legacy, or on some kernels iptables-nft: the verdict \
             probes or the rules' counters tell which), or conntrack refused it",
        ),
        ("NETFILTER_DROP", _) => at(Stage::Netfilter, "a netfilter hook dropped it"),
        // Kernels before 5.17 give no reason: the location places these.
        ("", "__udp4_lib_rcv") => at(
            Stage::Socket,
            "nothing listens on the DNS port there (placed by location: no drop reasons before 5.17)",
        ),
        ("", "tcp_v4_rcv" | "tcp_v6_rcv") => at(
            Stage::Socket,
            "nothing listens on the DNS port there: the kernel answered the SYN with a reset (placed \
             by location: no drop reasons before 5.17)",
        ),
        ("", f) if f.starts_with("neigh_") => at(
            Stage::Neighbour,
            "the next hop's address did not resolve on the link (placed by location: no drop reasons \
             before 5.17)",
        ),
        ("NO_SOCKET", _) => at(Stage::Socket, "nothing listens on the DNS port there"),
        ("SOCKET_RCVBUFF", _) => at(Stage::Socket, queue::FULL),
        ("OTHERHOST", _) => at(
            Stage::Bridge,
            "a copy flooded by the bridge reached a pod it was not addressed to: no bridge port knows the \
             destination's MAC (its link is down, or it is gone)",
        ),
        ("IP_INADDRERRORS", _) => at(
            Stage::Routing,
            "it reached a host that does not own the destination address (the pod lost its IP, or the \
             address moved)",
        ),
        (r, _) if r.starts_with("NEIGH_") => at(
            Stage::Neighbour,
            "the next hop's address did not resolve on the link (pod gone, or its link down)",
        ),
        (r, _) if r.starts_with("SOCKET_") || r.starts_with("UDP_") => {
            at(Stage::Socket, "the receiving socket refused it")
        }
        (r, _) if r.starts_with("IP_") || r.starts_with("IPV6") => {
            at(Stage::Routing, &format!("the IP layer refused it ({r})"))
        }
        (r, _) => at(Stage::Kernel, &format!("dropped with reason {r}")),
    }
}
