//! The host run: every test of the workspace, one at a time, as before the matrix; its column;
//! and the test binaries it built, copied for the guests.

use std::{
    collections::BTreeMap,
    io::{BufRead as _, BufReader, Write as _},
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};

use super::{
    BINARIES, Ctx,
    libtest::{Libtest, judge},
    plan::best_tier,
    table::{Cell, Column},
};
use crate::cargo;

/// The host run, exactly as before the matrix: every test, one at a time. Its output goes to the
/// terminal and is kept to fill the host column.
pub fn host_tests(
    out: &Path,
    filter: Option<&str>,
) -> anyhow::Result<(String, std::process::ExitStatus, Duration)> {
    // Release, like the demo and the binary users run: one build serves all three. The scenario
    // tests change kernel state (namespaces, conntrack, rules), so one test at a time.
    let mut cmd = cargo();
    super::stop_with_parent(&mut cmd).args(["test", "--release", "--no-fail-fast"]);
    cmd.args(["--", "--test-threads=1"]);
    if let Some(f) = filter {
        cmd.arg(f);
    }
    let (reader, writer) = std::io::pipe().context("failed to create a pipe")?;
    cmd.stdout(writer.try_clone()?).stderr(writer);
    let t = Instant::now();
    let mut child = cmd
        .spawn()
        .with_context(|| format!("failed to start {cmd:?}"))?;
    // The parent's copies of the write end are gone with `cmd`: the reader sees EOF at exit.
    drop(cmd);
    let mut kept = String::new();
    let stdout = std::io::stdout();
    for line in BufReader::new(reader).lines() {
        let line = line.context("failed to read cargo test's output")?;
        let mut o = stdout.lock();
        let _ = writeln!(o, "{line}");
        kept.push_str(&line);
        kept.push('\n');
    }
    let status = child.wait().context("failed to wait for cargo test")?;
    let wall = t.elapsed();
    let log = out.join("host.log");
    std::fs::write(&log, &kept).with_context(|| format!("failed to write {}", log.display()))?;
    Ok((kept, status, wall))
}

/// The host column from the host run's output: the sections cargo announces with
/// `Running ... (…/deps/hooks-…)` and `…/deps/trace-…`.
pub fn host_column(
    ctx: &Ctx,
    output: &str,
    status: std::process::ExitStatus,
    wall: Duration,
) -> Column {
    let mut col = Column {
        label: format!("host/{}", host_tier(&ctx.tracer)),
        wall,
        log: ctx.out.join("host.log"),
        ..Column::default()
    };
    let mut sections: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    let mut current: Option<&str> = None;
    for line in output.lines() {
        let l = line.trim_start();
        if l.starts_with("Running ") || l.starts_with("Doc-tests ") {
            current = BINARIES
                .into_iter()
                .map(|(b, _)| b)
                .find(|b| l.contains(&format!("deps/{b}-")));
            continue;
        }
        if let Some(b) = current {
            sections.entry(b).or_default().push(line);
        }
    }
    for bin in &ctx.binaries {
        if bin.expected.is_empty() {
            continue;
        }
        match sections.get(bin.name) {
            Some(lines) => {
                let t = Libtest::parse(lines.iter().copied());
                let failed = t.results.values().any(|c| *c == Cell::Failed);
                judge(&mut col, bin, &t, Some(i32::from(failed)), Duration::ZERO);
            }
            None => {
                judge(&mut col, bin, &Libtest::default(), None, Duration::ZERO);
            }
        }
    }
    if !status.success() {
        col.problems
            .push(format!("cargo test on the host failed: {status}"));
    }
    col
}

/// The tier `tracer hooks` says trace gets on this machine.
pub fn host_tier(tracer: &Path) -> String {
    let out = Command::new(tracer)
        .args(["hooks", "--output", "json"])
        .output();
    let tier = out
        .ok()
        .and_then(|o| serde_json::from_slice::<serde_json::Value>(&o.stdout).ok())
        .and_then(|v| v["tier"].as_str().map(str::to_owned))
        .unwrap_or_else(|| "auto".to_owned());
    let table = best_tier("host");
    if tier != table {
        eprintln!(
            "matrix: this machine's kernel gives the {tier} tier; xtask's table (written on 6.18) says {table}"
        );
    }
    tier
}

/// `cargo test --release --no-run`'s executables: the matrix's `BINARIES` and `tracer`, and under
/// `workdir` the tests' package directory.
pub fn test_binaries() -> anyhow::Result<BTreeMap<&'static str, PathBuf>> {
    let out = cargo()
        .args(["test", "--release", "--no-run", "--message-format=json"])
        .stderr(Stdio::inherit())
        .output()
        .context("failed to run cargo test --no-run")?;
    if !out.status.success() {
        bail!("cargo test --release --no-run failed: {}", out.status);
    }
    let mut found = BTreeMap::new();
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let Ok(v) = serde_json::from_str::<serde_json::Value>(line) else {
            continue;
        };
        if v["reason"] != "compiler-artifact" {
            continue;
        }
        let Some(exe) = v["executable"].as_str() else {
            continue;
        };
        let name = v["target"]["name"].as_str().unwrap_or_default();
        let kinds = v["target"]["kind"].as_array().cloned().unwrap_or_default();
        let is = |k: &str| kinds.iter().any(|x| x == k);
        let key = match BINARIES.into_iter().map(|(b, _)| b).find(|b| *b == name) {
            Some(b) if is("test") => b,
            // The bin target comes twice: its unit-test harness (profile.test) and the binary.
            _ if name == "tracer" && is("bin") && v["profile"]["test"] == false => "tracer",
            _ => continue,
        };
        if key != "tracer"
            && let Some(dir) = v["manifest_path"]
                .as_str()
                .and_then(|m| Path::new(m).parent())
        {
            found.insert("workdir", dir.to_owned());
        }
        found.insert(key, PathBuf::from(exe));
    }
    Ok(found)
}

/// Copies `from` to `to` through a temporary name (a running guest may have the old one open).
pub fn snapshot(from: &Path, to: &Path) -> anyhow::Result<PathBuf> {
    let tmp = to.with_extension("new");
    std::fs::copy(from, &tmp)
        .with_context(|| format!("failed to copy {} to {}", from.display(), tmp.display()))?;
    std::fs::rename(&tmp, to).with_context(|| format!("failed to rename {}", tmp.display()))?;
    Ok(to.to_owned())
}

/// The tests `bin` runs with `filter`, from its `--list`.
pub fn list_tests(bin: &Path, filter: Option<&str>) -> anyhow::Result<Vec<String>> {
    let mut cmd = Command::new(bin);
    cmd.arg("--list");
    if let Some(f) = filter {
        cmd.arg(f);
    }
    let out = cmd
        .output()
        .with_context(|| format!("failed to run {} --list", bin.display()))?;
    if !out.status.success() {
        bail!("{} --list failed: {}", bin.display(), out.status);
    }
    Ok(String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.strip_suffix(": test"))
        .map(str::to_owned)
        .collect())
}
