//! Node reports side by side (`tracer fleet`): one row per node (iptables backend, kube-proxy
//! mode, kernel and OS, conntrack, UDP timeouts, br_netfilter, DNS loss), and the nodes that
//! differ from the rest flagged, each with why in words and figures: the iptables backend first
//! (every node must use the same one), then kube-proxy's mode, a kernel that differs where the
//! DNS loss differs too, a conntrack table over 90 % full, UDP timeouts, br_netfilter off.

use std::{
    collections::BTreeMap,
    fmt::Write as _,
    path::{Path, PathBuf},
};

use comfy_table::{Table, presets::UTF8_BORDERS_ONLY};
use serde::{Deserialize, Serialize};

use crate::report::document::{self, Document};

/// A conntrack table fuller than this (percent of its max) is flagged.
pub const CONNTRACK_FULL_PERCENT: f64 = 90.0;

/// DNS loss figures further apart than this (percentage points) differ.
pub const LOSS_POINTS: f64 = 1.0;

/// What failed reading the node reports.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("no node report given: name report files or a directory of them")]
    NoReports,
    #[error("failed to list the reports in {path}: {source}")]
    List {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path} holds no report (no *.json file)")]
    EmptyDir { path: PathBuf },
    #[error(transparent)]
    Report(#[from] document::Error),
    #[error("failed to encode the fleet as JSON: {source}")]
    Json { source: serde_json::Error },
}

/// Reads the reports `args` name: files, or every `*.json` in a directory (sorted by name).
pub fn read_reports(args: &[PathBuf]) -> Result<Vec<(PathBuf, Document)>, Error> {
    let mut paths = Vec::new();
    for arg in args {
        if !arg.is_dir() {
            paths.push(arg.clone());
            continue;
        }
        let list = |source| Error::List {
            path: arg.clone(),
            source,
        };
        let mut found = Vec::new();
        for entry in std::fs::read_dir(arg).map_err(list)? {
            let path = entry.map_err(list)?.path();
            if path.extension().is_some_and(|e| e == "json") && !path.is_dir() {
                found.push(path);
            }
        }
        if found.is_empty() {
            return Err(Error::EmptyDir { path: arg.clone() });
        }
        found.sort();
        paths.extend(found);
    }
    if paths.is_empty() {
        return Err(Error::NoReports);
    }
    paths
        .into_iter()
        .map(|p| Ok((p.clone(), Document::read(&p)?)))
        .collect()
}

/// br_netfilter's `bridge-nf-call-iptables` on a node.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum BrNetfilter {
    /// 1: bridged IPv4 traffic goes through iptables.
    On,
    /// 0.
    Off,
    /// The module is not loaded (no switch).
    NotLoaded,
}

impl std::fmt::Display for BrNetfilter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::On => "on",
            Self::Off => "off",
            Self::NotLoaded => "not loaded",
        })
    }
}

/// One node, from its report. `None`: the report does not say (no node facts, no probe).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Row {
    /// The node's name: the report's host name, or its file stem where host names repeat.
    pub node: String,
    /// The host name the report carries (reports written before it have none).
    pub hostname: Option<String>,
    /// The report file.
    pub file: PathBuf,
    /// The command that wrote it (`inspect`, `probe`, ...).
    pub command: String,
    /// The iptables backend verdict (`nft`, `legacy`, `mixed (...)`, ...).
    pub iptables_backend: Option<String>,
    /// kube-proxy's mode.
    pub proxy_mode: Option<String>,
    /// Kernel release.
    pub kernel: String,
    /// OS release.
    pub os: Option<String>,
    /// Conntrack entries.
    pub conntrack_count: Option<u32>,
    /// Conntrack table limit.
    pub conntrack_max: Option<u32>,
    /// count / max, in percent.
    pub conntrack_usage_percent: Option<f64>,
    /// `nf_conntrack_udp_timeout` (s).
    pub udp_timeout: Option<u32>,
    /// `nf_conntrack_udp_timeout_stream` (s).
    pub udp_timeout_stream: Option<u32>,
    /// `bridge-nf-call-iptables`.
    pub br_netfilter: Option<BrNetfilter>,
    /// The probe's DNS loss in percent (probe reports only).
    pub dns_loss_percent: Option<f64>,
}

/// Which rule flagged a node, in the order they are checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Rule {
    /// Its iptables backend differs from the other nodes', or is mixed.
    Backend,
    /// Its kube-proxy mode differs.
    ProxyMode,
    /// Its kernel differs and so does its DNS loss.
    KernelAndLoss,
    /// Its conntrack table is over 90 % full.
    Conntrack,
    /// Its UDP conntrack timeouts differ.
    UdpTimeouts,
    /// br_netfilter is off where most nodes have it on.
    BrNetfilter,
}

