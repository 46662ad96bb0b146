//! Findings: one rule function per area, each reading the [`Report`] and returning findings with
//! typed evidence. The evidence serializes as the line people read, so the JSON keeps its shape.
//!
//! # Layout
//! - `backend`: which iptables backend holds kube-proxy's rules, mixes and stale leftovers.
//! - `kubeproxy`: kube-proxy's mode, the DNS Service, rules that block DNS.
//! - `conntrack`: a full table, drops, stale and unreplied DNS entries.
//! - `kernel`: br_netfilter, rp_filter, and what the kernel offers tracing.
//! - `nodelocal`: NodeLocal DNSCache's link, listeners and NOTRACK/ACCEPT rules.

mod backend;
mod conntrack;
mod kernel;
mod kubeproxy;
mod nodelocal;
#[cfg(test)]
mod tests;

use std::{
    fmt,
    net::{IpAddr, SocketAddr},
    path::PathBuf,
};

use serde::{Serialize, Serializer};

use super::{
    backend::Side,
    conntrack::{CpuStats, Entry, Table},
    facts::BrNetfilter,
    inspect::{DnsInBackend, Report},
    kubeproxy::{ModeEvidence, RuleCounter},
};
use crate::node::Backend;

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

impl fmt::Display for Severity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Severity::Error => "error",
            Severity::Warning => "warning",
            Severity::Info => "info",
        })
    }
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
    pub evidence: Vec<Evidence>,
    /// What to do about it.
    pub action: Option<String>,
}

/// One fact a finding rests on. Displayed (and serialized) as one line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Evidence {
    /// The symlinks `iptables` resolves through.
    IptablesLinks(Vec<PathBuf>),
    /// `iptables -V`; `None` when not installed.
    IptablesVersion(Option<String>),
    /// `ip_tables_names`; `None` when ip_tables is not loaded.
    LegacyTables(Option<Vec<String>>),
    /// `nft list tables`; `None` without the nft tool.
    NftTables(Option<Vec<String>>),
    /// What one backend's save holds.
    Side(Backend, Side),
    /// A warning a save printed.
    SaveWarning(String),
    /// The DNS Service as one backend's rules describe it.
    ServiceIn(DnsInBackend),
    /// What kube-proxy's mode was judged from.
    ProxyMode(ModeEvidence),
    /// kube-proxy's "has no endpoints" REJECT for this port name.
    NoEndpointsReject(String),
    /// A rule on the DNS path and its packet counter.
    Rule(RuleCounter),
    /// The table's size.
    TableSize(Table),
    /// The statistics summed over CPUs.
    StatsTotal(CpuStats),
    /// One CPU's drop counters.
    CpuDrops(CpuStats),
    /// The Service's endpoints now.
    Endpoints(Vec<SocketAddr>),
    /// A conntrack entry.
    Entry(Entry),
    /// How many more entries were left out.
    More(usize),
    /// The UDP timeouts (s): unreplied, assured.
    UdpTimeouts(Option<u32>, Option<u32>),
    /// The bridges on the node.
    Bridges(Vec<String>),
    /// `bridge-nf-call-iptables`, or br_netfilter not loaded.
    BridgeNfCall(Option<BrNetfilter>),
    /// `net.ipv4.conf.all.rp_filter`.
    RpFilterAll(Option<u32>),
    /// Pod-facing interfaces with strict rp_filter.
    RpFilterStrict(Vec<String>),
    /// What the kernel offers the hooks.
    KernelFeatures {
        btf: bool,
        module_btf: bool,
        kprobes: bool,
        ftrace_functions: bool,
    },
    /// Why the hook tier.
    TierReason(String),
    /// br_netfilter's switches and IP forwarding.
    Forwarding(Option<BrNetfilter>, Option<u32>),
    /// NodeLocal DNSCache's link and its addresses.
    CacheLink {
        name: String,
        addresses: Vec<IpAddr>,
    },
    /// UDP sockets on port 53 of the cache's addresses.
    CacheListeners(Vec<SocketAddr>),
}

