//! `cargo xtask bench`: the tracer's cost on the lab at full DNS rate, in ratios taken in one
//! run, next to a bpftrace anchor; per-hook BPF CPU time per query; lost events, attach and
//! detach time, memory. Writes bench/RESULTS.md (`--quick`: a smoke run, written to the target
//! dir instead).
//!
//! # Layout
//! - `dnsperf`: the load (query file, one run, its statistics).
//! - `measure`: machine and process CPU time, memory, BPF program run counters.
//! - `traced`: the tracer and the bpftrace anchor as attached child processes, their output.
//! - `report`: figures over the rounds, targets met or missed, the Markdown written and printed.
//! - `vm`: the deep tier (kprobe, fentry) inside a Debian kernel under qemu, in ratios.
//! - `baseline`: an earlier commit's tracer, built to run in the same rounds as this one's.
//! - `soak`: `trace --metrics` for a long while under load, its RSS sampled (`--soak`).

mod baseline;
mod dnsperf;
mod measure;
mod memory;
mod report;
mod soak;
mod traced;
mod vm;

pub use soak::Soak;
pub use traced::ChildGuard;
pub use vm::{GuestArgs, GuestPlan, guest as vm_guest};

use std::{
    collections::BTreeMap,
    os::unix::fs::MetadataExt as _,
    path::{Path, PathBuf},
    process::Command,
    sync::atomic::{AtomicBool, Ordering},
    thread::sleep,
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};
use dnsperf::{Load, QueryFile};
use measure::ProgStats;

/// The bench's own lab, apart from the ones tests and the demo bring up.
const PREFIX: &str = "trb";
/// The lab's DNS Service IP: dnsperf sends nowhere else.
const SERVICE: &str = "10.96.0.10";

/// How long and how often.
#[derive(Debug, Clone)]
pub struct Options {
    /// A short smoke run: one round of a few seconds, results not written to bench/RESULTS.md.
    pub quick: bool,
    /// Interleaved rounds (default 6; quick 1).
    pub rounds: Option<u32>,
    /// Seconds of dnsperf per run (default 8; quick 3).
    pub seconds: Option<u32>,
    /// Only the VM part, on this kernel (`tracer vm run --kernel`).
    pub vm: Option<String>,
    /// The commit whose tracer runs in the same rounds as a baseline (`none`: no baseline;
    /// default: `baseline::REFERENCE` for the full bench, none for the quick one).
    pub baseline: Option<String>,
    /// Only the soak.
    pub soak: Option<Soak>,
}

/// The kernel of the full bench's VM part: Debian 12's, the one most nodes of its age run.
const VM_KERNEL: &str = "6.1";

/// Settings after defaults.
#[derive(Debug, Clone, Copy)]
struct Plan {
    quick: bool,
    rounds: u32,
    seconds: u32,
    calibrate_seconds: u32,
    long_segments: u32,
    long_segment_seconds: u32,
    long_clients: u32,
}

impl Plan {
    fn of(o: Options) -> Self {
        if o.quick {
            Self {
                quick: true,
                rounds: o.rounds.unwrap_or(1),
                seconds: o.seconds.unwrap_or(3),
                calibrate_seconds: 2,
                long_segments: 2,
                long_segment_seconds: 3,
                long_clients: 200,
            }
        } else {
            Self {
                quick: false,
                rounds: o.rounds.unwrap_or(6),
                seconds: o.seconds.unwrap_or(8),
                calibrate_seconds: 4,
                long_segments: 6,
                long_segment_seconds: 10,
                long_clients: 200,
            }
        }
    }

    /// Loads tried to find the highest lossless rate (quick: fewer).
    fn candidates(&self) -> Vec<Load> {
        let all = [(1, 20), (1, 100), (4, 100), (8, 200), (16, 400)];
        let pick: &[(u32, u32)] = if self.quick { &all[1..3] } else { &all };
        pick.iter()
            .map(|&(clients, outstanding)| Load {
                clients,
                outstanding,
            })
            .collect()
    }
}

static INTERRUPTED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: nix::libc::c_int) {
    INTERRUPTED.store(true, Ordering::SeqCst);
}

