//! The matrix: one column per run, one row per test; printed and written to MATRIX.md.

use std::{
    collections::BTreeMap, fmt::Write as _, path::PathBuf, process::Command, time::Duration,
};

use super::Ctx;

/// One cell: what a test did in one run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Cell {
    Ok,
    Failed,
    Ignored,
    /// Expected to run here, but the run ended (timeout, crash) before it reported.
    Missing,
}

impl Cell {
    /// Its text in the table.
    pub fn text(self) -> &'static str {
        match self {
            Cell::Ok => "ok",
            Cell::Failed => "FAIL",
            Cell::Ignored => "ign",
            Cell::Missing => "none",
        }
    }
}

/// One column of the matrix: a host run or a VM boot.
#[derive(Debug, Default)]
pub struct Column {
    /// `host` or `6.1/fentry`.
    pub label: String,
    /// `binary/test` -> result.
    pub cells: BTreeMap<String, Cell>,
    /// What went wrong with the run as a whole (no boot, timeout, zero tests, a crash); empty when
    /// every expected test reported and the binaries' exit statuses agree.
    pub problems: Vec<String>,
    /// `binary/test` -> the assertion message.
    pub failures: Vec<(String, String)>,
    /// The run's wall time.
    pub wall: Duration,
    /// From starting qemu to the guest command (the runner's log), for VM runs.
    pub boot: Option<Duration>,
    /// Where its output was written.
    pub log: PathBuf,
}

impl Column {
    pub fn passed(&self) -> bool {
        self.problems.is_empty()
            && self
                .cells
                .values()
                .all(|c| matches!(c, Cell::Ok | Cell::Ignored))
    }

    pub fn status(&self) -> &'static str {
        if self.problems.iter().any(|p| p.contains("did not boot")) {
            "NO BOOT"
        } else if self.problems.iter().any(|p| p.contains("timed out")) {
            "TIMEOUT"
        } else if self.passed() {
            "ok"
        } else {
            "FAILED"
        }
    }
}

pub fn minutes(d: Duration) -> String {
    let s = d.as_secs();
    format!("{}m{:02}s", s / 60, s % 60)
}

/// The matrix as markdown: rows are tests, columns runs; then each column's status and time,
/// every failure with its message, and every run problem.
pub fn render(ctx: &Ctx, columns: &[Column], total: Duration) -> String {
    let mut rows: Vec<String> = Vec::new();
    for bin in &ctx.binaries {
        for n in &bin.expected {
            rows.push(format!("{}/{n}", bin.name));
        }
    }
    let host_release = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .unwrap_or_default()
        .trim()
        .to_owned();
    let commit = Command::new("git")
        .args(["rev-parse", "--short", "HEAD"])
        .current_dir(&ctx.root)
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_default();
    let mut s = String::new();
    let _ = writeln!(
        s,
        "# Kernel matrix\n\nCommit {commit}, host kernel {host_release}; VM kernels are Debian's (`tracer vm list`) under qemu TCG, one vCPU. Cells: ok, FAIL, ign (ignored), none (the run ended before it), - (not run). Total {}.\n",
        minutes(total)
    );
    let _ = write!(s, "| test |");
    for c in columns {
        let _ = write!(s, " {} |", c.label);
    }
    let _ = write!(s, "\n|---|");
    for _ in columns {
        let _ = write!(s, "---|");
    }
    s.push('\n');
    for r in &rows {
        let _ = write!(s, "| {r} |");
        for c in columns {
            let _ = write!(s, " {} |", c.cells.get(r).map(|c| c.text()).unwrap_or("-"));
        }
        s.push('\n');
    }
    let _ = write!(s, "| **run** |");
    for c in columns {
        let _ = write!(s, " **{}** |", c.status());
    }
    let _ = write!(s, "\n| wall time |");
    for c in columns {
        let _ = write!(s, " {} |", minutes(c.wall));
    }
    s.push('\n');
    let failures: Vec<String> = columns
        .iter()
        .flat_map(|c| {
            c.failures
                .iter()
                .map(move |(t, m)| format!("- {t} on {}: {m}", c.label))
        })
        .collect();
    let problems: Vec<String> = columns
        .iter()
        .flat_map(|c| {
            c.problems
                .iter()
                .map(move |p| format!("- {}: {p} (log {})", c.label, c.log.display()))
        })
        .collect();
    if !failures.is_empty() {
        let _ = writeln!(s, "\nFailed tests:\n{}", failures.join("\n"));
    }
    if !problems.is_empty() {
        let _ = writeln!(
            s,
            "\nRuns that did not complete cleanly:\n{}",
            problems.join("\n")
        );
    }
    s
}
