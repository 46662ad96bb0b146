//! `tracer compare BEFORE AFTER`: every figure of two reports side by side, what changed between
//! them in a few lines (kernel, hook tier, validate scenarios passing or failing, drop reasons and
//! locations appearing or disappearing, latency ratios), and the regressions among them against
//! thresholds (loss, p99 latency, drops by reason, conntrack drops, validate scenarios that
//! stopped passing).
//!
//! # Layout
//! - `mod.rs`: thresholds, judging each figure, the comparison and its text.
//! - `figures`: the figures of one report, named after their groups and typed causes.

mod figures;

use std::{fmt::Write as _, path::Path};

use comfy_table::{Table, presets::UTF8_BORDERS_ONLY};
use serde::Serialize;

use self::figures::{Row, figures};
use crate::report::document::{self, Document};

/// What failed while comparing.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Report {
        #[from]
        source: document::Error,
    },
    #[error("invalid threshold: {reason}")]
    Threshold { reason: &'static str },
    #[error("failed to encode the comparison as JSON: {source}")]
    Json { source: serde_json::Error },
}

/// When a change is a regression.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Thresholds {
    /// Loss may rise by at most this many percentage points.
    pub max_loss_increase: f64,
    /// p99 latency may rise by at most this many percent ...
    pub max_p99_increase_percent: f64,
    /// ... or by at most this many milliseconds (the larger allowance wins).
    pub min_p99_increase_ms: f64,
    /// Drops for one reason may rise by at most this many.
    pub max_drop_increase: u64,
    /// Conntrack's drop and insert_failed statistics may rise by at most this many.
    pub max_conntrack_drop_increase: u64,
}

impl Thresholds {
    /// Refuses thresholds no comparison can use.
    pub fn check(&self) -> Result<(), Error> {
        let ok = [
            self.max_loss_increase,
            self.max_p99_increase_percent,
            self.min_p99_increase_ms,
        ]
        .iter()
        .all(|v| v.is_finite() && *v >= 0.0);
        if ok {
            Ok(())
        } else {
            Err(Error::Threshold {
                reason: "loss and latency thresholds must be finite and not negative",
            })
        }
    }
}

impl Default for Thresholds {
    fn default() -> Self {
        Self {
            max_loss_increase: 1.0,
            max_p99_increase_percent: 50.0,
            min_p99_increase_ms: 10.0,
            max_drop_increase: 0,
            max_conntrack_drop_increase: 0,
        }
    }
}

/// What a figure measures, and so which threshold judges it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    /// Shown, never judged.
    Info,
    /// Loss in percent.
    LossPercent,
    /// p99 latency in milliseconds.
    P99Ms,
    /// Queries lost for one reason.
    Drops,
    /// A conntrack drop statistic over the run.
    ConntrackDrops,
    /// A validate scenario: 1 passed, 0 failed.
    Pass,
}

/// A figure's value.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(untagged)]
pub enum Value {
    /// A number.
    Number(f64),
    /// A fact in words (kernel release, backend).
    Text(String),
}

impl Value {
    fn number(&self) -> Option<f64> {
        match self {
            Value::Number(n) => Some(*n),
            Value::Text(_) => None,
        }
    }

    fn show(&self, kind: Kind) -> String {
        match (self, kind) {
            (Value::Number(n), Kind::Pass) => if *n >= 1.0 { "pass" } else { "FAIL" }.to_owned(),
            (Value::Number(n), _) if n.fract() == 0.0 => format!("{n:.0}"),
            (Value::Number(n), _) => format!("{n:.3}"),
            (Value::Text(t), _) => t.clone(),
        }
    }
}

/// One figure of both reports.
#[derive(Debug, Clone, Serialize)]
pub struct Figure {
    /// Its name (`probe.loss_percent`, `trace.drops[netfilter: NETFILTER_DROP @ nft_do_chain]`).
    pub name: String,
    /// What it is kept with: its scenario for validate's (`validate.nft.filter-drop`), else its
    /// section (`probe`, `trace`, `conntrack`, ...).
    #[serde(skip)]
    pub group: String,
    /// What it measures.
    pub kind: Kind,
    /// In BEFORE.
    pub before: Option<Value>,
    /// In AFTER.
    pub after: Option<Value>,
    /// Why this change is a regression, if it is one.
    pub regression: Option<String>,
}

/// Which report.
#[derive(Debug, Clone, Serialize)]
pub struct Header {
    /// The file.
    pub file: String,
    /// The command that wrote it.
    pub command: String,
    /// Its kernel release.
    pub kernel: String,
    /// When it was written.
    pub created: String,
    /// The tracer that wrote it.
    pub tool: String,
    /// How it ran in a VM, when it did (`validate --kernel`).
    pub vm: Option<String>,
}

