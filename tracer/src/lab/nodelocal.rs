//! NodeLocal DNSCache (`lab up --nodelocal`): what kubernetes/dns `node-cache` sets up on a node
//! in kube-proxy's iptables mode. A link `nodelocaldns` holds 169.254.20.10 and the kube-dns
//! ClusterIP; a caching DNS server in the node namespace listens on both and sends misses to
//! `kube-dns-upstream`, a Service of its own over the CoreDNS pods; NOTRACK rules in raw and
//! ACCEPT rules in filter let queries to those addresses skip conntrack and so kube-proxy's DNAT
//! (rendered with kube-proxy's rules in `rules`).
//!
//! The cache is dnsmasq (node-cache is CoreDNS with `cache` and `forward`): `--min-cache-ttl`
//! keeps the pods' TTL-0 answers 30 s (as node-cache's `cache 30` does for CoreDNS's 5 s), and
//! `--neg-ttl` keeps NXDOMAIN answers as long. Misses go upstream over UDP (node-cache forces
//! TCP: KNOWN_ISSUES.md).

use std::{
    net::{IpAddr, Ipv4Addr, SocketAddr},
    path::{Path, PathBuf},
    thread,
    time::{Duration, Instant},
};

use super::{Error, SERVICE_IP, dns, rules::NodeLocalRules, topology};
use crate::measure::{self, BatchSpec, Outcome, RecordType};

/// The link-local address NodeLocal DNSCache listens on (the documented default).
pub const NODELOCAL_IP: Ipv4Addr = Ipv4Addr::new(169, 254, 20, 10);
/// The ClusterIP of `kube-system/kube-dns-upstream`.
pub const UPSTREAM_IP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 11);
/// The link node-cache creates for its addresses.
pub const LINK: &str = "nodelocaldns";
/// A name the lab asks the cache while it starts (a miss, cached as NXDOMAIN from then on).
pub const READY_NAME: &str = "nodelocal-ready.cluster.local";
/// How long the cache may take to answer after dnsmasq started.
const READY_WITHIN: Duration = Duration::from_secs(5);
/// How long the cache keeps an answer (node-cache's `cache 30`).
const CACHE_SECONDS: u32 = 30;

/// The cache, as `lab status`, the tracer and the tests see it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeLocal {
    /// The link holding the cache's addresses (`nodelocaldns`).
    pub link: String,
    /// The addresses the cache listens on (port 53): 169.254.20.10 and the kube-dns ClusterIP.
    pub local_ips: Vec<Ipv4Addr>,
    /// The ClusterIP the cache sends its misses to (`kube-dns-upstream`).
    pub upstream_ip: Ipv4Addr,
    /// The cache's query log (every query, and whether it was cached or forwarded).
    pub log: PathBuf,
    /// The cache's pid, when it runs.
    pub pid: Option<i32>,
}

/// The addresses the cache listens on.
pub fn local_ips() -> Vec<Ipv4Addr> {
    vec![NODELOCAL_IP, SERVICE_IP]
}

/// The rules node-cache adds, for kube-proxy's rule set.
pub fn rules() -> NodeLocalRules {
    NodeLocalRules {
        local_ips: local_ips().into_iter().map(IpAddr::from).collect(),
        upstream_ip: UPSTREAM_IP.into(),
    }
}

fn pid_file(state_dir: &Path) -> PathBuf {
    state_dir.join("nodelocal.pid")
}

fn log_file(state_dir: &Path) -> PathBuf {
    state_dir.join("nodelocal.log")
}

/// The cache of the lab whose state is in `state_dir`.
pub fn info(state_dir: &Path) -> NodeLocal {
    NodeLocal {
        link: LINK.to_owned(),
        local_ips: local_ips(),
        upstream_ip: UPSTREAM_IP,
        log: log_file(state_dir),
        pid: dns::pid_at(&pid_file(state_dir)),
    }
}

/// Creates the `nodelocaldns` link with the cache's addresses in the node namespace. node-cache
/// makes a `dummy` link; kernels without the dummy driver get an `ifb` link, which holds local
/// addresses the same way (packets to them never reach the link).
pub fn create_link(prefix: &str) -> Result<(), Error> {
    let node = topology::node_netns(prefix);
    let ip = |args: &[&str]| topology::run("ip", &[&["-n", node.as_str()], args].concat());
    if ip(&["link", "add", LINK, "type", "dummy"]).is_err() {
        ip(&["link", "add", LINK, "type", "ifb"])?;
    }
    for addr in local_ips() {
        ip(&["addr", "add", &format!("{addr}/32"), "dev", LINK])?;
    }
    ip(&["link", "set", LINK, "up"]).map(drop)
}

/// Starts the cache in the node namespace and waits until it answers.
pub fn start(prefix: &str, state_dir: &Path) -> Result<(), Error> {
    let node = topology::node_netns(prefix);
    let mut args = vec![
        "--conf-file=/dev/null".to_owned(),
        "--no-resolv".to_owned(),
        "--no-hosts".to_owned(),
        "--no-poll".to_owned(),
        "--bind-interfaces".to_owned(),
        format!("--server={UPSTREAM_IP}"),
        "--cache-size=10000".to_owned(),
        format!("--min-cache-ttl={CACHE_SECONDS}"),
        format!("--neg-ttl={CACHE_SECONDS}"),
        "--log-queries".to_owned(),
        format!("--pid-file={}", pid_file(state_dir).display()),
        format!("--log-facility={}", log_file(state_dir).display()),
    ];
    args.extend(
        local_ips()
            .iter()
            .map(|ip| format!("--listen-address={ip}")),
    );
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    topology::run_in(&node, dns::DNSMASQ, &args, None)?;
    wait_ready(&node)
}

fn wait_ready(node: &str) -> Result<(), Error> {
    let spec = BatchSpec {
        names: vec![READY_NAME.to_owned()],
        qtypes: vec![RecordType::A],
        count: 1,
        rate: 1.0,
        timeout: Duration::from_millis(300),
        source_port: None,
        parallel_a_aaaa: false,
    };
    let deadline = Instant::now() + READY_WITHIN;
    while Instant::now() < deadline {
        let result = measure::query_batch(Some(node), SocketAddr::from((NODELOCAL_IP, 53)), &spec)
            .map_err(|source| Error::Measure { source })?;
        if let Some(Outcome::Answered { .. }) = result.queries.first().map(|q| &q.outcome) {
            return Ok(());
        }
        thread::sleep(Duration::from_millis(100));
    }
    Err(Error::CacheNotReady {
        within: READY_WITHIN,
    })
}

/// Stops the cache; fine when it is not running.
pub fn stop(state_dir: &Path) -> Result<(), Error> {
    let path = pid_file(state_dir);
    if let Some(pid) = dns::pid_at(&path) {
        dns::terminate(pid);
    }
    match std::fs::remove_file(&path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(Error::Io { path, source: e }),
        _ => Ok(()),
    }
}
