//! The deep tier (kprobe, fentry: netfilter verdicts, NAT, conntrack confirm) measured inside a
//! Debian kernel under qemu, which this machine's kernel cannot give (netfilter built in, no
//! kprobes). TCG inflates every absolute time, so only ratios taken inside one guest are reported:
//! each tier's BPF time per DNS query over the tracepoint tier's, BPF time over the guest's untraced
//! CPU time per query, and what the deep programs cost a packet that is not DNS.
//!
//! The host side boots the guest with `tracer vm run` and runs this same xtask binary in it
//! (`xtask bench-vm-guest`), which writes `deep.json` to `$TRACER_VM_OUT`; the host reads it
//! back. Both binaries are copied under the target dir first, so that a rebuild during the run
//! does not change what the guest executes.
//!
//! # Layout
//! - `guest`: the guest side (`xtask bench-vm-guest`): lab up, the tiers' rounds, `deep.json`.
//! - `figures`: the guest's JSON read back into per-tier figures.
//! - `markdown`: the summary printed and the section written to RESULTS.md.

mod figures;
mod guest;
mod markdown;

pub use guest::{GuestArgs, guest};
pub use markdown::{markdown, print_summary};

use std::{
    path::{Path, PathBuf},
    process::Command,
    time::Instant,
};

use anyhow::{Context as _, bail};
use serde_json::Value;

use super::check_interrupted;

/// The guest's lab.
const PREFIX: &str = "tvb";

/// The lab's DNS Service IP.
const SERVICE: &str = "10.96.0.10";

/// A Service port that is not DNS (CoreDNS's metrics, tcp 9153): DNATed to a DNS pod, where
/// nothing listens, so each connection is a SYN and a RST through NAT and conntrack.
const OTHER_PORT: u16 = 9153;

/// The result file in `$TRACER_VM_OUT`.
const RESULT: &str = "deep.json";

/// vCPUs of the guest: one, so that a round is not split across vCPUs that qemu (TCG) runs on
/// host threads competing with each other, and 6.12 boots reliably with one (KERNEL.md).
const GUEST_CPUS: u32 = 1;

/// How the VM part runs.
#[derive(Debug, Clone)]
pub struct VmOptions {
    /// `tracer vm run --kernel`: 6.1, 5.10, 6.12 or a package name.
    pub kernel: String,
    /// One round of short runs.
    pub quick: bool,
    /// Interleaved rounds (default 4, quick 1).
    pub rounds: Option<u32>,
    /// Seconds of each load per run (default 5, quick 3).
    pub seconds: Option<u32>,
}

/// The settings the guest gets, after defaults.
#[derive(Debug, Clone, Copy)]
pub struct GuestPlan {
    /// Interleaved rounds of every tier.
    pub rounds: u32,
    /// Seconds of DNS load, then as many of other traffic, per run.
    pub seconds: u32,
    /// dnsperf's fixed rate (`-Q`), queries per second.
    pub qps: u32,
    /// Connections per second to the non-DNS Service port.
    pub conn_rate: u32,
}

impl GuestPlan {
    fn of(o: &VmOptions) -> Self {
        Self {
            rounds: o.rounds.unwrap_or(if o.quick { 1 } else { 4 }),
            seconds: o.seconds.unwrap_or(if o.quick { 3 } else { 5 }),
            // Under TCG one vCPU answers about 1500 queries/s untraced: well under that, so that
            // every tier gets the same load whatever it costs.
            qps: 500,
            conn_rate: 200,
        }
    }
}

/// A tier in the guest.
const TIERS: [&str; 4] = ["untraced", "tracepoint", "kprobe", "fentry"];

/// The deep tiers, compared with the tracepoint tier.
const DEEP: [&str; 2] = ["kprobe", "fentry"];

/// The deep stages' programs (netfilter, NAT, conntrack), by name.
fn is_deep_program(name: &str) -> bool {
    ["netfilter_", "nat_", "conntrack_"]
        .iter()
        .any(|p| name.starts_with(p))
}

