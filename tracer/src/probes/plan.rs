//! Which hooks this kernel gets, and why the others were skipped.

use std::fmt;

use super::table::{Hook, Probe, Stage};

/// The hook tier: what the deep stages (netfilter verdicts, NAT, conntrack confirm) use.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum Tier {
    /// fexit programs (ftrace function hooks): cheapest, typed arguments.
    Fentry,
    /// kprobe + kretprobe programs.
    Kprobe,
    /// Tracepoints and TC only: drops, ICMP errors and pod links; netfilter tables are then told
    /// from the drop location and the rules' packet counters.
    Tracepoint,
}

impl fmt::Display for Tier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Tier::Fentry => "fentry",
            Tier::Kprobe => "kprobe",
            Tier::Tracepoint => "tracepoint",
        })
    }
}

/// What happened to one program.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(tag = "fate", rename_all = "snake_case")]
pub enum Fate {
    /// Loaded and attached.
    Attached {
        /// Where: the kernel symbol, or the interfaces.
        to: String,
    },
    /// Loaded (the verifier accepted it) but not attached, and why.
    Verified {
        /// Why it is not attached.
        reason: String,
    },
    /// Not loaded, and why.
    Skipped {
        /// Why.
        reason: String,
    },
}

/// One program's outcome.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Outcome {
    /// Program name.
    pub program: &'static str,
    /// Stage.
    pub stage: Stage,
    /// Hook kind.
    pub hook: Hook,
    /// What happened.
    #[serde(flatten)]
    pub fate: Fate,
}

impl Outcome {
    /// An outcome for `probe`.
    pub fn new(probe: &Probe, fate: Fate) -> Self {
        Self {
            program: probe.program,
            stage: probe.stage,
            hook: probe.hook,
            fate,
        }
    }
}

/// The whole plan as carried out: the tier in use and every program's outcome.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Plan {
    /// The tier the deep stages got.
    pub tier: Tier,
    /// Every program, in pipeline order.
    pub outcomes: Vec<Outcome>,
}

impl Plan {
    /// The tier from what attached.
    pub fn from_outcomes(outcomes: Vec<Outcome>) -> Self {
        let attached = |h: Hook| {
            outcomes
                .iter()
                .any(|o| o.hook == h && matches!(o.fate, Fate::Attached { .. }))
        };
        let tier = if attached(Hook::Fexit) {
            Tier::Fentry
        } else if attached(Hook::Kprobe) {
            Tier::Kprobe
        } else {
            Tier::Tracepoint
        };
        Self { tier, outcomes }
    }
}

impl Plan {
    /// The tier tracing would get, from a verify-only plan (nothing attached): fentry when an
    /// fexit program loaded, else kprobe when one loaded and the kernel has kprobes.
    pub fn would_get(&self, kprobes: bool) -> Tier {
        let loaded = |h: Hook| {
            self.outcomes.iter().any(|o| {
                o.hook == h && matches!(o.fate, Fate::Verified { .. } | Fate::Attached { .. })
            })
        };
        if loaded(Hook::Fexit) {
            Tier::Fentry
        } else if kprobes && loaded(Hook::Kprobe) {
            Tier::Kprobe
        } else {
            Tier::Tracepoint
        }
    }
}

impl Plan {
    /// Why the programs of `tier` did not attach: their distinct reasons, on one line.
    pub fn why_not(&self, tier: Tier) -> String {
        let mut reasons: Vec<&str> = Vec::new();
        for o in &self.outcomes {
            let of_tier = match tier {
                Tier::Fentry => o.hook == Hook::Fexit,
                Tier::Kprobe => matches!(o.hook, Hook::Kprobe | Hook::Kretprobe),
                Tier::Tracepoint => false,
            };
            if let (true, Fate::Skipped { reason } | Fate::Verified { reason }) = (of_tier, &o.fate)
                && !reasons.contains(&reason.as_str())
            {
                reasons.push(reason);
            }
        }
        reasons.join("; ")
    }
}

