//! The lab: a Kubernetes node simulated in network namespaces, with kube-proxy's real iptables
//! rules, real DNS pods, and faults that break DNS in real kernel ways.
//!
//! The node is namespace `{prefix}-node`: a bridge `{prefix}br0` (10.244.0.1/24, br_netfilter
//! on, forwarding on), a sink uplink with the default route, and kube-proxy's rules for the DNS
//! Service 10.96.0.10 (udp/tcp 53, tcp 9153) in the chosen iptables backend. Pods are namespaces
//! `{prefix}-dns0`, `{prefix}-dns1` (dnsmasq, 10.244.0.10 and .11) and `{prefix}-client{i}`
//! (10.244.0.20 + i), each joined to the bridge by a veth (`eth0` inside, `{prefix}d0`,
//! `{prefix}d1`, `{prefix}c{i}` on the node). Client pods added to the running lab are
//! `{prefix}-pod-{name}` (`{prefix}p{name}` on the node, 10.244.0.220 up). Nothing is created in
//! the root namespace. The backend, the client count, the added pods and the active faults live in
//! `/run/tracer-lab/{prefix}/state.json`, next to the DNS servers' pid files and logs.
//!
//! # Layout
//! - this file: the public API ([`up`], [`down`], [`info`], [`fault`], [`clear`]) and the CLI.
//! - `topology`: namespaces, bridge, veths, addresses, sysctls, and running commands inside them.
//! - `rules`: kube-proxy's and the kubelet's iptables rules as `iptables-restore` text.
//! - `nftables`: kube-proxy's nftables mode (`--proxy-mode nftables`): its `kube-proxy` table as
//!   `nft -f` text.
//! - `policy`: a NetworkPolicy engine's (Calico's) per-pod chains, for the policy-drop fault.
//! - `conntrack`: writes to the node's conntrack table (bulk create, delete, flush).
//! - `dns`: the dnsmasq pods.
//! - `fault`: applying and clearing each fault.
//! - `pods`: client pods added to the running lab and deleted from it.
//! - `overload`: the server-overload fault (a stopped server behind a small receive buffer).
//! - `throttle`: the throttled-server fault (a server stalled past the UDP conntrack timeout).
//! - `ipvs`: kube-proxy's ipvs mode (`--proxy-mode ipvs`): kube-ipvs0, IPVS virtual services over
//!   generic netlink, its ipsets and iptables rules.
//! - `family`: `--ip-family ipv6|dual`, the pods' IPv6 addresses and kube-proxy's ip6tables rules.
//! - `nodelocal`: `--nodelocal`, NodeLocal DNSCache: its link, its caching server in the node
//!   namespace, and (with kube-proxy's rules in `rules`) its NOTRACK rules and upstream Service.

pub mod conntrack;
mod dns;
mod family;
mod fault;
mod ipvs;
mod nftables;
mod nodelocal;
mod overload;
mod pods;
mod policy;
mod rules;
mod throttle;
mod topology;

use std::{
    net::Ipv4Addr,
    path::{Path, PathBuf},
};

pub use self::{
    dns::{LARGE, LONG_NAME, LONG_NAME_IP, WHOAMI},
    family::{IpFamily, SERVICE_IP6, pod_ip6},
    fault::{FaultName, REPLACEMENT_IPS, STALE_ENDPOINT},
    nftables::ProxyMode,
    nodelocal::{NODELOCAL_IP, NodeLocal, UPSTREAM_IP},
    pods::{add as add_pod, del as del_pod},
};
use crate::{measure, netns, node::Backend};