impl Header {
    fn of(file: &Path, d: &Document) -> Self {
        Self {
            file: file.display().to_string(),
            command: d.command.clone(),
            kernel: d.kernel.clone(),
            created: d.created.clone(),
            tool: format!("{} {}", d.tool.name, d.tool.version),
            vm: d.vm.as_ref().map(|v| v.describe()),
        }
    }
}

/// Two reports compared.
#[derive(Debug, Clone, Serialize)]
pub struct Comparison {
    /// The earlier report.
    pub before: Header,
    /// The later report.
    pub after: Header,
    /// The thresholds used.
    pub thresholds: Thresholds,
    /// Every figure of either report, in report order.
    pub figures: Vec<Figure>,
    /// What changed, one line each: kernel, tiers, scenarios passing or failing, causes of
    /// loss appearing or disappearing, latency.
    pub changes: Vec<String>,
    /// Why some figures were not judged.
    pub notes: Vec<String>,
    /// How many figures regressed.
    pub regressions: usize,
}

impl Comparison {
    /// The names of the regressed figures.
    pub fn regressed(&self) -> Vec<&str> {
        self.figures
            .iter()
            .filter(|f| f.regression.is_some())
            .map(|f| f.name.as_str())
            .collect()
    }

    /// The side-by-side table and the verdict.
    pub fn text(&self) -> String {
        let mut s = String::new();
        for (label, h) in [("before", &self.before), ("after", &self.after)] {
            let _ = writeln!(
                s,
                "{label:<6} {}: {} on kernel {}, {} ({}){}",
                h.file,
                h.command,
                h.kernel,
                h.created,
                h.tool,
                h.vm.as_ref().map_or(String::new(), |v| format!(" [{v}]"))
            );
        }
        let mut t = Table::new();
        t.load_style(UTF8_BORDERS_ONLY).set_header(vec![
            "figure",
            "before",
            "after",
            "change",
            "regression",
        ]);
        for f in &self.figures {
            let show = |v: &Option<Value>| v.as_ref().map_or("-".to_owned(), |v| v.show(f.kind));
            let change = match (
                f.before.as_ref().and_then(Value::number),
                f.after.as_ref().and_then(Value::number),
            ) {
                (Some(b), Some(a)) if f.kind != Kind::Pass && a != b => {
                    let d = a - b;
                    let mut c = if d.fract() == 0.0 {
                        format!("{d:+.0}")
                    } else {
                        format!("{d:+.3}")
                    };
                    if is_latency(&f.name) && b > 0.0 {
                        let _ = write!(c, " (x{:.2})", a / b);
                    }
                    c
                }
                (Some(_), Some(_)) => String::new(),
                _ => match (&f.before, &f.after) {
                    (Some(b), Some(a)) if b != a => "changed".to_owned(),
                    (None, Some(_)) => "new".to_owned(),
                    (Some(_), None) => "gone".to_owned(),
                    _ => String::new(),
                },
            };
            t.add_row(vec![
                f.name.clone(),
                show(&f.before),
                show(&f.after),
                change,
                f.regression.clone().unwrap_or_default(),
            ]);
        }
        let _ = writeln!(s, "{t}");
        if self.changes.is_empty() {
            let _ = writeln!(s, "changes: none");
        } else {
            let _ = writeln!(s, "changes:");
            for c in &self.changes {
                let _ = writeln!(s, "  {c}");
            }
        }
        for n in &self.notes {
            let _ = writeln!(s, "note: {n}");
        }
        if self.regressions == 0 {
            let _ = writeln!(s, "no regression");
        } else {
            let _ = writeln!(
                s,
                "{} regression(s): {}",
                self.regressions,
                self.regressed().join(", ")
            );
        }
        s
    }
}

/// A latency figure (`..._ms`).
fn is_latency(name: &str) -> bool {
    name.ends_with("_ms")
}

/// One line for a figure that changed in a way a kernel upgrade cares about, if it did.
fn change(f: &Figure) -> Option<String> {
    let show = |v: &Value| v.show(f.kind);
    match (&f.before, &f.after) {
        (None, None) => None,
        (None, Some(a)) => Some(format!("{}: new ({})", f.name, show(a))),
        (Some(b), None) => Some(format!("{}: gone (was {})", f.name, show(b))),
        (Some(b), Some(a)) if b == a => None,
        (Some(bv @ Value::Number(b)), Some(av @ Value::Number(a))) => {
            let latency = f.name.ends_with("latency_p50_ms") || f.name.ends_with("latency_p99_ms");
            if latency && *b > 0.0 {
                Some(format!("{}: {b:.3} -> {a:.3} ms (x{:.2})", f.name, a / b))
            } else if f.kind != Kind::Info {
                Some(format!("{}: {} -> {}", f.name, show(bv), show(av)))
            } else {
                None
            }
        }
        (Some(b), Some(a)) => Some(format!("{}: {} -> {}", f.name, show(b), show(a))),
    }
}

