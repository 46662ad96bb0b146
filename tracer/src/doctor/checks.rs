//! Every check of the seed's manual procedure, one line each: the iptables backend (link chain,
//! alternatives and `xtables-multi`, `iptables -V`, the modules, `/proc/net/ip_tables_names`,
//! KUBE-* rule counts in both saves, the kubelet's hint chains), kube-proxy's mode, the DNS
//! Service, conntrack (count and max, the kernel log's table-full lines, UDP timeouts), the
//! Service IP against the pod IPs, the probe's parallel A and AAAA (conntrack's clashes) and its
//! lookups over TCP, the node's own queries, kernel and OS.

use std::path::PathBuf;

use super::{NodeProbe, diagnose::Context};
use crate::{
    flow::record::clock,
    node::{
        Backend,
        backend::{Kind, Side},
        conntrack::CpuStats,
        host::{self, ConntrackFullLog, KubeProxyProcess, ModuleState},
        inspect::Report,
        kubeproxy::ProxyMode,
    },
    report::doctor::{Check, ProbeFigures, Status},
};

/// The modules the checks name, with their build options.
const MODULES: [(&str, &str); 4] = [
    ("nf_tables", "NF_TABLES"),
    ("ip_tables", "IP_NF_IPTABLES"),
    ("nf_conntrack", "NF_CONNTRACK"),
    ("br_netfilter", "BRIDGE_NETFILTER"),
];

/// What doctor reads of the node beside inspect (host-wide, not per namespace).
#[derive(Debug, Clone)]
pub struct HostFacts {
    /// Each of [`MODULES`] and its state.
    pub modules: Vec<(&'static str, ModuleState)>,
    /// Where `/etc/alternatives/iptables` points.
    pub alternative: Option<PathBuf>,
    /// The old single binary, where there is one.
    pub xtables_multi: Option<PathBuf>,
    /// kube-proxy's process.
    pub kube_proxy: Option<KubeProxyProcess>,
    /// The kernel log's conntrack-full lines, or why it could not be read.
    pub kmsg: Result<ConntrackFullLog, String>,
    /// When the machine booted (Unix time, microseconds).
    pub boot_us: Option<u64>,
}

impl HostFacts {
    /// Reads them; the kernel log's lines of the node's namespace `netns` (its inode) since
    /// `made_us`, when it was made (Unix time, microseconds).
    pub fn read(netns: u32, made_us: u64) -> Self {
        let config = host::kernel_config();
        let now_us = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_micros() as u64);
        let boot_us = host::uptime_s().map(|u| now_us.saturating_sub((u * 1e6) as u64));
        let after_s = boot_us.map_or(0.0, |b| made_us.saturating_sub(b) as f64 / 1e6);
        Self {
            modules: MODULES
                .map(|(m, sym)| (m, host::module_state(m, sym, config.as_deref())))
                .to_vec(),
            alternative: std::fs::read_link("/etc/alternatives/iptables").ok(),
            xtables_multi: host::xtables_multi(),
            kube_proxy: host::kube_proxy_process(),
            kmsg: host::conntrack_full_log(netns, after_s).map_err(|e| e.to_string()),
            boot_us,
        }
    }

    /// The kernel log's conntrack-full lines in one line.
    pub fn kmsg_line(&self) -> String {
        let at = |s: Option<f64>| match (self.boot_us, s) {
            (Some(boot), Some(s)) => format!("{} UTC", clock(boot + (s * 1e6) as u64)),
            _ => "?".to_owned(),
        };
        match &self.kmsg {
            Err(e) => format!("kernel log (/dev/kmsg) unreadable: {e}"),
            Ok(l) if l.lines == 0 => {
                format!("kernel log: no \"{}\" line", host::CONNTRACK_FULL_LINE)
            }
            Ok(l) => format!(
                "kernel log: {} \"{}\" lines (rate-limited), first at {}, last at {}",
                l.lines,
                host::CONNTRACK_FULL_LINE,
                at(l.first_s),
                at(l.last_s)
            ),
        }
    }
}

fn side_rules(b: Backend, s: &Side) -> String {
    if !s.available {
        return format!("{b}: no save (tool not installed)");
    }
    format!("{b}: {} KUBE-* of {} rules", s.kube_rules, s.rules)
}

fn hints(b: Backend, s: &Side) -> String {
    match s.hint_chains.as_slice() {
        [] => format!("{b}: none"),
        h => format!("{b}: {}", h.join(" ")),
    }
}

