//! The trace report: a line per query that failed or was slow, and the summary.

use std::{collections::BTreeMap, fmt::Write as _, net::IpAddr};

use comfy_table::{Table, presets::UTF8_BORDERS_ONLY};

use crate::{
    flow::{
        cache::CacheTally,
        cause::Cause,
        correlate::Tally,
        record::{QueryRecord, Stage, StaleEntry, Verdict},
        transport::Transport,
    },
    node::{RuleCounter, conntrack::CpuStats},
    probes::{plan::Plan, session::Counters},
};

/// The endpoint changes a summary lists: the last ones (a continuous trace on a cluster whose
/// CoreDNS pods scale keeps a bounded list).
pub const KEPT_ENDPOINT_CHANGES: usize = 256;
/// The stale conntrack entries a summary lists: the first ones.
pub const KEPT_STALE_ENTRIES: usize = 256;
/// The endpoints a summary counts failed queries by: the first ones, then [`OTHER_ENDPOINTS`]
/// (a continuous trace outlives many CoreDNS pod addresses).
pub const KEPT_ENDPOINTS: usize = 256;
/// The key of the failed queries sent to endpoints past the first [`KEPT_ENDPOINTS`].
pub const OTHER_ENDPOINTS: &str = "other endpoints";

/// Latency percentiles from the kernel's log2 histogram: upper bounds of the buckets.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Latency {
    /// Answers counted in the histogram.
    pub count: u64,
    /// 50th percentile is at most this many microseconds.
    pub p50_le_us: u64,
    /// 90th percentile upper bound.
    pub p90_le_us: u64,
    /// 99th percentile upper bound.
    pub p99_le_us: u64,
    /// The slowest answer is below this.
    pub max_lt_us: u64,
}

impl Latency {
    /// From bucket counts (bucket i holds [2^i, 2^(i+1)) µs).
    pub fn from_histogram(h: &[u64]) -> Self {
        let count: u64 = h.iter().sum();
        let bound = |q: f64| -> u64 {
            if count == 0 {
                return 0;
            }
            let want = ((count as f64) * q).ceil() as u64;
            let mut seen = 0;
            for (i, c) in h.iter().enumerate() {
                seen += c;
                if seen >= want {
                    return 1 << (i + 1);
                }
            }
            1 << h.len()
        };
        let max = h
            .iter()
            .rposition(|c| *c > 0)
            .map(|i| 1u64 << (i + 1))
            .unwrap_or(0);
        Self {
            count,
            p50_le_us: bound(0.5),
            p90_le_us: bound(0.9),
            p99_le_us: bound(0.99),
            max_lt_us: max,
        }
    }
}