/// Fails once Ctrl-C or SIGTERM arrived, so that every guard on the way out runs.
pub fn check_interrupted() -> anyhow::Result<()> {
    if INTERRUPTED.load(Ordering::SeqCst) {
        bail!("interrupted");
    }
    Ok(())
}

fn catch_signals() -> anyhow::Result<()> {
    use nix::sys::signal::{SaFlags, SigAction, SigHandler, SigSet, Signal, sigaction};
    let action = SigAction::new(
        SigHandler::Handler(on_signal),
        SaFlags::empty(),
        SigSet::empty(),
    );
    for sig in [Signal::SIGINT, Signal::SIGTERM] {
        // SAFETY: the handler only stores to an atomic, which is async-signal-safe.
        unsafe { sigaction(sig, &action) }.with_context(|| format!("failed to catch {sig}"))?;
    }
    Ok(())
}

/// Tears the bench's lab down however the bench ends.
struct LabGuard {
    tracer: PathBuf,
}

impl Drop for LabGuard {
    fn drop(&mut self) {
        let ok = Command::new(&self.tracer)
            .args(["lab", "down", "--prefix", PREFIX])
            .status();
        if !ok.is_ok_and(|s| s.success()) {
            eprintln!("bench: `tracer lab down --prefix {PREFIX}` failed: run it by hand");
        }
    }
}

/// What runs during one dnsperf run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Mode {
    /// Nothing attached.
    Untraced,
    /// `tracer trace --lab --output json`: the default mode.
    Tracer,
    /// `tracer trace --lab --output json --all`: a record per query.
    TracerAll,
    /// `tracer trace --lab --output json --rules`: netfilter's own tracing of DNS packets too.
    TracerRules,
    /// The bpftrace anchor.
    Bpftrace,
    /// An earlier commit's `tracer trace --lab --output json` (`--baseline`).
    Baseline,
}

impl Mode {
    const ALL: [Mode; 6] = [
        Mode::Untraced,
        Mode::Tracer,
        Mode::TracerAll,
        Mode::TracerRules,
        Mode::Bpftrace,
        Mode::Baseline,
    ];

    /// Its name in tables.
    pub fn name(self) -> &'static str {
        match self {
            Mode::Untraced => "untraced",
            Mode::Tracer => "tracer",
            Mode::TracerAll => "tracer --all",
            Mode::TracerRules => "tracer --rules",
            Mode::Bpftrace => "bpftrace",
            Mode::Baseline => "baseline",
        }
    }
}

/// Everything measured over one dnsperf run.
#[derive(Debug, Clone)]
pub struct Run {
    /// Round number, from 1.
    pub round: u32,
    /// What was attached.
    pub mode: Mode,
    /// dnsperf's statistics.
    pub dns: dnsperf::Outcome,
    /// Busy CPU time of the whole machine over the dnsperf run.
    pub busy_ns: u64,
    /// CPU time of the lab over the dnsperf run: dnsperf, the DNS pods' dnsmasq, ksoftirqd.
    pub lab_ns: u64,
    /// dnsperf's share of `lab_ns`.
    pub dnsperf_ns: u64,
    /// BPF run counters over the dnsperf run, per program of the tracing process.
    pub bpf: BTreeMap<String, ProgStats>,
    /// Ids of the tracing process's programs.
    pub prog_ids: Vec<u32>,
    /// The tracing process's CPU time over the dnsperf run.
    pub proc_cpu_ns: Option<u64>,
    /// Its VmRSS sampled during the dnsperf run.
    pub rss: Vec<u64>,
    /// Its VmHWM at the end of the dnsperf run.
    pub hwm: Option<u64>,
    /// Spawn to attached.
    pub ready: Option<Duration>,
    /// SIGINT to exit.
    pub detach: Option<Duration>,
    /// The tracer's own report.
    pub tracer: Option<traced::TracerReport>,
    /// Packets the bpftrace anchor counted.
    pub bpftrace_packets: Option<u64>,
}