/// The DNS Service's cluster IP.
pub const SERVICE_IP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 10);
/// The DNS Service's port (udp and tcp).
pub const DNS_PORT: u16 = 53;
/// Where each lab keeps its state, in a directory named after its prefix.
pub const STATE_ROOT: &str = "/run/tracer-lab";
/// Longest prefix: `{prefix}eth0` and `{prefix}c199` must fit an interface name (15 bytes).
const MAX_PREFIX: usize = 8;
/// Most client pods (addresses 10.244.0.20 to .219).
const MAX_CLIENTS: u8 = 200;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("interrupted by {signal} while lab {prefix} came up: everything it made is removed")]
    Interrupted {
        signal: &'static str,
        prefix: String,
    },
    #[error(
        "invalid lab prefix {prefix:?}: use 1 to {MAX_PREFIX} lowercase letters and digits, starting with a letter"
    )]
    Prefix { prefix: String },
    #[error("invalid client count {clients}: the lab has 1 to {MAX_CLIENTS} client pods")]
    Clients { clients: u8 },
    #[error("failed to run {command}: {source}")]
    Spawn {
        command: String,
        source: std::io::Error,
    },
    #[error("{command} failed ({status}): {stderr}")]
    Command {
        command: String,
        status: String,
        stderr: String,
    },
    #[error("failed to work in network namespace {netns}: {source}")]
    Netns { netns: String, source: netns::Error },
    #[error("failed to write or read {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("failed to parse the lab state {path}: {source}")]
    State {
        path: PathBuf,
        source: serde_json::Error,
    },
    #[error("the lab {prefix} is down: run `tracer lab up` first")]
    NotUp { prefix: String },
    #[error("fault {fault} is already active: `tracer lab fault clear` first")]
    FaultActive { fault: String },
    #[error("fault {fault} does not take --pod")]
    PodNotAllowed { fault: String },
    #[error("there is no DNS pod {pod}: the DNS pods are 0 and 1")]
    NoSuchPod { pod: u8 },
    #[error("the DNS server of pod dns{pod} did not answer within {within:?} of starting")]
    NotReady {
        pod: u8,
        within: std::time::Duration,
    },
    #[error("failed to send DNS queries: {source}")]
    Measure { source: measure::Error },
    #[error("failed to change the conntrack table of {netns}: {source}")]
    Conntrack {
        netns: String,
        source: crate::node::conntrack::Error,
    },
    #[error("{what}")]
    Fault { what: String },
    #[error(
        "invalid pod name {name:?}: use 1 to 6 lowercase letters and digits, starting with a letter"
    )]
    PodName { name: String },
    #[error("the lab already has an added pod {name}")]
    PodExists { name: String },
    #[error("the lab has no added pod {name} (`tracer lab status` lists them)")]
    NoSuchAddedPod { name: String },
    #[error("the lab has {most} added pods already, as many as it has addresses for")]
    PodsFull { most: u8 },
    #[error(
        "--proxy-mode nftables writes kube-proxy's nftables table, which needs the nft backend: drop --backend legacy"
    )]
    ModeBackend,
    #[error(
        "--proxy-mode nftables writes kube-proxy's IPv4 table only (table ip kube-proxy): use --ip-family ipv4 with it"
    )]
    ModeFamily,
    #[error(
        "--nodelocal models node-cache in kube-proxy's iptables mode over IPv4: drop --proxy-mode and --ip-family"
    )]
    NodeLocalShape,
    #[error("the NodeLocal DNSCache did not answer within {within:?} of starting")]
    CacheNotReady { within: std::time::Duration },
    #[error("fault {fault} does not apply to kube-proxy's {mode} mode: {why}")]
    NotInMode {
        fault: String,
        mode: ProxyMode,
        why: &'static str,
    },
    #[error(
        "--proxy-mode ipvs writes kube-proxy's IPv4 virtual services only: use --ip-family ipv4 with it"
    )]
    IpvsFamily,
    #[error("--proxy-mode ipvs needs IPVS in the kernel: {source}")]
    Ipvs { source: crate::node::ipvs::Error },
}

/// A pod of the lab.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pod {
    /// Short name: `dns0`, `dns1`, `client0`, ...
    pub name: String,
    /// Its network namespace (`{prefix}-dns0`).
    pub netns: String,
    /// Its address.
    pub ip: Ipv4Addr,
    /// The node side of its veth, on the bridge (`{prefix}d0`).
    pub host_ifname: String,
}

