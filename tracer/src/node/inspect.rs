//! Inspection: every check an SRE runs by hand when DNS breaks on one node, read-only and
//! without eBPF (unless `--tier`), gathered into one [`Report`] whose findings come from
//! [`super::findings`] and whose rendering is [`super::render`]'s. Also the pieces `tracer trace`
//! uses: the DNS Service from the rules and its rule counters.

use std::path::{Path, PathBuf};

use serde::Serialize;

pub use super::findings::{Evidence, Finding, Severity, findings};
use super::{
    backend::{self, Backend, Backends, Saves},
    conntrack::{self, CpuStats, Entry},
    facts::{self, Facts, LinkKind},
    findings::usage_percent,
    ipvs::{self, Ipvs},
    kubeproxy::{self, DnsService, ModeEvidence, ProxyMode, RuleCounter},
    nodelocal::{self, NodeLocalCache},
};
use crate::{netns, probes::plan::Tier};

/// What failed while inspecting.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("failed to enter network namespace {path}: {source}")]
    Netns { path: PathBuf, source: netns::Error },
    #[error("failed to read the iptables backends: {source}")]
    Backend { source: backend::Error },
    #[error("failed to read the conntrack table: {source}")]
    Conntrack { source: conntrack::Error },
    #[error("failed to read the node's facts: {source}")]
    Facts { source: facts::Error },
    #[error("failed to read IPVS's virtual services: {source}")]
    Ipvs { source: ipvs::Error },
    #[error("failed to write JSON: {source}")]
    Json { source: serde_json::Error },
}

/// The DNS Service as one backend's rules describe it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DnsInBackend {
    /// The backend.
    pub backend: Backend,
    /// The Service found there.
    pub service: DnsService,
}

/// The conntrack side.
#[derive(Debug, Clone, Serialize)]
pub struct ConntrackReport {
    /// Count, max, buckets.
    pub table: conntrack::Table,
    /// count / max in percent.
    pub usage_percent: f64,
    /// Per-CPU statistics.
    pub per_cpu: Vec<CpuStats>,
    /// Their sum (`cpu` = number of CPUs).
    pub total: CpuStats,
    /// UDP entries to the DNS Service IP and port.
    pub dns_entries: usize,
    /// Of those, never replied.
    pub dns_unreplied: usize,
    /// Of those, whose reply source is no endpoint of the Service any more.
    pub dns_stale: Vec<Entry>,
}

/// Everything `tracer inspect` found.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// The namespace inspected (`None`: the tracer's own).
    pub netns: Option<PathBuf>,
    /// Kernel and node facts.
    pub facts: Facts,
    /// The iptables backends.
    pub backends: Backends,
    /// kube-proxy's mode.
    pub proxy_mode: ProxyMode,
    /// What the mode was judged from.
    pub proxy_mode_evidence: ModeEvidence,
    /// The DNS Service per backend where one was found (kube-proxy's nftables table first).
    pub dns_by_backend: Vec<DnsInBackend>,
    /// The DNS Service trace would use (from the current backend).
    pub dns_service: Option<DnsService>,
    /// The IPv6 DNS Service per backend of the `ip6tables` saves where one was found (nft
    /// first): dual-stack and IPv6 nodes.
    pub dns6_by_backend: Vec<DnsInBackend>,
    /// The IPv6 DNS Service trace would use.
    pub dns_service6: Option<DnsService>,
    /// IPVS's IPv4 virtual services with their real servers (kube-proxy's ipvs mode), read over
    /// generic netlink; empty without IPVS.
    pub ipvs_services: Vec<ipvs::Service>,
    /// Packet counters of the DNS path's rules in both backends.
    pub counters: Vec<RuleCounter>,
    /// The conntrack table.
    pub conntrack: ConntrackReport,
    /// NodeLocal DNSCache, when the node has its `nodelocaldns` link.
    pub nodelocal: Option<NodeLocalCache>,
    /// Findings, most severe first.
    pub findings: Vec<Finding>,
}