impl Run {
    fn set(&mut self, l: Loaded) {
        (self.dns, self.busy_ns, self.lab_ns, self.dnsperf_ns) =
            (l.dns, l.busy_ns, l.lab_ns, l.dnsperf_ns);
    }
}

/// The long run of many flows under the default-mode tracer.
#[derive(Debug, Clone, Default)]
pub struct LongRun {
    /// dnsperf runs (each with fresh client sockets, so fresh source ports and conntrack flows).
    pub segments: u32,
    /// Client sockets per segment.
    pub clients: u32,
    /// Queries answered in all.
    pub completed: u64,
    /// Seconds of load.
    pub seconds: u32,
    /// VmRSS after each segment.
    pub rss_after_segment: Vec<u64>,
    /// VmHWM at the end.
    pub hwm: u64,
    /// Ring-buffer records lost.
    pub lost_events: u64,
    /// Seconds the tracer was watched with no traffic before the load.
    pub idle_seconds: f64,
    /// Its CPU time then, milliseconds per second.
    pub idle_cpu_ms_per_s: f64,
}

/// Everything the bench found.
#[derive(Debug)]
pub struct Results {
    /// `--quick`.
    pub quick: bool,
    /// Seconds per run.
    pub seconds: u32,
    /// Calibration: each load tried and what it gave.
    pub calibration: Vec<(Load, dnsperf::Outcome)>,
    /// The load chosen.
    pub load: Load,
    /// Every run of every round.
    pub runs: Vec<Run>,
    /// The long run.
    pub long: LongRun,
    /// The dnsperf command line (with the chosen load).
    pub dnsperf_cmd: String,
    /// The bpftrace command line.
    pub bpftrace_cmd: String,
    /// Other processes' BPF programs that ran during the rounds: (name, runs, ns per run).
    pub foreign: Vec<(String, u64, u64)>,
    /// The commit measured (`git describe --always --dirty`).
    pub commit: String,
    /// The baseline's commit, as given, when one ran.
    pub baseline: Option<String>,
}

/// One dnsperf run and the CPU time it took.
struct Loaded {
    dns: dnsperf::Outcome,
    /// The whole machine's busy time.
    busy_ns: u64,
    /// dnsperf, the DNS pods and ksoftirqd.
    lab_ns: u64,
    /// dnsperf alone.
    dnsperf_ns: u64,
}

struct Bench {
    tracer: PathBuf,
    baseline: Option<baseline::Baseline>,
    script: PathBuf,
    queries: QueryFile,
    /// Inodes of the lab's node, dns0, dns1 and client0 namespaces.
    netns: [u64; 4],
}

fn client_netns() -> String {
    format!("{PREFIX}-client0")
}

impl Bench {
    fn dnsperf(&self, load: Load, secs: u32) -> Command {
        dnsperf::command(&client_netns(), SERVICE, &self.queries, load, secs)
    }

    /// One dnsperf run.
    fn load(&self, load: Load, secs: u32) -> anyhow::Result<Loaded> {
        let pods = &self.netns[1..3];
        let busy = measure::machine_busy_ns()?;
        let pods_cpu = measure::netns_cpu_ns(pods)?;
        let dnsperf_cpu = measure::children_cpu_ns()?;
        let dns = dnsperf::run(self.dnsperf(load, secs), || {})?;
        let dnsperf_ns = measure::children_cpu_ns()?.saturating_sub(dnsperf_cpu);
        let pods_ns = measure::netns_cpu_ns(pods)?.saturating_sub(pods_cpu);
        Ok(Loaded {
            dns,
            busy_ns: measure::machine_busy_ns()?.saturating_sub(busy),
            lab_ns: pods_ns + dnsperf_ns,
            dnsperf_ns,
        })
    }

