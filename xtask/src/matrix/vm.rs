//! The VM runs: each (kernel, tier) booted with `tracer vm run`, the test binaries run in it
//! between marker lines, its output split per binary and judged.

use std::{
    collections::BTreeMap,
    fmt::Write as _,
    process::Command,
    sync::{
        Mutex,
        atomic::{AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use super::{
    Binary, Ctx,
    libtest::{Libtest, judge},
    plan::{Suites, best_tier},
    table::{Column, minutes},
};

/// The hooks binary's bound in a guest (measured: 10-12 s under TCG).
const HOOKS_TIMEOUT: Duration = Duration::from_secs(180);

/// The trace binary's bound in a guest (measured: 320-440 s under TCG, 5.10 the slowest): about
/// twice that, so a hung test costs CI 15 minutes, not its whole budget.
const TRACE_TIMEOUT: Duration = Duration::from_secs(900);

/// Each other suite's bound in a guest: each has a few scenarios of a lab or two each.
const SUITE_TIMEOUT: Duration = Duration::from_secs(600);

/// What the guest needs besides the tests: boot (twice if the first one fails) and power-off.
const BOOT_ALLOWANCE: Duration = Duration::from_secs(180);

/// Lines the guest script prints around each binary, so its output splits into sections.
const BEGIN: &str = "tracer-matrix: begin";

const END: &str = "tracer-matrix: end";

/// Prepares each kernel once, then runs the (kernel, tier) boots, `jobs` at a time.
pub fn vm_columns(
    ctx: &Ctx,
    runs: &[(&'static str, &'static str, Suites)],
    jobs: usize,
) -> Vec<Column> {
    let mut kernels: Vec<&str> = runs.iter().map(|(k, _, _)| *k).collect();
    kernels.dedup();
    let mut unprepared: BTreeMap<&str, String> = BTreeMap::new();
    for k in kernels {
        println!("matrix: tracer vm prepare --kernel {k}");
        let t = Instant::now();
        match super::stop_with_parent(&mut Command::new(&ctx.tracer))
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
                    let Some(&(kernel, tier, suites)) = runs.get(i) else {
                        break;
                    };
                    let col = match unprepared.get(kernel) {
                        Some(err) => Column {
                            label: format!("{kernel}/{tier}"),
                            problems: vec![format!("did not boot: kernel not prepared: {err}")],
                            ..Column::default()
                        },
                        None => vm_run(ctx, kernel, tier, suites),
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

/// A binary's bound in a guest.
fn bin_bound(bin: &Binary) -> Duration {
    match bin.name {
        "hooks" => HOOKS_TIMEOUT,
        "trace" => TRACE_TIMEOUT,
        _ => SUITE_TIMEOUT,
    }
}

/// The binaries a run of `suites` runs: those with tests left after the filter.
fn selected(ctx: &Ctx, suites: Suites) -> impl Iterator<Item = &Binary> {
    ctx.binaries
        .iter()
        .filter(move |b| !b.expected.is_empty() && b.level <= suites)
}

/// The guest's script: each binary under `timeout`, between marker lines carrying its exit status.
fn guest_script(ctx: &Ctx, kernel: &str, tier: &str, suites: Suites) -> String {
    let mut s = String::from("echo \"tracer-matrix: kernel $(uname -r)\"\n");
    for bin in selected(ctx, suites) {
        let env = match bin.name {
            "hooks" => format!("TRACER_EXPECT_TIER={}", best_tier(kernel)),
            _ => format!("TRACER_TEST_TIER={tier}"),
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
            secs = bin_bound(bin).as_secs(),
            path = quote(&bin.path.to_string_lossy()),
        );
    }
    s
}

/// One boot of `kernel` running the binaries of `suites` on `tier`; the log goes to target/matrix.
fn vm_run(ctx: &Ctx, kernel: &str, tier: &str, suites: Suites) -> Column {
    let label = format!("{kernel}/{tier}");
    let log = ctx.out.join(format!("{kernel}-{tier}.log"));
    let mut col = Column {
        label: label.clone(),
        log: log.clone(),
        ..Column::default()
    };
    let bound = selected(ctx, suites).map(bin_bound).sum::<Duration>() + BOOT_ALLOWANCE;
    println!("matrix: {label}: booting (bound {}s)", bound.as_secs());
    let t = Instant::now();
    let out = super::stop_with_parent(&mut Command::new(&ctx.tracer))
        .args(["vm", "run", "--kernel", kernel])
        .args(["--timeout", &bound.as_secs().to_string()])
        .arg("--workdir")
        .arg(&ctx.workdir)
        .arg("--")
        .args(["sh", "-c", &guest_script(ctx, kernel, tier, suites)])
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
    for bin in selected(ctx, suites) {
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
        // A guest that died mid-binary leaves no end marker: not "never started".
        let exit = exit.or(if lines_started(&stdout, &begin) {
            Some(-1)
        } else {
            None
        });
        judge(&mut col, bin, &t, exit, bin_bound(bin));
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
