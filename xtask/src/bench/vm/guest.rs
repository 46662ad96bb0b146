//! The guest side, `xtask bench-vm-guest`: the guest's lab, each tier's rounds of DNS then
//! non-DNS load with BPF counters around each, the deep programs dumped, `deep.json` written.

use std::{
    collections::BTreeMap,
    net::{SocketAddrV4, TcpStream},
    path::{Path, PathBuf},
    process::Command,
    thread::sleep,
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};
use serde_json::{Value, json};

use super::{DEEP, GuestPlan, OTHER_PORT, PREFIX, RESULT, SERVICE, TIERS, is_deep_program};
use crate::bench::{
    check_interrupted,
    dnsperf::{self, Load, QueryFile},
    measure::{self, ProgStats},
    traced,
};

/// What `xtask bench-vm-guest` gets.
#[derive(Debug, Clone)]
pub struct GuestArgs {
    /// The tracer binary (a copy under the host's target dir).
    pub tracer: PathBuf,
    /// The plan.
    pub plan: GuestPlan,
}

/// Tears the guest's lab down however the guest part ends.
struct LabGuard<'a>(&'a Path);

impl Drop for LabGuard<'_> {
    fn drop(&mut self) {
        let _ = Command::new(self.0)
            .args(["lab", "down", "--prefix", PREFIX])
            .status();
    }
}

/// Outcome of the non-DNS load.
#[derive(Debug, Default, Clone, Copy)]
struct TcpOutcome {
    refused: u64,
    connected: u64,
    timed_out: u64,
}

/// TCP connections from the client pod to `to`, `rate` per second for `secs`, from a thread that
/// entered the pod's network namespace.
fn tcp_load(to: SocketAddrV4, rate: u32, secs: u32) -> anyhow::Result<TcpOutcome> {
    let ns = format!("/run/netns/{PREFIX}-client0");
    let file = std::fs::File::open(&ns).with_context(|| format!("failed to open {ns}"))?;
    std::thread::spawn(move || -> anyhow::Result<TcpOutcome> {
        nix::sched::setns(&file, nix::sched::CloneFlags::CLONE_NEWNET)
            .context("failed to enter the client pod's network namespace")?;
        let mut o = TcpOutcome::default();
        let start = Instant::now();
        let every = Duration::from_secs_f64(1.0 / f64::from(rate.max(1)));
        let total = rate * secs;
        for i in 0..total {
            let due = start + every * i;
            if let Some(wait) = due.checked_duration_since(Instant::now()) {
                sleep(wait);
            }
            match TcpStream::connect_timeout(&to.into(), Duration::from_millis(500)) {
                Ok(_) => o.connected += 1,
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => o.refused += 1,
                Err(_) => o.timed_out += 1,
            }
        }
        Ok(o)
    })
    .join()
    .map_err(|_| anyhow::anyhow!("the TCP load thread panicked"))?
}

fn stats_json(s: &BTreeMap<String, ProgStats>) -> Value {
    s.iter()
        .map(|(k, v)| {
            (
                k.clone(),
                json!({"run_time_ns": v.run_time_ns, "run_cnt": v.run_cnt}),
            )
        })
        .collect::<serde_json::Map<_, _>>()
        .into()
}

/// bpftool's stdout with `args`, failing when it fails.
fn bpftool(args: &[&str]) -> anyhow::Result<Vec<u8>> {
    let o = Command::new("bpftool")
        .args(args)
        .output()
        .context("failed to run bpftool")?;
    if !o.status.success() {
        bail!(
            "bpftool {} failed ({}): {}",
            args.join(" "),
            o.status,
            String::from_utf8_lossy(&o.stderr).trim()
        );
    }
    Ok(o.stdout)
}

/// The instructions of program `id` as the kernel runs it: `bpftool -j prog dump xlated` is an
/// array with an object per instruction (a 16-byte `ld_imm64` is one), carrying `disasm`, and
/// `src` and `proto` when the program has line and function info.
fn xlated_insns(id: u32) -> anyhow::Result<u64> {
    let args = ["-j", "prog", "dump", "xlated", "id", &id.to_string()];
    let insns: Vec<Value> = serde_json::from_slice(&bpftool(&args)?)
        .with_context(|| format!("bpftool {} printed no JSON array", args.join(" ")))?;
    Ok(insns.iter().filter(|i| i.get("disasm").is_some()).count() as u64)
}

