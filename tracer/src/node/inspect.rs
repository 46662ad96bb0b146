//! `tracer inspect`: every check an SRE runs by hand when DNS breaks on one node, read-only,
//! turned into findings (severity, evidence, suggested action), rendered as text or JSON. Also the
//! pieces `tracer trace` uses: the DNS Service from the rules and its rule counters.

use std::{
    net::Ipv4Addr,
    path::{Path, PathBuf},
};

use comfy_table::{ContentArrangement, Table, presets::UTF8_BORDERS_ONLY};
use serde::Serialize;

use super::{
    backend::{self, Backends, Kind, Saves},
    conntrack::{self, CpuStats, Entry},
    facts::{self, Facts, LinkKind},
    kubeproxy::{self, DnsService, ModeEvidence, ProxyMode, RuleCounter},
};
use crate::{
    cli::{Backend, InspectArgs, OutputFormat},
    netns,
    probes::plan::Tier,
};

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
    #[error("failed to write JSON: {source}")]
    Json { source: serde_json::Error },
    #[error("failed to read the state of lab {prefix}: {source}")]
    Lab {
        prefix: String,
        source: crate::lab::Error,
    },
    #[error("lab {prefix} is not up (`tracer lab up --prefix {prefix}`)")]
    NoLab { prefix: String },
    #[error("failed to load the eBPF programs to find the hook tier: {source}")]
    Tier {
        source: Box<crate::probes::session::Error>,
    },
    #[error(transparent)]
    Report {
        source: Box<crate::report::document::Error>,
    },
}

/// `tracer inspect`: inspects the namespace the arguments name and prints the report.
pub fn run(args: InspectArgs) -> Result<(), Error> {
    let netns = if args.lab {
        let info = crate::lab::info(&args.prefix)
            .map_err(|source| Error::Lab {
                prefix: args.prefix.clone(),
                source,
            })?
            .ok_or_else(|| Error::NoLab {
                prefix: args.prefix.clone(),
            })?;
        Some(netns::named(&info.node_netns))
    } else {
        args.netns.as_deref().map(netns::named)
    };
    // The load test runs here, outside the inspected namespace: loading attaches nothing.
    let tier = if args.tier {
        let features = crate::kernel::features::Features::detect();
        Some(
            crate::probes::detect_tier(&features).map_err(|source| Error::Tier {
                source: Box::new(source),
            })?,
        )
    } else {
        None
    };
    let report = inspect_with_tier(netns.as_deref(), tier)?;
    match args.out.format {
        OutputFormat::Text => print!("{}", report.render_text()),
        OutputFormat::Json => println!("{}", report.render_json()?),
    }
    if let Some(path) = &args.out.report {
        crate::report::document::write_inspect_report(path, &report).map_err(|source| {
            Error::Report {
                source: Box::new(source),
            }
        })?;
    }
    Ok(())
}

/// How bad a finding is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    /// DNS breaks (or will) because of this.
    Error,
    /// May break DNS, or hides a problem.
    Warning,
    /// What the node is.
    Info,
}

/// One finding.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Finding {
    /// How bad.
    pub severity: Severity,
    /// A stable short id (`iptables-mixed`, `conntrack-full`, …).
    pub id: &'static str,
    /// One line saying what is the case.
    pub title: String,
    /// What was seen, one fact a line.
    pub evidence: Vec<String>,
    /// What to do about it.
    pub action: Option<String>,
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
    /// Packet counters of the DNS path's rules in both backends.
    pub counters: Vec<RuleCounter>,
    /// The conntrack table.
    pub conntrack: ConntrackReport,
    /// Findings, most severe first.
    pub findings: Vec<Finding>,
}

/// Runs `f` in `netns` (a path such as `/run/netns/NAME`) or, without one, on the calling thread.
fn in_netns<T: Send>(netns: Option<&Path>, f: impl FnOnce() -> T + Send) -> Result<T, Error> {
    match netns {
        Some(path) => netns::run_in(path, f).map_err(|source| Error::Netns {
            path: path.to_owned(),
            source,
        }),
        None => Ok(f()),
    }
}

/// The DNS Service in each backend's save, the current backend first.
fn dns_by_backend(saves: &Saves, primary: Option<Backend>) -> Vec<DnsInBackend> {
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
    let out = backend::run("nft", &["list", "table", "ip", "kube-proxy"])
        .map_err(|source| Error::Backend { source })?;
    Ok(out
        .and_then(|(text, _)| kubeproxy::dns_service_nftables(&text))
        .map(|service| DnsInBackend {
            backend: Backend::Nft,
            service,
        }))
}

