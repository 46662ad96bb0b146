//! Project tasks: `cargo xtask setup|demo|test|bench|fuzz|lint`.
//!
//! # Layout
//! - `setup`: installs what a fresh machine lacks (Debian packages, rust-src, bpf-linker, bpffs
//!   and tracefs mounts), idempotently; the other tasks run it first.
//! - `demo`: the README's main job on the lab.
//! - `test`: unit tests and the scenario tests under tests/, one at a time (they share the kernel),
//!   then the kernel matrix (`matrix`): hooks and trace tests in Debian kernels under qemu.
//! - `bench`: the tracer's cost at full DNS rate next to bpftrace, and the deep tier's inside a
//!   Debian kernel under qemu; writes bench/RESULTS.md.
//! - `fuzz`: the long run of tests/fuzz.rs (the parsers of untrusted bytes, stable toolchain).
//! - `lint` (`arch`): rustfmt, clippy, the function limit (clippy's `too_many_lines`), and the
//!   architecture check: file sizes and the tracer's module layering.
mod arch;
mod bench;
mod demo;
mod fuzz;
mod matrix;
mod setup;

use std::{path::Path, process::Command};

use anyhow::{Context as _, bail};
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "xtask")]
struct Cli {
    #[command(subcommand)]
    task: Task,
}

#[derive(Subcommand)]
enum Task {
    /// Install what this machine lacks to build, run and test the tracer.
    Setup,
    /// Set up, bring the lab up, show DNS answered, break it, trace it, tear it down.
    Demo,
    /// Set up and run every test (unit and scenario) as root, then the hooks and trace scenario
    /// tests on each kernel and hook tier of the matrix (Debian kernels under qemu); prints the
    /// matrix and writes target/matrix/MATRIX.md.
    #[command(
        after_help = "Examples:\n  cargo xtask test                      # host, then the CI subset of the matrix\n  cargo xtask test --kernels all        # every kernel on every tier\n  cargo xtask test --kernels host       # this machine's kernel only\n  cargo xtask test --kernels 6.1:kprobe,5.10 filter_drop"
    )]
    Test {
        /// Which kernels: ci (the host and the CI subset), all (every kernel, every tier), host,
        /// or a comma-separated list of host, KERNEL (5.10, 6.1, 6.12: every tier it offers) and
        /// KERNEL:TIER.
        #[arg(long, default_value = "ci")]
        kernels: String,
        /// Guests booted at once, each one vCPU of qemu TCG (2 on 2 cores: each run took as long
        /// as alone).
        #[arg(long, default_value_t = 2)]
        jobs: usize,
        /// Only tests whose name contains this.
        filter: Option<String>,
    },
    /// Measure the tracer's overhead, lost events, attach/detach time and memory on its own lab
    /// (about 8 minutes), then the deep tier in a VM (about 8 more); writes bench/RESULTS.md.
    /// Never part of `test`.
    Bench {
        /// A short smoke run (about a minute), written to the target dir instead.
        #[arg(long)]
        quick: bool,
        /// Interleaved rounds of every mode (default 6, quick 1).
        #[arg(long)]
        rounds: Option<u32>,
        /// Seconds of dnsperf per run (default 8, quick 3; with --vm: default 5, quick 3).
        #[arg(long)]
        seconds: Option<u32>,
        /// Only the deep tier (kprobe, fentry) inside this Debian kernel under qemu (6.1, 5.10,
        /// 6.12: `tracer vm list`), in ratios to the tracepoint tier in the same guest (about 8
        /// minutes; rounds default 4). The full bench runs it on 6.1 after the host part.
        #[arg(long, value_name = "KERNEL")]
        vm: Option<String>,
        /// Also run this commit's tracer in every round, and give this commit's BPF cost per
        /// query as a ratio to it (default for the full bench: e073dc2, the last commit
        /// measured before IPv6 and TCP; `none`: no baseline). Built once, kept in target/bench.
        #[arg(long, value_name = "REV")]
        baseline: Option<String>,
        /// Only the soak: `tracer trace --lab --metrics` this many seconds under DNS load, its
        /// RSS sampled and /metrics scraped every 5 s; prints start, end and max RSS and the
        /// growth per hour.
        #[arg(long, value_name = "SECONDS", conflicts_with_all = ["vm", "quick"])]
        soak: Option<u64>,
        /// The lab prefix of --soak.
        #[arg(long, default_value = "trs", requires = "soak")]
        soak_prefix: String,
        /// A lab fault held through --soak (its arguments as `tracer lab fault` takes them, such
        /// as "filter-drop --pod 1"): the failure side's tables fill too.
        #[arg(long, value_name = "FAULT", requires = "soak")]
        soak_fault: Option<String>,
    },
    /// The VM part's guest side (run by `bench` inside the guest, not by hand).
    #[command(hide = true)]
    BenchVmGuest {
        #[arg(long)]
        tracer: std::path::PathBuf,
        #[arg(long)]
        rounds: u32,
        #[arg(long)]
        seconds: u32,
        #[arg(long)]
        qps: u32,
        #[arg(long)]
        conn_rate: u32,
    },
    /// Fuzz the parsers of untrusted bytes (tests/fuzz.rs, stable toolchain, corpora in
    /// tests/corpus/): 60 s per target unless told; prints each target's executions.
    #[command(
        after_help = "Examples:\n  cargo xtask fuzz\n  cargo xtask fuzz --target dns --runs 1000000\n  cargo xtask fuzz --seconds 600 --seed 7"
    )]
    Fuzz {
        /// Only this target: dns, iptables_save, nft_json, ctnetlink, rtnetlink, ring_buffer, report.
        #[arg(long)]
        target: Option<String>,
        /// Mutations per target.
        #[arg(long, conflicts_with = "seconds")]
        runs: Option<u64>,
        /// Seconds per target (default 60).
        #[arg(long)]
        seconds: Option<u64>,
        /// The mutator's seed.
        #[arg(long)]
        seed: Option<u64>,
    },
    /// rustfmt and clippy on the host crates; functions at most 120 lines outside tests
    /// (clippy.toml); clippy on the eBPF crate on its own; files at most 700 lines and the
    /// tracer's module layering (xtask/src/arch.rs). Runs every step, then fails if one did.
    Lint,
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().task {
        Task::Setup => setup::run(),
        Task::Demo => {
            setup::run()?;
            demo::run()
        }
        Task::Test {
            kernels,
            jobs,
            filter,
        } => {
            setup::run()?;
            matrix::run(&kernels, filter.as_deref(), jobs)
        }
        Task::Bench {
            quick,
            rounds,
            seconds,
            vm,
            baseline,
            soak,
            soak_prefix,
            soak_fault,
        } => {
            setup::run()?;
            bench::run(bench::Options {
                quick,
                rounds,
                seconds,
                vm,
                baseline,
                soak: soak.map(|seconds| bench::Soak {
                    seconds,
                    prefix: soak_prefix,
                    fault: soak_fault,
                }),
            })
        }
        Task::BenchVmGuest {
            tracer,
            rounds,
            seconds,
            qps,
            conn_rate,
        } => bench::vm_guest(bench::GuestArgs {
            tracer,
            plan: bench::GuestPlan {
                rounds,
                seconds,
                qps,
                conn_rate,
            },
        }),
        Task::Fuzz {
            target,
            runs,
            seconds,
            seed,
        } => fuzz::run(&fuzz::Options {
            target,
            runs,
            seconds,
            seed,
        }),
        Task::Lint => lint(),
    }
}

