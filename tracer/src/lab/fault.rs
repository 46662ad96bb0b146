//! The faults: each one a real kernel condition on the node (rules, links, addresses, processes,
//! conntrack entries), each undone by `fault clear`.

use std::{
    net::{IpAddr, Ipv4Addr, SocketAddr, SocketAddrV4},
    time::Duration,
};

use super::{
    ActiveFault, DNS_PORT, Error, SERVICE_IP, State, dns, family, ipvs,
    nftables::{self, ProxyMode},
    nodelocal, overload, policy, rules, state_dir, throttle, topology,
};
use crate::{
    measure::{self, BatchSpec, Outcome, RecordType},
    netns,
    node::{Backend, conntrack},
};

/// A fault the lab can inject.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "kebab-case")]
pub enum FaultName {
    /// A DROP for DNS to the pods after DNAT (filter FORWARD), on one pod (`--pod`) or both.
    FilterDrop,
    /// A NetworkPolicy engine's per-pod chain (Calico's `cali-tw-<iface>`, reached from filter
    /// FORWARD) dropping DNS from client0, on one pod (`--pod`) or both; other clients get answers.
    PolicyDrop,
    /// kube-proxy's REJECT for a DNS service with no endpoints.
    NoEndpoints,
    /// Stale kube-proxy rules in the other iptables backend that mis-NAT or drop DNS.
    MixedBackend,
    /// New flows dropped because the conntrack table is full.
    ConntrackFull,
    /// The DNS server in a pod stopped.
    PodDown,
    /// A DNS pod's link down.
    PodLinkDown,
    /// A UDP conntrack entry keeps sending a client to an endpoint that was removed.
    StaleConntrack,
    /// A DNS pod replaced during traffic: the new pod, at a new address, takes the old one's
    /// place in the Service, and nobody deletes the UDP conntrack entries to the old address.
    EndpointChurn,
    /// Parallel A and AAAA queries from one socket, as glibc sends them.
    ConntrackRace,
    /// The DNS server in a pod stops reading (SIGSTOP) with a small socket receive buffer: a
    /// burst fills its receive queue and the kernel refuses the rest.
    ServerOverload,
    /// The DNS server in a pod stalls 2.5 s at a time (as CPU throttling would) while the node's
    /// `nf_conntrack_udp_timeout` is 1 s: its answers come after the query's entry expired.
    ThrottledServer,
    /// A DROP for DNS over TCP to the pods after DNAT (filter FORWARD, as a NetworkPolicy or a
    /// firewall allowing only UDP would), on one pod (`--pod`) or both: a client retrying a
    /// truncated UDP answer (`large.cluster.local`) over TCP gets nothing.
    TcpBlocked,
    /// Remove every fault and restore full answers.
    Clear,
}

impl FaultName {
    /// The name as the command line and the reports spell it (`filter-drop`).
    pub fn name(self) -> &'static str {
        match self {
            Self::FilterDrop => "filter-drop",
            Self::PolicyDrop => "policy-drop",
            Self::NoEndpoints => "no-endpoints",
            Self::MixedBackend => "mixed-backend",
            Self::ConntrackFull => "conntrack-full",
            Self::PodDown => "pod-down",
            Self::PodLinkDown => "pod-link-down",
            Self::StaleConntrack => "stale-conntrack",
            Self::EndpointChurn => "endpoint-churn",
            Self::ConntrackRace => "conntrack-race",
            Self::ServerOverload => "server-overload",
            Self::ThrottledServer => "throttled-server",
            Self::TcpBlocked => "tcp-blocked",
            Self::Clear => "clear",
        }
    }
}

impl std::fmt::Display for FaultName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// mixed-backend: the endpoint a stale kube-proxy ruleset still DNATs to (no pod owns it).
pub const STALE_ENDPOINT: Ipv4Addr = Ipv4Addr::new(10, 244, 0, 99);
/// endpoint-churn: the addresses of DNS pods 0 and 1's replacements.
pub const REPLACEMENT_IPS: [Ipv4Addr; 2] =
    [Ipv4Addr::new(10, 244, 0, 12), Ipv4Addr::new(10, 244, 0, 13)];
/// stale-conntrack: the first client source port tried for the stale flow.
const STALE_FIRST_PORT: u16 = 40053;
/// stale-conntrack: source ports tried until one flow is balanced to the chosen pod (each try is
/// a coin flip between the two endpoints).
const STALE_TRIES: u16 = 32;
/// conntrack-full: lifetime of the filler entries, far longer than any test or demo.
const FILL_TIMEOUT_S: u32 = 3600;

