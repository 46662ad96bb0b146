//! The checks: what each scenario must show in the tracer's records, summary and counters.

use std::net::IpAddr;

use super::Scenario;
use crate::{
    flow::record::{Leg, QueryRecord as TraceRecord, Stage, Verdict},
    lab::LabInfo,
    node::conntrack::CpuStats,
    probes::{
        plan::{Fate, Plan, Tier},
        table::Stage as ProbeStage,
    },
    report::{document::ProbeReport, trace::TraceSummary},
};

/// What a check sees of one scenario: the lab, the tracer's records and summary, the probe.
pub(super) struct Observed<'a> {
    pub lab: &'a LabInfo,
    /// The tracer's summary (`None`: it gave none).
    pub summary: Option<&'a TraceSummary>,
    /// The tracer's records (every query in the healthy scenario, failed ones elsewhere).
    pub records: &'a [TraceRecord],
    pub report: &'a ProbeReport,
    /// The Service's endpoints as the rules hold them now.
    pub live: Vec<IpAddr>,
}

impl Observed<'_> {
    fn dns0(&self) -> Option<IpAddr> {
        self.lab.endpoints.first().map(|p| p.ip.into())
    }

    /// The trace record of every lost query (those without one are reported by `attributed`).
    fn lost(&self) -> impl Iterator<Item = (u16, &TraceRecord)> {
        self.report
            .lost_queries
            .iter()
            .filter_map(|q| q.trace.as_ref().map(|r| (q.id, r)))
    }
}

fn attributed(s: &Observed, p: &mut Vec<String>) {
    if s.report.unattributed > 0 {
        p.push(format!(
            "{} of {} lost queries have no trace record",
            s.report.unattributed, s.report.lost
        ));
    }
}

fn some_lost(s: &Observed, p: &mut Vec<String>) {
    if s.report.lost == 0 || s.report.lost == s.report.sent {
        p.push(format!(
            "expected some of {} queries lost (one endpoint of two), lost {}",
            s.report.sent, s.report.lost
        ));
    }
}

fn all_lost(s: &Observed, p: &mut Vec<String>) {
    if s.report.lost != s.report.sent {
        p.push(format!(
            "expected all {} queries lost, lost {}",
            s.report.sent, s.report.lost
        ));
    }
}

fn to_dns0(s: &Observed, id: u16, r: &TraceRecord, p: &mut Vec<String>) -> bool {
    if r.endpoint != s.dns0() {
        p.push(format!(
            "query {id:#06x}: sent to {:?}, expected dns0 {:?}",
            r.endpoint,
            s.dns0()
        ));
        return false;
    }
    true
}

pub(super) fn check_healthy(s: &Observed, p: &mut Vec<String>) {
    if s.report.lost != 0 || s.report.sent == 0 {
        p.push(format!(
            "expected every query answered: sent {}, lost {}",
            s.report.sent, s.report.lost
        ));
    }
}

pub(super) fn check_filter_drop(s: &Observed, p: &mut Vec<String>) {
    some_lost(s, p);
    for (id, r) in s.lost() {
        to_dns0(s, id, r, p);
        match &r.drop {
            Some(d)
                if d.stage == Stage::Netfilter
                    && d.reason == "NETFILTER_DROP"
                    && d.leg == Leg::QueryToPod => {}
            other => p.push(format!(
                "query {id:#06x}: expected a netfilter NETFILTER_DROP after DNAT, got {other:?}"
            )),
        }
    }
}

pub(super) fn check_no_endpoints(s: &Observed, p: &mut Vec<String>) {
    all_lost(s, p);
    let mut rejected = 0;
    for (id, r) in s.lost() {
        if r.endpoint.is_some() {
            p.push(format!(
                "query {id:#06x}: DNATed to {:?}, expected no DNAT",
                r.endpoint
            ));
        }
        match &r.drop {
            Some(d) if d.stage == Stage::Netfilter && d.leg == Leg::QueryBeforeDnat => {}
            other => p.push(format!(
                "query {id:#06x}: expected a netfilter drop before DNAT, got {other:?}"
            )),
        }
        if r.icmp.is_some() {
            rejected += 1;
            if r.verdict != Verdict::Rejected {
                p.push(format!(
                    "query {id:#06x}: an ICMP error was sent, verdict is {}",
                    r.verdict
                ));
            }
        }
    }
    if rejected == 0 && s.report.lost > 0 {
        p.push(
            "no query was rejected with an ICMP error (the first one is not rate-limited)".into(),
        );
    }
}