fn counters_of(saves: &Saves, service: &DnsService) -> Vec<RuleCounter> {
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
        let nft_tables = backend::run("nft", &["list", "tables"])
            .map_err(|source| Error::Backend { source })?
            .map(|(out, _)| backend::parse_nft_tables(&out));
        if let Some(d) = nftables_mode_service(nft_tables.as_deref())? {
            return Ok(Some(d.service));
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
    let mut report = in_netns(netns, move || collect(tier))??;
    report.netns = netns.map(Path::to_owned);
    Ok(report)
}

fn collect(tier: Option<(Tier, String)>) -> Result<Report, Error> {
    let facts = facts::collect(tier).map_err(|source| Error::Facts { source })?;
    let backends = backend::detect().map_err(|source| Error::Backend { source })?;
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
    let dns_service = dns_by_backend.first().map(|d| d.service.clone());
    let counters = dns_service
        .as_ref()
        .map(|s| counters_of(&backends.saves, s))
        .unwrap_or_default();

    let ct = |source| Error::Conntrack { source };
    let table = conntrack::table().map_err(ct)?;
    let per_cpu = conntrack::stats().map_err(ct)?;
    let total = CpuStats::sum(&per_cpu);
    let (mut dns_entries, mut dns_unreplied, mut dns_stale) = (0, 0, Vec::new());
    if let Some(svc) = &dns_service {
        for e in conntrack::dump_udp(svc.port).map_err(ct)? {
            if e.orig.dst != std::net::IpAddr::V4(svc.ip) {
                continue;
            }
            dns_entries += 1;
            if !e.seen_reply() {
                dns_unreplied += 1;
            }
            if is_stale(&e, svc) {
                dns_stale.push(e);
            }
        }
    }
    let usage_percent = if table.max == 0 {
        0.0
    } else {
        f64::from(table.count) * 100.0 / f64::from(table.max)
    };
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
        netns: None,
        facts,
        backends,
        proxy_mode,
        proxy_mode_evidence,
        dns_by_backend,
        dns_service,
        counters,
        conntrack,
        findings: Vec::new(),
    };
    report.findings = findings(&report);
    Ok(report)
}

/// An entry to the Service whose reply comes from an address that is no endpoint (and not the
/// Service itself, which would be an entry without DNAT).
pub fn is_stale(e: &Entry, svc: &DnsService) -> bool {
    match e.reply.src {
        std::net::IpAddr::V4(src) => src != svc.ip && !svc.endpoint_ips().contains(&src),
        std::net::IpAddr::V6(_) => false,
    }
}

fn backend_name(b: Backend) -> &'static str {
    match b {
        Backend::Legacy => "legacy",
        Backend::Nft => "nft",
    }
}

fn endpoints_text(s: &DnsService) -> String {
    if s.endpoints.is_empty() {
        "no endpoints".to_owned()
    } else {
        s.endpoints
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join(", ")
    }
}

fn side_evidence(name: &str, side: &backend::Side) -> String {
    if !side.available {
        return format!("{name}: save not available (tool not installed)");
    }
    let hints = if side.hint_chains.is_empty() {
        "no kubelet hint chains".to_owned()
    } else {
        side.hint_chains.join(" ")
    };
    format!(
        "{name}: {} KUBE-* rules of {} rules in tables [{}], {} KUBE-* chains; {hints}",
        side.kube_rules,
        side.rules,
        side.tables.join(" "),
        side.kube_chains
    )
}