/// Runs a command, failing with its name when it fails.
pub fn sh(cmd: &mut Command) -> anyhow::Result<()> {
    let status = cmd
        .status()
        .with_context(|| format!("failed to start {cmd:?}"))?;
    if !status.success() {
        bail!("{cmd:?} failed: {status}");
    }
    Ok(())
}

/// `cargo` from the toolchain running xtask.
pub fn cargo() -> Command {
    Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned()))
}

fn lint() -> anyhow::Result<()> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .context("xtask has no parent dir")?;
    let steps: [(&str, &dyn Fn() -> anyhow::Result<()>); 5] = [
        ("rustfmt", &|| sh(cargo().args(["fmt", "--all", "--check"]))),
        ("clippy", &|| {
            sh(cargo().args([
                "clippy",
                "--release",
                "--all-targets",
                "--",
                "-D",
                "warnings",
            ]))
        }),
        // Tests are excepted from the function limit: only the libraries and binaries.
        ("function size", &|| {
            sh(cargo()
                .args(["clippy", "--release"])
                .args(["-p", "tracer", "-p", "tracer-common", "-p", "xtask"])
                .args(["--lib", "--bins", "--", "-D", "clippy::too_many_lines"]))
        }),
        ("clippy (eBPF)", &|| {
            sh(cargo()
                .args([
                    "clippy",
                    "--release",
                    "-p",
                    "tracer-ebpf",
                    "--target",
                    "bpfel-unknown-none",
                ])
                .args(["-Z", "build-std=core", "--", "-D", "warnings"])
                .env("RUSTC_BOOTSTRAP", "1"))
        }),
        ("architecture", &|| arch::run(root)),
    ];
    let mut failed = Vec::new();
    for (name, step) in steps {
        println!("lint: {name}");
        if let Err(e) = step() {
            eprintln!("lint: {name} failed: {e:#}");
            failed.push(name);
        }
    }
    if !failed.is_empty() {
        bail!("lint failed: {}", failed.join(", "));
    }
    Ok(())
}
