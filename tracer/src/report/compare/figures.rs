//! The figures of one report: each one's name, the group `compare` keeps it with, what it
//! measures and its value. Figures about failed queries are named after their typed [`Cause`].

use std::{collections::BTreeMap, fmt};

use super::{Kind, Value};
use crate::{
    flow::{
        cause::Cause,
        record::{NetfilterBackend, QueryRecord},
    },
    report::{
        document::{Document, NodeFacts, ProbeReport},
        trace::TraceSummary,
        validation::{Validation, show_tier},
    },
};

/// One figure of one report.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct Row {
    /// What it is kept with: its scenario for validate's (`validate.nft.filter-drop`), else its
    /// section (`probe`, `trace`, `conntrack`, ...).
    pub group: String,
    /// `group.field`, `group.field[key]`, or the group itself.
    pub name: String,
    pub kind: Kind,
    pub value: Value,
}

/// The figures of one report, in order.
#[derive(Debug, Default)]
pub(super) struct Rows(pub Vec<Row>);

impl Rows {
    /// The group's own figure, named after it (`kernel`, `validate.nft.healthy`).
    fn whole(&mut self, group: &str, kind: Kind, value: Value) {
        self.push(group, group.to_owned(), kind, value);
    }

    /// `group.field`.
    fn field(&mut self, group: &str, field: impl fmt::Display, kind: Kind, value: Value) {
        self.push(group, format!("{group}.{field}"), kind, value);
    }

    /// `group.field[key]`.
    fn keyed(
        &mut self,
        group: &str,
        field: &str,
        key: impl fmt::Display,
        kind: Kind,
        value: Value,
    ) {
        self.push(group, format!("{group}.{field}[{key}]"), kind, value);
    }

    fn push(&mut self, group: &str, name: String, kind: Kind, value: Value) {
        self.0.push(Row {
            group: group.to_owned(),
            name,
            kind,
            value,
        });
    }
}

fn num(n: impl Into<f64>) -> Value {
    Value::Number(n.into())
}

fn text(t: impl fmt::Display) -> Value {
    Value::Text(t.to_string())
}

/// The figures of one report, in order.
pub(super) fn figures(d: &Document) -> Rows {
    let mut out = Rows::default();
    out.whole("kernel", Kind::Info, text(&d.kernel));
    if let Some(tier) = d.tier {
        out.field("tracer", "tier", Kind::Info, text(tier));
    }
    if let Some(n) = &d.node {
        node(n, &mut out);
    }
    if let Some(p) = &d.probe {
        probe("probe", p, &mut out);
    }
    if let Some(t) = &d.trace {
        trace(t, d.probe.is_some(), &mut out);
    }
    if let Some(ct) = &d.conntrack_delta {
        for (name, v) in ct.fields() {
            let kind = if matches!(name, "drop" | "insert_failed") {
                Kind::ConntrackDrops
            } else {
                Kind::Info
            };
            out.field("conntrack", name, kind, num(v));
        }
    }
    if let Some(v) = &d.validate {
        validate(v, &mut out);
    }
    out
}

fn node(n: &NodeFacts, out: &mut Rows) {
    let g = "node";
    out.field(g, "tier", Kind::Info, text(n.tier));
    out.field(g, "iptables_backend", Kind::Info, text(&n.iptables_backend));
    out.field(g, "proxy_mode", Kind::Info, text(&n.proxy_mode));
    if let Some(svc) = &n.dns_service {
        out.field(g, "dns_service", Kind::Info, text(svc));
    }
    if let Some(svc) = &n.dns_service6 {
        out.field(g, "dns_service6", Kind::Info, text(svc));
    }
    out.field(g, "conntrack_count", Kind::Info, num(n.conntrack_count));
    out.field(g, "conntrack_max", Kind::Info, num(n.conntrack_max));
    out.field(
        g,
        "dns_conntrack_stale",
        Kind::Info,
        num(n.dns_conntrack_stale as f64),
    );
    let mut by_severity: BTreeMap<&str, f64> = BTreeMap::new();
    for f in &n.findings {
        *by_severity.entry(f.severity.as_str()).or_default() += 1.0;
    }
    for sev in ["error", "warning"] {
        let n = by_severity.get(sev).copied().unwrap_or(0.0);
        out.field(g, format!("findings.{sev}"), Kind::Info, num(n));
    }
}