/// Turns a report into findings, most severe first.
pub fn findings(r: &Report) -> Vec<Finding> {
    let mut out = Vec::new();
    let b = &r.backends;
    let mut backend_evidence = vec![
        format!(
            "iptables link chain: {}",
            b.iptables_links
                .iter()
                .map(|p| p.display().to_string())
                .collect::<Vec<_>>()
                .join(" -> ")
        ),
        format!(
            "iptables -V: {}",
            b.version.as_deref().unwrap_or("(not installed)")
        ),
        format!(
            "legacy tables in the kernel: {}",
            b.legacy_tables
                .as_ref()
                .map_or("(ip_tables not loaded)".to_owned(), |t| format!(
                    "[{}]",
                    t.join(" ")
                ))
        ),
        format!(
            "nf_tables tables: {}",
            b.nft_tables
                .as_ref()
                .map_or("(nft not installed)".to_owned(), |t| format!(
                    "[{}]",
                    t.join(", ")
                ))
        ),
        side_evidence("legacy", &b.legacy),
        side_evidence("nft", &b.nft),
    ];
    backend_evidence.extend(b.warnings.iter().cloned());
    match b.verdict.kind {
        Kind::Mixed => {
            let mut evidence = backend_evidence.clone();
            for d in &r.dns_by_backend {
                evidence.push(format!(
                    "{}: {} {}:{} -> {}",
                    backend_name(d.backend),
                    d.service.name,
                    d.service.ip,
                    d.service.port,
                    endpoints_text(&d.service)
                ));
            }
            let stale = b
                .verdict
                .stale
                .map(backend_name)
                .unwrap_or("the one kube-proxy does not use");
            out.push(Finding {
                severity: Severity::Error,
                id: "iptables-mixed",
                title: format!("kube-proxy rules in both iptables backends: {}", b.verdict),
                evidence,
                action: Some(format!(
                    "Both backends hook NAT at the same priority; for a new UDP flow the table registered \
                     last runs first and its DNAT wins, so DNS queries to the Service IP go wherever the \
                     stale rules say (a gone pod, or a DROP/REJECT), and conntrack then pins the client's \
                     flow there until its UDP timeout. Remove the rules from the {stale} backend \
                     (`iptables-{stale}-save` to review, then flush its nat/filter/mangle KUBE-* chains), make \
                     kube-proxy, the kubelet and the CNI use one backend (iptables-wrapper, matching \
                     /etc/alternatives), then delete the UDP/53 conntrack entries \
                     (`conntrack -D -p udp --dport 53`)."
                )),
            });
        }
        Kind::None if r.proxy_mode == ProxyMode::Iptables || r.proxy_mode == ProxyMode::Unknown => {
            out.push(Finding {
                severity: Severity::Warning,
                id: "iptables-no-kube-rules",
                title: format!(
                    "no kube-proxy rules in either iptables backend ({})",
                    b.verdict
                ),
                evidence: backend_evidence.clone(),
                action: Some(
                    "Check that kube-proxy runs on this node and which mode it uses.".to_owned(),
                ),
            });
        }
        _ => {
            out.push(Finding {
                severity: Severity::Info,
                id: "iptables-backend",
                title: format!("iptables backend: {}", b.verdict),
                evidence: backend_evidence.clone(),
                action: None,
            });
            if let Some(stale) = b.verdict.stale {
                out.push(Finding {
                    severity: Severity::Warning,
                    id: "iptables-stale",
                    title: format!("the {} backend holds leftover KUBE-* chains", backend_name(stale)),
                    evidence: vec![side_evidence(backend_name(stale), if stale == Backend::Legacy { &b.legacy } else { &b.nft })],
                    action: Some(format!(
                        "Harmless while they hold no rules; delete them (`iptables-{}` -X on the empty KUBE-* chains) so no tool counts them as a sign of that backend.",
                        backend_name(stale)
                    )),
                });
            }
        }
    }
    if let Some(primary) = b.verdict.primary {
        let tool = b.link_backend.or(b.version_backend);
        if let Some(tool) = tool.filter(|t| *t != primary) {
            out.push(Finding {
                severity: Severity::Warning,
                id: "iptables-default-differs",
                title: format!(
                    "`iptables` on this node is {} but kube-proxy's rules are in {}",
                    backend_name(tool),
                    backend_name(primary)
                ),
                evidence: vec![backend_evidence[0].clone(), backend_evidence[1].clone()],
                action: Some(
                    "Rules added by hand or by node tools with plain `iptables` land in the other backend, and `iptables-save` does not show kube-proxy's. Point /etc/alternatives/iptables at the backend kube-proxy uses.".to_owned(),
                ),
            });
        }
        if b.wrapper_choice != primary {
            out.push(Finding {
                severity: Severity::Warning,
                id: "iptables-wrapper-choice",
                title: format!(
                    "kube-proxy's iptables-wrapper would pick {}, but the current rules are in {}",
                    backend_name(b.wrapper_choice),
                    backend_name(primary)
                ),
                evidence: vec![side_evidence("legacy", &b.legacy), side_evidence("nft", &b.nft)],
                action: Some("A restarted kube-proxy container would write to the other backend: remove the stray hint chains or rules.".to_owned()),
            });
        }
    }

    let mode_evidence = vec![format!(
        "KUBE-SVC-* chains: {}, KUBE-* ipsets in rules: {}, kube-ipvs0: {}, nftables table kube-proxy: {}",
        r.proxy_mode_evidence.svc_chains,
        r.proxy_mode_evidence.kube_ipsets,
        r.proxy_mode_evidence.kube_ipvs0,
        r.proxy_mode_evidence.nft_kube_proxy_table
    )];
    out.push(Finding {
        severity: Severity::Info,
        id: "kube-proxy-mode",
        title: format!("kube-proxy mode: {}", r.proxy_mode),
        evidence: mode_evidence,
        action: None,
    });

    match &r.dns_service {
        Some(s) if s.rejects => out.push(Finding {
            severity: Severity::Error,
            id: "dns-no-endpoints",
            title: format!("the DNS Service {}:{} has no endpoints: kube-proxy rejects every query", s.ip, s.port),
            evidence: vec![format!("filter KUBE-SERVICES: \"{} has no endpoints\" -j REJECT", s.name)],
            action: Some("Check the CoreDNS pods (`kubectl -n kube-system get pods -l k8s-app=kube-dns`) and their readiness.".to_owned()),
        }),
        Some(s) => out.push(Finding {
            severity: Severity::Info,
            id: "dns-service",
            title: format!("DNS Service {} {}:{} -> {}", s.name, s.ip, s.port, endpoints_text(s)),
            evidence: r
                .counters
                .iter()
                .filter(|c| c.rule.contains("DNAT") || c.rule.starts_with("-A KUBE-SERVICES"))
                .map(|c| format!("{} {}: [{} pkts] {}", backend_name(c.backend), c.table, c.packets, c.rule))
                .collect(),
            action: None,
        }),
        None if r.proxy_mode == ProxyMode::Iptables => out.push(Finding {
            severity: Severity::Warning,
            id: "dns-service-missing",
            title: "no kube-dns Service (or any UDP/53 Service) in kube-proxy's rules".to_owned(),
            evidence: vec![],
            action: Some("Give `tracer trace --service IP` explicitly.".to_owned()),
        }),
        None => {}
    }

    let blocking: Vec<&RuleCounter> = r
        .counters
        .iter()
        .filter(|c| c.rule.ends_with(" -j DROP") || c.rule.contains(" -j REJECT"))
        .filter(|c| !c.rule.contains("has no endpoints"))
        .collect();
    if !blocking.is_empty() {
        let hit = blocking.iter().any(|c| c.packets > 0);
        out.push(Finding {
            severity: if hit { Severity::Error } else { Severity::Warning },
            id: "dns-blocking-rule",
            title: format!(
                "{} DROP/REJECT rules match DNS to the Service or its endpoints{}",
                blocking.len(),
                if hit { ", and they have matched packets" } else { "" }
            ),
            evidence: blocking
                .iter()
                .map(|c| format!("{} {}: [{} pkts] {}", backend_name(c.backend), c.table, c.packets, c.rule))
                .collect(),
            action: Some(
                "Find who added the rule (a network policy controller, a firewall manager, a hand-made rule) and remove it; `tracer trace` ties each dropped query to the rule whose counter moved.".to_owned(),
            ),
        });
    }

    let c = &r.conntrack;
    let t = &c.total;
    let stats_line = format!(
        "per-CPU stats summed over {} CPUs: insert {} insert_failed {} drop {} early_drop {} invalid {} error {} clash_resolve {} chaintoolong {}",
        t.cpu,
        t.insert,
        t.insert_failed,
        t.drop,
        t.early_drop,
        t.invalid,
        t.error,
        t.clash_resolve,
        t.chaintoolong
    );
    let size_line = format!(
        "count {} of max {} ({:.1} %), {} buckets",
        c.table.count, c.table.max, c.usage_percent, c.table.buckets
    );
    if c.table.max > 0 && c.table.count >= c.table.max {
        out.push(Finding {
            severity: Severity::Error,
            id: "conntrack-full",
            title: "the conntrack table is full: new flows (every new DNS query's) are dropped".to_owned(),
            evidence: vec![size_line.clone(), stats_line.clone()],
            action: Some(
                "Find what fills it (`conntrack -L | awk '{print $1, $4, $5}' | sort | uniq -c | sort -n`), shorten UDP timeouts, raise nf_conntrack_max (in the initial namespace), or consider NodeLocal DNSCache to keep DNS off conntrack.".to_owned(),
            ),
        });
    } else if c.usage_percent >= 90.0 {
        out.push(Finding {
            severity: Severity::Warning,
            id: "conntrack-nearly-full",
            title: format!("the conntrack table is {:.0} % full", c.usage_percent),
            evidence: vec![size_line.clone(), stats_line.clone()],
            action: Some(
                "Raise nf_conntrack_max or find what fills the table before it drops new flows."
                    .to_owned(),
            ),
        });
    }
    if t.drop > 0 || t.insert_failed > 0 || t.early_drop > 0 {
        let mut evidence = vec![stats_line.clone()];
        evidence.extend(
            c.per_cpu
                .iter()
                .filter(|s| s.drop + s.insert_failed + s.early_drop > 0)
                .map(|s| {
                    format!(
                        "cpu {}: drop {} insert_failed {} early_drop {}",
                        s.cpu, s.drop, s.insert_failed, s.early_drop
                    )
                }),
        );
        out.push(Finding {
            severity: Severity::Warning,
            id: "conntrack-drops",
            title: format!(
                "conntrack dropped {} packets, failed {} inserts and evicted {} entries since boot (or namespace creation)",
                t.drop, t.insert_failed, t.early_drop
            ),
            evidence,
            action: Some(
                "drop/early_drop come from a full table; insert_failed from unresolved clashes (parallel A/AAAA over UDP: `options single-request-reopen`, or NodeLocal DNSCache). Watch the deltas with `tracer trace`.".to_owned(),
            ),
        });
    }
    if let Some(s) = &r.dns_service {
        if !c.dns_stale.is_empty() {
            let mut gone: Vec<Ipv4Addr> = c
                .dns_stale
                .iter()
                .filter_map(|e| match e.reply.src {
                    std::net::IpAddr::V4(ip) => Some(ip),
                    std::net::IpAddr::V6(_) => None,
                })
                .collect();
            gone.sort();
            gone.dedup();
            let mut evidence = vec![format!("endpoints now: {}", endpoints_text(s))];
            evidence.extend(c.dns_stale.iter().take(5).map(entry_line));
            if c.dns_stale.len() > 5 {
                evidence.push(format!("… and {} more", c.dns_stale.len() - 5));
            }
            out.push(Finding {
                severity: Severity::Error,
                id: "conntrack-stale-dns",
                title: format!(
                    "{} UDP conntrack {} DNS clients to {} that {} no endpoint any more",
                    c.dns_stale.len(),
                    if c.dns_stale.len() == 1 { "entry sends" } else { "entries send" },
                    gone.iter().map(ToString::to_string).collect::<Vec<_>>().join(", "),
                    if gone.len() == 1 { "is" } else { "are" }
                ),
                evidence,
                action: Some(format!(
                    "A client that keeps its source port keeps hitting the gone pod until the entry expires. Delete them: {}",
                    gone.iter()
                        .map(|ip| format!("`conntrack -D -p udp --orig-dst {} --reply-src {ip}`", s.ip))
                        .collect::<Vec<_>>()
                        .join(", ")
                )),
            });
        }
        out.push(Finding {
            severity: if c.dns_entries > 0 && c.dns_unreplied * 2 > c.dns_entries {
                Severity::Warning
            } else {
                Severity::Info
            },
            id: "conntrack-dns-entries",
            title: format!(
                "{} UDP conntrack entries to the DNS Service, {} unreplied, {} stale",
                c.dns_entries,
                c.dns_unreplied,
                c.dns_stale.len()
            ),
            evidence: vec![
                size_line,
                format!(
                    "UDP timeouts: {} s unreplied, {} s assured",
                    r.facts
                        .udp_timeout
                        .map_or("?".to_owned(), |v| v.to_string()),
                    r.facts
                        .udp_timeout_stream
                        .map_or("?".to_owned(), |v| v.to_string())
                ),
            ],
            action: None,
        });
    }

    let f = &r.facts;
    let bridges: Vec<&str> = f
        .links
        .iter()
        .filter(|l| l.kind == LinkKind::Bridge)
        .map(|l| l.name.as_str())
        .collect();
    if !bridges.is_empty() && f.br_netfilter.is_none_or(|b| b.call_iptables == 0) {
        out.push(Finding {
            severity: Severity::Error,
            id: "br-netfilter-off",
            title: "bridged pod traffic bypasses iptables: answers from a DNS pod on the same bridge are not un-DNATed".to_owned(),
            evidence: vec![
                format!("bridges: {}", bridges.join(", ")),
                match f.br_netfilter {
                    None => "br_netfilter not loaded (/proc/sys/net/bridge missing)".to_owned(),
                    Some(b) => format!("net.bridge.bridge-nf-call-iptables = {}", b.call_iptables),
                },
            ],
            action: Some("`modprobe br_netfilter; sysctl -w net.bridge.bridge-nf-call-iptables=1` (and persist both).".to_owned()),
        });
    }
    let strict: Vec<String> = f
        .links
        .iter()
        .filter(|l| {
            matches!(l.kind, LinkKind::Bridge | LinkKind::Veth) && l.rp_filter_effective == Some(1)
        })
        .map(|l| l.name.clone())
        .collect();
    if !strict.is_empty() {
        out.push(Finding {
            severity: Severity::Warning,
            id: "rp-filter-strict",
            title: format!("strict reverse-path filtering on {} pod-facing interfaces", strict.len()),
            evidence: vec![
                format!("net.ipv4.conf.all.rp_filter = {}", f.rp_filter_all.map_or("?".to_owned(), |v| v.to_string())),
                format!("rp_filter 1 (effective) on: {}", strict.join(", ")),
            ],
            action: Some("Strict mode drops packets whose source is routed elsewhere (asymmetric routes, multi-NIC pods); use 2 (loose) or 0.".to_owned()),
        });
    }
    out.push(Finding {
        severity: Severity::Info,
        id: "kernel",
        title: format!(
            "kernel {} on {}; tracing tier: {}",
            f.kernel,
            f.os.as_deref().unwrap_or("unknown OS"),
            f.tier
        ),
        evidence: vec![
            format!(
                "BTF: {}, module BTF: {}, kprobes: {}, ftrace function hooks: {}",
                f.btf, f.module_btf, f.kprobes, f.ftrace_functions
            ),
            f.tier_reason.clone(),
            format!(
                "br_netfilter: {}, ip_forward: {}",
                f.br_netfilter.map_or("not loaded".to_owned(), |b| format!(
                    "call-iptables={} call-ip6tables={}",
                    b.call_iptables, b.call_ip6tables
                )),
                f.ip_forward.map_or("?".to_owned(), |v| v.to_string())
            ),
        ],
        action: None,
    });
    out.sort_by_key(|f| f.severity);
    out
}

