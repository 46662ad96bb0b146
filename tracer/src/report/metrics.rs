//! The metrics of `trace --metrics`: every query record the trace completes, the kernel's
//! counters, conntrack's table and statistics and what the node is, in a Prometheus registry,
//! rendered as the OpenMetrics text Prometheus scrapes. Names and labels are the contract the
//! alert rules are written against (README, "Metrics").
//!
//! Label values are bounded: at most [`MAX_ENDPOINTS`] endpoint values (the rest are `other`),
//! and at most [`MAX_LOST_SERIES`] loss series (the rest are folded into one).

use std::{
    collections::HashSet,
    net::IpAddr,
    sync::{Mutex, PoisonError},
};

use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{counter::Counter, family::Family, gauge::Gauge, histogram::Histogram, info::Info},
    registry::Registry,
};

use crate::{
    flow::{
        cause::Cause,
        record::{QueryRecord, Verdict},
        transport::Transport,
    },
    node::{
        backend::Kind,
        conntrack::{CpuStats, Table},
        inspect::Report,
    },
    probes::{
        plan::{Fate, Plan},
        session::Counters,
    },
};

/// Distinct `endpoint` values kept; later endpoints are counted as `other`.
pub const MAX_ENDPOINTS: usize = 16;
/// Distinct `tracer_dns_lost_total` series kept; later ones are counted in the one series
/// `{stage="other",reason="other",endpoint="other"}`, which makes the cap.
pub const MAX_LOST_SERIES: usize = 64;
/// The latency histogram's buckets, in seconds.
pub const LATENCY_BUCKETS: [f64; 13] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
];
/// The value of a folded label.
const OTHER: &str = "other";
/// The endpoint of a query no pod was chosen for.
const NONE: &str = "none";

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct QueryLabels {
    family: &'static str,
    transport: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct EndpointLabels {
    endpoint: String,
}

/// The labels of one loss series.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct LostLabels {
    /// The stage that ate the query (the correlator's stage name, `icmp`, or `none`).
    pub stage: String,
    /// The kernel's drop reason, or the cause's name.
    pub reason: String,
    /// The endpoint it was sent to, `none`, or `other`.
    pub endpoint: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StatLabels {
    stat: &'static str,
}

/// What the node is, for `tracer_node_info`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct NodeInfo {
    /// The node's hostname (uname nodename).
    pub node: String,
    /// Where kube-proxy's rules are: `legacy`, `nft`, `mixed` or `none`.
    pub iptables_backend: String,
    /// kube-proxy's mode: `iptables`, `ipvs`, `nftables` or `unknown`.
    pub kube_proxy_mode: String,
    /// The hook tier the trace attached.
    pub hook_tier: String,
    /// The kernel release.
    pub kernel: String,
}

impl NodeInfo {
    /// From the trace header's node inspection (`None`: it failed) and the plan carried out.
    pub fn new(inspected: Option<&Report>, plan: &Plan) -> Self {
        let uname = nix::sys::utsname::uname().ok();
        let text = |s: Option<&std::ffi::OsStr>| {
            s.map(|s| s.to_string_lossy().into_owned())
                .unwrap_or_default()
        };
        let backend = match inspected.map(|r| r.backends.verdict.kind) {
            Some(Kind::Legacy) => "legacy",
            Some(Kind::Nft) => "nft",
            Some(Kind::Mixed) => "mixed",
            Some(Kind::None) | None => "none",
        };
        Self {
            node: text(uname.as_ref().map(|u| u.nodename())),
            iptables_backend: backend.to_owned(),
            kube_proxy_mode: inspected
                .map(|r| r.proxy_mode.to_string())
                .unwrap_or_else(|| "unknown".to_owned()),
            hook_tier: plan.tier.to_string(),
            kernel: match inspected {
                Some(r) => r.facts.kernel.clone(),
                None => text(uname.as_ref().map(|u| u.release())),
            },
        }
    }
}