pub(super) fn check_pod_down(s: &Observed, p: &mut Vec<String>) {
    some_lost(s, p);
    let pod_ns = s.lab.endpoints.first().map(|e| format!("{}/", e.netns));
    for (id, r) in s.lost() {
        to_dns0(s, id, r, p);
        match &r.drop {
            Some(d)
                if d.stage == Stage::Socket
                    && d.reason == "NO_SOCKET"
                    && pod_ns.as_ref().is_some_and(|ns| d.at.starts_with(ns)) => {}
            other => p.push(format!(
                "query {id:#06x}: expected NO_SOCKET at the socket stage in dns0, got {other:?}"
            )),
        }
    }
}

pub(super) fn check_pod_link_down(s: &Observed, p: &mut Vec<String>) {
    some_lost(s, p);
    for (id, r) in s.lost() {
        to_dns0(s, id, r, p);
        match &r.drop {
            Some(d) if matches!(d.stage, Stage::Neighbour | Stage::Bridge) => {}
            other => p.push(format!(
                "query {id:#06x}: expected a drop at the neighbour or bridge stage, got {other:?}"
            )),
        }
    }
}

pub(super) fn check_conntrack_full(s: &Observed, p: &mut Vec<String>) {
    all_lost(s, p);
    for (id, r) in s.lost() {
        match &r.drop {
            Some(d) if d.stage == Stage::Conntrack => {}
            other => p.push(format!(
                "query {id:#06x}: expected a drop at conntrack, got {other:?}"
            )),
        }
    }
    let drops = conntrack_delta(s).map_or(0, |d| d.drop);
    if drops < s.report.lost {
        p.push(format!(
            "conntrack's drop statistic rose by {drops}, fewer than the {} lost queries",
            s.report.lost
        ));
    }
}

pub(super) fn check_stale_conntrack(s: &Observed, p: &mut Vec<String>) {
    all_lost(s, p);
    for (id, r) in s.lost() {
        match r.endpoint {
            Some(ep) if !s.live.contains(&ep) => {}
            other => p.push(format!(
                "query {id:#06x}: expected it sent to an endpoint the rules no longer hold ({:?}), sent to {other:?}",
                s.live
            )),
        }
    }
}

pub(super) fn check_mixed_backend(s: &Observed, p: &mut Vec<String>) {
    if s.report.lost == 0 {
        p.push(
            "expected lost queries: the stale backend's rules send some to a dead target".into(),
        );
    }
    for (id, r) in s.lost() {
        let not_endpoint = r.endpoint.is_some_and(|ep| !s.live.contains(&ep))
            || r.drop
                .as_ref()
                .is_some_and(|d| d.why.contains("not an endpoint"));
        if !not_endpoint {
            p.push(format!(
                "query {id:#06x}: expected it sent to a target that is not an endpoint ({:?}), got endpoint {:?}, drop {:?}",
                s.live, r.endpoint, r.drop
            ));
        }
    }
}

pub(super) fn check_conntrack_race(s: &Observed, p: &mut Vec<String>) {
    if s.report.lost != 0 {
        p.push(format!(
            "expected nothing lost (this kernel resolves the clashes), lost {}",
            s.report.lost
        ));
    }
    let cpus = std::thread::available_parallelism().map_or(1, usize::from);
    let clashes = conntrack_delta(s).map_or(0, |d| d.clash_resolve);
    if cpus >= 2 && clashes == 0 {
        p.push("conntrack's clash_resolve did not rise: A and AAAA did not race".into());
    }
}

fn conntrack_delta(s: &Observed) -> Option<CpuStats> {
    s.summary.and_then(|t| t.conntrack_delta)
}

