//! The kernel matrix of `cargo xtask test`: the host run, then the hooks and trace scenario tests
//! on Debian's kernels booted under qemu (`tracer vm run`), one boot per (kernel, tier), and one
//! table of what passed where.
//!
//! # Layout
//! - `KERNELS`: the tiers each kernel gives, best first (verified with `tracer hooks` in each guest).
//! - `CI`: the runs `--kernels ci` makes, chosen from measured times to fit CI.
//! - `Selection`: `--kernels ci|all|host|LIST`.
//! - `host_run`, `vm_run`: one column each; `Column` holds a run's parsed libtest results.
//! - `Matrix`: the table, printed and written to target/matrix/MATRIX.md.

use std::{
    collections::BTreeMap,
    fmt::Write as _,
    io::{BufRead as _, BufReader, Write as _},
    path::{Path, PathBuf},
    process::{Command, Stdio},
    sync::{
        Mutex,
        atomic::{AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};

use crate::cargo;

/// A kernel of the matrix and the hook tiers it offers, best first.
struct Kernel {
    /// `host`, or the `tracer vm` alias of a pinned Debian kernel.
    name: &'static str,
    /// Best first: the first is what `tracer hooks` says trace gets (`TRACER_EXPECT_TIER`).
    tiers: &'static [&'static str],
}

/// What each kernel gives, as `tracer hooks` reported it in each guest (2026-12-01, after
/// `modprobe -a nf_tables x_tables ip_tables nf_nat nf_conntrack`):
/// - host (this machine's 6.18): tracepoint only. No kprobes ("kernel 6.18.44 (BTF yes, kprobes
///   no): tracing would get the tracepoint tier") and fexit attach fails with EPERM (no ftrace
///   function hooks).
/// - 5.10: kprobe, tracepoint. No module BTF before 5.11, so no fentry on the module functions
///   netfilter, NAT and conntrack live in: "this kernel has no BTF for module nf_nat
///   (/sys/kernel/btf/nf_nat is missing: module BTF needs 5.11+ with CONFIG_DEBUG_INFO_BTF_MODULES)".
/// - 6.1 and 6.12: fentry, kprobe, tracepoint ("tracing would get the fentry tier"; every fexit
///   program verified, and attaches under TCG).
const KERNELS: &[Kernel] = &[
    Kernel {
        name: "host",
        tiers: &["tracepoint"],
    },
    Kernel {
        name: "5.10",
        tiers: &["kprobe", "tracepoint"],
    },
    Kernel {
        name: "6.1",
        tiers: &["fentry", "kprobe", "tracepoint"],
    },
    Kernel {
        name: "6.12",
        tiers: &["fentry", "kprobe", "tracepoint"],
    },
];

/// `--kernels ci`, besides the host run. Every VM run of the matrix (`--kernels all`) fits CI's 90
/// minutes with two guests at once on 2 cores (measured: 6-8 min per run, about 26 min for the
/// eight; README.md, "What CI runs"); drop runs here if kernels or tests are added and it no
/// longer does.
const CI: &[(&str, &str)] = &[
    ("5.10", "kprobe"),
    ("5.10", "tracepoint"),
    ("6.1", "fentry"),
    ("6.1", "kprobe"),
    ("6.1", "tracepoint"),
    ("6.12", "fentry"),
    ("6.12", "kprobe"),
    ("6.12", "tracepoint"),
];

/// The test binaries the matrix runs in each guest, and the variable that tells each its tier.
const BINARIES: [&str; 2] = ["hooks", "trace"];

/// The hooks binary's bound in a guest (measured: 10-12 s under TCG).
const HOOKS_TIMEOUT: Duration = Duration::from_secs(180);
/// The trace binary's bound in a guest (measured: 320-440 s under TCG, 5.10 the slowest): about
/// twice that, so a hung test costs CI 15 minutes, not its whole budget.
const TRACE_TIMEOUT: Duration = Duration::from_secs(900);
/// What the guest needs besides the tests: boot (twice if the first one fails) and power-off.
const BOOT_ALLOWANCE: Duration = Duration::from_secs(180);

/// Lines the guest script prints around each binary, so its output splits into sections.
const BEGIN: &str = "tracer-matrix: begin";
const END: &str = "tracer-matrix: end";

/// What `--kernels` selected.
#[derive(Debug, PartialEq)]
pub struct Selection {
    host: bool,
    /// (kernel alias, tier), in matrix order.
    runs: Vec<(&'static str, &'static str)>,
}

impl Selection {
    /// `ci`, `all`, `host`, or a comma-separated list of `host`, `KERNEL` (every tier it offers)
    /// and `KERNEL:TIER`.
    pub fn parse(s: &str) -> anyhow::Result<Selection> {
        let vms = || KERNELS.iter().filter(|k| k.name != "host");
        match s {
            "ci" => {
                return Ok(Selection {
                    host: true,
                    runs: CI.to_vec(),
                });
            }
            "all" => {
                return Ok(Selection {
                    host: true,
                    runs: vms()
                        .flat_map(|k| k.tiers.iter().map(|t| (k.name, *t)))
                        .collect(),
                });
            }
            _ => {}
        }
        let mut sel = Selection {
            host: false,
            runs: Vec::new(),
        };
        for item in s.split(',').map(str::trim).filter(|i| !i.is_empty()) {
            if item == "host" {
                sel.host = true;
                continue;
            }
            let (name, tier) = match item.split_once(':') {
                Some((n, t)) => (n, Some(t)),
                None => (item, None),
            };
            let Some(kernel) = vms().find(|k| k.name == name) else {
                bail!(
                    "--kernels: unknown kernel {name:?}: say ci, all, host, or a list of {} (KERNEL or KERNEL:TIER)",
                    vms().map(|k| k.name).collect::<Vec<_>>().join(", ")
                );
            };
            match tier {
                None => sel
                    .runs
                    .extend(kernel.tiers.iter().map(|t| (kernel.name, *t))),
                Some(t) => match kernel.tiers.iter().find(|k| **k == t) {
                    Some(t) => sel.runs.push((kernel.name, t)),
                    None => bail!(
                        "--kernels: kernel {name} offers {}, not {t:?}",
                        kernel.tiers.join(", ")
                    ),
                },
            }
        }
        if !sel.host && sel.runs.is_empty() {
            bail!("--kernels {s:?} selects nothing");
        }
        // Matrix order, each run once.
        let order = |(k, t): &(&str, &str)| {
            let ki = KERNELS.iter().position(|x| x.name == *k).unwrap_or(0);
            let ti = KERNELS[ki].tiers.iter().position(|x| x == t).unwrap_or(0);
            (ki, ti)
        };
        sel.runs.sort_by_key(order);
        sel.runs.dedup();
        Ok(sel)
    }
}

fn best_tier(kernel: &str) -> &'static str {
    KERNELS
        .iter()
        .find(|k| k.name == kernel)
        .map(|k| k.tiers[0])
        .unwrap_or("auto")
}

