//! What `tracer validate` found: every scenario's result, and one line for each.

use serde::{Deserialize, Serialize};

use crate::{
    node::{Backend, conntrack::CpuStats},
    probes::session::Counters,
    report::document::ProbeReport,
};

/// One scenario on one backend.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ScenarioResult {
    /// The iptables backend of the lab's rules.
    pub backend: Backend,
    /// `healthy` or the fault's name.
    pub scenario: String,
    /// Every check held.
    pub passed: bool,
    /// The hook tier the tracer had.
    pub tier: String,
    /// What the checks expect, in words.
    pub expected: String,
    /// The checks that failed, in words.
    pub problems: Vec<String>,
    /// What the probe measured, with every lost query's trace record.
    pub probe: ProbeReport,
    /// Conntrack statistics change over the scenario in the lab's node.
    pub conntrack_delta: Option<CpuStats>,
    /// The kernel's counters over the scenario: what each stage saw (absent in reports written
    /// before they were kept).
    #[serde(default)]
    pub counters: Option<Counters>,
}

/// Every scenario run.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Validation {
    /// The hook tier the tracer had on this kernel.
    pub tier: String,
    /// Every scenario passed.
    pub passed: bool,
    /// Seconds it took.
    pub seconds: f64,
    /// Scenario by scenario.
    pub scenarios: Vec<ScenarioResult>,
}

/// One line for a scenario: `PASS nft    filter-drop      tier tracepoint  lost 19/40 ...`.
pub fn line(r: &ScenarioResult) -> String {
    let mut s = format!(
        "{} {:<6} {:<16} tier {:<10} lost {}/{}",
        if r.passed { "PASS" } else { "FAIL" },
        r.backend.name(),
        r.scenario,
        r.tier,
        r.probe.lost,
        r.probe.sent
    );
    if let Some(l) = &r.probe.latency_ms {
        s.push_str(&format!(", p50 {:.2} ms, p99 {:.2} ms", l.p50, l.p99));
    }
    if let Some((cause, _)) = r.probe.lost_by_cause.iter().max_by_key(|(_, n)| **n) {
        s.push_str(&format!(", mostly {cause}"));
    }
    for p in &r.problems {
        s.push_str(&format!("\n       {p}"));
    }
    s
}