/// Runs `f` in `netns` (a path such as `/run/netns/NAME`) or, without one, on the calling thread.
pub(crate) fn in_netns<T: Send>(
    netns: Option<&Path>,
    f: impl FnOnce() -> T + Send,
) -> Result<T, Error> {
    match netns {
        Some(path) => netns::run_in(path, f).map_err(|source| Error::Netns {
            path: path.to_owned(),
            source,
        }),
        None => Ok(f()),
    }
}

/// The DNS Service in each backend's save, the current backend first.
pub(crate) fn dns_by_backend(saves: &Saves, primary: Option<Backend>) -> Vec<DnsInBackend> {
    let order = match primary {
        Some(p) => [p, backend::other(p)],
        None => [Backend::Nft, Backend::Legacy],
    };
    order
        .into_iter()
        .filter_map(|b| {
            Some(DnsInBackend {
                backend: b,
                service: kubeproxy::dns_service(saves.of(b)?)?,
            })
        })
        .collect()
}

/// The DNS Service in kube-proxy's nftables table, when there is one (its nftables mode).
fn nftables_mode_service(nft_tables: Option<&[String]>) -> Result<Option<DnsInBackend>, Error> {
    if !nft_tables.is_some_and(|t| t.iter().any(|t| t == "ip kube-proxy")) {
        return Ok(None);
    }
    let ruleset = backend::nft_json(&["list", "table", "ip", "kube-proxy"])
        .map_err(|source| Error::Backend { source })?;
    Ok(ruleset
        .and_then(|r| super::nft::dns_service(&r))
        .map(|service| DnsInBackend {
            backend: Backend::Nft,
            service,
        }))
}

/// IPVS's IPv4 virtual services (none when the kernel has no IPVS, or it is not loaded).
fn ipvs_services() -> Result<Vec<ipvs::Service>, Error> {
    match Ipvs::open() {
        Ok(mut ipvs) => ipvs.services().map_err(|source| Error::Ipvs { source }),
        Err(ipvs::Error::Unavailable { .. }) => Ok(Vec::new()),
        Err(source) => Err(Error::Ipvs { source }),
    }
}

/// The DNS Service among IPVS's virtual services (kube-proxy's ipvs mode): the UDP service on
/// port 53, its real servers the endpoints. A service without real servers is IPVS's "no
/// endpoints" (kube-proxy keeps it; IPVS refuses the query).
fn ipvs_mode_service(services: &[ipvs::Service]) -> Option<DnsService> {
    let s = services.iter().find(|s| s.protocol == 17 && s.port == 53)?;
    Some(DnsService {
        name: kubeproxy::IPVS_DNS_NAME.to_owned(),
        ip: s.addr.into(),
        port: s.port,
        svc_chain: None,
        endpoints: s
            .destinations
            .iter()
            .filter(|d| d.weight > 0)
            .map(|d| std::net::SocketAddr::from((d.addr, d.port)))
            .collect(),
        rejects: s.destinations.is_empty(),
    })
}

pub(crate) fn counters_of(saves: &Saves, service: &DnsService) -> Vec<RuleCounter> {
    let mut out = Vec::new();
    for b in [Backend::Nft, Backend::Legacy] {
        if let Some(save) = saves.of(b) {
            out.extend(kubeproxy::dns_counters(b, save, service));
        }
    }
    out
}