/// One line of `tracer trace --output json`, told apart by its `type` key.
#[derive(Debug, serde::Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum TraceLine<'a> {
    /// First: the plan as carried out and how long loading and attaching took.
    Plan { plan: &'a Plan, attach_ms: f64 },
    /// A failed or slow query (every query with `--all`).
    Query(&'a QueryRecord),
    /// Last: the summary.
    Summary(&'a TraceSummary),
}

/// Everything a trace found.
#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
pub struct TraceSummary {
    /// Seconds traced.
    pub seconds: f64,
    /// The hook tier and every probe's outcome.
    #[serde(skip_deserializing)]
    pub plan: Option<Plan>,
    /// The kernel's counters over the trace (every query, not only exported ones).
    pub counters: Counters,
    /// Latency of every answered query.
    pub latency: Latency,
    /// Query records by verdict (failed, slow or, with `--all`, every one).
    pub by_verdict: BTreeMap<Verdict, u64>,
    /// Failed queries by where and why they died (in JSON, keyed by the cause's text:
    /// `stage: reason @ function`, `icmp: what`, `no drop seen (last seen: how far)`).
    pub by_cause: BTreeMap<Cause, u64>,
    /// Failed queries by endpoint they were sent to (or `before DNAT`): the first
    /// [`KEPT_ENDPOINTS`], the rest under [`OTHER_ENDPOINTS`].
    pub by_endpoint: BTreeMap<String, u64>,
    /// Queries still pending when the trace ended, younger than the timeout: not judged.
    pub in_flight_at_end: u64,
    /// Correlator counts.
    pub tally: Tally,
    /// Ring-buffer records of the wrong size or that did not decode (never expected).
    pub malformed_records: u64,
    /// Conntrack statistics change over the trace in the links' namespace.
    pub conntrack_delta: Option<CpuStats>,
    /// Conntrack event subscription overruns (events the kernel dropped).
    pub conntrack_events_lost: u64,
    /// With `--rules`: what netfilter's tracing of DNS packets read (nf_tables).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rule_trace: Option<crate::ruletrace::Counters>,
    /// With `--rules` where the Service's rules are in legacy xtables: its TRACE rules' reading.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rule_trace_legacy: Option<crate::ruletrace::Counters>,
    /// With `--rules`: why a backend's rules were not traced.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub rule_trace_notes: Vec<String>,
    /// Rules on the DNS path whose packet counters moved over the trace (deltas), in both backends.
    pub rule_counters: Vec<RuleCounter>,
    /// Pod links that appeared during the trace and got the TC programs (absent in older reports).
    #[serde(default)]
    pub links_added: u64,
    /// Pod links with the TC programs that went away during the trace.
    #[serde(default)]
    pub links_removed: u64,
    /// The DNS Service's endpoints as they changed during the trace: the last
    /// [`KEPT_ENDPOINT_CHANGES`].
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub endpoint_changes: Vec<EndpointChange>,
    /// Earlier changes, not kept.
    #[serde(default)]
    pub endpoint_changes_not_kept: u64,
    /// Conntrack entries that sent queries to a gone endpoint, with the queries each lost: the
    /// first [`KEPT_STALE_ENTRIES`].
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub stale_entries: Vec<StaleLoss>,
    /// Queries lost to stale entries past those listed.
    #[serde(default)]
    pub stale_queries_unlisted: u64,
    /// With a node-local DNS cache: lookups by hit, miss, unanswered (records only: every
    /// lookup with `--all`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cache: Option<CacheTally>,
    /// UDP answers that came back truncated (TC bit: too large for UDP).
    #[serde(default)]
    pub truncated_answers: u64,
    /// TCP queries or connections linked to the truncated UDP answer they retried.
    #[serde(default)]
    pub retried_over_tcp: u64,
}

/// A change of the DNS Service's endpoints, as the tracer noticed it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct EndpointChange {
    /// When it was noticed (Unix µs).
    pub noticed_us: u64,
    /// Endpoints that appeared.
    pub added: Vec<IpAddr>,
    /// Endpoints that went.
    pub removed: Vec<IpAddr>,
}

/// A stale conntrack entry and the failed queries it sent to its gone endpoint.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct StaleLoss {
    /// The entry (as first named).
    pub entry: StaleEntry,
    /// Failed queries it sent there.
    pub queries: u64,
}

impl TraceSummary {
    /// Counts one record.
    pub fn add(&mut self, r: &QueryRecord) {
        *self.by_verdict.entry(r.verdict).or_default() += 1;
        self.truncated_answers += u64::from(r.truncated);
        self.retried_over_tcp += u64::from(r.retry_of.is_some());
        if r.verdict == Verdict::Answered {
            return;
        }
        *self.by_cause.entry(Cause::of(r)).or_default() += 1;
        let key = endpoint_key(r);
        let key = if self.by_endpoint.len() < KEPT_ENDPOINTS || self.by_endpoint.contains_key(&key)
        {
            key
        } else {
            OTHER_ENDPOINTS.to_owned()
        };
        *self.by_endpoint.entry(key).or_default() += 1;
        if let Some(stale) = &r.stale {
            let kept = self.stale_entries.len();
            match self
                .stale_entries
                .iter_mut()
                .find(|l| l.entry.client == stale.client && l.entry.endpoint == stale.endpoint)
            {
                Some(loss) => loss.queries += 1,
                None if kept < KEPT_STALE_ENTRIES => self.stale_entries.push(StaleLoss {
                    entry: stale.clone(),
                    queries: 1,
                }),
                None => self.stale_queries_unlisted += 1,
            }
        }
    }

