//! What `tracer doctor` found: a verdict with the loss, the causes ranked with their evidence and
//! fix, and one line per check. Rendered as one page of text, or JSON.

use std::{fmt::Write as _, net::SocketAddr};

use serde::{Deserialize, Serialize};

use crate::probes::plan::Tier;

/// The verdict.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Health {
    /// Every query answered and nothing on the node that breaks DNS.
    Healthy,
    /// Every query answered (or a few lost) but something on the node breaks DNS or will.
    Degraded,
    /// Queries are failing now: at least [`BROKEN_LOSS_PERCENT`] of them lost.
    Broken,
}

/// The loss from which the node is broken rather than degraded: more than a resolver's retries
/// hide.
pub const BROKEN_LOSS_PERCENT: f64 = 10.0;

impl std::fmt::Display for Health {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Health::Healthy => "healthy",
            Health::Degraded => "degraded",
            Health::Broken => "broken",
        })
    }
}

/// One cause, with what proves it and what would resolve it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Cause {
    /// A stable short id (`blocking-rule`, `no-endpoints`, `conntrack-full`, …).
    pub id: String,
    /// One line saying what is wrong.
    pub title: String,
    /// The probe's queries it explains (0: a finding on the node that lost none of them).
    pub queries: u64,
    /// The facts it rests on, one a line: counts, the rule, the pod, conntrack figures.
    pub evidence: Vec<String>,
    /// The command that would resolve it (doctor never runs it).
    pub fix: Option<String>,
}

/// How a check came out.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    /// As on a healthy node.
    Ok,
    /// Worth a look.
    Warn,
    /// Breaks DNS.
    Fail,
    /// A fact, no judgement.
    Info,
}

impl Status {
    fn label(self) -> &'static str {
        match self {
            Status::Ok => "ok",
            Status::Warn => "warn",
            Status::Fail => "FAIL",
            Status::Info => "info",
        }
    }

    /// The ANSI colour of the label.
    fn colour(self) -> &'static str {
        match self {
            Status::Ok => "32",
            Status::Warn => "33",
            Status::Fail => "31",
            Status::Info => "2",
        }
    }
}

/// One of the seed's checks and its result.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Check {
    /// What was checked (`iptables -V`, `conntrack table`, …).
    pub name: String,
    /// How it came out.
    pub status: Status,
    /// The result, one line.
    pub result: String,
}

impl Check {
    /// A check.
    pub fn new(name: &str, status: Status, result: impl Into<String>) -> Self {
        Self {
            name: name.to_owned(),
            status,
            result: result.into(),
        }
    }
}

/// The probe doctor sent, and what the tracer saw of it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ProbeFigures {
    /// The namespace it was sent from (a pod's; `node` for the node's own).
    pub from: String,
    /// The DNS Service.
    pub service: SocketAddr,
    /// Queries sent, over UDP and TCP.
    pub sent: u32,
    /// Answered.
    pub answered: u32,
    /// Lost, in percent of those sent.
    pub loss_percent: f64,
    /// Each UDP lookup sent A and AAAA at once from one socket (glibc's default); else one query.
    #[serde(default)]
    pub parallel_a_aaaa: bool,
    /// Of `sent`, the lookups sent over TCP (each on a connection of its own).
    #[serde(default)]
    pub tcp_sent: u32,
    /// Of `answered`, those over TCP.
    #[serde(default)]
    pub tcp_answered: u32,
    /// Queries to the Service IP the tracer saw leave a pod (kernel counter).
    pub seen_to_service: u64,
    /// Queries it saw reach a DNS pod's link after DNAT (to the pod IP).
    pub seen_at_pod: u64,
    /// Answers it saw leave a DNS pod.
    pub seen_from_pod: u64,
    /// Answers it saw delivered to the client.
    pub seen_answered: u64,
    /// The hook tier the tracer had.
    pub tier: Option<Tier>,
}

/// Everything `tracer doctor` says.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Diagnosis {
    /// The verdict.
    pub health: Health,
    /// The probe from a pod, traced.
    pub probe: ProbeFigures,
    /// The causes, most likely first: those that explain lost queries by how many, then the
    /// node's errors and warnings that lost none.
    pub causes: Vec<Cause>,
    /// Every check, one line each.
    pub checks: Vec<Check>,
}

impl Diagnosis {
    /// The verdict line: `BROKEN: 40 of 40 DNS queries lost (100.0 %) ...`.
    pub fn verdict_line(&self) -> String {
        let p = &self.probe;
        let lost = p.sent.saturating_sub(p.answered);
        let tcp = match p.tcp_sent {
            0 => String::new(),
            n => format!("; {} of {n} over TCP", n.saturating_sub(p.tcp_answered)),
        };
        let what = match (self.health, lost) {
            (Health::Healthy, _) => format!("all {} DNS queries answered", p.sent),
            (_, 0) => format!(
                "all {} DNS queries answered, but {} problem(s) on the node",
                p.sent,
                self.causes.len()
            ),
            _ => format!(
                "{lost} of {} DNS queries lost ({:.1} %{tcp})",
                p.sent, p.loss_percent
            ),
        };
        format!(
            "{}: {what}, from {} to {}{}",
            self.health.to_string().to_uppercase(),
            p.from,
            p.service,
            p.tier
                .map_or(" (untraced)".to_owned(), |t| format!(" (traced, {t} tier)"))
        )
    }

    /// The page for people; `colour` for a terminal.
    pub fn text(&self, colour: bool) -> String {
        let paint = |code: &str, s: &str| {
            if colour {
                format!("\x1b[{code}m{s}\x1b[0m")
            } else {
                s.to_owned()
            }
        };
        let mut out = String::new();
        let code = match self.health {
            Health::Healthy => "1;32",
            Health::Degraded => "1;33",
            Health::Broken => "1;31",
        };
        let _ = writeln!(out, "{}", paint(code, &self.verdict_line()));
        let p = &self.probe;
        let _ = writeln!(
            out,
            "tracer saw: {} queries to the Service IP, {} at a DNS pod's IP after DNAT, {} answers from the pods, {} delivered",
            p.seen_to_service, p.seen_at_pod, p.seen_from_pod, p.seen_answered
        );
        if !self.causes.is_empty() {
            let _ = writeln!(out, "\ncauses, most likely first:");
        }
        for (i, c) in self.causes.iter().enumerate() {
            let queries = match c.queries {
                0 => String::new(),
                n => format!(" ({n} queries)"),
            };
            let _ = writeln!(out, "{:>2}. {}{queries}", i + 1, paint("1", &c.title));
            for e in &c.evidence {
                let _ = writeln!(out, "    {e}");
            }
            if let Some(fix) = &c.fix {
                let _ = writeln!(out, "    {} {fix}", paint("1;36", "fix:"));
            }
        }
        let _ = writeln!(out, "\nchecks:");
        let width = self.checks.iter().map(|c| c.name.len()).max().unwrap_or(0);
        for c in &self.checks {
            let label = format!("{:<4}", c.status.label());
            let _ = writeln!(
                out,
                "  {} {:<width$}  {}",
                paint(c.status.colour(), &label),
                c.name,
                c.result
            );
        }
        out
    }
}