fn entry_line(e: &Entry) -> String {
    format!(
        "udp {}:{} -> {}:{} reply from {}:{}{}{} timeout {}s id {}",
        e.orig.src,
        e.orig.sport,
        e.orig.dst,
        e.orig.dport,
        e.reply.src,
        e.reply.sport,
        if e.assured() { " [ASSURED]" } else { "" },
        if e.seen_reply() { "" } else { " [UNREPLIED]" },
        e.timeout.map_or("?".to_owned(), |t| t.to_string()),
        e.id.map_or("?".to_owned(), |i| i.to_string())
    )
}

impl Report {
    /// A few lines for the start of `tracer trace`: backend, mode, DNS Service, conntrack, and the
    /// errors and warnings by title.
    pub fn summary(&self) -> Vec<String> {
        let mut lines = vec![
            format!(
                "node: iptables {} · kube-proxy {} · conntrack {}/{} ({:.1} %)",
                self.backends.verdict,
                self.proxy_mode,
                self.conntrack.table.count,
                self.conntrack.table.max,
                self.conntrack.usage_percent
            ),
            match &self.dns_service {
                Some(s) => format!("dns service: {}:{} -> {}", s.ip, s.port, endpoints_text(s)),
                None => "dns service: not found in the rules".to_owned(),
            },
        ];
        lines.extend(
            self.findings
                .iter()
                .filter(|f| f.severity != Severity::Info)
                .map(|f| format!("{}: {}", f.severity, f.title)),
        );
        lines
    }