fn restore_program(backend: Backend) -> &'static str {
    match backend {
        Backend::Nft => "iptables-nft-restore",
        Backend::Legacy => "iptables-legacy-restore",
    }
}

fn other(backend: Backend) -> Backend {
    match backend {
        Backend::Nft => Backend::Legacy,
        Backend::Legacy => Backend::Nft,
    }
}

/// The rules kube-proxy (and the lab's own filter-drop and policy-drop) would have in place for
/// `state`.
fn rule_set(prefix: &str, state: &State) -> rules::RuleSet {
    let active = |name| state.faults.iter().find(|f| f.name == name);
    let mut endpoints = topology::DNS_IPS.to_vec();
    let v4 = |ips: Vec<Ipv4Addr>| ips.into_iter().map(IpAddr::from).collect();
    if let Some(stale) = active(FaultName::StaleConntrack) {
        let gone = topology::DNS_IPS[usize::from(stale.pod.unwrap_or(0))];
        endpoints.retain(|ip| *ip != gone);
    }
    if let Some(churn) = active(FaultName::EndpointChurn) {
        let p = usize::from(churn.pod.unwrap_or(0));
        endpoints = topology::DNS_IPS.to_vec();
        endpoints[p] = REPLACEMENT_IPS[p];
    }
    if active(FaultName::NoEndpoints).is_some() {
        endpoints.clear();
    }
    let to_pods = |fault| match active(fault) {
        Some(ActiveFault { pod: Some(p), .. }) => vec![topology::DNS_IPS[usize::from(*p)]],
        Some(_) => topology::DNS_IPS.to_vec(),
        None => vec![],
    };
    let filter_drop = to_pods(FaultName::FilterDrop);
    let tcp_drop = to_pods(FaultName::TcpBlocked);
    // A NetworkPolicy selects the CoreDNS pods and denies client0: one chain per selected pod.
    let policy_drop = active(FaultName::PolicyDrop).map(|f| policy::PolicyDrop {
        client: Ipv4Addr::new(10, 244, 0, topology::FIRST_CLIENT),
        interfaces: match f.pod {
            Some(p) => vec![topology::dns_host_ifname(prefix, p)],
            None => (0..2)
                .map(|p| topology::dns_host_ifname(prefix, p))
                .collect(),
        },
    });
    rules::RuleSet {
        service_ip: SERVICE_IP.into(),
        endpoints: v4(endpoints),
        filter_drop: v4(filter_drop),
        tcp_drop: v4(tcp_drop),
        policy_drop,
        kubelet: true,
        nodelocal: state.nodelocal.then(nodelocal::rules),
    }
}

/// Loads the rules `state` calls for into its backend (kube-proxy's nftables table in its
/// nftables mode), replacing what was there.
pub fn load_rules(prefix: &str, state: &State) -> Result<(), Error> {
    let rules = rule_set(prefix, state);
    let (program, args, text) = match state.proxy_mode {
        ProxyMode::Iptables => (
            restore_program(state.backend),
            &[][..],
            rules::render(&rules),
        ),
        ProxyMode::Nftables => ("nft", &["-f", "-"][..], nftables::render(&rules)),
        ProxyMode::Ipvs => return ipvs::load(prefix, restore_program(state.backend), &rules),
    };
    topology::run_in(&topology::node_netns(prefix), program, args, Some(&text))?;
    family::load_rules6(prefix, state, &rules)
}

/// Why fault `name` has no meaning in kube-proxy's ipvs mode, if it has none.
fn not_in_ipvs_mode(name: FaultName) -> Option<&'static str> {
    match name {
        FaultName::PolicyDrop => Some(
            "IPVS sends the rewritten query through OUTPUT, past the FORWARD chains a NetworkPolicy engine hooks",
        ),
        FaultName::MixedBackend => Some("IPVS, not a nat table, does the Service's NAT"),
        FaultName::StaleConntrack | FaultName::EndpointChurn => Some(
            "IPVS keeps its own connection table; the lab's stale entries are conntrack's NAT entries",
        ),
        _ => None,
    }
}