/// Stages that saw nothing where the probe says they must have seen something. A program that
/// did not attach, or attached where the packets are not, passes every per-query check by
/// seeing nothing; this names the stage instead.
fn dead_stages(sc: &Scenario, s: &Observed, p: &mut Vec<String>) {
    let Some(summary) = s.summary else {
        p.push("the tracer gave no summary: no stage can be checked".into());
        return;
    };
    let c = &summary.counters;
    let answered = u64::from(s.report.answered);
    // Device stage (TC on the pod links): every answered query left a client, reached an
    // endpoint and came back. Half is the floor, so that a query the tracer missed here or there
    // is not taken for a dead stage.
    let seen = c.queries.min(c.at_endpoint).min(c.answered);
    if answered > 0 && seen * 2 < answered {
        p.push(format!(
            "device stage saw {seen} of {answered} answered queries (queries {}, at an endpoint {}, answered {}): the TC programs did not attach or did not see the pod links",
            c.queries, c.at_endpoint, c.answered
        ));
    }
    // The fault's own stage must have recorded the queries it lost.
    if !sc.stages.is_empty() && s.report.lost > 0 {
        let recorded = s
            .lost()
            .filter(|(_, r)| {
                r.drop
                    .as_ref()
                    .is_some_and(|d| sc.stages.contains(&d.stage))
            })
            .count();
        if recorded == 0 {
            p.push(format!(
                "{} stage recorded none of the {} lost queries: {}",
                join(sc.stages, " or "),
                s.report.lost,
                recorders(sc.stages, summary.plan.as_ref())
            ));
        }
    }
    // On a deep tier the NAT stage rewrites every healthy query to a pod.
    let Some(plan) = &summary.plan else { return };
    let nat_attached = attached(plan, ProbeStage::Nat);
    if plan.tier == Tier::Tracepoint || sc.fault.is_some() || answered == 0 {
        return;
    }
    if c.deep_events == 0 {
        p.push(format!(
            "deep stages (netfilter, NAT, conntrack on the {} tier) saw no event for {answered} answered queries: their programs attached but did not fire",
            plan.tier
        ));
    }
    let records: Vec<&TraceRecord> = s
        .records
        .iter()
        .filter(|r| r.verdict == Verdict::Answered)
        .collect();
    let natted = records.iter().filter(|r| r.nat.is_some()).count();
    if nat_attached && !records.is_empty() && natted == 0 {
        p.push(format!(
            "NAT stage named no DNAT target for any of the {} answered query records ({} tier): its programs attached but did not see the queries",
            records.len(),
            plan.tier
        ));
    }
}

fn join(stages: &[Stage], sep: &str) -> String {
    stages
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(sep)
}

/// Whether any program of `stage` attached.
fn attached(plan: &Plan, stage: ProbeStage) -> bool {
    plan.outcomes
        .iter()
        .any(|o| o.stage == stage && matches!(o.fate, Fate::Attached { .. }))
}

/// Which programs should have recorded a drop at `stages`, and which of them attached.
fn recorders(stages: &[Stage], plan: Option<&Plan>) -> String {
    let mut groups: Vec<ProbeStage> = Vec::new();
    for g in stages.iter().flat_map(|s| s.recorded_by()) {
        if !groups.contains(g) {
            groups.push(*g);
        }
    }
    let name = |g: ProbeStage| {
        serde_json::to_value(g)
            .ok()
            .and_then(|v| v.as_str().map(str::to_owned))
            .unwrap_or_else(|| format!("{g:?}"))
    };
    let names: Vec<String> = groups.iter().map(|g| name(*g)).collect();
    let Some(plan) = plan else {
        return format!(
            "the {} programs did not attach or did not see them",
            names.join(" and ")
        );
    };
    let up: Vec<String> = groups
        .iter()
        .filter(|g| attached(plan, **g))
        .map(|g| name(*g))
        .collect();
    if up.is_empty() {
        format!("none of the {} programs attached", names.join(" or "))
    } else {
        format!(
            "the {} programs attached but did not see them",
            up.join(" and ")
        )
    }
}

/// Every check of a scenario: attribution, the scenario's own, and dead stages.
pub(super) fn problems(sc: &Scenario, s: &Observed) -> Vec<String> {
    let mut p = Vec::new();
    attributed(s, &mut p);
    (sc.check)(s, &mut p);
    dead_stages(sc, s, &mut p);
    p
}