/// One cell: what a test did in one run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Cell {
    Ok,
    Failed,
    Ignored,
    /// Expected to run here, but the run ended (timeout, crash) before it reported.
    Missing,
}

impl Cell {
    fn text(self) -> &'static str {
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
struct Column {
    /// `host` or `6.1/fentry`.
    label: String,
    /// `binary/test` -> result.
    cells: BTreeMap<String, Cell>,
    /// What went wrong with the run as a whole (no boot, timeout, zero tests, a crash); empty when
    /// every expected test reported and the binaries' exit statuses agree.
    problems: Vec<String>,
    /// `binary/test` -> the assertion message.
    failures: Vec<(String, String)>,
    wall: Duration,
    /// From starting qemu to the guest command (the runner's log), for VM runs.
    boot: Option<Duration>,
    log: PathBuf,
}

impl Column {
    fn passed(&self) -> bool {
        self.problems.is_empty()
            && self
                .cells
                .values()
                .all(|c| matches!(c, Cell::Ok | Cell::Ignored))
    }

    fn status(&self) -> &'static str {
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

/// One libtest binary's output, parsed.
#[derive(Debug, Default, PartialEq)]
struct Libtest {
    results: BTreeMap<String, Cell>,
    /// The test that printed `test NAME ... ` and no result yet (a run cut short).
    pending: Option<String>,
    /// (passed, failed, ignored) from `test result:`.
    summary: Option<(u32, u32, u32)>,
    /// Test name -> the panic message from the `---- NAME stdout ----` section.
    messages: BTreeMap<String, String>,
}

impl Libtest {
    /// Parses `test NAME ... ok|FAILED|ignored` (the result may come on a later line when a child
    /// process printed in between), `test result:` and the failures' output sections.
    fn parse<'a>(lines: impl IntoIterator<Item = &'a str>) -> Libtest {
        let mut t = Libtest::default();
        let mut section: Option<String> = None;
        let mut message: Vec<String> = Vec::new();
        let result = |s: &str| {
            let s = s.trim();
            if s == "ok" {
                Some(Cell::Ok)
            } else if s == "FAILED" {
                Some(Cell::Failed)
            } else if s.starts_with("ignored") {
                Some(Cell::Ignored)
            } else {
                None
            }
        };
        for line in lines {
            if let Some(rest) = line.strip_prefix("test result: ") {
                t.summary = parse_summary(rest);
                continue;
            }
            if let Some(rest) = line.strip_prefix("test ")
                && let Some((name, tail)) = rest.split_once(" ... ")
            {
                match result(tail) {
                    Some(c) => {
                        t.results.insert(name.to_owned(), c);
                        t.pending = None;
                    }
                    None => t.pending = Some(name.to_owned()),
                }
                continue;
            }
            if let Some(rest) = line.strip_prefix("test ")
                && let Some(name) = rest.strip_suffix(" ...")
            {
                t.pending = Some(name.to_owned());
                continue;
            }
            if let Some(c) = result(line)
                && let Some(name) = t.pending.take()
            {
                t.results.insert(name, c);
                continue;
            }
            if let Some(name) = line
                .strip_prefix("---- ")
                .and_then(|r| r.strip_suffix(" stdout ----"))
            {
                finish_message(&mut t, section.take(), &mut message);
                section = Some(name.to_owned());
                continue;
            }
            if section.is_some() {
                if line.trim() == "failures:" {
                    finish_message(&mut t, section.take(), &mut message);
                } else {
                    message.push(line.to_owned());
                }
            }
        }
        finish_message(&mut t, section, &mut message);
        t
    }
}

/// `ok. 8 passed; 0 failed; 0 ignored; ...` -> (8, 0, 0).
fn parse_summary(s: &str) -> Option<(u32, u32, u32)> {
    let count = |what: &str| {
        s.split(';').find_map(|part| {
            let part = part.trim();
            let part = part.rsplit(". ").next().unwrap_or(part);
            part.strip_suffix(what)?.trim().parse().ok()
        })
    };
    Some((count("passed")?, count("failed")?, count("ignored")?))
}

/// Keeps from a failed test's captured output the panic line's message (what the assertion said).
fn finish_message(t: &mut Libtest, name: Option<String>, lines: &mut Vec<String>) {
    let Some(name) = name else {
        lines.clear();
        return;
    };
    let mut msg = Vec::new();
    if let Some(at) = lines.iter().position(|l| l.contains("panicked at")) {
        msg.push(lines[at].trim().to_owned());
        for l in &lines[at + 1..] {
            if l.trim().is_empty() || l.starts_with("note:") || l.starts_with("stack backtrace") {
                break;
            }
            msg.push(l.trim().to_owned());
            if msg.len() >= 6 {
                break;
            }
        }
    }
    t.messages.insert(name, msg.join(" / "));
    lines.clear();
}

/// A test binary of the matrix and the tests it must run (its `--list`, filtered).
struct Binary {
    /// `hooks` or `trace`.
    name: &'static str,
    /// The snapshot under target/matrix/bin.
    path: PathBuf,
    expected: Vec<String>,
}

/// Folds one binary's parsed output into `col`, checking that every expected test reported.
fn judge(col: &mut Column, bin: &Binary, t: &Libtest, exit: Option<i32>, bound: Duration) {
    for name in &bin.expected {
        let key = format!("{}/{name}", bin.name);
        let cell = t.results.get(name).copied().unwrap_or(Cell::Missing);
        if cell == Cell::Failed {
            let msg = t.messages.get(name).cloned().unwrap_or_default();
            col.failures.push((key.clone(), msg));
        }
        if cell == Cell::Missing && t.pending.as_deref() == Some(name.as_str()) {
            col.cells.insert(key.clone(), Cell::Failed);
            col.failures
                .push((key, "was running when the run ended".to_owned()));
            continue;
        }
        col.cells.insert(key, cell);
    }
    let reported = bin
        .expected
        .iter()
        .filter(|n| t.results.contains_key(*n))
        .count();
    match exit {
        None => col.problems.push(format!("{}: never started", bin.name)),
        Some(-1) => col
            .problems
            .push(format!("{}: ended without an exit status", bin.name)),
        Some(124 | 137) => col.problems.push(format!(
            "{}: timed out after {}s",
            bin.name,
            bound.as_secs()
        )),
        Some(code) => {
            let failed = t.results.values().filter(|c| **c == Cell::Failed).count();
            if code != 0 && failed == 0 {
                col.problems.push(format!(
                    "{}: exit status {code} with no failed test",
                    bin.name
                ));
            }
        }
    }
    if reported < bin.expected.len() {
        col.problems.push(format!(
            "{}: {reported} of {} tests reported",
            bin.name,
            bin.expected.len()
        ));
    }
    match t.summary {
        None if exit.is_some() => col
            .problems
            .push(format!("{}: no `test result:` line", bin.name)),
        Some((p, f, i)) if (p + f + i) as usize != t.results.len() => col.problems.push(format!(
            "{}: `test result:` counts {} tests, {} parsed",
            bin.name,
            p + f + i,
            t.results.len()
        )),
        _ => {}
    }
}

/// What every run shares.
struct Ctx {
    root: PathBuf,
    out: PathBuf,
    tracer: PathBuf,
    binaries: Vec<Binary>,
    /// The directory cargo runs the tests in (the tracer package).
    workdir: PathBuf,
    filter: Option<String>,
}

/// `cargo xtask test`: the host run, then the selected VM runs; the matrix at the end.
pub fn run(kernels: &str, filter: Option<&str>, jobs: usize) -> anyhow::Result<()> {
    let sel = Selection::parse(kernels)?;
    let root = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .context("xtask has no parent dir")?
        .to_owned();
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root.join("target"));
    let out = target.join("matrix");
    std::fs::create_dir_all(out.join("bin"))
        .with_context(|| format!("failed to create {}", out.display()))?;
    let started = Instant::now();