    /// The summary as text.
    pub fn text(&self) -> String {
        let mut s = String::new();
        let c = &self.counters;
        let _ = writeln!(s, "\n== summary: {:.1} s", self.seconds);
        let _ = writeln!(
            s,
            "queries seen {}  answered {}  slow {}  drops {}  icmp errors {}  (kernel counters, every query)",
            c.queries, c.answered, c.slow, c.drops, c.icmp
        );
        let _ = writeln!(
            s,
            "pod links during the trace: {} added, {} removed",
            self.links_added, self.links_removed
        );
        let l = &self.latency;
        if l.count > 0 {
            let _ = writeln!(
                s,
                "latency (log2 buckets): p50 <= {} us  p90 <= {} us  p99 <= {} us  max < {} us",
                l.p50_le_us, l.p90_le_us, l.p99_le_us, l.max_lt_us
            );
        }
        if self.truncated_answers + self.retried_over_tcp > 0 {
            let _ = writeln!(
                s,
                "truncated, retried over TCP: {} of {} truncated UDP answers",
                self.retried_over_tcp, self.truncated_answers
            );
        }
        // Only failed and slow queries have records (every query with --all): a healthy trace
        // has none, and no table.
        if !self.by_verdict.is_empty() {
            let mut t = Table::new();
            t.load_style(UTF8_BORDERS_ONLY)
                .set_header(vec!["verdict", "queries"]);
            for (v, n) in &self.by_verdict {
                t.add_row(vec![v.to_string(), n.to_string()]);
            }
            let _ = writeln!(s, "{t}");
        }
        if !self.by_cause.is_empty() {
            let mut t = Table::new();
            t.load_style(UTF8_BORDERS_ONLY)
                .set_header(vec!["where and why it died", "queries"]);
            for (k, n) in &self.by_cause {
                t.add_row(vec![k.to_string(), n.to_string()]);
            }
            let _ = writeln!(s, "{t}");
            let mut t = Table::new();
            t.load_style(UTF8_BORDERS_ONLY)
                .set_header(vec!["failed queries sent to", "queries"]);
            for (k, n) in &self.by_endpoint {
                t.add_row(vec![k.clone(), n.to_string()]);
            }
            let _ = writeln!(s, "{t}");
        }
        self.rule_counter_text(&mut s);
        self.service_text(&mut s);
        if let Some(c) = &self.cache {
            let _ = writeln!(
                s,
                "nodelocal dns cache: {} hits, {} misses, {} unanswered lookups; {} upstream queries linked to no lookup",
                c.hits, c.misses, c.unanswered, c.upstream_unlinked
            );
        }
        if let Some(d) = &self.conntrack_delta {
            let moved: Vec<String> = d
                .fields()
                .iter()
                .filter(|(_, v)| *v != 0)
                .map(|(k, v)| format!("{k} +{v}"))
                .collect();
            let _ = writeln!(
                s,
                "conntrack statistics over the trace: {}",
                if moved.is_empty() {
                    "unchanged".to_owned()
                } else {
                    moved.join("  ")
                }
            );
        }
        for (name, c) in [
            ("nf_tables", &self.rule_trace),
            ("xtables", &self.rule_trace_legacy),
        ] {
            if let Some(c) = c {
                let _ = writeln!(
                    s,
                    "rule trace ({name}): {} packet paths from {} messages; lost: {} receive overruns, {} malformed messages, {} steps naming a rule no longer there",
                    c.paths, c.messages, c.lost, c.malformed, c.unknown_rules
                );
            }
        }
        for n in &self.rule_trace_notes {
            let _ = writeln!(s, "rule trace: {n}");
        }
        let _ = writeln!(
            s,
            "not judged: {} in flight at the end, {} pushed out of the slot table in flight, {} late drops of queries already judged; lost: {} ring-buffer records, {} malformed records, {} unparseable DNS packets, {} undecodable DNS questions, {} conntrack event overruns; {} answers or endpoint packets matched no query",
            self.in_flight_at_end,
            self.tally.evicted_in_flight,
            self.tally.late_evidence,
            c.lost_events,
            self.malformed_records,
            c.parse_errors,
            self.tally.unreadable_questions,
            self.conntrack_events_lost,
            c.unmatched,
        );
        s
    }