/// A running lab, as the tracer and the tests see it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LabInfo {
    /// The prefix of every name the lab made.
    pub prefix: String,
    /// Where kube-proxy's rules live.
    pub backend: Backend,
    /// kube-proxy's mode: iptables rules, or its nftables table.
    pub proxy_mode: ProxyMode,
    /// The node's network namespace (`{prefix}-node`).
    pub node_netns: String,
    /// The DNS Service's cluster IP.
    pub service_ip: Ipv4Addr,
    /// The DNS Service's port.
    pub dns_port: u16,
    /// The families of the Service and the pods' addresses (`SERVICE_IP6`, [`pod_ip6`]).
    pub ip_family: IpFamily,
    /// The DNS pods (the Service's endpoints when healthy): dns0, dns1.
    pub endpoints: Vec<Pod>,
    /// The client pods: client0, ...
    pub clients: Vec<Pod>,
    /// Client pods added to the running lab (`tracer lab pod add`), in the order they were added.
    pub pods: Vec<Pod>,
    /// The active faults, in the order they were applied.
    pub faults: Vec<FaultName>,
    /// While stale-conntrack is active: the client0 source port whose UDP conntrack entry still
    /// points to the removed endpoint (send from it to see the fault; the entry lives 30 s past
    /// its last packet).
    pub stale_source_port: Option<u16>,
    /// NodeLocal DNSCache, when the lab runs it (`--nodelocal`).
    pub nodelocal: Option<NodeLocal>,
}

/// What the state file keeps.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
struct State {
    backend: Backend,
    /// kube-proxy's mode (absent in older state files: iptables).
    #[serde(default)]
    proxy_mode: ProxyMode,
    clients: u8,
    faults: Vec<ActiveFault>,
    /// Client pods added to the running lab (absent in older state files).
    #[serde(default)]
    pods: Vec<pods::AddedPod>,
    /// IPv4, IPv6 or both (absent in older state files: IPv4).
    #[serde(default)]
    ip_family: IpFamily,
    /// Whether NodeLocal DNSCache runs (absent in older state files: no).
    #[serde(default)]
    nodelocal: bool,
}

#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
struct ActiveFault {
    name: FaultName,
    /// The DNS pod it applies to, where it is per pod (None: both pods, for filter-drop).
    pod: Option<u8>,
    /// stale-conntrack: the client source port of the stale entry.
    source_port: Option<u16>,
    /// throttled-server: the node's `nf_conntrack_udp_timeout` before the fault (absent in
    /// older state files).
    #[serde(default)]
    udp_timeout: Option<String>,
}

/// The lab's state directory.
pub fn state_dir(prefix: &str) -> PathBuf {
    Path::new(STATE_ROOT).join(prefix)
}

fn state_path(prefix: &str) -> PathBuf {
    state_dir(prefix).join("state.json")
}

fn validate_prefix(prefix: &str) -> Result<(), Error> {
    let ok = !prefix.is_empty()
        && prefix.len() <= MAX_PREFIX
        && prefix.starts_with(|c: char| c.is_ascii_lowercase())
        && prefix
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit());
    if ok {
        Ok(())
    } else {
        Err(Error::Prefix {
            prefix: prefix.to_owned(),
        })
    }
}

fn read_state(prefix: &str) -> Result<Option<State>, Error> {
    let path = state_path(prefix);
    let text = match std::fs::read_to_string(&path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(source) => return Err(Error::Io { path, source }),
    };
    serde_json::from_str(&text)
        .map(Some)
        .map_err(|source| Error::State { path, source })
}

fn write_state(prefix: &str, state: &State) -> Result<(), Error> {
    let path = state_path(prefix);
    let text = serde_json::to_string_pretty(state).map_err(|source| Error::State {
        path: path.clone(),
        source,
    })?;
    std::fs::write(&path, text).map_err(|source| Error::Io { path, source })
}

/// The lab's state when it is up (state file and node namespace both present).
fn up_state(prefix: &str) -> Result<State, Error> {
    validate_prefix(prefix)?;
    match read_state(prefix)? {
        Some(state) if netns::named(&topology::node_netns(prefix)).exists() => Ok(state),
        _ => Err(Error::NotUp {
            prefix: prefix.to_owned(),
        }),
    }
}