/// Label values seen so far, up to a cap.
#[derive(Debug, Default)]
struct Folds {
    endpoints: Vec<IpAddr>,
    lost: HashSet<LostLabels>,
}

impl Folds {
    /// `ip` as an endpoint label: itself while fewer than `MAX_ENDPOINTS` are kept, `other`
    /// after; `none` without one.
    fn endpoint(&mut self, ip: Option<IpAddr>) -> String {
        let Some(ip) = ip else {
            return NONE.to_owned();
        };
        if !self.endpoints.contains(&ip) {
            if self.endpoints.len() >= MAX_ENDPOINTS {
                return OTHER.to_owned();
            }
            self.endpoints.push(ip);
        }
        ip.to_string()
    }

    /// `labels` while fewer than `MAX_LOST_SERIES` are kept (one is kept for the fold), else
    /// the folded series.
    fn lost(&mut self, labels: LostLabels) -> LostLabels {
        if self.lost.contains(&labels) || self.lost.len() + 1 < MAX_LOST_SERIES {
            self.lost.insert(labels.clone());
            return labels;
        }
        let folded = LostLabels {
            stage: OTHER.to_owned(),
            reason: OTHER.to_owned(),
            endpoint: OTHER.to_owned(),
        };
        self.lost.insert(folded.clone());
        folded
    }
}

/// A kernel counter read as a total, turned into increments.
#[derive(Debug, Default)]
struct Totals {
    events_lost: u64,
    unparsed: u64,
    conntrack: Option<CpuStats>,
}

/// The metrics of a running trace. Shared between the trace (which feeds it) and the HTTP
/// endpoint (which renders it): every method takes `&self`.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    queries: Family<QueryLabels, Counter>,
    answered: Family<EndpointLabels, Counter>,
    lost: Family<LostLabels, Counter>,
    latency: Histogram,
    conntrack_entries: Gauge,
    conntrack_max: Gauge,
    conntrack_stat: Family<StatLabels, Counter>,
    events_lost: Counter,
    unparsed: Counter,
    probes_skipped: Gauge,
    folds: Mutex<Folds>,
    totals: Mutex<Totals>,
}

impl Metrics {
    /// Every family registered, `tracer_node_info` set to `node`.
    pub fn new(node: NodeInfo) -> Self {
        let mut registry = Registry::default();
        let m = Self {
            registry: Registry::default(),
            queries: Family::default(),
            answered: Family::default(),
            lost: Family::default(),
            latency: Histogram::new(LATENCY_BUCKETS),
            conntrack_entries: Gauge::default(),
            conntrack_max: Gauge::default(),
            conntrack_stat: Family::default(),
            events_lost: Counter::default(),
            unparsed: Counter::default(),
            probes_skipped: Gauge::default(),
            folds: Mutex::default(),
            totals: Mutex::default(),
        };
        // Counters are registered without `_total`: the encoder adds it.
        let r = &mut registry;
        r.register(
            "tracer_dns_queries",
            "DNS queries the tracer saw leave a client",
            m.queries.clone(),
        );
        r.register(
            "tracer_dns_answered",
            "Answered DNS queries by the DNS pod that served them",
            m.answered.clone(),
        );
        r.register(
            "tracer_dns_lost",
            "Unanswered DNS queries by the stage that ate them, the reason and the endpoint",
            m.lost.clone(),
        );
        r.register(
            "tracer_dns_latency_seconds",
            "Latency of answered DNS queries",
            m.latency.clone(),
        );
        r.register(
            "tracer_conntrack_entries",
            "Conntrack entries in the traced namespace",
            m.conntrack_entries.clone(),
        );
        r.register(
            "tracer_conntrack_max",
            "nf_conntrack_max",
            m.conntrack_max.clone(),
        );
        r.register(
            "tracer_conntrack_stat",
            "Conntrack's per-CPU statistics summed (ctnetlink)",
            m.conntrack_stat.clone(),
        );
        r.register(
            "tracer_node",
            "What the node is: iptables backend, kube-proxy mode, hook tier, kernel",
            Info::new(node),
        );
        r.register(
            "tracer_events_lost",
            "Ring-buffer records lost (the kernel side found the buffer full)",
            m.events_lost.clone(),
        );
        r.register(
            "tracer_packets_unparsed",
            "DNS-port packets the eBPF side could not parse",
            m.unparsed.clone(),
        );
        r.register(
            "tracer_probes_skipped",
            "Planned eBPF programs this kernel did not give",
            m.probes_skipped.clone(),
        );
        Self { registry, ..m }
    }