    fn run(&self, round: u32, mode: Mode, load: Load, secs: u32) -> anyhow::Result<Run> {
        let mut run = Run {
            round,
            mode,
            dns: Default::default(),
            busy_ns: 0,
            lab_ns: 0,
            dnsperf_ns: 0,
            bpf: BTreeMap::new(),
            prog_ids: Vec::new(),
            proc_cpu_ns: None,
            rss: Vec::new(),
            hwm: None,
            ready: None,
            detach: None,
            tracer: None,
            bpftrace_packets: None,
        };
        let attached = match mode {
            Mode::Untraced => {
                run.set(self.load(load, secs)?);
                return Ok(run);
            }
            Mode::Tracer | Mode::TracerAll | Mode::TracerRules => {
                traced::tracer(&self.tracer, PREFIX, mode)?
            }
            Mode::Baseline => {
                let b = self.baseline.as_ref().context("no baseline was built")?;
                traced::tracer(&b.tracer, PREFIX, mode)?
            }
            Mode::Bpftrace => traced::bpftrace(&self.script, &self.netns)?,
        };
        run.ready = Some(attached.ready);
        let ids = measure::prog_ids(attached.pid)?;
        let bpf_before = measure::prog_stats(&ids)?;
        let cpu_before = measure::process_cpu_ns(attached.pid)?;
        let sampler = measure::RssSampler::start(attached.pid, Duration::from_millis(250));
        run.set(self.load(load, secs)?);
        run.proc_cpu_ns = Some(measure::process_cpu_ns(attached.pid)?.saturating_sub(cpu_before));
        run.bpf = measure::prog_delta(&bpf_before, &measure::prog_stats(&ids)?);
        run.prog_ids = ids;
        run.rss = sampler.stop();
        run.hwm = measure::status_kb(attached.pid, "VmHWM");
        let (detach, cap) = attached.stop(mode.name())?;
        run.detach = Some(detach);
        match mode {
            Mode::Bpftrace => run.bpftrace_packets = Some(traced::bpftrace_packets(&cap)),
            // An older tracer's lines need not parse as today's: its BPF statistics are enough.
            Mode::Baseline => {}
            _ => run.tracer = Some(traced::TracerReport::parse(&cap)?),
        }
        Ok(run)
    }

    /// Every round: each mode once, the order rotated each round so that no mode always runs
    /// first or last.
    fn rounds(&self, plan: &Plan, load: Load) -> anyhow::Result<Vec<Run>> {
        let all: Vec<Mode> = Mode::ALL
            .into_iter()
            .filter(|m| *m != Mode::Baseline || self.baseline.is_some())
            .collect();
        let n = all.len();
        let mut runs = Vec::new();
        for round in 1..=plan.rounds {
            for mode in (0..n).map(|i| all[(i + round as usize - 1) % n]) {
                let r = self.run(round, mode, load, plan.seconds)?;
                println!(
                    "bench: round {round} {:<13} {:>8.0} qps {:>7.0} us avg, {} lost",
                    mode.name(),
                    r.dns.qps,
                    r.dns.latency_us,
                    r.dns.lost
                );
                runs.push(r);
            }
        }
        Ok(runs)
    }

    /// The highest-rate load that lost nothing (else the one that lost least).
    fn calibrate(&self, plan: &Plan) -> anyhow::Result<(Load, Vec<(Load, dnsperf::Outcome)>)> {
        let mut tried = Vec::new();
        for load in plan.candidates() {
            let dns = self.load(load, plan.calibrate_seconds)?.dns;
            println!(
                "bench: calibrate {}: {:.0} qps, {} lost of {}",
                load.args(),
                dns.qps,
                dns.lost,
                dns.sent
            );
            tried.push((load, dns));
        }
        let lossless = tried
            .iter()
            .filter(|(_, d)| d.lost == 0)
            .max_by(|a, b| a.1.qps.total_cmp(&b.1.qps));
        let best = lossless
            .or_else(|| {
                tried
                    .iter()
                    .min_by(|a, b| a.1.loss().total_cmp(&b.1.loss()))
            })
            .map(|(l, _)| *l)
            .context("no calibration run")?;
        Ok((best, tried))
    }