/// The DNS Service the rules in `netns` (default: the calling thread's) describe: from
/// kube-proxy's nftables table in its nftables mode, else from the iptables backend kube-proxy
/// currently uses, else the other. `tracer trace` uses it as its default
/// `--service`.
pub fn dns_service(netns: Option<&Path>) -> Result<Option<DnsService>, Error> {
    in_netns(netns, || {
        let saves = backend::read_saves().map_err(|source| Error::Backend { source })?;
        let legacy = saves
            .legacy
            .as_ref()
            .map(backend::Side::of)
            .unwrap_or_default();
        let nft = saves
            .nft
            .as_ref()
            .map(backend::Side::of)
            .unwrap_or_default();
        let nft_tables = backend::nft_json(&["list", "tables"])
            .map_err(|source| Error::Backend { source })?
            .map(|ruleset| ruleset.tables());
        if let Some(d) = nftables_mode_service(nft_tables.as_deref())? {
            return Ok(Some(d.service));
        }
        if let Some(s) = ipvs_mode_service(&ipvs_services()?) {
            return Ok(Some(s));
        }
        let primary = backend::verdict(&legacy, &nft).primary;
        Ok(dns_by_backend(&saves, primary)
            .into_iter()
            .next()
            .map(|d| d.service))
    })?
}

/// The packet counters of every rule on `service`'s path in both backends, in `netns`: take one
/// snapshot before and one after a window and diff them with [`kubeproxy::counter_deltas`].
pub fn dns_counters(netns: Option<&Path>, service: &DnsService) -> Result<Vec<RuleCounter>, Error> {
    in_netns(netns, || {
        let saves = backend::read_saves().map_err(|source| Error::Backend { source })?;
        Ok(counters_of(&saves, service))
    })?
}

/// Inspects `netns` (default: the calling thread's namespace). Loads no eBPF program.
pub fn inspect(netns: Option<&Path>) -> Result<Report, Error> {
    inspect_with_tier(netns, None)
}

/// `inspect`, with the hook tier found by loading the probes (trace, `inspect --tier`); without
/// one, the tier comes from the cheap feature checks and nothing is loaded.
pub fn inspect_with_tier(
    netns: Option<&Path>,
    tier: Option<(Tier, String)>,
) -> Result<Report, Error> {
    let path = netns.map(Path::to_owned);
    in_netns(netns, move || collect(tier, path))?
}

/// The report of the namespace the calling thread is in, `netns` (the findings' commands run
/// there).
fn collect(tier: Option<(Tier, String)>, netns: Option<PathBuf>) -> Result<Report, Error> {
    let facts = facts::collect(tier).map_err(|source| Error::Facts { source })?;
    let mut backends = backend::detect().map_err(|source| Error::Backend { source })?;
    let kube_ipvs0 = facts.links.iter().any(|l| l.kind == LinkKind::KubeIpvs);
    let saves = [backends.saves.legacy.as_ref(), backends.saves.nft.as_ref()];
    let proxy_mode_evidence = kubeproxy::mode_evidence(
        saves.into_iter().flatten(),
        kube_ipvs0,
        backends.nft_tables.as_deref().unwrap_or_default(),
    );
    let proxy_mode = kubeproxy::mode(&proxy_mode_evidence);
    let mut dns_by_backend = dns_by_backend(&backends.saves, backends.verdict.primary);
    if let Some(d) = nftables_mode_service(backends.nft_tables.as_deref())? {
        dns_by_backend.insert(0, d);
    }
    let ipvs_services = ipvs_services()?;
    let dns_service = match dns_by_backend.first() {
        Some(d) if proxy_mode != ProxyMode::Ipvs => Some(d.service.clone()),
        first => ipvs_mode_service(&ipvs_services).or(first.map(|d| d.service.clone())),
    };
    let counters = dns_service
        .as_ref()
        .map(|s| counters_of(&backends.saves, s))
        .unwrap_or_default();
    let dns6_by_backend = super::ipv6::dns6_by_backend(&mut backends.saves.warnings)
        .map_err(|source| Error::Backend { source })?;
    let dns_service6 = dns6_by_backend.first().map(|d| d.service.clone());

    let ct = |source| Error::Conntrack { source };
    let table = conntrack::table().map_err(ct)?;
    let per_cpu = conntrack::stats().map_err(ct)?;
    let total = CpuStats::sum(&per_cpu);
    let (mut dns_entries, mut dns_unreplied, mut dns_stale) = (0, 0, Vec::new());
    let services: Vec<&DnsService> = dns_service.iter().chain(&dns_service6).collect();
    if !services.is_empty() {
        for e in conntrack::dump().map_err(ct)? {
            let to = |s: &&&DnsService| {
                e.orig.proto == libc::IPPROTO_UDP as u8
                    && (e.orig.dst, e.orig.dport) == (s.ip, s.port)
            };
            let Some(svc) = services.iter().find(to) else {
                continue;
            };
            dns_entries += 1;
            if !e.seen_reply() {
                dns_unreplied += 1;
            }
            if is_stale(&e, svc) {
                dns_stale.push(e);
            }
        }
    }
    let nodelocal = nodelocal::find(&backends.saves);
    let usage_percent = usage_percent(&table);
    let conntrack = ConntrackReport {
        table,
        usage_percent,
        per_cpu,
        total,
        dns_entries,
        dns_unreplied,
        dns_stale,
    };
    let mut report = Report {
        netns,
        facts,
        backends,
        proxy_mode,
        proxy_mode_evidence,
        dns_by_backend,
        dns_service,
        dns6_by_backend,
        dns_service6,
        ipvs_services,
        counters,
        conntrack,
        nodelocal,
        findings: Vec::new(),
    };
    report.findings = findings(&report);
    Ok(report)
}