    /// The report for people.
    pub fn render_text(&self) -> String {
        let mut out = String::new();
        let table = |rows: Vec<(String, String)>| {
            let mut t = Table::new();
            t.load_style(UTF8_BORDERS_ONLY)
                .set_content_arrangement(ContentArrangement::Dynamic)
                .set_width(120);
            for (k, v) in rows {
                t.add_row(vec![k, v]);
            }
            t.to_string()
        };
        let f = &self.facts;
        out.push_str(&format!(
            "Node{}\n",
            self.netns.as_ref().map_or(String::new(), |p| format!(
                " (network namespace {})",
                p.display()
            ))
        ));
        out.push_str(&table(vec![
            ("kernel".into(), f.kernel.clone()),
            ("os".into(), f.os.clone().unwrap_or_default()),
            (
                "tracing tier".into(),
                format!("{} ({})", f.tier, f.tier_reason),
            ),
            ("iptables backend".into(), self.backends.verdict.to_string()),
            ("kube-proxy mode".into(), self.proxy_mode.to_string()),
            (
                "dns service".into(),
                self.dns_service
                    .as_ref()
                    .map_or("not found".to_owned(), |s| {
                        format!("{}:{} -> {}", s.ip, s.port, endpoints_text(s))
                    }),
            ),
            (
                "conntrack".into(),
                format!(
                    "{} / {} ({:.1} %), {} buckets; DNS entries {} ({} unreplied, {} stale)",
                    self.conntrack.table.count,
                    self.conntrack.table.max,
                    self.conntrack.usage_percent,
                    self.conntrack.table.buckets,
                    self.conntrack.dns_entries,
                    self.conntrack.dns_unreplied,
                    self.conntrack.dns_stale.len()
                ),
            ),
        ]));
        out.push_str("\n\nConntrack statistics\n");
        let mut stats = Table::new();
        stats.load_style(UTF8_BORDERS_ONLY);
        let mut header = vec!["cpu".to_owned()];
        header.extend(
            CpuStats::default()
                .fields()
                .iter()
                .map(|(n, _)| (*n).to_owned()),
        );
        stats.set_header(header);
        for s in self
            .conntrack
            .per_cpu
            .iter()
            .chain(std::iter::once(&self.conntrack.total))
        {
            let mut row = vec![if std::ptr::eq(s, &self.conntrack.total) {
                "all".to_owned()
            } else {
                s.cpu.to_string()
            }];
            row.extend(s.fields().iter().map(|(_, v)| v.to_string()));
            stats.add_row(row);
        }
        out.push_str(&stats.to_string());
        if !self.counters.is_empty() {
            out.push_str("\n\nDNS rule counters\n");
            let mut t = Table::new();
            t.load_style(UTF8_BORDERS_ONLY)
                .set_content_arrangement(ContentArrangement::Dynamic)
                .set_width(160);
            t.set_header(vec!["backend", "table", "packets", "rule"]);
            for c in &self.counters {
                t.add_row(vec![
                    backend_name(c.backend).to_owned(),
                    c.table.clone(),
                    c.packets.to_string(),
                    c.rule.clone(),
                ]);
            }
            out.push_str(&t.to_string());
        }
        out.push_str("\n\nFindings\n");
        for f in &self.findings {
            out.push_str(&format!("\n[{}] {}\n", f.severity, f.title));
            for e in &f.evidence {
                out.push_str(&format!("    {e}\n"));
            }
            if let Some(a) = &f.action {
                out.push_str(&format!("  → {a}\n"));
            }
        }
        out
    }