/// `?` for an unknown number.
fn or_unknown(v: Option<u32>) -> String {
    v.map_or("?".to_owned(), |v| v.to_string())
}

/// The endpoints, comma-separated, or `no endpoints`.
pub(crate) fn endpoints_text(endpoints: &[SocketAddr]) -> String {
    if endpoints.is_empty() {
        "no endpoints".to_owned()
    } else {
        let all: Vec<String> = endpoints.iter().map(ToString::to_string).collect();
        all.join(", ")
    }
}

/// count / max in percent (0 when there is no max).
pub(crate) fn usage_percent(t: &Table) -> f64 {
    if t.max == 0 {
        0.0
    } else {
        f64::from(t.count) * 100.0 / f64::from(t.max)
    }
}

/// NodeLocal DNSCache's evidence on one line.
fn cache_line(f: &mut fmt::Formatter<'_>, e: &Evidence) -> fmt::Result {
    let joined = |all: Vec<String>| all.join(", ");
    match e {
        Evidence::CacheLink { name, addresses } => write!(
            f,
            "link {name}: addresses {}",
            joined(addresses.iter().map(ToString::to_string).collect())
        ),
        Evidence::CacheListeners(l) if l.is_empty() => {
            f.write_str("UDP sockets on port 53 of those addresses (/proc/net/udp): none")
        }
        Evidence::CacheListeners(l) => write!(
            f,
            "UDP sockets on port 53 of those addresses (/proc/net/udp): {}",
            joined(l.iter().map(ToString::to_string).collect())
        ),
        _ => Ok(()),
    }
}

fn side_line(f: &mut fmt::Formatter<'_>, b: Backend, side: &Side) -> fmt::Result {
    let name = b.name();
    if !side.available {
        return write!(f, "{name}: save not available (tool not installed)");
    }
    let hints = if side.hint_chains.is_empty() {
        "no kubelet hint chains".to_owned()
    } else {
        side.hint_chains.join(" ")
    };
    write!(
        f,
        "{name}: {} KUBE-* rules of {} rules in tables [{}], {} KUBE-* chains; {hints}",
        side.kube_rules,
        side.rules,
        side.tables.join(" "),
        side.kube_chains
    )
}

/// The command, prefixed with `run` (the node's namespace), that deletes the UDP entries to
/// Service address `service` whose replies come from `reply_src` (a gone pod).
pub(crate) fn delete_entries_command(run: &str, service: IpAddr, reply_src: IpAddr) -> String {
    format!("{run}conntrack -D -p udp --orig-dst {service} --reply-src {reply_src}")
}

/// A conntrack entry on one line, with its flags.
pub(crate) fn entry_line(e: &Entry) -> String {
    format!(
        "udp {} -> {} reply from {}{}{} timeout {}s id {}",
        std::net::SocketAddr::new(e.orig.src, e.orig.sport),
        std::net::SocketAddr::new(e.orig.dst, e.orig.dport),
        std::net::SocketAddr::new(e.reply.src, e.reply.sport),
        if e.assured() { " [ASSURED]" } else { "" },
        if e.seen_reply() { "" } else { " [UNREPLIED]" },
        e.timeout.map_or("?".to_owned(), |t| t.to_string()),
        e.id.map_or("?".to_owned(), |i| i.to_string())
    )
}