/// Why fault `name` has no meaning in kube-proxy's nftables mode, if it has none.
fn not_in_nftables_mode(name: FaultName) -> Option<&'static str> {
    match name {
        FaultName::PolicyDrop => {
            Some("the lab's NetworkPolicy chains are iptables chains (Calico's iptables dataplane)")
        }
        FaultName::MixedBackend => Some(
            "it is stale iptables rules in the other iptables backend, and nftables mode uses none",
        ),
        _ => None,
    }
}

/// Applies `name` to the running lab described by `state`, returning what to remember of it.
pub fn apply(
    prefix: &str,
    state: &State,
    name: FaultName,
    pod: Option<u8>,
) -> Result<ActiveFault, Error> {
    let per_pod = matches!(
        name,
        FaultName::FilterDrop
            | FaultName::PolicyDrop
            | FaultName::TcpBlocked
            | FaultName::PodDown
            | FaultName::PodLinkDown
            | FaultName::StaleConntrack
            | FaultName::EndpointChurn
            | FaultName::ServerOverload
            | FaultName::ThrottledServer
    );
    let why = match state.proxy_mode {
        ProxyMode::Iptables => None,
        ProxyMode::Nftables => not_in_nftables_mode(name),
        ProxyMode::Ipvs => not_in_ipvs_mode(name),
    };
    if let Some(why) = why {
        return Err(Error::NotInMode {
            fault: name.to_string(),
            mode: state.proxy_mode,
            why,
        });
    }
    if pod.is_some() && !per_pod {
        return Err(Error::PodNotAllowed {
            fault: name.to_string(),
        });
    }
    // filter-drop, policy-drop and tcp-blocked without --pod hit both pods; the others default
    // to pod 0.
    let pod = if matches!(
        name,
        FaultName::FilterDrop | FaultName::PolicyDrop | FaultName::TcpBlocked
    ) {
        pod
    } else {
        pod.or(per_pod.then_some(0))
    };
    let mut active = ActiveFault {
        name,
        pod,
        source_port: None,
        udp_timeout: None,
    };
    let node = topology::node_netns(prefix);
    let with_fault = |active: &ActiveFault| {
        let mut next = state.clone();
        next.faults.push(active.clone());
        next
    };
    match name {
        FaultName::FilterDrop
        | FaultName::PolicyDrop
        | FaultName::NoEndpoints
        | FaultName::TcpBlocked => {
            load_rules(prefix, &with_fault(&active))?;
        }
        FaultName::MixedBackend => {
            // What an old kube-proxy left in the other backend: the same chains, DNAT to a pod
            // that is long gone. Loaded last, its NAT table is registered last and runs first.
            let stale = rules::RuleSet {
                service_ip: SERVICE_IP.into(),
                endpoints: vec![STALE_ENDPOINT.into()],
                filter_drop: vec![],
                tcp_drop: vec![],
                policy_drop: None,
                kubelet: false,
                nodelocal: None,
            };
            let program = restore_program(other(state.backend));
            topology::run_in(&node, program, &[], Some(&rules::render(&stale)))?;
        }
        FaultName::ConntrackFull => fill_conntrack(&node)?,
        FaultName::PodDown => dns::stop(&state_dir(prefix), pod.unwrap_or(0))?,
        FaultName::ServerOverload => overload::apply(&state_dir(prefix), pod.unwrap_or(0))?,
        FaultName::ThrottledServer => {
            let before = throttle::apply(prefix, &state_dir(prefix), pod.unwrap_or(0))?;
            active.udp_timeout = Some(before);
        }
        FaultName::PodLinkDown => {
            let p = pod.unwrap_or(0);
            topology::set_link(prefix, &topology::dns_host_ifname(prefix, p), false)?;
            // A node whose pod link has been down for a while (about 30 s: the neighbour entry's
            // reachable time) no longer knows the pod's MAC: its queries then wait for ARP and die
            // at neighbour resolution. Before that, the bridge floods them to the other ports.
            // Forget the entry now so the fault shows its steady state at once.
            topology::forget_neighbour(prefix, topology::DNS_IPS[usize::from(p)])?;
        }
        FaultName::StaleConntrack => {
            let p = pod.unwrap_or(0);
            active.source_port = Some(stale_flow(prefix, p)?);
            // kube-proxy drops the endpoint of the pod that went away (but, here, not its UDP
            // conntrack entries), and the pod's address is gone with it.
            load_rules(prefix, &with_fault(&active))?;
            let ns = topology::pod_netns(prefix, &format!("dns{p}"));
            topology::remove_pod_address(&ns, topology::DNS_IPS[usize::from(p)])?;
        }
        FaultName::EndpointChurn => {
            let p = usize::from(pod.unwrap_or(0));
            // kube-proxy swaps the endpoint at its next sync; the replacement pod answers from
            // its new address. The old pod and its address are gone, so the node no longer
            // resolves it: what a deleted pod's veth leaves.
            load_rules(prefix, &with_fault(&active))?;
            let ns = topology::pod_netns(prefix, &format!("dns{p}"));
            topology::remove_pod_address(&ns, topology::DNS_IPS[p])?;
            topology::add_pod_address(&ns, REPLACEMENT_IPS[p])?;
            topology::forget_neighbour(prefix, topology::DNS_IPS[p])?;
        }
        // A traffic pattern, not a broken rule: `tracer probe --lab` then sends A and AAAA in
        // parallel from one socket on two CPUs, and conntrack resolves the insert clashes.
        FaultName::ConntrackRace => {}
        FaultName::Clear => {
            return Err(Error::Fault {
                what: "clear undoes faults, it is not one to apply".to_owned(),
            });
        }
    }
    Ok(active)
}