/// One odd node out, and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Flag {
    /// The node.
    pub node: String,
    /// The rule.
    pub rule: Rule,
    /// Why, with the figures: `backend legacy, 2 of 3 nodes use nft`.
    pub reason: String,
}

/// The nodes side by side and the odd ones out.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Fleet {
    /// One row per report, in the order given.
    pub rows: Vec<Row>,
    /// Every flag, by rule (backend first), then by node.
    pub flags: Vec<Flag>,
    /// No node was flagged.
    pub agrees: bool,
}

/// A number under `facts` in the report's whole inspect report.
fn inspect_fact(doc: &Document, path: &[&str]) -> Option<serde_json::Value> {
    let mut v = doc.node.as_ref()?.inspect.get("facts")?;
    for key in path {
        v = v.get(key)?;
    }
    Some(v.clone())
}

/// The row of one report, named `node`.
fn row(node: String, file: &Path, doc: &Document) -> Row {
    let n = doc.node.as_ref();
    let number = |path: &[&str]| {
        inspect_fact(doc, path)
            .and_then(|v| v.as_u64())
            .and_then(|v| u32::try_from(v).ok())
    };
    let br_netfilter = n.map(|_| match inspect_fact(doc, &["br_netfilter"]) {
        Some(serde_json::Value::Null) | None => BrNetfilter::NotLoaded,
        Some(_) if number(&["br_netfilter", "call_iptables"]) == Some(0) => BrNetfilter::Off,
        Some(_) => BrNetfilter::On,
    });
    Row {
        node,
        hostname: doc.hostname.clone(),
        file: file.to_owned(),
        command: doc.command.clone(),
        iptables_backend: n.map(|n| n.iptables_backend.clone()),
        proxy_mode: n.map(|n| n.proxy_mode.clone()),
        kernel: n.map_or_else(|| doc.kernel.clone(), |n| n.kernel.clone()),
        os: n.and_then(|n| n.os.clone()),
        conntrack_count: n.map(|n| n.conntrack_count),
        conntrack_max: n.map(|n| n.conntrack_max),
        conntrack_usage_percent: n
            .filter(|n| n.conntrack_max > 0)
            .map(|n| 100.0 * f64::from(n.conntrack_count) / f64::from(n.conntrack_max)),
        udp_timeout: number(&["udp_timeout"]),
        udp_timeout_stream: number(&["udp_timeout_stream"]),
        br_netfilter,
        dns_loss_percent: doc.probe.as_ref().map(|p| p.loss_percent),
    }
}

/// Each report's node name: its host name where no other report has the same; else its file
/// stem; else (stems repeat too) its path.
fn names(reports: &[(PathBuf, Document)]) -> Vec<String> {
    let count = |key: &dyn Fn(&(PathBuf, Document)) -> Option<String>, k: &Option<String>| {
        reports.iter().filter(|r| key(r) == *k).count()
    };
    let host = |r: &(PathBuf, Document)| r.1.hostname.clone().filter(|h| !h.is_empty());
    let stem = |r: &(PathBuf, Document)| r.0.file_stem().map(|s| s.to_string_lossy().into_owned());
    reports
        .iter()
        .map(|r| match host(r) {
            Some(h) if count(&host, &Some(h.clone())) == 1 => h,
            _ => match stem(r) {
                Some(s) if count(&stem, &Some(s.clone())) == 1 => s,
                _ => r.0.display().to_string(),
            },
        })
        .collect()
}

/// How many nodes hold each value, most first.
fn tally<T: Ord + Clone>(values: &[Option<T>]) -> Vec<(T, usize)> {
    let mut counts: BTreeMap<T, usize> = BTreeMap::new();
    for v in values.iter().flatten() {
        *counts.entry(v.clone()).or_default() += 1;
    }
    let mut out: Vec<(T, usize)> = counts.into_iter().collect();
    out.sort_by_key(|v| std::cmp::Reverse(v.1));
    out
}

/// The value more than half of the nodes that have one share, with their count and the count of
/// nodes that have one.
fn majority<T: Ord + Clone>(values: &[Option<T>]) -> Option<(T, usize, usize)> {
    let known = values.iter().flatten().count();
    let (value, n) = tally(values).into_iter().next()?;
    (2 * n > known).then_some((value, n, known))
}

/// `1 nft, 1 legacy`.
fn split<T: Ord + Clone>(values: &[Option<T>], show: impl Fn(&T) -> String) -> String {
    tally(values)
        .iter()
        .map(|(v, n)| format!("{n} {}", show(v)))
        .collect::<Vec<_>>()
        .join(", ")
}