impl fmt::Display for Evidence {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Evidence::IptablesLinks(chain) => {
                let chain: Vec<String> = chain.iter().map(|p| p.display().to_string()).collect();
                write!(f, "iptables link chain: {}", chain.join(" -> "))
            }
            Evidence::IptablesVersion(v) => write!(
                f,
                "iptables -V: {}",
                v.as_deref().unwrap_or("(not installed)")
            ),
            Evidence::LegacyTables(None) => {
                f.write_str("legacy tables in the kernel: (ip_tables not loaded)")
            }
            Evidence::LegacyTables(Some(t)) => {
                write!(f, "legacy tables in the kernel: [{}]", t.join(" "))
            }
            Evidence::NftTables(None) => f.write_str("nf_tables tables: (nft not installed)"),
            Evidence::NftTables(Some(t)) => write!(f, "nf_tables tables: [{}]", t.join(", ")),
            Evidence::Side(b, side) => side_line(f, *b, side),
            Evidence::SaveWarning(w) => f.write_str(w),
            Evidence::ServiceIn(d) => write!(
                f,
                "{}: {} {}:{} -> {}",
                d.backend.name(),
                d.service.name,
                d.service.ip,
                d.service.port,
                endpoints_text(&d.service.endpoints)
            ),
            Evidence::ProxyMode(e) => write!(
                f,
                "KUBE-SVC-* chains: {}, KUBE-SERVICES chain: {}, KUBE-* ipsets in rules: {}, kube-ipvs0: {}, nftables table kube-proxy: {}",
                e.svc_chains, e.kube_services, e.kube_ipsets, e.kube_ipvs0, e.nft_kube_proxy_table
            ),
            Evidence::NoEndpointsReject(name) => write!(
                f,
                "filter KUBE-SERVICES: \"{name} has no endpoints\" -j REJECT"
            ),
            Evidence::Rule(c) => write!(
                f,
                "{} {}: [{} pkts] {}",
                c.backend.name(),
                c.table,
                c.packets,
                c.rule
            ),
            Evidence::TableSize(t) => write!(
                f,
                "count {} of max {} ({:.1} %), {} buckets",
                t.count,
                t.max,
                usage_percent(t),
                t.buckets
            ),
            Evidence::StatsTotal(t) => write!(
                f,
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
            ),
            Evidence::CpuDrops(s) => write!(
                f,
                "cpu {}: drop {} insert_failed {} early_drop {}",
                s.cpu, s.drop, s.insert_failed, s.early_drop
            ),
            Evidence::Endpoints(eps) => write!(f, "endpoints now: {}", endpoints_text(eps)),
            Evidence::Entry(e) => f.write_str(&entry_line(e)),
            Evidence::More(n) => write!(f, "… and {n} more"),
            Evidence::UdpTimeouts(unreplied, assured) => write!(
                f,
                "UDP timeouts: {} s unreplied, {} s assured",
                or_unknown(*unreplied),
                or_unknown(*assured)
            ),
            Evidence::Bridges(names) => write!(f, "bridges: {}", names.join(", ")),
            Evidence::BridgeNfCall(None) => {
                f.write_str("br_netfilter not loaded (/proc/sys/net/bridge missing)")
            }
            Evidence::BridgeNfCall(Some(b)) => write!(
                f,
                "net.bridge.bridge-nf-call-iptables = {}",
                b.call_iptables
            ),
            Evidence::RpFilterAll(v) => {
                write!(f, "net.ipv4.conf.all.rp_filter = {}", or_unknown(*v))
            }
            Evidence::RpFilterStrict(names) => {
                write!(f, "rp_filter 1 (effective) on: {}", names.join(", "))
            }
            Evidence::KernelFeatures {
                btf,
                module_btf,
                kprobes,
                ftrace_functions,
            } => write!(
                f,
                "BTF: {btf}, module BTF: {module_btf}, kprobes: {kprobes}, ftrace function hooks: {ftrace_functions}"
            ),
            Evidence::TierReason(why) => f.write_str(why),
            Evidence::Forwarding(br, ip_forward) => write!(
                f,
                "br_netfilter: {}, ip_forward: {}",
                br.map_or("not loaded".to_owned(), |b| format!(
                    "call-iptables={} call-ip6tables={}",
                    b.call_iptables, b.call_ip6tables
                )),
                or_unknown(*ip_forward)
            ),
            Evidence::CacheLink { .. } | Evidence::CacheListeners(_) => cache_line(f, self),
        }
    }
}

impl Serialize for Evidence {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

/// Every area's findings, most severe first.
pub fn findings(r: &Report) -> Vec<Finding> {
    let mut out = backend::findings(r);
    out.extend(kubeproxy::findings(r));
    out.extend(conntrack::findings(r));
    out.extend(kernel::findings(&r.facts));
    out.extend(nodelocal::findings(r));
    out.sort_by_key(|f| f.severity);
    out
}