/// Why `before` -> `after` of a `kind` figure is a regression, if it is one.
fn judge(
    kind: Kind,
    before: Option<&Value>,
    after: Option<&Value>,
    t: &Thresholds,
) -> Option<String> {
    let (b, a) = (
        before.and_then(Value::number),
        after.and_then(Value::number),
    );
    match kind {
        Kind::Info => None,
        Kind::LossPercent => {
            let (b, a) = (b?, a?);
            (a - b > t.max_loss_increase).then(|| {
                format!(
                    "loss rose {:.2} points (allowed {})",
                    a - b,
                    t.max_loss_increase
                )
            })
        }
        Kind::P99Ms => {
            let (b, a) = (b?, a?);
            let allowed = (b * t.max_p99_increase_percent / 100.0).max(t.min_p99_increase_ms);
            (a - b > allowed).then(|| format!("p99 rose {:.2} ms (allowed {allowed:.2})", a - b))
        }
        Kind::Drops | Kind::ConntrackDrops => {
            // A cause absent from one report had no drops there; but a section absent from a
            // report (a different command) is not judged.
            if before.is_none() && after.is_none() {
                return None;
            }
            let (b, a) = (b.unwrap_or(0.0), a.unwrap_or(0.0));
            let allowed = if kind == Kind::Drops {
                t.max_drop_increase
            } else {
                t.max_conntrack_drop_increase
            } as f64;
            (a - b > allowed).then(|| format!("rose by {:.0} (allowed {allowed:.0})", a - b))
        }
        Kind::Pass => (b? >= 1.0 && a? < 1.0).then(|| "passed before, fails now".to_owned()),
    }
}

/// Compares two reports figure by figure.
pub fn compare(
    before_file: &Path,
    before: &Document,
    after_file: &Path,
    after: &Document,
    thresholds: &Thresholds,
) -> Comparison {
    let (fb, fa) = (figures(before), figures(after));
    let sections = |d: &Document| {
        (
            d.probe.is_some(),
            d.trace.is_some(),
            d.conntrack_delta.is_some(),
        )
    };
    let same_sections = sections(before) == sections(after);
    let mut notes = Vec::new();
    // A VM under TCG runs 5-20x slower than the machine: its latency is not comparable with a
    // run on the machine itself, only ratios between figures within each report are.
    let vm_vs_machine = before.vm.is_some() != after.vm.is_some();
    if vm_vs_machine {
        notes.push(
            "one report ran in a VM (qemu TCG, 5-20x slower than the machine): latency is shown, not judged; compare ratios, not absolute times".to_owned(),
        );
    }
    // BEFORE's order, with AFTER's own figures next to their group's (a drop location that
    // appears beside the one that disappeared).
    let mut order: Vec<&Row> = Vec::new();
    for row in fb.0.iter().chain(&fa.0) {
        if order.iter().any(|r| r.name == row.name) {
            continue;
        }
        match order.iter().rposition(|r| r.group == row.group) {
            Some(i) => order.insert(i + 1, row),
            None => order.push(row),
        }
    }
    let find = |rows: &[Row], name: &str| {
        rows.iter()
            .find(|r| r.name == name)
            .map(|r| r.value.clone())
    };
    let figures: Vec<Figure> = order
        .into_iter()
        .map(|row| {
            let (b, a) = (find(&fb.0, &row.name), find(&fa.0, &row.name));
            let kind = row.kind;
            // Drops missing from one side count as zero only when both reports measured the
            // same things.
            let judged = match kind {
                Kind::Drops | Kind::ConntrackDrops if !same_sections => None,
                Kind::P99Ms if vm_vs_machine => None,
                _ => judge(kind, b.as_ref(), a.as_ref(), thresholds),
            };
            Figure {
                name: row.name.clone(),
                group: row.group.clone(),
                kind,
                before: b,
                after: a,
                regression: judged,
            }
        })
        .collect();
    let regressions = figures.iter().filter(|f| f.regression.is_some()).count();
    Comparison {
        before: Header::of(before_file, before),
        after: Header::of(after_file, after),
        thresholds: *thresholds,
        changes: figures.iter().filter_map(change).collect(),
        notes,
        figures,
        regressions,
    }
}

#[cfg(test)]
mod tests;