    /// The Service's endpoint changes and the stale conntrack entries that outlived one.
    fn service_text(&self, s: &mut String) {
        for c in &self.endpoint_changes {
            let list = |ips: &[IpAddr]| match ips {
                [] => "none".to_owned(),
                _ => ips
                    .iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
                    .join(", "),
            };
            let _ = writeln!(
                s,
                "the DNS Service's endpoints changed at {}: removed {}, added {}",
                crate::flow::record::clock(c.noticed_us),
                list(&c.removed),
                list(&c.added)
            );
        }
        if self.endpoint_changes_not_kept > 0 {
            let _ = writeln!(
                s,
                "({} earlier changes not kept)",
                self.endpoint_changes_not_kept
            );
        }
        for l in &self.stale_entries {
            let _ = writeln!(
                s,
                "{} queries from {} lost to a {}",
                l.queries, l.entry.client, l.entry
            );
        }
        if self.stale_queries_unlisted > 0 {
            let _ = writeln!(
                s,
                "{} more queries lost to stale entries past the {KEPT_STALE_ENTRIES} listed",
                self.stale_queries_unlisted
            );
        }
    }

    /// The rules on the DNS path whose counters moved, and those netfilter drops match.
    fn rule_counter_text(&self, s: &mut String) {
        if !self.rule_counters.is_empty() {
            let _ = writeln!(s, "rules on the DNS path whose packet counters moved:");
            for r in &self.rule_counters {
                let _ = writeln!(
                    s,
                    "  +{:<6} {} {}: {}",
                    r.packets, r.backend, r.table, r.rule
                );
            }
            // Without a verdict probe, a netfilter drop is tied to the DROP/REJECT rules that moved.
            let blocking: Vec<&RuleCounter> = self
                .rule_counters
                .iter()
                .filter(|r| r.rule.contains("-j DROP") || r.rule.contains("-j REJECT"))
                .collect();
            let netfilter = self.by_cause.keys().any(|k| {
                matches!(
                    k,
                    Cause::Drop {
                        stage: Stage::Netfilter,
                        ..
                    }
                )
            });
            if !blocking.is_empty() && netfilter {
                let _ = writeln!(s, "netfilter drops above match these rules' counters:");
                for r in blocking {
                    let _ = writeln!(
                        s,
                        "  {} {}: {} (+{} packets)",
                        r.backend, r.table, r.rule, r.packets
                    );
                }
            }
        }
    }
}

/// The endpoint a query was sent to, or `before DNAT`.
pub fn endpoint_key(r: &QueryRecord) -> String {
    r.endpoint
        .map(|e| e.to_string())
        .unwrap_or_else(|| "before DNAT".to_owned())
}

fn ep(e: Option<IpAddr>, link: &Option<String>) -> String {
    match (e, link) {
        (Some(e), Some(l)) => format!("{e} [{l}]"),
        (Some(e), None) => e.to_string(),
        _ => "?".to_owned(),
    }
}

/// Whether the kernel hands over `r` without `--all`: a failed query, an answer slower than
/// `slow_us`, one with a drop or ICMP error on its path, a truncated answer, TCP, a retry.
pub fn reported_without_all(r: &QueryRecord, slow_us: u64) -> bool {
    r.verdict != Verdict::Answered
        || r.latency_us.is_some_and(|us| us > slow_us)
        || r.drop.is_some()
        || r.icmp.is_some()
        || r.truncated
        || r.transport == Transport::Tcp
        || r.retry_of.is_some()
}

