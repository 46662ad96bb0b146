//! The kernel matrix of `cargo xtask test`: the host run, then the hooks test and the scenario
//! suites on Debian's kernels booted under qemu (`tracer vm run`), one boot per (kernel, tier), and one
//! table of what passed where.
//!
//! # Layout
//! - `plan`: the tiers each kernel gives (`KERNELS`), the runs `--kernels ci` makes (`CI`), and
//!   `Selection` (`--kernels ci|all|host|LIST`).
//! - `host`: the host run (every test, one at a time) and its column; the test binaries it built.
//! - `vm`: one guest boot per (kernel, tier), `jobs` at a time, and its column.
//! - `libtest`: a test binary's output parsed, and judged into a column.
//! - `table`: `Column` (one run's cells and problems) and the matrix, printed and written to
//!   target/matrix/MATRIX.md.

mod host;
mod libtest;
mod plan;
mod table;
mod vm;

use std::{
    path::{Path, PathBuf},
    time::Instant,
};

use anyhow::{Context as _, bail};

use host::{host_column, host_tests, list_tests, snapshot, test_binaries};
use plan::{Selection, Suites};
use table::render;
use vm::vm_columns;

/// The test binaries the matrix runs in the guests, with the smallest `Suites` that runs each:
/// `hooks` (with `TRACER_EXPECT_TIER`), then the scenario suites (with `TRACER_TEST_TIER`).
const BINARIES: [(&str, Suites); 19] = [
    ("hooks", Suites::Core),
    ("trace", Suites::Core),
    ("cleanup", Suites::Paths),
    ("tcp", Suites::Paths),
    ("ipvs", Suites::Paths),
    ("policy", Suites::All),
    ("rules", Suites::All),
    ("ruletrace", Suites::All),
    ("live", Suites::All),
    ("causes", Suites::All),
    ("names", Suites::All),
    ("ipv6", Suites::All),
    ("nodelocal", Suites::All),
    ("modes", Suites::All),
    ("badinput", Suites::All),
    ("malformed", Suites::All),
    ("lifecycle", Suites::All),
    ("privileges", Suites::All),
    ("doctor", Suites::All),
];

/// A test binary of the matrix and the tests it must run (its `--list`, filtered).
struct Binary {
    /// One of `BINARIES`.
    name: &'static str,
    /// The smallest `Suites` whose runs run it.
    level: Suites,
    /// The snapshot under target/matrix/bin.
    path: PathBuf,
    expected: Vec<String>,
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
    for (name, level) in BINARIES {
        let exe = built
            .get(name)
            .with_context(|| format!("cargo test --no-run built no test binary {name}"))?;
        let path = snapshot(exe, &out.join("bin").join(name))?;
        let expected = list_tests(&path, filter)?;
        binaries.push(Binary {
            name,
            level,
            path,
            expected,
        });
    }
    if binaries.iter().all(|b| b.expected.is_empty()) && !sel.runs.is_empty() {
        bail!(
            "the filter {filter:?} matches no test of the matrix ({})",
            BINARIES.map(|(name, _)| name).join(", ")
        );
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

/// Makes `cmd`'s process get SIGTERM when the thread that starts it ends: when `cargo xtask
/// test` is killed (SIGTERM, SIGINT), `tracer vm run` stops its guest (its handler ends qemu and
/// removes the guest's files) and `cargo test` stops, instead of running on without a reader.
fn stop_with_parent(cmd: &mut std::process::Command) -> &mut std::process::Command {
    use std::os::unix::process::CommandExt as _;

    let parent = nix::unistd::getpid();
    // SAFETY: prctl and getppid are async-signal-safe; nothing else runs between fork and exec.
    unsafe {
        cmd.pre_exec(move || {
            nix::sys::prctl::set_pdeathsig(nix::sys::signal::Signal::SIGTERM)?;
            // The parent died before the prctl: nothing would signal this child.
            if nix::unistd::getppid() != parent {
                return Err(std::io::Error::other("xtask exited"));
            }
            Ok(())
        })
    }
}