impl Plan {
    /// The plan in one line: `hooks: tracepoint tier — TC on 3 pod links, kfree_skb, icmp_send;
    /// deep hooks off: no kprobes, no fentry`. The whole plan is its `Display`.
    pub fn one_line(&self) -> String {
        let mut on: Vec<String> = Vec::new();
        for o in &self.outcomes {
            let Fate::Attached { to } = &o.fate else {
                continue;
            };
            let what = match o.hook {
                Hook::TcIngress | Hook::TcEgress => {
                    let n = to.split(' ').next().unwrap_or("0");
                    format!("TC on {n} pod link{}", if n == "1" { "" } else { "s" })
                }
                _ => to.rsplit(['/', ':']).next().unwrap_or(to).to_owned(),
            };
            if !on.contains(&what) {
                on.push(what);
            }
        }
        let skipped = |hooks: &[Hook]| {
            self.outcomes
                .iter()
                .any(|o| hooks.contains(&o.hook) && !matches!(o.fate, Fate::Attached { .. }))
        };
        let mut off = Vec::new();
        if self.tier == Tier::Tracepoint && skipped(&[Hook::Kprobe, Hook::Kretprobe]) {
            off.push("no kprobes");
        }
        if self.tier != Tier::Fentry && skipped(&[Hook::Fexit]) {
            off.push("no fentry");
        }
        let off = if off.is_empty() {
            String::new()
        } else {
            format!("; deep hooks off: {}", off.join(", "))
        };
        format!(
            "hooks: {} tier — {}{off} (-v: every program)",
            self.tier,
            on.join(", ")
        )
    }
}

impl fmt::Display for Plan {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "hook tier: {}", self.tier)?;
        for o in &self.outcomes {
            let (what, detail) = match &o.fate {
                Fate::Attached { to } => ("attached", to.as_str()),
                Fate::Verified { reason } => ("verified", reason.as_str()),
                Fate::Skipped { reason } => ("skipped", reason.as_str()),
            };
            writeln!(f, "  {:<26} {:<9} {detail}", o.program, what)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::probes::table::PROBES;

    fn plan(fexit_loads: bool, kprobe_loads: bool) -> Plan {
        let outcomes = PROBES
            .iter()
            .map(|p| {
                let loads = match p.hook {
                    Hook::Fexit => fexit_loads,
                    Hook::Kprobe | Hook::Kretprobe => kprobe_loads,
                    _ => true,
                };
                let fate = if loads {
                    Fate::Verified {
                        reason: "loaded, not attached".into(),
                    }
                } else {
                    Fate::Skipped {
                        reason: "refused at load".into(),
                    }
                };
                Outcome::new(p, fate)
            })
            .collect();
        Plan::from_outcomes(outcomes)
    }

    #[test]
    fn the_tier_follows_what_loads_and_what_attaches() {
        assert_eq!(plan(true, true).would_get(true), Tier::Fentry);
        assert_eq!(plan(false, true).would_get(true), Tier::Kprobe);
        assert_eq!(
            plan(false, true).would_get(false),
            Tier::Tracepoint,
            "this machine: no kprobe PMU, fexit EPERM"
        );
        assert_eq!(plan(false, false).would_get(true), Tier::Tracepoint);
        assert_eq!(
            plan(true, true).tier,
            Tier::Tracepoint,
            "a verify-only plan attached nothing"
        );
    }

    #[test]
    fn one_line_names_the_tier_the_attached_hooks_and_what_is_off() {
        let outcomes = PROBES
            .iter()
            .map(|p| {
                let fate = match p.hook {
                    Hook::TcIngress | Hook::TcEgress => Fate::Attached {
                        to: "3 links: c0 d0 d1".into(),
                    },
                    Hook::Tracepoint => Fate::Attached {
                        to: format!("tracepoint skb/{}", p.program),
                    },
                    _ => Fate::Skipped {
                        reason: "no kprobe PMU".into(),
                    },
                };
                Outcome::new(p, fate)
            })
            .collect();
        let line = Plan::from_outcomes(outcomes).one_line();
        assert!(
            line.starts_with("hooks: tracepoint tier — TC on 3 pod links, "),
            "{line}"
        );
        assert_eq!(line.matches("TC on").count(), 1, "{line}");
        assert!(
            line.contains("deep hooks off: no kprobes, no fentry"),
            "{line}"
        );
        assert_eq!(line.lines().count(), 1);
    }
}