fn lab_info(prefix: &str, state: &State) -> LabInfo {
    let endpoints = (0..2u8)
        .map(|i| Pod {
            name: format!("dns{i}"),
            netns: topology::pod_netns(prefix, &format!("dns{i}")),
            ip: topology::DNS_IPS[usize::from(i)],
            host_ifname: topology::dns_host_ifname(prefix, i),
        })
        .collect();
    let clients = (0..state.clients)
        .map(|i| Pod {
            name: format!("client{i}"),
            netns: topology::pod_netns(prefix, &format!("client{i}")),
            ip: Ipv4Addr::new(10, 244, 0, topology::FIRST_CLIENT + i),
            host_ifname: topology::client_host_ifname(prefix, i),
        })
        .collect();
    LabInfo {
        prefix: prefix.to_owned(),
        backend: state.backend,
        proxy_mode: state.proxy_mode,
        node_netns: topology::node_netns(prefix),
        service_ip: SERVICE_IP,
        dns_port: DNS_PORT,
        ip_family: state.ip_family,
        endpoints,
        clients,
        pods: pods::of(prefix, state),
        faults: state.faults.iter().map(|f| f.name).collect(),
        stale_source_port: state.faults.iter().find_map(|f| f.source_port),
        nodelocal: state.nodelocal.then(|| nodelocal::info(&state_dir(prefix))),
    }
}

/// The lab with this prefix, or `None` when it is down.
pub fn info(prefix: &str) -> Result<Option<LabInfo>, Error> {
    match up_state(prefix) {
        Ok(state) => Ok(Some(lab_info(prefix, &state))),
        Err(Error::NotUp { .. }) => Ok(None),
        Err(e) => Err(e),
    }
}

/// Brings the lab up with kube-proxy's rules in `backend` and `clients` client pods, after
/// removing whatever an earlier (possibly killed) run with this prefix left. On failure, removes
/// what it made.
pub fn up(prefix: &str, backend: Backend, clients: u8) -> Result<LabInfo, Error> {
    up_with(
        prefix,
        &Shape {
            backend,
            clients,
            ..Shape::default()
        },
    )
}

/// How a lab is built: `up`'s arguments and the options `lab up` adds.
#[derive(Debug, Clone, Copy)]
pub struct Shape {
    /// Where kube-proxy's iptables rules live.
    pub backend: Backend,
    /// Client pods.
    pub clients: u8,
    /// kube-proxy's mode; nftables mode needs the nft backend, ipvs mode IPVS in the kernel.
    pub proxy_mode: ProxyMode,
    /// The Service's and the queries' address family.
    pub ip_family: IpFamily,
    /// Run NodeLocal DNSCache (iptables mode, IPv4 only).
    pub nodelocal: bool,
}

impl Default for Shape {
    fn default() -> Self {
        Shape {
            backend: Backend::Nft,
            clients: 1,
            proxy_mode: ProxyMode::Iptables,
            ip_family: IpFamily::Ipv4,
            nodelocal: false,
        }
    }
}

/// [`up`] in any [`Shape`].
pub fn up_with(prefix: &str, shape: &Shape) -> Result<LabInfo, Error> {
    let Shape {
        backend,
        clients,
        proxy_mode,
        ip_family,
        nodelocal,
    } = *shape;
    validate_prefix(prefix)?;
    if proxy_mode == ProxyMode::Nftables && backend == Backend::Legacy {
        return Err(Error::ModeBackend);
    }
    if proxy_mode == ProxyMode::Nftables && ip_family != IpFamily::Ipv4 {
        return Err(Error::ModeFamily);
    }
    if nodelocal && (proxy_mode != ProxyMode::Iptables || ip_family != IpFamily::Ipv4) {
        return Err(Error::NodeLocalShape);
    }
    if proxy_mode == ProxyMode::Ipvs && ip_family != IpFamily::Ipv4 {
        return Err(Error::IpvsFamily);
    }
    if clients == 0 || clients > MAX_CLIENTS {
        return Err(Error::Clients { clients });
    }
    if proxy_mode == ProxyMode::Ipvs {
        ipvs::check()?;
    }
    down(prefix)?;
    let state = State {
        backend,
        proxy_mode,
        clients,
        faults: Vec::new(),
        pods: Vec::new(),
        ip_family,
        nodelocal,
    };
    let built = build(prefix, &state);
    // SIGINT or SIGTERM while it came up (`main` made them a stop request; the terminal's also
    // reached the commands it ran, which then failed): a half-made lab is taken down, not kept.
    let built = match crate::process::stop_signal() {
        Some(signal) => Err(Error::Interrupted {
            signal,
            prefix: prefix.to_owned(),
        }),
        None => built,
    };
    if let Err(e) = built {
        let _ = down(prefix);
        return Err(e);
    }
    Ok(lab_info(prefix, &state))
}