/// kube-proxy's mode from its process, else from its rules.
fn kube_proxy(r: &Report, f: &HostFacts) -> Check {
    let rules = format!(
        "rules say {} ({} KUBE-SVC-* chains, KUBE-SERVICES {})",
        r.proxy_mode,
        r.proxy_mode_evidence.svc_chains,
        if r.proxy_mode_evidence.kube_services {
            "present"
        } else {
            "absent"
        }
    );
    let process = match &f.kube_proxy {
        Some(p) => format!(
            "process {}: --proxy-mode {}, config {} (mode: {}); ",
            p.pid,
            p.mode_arg.as_deref().unwrap_or("not given"),
            p.config.as_deref().unwrap_or("none"),
            p.config_mode.as_deref().unwrap_or("unread")
        ),
        None => "no kube-proxy process on this node; ".to_owned(),
    };
    let status = if r.proxy_mode == ProxyMode::Unknown {
        Status::Warn
    } else {
        Status::Ok
    };
    Check::new("kube-proxy mode", status, format!("{process}{rules}"))
}

/// The iptables backend's checks.
fn backend_checks(r: &Report, f: &HostFacts) -> Vec<Check> {
    let b = &r.backends;
    let mixed = matches!(b.verdict.kind, Kind::Mixed) || b.verdict.stale.is_some();
    let split = if mixed { Status::Fail } else { Status::Ok };
    let chain: Vec<String> = b
        .iptables_links
        .iter()
        .map(|p| p.display().to_string())
        .collect();
    let version_ok = b.version_backend.is_none() || b.version_backend == b.verdict.primary;
    let modules: Vec<String> = f.modules.iter().map(|(m, s)| format!("{m} {s}")).collect();
    vec![
        Check::new("iptables backend", split, b.verdict.to_string()),
        Check::new("iptables link chain", Status::Info, chain.join(" -> ")),
        Check::new(
            "alternatives, xtables-multi",
            Status::Info,
            format!(
                "/etc/alternatives/iptables -> {}; xtables-multi (iptables < 1.6): {}",
                f.alternative
                    .as_ref()
                    .map_or("(none)".to_owned(), |p| p.display().to_string()),
                f.xtables_multi
                    .as_ref()
                    .map_or("absent".to_owned(), |p| p.display().to_string())
            ),
        ),
        Check::new(
            "iptables -V",
            if version_ok { Status::Ok } else { Status::Warn },
            b.version
                .clone()
                .unwrap_or_else(|| "(not installed)".to_owned()),
        ),
        Check::new("netfilter modules", Status::Info, modules.join(", ")),
        Check::new(
            "/proc/net/ip_tables_names",
            Status::Info,
            match &b.legacy_tables {
                None => "(ip_tables not loaded)".to_owned(),
                Some(t) if t.is_empty() => "(empty: no legacy table)".to_owned(),
                Some(t) => t.join(" "),
            },
        ),
        Check::new(
            "KUBE-* rules in both saves",
            split,
            format!(
                "{}; {}",
                side_rules(Backend::Nft, &b.nft),
                side_rules(Backend::Legacy, &b.legacy)
            ),
        ),
        Check::new(
            "kubelet hint chains",
            Status::Info,
            format!(
                "{}; {}",
                hints(Backend::Nft, &b.nft),
                hints(Backend::Legacy, &b.legacy)
            ),
        ),
    ]
}

/// The conntrack checks.
fn conntrack_checks(r: &Report, f: &HostFacts) -> Vec<Check> {
    let c = &r.conntrack;
    let full = if c.usage_percent >= 99.0 {
        Status::Fail
    } else if c.usage_percent >= 90.0 {
        Status::Warn
    } else {
        Status::Ok
    };
    let logged = match &f.kmsg {
        Ok(l) if l.lines > 0 => Status::Warn,
        Ok(_) => Status::Ok,
        Err(_) => Status::Info,
    };
    let t = (r.facts.udp_timeout, r.facts.udp_timeout_stream);
    let or_q = |v: Option<u32>| v.map_or("?".to_owned(), |v| v.to_string());
    // Below the kernel's defaults (30 s, 120 s) a slow answer can outlive its entry.
    let short = t.0.is_some_and(|v| v < 30) || t.1.is_some_and(|v| v < 120);
    vec![
        Check::new(
            "conntrack table",
            full,
            format!(
                "{} of max {} ({:.1} %); drop {} insert_failed {} early_drop {} (since boot); DNS entries {} ({} unreplied, {} stale)",
                c.table.count,
                c.table.max,
                c.usage_percent,
                c.total.drop,
                c.total.insert_failed,
                c.total.early_drop,
                c.dns_entries,
                c.dns_unreplied,
                c.dns_stale.len()
            ),
        ),
        Check::new("conntrack in the kernel log", logged, f.kmsg_line()),
        Check::new(
            "UDP conntrack timeouts",
            if short { Status::Warn } else { Status::Ok },
            format!(
                "{} s unreplied, {} s assured (stream)",
                or_q(t.0),
                or_q(t.1)
            ),
        ),
    ]
}