    let host_output = if sel.host {
        Some(host_tests(&out, filter)?)
    } else {
        None
    };
    // The binaries the host run built, copied so that a rebuild while guests run cannot swap them.
    let built = test_binaries()?;
    let mut binaries = Vec::new();
    for name in BINARIES {
        let exe = built
            .get(name)
            .with_context(|| format!("cargo test --no-run built no test binary {name}"))?;
        let path = snapshot(exe, &out.join("bin").join(name))?;
        let expected = list_tests(&path, filter)?;
        binaries.push(Binary {
            name,
            path,
            expected,
        });
    }
    if binaries.iter().all(|b| b.expected.is_empty()) && !sel.runs.is_empty() {
        bail!("the filter {filter:?} matches no test of the matrix (hooks, trace)");
    }
    let tracer = snapshot(
        built
            .get("tracer")
            .context("cargo built no tracer binary")?,
        &out.join("bin/tracer"),
    )?;
    let ctx = Ctx {
        root,
        out: out.clone(),
        tracer,
        binaries,
        workdir: built
            .get("workdir")
            .cloned()
            .context("no package directory for the tests")?,
        filter: filter.map(str::to_owned),
    };

    let mut columns = Vec::new();
    if let Some((output, status, wall)) = host_output {
        columns.push(host_column(&ctx, &output, status, wall));
    }
    columns.extend(vm_columns(&ctx, &sel.runs, jobs));