/// conntrack-full: rounds of filling and removing what is not filler, at most.
const FILL_ROUNDS: u32 = 4;
/// conntrack-full: where filler flows go (no pod uses the 10.253/16 and 10.254/16 addresses).
const FILLER_DST: SocketAddrV4 = SocketAddrV4::new(Ipv4Addr::new(10, 253, 0, 1), 53);

/// Filler flow `i`: 10.254.a.b:p -> 10.253.0.1:53.
fn filler(i: u32) -> (SocketAddrV4, SocketAddrV4) {
    let src = Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 254, 0, 0)) + i / 50_000);
    let sport = 10_000 + (i % 50_000) as u16;
    (SocketAddrV4::new(src, sport), FILLER_DST)
}

/// Whether `e` is a filler entry.
fn is_filler(e: &conntrack::Entry) -> bool {
    e.orig.dst == std::net::IpAddr::V4(*FILLER_DST.ip()) && e.orig.dport == FILLER_DST.port()
}

/// Sends whoami queries from client0 through the Service from fixed source ports until one flow
/// is balanced to DNS pod `pod`; returns that port. Its conntrack entry is real: made by the
/// query and its answer.
fn stale_flow(prefix: &str, pod: u8) -> Result<u16, Error> {
    let client = topology::pod_netns(prefix, "client0");
    let want = topology::DNS_IPS[usize::from(pod)];
    for port in STALE_FIRST_PORT..STALE_FIRST_PORT + STALE_TRIES {
        let spec = BatchSpec {
            names: vec![dns::WHOAMI.to_owned()],
            qtypes: vec![RecordType::A],
            count: 1,
            rate: 1.0,
            timeout: Duration::from_secs(1),
            source_port: Some(port),
            parallel_a_aaaa: false,
        };
        let result = measure::query_batch(
            Some(&client),
            SocketAddr::from((SERVICE_IP, DNS_PORT)),
            &spec,
        )
        .map_err(|source| Error::Measure { source })?;
        if let Some(Outcome::Answered { addresses, .. }) =
            result.queries.first().map(|q| &q.outcome)
            && addresses.contains(&want.into())
        {
            return Ok(port);
        }
    }
    Err(Error::Fault {
        what: format!(
            "no client0 flow to the Service was balanced to dns{pod} from source ports {STALE_FIRST_PORT}..{}",
            STALE_FIRST_PORT + STALE_TRIES
        ),
    })
}