/// What the guest measured, as read back.
#[derive(Debug, Clone)]
pub struct VmResults {
    /// `tracer vm run --kernel`.
    pub kernel_spec: String,
    /// The guest's JSON.
    pub data: Value,
    /// The guest's wall time, seconds.
    pub wall_s: f64,
    /// Where the xlated dumps were left.
    pub xlated_dir: PathBuf,
}

/// Boots the guest, runs the measurement in it, reads the result back.
pub fn run(
    target: &Path,
    tracer: &Path,
    opts: &VmOptions,
    commit: &str,
) -> anyhow::Result<VmResults> {
    let plan = GuestPlan::of(opts);
    let dir = target.join("bench/vm");
    std::fs::create_dir_all(&dir).with_context(|| format!("failed to create {}", dir.display()))?;
    // Fixed copies: the guest reads binaries through 9p while others may rebuild target/.
    let guest_tracer = dir.join("tracer");
    let guest_xtask = dir.join("xtask");
    let me = std::env::current_exe().context("failed to find the xtask binary")?;
    for (from, to) in [(tracer, &guest_tracer), (me.as_path(), &guest_xtask)] {
        let tmp = to.with_extension("new");
        std::fs::copy(from, &tmp)
            .with_context(|| format!("failed to copy {} to {}", from.display(), tmp.display()))?;
        std::fs::rename(&tmp, to).with_context(|| format!("failed to replace {}", to.display()))?;
    }
    let out = dir.join(format!("out-{}", opts.kernel.replace('/', "_")));
    let _ = std::fs::remove_dir_all(&out);
    // Boot, lab up, 4 tiers x rounds x (attach + two loads + detach): generous for TCG.
    let timeout = 300 + plan.rounds * 4 * (60 + 2 * plan.seconds);
    let mut cmd = Command::new(tracer);
    cmd.args(["vm", "run", "--kernel", &opts.kernel])
        .args(["--cpus", &GUEST_CPUS.to_string(), "--memory", "2048"])
        .args(["--timeout", &timeout.to_string()])
        .args(["--env", &format!("TRACER_BENCH_COMMIT={commit}")])
        .arg("--out")
        .arg(&out)
        .arg("--")
        .arg(&guest_xtask)
        .args(["bench-vm-guest", "--tracer"])
        .arg(&guest_tracer)
        .args(["--rounds", &plan.rounds.to_string()])
        .args(["--seconds", &plan.seconds.to_string()])
        .args(["--qps", &plan.qps.to_string()])
        .args(["--conn-rate", &plan.conn_rate.to_string()]);
    println!(
        "bench: VM {}: {} vCPU, {} rounds of {} s DNS + {} s other traffic per tier (up to {} s)",
        opts.kernel, GUEST_CPUS, plan.rounds, plan.seconds, plan.seconds, timeout
    );
    let started = Instant::now();
    let status = cmd
        .status()
        .with_context(|| format!("failed to start {cmd:?}"))?;
    check_interrupted()?;
    if !status.success() {
        bail!("the VM part on kernel {} failed: {status}", opts.kernel);
    }
    let path = out.join(RESULT);
    let text = std::fs::read_to_string(&path)
        .with_context(|| format!("the guest wrote no {}", path.display()))?;
    let data: Value =
        serde_json::from_str(&text).with_context(|| format!("bad JSON in {}", path.display()))?;
    Ok(VmResults {
        kernel_spec: opts.kernel.clone(),
        data,
        wall_s: started.elapsed().as_secs_f64(),
        xlated_dir: out.join("xlated"),
    })
}

/// Writes or replaces the VM section at the end of `path` (RESULTS.md), keeping what is above.
pub fn write_section(path: &Path, section: &str) -> anyhow::Result<()> {
    let old = std::fs::read_to_string(path).unwrap_or_default();
    let keep = match old.find("\n## Deep tier in a VM") {
        Some(at) => &old[..at],
        None => old.trim_end(),
    };
    let text = if keep.is_empty() {
        section.to_owned()
    } else {
        format!("{keep}\n\n{section}")
    };
    std::fs::write(path, text).with_context(|| format!("failed to write {}", path.display()))
}