    /// Counts one completed query.
    pub fn add(&self, r: &QueryRecord) {
        let family = if r.client.is_ipv4() { "ipv4" } else { "ipv6" };
        let transport = match r.transport {
            Transport::Udp => "udp",
            Transport::Tcp => "tcp",
        };
        self.queries
            .get_or_create(&QueryLabels { family, transport })
            .inc();
        let mut folds = self.folds.lock().unwrap_or_else(PoisonError::into_inner);
        let endpoint = folds.endpoint(r.endpoint);
        if r.verdict == Verdict::Answered {
            self.answered
                .get_or_create(&EndpointLabels { endpoint })
                .inc();
            if let Some(us) = r.latency_us {
                self.latency.observe(us as f64 / 1e6);
            }
            return;
        }
        let (stage, reason) = stage_reason(&Cause::of(r));
        let labels = folds.lost(LostLabels {
            stage,
            reason,
            endpoint,
        });
        self.lost.get_or_create(&labels).inc();
    }

    /// The kernel side's counters (read as totals since the trace started) and the plan.
    pub fn set_kernel(&self, counters: &Counters, plan: &Plan) {
        let mut t = self.totals.lock().unwrap_or_else(PoisonError::into_inner);
        self.events_lost
            .inc_by(counters.lost_events.saturating_sub(t.events_lost));
        self.unparsed
            .inc_by(counters.parse_errors.saturating_sub(t.unparsed));
        t.events_lost = t.events_lost.max(counters.lost_events);
        t.unparsed = t.unparsed.max(counters.parse_errors);
        let skipped = plan
            .outcomes
            .iter()
            .filter(|o| matches!(o.fate, Fate::Skipped { .. }))
            .count();
        self.probes_skipped.set(skipped as i64);
    }

    /// Conntrack's table and statistics (summed over CPUs), when they could be read.
    pub fn set_conntrack(&self, table: Option<Table>, stats: Option<CpuStats>) {
        if let Some(t) = table {
            self.conntrack_entries.set(i64::from(t.count));
            self.conntrack_max.set(i64::from(t.max));
        }
        let Some(now) = stats else {
            return;
        };
        let mut t = self.totals.lock().unwrap_or_else(PoisonError::into_inner);
        let before = t.conntrack.map(|s| s.fields());
        for (i, (stat, value)) in now.fields().into_iter().enumerate() {
            let was = before.map_or(0, |b| b[i].1);
            // The kernel's statistics only grow (u32, wrapping).
            let delta = value.wrapping_sub(was);
            self.conntrack_stat
                .get_or_create(&StatLabels { stat })
                .inc_by(u64::from(delta));
        }
        t.conntrack = Some(now);
    }