/// An entry to the Service whose reply comes from an address that is no endpoint (and not the
/// Service itself, which would be an entry without DNAT).
pub fn is_stale(e: &Entry, svc: &DnsService) -> bool {
    let src = e.reply.src;
    src != svc.ip && !svc.endpoint_ips().contains(&src)
}

#[cfg(test)]
pub(crate) mod tests {
    use std::net::{IpAddr, Ipv4Addr, SocketAddr};

    use super::*;
    use crate::node::{
        conntrack::{Tuple, status},
        findings::entry_line,
    };

    fn svc() -> DnsService {
        DnsService {
            name: kubeproxy::DNS_PORT_NAME.to_owned(),
            ip: Ipv4Addr::new(10, 96, 0, 10).into(),
            port: 53,
            svc_chain: Some("KUBE-SVC-TCOU7JCQXEZGVUNU".into()),
            endpoints: vec![SocketAddr::from((Ipv4Addr::new(10, 244, 0, 11), 53))],
            rejects: false,
        }
    }

    /// A DNS conntrack entry from a client to the Service, answered by `reply_src`.
    pub(crate) fn entry(reply_src: [u8; 4]) -> Entry {
        let t = |src: [u8; 4], dst: [u8; 4], sport, dport| Tuple {
            src: IpAddr::from(src),
            dst: IpAddr::from(dst),
            proto: 17,
            sport,
            dport,
        };
        Entry {
            orig: t([10, 244, 0, 2], [10, 96, 0, 10], 40053, 53),
            reply: t(reply_src, [10, 244, 0, 2], 53, 40053),
            status: status::ASSURED | status::SEEN_REPLY,
            timeout: Some(100),
            mark: 0,
            id: Some(1),
            zone: 0,
        }
    }

    #[test]
    fn stale_means_the_reply_comes_from_no_endpoint() {
        assert!(
            is_stale(&entry([10, 244, 0, 10]), &svc()),
            "10.244.0.10 was removed"
        );
        assert!(!is_stale(&entry([10, 244, 0, 11]), &svc()));
        assert!(
            !is_stale(&entry([10, 96, 0, 10]), &svc()),
            "not NATed is not stale"
        );
    }

    #[test]
    fn entry_line_names_flags() {
        let mut e = entry([10, 244, 0, 10]);
        e.status = 0;
        let line = entry_line(&e);
        assert!(
            line.contains(
                "10.244.0.2:40053 -> 10.96.0.10:53 reply from 10.244.0.10:53 [UNREPLIED]"
            ),
            "{line}"
        );
    }
}