/// One line for a query.
pub fn line(r: &QueryRecord) -> String {
    let secs = r.time_us / 1_000_000;
    let (h, m, sec) = ((secs / 3600) % 24, (secs / 60) % 60, secs % 60);
    let mut s = format!(
        "{h:02}:{m:02}:{sec:02}.{:03} {:<10} {} -> {}{} ",
        (r.time_us / 1000) % 1000,
        r.verdict.to_string().to_uppercase(),
        r.client,
        r.server,
        match r.transport {
            Transport::Udp => "",
            Transport::Tcp => " over tcp",
        },
    );
    if r.connection {
        s.push_str("connection (SYN, no query sent)");
    } else {
        let _ = write!(
            s,
            "id {:#06x} {} {}",
            r.id,
            r.qtype.as_deref().unwrap_or("?"),
            r.name.as_deref().unwrap_or("?"),
        );
    }
    if r.truncated {
        s.push_str(" [truncated]");
    }
    if let Some(leg) = &r.retry_of {
        let _ = write!(s, " [{leg}]");
    }
    match r.verdict {
        Verdict::Answered => {
            let _ = write!(
                s,
                " in {} us via {}",
                r.latency_us.unwrap_or(0),
                ep(r.endpoint, &r.endpoint_link)
            );
            if let Some(n) = r.nat {
                let _ = write!(s, " (NAT to {n})");
            }
            if let Some(by) = r.nat_by {
                let _ = write!(s, " (NAT by {by})");
            }
            let st = &r.stages;
            if let (Some(a), Some(b), Some(c)) = (st.to_endpoint_us, st.in_endpoint_us, st.back_us)
            {
                let _ = write!(s, " (to pod {a} us, in pod {b} us, back {c} us)");
            }
        }
        _ => {
            if let Some(i) = &r.icmp {
                let _ = write!(s, " | {} from {} ({})", i.what, i.by, i.leg);
            }
            if let Some(d) = &r.drop {
                let _ = write!(s, " | {} {} at {}", d.stage, d.reason, d.location);
                if let Some(b) = &d.backend {
                    let _ = write!(s, " [{b}");
                    if let Some(t) = &d.table {
                        let _ = write!(s, " table {t}");
                    }
                    if let Some(c) = &d.chain {
                        let _ = write!(s, " chain {c}");
                    }
                    if let Some(from) = &d.backend_from {
                        let _ = write!(s, ", from the {from}");
                    }
                    s.push(']');
                }
                let _ = write!(s, " in {} ({}", d.at, d.leg);
                if let Some(e) = r.endpoint {
                    let _ = write!(s, " to {e}");
                }
                let _ = write!(s, "): {}", d.why);
            }
            if let Some(p) = &r.rules {
                let _ = write!(s, " | rules: {p}");
            }
            if let Some(n) = r.nat {
                let _ = write!(s, " | NAT to {n}");
            }
            if let Some(by) = r.nat_by {
                let _ = write!(s, " | NAT by {by}");
            }
            if let Some(c) = &r.conntrack {
                let _ = write!(s, " | conntrack: {c}");
            }
            if let Some(stale) = &r.stale {
                let _ = write!(s, " | {stale}");
            }
            if let (None, None, Some(q)) = (&r.icmp, &r.drop, &r.queued) {
                let _ = write!(
                    s,
                    " | queued behind a full receive queue at {}, never read ({}): the server is not \
                     reading fast enough",
                    q.endpoint, q.queue
                );
            } else if r.icmp.is_none() && r.drop.is_none() {
                let _ = write!(s, " | no drop seen; last seen: {}", r.last_seen);
                if let Some(e) = r.endpoint {
                    let _ = write!(s, " (sent to {})", ep(Some(e), &r.endpoint_link));
                }
            }
        }
    }
    if r.retries > 0 {
        let _ = write!(s, " [{} retries]", r.retries);
    }
    if let Some(c) = &r.cache {
        let _ = write!(s, " | {}", c.outcome);
        if let Some(pod) = c.served_by() {
            let _ = write!(s, " served by {pod}");
        }
        for u in &c.upstream {
            let _ = write!(s, "\n    upstream leg: {}", line(u));
        }
    }
    s
}

#[cfg(test)]
mod tests;