/// A trace's figures; with a probe (`probed`), the probe's are judged and these only shown.
fn trace(t: &TraceSummary, probed: bool, out: &mut Rows) {
    let g = "trace";
    let judged = |k: Kind| if probed { Kind::Info } else { k };
    let c = &t.counters;
    out.field(g, "queries", Kind::Info, num(c.queries as f64));
    out.field(g, "answered", Kind::Info, num(c.answered as f64));
    if c.queries > 0 {
        let loss = 100.0 * c.queries.saturating_sub(c.answered) as f64 / c.queries as f64;
        out.field(g, "loss_percent", judged(Kind::LossPercent), num(loss));
    }
    if t.latency.count > 0 {
        let p99 = t.latency.p99_le_us as f64 / 1000.0;
        out.field(g, "latency_p99_le_ms", judged(Kind::P99Ms), num(p99));
    }
    for (cause, n) in &t.by_cause {
        out.keyed(g, "drops", cause, judged(Kind::Drops), num(*n as f64));
    }
    out.field(g, "lost_events", Kind::Info, num(c.lost_events as f64));
}

/// The figures of a probe's result, in group `group` (`probe`, or a validate scenario).
fn probe(group: &str, p: &ProbeReport, out: &mut Rows) {
    out.field(group, "sent", Kind::Info, num(p.sent));
    out.field(group, "lost", Kind::Info, num(p.lost));
    out.field(
        group,
        "loss_percent",
        Kind::LossPercent,
        num(p.loss_percent),
    );
    if let Some(l) = &p.latency_ms {
        for (name, v, kind) in [
            ("p50", l.p50, Kind::Info),
            ("p90", l.p90, Kind::Info),
            ("p99", l.p99, Kind::P99Ms),
            ("max", l.max, Kind::Info),
        ] {
            out.field(group, format!("latency_{name}_ms"), kind, num(v));
        }
    }
    for (rcode, n) in &p.rcodes {
        out.keyed(group, "rcode", rcode, Kind::Info, num(*n));
    }
    for (cause, n) in &p.lost_by_cause {
        out.keyed(group, "lost_by_cause", cause, Kind::Drops, num(*n));
    }
    for (ep, n) in &p.lost_by_endpoint {
        out.keyed(group, "lost_by_endpoint", ep, Kind::Info, num(*n));
    }
}

fn validate(v: &Validation, out: &mut Rows) {
    out.whole("validate.tier", Kind::Info, text(show_tier(v.tier)));
    for sc in &v.scenarios {
        let group = format!("validate.{}.{}", sc.backend.name(), sc.scenario);
        out.whole(&group, Kind::Pass, num(if sc.passed { 1.0 } else { 0.0 }));
        if sc.scenario == "healthy" {
            probe(&group, &sc.probe, out);
        } else {
            out.field(&group, "lost", Kind::Info, num(sc.probe.lost));
        }
        // Where each lost query died: a fault's own drops are expected (its pass or fail judges
        // them); what matters between kernels is a reason or location that appears or
        // disappears.
        let mut deaths: BTreeMap<DiedAt, u32> = BTreeMap::new();
        for q in &sc.probe.lost_queries {
            for d in died_at(q.trace.as_ref()) {
                *deaths.entry(d).or_default() += 1;
            }
        }
        for (d, n) in deaths {
            out.field(&group, d, Kind::Info, num(n));
        }
    }
}

/// Where a lost query died, as compare names it: the cause of its drop with the netfilter
/// backend when one was told, the cause of its ICMP error, or (neither) its cause.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub(super) struct DiedAt {
    pub cause: Cause,
    pub backend: Option<NetfilterBackend>,
}

/// `drop[stage: REASON @ function (backend)]`, `icmp[what]`, `[no drop seen (...)]`, `not seen
/// by the tracer`.
impl fmt::Display for DiedAt {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.cause {
            c @ Cause::Drop { .. } => {
                write!(f, "drop[{c}")?;
                if let Some(b) = self.backend {
                    write!(f, " ({b})")?;
                }
                f.write_str("]")
            }
            Cause::Icmp { what } => write!(f, "icmp[{what}]"),
            c @ (Cause::NoDropSeen { .. } | Cause::Queued { .. }) => write!(f, "[{c}]"),
            c @ Cause::NotTraced => write!(f, "{c}"),
        }
    }
}

/// Where a lost query died: its drop and its ICMP error (both, for a query rejected after a
/// drop), else how far it was seen, or that the tracer has no record of it.
pub(super) fn died_at(r: Option<&QueryRecord>) -> Vec<DiedAt> {
    let Some(r) = r else {
        return vec![DiedAt {
            cause: Cause::NotTraced,
            backend: None,
        }];
    };
    let mut out = Vec::new();
    if let Some(d) = &r.drop {
        out.push(DiedAt {
            cause: Cause::of_drop(d),
            backend: d.backend,
        });
    }
    if let Some(i) = &r.icmp {
        out.push(DiedAt {
            cause: Cause::Icmp {
                what: i.what.clone(),
            },
            backend: None,
        });
    }
    if out.is_empty() {
        out.push(DiedAt {
            cause: Cause::of(r),
            backend: None,
        });
    }
    out
}
