//! What `tracer validate` found: every scenario's result, and one line for each.

use serde::{Deserialize, Serialize};

use crate::{
    node::{Backend, conntrack::CpuStats},
    probes::{plan::Tier, session::Counters},
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
    /// The hook tier the tracer had (`None`, written `"unknown"`: the tracer gave no summary).
    #[serde(with = "tier_or_unknown")]
    pub tier: Option<Tier>,
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
    /// The hook tier the tracer had on this kernel (`None`, written `"unknown"`: no scenario ran).
    #[serde(with = "tier_or_unknown")]
    pub tier: Option<Tier>,
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
        show_tier(r.tier),
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

/// A tier as the text and the reports name it: `unknown` for none.
pub fn show_tier(tier: Option<Tier>) -> String {
    tier.map_or_else(|| UNKNOWN.to_owned(), |t| t.to_string())
}

const UNKNOWN: &str = "unknown";

/// An optional tier as a string, `"unknown"` for none: the reports wrote it so when the field was
/// a string, and still do.
mod tier_or_unknown {
    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    use super::{Tier, UNKNOWN};

    pub fn serialize<S: Serializer>(tier: &Option<Tier>, s: S) -> Result<S::Ok, S::Error> {
        match tier {
            Some(t) => t.serialize(s),
            None => s.serialize_str(UNKNOWN),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Tier>, D::Error> {
        let text = String::deserialize(d)?;
        if text == UNKNOWN {
            return Ok(None);
        }
        Tier::deserialize(serde::de::value::StrDeserializer::<D::Error>::new(&text)).map(Some)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    struct T {
        #[serde(with = "tier_or_unknown")]
        tier: Option<Tier>,
    }

    /// The tier reads and writes as the string it was: a tier's name, or `unknown`.
    #[test]
    fn tier_is_its_name_or_unknown() {
        for (tier, json) in [
            (Some(Tier::Fentry), r#"{"tier":"fentry"}"#),
            (Some(Tier::Tracepoint), r#"{"tier":"tracepoint"}"#),
            (None, r#"{"tier":"unknown"}"#),
        ] {
            assert_eq!(serde_json::to_string(&T { tier }).unwrap(), json);
            assert_eq!(serde_json::from_str::<T>(json).unwrap(), T { tier });
            assert_eq!(show_tier(tier), json[9..json.len() - 2]);
        }
        assert!(serde_json::from_str::<T>(r#"{"tier":"ebpf"}"#).is_err());
    }
}