fn build(prefix: &str, state: &State) -> Result<(), Error> {
    let dir = state_dir(prefix);
    std::fs::create_dir_all(&dir).map_err(|source| Error::Io {
        path: dir.clone(),
        source,
    })?;
    topology::create_node(prefix)?;
    family::setup_node(prefix, state.ip_family)?;
    if state.proxy_mode == ProxyMode::Ipvs {
        ipvs::setup_node(prefix)?;
    }
    for pod in 0..2u8 {
        let name = format!("dns{pod}");
        let ifname = topology::dns_host_ifname(prefix, pod);
        let ip = topology::DNS_IPS[usize::from(pod)];
        topology::create_pod(prefix, &name, &ifname, ip)?;
        family::setup_pod(&topology::pod_netns(prefix, &name), ip, state.ip_family)?;
    }
    for client in 0..state.clients {
        let ip = Ipv4Addr::new(10, 244, 0, topology::FIRST_CLIENT + client);
        let ifname = topology::client_host_ifname(prefix, client);
        let name = format!("client{client}");
        topology::create_pod(prefix, &name, &ifname, ip)?;
        family::setup_pod(&topology::pod_netns(prefix, &name), ip, state.ip_family)?;
    }
    fault::load_rules(prefix, state)?;
    write_state(prefix, state)?;
    for pod in 0..2u8 {
        dns::start(prefix, &dir, pod)?;
    }
    if state.nodelocal {
        nodelocal::create_link(prefix)?;
        nodelocal::start(prefix, &dir)?;
    }
    family::settle(prefix, state.ip_family)
}

/// Removes every namespace, interface, rule and process of the lab, and its state directory.
/// Fine when the lab is already down.
pub fn down(prefix: &str) -> Result<(), Error> {
    validate_prefix(prefix)?;
    let dir = state_dir(prefix);
    for pod in 0..2u8 {
        dns::stop(&dir, pod)?;
    }
    nodelocal::stop(&dir)?;
    let namespaces = topology::existing_netns(prefix)?;
    for ns in &namespaces {
        for pid in topology::netns_pids(ns)? {
            dns::terminate(pid);
        }
    }
    for ns in &namespaces {
        topology::delete_netns(ns)?;
    }
    match std::fs::remove_dir_all(&dir) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(Error::Io {
            path: dir,
            source: e,
        }),
        _ => Ok(()),
    }
}

/// Applies a fault. `pod` picks the DNS pod (0 or 1) for the per-pod faults: filter-drop and
/// policy-drop (both pods without it), pod-down, pod-link-down, stale-conntrack, endpoint-churn,
/// server-overload and throttled-server (pod 0 without it).
/// [`FaultName::Clear`] clears every fault.
pub fn fault(prefix: &str, name: FaultName, pod: Option<u8>) -> Result<(), Error> {
    if name == FaultName::Clear {
        return clear(prefix);
    }
    let mut state = up_state(prefix)?;
    if state.faults.iter().any(|f| f.name == name) {
        return Err(Error::FaultActive {
            fault: name.to_string(),
        });
    }
    if let Some(p) = pod
        && p > 1
    {
        return Err(Error::NoSuchPod { pod: p });
    }
    let active = fault::apply(prefix, &state, name, pod)?;
    state.faults.push(active);
    write_state(prefix, &state)
}

/// Clears every fault: healthy rules, links up, addresses back, DNS servers running, the
/// node's conntrack table flushed where a fault filled or poisoned it.
pub fn clear(prefix: &str) -> Result<(), Error> {
    let mut state = up_state(prefix)?;
    fault::clear(prefix, &state)?;
    state.faults.clear();
    write_state(prefix, &state)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefixes_must_fit_interface_names() {
        assert!(validate_prefix("trl").is_ok());
        assert!(validate_prefix("trt12345").is_ok());
        assert!(validate_prefix("trt123456").is_err());
        assert!(validate_prefix("").is_err());
        assert!(validate_prefix("1tr").is_err());
        assert!(validate_prefix("tr-x").is_err());
        assert!(validate_prefix("TRL").is_err());
    }

    #[test]
    fn fault_and_backend_names_are_the_cli_names() {
        use clap::ValueEnum as _;
        for f in FaultName::value_variants() {
            assert_eq!(f.to_possible_value().unwrap().get_name(), f.name());
        }
        for b in Backend::value_variants() {
            assert_eq!(b.to_possible_value().unwrap().get_name(), b.name());
        }
    }
}