    /// The default-mode tracer under many distinct flows: RSS after each segment.
    fn long_run(&self, plan: &Plan, load: Load) -> anyhow::Result<LongRun> {
        let attached = traced::tracer(&self.tracer, PREFIX, Mode::Tracer)?;
        let many = Load {
            clients: plan.long_clients,
            outstanding: load.outstanding.max(plan.long_clients),
        };
        let mut long = LongRun {
            segments: plan.long_segments,
            clients: many.clients,
            seconds: plan.long_segments * plan.long_segment_seconds,
            ..Default::default()
        };
        // First no traffic at all: what the tracer costs by itself.
        let idle = Duration::from_secs(3);
        let cpu = measure::process_cpu_ns(attached.pid)?;
        let t = Instant::now();
        while t.elapsed() < idle {
            check_interrupted()?;
            sleep(Duration::from_millis(100));
        }
        long.idle_seconds = t.elapsed().as_secs_f64();
        let idle_ns = measure::process_cpu_ns(attached.pid)?.saturating_sub(cpu);
        long.idle_cpu_ms_per_s = idle_ns as f64 / 1e6 / long.idle_seconds;
        println!(
            "bench: tracer with no traffic: {:.1} ms CPU per second",
            long.idle_cpu_ms_per_s
        );
        for i in 0..plan.long_segments {
            let dns = dnsperf::run(self.dnsperf(many, plan.long_segment_seconds), || {})?;
            long.completed += dns.completed;
            let rss = measure::status_kb(attached.pid, "VmRSS").unwrap_or(0);
            println!(
                "bench: long run segment {}/{}: {:.0} qps, RSS {:.1} MB",
                i + 1,
                plan.long_segments,
                dns.qps,
                rss as f64 / 1e6
            );
            long.rss_after_segment.push(rss);
        }
        long.hwm = measure::status_kb(attached.pid, "VmHWM").unwrap_or(0);
        let (_, cap) = attached.stop("tracer")?;
        long.lost_events = traced::TracerReport::parse(&cap)?.lost_events;
        Ok(long)
    }
}

/// Programs not ours that ran between two snapshots: (name, runs, ns per run), busiest first.
fn foreign_runs(
    before: &BTreeMap<u32, (String, ProgStats)>,
    after: &BTreeMap<u32, (String, ProgStats)>,
    ours: &[u32],
) -> Vec<(String, u64, u64)> {
    let mut v: Vec<(String, u64, u64)> = after
        .iter()
        .filter(|(id, _)| !ours.contains(id))
        .filter_map(|(id, (name, a))| {
            let b = before.get(id).map(|(_, s)| *s).unwrap_or_default();
            let runs = a.run_cnt.saturating_sub(b.run_cnt);
            (runs > 0).then(|| {
                (
                    name.clone(),
                    runs,
                    a.run_time_ns.saturating_sub(b.run_time_ns) / runs,
                )
            })
        })
        .collect();
    v.sort_by_key(|f| std::cmp::Reverse(f.1));
    v
}

fn netns_inode(name: &str) -> anyhow::Result<u64> {
    let path = format!("/run/netns/{name}");
    Ok(std::fs::metadata(&path)
        .with_context(|| format!("failed to stat {path}"))?
        .ino())
}

/// Where cargo puts the release binary: CARGO_TARGET_DIR, else the workspace's target/.
fn target_dir(root: &Path) -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root.join("target"))
}