/// The probe's A and AAAA sent at once, as glibc sends them: did they race in conntrack, and
/// could it resolve every clash?
fn race(p: &ProbeFigures, delta: Option<&CpuStats>) -> Check {
    const NAME: &str = "parallel A and AAAA";
    if !p.parallel_a_aaaa {
        return Check::new(
            NAME,
            Status::Info,
            "not sent (--single-request): one query per lookup",
        );
    }
    let Some(d) = delta else {
        return Check::new(
            NAME,
            Status::Info,
            "sent from one socket at once, as glibc does; conntrack statistics unread",
        );
    };
    let (status, verdict) = if d.insert_failed > 0 {
        (Status::Fail, "unresolved clashes drop one of the pair")
    } else if d.clash_resolve > 0 {
        (Status::Ok, "the kernel resolved every clash")
    } else {
        (Status::Ok, "no clash")
    };
    Check::new(
        NAME,
        status,
        format!(
            "sent from one socket at once, as glibc does; during the probe conntrack clash_resolve +{}, insert_failed +{}: {verdict}",
            d.clash_resolve, d.insert_failed
        ),
    )
}

/// The probe's lookups over TCP (what a truncated answer's retry takes).
fn over_tcp(p: &ProbeFigures) -> Check {
    let status = if p.tcp_answered < p.tcp_sent {
        Status::Fail
    } else {
        Status::Ok
    };
    Check::new(
        "DNS over TCP",
        status,
        format!(
            "{} of {} lookups over TCP to {} answered (the retry of a truncated answer)",
            p.tcp_answered, p.tcp_sent, p.service
        ),
    )
}

/// Every check, one line each.
pub fn checks(ctx: &Context, p: &ProbeFigures, node: Option<NodeProbe>) -> Vec<Check> {
    let (r, f, down_links) = (ctx.report, ctx.facts, ctx.down_links.as_slice());
    let mut out = backend_checks(r, f);
    out.push(kube_proxy(r, f));
    out.push(match &r.dns_service {
        Some(s) if s.endpoints.is_empty() => Check::new(
            "DNS Service",
            Status::Fail,
            format!(
                "{} ({}): no endpoints{}",
                s.socket(),
                s.name,
                if s.rejects { ", rejected" } else { "" }
            ),
        ),
        Some(s) => {
            let eps: Vec<String> = s.endpoints.iter().map(ToString::to_string).collect();
            Check::new(
                "DNS Service",
                Status::Ok,
                format!("{} ({}) -> {}", s.socket(), s.name, eps.join(", ")),
            )
        }
        None => Check::new("DNS Service", Status::Warn, "not found in the rules"),
    });
    out.extend(conntrack_checks(r, f));
    let lost_between = p.seen_to_service > p.seen_at_pod;
    out.push(Check::new(
        "Service IP vs pod IPs",
        if lost_between { Status::Fail } else { Status::Ok },
        format!(
            "{} queries to {} left the pod, {} reached a DNS pod's IP, {} answers came back (what tcpdump on both would show)",
            p.seen_to_service,
            p.service.ip(),
            p.seen_at_pod,
            p.seen_from_pod
        ),
    ));
    out.push(race(p, ctx.summary.conntrack_delta.as_ref()));
    out.push(over_tcp(p));
    out.push(Check::new(
        "pod links",
        if down_links.is_empty() {
            Status::Ok
        } else {
            Status::Fail
        },
        match down_links {
            [] => "every veth on the node is up".to_owned(),
            l => format!("down: {}", l.join(", ")),
        },
    ));
    out.push(match node {
        Some(n) => Check::new(
            "queries from the node",
            if n.answered == n.sent {
                Status::Info
            } else {
                Status::Fail
            },
            format!(
                "{} of {} answered from the node's namespace (host network, through OUTPUT: {})",
                n.answered,
                n.sent,
                if n.answered == n.sent {
                    "pods only are hit"
                } else {
                    "host-network pods are hit too"
                }
            ),
        ),
        None => Check::new(
            "queries from the node",
            Status::Info,
            "not sent: every pod query was answered",
        ),
    });
    out.push(Check::new(
        "kernel, OS",
        Status::Info,
        format!(
            "{} on {}; hook tier {}",
            r.facts.kernel,
            r.facts.os.as_deref().unwrap_or("?"),
            p.tier.map_or("none".to_owned(), |t| t.to_string())
        ),
    ));
    out
}