    let matrix = render(&ctx, &columns, started.elapsed());
    println!("\n{matrix}");
    let md = out.join("MATRIX.md");
    std::fs::write(&md, &matrix).with_context(|| format!("failed to write {}", md.display()))?;
    println!("written to {}", md.display());
    let failed: Vec<&str> = columns
        .iter()
        .filter(|c| !c.passed())
        .map(|c| c.label.as_str())
        .collect();
    if !failed.is_empty() {
        bail!("the matrix failed in {}", failed.join(", "));
    }
    Ok(())
}

/// The host run, exactly as before the matrix: every test, one at a time. Its output goes to the
/// terminal and is kept to fill the host column.
fn host_tests(
    out: &Path,
    filter: Option<&str>,
) -> anyhow::Result<(String, std::process::ExitStatus, Duration)> {
    // Release, like the demo and the binary users run: one build serves all three. The scenario
    // tests change kernel state (namespaces, conntrack, rules), so one test at a time.
    let mut cmd = cargo();
    cmd.args(["test", "--release", "--no-fail-fast"]);
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
fn host_column(
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
fn host_tier(tracer: &Path) -> String {
    let out = Command::new(tracer).arg("hooks").output();
    let text = out
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default();
    let tier = text
        .split_once("would get the ")
        .and_then(|(_, r)| r.split_whitespace().next())
        .unwrap_or("auto")
        .to_owned();
    let table = best_tier("host");
    if tier != table {
        eprintln!(
            "matrix: this machine's kernel gives the {tier} tier; xtask's table (written on 6.18) says {table}"
        );
    }
    tier
}

/// `cargo test --release --no-run`'s executables: `hooks`, `trace` and `tracer`, and under
/// `workdir` the tests' package directory.
fn test_binaries() -> anyhow::Result<BTreeMap<&'static str, PathBuf>> {
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
        let key = match name {
            "hooks" if is("test") => "hooks",
            "trace" if is("test") => "trace",
            // The bin target comes twice: its unit-test harness (profile.test) and the binary.
            "tracer" if is("bin") && v["profile"]["test"] == false => "tracer",
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
fn snapshot(from: &Path, to: &Path) -> anyhow::Result<PathBuf> {
    let tmp = to.with_extension("new");
    std::fs::copy(from, &tmp)
        .with_context(|| format!("failed to copy {} to {}", from.display(), tmp.display()))?;
    std::fs::rename(&tmp, to).with_context(|| format!("failed to rename {}", tmp.display()))?;
    Ok(to.to_owned())
}

/// The tests `bin` runs with `filter`, from its `--list`.
fn list_tests(bin: &Path, filter: Option<&str>) -> anyhow::Result<Vec<String>> {
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

/// Prepares each kernel once, then runs the (kernel, tier) boots, `jobs` at a time.
fn vm_columns(ctx: &Ctx, runs: &[(&'static str, &'static str)], jobs: usize) -> Vec<Column> {
    let mut kernels: Vec<&str> = runs.iter().map(|(k, _)| *k).collect();
    kernels.dedup();
    let mut unprepared: BTreeMap<&str, String> = BTreeMap::new();
    for k in kernels {
        println!("matrix: tracer vm prepare --kernel {k}");
        let t = Instant::now();
        match Command::new(&ctx.tracer)
            .args(["vm", "prepare", "--kernel", k])
            .output()
        {
            Ok(o) if o.status.success() => {
                println!(
                    "matrix: kernel {k} ready in {:.0}s",
                    t.elapsed().as_secs_f64()
                )
            }
            Ok(o) => {
                let err = String::from_utf8_lossy(&o.stderr).trim().to_owned();
                eprintln!("matrix: kernel {k} could not be prepared: {err}");
                unprepared.insert(k, err);
            }
            Err(e) => {
                unprepared.insert(k, e.to_string());
            }
        }
    }
    let next = AtomicUsize::new(0);
    let done = Mutex::new(Vec::new());
    std::thread::scope(|s| {
        for _ in 0..jobs.max(1) {
            s.spawn(|| {
                loop {
                    let i = next.fetch_add(1, Ordering::SeqCst);
                    let Some(&(kernel, tier)) = runs.get(i) else {
                        break;
                    };
                    let col = match unprepared.get(kernel) {
                        Some(err) => Column {
                            label: format!("{kernel}/{tier}"),
                            problems: vec![format!("did not boot: kernel not prepared: {err}")],
                            ..Column::default()
                        },
                        None => vm_run(ctx, kernel, tier),
                    };
                    done.lock().unwrap().push((i, col));
                }
            });
        }
    });
    let mut cols = done.into_inner().unwrap();
    cols.sort_by_key(|(i, _)| *i);
    cols.into_iter().map(|(_, c)| c).collect()
}

/// `s` as one POSIX shell word.
fn quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

/// The guest's script: each binary under `timeout`, between marker lines carrying its exit status.
fn guest_script(ctx: &Ctx, kernel: &str, tier: &str) -> String {
    let mut s = String::from("echo \"tracer-matrix: kernel $(uname -r)\"\n");
    for bin in ctx.binaries.iter().filter(|b| !b.expected.is_empty()) {
        let (env, bound) = match bin.name {
            "hooks" => (
                format!("TRACER_EXPECT_TIER={}", best_tier(kernel)),
                HOOKS_TIMEOUT,
            ),
            _ => (format!("TRACER_TEST_TIER={tier}"), TRACE_TIMEOUT),
        };
        let filter = ctx
            .filter
            .as_deref()
            .map(|f| format!(" {}", quote(f)))
            .unwrap_or_default();
        let _ = writeln!(
            s,
            "echo '{BEGIN} {name}'\n{env} timeout -k 10 {secs} {path} --test-threads=1{filter}\necho \"{END} {name} $?\"",
            name = bin.name,
            secs = bound.as_secs(),
            path = quote(&bin.path.to_string_lossy()),
        );
    }
    s
}

/// One boot of `kernel` running the binaries on `tier`; the log goes to target/matrix.
fn vm_run(ctx: &Ctx, kernel: &str, tier: &str) -> Column {
    let label = format!("{kernel}/{tier}");
    let log = ctx.out.join(format!("{kernel}-{tier}.log"));
    let mut col = Column {
        label: label.clone(),
        log: log.clone(),
        ..Column::default()
    };
    let bound = HOOKS_TIMEOUT + TRACE_TIMEOUT + BOOT_ALLOWANCE;
    println!("matrix: {label}: booting (bound {}s)", bound.as_secs());
    let t = Instant::now();
    let out = Command::new(&ctx.tracer)
        .args(["vm", "run", "--kernel", kernel])
        .args(["--timeout", &bound.as_secs().to_string()])
        .arg("--workdir")
        .arg(&ctx.workdir)
        .arg("--")
        .args(["sh", "-c", &guest_script(ctx, kernel, tier)])
        .current_dir(&ctx.root)
        .output();
    col.wall = t.elapsed();
    let (stdout, stderr, status) = match out {
        Ok(o) => (
            String::from_utf8_lossy(&o.stdout).into_owned(),
            String::from_utf8_lossy(&o.stderr).into_owned(),
            o.status,
        ),
        Err(e) => {
            col.problems
                .push(format!("did not boot: failed to start tracer vm run: {e}"));
            return col;
        }
    };
    let _ = std::fs::write(
        &log,
        format!("{stdout}\n----- stderr (guest and runner) -----\n{stderr}"),
    );
    col.boot = stderr
        .split_once("boot to command ")
        .and_then(|(_, r)| r.split_once('s'))
        .and_then(|(secs, _)| secs.parse::<f64>().ok())
        .map(Duration::from_secs_f64);
    // The script always ends with status 0 (its last echo): anything else is the runner's error
    // (`Error: vm` / `Caused by:` / the reason, then the console's tail).
    if !status.success() {
        let why = stderr
            .split_once("Caused by:")
            .map(|(_, r)| r)
            .unwrap_or(&stderr)
            .lines()
            .map(str::trim)
            .find(|l| !l.is_empty())
            .unwrap_or("tracer vm run failed")
            .to_owned();
        col.problems.push(if why.contains("timed out") {
            format!("the guest timed out after {}s: {why}", bound.as_secs())
        } else if stdout.contains("tracer-matrix: kernel") {
            format!("the guest died while the tests ran: {why}")
        } else {
            format!("did not boot: {why}")
        });
        // Whatever the tests printed before is still parsed below.
    }
    for bin in &ctx.binaries {
        if bin.expected.is_empty() {
            continue;
        }
        let begin = format!("{BEGIN} {}", bin.name);
        let end = format!("{END} {} ", bin.name);
        let mut lines = Vec::new();
        let mut exit = None;
        let mut inside = false;
        for l in stdout.lines() {
            if l == begin {
                inside = true;
            } else if let Some(code) = l.strip_prefix(&end) {
                exit = code.trim().parse().ok();
                inside = false;
            } else if inside {
                lines.push(l);
            }
        }
        let t = Libtest::parse(lines);
        let bound = if bin.name == "hooks" {
            HOOKS_TIMEOUT
        } else {
            TRACE_TIMEOUT
        };
        // A guest that died mid-binary leaves no end marker: not "never started".
        let exit = exit.or(if lines_started(&stdout, &begin) {
            Some(-1)
        } else {
            None
        });
        judge(&mut col, bin, &t, exit, bound);
    }
    println!(
        "matrix: {label}: {} in {}{}",
        col.status(),
        minutes(col.wall),
        col.boot
            .map(|b| format!(" (boot {:.0}s)", b.as_secs_f64()))
            .unwrap_or_default()
    );
    col
}

fn lines_started(stdout: &str, begin: &str) -> bool {
    stdout.lines().any(|l| l == begin)
}

fn minutes(d: Duration) -> String {
    let s = d.as_secs();
    format!("{}m{:02}s", s / 60, s % 60)
}

/// The matrix as markdown: rows are tests, columns runs; then each column's status and time,
/// every failure with its message, and every run problem.
fn render(ctx: &Ctx, columns: &[Column], total: Duration) -> String {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn libtest_lines_and_late_results() {
        let out = "\nrunning 3 tests\ntest a ... ok\ntest b ... \nCannot find device\nFAILED\ntest c ... ignored, needs x\n\nfailures:\n\n---- b stdout ----\n\nthread 'b' panicked at tests/trace.rs:10:5:\nassertion `left == right` failed: the tier\n  left: Kprobe\n right: Fentry\nnote: run with `RUST_BACKTRACE=1`\n\n\nfailures:\n    b\n\ntest result: FAILED. 1 passed; 1 failed; 1 ignored; 0 measured; 0 filtered out; finished in 1.00s\n";
        let t = Libtest::parse(out.lines());
        assert_eq!(t.results["a"], Cell::Ok);
        assert_eq!(t.results["b"], Cell::Failed);
        assert_eq!(t.results["c"], Cell::Ignored);
        assert_eq!(t.summary, Some((1, 1, 1)));
        assert_eq!(
            t.messages["b"],
            "thread 'b' panicked at tests/trace.rs:10:5: / assertion `left == right` failed: the tier / left: Kprobe / right: Fentry"
        );
    }

    #[test]
    fn a_cut_run_is_not_a_pass() {
        let t = Libtest::parse("running 2 tests\ntest a ... ok\ntest b ... ".lines());
        let bin = Binary {
            name: "trace",
            path: PathBuf::new(),
            expected: vec!["a".into(), "b".into()],
        };
        let mut col = Column::default();
        judge(&mut col, &bin, &t, Some(124), Duration::from_secs(5));
        assert!(!col.passed());
        assert_eq!(col.cells["trace/b"], Cell::Failed);
        assert_eq!(col.status(), "TIMEOUT");
        // Zero tests run is never a pass either.
        let mut col = Column::default();
        judge(
            &mut col,
            &bin,
            &Libtest::parse("".lines()),
            Some(0),
            Duration::ZERO,
        );
        assert!(!col.passed());
    }

    #[test]
    fn selections() {
        let all = Selection::parse("all").unwrap();
        assert!(all.host);
        assert_eq!(all.runs.len(), 8);
        assert_eq!(
            Selection::parse("6.1:kprobe,5.10").unwrap(),
            Selection {
                host: false,
                runs: vec![
                    ("5.10", "kprobe"),
                    ("5.10", "tracepoint"),
                    ("6.1", "kprobe")
                ]
            }
        );
        assert!(Selection::parse("5.10:fentry").is_err());
        assert!(Selection::parse("4.19").is_err());
        for (k, t) in CI {
            assert!(KERNELS.iter().any(|x| x.name == *k && x.tiers.contains(t)));
        }
    }
}