fn git_describe(root: &Path) -> String {
    Command::new("git")
        .arg("-C")
        .arg(root)
        .args(["describe", "--always", "--dirty"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_default()
}

/// The VM part on `kernel`: measured, printed, its section returned.
fn run_vm(
    root: &Path,
    target: &Path,
    tracer: &Path,
    kernel: &str,
    opts: &Options,
) -> anyhow::Result<String> {
    let r = vm::run(
        target,
        tracer,
        &vm::VmOptions {
            kernel: kernel.to_owned(),
            quick: opts.quick,
            // The host's rounds and seconds are for the host's lab at full rate.
            rounds: opts.vm.as_ref().and(opts.rounds),
            seconds: opts.vm.as_ref().and(opts.seconds),
        },
        &git_describe(root),
    )?;
    vm::print_summary(&r);
    Ok(vm::markdown(&r))
}

/// Runs the bench.
pub fn run(opts: Options) -> anyhow::Result<()> {
    let plan = Plan::of(opts.clone());
    let root = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .context("xtask has no parent dir")?
        .to_owned();
    catch_signals()?;
    crate::sh(crate::cargo().args(["build", "--release", "-p", "tracer"]))?;
    check_interrupted()?;
    let target = target_dir(&root);
    let tracer = target.join("release/tracer");
    if let Some(s) = &opts.soak {
        return soak::run(&tracer, s);
    }
    let default = !plan.quick && opts.vm.is_none();
    let baseline = baseline::chosen(opts.baseline.as_deref(), default)
        .map(|rev| baseline::build(&root, &target, rev))
        .transpose()?;
    check_interrupted()?;
    if let Some(kernel) = &opts.vm {
        let md = run_vm(&root, &target, &tracer, kernel, &opts)?;
        println!("\n{md}");
        let out = if opts.quick {
            target.join("bench/RESULTS-vm-quick.md")
        } else {
            root.join("bench/RESULTS.md")
        };
        if opts.quick {
            std::fs::write(&out, md)
                .with_context(|| format!("failed to write {}", out.display()))?;
        } else {
            vm::write_section(&out, &md)?;
        }
        println!("bench: written to {}", out.display());
        return Ok(());
    }
    println!("bench: lab up (prefix {PREFIX})");
    // The guard comes first: `lab up` may fail halfway and leave pieces for `lab down`.
    let _lab = LabGuard {
        tracer: tracer.clone(),
    };
    crate::sh(Command::new(&tracer).args(["lab", "up", "--prefix", PREFIX]))?;
    let mut netns = [0u64; 4];
    for (inode, pod) in netns.iter_mut().zip(["node", "dns0", "dns1", "client0"]) {
        *inode = netns_inode(&format!("{PREFIX}-{pod}"))?;
    }
    let bench = Bench {
        script: root.join("bench/bpftrace.bt"),
        queries: QueryFile::create(&target.join("bench"))?,
        tracer,
        baseline,
        netns,
    };
    let started = Instant::now();
    let (load, calibration) = bench.calibrate(&plan)?;
    println!(
        "bench: load {} ({} s per run, {} rounds)",
        load.args(),
        plan.seconds,
        plan.rounds
    );
    let stats = measure::BpfStats::enable()?;
    let progs_before = measure::progs()?;
    let runs = bench.rounds(&plan, load)?;
    let ours: Vec<u32> = runs
        .iter()
        .flat_map(|r: &Run| r.prog_ids.iter().copied())
        .collect();
    let foreign = foreign_runs(&progs_before, &measure::progs()?, &ours);
    drop(stats);
    let long = bench.long_run(&plan, load)?;
    let kernel_memory = memory::measure(&bench.tracer, PREFIX)?;
    println!(
        "bench: measured in {:.0} s",
        started.elapsed().as_secs_f64()
    );
    let results = Results {
        quick: plan.quick,
        seconds: plan.seconds,
        dnsperf_cmd: format!(
            "ip netns exec {} dnsperf -s {SERVICE} -d queries.txt -l {} {} -t 1",
            client_netns(),
            plan.seconds,
            load.args()
        ),
        bpftrace_cmd: "bpftrace -B none bench/bpftrace.bt <netns inodes of trb-node, trb-dns0, trb-dns1, trb-client0>"
            .to_owned(),
        commit: git_describe(&root),
        baseline: bench.baseline.as_ref().map(|b| b.rev.clone()),
        calibration,
        load,
        runs,
        long,
        foreign,
    };
    let mut md = report::markdown(&results, &report::Machine::read()) + &kernel_memory.markdown();
    drop(_lab);
    // The deep tier needs a kernel with kprobes and netfilter as modules: a VM (the quick run
    // skips it; `--vm KERNEL` runs it alone).
    if !plan.quick {
        let section = run_vm(&root, &target, &bench.tracer, VM_KERNEL, &opts)?;
        md = format!("{}\n\n{section}", md.trim_end());
    }
    println!("\n{md}");
    let out = if plan.quick {
        target.join("bench/RESULTS-quick.md")
    } else {
        root.join("bench/RESULTS.md")
    };
    std::fs::write(&out, md).with_context(|| format!("failed to write {}", out.display()))?;
    println!("bench: written to {}", out.display());
    Ok(())
}