/// The nodes whose value differs from the majority's (`verb` the majority's value, as in
/// `2 of 3 nodes use nft`); where there is no majority, every node that has a value.
fn differing<T: Ord + Clone>(
    values: &[Option<T>],
    what: &str,
    verb: &str,
    show: impl Fn(&T) -> String,
) -> Vec<(usize, String)> {
    if tally(values).len() < 2 {
        return Vec::new();
    }
    let majority = majority(values);
    values
        .iter()
        .enumerate()
        .filter_map(|(i, v)| {
            let v = v.as_ref()?;
            match &majority {
                Some((m, _, _)) if m == v => None,
                Some((m, n, known)) => Some((
                    i,
                    format!(
                        "{what} {}, {n} of {known} nodes {verb} {}",
                        show(v),
                        show(m)
                    ),
                )),
                None => Some((
                    i,
                    format!("{what} {}, no majority: {}", show(v), split(values, &show)),
                )),
            }
        })
        .collect()
}

/// The first word of a backend verdict: `nft (legacy stale)` is `nft`.
fn backend_kind(verdict: &str) -> String {
    verdict.split_whitespace().next().unwrap_or("").to_owned()
}

/// The backend rule: a mixed node always, then any node whose backend differs from the majority.
fn backend_flags(rows: &[Row]) -> Vec<(usize, String)> {
    let kinds: Vec<Option<String>> = rows
        .iter()
        .map(|r| r.iptables_backend.as_deref().map(backend_kind))
        .collect();
    let mut out = differing(&kinds, "backend", "use", Clone::clone);
    let others = match majority(&kinds) {
        Some((m, n, known)) if m != "mixed" => format!("; {n} of {known} nodes use {m}"),
        _ => String::new(),
    };
    for (i, r) in rows.iter().enumerate() {
        let Some(b) = r.iptables_backend.as_deref() else {
            continue;
        };
        if backend_kind(b) != "mixed" {
            continue;
        }
        let why = format!(
            "backend {b}: kube-proxy's rules are in both iptables-legacy and iptables-nft, and every node must use one backend{others}"
        );
        match out.iter_mut().find(|(j, _)| *j == i) {
            Some((_, reason)) => *reason = why,
            None => out.push((i, why)),
        }
    }
    out.sort_by_key(|(i, _)| *i);
    out
}

/// The kernel rule: a kernel other than the majority's where the DNS loss also differs from
/// theirs (their mean) by more than [`LOSS_POINTS`].
fn kernel_flags(rows: &[Row]) -> Vec<(usize, String)> {
    let kernels: Vec<Option<String>> = rows.iter().map(|r| Some(r.kernel.clone())).collect();
    let Some((kernel, n, known)) = majority(&kernels) else {
        return Vec::new();
    };
    let theirs: Vec<f64> = rows
        .iter()
        .filter(|r| r.kernel == kernel)
        .filter_map(|r| r.dns_loss_percent)
        .collect();
    if theirs.is_empty() {
        return Vec::new();
    }
    let mean = theirs.iter().sum::<f64>() / theirs.len() as f64;
    rows.iter()
        .enumerate()
        .filter(|(_, r)| r.kernel != kernel)
        .filter_map(|(i, r)| {
            let loss = r.dns_loss_percent?;
            ((loss - mean).abs() > LOSS_POINTS).then(|| {
                (
                    i,
                    format!(
                        "kernel {}, {n} of {known} nodes run {kernel}; and DNS loss {loss:.1} %, {mean:.1} % on those",
                        r.kernel
                    ),
                )
            })
        })
        .collect()
}

/// The conntrack rule: a table over [`CONNTRACK_FULL_PERCENT`] full.
fn conntrack_flags(rows: &[Row]) -> Vec<(usize, String)> {
    rows.iter()
        .enumerate()
        .filter_map(|(i, r)| {
            let usage = r.conntrack_usage_percent?;
            (usage > CONNTRACK_FULL_PERCENT).then(|| {
                (
                    i,
                    format!(
                        "conntrack table {usage:.0} % full ({} of {} entries), over {CONNTRACK_FULL_PERCENT:.0} %",
                        r.conntrack_count.unwrap_or(0),
                        r.conntrack_max.unwrap_or(0)
                    ),
                )
            })
        })
        .collect()
}

/// `30/120 s`: the UDP timeout and the stream timeout.
fn timeouts_text(t: &(Option<u32>, Option<u32>)) -> String {
    let s = |v: Option<u32>| v.map_or("-".to_owned(), |v| v.to_string());
    format!("{}/{} s", s(t.0), s(t.1))
}

/// The br_netfilter rule: off (or not loaded) where most nodes have it on.
fn br_netfilter_flags(rows: &[Row]) -> Vec<(usize, String)> {
    let states: Vec<Option<BrNetfilter>> = rows.iter().map(|r| r.br_netfilter).collect();
    let Some((BrNetfilter::On, n, known)) = majority(&states) else {
        return Vec::new();
    };
    states
        .iter()
        .enumerate()
        .filter_map(|(i, s)| match s {
            Some(BrNetfilter::Off) => Some((
                i,
                format!("br_netfilter off (bridge-nf-call-iptables 0), {n} of {known} nodes have it on"),
            )),
            Some(BrNetfilter::NotLoaded) => Some((
                i,
                format!("br_netfilter not loaded (no bridge-nf-call-iptables), {n} of {known} nodes have it on"),
            )),
            _ => None,
        })
        .collect()
}