/// One run of one tier: DNS load, then non-DNS load, BPF counters around each.
fn guest_run(
    a: &GuestArgs,
    queries: &QueryFile,
    round: u32,
    tier: &str,
    out: &Path,
    dumped: &mut BTreeMap<String, u64>,
) -> anyhow::Result<(Value, Option<Vec<String>>)> {
    let p = a.plan;
    let attached = if tier == "untraced" {
        None
    } else {
        Some(traced::tracer_with(
            &a.tracer,
            PREFIX,
            &["--hooks", tier],
            "tracer",
            Duration::from_secs(180),
        )?)
    };
    let ids = match &attached {
        Some(t) => measure::prog_ids(t.pid)?,
        None => Vec::new(),
    };
    let snap = || -> anyhow::Result<BTreeMap<String, ProgStats>> {
        if ids.is_empty() {
            Ok(BTreeMap::new())
        } else {
            measure::prog_stats(&ids)
        }
    };
    let mut dnsperf = dnsperf::command(
        &format!("{PREFIX}-client0"),
        SERVICE,
        queries,
        Load {
            clients: 1,
            outstanding: 10,
        },
        p.seconds,
    );
    dnsperf.args(["-Q", &p.qps.to_string()]);
    let s0 = snap()?;
    let b0 = measure::machine_busy_ns()?;
    let dns = dnsperf::run(dnsperf, || {})?;
    let b1 = measure::machine_busy_ns()?;
    let s1 = snap()?;
    let to = SocketAddrV4::new(SERVICE.parse()?, OTHER_PORT);
    let tcp = tcp_load(to, p.conn_rate, p.seconds)?;
    let b2 = measure::machine_busy_ns()?;
    let s2 = snap()?;
    // The deep programs as the kernel runs them, once per tier.
    if DEEP.contains(&tier) {
        for (id, (name, _)) in measure::progs()? {
            if ids.contains(&id) && is_deep_program(&name) && !dumped.contains_key(&name) {
                let insns = xlated_insns(id)?;
                // The text form for people (the early-exit counts were made on it).
                let text = bpftool(&["prog", "dump", "xlated", "id", &id.to_string()])?;
                std::fs::create_dir_all(out.join("xlated"))?;
                std::fs::write(out.join(format!("xlated/{name}.txt")), text)?;
                dumped.insert(name, insns);
            }
        }
    }
    let (plan, lost, attach_ms) = match attached {
        Some(t) => {
            let (_, cap) = t.stop("tracer")?;
            let rep = traced::TracerReport::parse(&cap)?;
            (Some(rep.plan), rep.lost_events, rep.attach_ms)
        }
        None => (None, 0, 0.0),
    };
    println!(
        "bench-vm: round {round} {tier:<10} {:.0} qps, {} lost; {} connections refused, {} other",
        dns.qps,
        dns.lost,
        tcp.refused,
        tcp.connected + tcp.timed_out
    );
    let v = json!({
        "round": round,
        "tier": tier,
        "dns": {"sent": dns.sent, "completed": dns.completed, "lost": dns.lost, "qps": dns.qps, "latency_us": dns.latency_us},
        "dns_busy_ns": b1.saturating_sub(b0),
        "dns_bpf": stats_json(&measure::prog_delta(&s0, &s1)),
        "tcp": {"refused": tcp.refused, "connected": tcp.connected, "timed_out": tcp.timed_out},
        "tcp_busy_ns": b2.saturating_sub(b1),
        "tcp_bpf": stats_json(&measure::prog_delta(&s1, &s2)),
        "lost_events": lost,
        "attach_ms": attach_ms,
    });
    Ok((v, plan))
}

/// Runs inside the guest: lab up, the rounds, `deep.json` in `$TRACER_VM_OUT`.
pub fn guest(a: GuestArgs) -> anyhow::Result<()> {
    let out = PathBuf::from(
        std::env::var_os("TRACER_VM_OUT").context("TRACER_VM_OUT is not set: run in the VM")?,
    );
    crate::bench::catch_signals()?;
    let _stats = measure::BpfStats::enable()?;
    let _lab = LabGuard(&a.tracer);
    let up = Command::new(&a.tracer)
        .args(["lab", "up", "--prefix", PREFIX])
        .output()
        .context("failed to run tracer lab up")?;
    if !up.status.success() {
        bail!(
            "tracer lab up failed: {}{}",
            String::from_utf8_lossy(&up.stdout),
            String::from_utf8_lossy(&up.stderr)
        );
    }
    let hooks = Command::new(&a.tracer)
        .arg("hooks")
        .output()
        .context("failed to run tracer hooks")?;
    let hooks = String::from_utf8_lossy(&hooks.stdout).into_owned();
    print!("{hooks}");
    let queries = QueryFile::create(Path::new("/tmp/bench-vm"))?;
    let mut runs = Vec::new();
    let mut plans = serde_json::Map::new();
    let mut skipped = serde_json::Map::new();
    let mut dumped = BTreeMap::new();
    for round in 1..=a.plan.rounds {
        for i in 0..TIERS.len() {
            let tier = TIERS[(i + round as usize - 1) % TIERS.len()];
            if skipped.contains_key(tier) {
                continue;
            }
            check_interrupted()?;
            match guest_run(&a, &queries, round, tier, &out, &mut dumped) {
                Ok((v, plan)) => {
                    runs.push(v);
                    if let Some(plan) = plan {
                        plans.entry(tier).or_insert_with(|| json!(plan));
                    }
                }
                // A deep tier this kernel (or this build) cannot load is reported, not fatal.
                Err(e) if DEEP.contains(&tier) => {
                    println!("bench-vm: --hooks {tier} not measured: {e:#}");
                    skipped.insert(tier.to_owned(), json!(format!("{e:#}")));
                }
                Err(e) => return Err(e),
            }
        }
    }
    let uname = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let result = json!({
        "kernel": uname.trim(),
        "cpus": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
        "commit": std::env::var("TRACER_BENCH_COMMIT").unwrap_or_default(),
        "rounds": a.plan.rounds,
        "seconds": a.plan.seconds,
        "qps": a.plan.qps,
        "conn_rate": a.plan.conn_rate,
        "hooks": hooks,
        "plans": plans,
        "skipped": skipped,
        "xlated": dumped,
        "runs": runs,
    });
    let path = out.join(RESULT);
    std::fs::write(&path, serde_json::to_string_pretty(&result)?)
        .with_context(|| format!("failed to write {}", path.display()))?;
    Ok(())
}