    /// The OpenMetrics text of every family.
    pub fn text(&self) -> String {
        let mut out = String::new();
        // Writing to a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}

/// The `stage` and `reason` labels of a failed query's cause: a drop's stage and kernel reason
/// (`unknown` where the kernel names none, before 5.17); `icmp` and the error; a query queued
/// behind a full receive queue at `socket`; `none` and how far a query with no drop got.
pub fn stage_reason(cause: &Cause) -> (String, String) {
    let label = |s: &str| s.replace(' ', "_");
    match cause {
        Cause::Drop { stage, reason, .. } => (
            stage.name().to_owned(),
            match reason.is_empty() {
                true => "unknown".to_owned(),
                false => reason.clone(),
            },
        ),
        Cause::Icmp { what } => ("icmp".to_owned(), label(what)),
        Cause::Queued { .. } => ("socket".to_owned(), "queued_never_read".to_owned()),
        Cause::NoDropSeen { last_seen } => (
            NONE.to_owned(),
            format!("no_drop_seen_last_{}", last_seen.name()),
        ),
        Cause::NotTraced => (NONE.to_owned(), "not_traced".to_owned()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::flow::record::Stage;

    fn ip(i: u8) -> IpAddr {
        IpAddr::V4(std::net::Ipv4Addr::new(10, 244, 0, i))
    }

    #[test]
    fn endpoints_past_the_cap_are_other() {
        let mut f = Folds::default();
        for i in 0..MAX_ENDPOINTS as u8 {
            assert_eq!(f.endpoint(Some(ip(i))), ip(i).to_string());
        }
        assert_eq!(f.endpoint(Some(ip(200))), OTHER);
        assert_eq!(f.endpoint(Some(ip(201))), OTHER);
        // One kept before stays itself; no pod chosen is `none`.
        assert_eq!(f.endpoint(Some(ip(3))), ip(3).to_string());
        assert_eq!(f.endpoint(None), NONE);
    }

    #[test]
    fn loss_series_past_the_cap_fold_into_one() {
        let mut f = Folds::default();
        let labels = |i: usize| LostLabels {
            stage: "netfilter".to_owned(),
            reason: format!("REASON_{i}"),
            endpoint: NONE.to_owned(),
        };
        let kept: HashSet<LostLabels> = (0..200).map(|i| f.lost(labels(i))).collect();
        assert_eq!(kept.len(), MAX_LOST_SERIES);
        assert_eq!(f.lost.len(), MAX_LOST_SERIES);
        assert_eq!(f.lost(labels(0)), labels(0));
        assert_eq!(f.lost(labels(199)).reason, OTHER);
    }

    #[test]
    fn every_contract_family_is_rendered_and_the_endpoint_label_is_capped() {
        let plan = Plan::from_outcomes(Vec::new());
        let m = Metrics::new(NodeInfo::new(None, &plan));
        for i in 0..40u8 {
            let mut r = QueryRecord::dropped(u16::from(i), Stage::Netfilter);
            r.endpoint = Some(ip(i));
            m.add(&r);
            r.verdict = Verdict::Answered;
            r.drop = None;
            r.latency_us = Some(1500);
            m.add(&r);
        }
        m.set_kernel(&Counters::default(), &plan);
        m.set_conntrack(None, Some(CpuStats::default()));
        let text = m.text();
        for family in [
            "tracer_dns_queries_total{family=\"ipv4\",transport=\"udp\"} 80",
            "tracer_dns_answered_total{endpoint=\"other\"} 24",
            "tracer_dns_lost_total{stage=\"netfilter\",reason=\"NETFILTER_DROP\",endpoint=\"10.244.0.0\"} 1",
            "tracer_dns_latency_seconds_bucket{le=\"0.0025\"} 40",
            "tracer_dns_latency_seconds_count 40",
            "tracer_conntrack_entries 0",
            "tracer_conntrack_max 0",
            "tracer_conntrack_stat_total{stat=\"insert_failed\"} 0",
            "tracer_node_info{node=",
            "tracer_events_lost_total 0",
            "tracer_packets_unparsed_total 0",
            "tracer_probes_skipped 0",
        ] {
            assert!(text.contains(family), "{family} in:\n{text}");
        }
        let endpoints: HashSet<&str> = text
            .lines()
            .filter(|l| l.starts_with("tracer_dns_answered_total{"))
            .collect();
        assert_eq!(endpoints.len(), MAX_ENDPOINTS + 1, "{text}");
    }
}