/// The rows of `reports` and their flags.
pub fn fleet(reports: &[(PathBuf, Document)]) -> Fleet {
    let rows: Vec<Row> = names(reports)
        .into_iter()
        .zip(reports)
        .map(|(name, (path, doc))| row(name, path, doc))
        .collect();
    let flags = flags(&rows);
    Fleet {
        agrees: flags.is_empty(),
        rows,
        flags,
    }
}

/// Every rule on `rows`, in rule order, each rule's flags in row order.
pub fn flags(rows: &[Row]) -> Vec<Flag> {
    let proxy: Vec<Option<String>> = rows.iter().map(|r| r.proxy_mode.clone()).collect();
    let timeouts: Vec<Option<(Option<u32>, Option<u32>)>> = rows
        .iter()
        .map(|r| {
            (r.udp_timeout.is_some() || r.udp_timeout_stream.is_some())
                .then_some((r.udp_timeout, r.udp_timeout_stream))
        })
        .collect();
    let checks = [
        (Rule::Backend, backend_flags(rows)),
        (
            Rule::ProxyMode,
            differing(&proxy, "kube-proxy mode", "run", Clone::clone),
        ),
        (Rule::KernelAndLoss, kernel_flags(rows)),
        (Rule::Conntrack, conntrack_flags(rows)),
        (
            Rule::UdpTimeouts,
            differing(&timeouts, "UDP timeouts", "use", timeouts_text),
        ),
        (Rule::BrNetfilter, br_netfilter_flags(rows)),
    ];
    checks
        .into_iter()
        .flat_map(|(rule, found)| found.into_iter().map(move |(i, reason)| (rule, i, reason)))
        .map(|(rule, i, reason)| Flag {
            node: rows[i].node.clone(),
            rule,
            reason,
        })
        .collect()
}

impl Fleet {
    /// The nodes flagged, each once, in the order of their first flag.
    pub fn odd_nodes(&self) -> Vec<&str> {
        let mut out: Vec<&str> = Vec::new();
        for f in &self.flags {
            if !out.contains(&f.node.as_str()) {
                out.push(&f.node);
            }
        }
        out
    }

    /// The table, one row per node, then the findings.
    pub fn text(&self) -> String {
        let dash = || "-".to_owned();
        let mut t = Table::new();
        t.load_style(UTF8_BORDERS_ONLY).set_header(vec![
            "node",
            "backend",
            "kube-proxy",
            "kernel",
            "OS",
            "conntrack",
            "UDP timeouts",
            "br_netfilter",
            "DNS loss",
            "odd",
        ]);
        let odd = self.odd_nodes();
        for r in &self.rows {
            t.add_row(vec![
                r.node.clone(),
                r.iptables_backend.clone().unwrap_or_else(dash),
                r.proxy_mode.clone().unwrap_or_else(dash),
                r.kernel.clone(),
                r.os.clone().unwrap_or_else(dash),
                match (
                    r.conntrack_count,
                    r.conntrack_max,
                    r.conntrack_usage_percent,
                ) {
                    (Some(c), Some(m), Some(u)) => format!("{c}/{m} ({u:.1} %)"),
                    (Some(c), Some(m), None) => format!("{c}/{m}"),
                    _ => dash(),
                },
                if r.udp_timeout.is_none() && r.udp_timeout_stream.is_none() {
                    dash()
                } else {
                    timeouts_text(&(r.udp_timeout, r.udp_timeout_stream))
                },
                r.br_netfilter.map_or_else(dash, |b| b.to_string()),
                r.dns_loss_percent
                    .map_or_else(dash, |l| format!("{l:.1} %")),
                if odd.contains(&r.node.as_str()) {
                    "yes".to_owned()
                } else {
                    String::new()
                },
            ]);
        }
        let mut s = format!("{t}\n");
        if self.agrees {
            let _ = writeln!(s, "the {} nodes agree", self.rows.len());
            return s;
        }
        let _ = writeln!(
            s,
            "{} of {} nodes odd out, most important first:",
            odd.len(),
            self.rows.len()
        );
        for f in &self.flags {
            let _ = writeln!(s, "  {}: {}", f.node, f.reason);
        }
        s
    }

    /// Pretty JSON.
    pub fn json(&self) -> Result<String, Error> {
        serde_json::to_string_pretty(self).map_err(|source| Error::Json { source })
    }
}

#[cfg(test)]
mod tests;