/// Fills the node's conntrack table to `nf_conntrack_max` with ASSURED UDP entries (never
/// early-dropped), so new flows are dropped.
fn fill_conntrack(node: &str) -> Result<(), Error> {
    let err = |source| Error::Conntrack {
        netns: node.to_owned(),
        source,
    };
    let table = netns::run_in(
        &netns::named(node),
        || -> Result<conntrack::Table, conntrack::Error> {
            // Only the filler may hold the table: an entry of the lab's own DNS traffic is not
            // assured, so the kernel would evict it (early drop) or let it expire, and a query
            // would then get its slot.
            super::conntrack::flush()?;
            let mut next = 0u32;
            // Traffic that arrived while the table filled (a readiness probe, an IGMP report)
            // holds slots with entries that expire: each would free a slot for a query later.
            // They are replaced by filler until the filler alone holds the table; then nothing
            // new gets in.
            let mut top_up = || -> Result<(), conntrack::Error> {
                let table = conntrack::table()?;
                let missing = table.max.saturating_sub(table.count);
                super::conntrack::create_udp_assured(
                    (next..next + missing).map(filler),
                    FILL_TIMEOUT_S,
                )?;
                next += missing;
                Ok(())
            };
            for _ in 0..FILL_ROUNDS {
                top_up()?;
                if super::conntrack::delete_matching(|e| !is_filler(e))? == 0 {
                    break;
                }
            }
            top_up()?;
            conntrack::table()
        },
    )
    .map_err(|source| Error::Netns {
        netns: node.to_owned(),
        source,
    })?
    .map_err(err)?;
    if table.count < table.max {
        return Err(Error::Fault {
            what: format!(
                "the conntrack table of {node} holds {} of {} entries after the fill",
                table.count, table.max
            ),
        });
    }
    Ok(())
}

fn flush_conntrack(node: &str) -> Result<(), Error> {
    netns::run_in(&netns::named(node), super::conntrack::flush)
        .map_err(|source| Error::Netns {
            netns: node.to_owned(),
            source,
        })?
        .map_err(|source| Error::Conntrack {
            netns: node.to_owned(),
            source,
        })
}

/// Empties the other backend's tables (the mixed-backend fault's stale rules). Legacy tables
/// cannot be unregistered from a live namespace, so they stay, empty; nf_tables ones are deleted.
fn flush_other_backend(prefix: &str, state: &State) -> Result<(), Error> {
    let node = topology::node_netns(prefix);
    match other(state.backend) {
        Backend::Legacy => topology::run_in(
            &node,
            restore_program(Backend::Legacy),
            &[],
            Some(&rules::empty()),
        )
        .map(drop),
        Backend::Nft => {
            let tables = topology::run_in(&node, "nft", &["list", "tables", "ip"], None)?;
            for table in ["mangle", "filter", "nat"] {
                if tables
                    .lines()
                    .any(|l| l.trim() == format!("table ip {table}"))
                {
                    topology::run_in(&node, "nft", &["delete", "table", "ip", table], None)?;
                }
            }
            Ok(())
        }
    }
}

/// Undoes every fault of `state`, and makes sure every DNS pod is linked, addressed and serving.
pub fn clear(prefix: &str, state: &State) -> Result<(), Error> {
    let node = topology::node_netns(prefix);
    let dir = state_dir(prefix);
    let had = |name| state.faults.iter().any(|f| f.name == name);
    if had(FaultName::MixedBackend) {
        flush_other_backend(prefix, state)?;
    }
    let healthy = State {
        faults: Vec::new(),
        ..state.clone()
    };
    load_rules(prefix, &healthy)?;
    let churned = state
        .faults
        .iter()
        .find(|f| f.name == FaultName::EndpointChurn)
        .map(|f| f.pod.unwrap_or(0));
    for pod in 0..2u8 {
        topology::set_link(prefix, &topology::dns_host_ifname(prefix, pod), true)?;
        let ns = topology::pod_netns(prefix, &format!("dns{pod}"));
        if churned == Some(pod) {
            topology::remove_pod_address(&ns, REPLACEMENT_IPS[usize::from(pod)])?;
        }
        topology::add_pod_address(&ns, topology::DNS_IPS[usize::from(pod)])?;
    }
    if had(FaultName::ConntrackFull)
        || had(FaultName::StaleConntrack)
        || had(FaultName::EndpointChurn)
    {
        flush_conntrack(&node)?;
    }
    for f in state
        .faults
        .iter()
        .filter(|f| f.name == FaultName::ThrottledServer)
    {
        throttle::stop(&dir, f.pod.unwrap_or(0))?;
        if let Some(before) = &f.udp_timeout {
            topology::sysctl(&node, throttle::UDP_TIMEOUT, before)?;
        }
    }
    // The stopped server runs again, then restarts below with its socket's default buffer.
    for f in state
        .faults
        .iter()
        .filter(|f| f.name == FaultName::ServerOverload)
    {
        let pod = f.pod.unwrap_or(0);
        overload::resume(&dir, pod);
        dns::stop(&dir, pod)?;
    }
    for pod in 0..2u8 {
        if !dns::running(&dir, pod) {
            dns::start(prefix, &dir, pod)?;
        }
    }
    Ok(())
}