    /// The report as JSON.
    pub fn render_json(&self) -> Result<String, Error> {
        serde_json::to_string_pretty(self).map_err(|source| Error::Json { source })
    }
}

impl std::fmt::Display for Severity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Severity::Error => "error",
            Severity::Warning => "warning",
            Severity::Info => "info",
        })
    }
}

#[cfg(test)]
mod tests {
    use std::net::{IpAddr, SocketAddrV4};

    use super::*;
    use crate::node::conntrack::{Tuple, status};

    fn svc() -> DnsService {
        DnsService {
            name: kubeproxy::DNS_PORT_NAME.to_owned(),
            ip: Ipv4Addr::new(10, 96, 0, 10),
            port: 53,
            svc_chain: Some("KUBE-SVC-TCOU7JCQXEZGVUNU".into()),
            endpoints: vec![SocketAddrV4::new(Ipv4Addr::new(10, 244, 0, 11), 53)],
            rejects: false,
        }
    }

    fn entry(reply_src: [u8; 4]) -> Entry {
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

    const FX: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../tests/fixtures/inspect");

    fn save(path: &str) -> kubeproxy::Save {
        kubeproxy::parse_save(&std::fs::read_to_string(format!("{FX}/{path}")).unwrap()).unwrap()
    }

    fn facts(links: Vec<facts::Link>, br_netfilter: Option<facts::BrNetfilter>) -> Facts {
        Facts {
            kernel: "3.10.0-1160.el7.x86_64".into(),
            os: Some("CentOS Linux 7 (Core)".into()),
            btf: false,
            kprobes: true,
            ftrace_functions: true,
            module_btf: false,
            tier: crate::probes::plan::Tier::Kprobe,
            tier_reason: "no BTF".into(),
            tier_loaded: false,
            br_netfilter,
            ip_forward: Some(1),
            rp_filter_all: Some(0),
            links,
            udp_timeout: Some(30),
            udp_timeout_stream: Some(180),
        }
    }

    fn link(name: &str, kind: LinkKind, rp: u32) -> facts::Link {
        facts::Link {
            name: name.into(),
            kind,
            rp_filter: Some(rp),
            rp_filter_effective: Some(rp),
        }
    }

    /// A report assembled from saved outputs, as `collect` assembles one from the live node.
    fn report(
        backends: Backends,
        facts: Facts,
        table: conntrack::Table,
        total: CpuStats,
        stale: Vec<Entry>,
    ) -> Report {
        let saves = [backends.saves.legacy.as_ref(), backends.saves.nft.as_ref()];
        let proxy_mode_evidence = kubeproxy::mode_evidence(saves.into_iter().flatten(), false, &[]);
        let dns_by_backend = dns_by_backend(&backends.saves, backends.verdict.primary);
        let dns_service = dns_by_backend.first().map(|d| d.service.clone());
        let counters = dns_service
            .as_ref()
            .map(|s| counters_of(&backends.saves, s))
            .unwrap_or_default();
        let mut r = Report {
            netns: None,
            facts,
            proxy_mode: kubeproxy::mode(&proxy_mode_evidence),
            proxy_mode_evidence,
            backends,
            dns_by_backend,
            dns_service,
            counters,
            conntrack: ConntrackReport {
                usage_percent: f64::from(table.count) * 100.0 / f64::from(table.max),
                table,
                per_cpu: vec![total],
                total,
                dns_entries: stale.len(),
                dns_unreplied: 0,
                dns_stale: stale,
            },
            findings: vec![],
        };
        r.findings = findings(&r);
        r
    }

    const SMALL: conntrack::Table = conntrack::Table {
        count: 120,
        max: 262144,
        buckets: 65536,
    };

    fn ids(r: &Report) -> Vec<(Severity, &'static str)> {
        r.findings.iter().map(|f| (f.severity, f.id)).collect()
    }

    #[test]
    fn centos7_node_is_legacy_without_errors() {
        let saves = Saves {
            legacy: Some(save("centos7/iptables-save-c.txt")),
            nft: None,
            warnings: vec![],
        };
        let links = vec![
            PathBuf::from("/usr/sbin/iptables"),
            PathBuf::from("/usr/sbin/xtables-multi"),
        ];
        let b = Backends::assemble(
            links,
            Some("iptables v1.4.21".into()),
            Some(vec!["filter".into(), "nat".into()]),
            None,
            saves,
        );
        let r = report(
            b,
            facts(
                vec![link("cni0", LinkKind::Bridge, 0)],
                Some(facts::BrNetfilter {
                    call_iptables: 1,
                    call_ip6tables: 1,
                }),
            ),
            SMALL,
            CpuStats::default(),
            vec![],
        );
        assert_eq!(r.backends.verdict.to_string(), "legacy");
        assert_eq!(r.backends.link_backend, Some(Backend::Legacy));
        assert!(
            r.findings.iter().all(|f| f.severity == Severity::Info),
            "{:#?}",
            r.findings
        );
        assert!(ids(&r).contains(&(Severity::Info, "dns-service")));
        let dns = r.findings.iter().find(|f| f.id == "dns-service").unwrap();
        assert!(
            dns.title.ends_with("10.244.0.10:53, 10.244.0.11:53"),
            "{dns:?}"
        );
        assert!(
            dns.evidence
                .iter()
                .any(|e| e.contains("[21 pkts]") && e.contains("DNAT")),
            "{dns:?}"
        );
    }

    #[test]
    fn mixed_node_gives_the_mixed_error_first() {
        let saves = Saves {
            legacy: Some(save("mixed/iptables-legacy-save-c.txt")),
            nft: Some(save("mixed/iptables-nft-save-c.txt")),
            warnings: vec![
                std::fs::read_to_string(format!("{FX}/mixed/iptables-nft-save-stderr.txt"))
                    .unwrap()
                    .trim()
                    .to_owned(),
            ],
        };
        let links = vec![
            PathBuf::from("/usr/sbin/iptables"),
            PathBuf::from("/usr/sbin/xtables-nft-multi"),
        ];
        let b = Backends::assemble(
            links,
            None,
            Some(vec!["nat".into()]),
            Some(vec!["ip nat".into()]),
            saves,
        );
        let r = report(b, facts(vec![], None), SMALL, CpuStats::default(), vec![]);
        let first = &r.findings[0];
        assert_eq!(
            (first.severity, first.id),
            (Severity::Error, "iptables-mixed")
        );
        assert!(
            first.title.contains("mixed (nft current, legacy stale)"),
            "{first:?}"
        );
        assert!(
            first
                .evidence
                .iter()
                .any(|e| e.starts_with("legacy: ") && e.ends_with("10.244.0.99:53")),
            "{first:#?}"
        );
        assert!(
            first
                .evidence
                .iter()
                .any(|e| e.contains("iptables-legacy tables present")),
            "{first:#?}"
        );
        assert!(first.action.as_deref().unwrap().contains("same priority"));
        // trace's default Service comes from the current backend.
        assert_eq!(r.dns_service.as_ref().unwrap().endpoints.len(), 2);
    }

    #[test]
    fn default_iptables_pointing_at_the_other_backend_is_a_warning() {
        let saves = Saves {
            legacy: None,
            nft: Some(save("modern/iptables-nft-save-c.txt")),
            warnings: vec![],
        };
        let links = vec![
            PathBuf::from("/usr/sbin/iptables"),
            PathBuf::from("/usr/sbin/xtables-legacy-multi"),
        ];
        let b = Backends::assemble(
            links,
            Some("iptables v1.8.9 (legacy)".into()),
            Some(vec![]),
            Some(vec![]),
            saves,
        );
        let r = report(b, facts(vec![], None), SMALL, CpuStats::default(), vec![]);
        assert!(
            ids(&r).contains(&(Severity::Warning, "iptables-default-differs")),
            "{:#?}",
            ids(&r)
        );
    }

    #[test]
    fn full_table_stale_entries_bridge_and_rp_filter_findings() {
        let saves = Saves {
            legacy: None,
            nft: Some(save("modern/iptables-nft-save-c.txt")),
            warnings: vec![],
        };
        let b = Backends::assemble(vec![], None, None, None, saves);
        let links = vec![
            link("cni0", LinkKind::Bridge, 0),
            link("veth1", LinkKind::Veth, 1),
            link("eth0", LinkKind::Other, 1),
        ];
        let full = conntrack::Table {
            count: 262144,
            max: 262144,
            buckets: 262144,
        };
        let total = CpuStats {
            cpu: 2,
            drop: 7,
            insert: 262144,
            ..CpuStats::default()
        };
        let stale = vec![entry([10, 244, 0, 12])];
        let r = report(b, facts(links, None), full, total, stale);
        let got = ids(&r);
        for want in [
            (Severity::Error, "conntrack-full"),
            (Severity::Warning, "conntrack-drops"),
            (Severity::Error, "conntrack-stale-dns"),
            (Severity::Error, "br-netfilter-off"),
            (Severity::Warning, "rp-filter-strict"),
        ] {
            assert!(got.contains(&want), "{want:?} missing from {got:?}");
        }
        let stale = r
            .findings
            .iter()
            .find(|f| f.id == "conntrack-stale-dns")
            .unwrap();
        assert!(
            stale
                .title
                .starts_with("1 UDP conntrack entry sends DNS clients to 10.244.0.12"),
            "{stale:?}"
        );
        let rp = r
            .findings
            .iter()
            .find(|f| f.id == "rp-filter-strict")
            .unwrap();
        assert!(
            rp.evidence[1].ends_with("veth1"),
            "only pod-facing interfaces: {rp:?}"
        );
        // Errors first, then warnings, then info.
        assert!(
            r.findings
                .windows(2)
                .all(|w| w[0].severity <= w[1].severity)
        );
        let summary = r.summary();
        assert!(
            summary[0].contains("conntrack 262144/262144 (100.0 %)"),
            "{summary:?}"
        );
        assert!(
            summary
                .iter()
                .any(|l| l.starts_with("error: the conntrack table is full")),
            "{summary:?}"
        );
        let text = r.render_text();
        assert!(
            text.contains("[error] the conntrack table is full"),
            "{text}"
        );
        let json: serde_json::Value = serde_json::from_str(&r.render_json().unwrap()).unwrap();
        assert_eq!(json["conntrack"]["table"]["count"], 262144);
        assert_eq!(json["findings"][0]["severity"], "error");
        assert_eq!(json["backends"]["verdict"]["kind"], "nft");
    }
}
