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

use std::{
    collections::BTreeMap,
    fmt::Write as _,
    net::{SocketAddrV4, TcpStream},
    path::{Path, PathBuf},
    process::Command,
    thread::sleep,
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};
use serde_json::{Value, json};

use super::{
    check_interrupted,
    dnsperf::{self, Load, QueryFile},
    measure::{self, ProgStats},
    report::Spread,
    traced,
};

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

// ---------------------------------------------------------------------------------------------
// Host side.

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

fn stats_of(v: &Value) -> BTreeMap<String, ProgStats> {
    v.as_object()
        .map(|m| {
            m.iter()
                .map(|(k, s)| {
                    let s = ProgStats {
                        run_time_ns: s["run_time_ns"].as_u64().unwrap_or(0),
                        run_cnt: s["run_cnt"].as_u64().unwrap_or(0),
                    };
                    (k.clone(), s)
                })
                .collect()
        })
        .unwrap_or_default()
}

fn sum_ns(stats: &BTreeMap<String, ProgStats>, keep: impl Fn(&str) -> bool) -> u64 {
    stats
        .iter()
        .filter(|(n, _)| keep(n))
        .map(|(_, s)| s.run_time_ns)
        .sum()
}

fn div(a: f64, b: f64) -> f64 {
    if b == 0.0 { 0.0 } else { a / b }
}

/// One traced or untraced run, as the figures need it.
struct RunView<'a> {
    round: u64,
    tier: &'a str,
    completed: f64,
    dns_busy_ns: f64,
    dns_bpf: BTreeMap<String, ProgStats>,
    packets: f64,
    conns: f64,
    tcp_busy_ns: f64,
    tcp_bpf: BTreeMap<String, ProgStats>,
}

fn runs(data: &Value) -> Vec<RunView<'_>> {
    data["runs"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|r| {
                    let refused = r["tcp"]["refused"].as_u64().unwrap_or(0) as f64;
                    let other = r["tcp"]["timed_out"].as_u64().unwrap_or(0) as f64
                        + r["tcp"]["connected"].as_u64().unwrap_or(0) as f64;
                    RunView {
                        round: r["round"].as_u64().unwrap_or(0),
                        tier: r["tier"].as_str().unwrap_or(""),
                        completed: r["dns"]["completed"].as_u64().unwrap_or(0) as f64,
                        dns_busy_ns: r["dns_busy_ns"].as_u64().unwrap_or(0) as f64,
                        dns_bpf: stats_of(&r["dns_bpf"]),
                        // A refused connection is a SYN (client -> pod, DNATed) and a RST back.
                        packets: 2.0 * refused + other,
                        conns: refused + other,
                        tcp_busy_ns: r["tcp_busy_ns"].as_u64().unwrap_or(0) as f64,
                        tcp_bpf: stats_of(&r["tcp_bpf"]),
                    }
                })
                .collect()
        })
        .unwrap_or_default()
}

/// The figures of one tier over its rounds.
#[derive(Debug, Clone, Default)]
pub struct TierFigures {
    /// BPF ns per DNS query (all the tracer's programs), per round.
    pub bpf_per_query: Vec<f64>,
    /// Its ratio to the tracepoint tier's in the same round.
    pub ratio_to_tracepoint: Vec<f64>,
    /// BPF ns per non-DNS packet, the deep programs only, per round.
    pub deep_per_packet: Vec<f64>,
    /// BPF ns per non-DNS packet, all the tracer's programs, per round.
    pub all_per_packet: Vec<f64>,
    /// Per program over all rounds: DNS (runs, ns), non-DNS (runs, ns).
    pub programs: BTreeMap<String, (ProgStats, ProgStats)>,
    /// Queries and non-DNS packets over all rounds.
    pub queries: f64,
    /// Non-DNS packets over all rounds.
    pub packets: f64,
}

/// Per tier: the figures; plus the untraced guest CPU per query and per connection (per round).
pub fn figures(data: &Value) -> (BTreeMap<String, TierFigures>, Vec<f64>, Vec<f64>) {
    let rs = runs(data);
    let mut out = BTreeMap::<String, TierFigures>::new();
    let tp_of = |round: u64| {
        rs.iter()
            .find(|r| r.tier == "tracepoint" && r.round == round)
            .map(|r| div(sum_ns(&r.dns_bpf, |_| true) as f64, r.completed))
    };
    for r in rs.iter().filter(|r| r.tier != "untraced") {
        let f = out.entry(r.tier.to_owned()).or_default();
        let per_query = div(sum_ns(&r.dns_bpf, |_| true) as f64, r.completed);
        f.bpf_per_query.push(per_query);
        if let Some(tp) = tp_of(r.round) {
            f.ratio_to_tracepoint.push(div(per_query, tp));
        }
        f.deep_per_packet
            .push(div(sum_ns(&r.tcp_bpf, is_deep_program) as f64, r.packets));
        f.all_per_packet
            .push(div(sum_ns(&r.tcp_bpf, |_| true) as f64, r.packets));
        f.queries += r.completed;
        f.packets += r.packets;
        for (name, s) in &r.dns_bpf {
            let e = f.programs.entry(name.clone()).or_default();
            e.0.run_cnt += s.run_cnt;
            e.0.run_time_ns += s.run_time_ns;
        }
        for (name, s) in &r.tcp_bpf {
            let e = f.programs.entry(name.clone()).or_default();
            e.1.run_cnt += s.run_cnt;
            e.1.run_time_ns += s.run_time_ns;
        }
    }
    let untraced = rs.iter().filter(|r| r.tier == "untraced");
    let cpu_q = untraced
        .clone()
        .map(|r| div(r.dns_busy_ns, r.completed))
        .collect();
    let cpu_c = untraced.map(|r| div(r.tcp_busy_ns, r.conns)).collect();
    (out, cpu_q, cpu_c)
}

fn spread(v: &[f64], digits: usize) -> String {
    let s = Spread::of(v);
    format!(
        "{:.d$} / {:.d$} / {:.d$}",
        s.min,
        s.median,
        s.max,
        d = digits
    )
}

/// Prints the VM part's headline figures.
pub fn print_summary(r: &VmResults) {
    let (tiers, cpu_q, _) = figures(&r.data);
    println!(
        "bench: VM {} ({}), untraced guest CPU per query {:.0} ns (median); BPF ns per query, min / median / max:",
        r.kernel_spec,
        r.data["kernel"].as_str().unwrap_or("?"),
        Spread::of(&cpu_q).median
    );
    for tier in TIERS.iter().skip(1) {
        if let Some(f) = tiers.get(*tier) {
            println!(
                "bench:   {tier:<10} {} ns per query, x{} of tracepoint; deep programs {} ns per non-DNS packet",
                spread(&f.bpf_per_query, 0),
                spread(&f.ratio_to_tracepoint, 2),
                spread(&f.deep_per_packet, 0)
            );
        } else if let Some(why) = r.data["skipped"][*tier].as_str() {
            println!("bench:   {tier:<10} not measured: {why}");
        }
    }
}

/// The early exit of the deep programs, counted from `bpftool prog dump xlated` in the 6.1 guest
/// (Debian 6.1.0-50, commit 84ffb65): (program as bpftool names it, its xlated instructions then,
/// the instructions a TCP packet the chain accepts runs, how). Counted by following the listing
/// from instruction 0 to `exit`, taking each branch the way that packet takes it (helpers succeed,
/// IPv4, protocol 6), a 16-byte `ld_imm64` as one instruction, a called subprogram's instructions
/// included. The bench compares the xlated size with the one it dumps now: a different size means
/// the program changed and the count is due again.
const EARLY_EXIT: &[(&str, u64, &str, &str)] = &[
    (
        "netfilter_nft_f",
        569,
        "9",
        "fexit: the verdict is not a drop, return (no helper call); an accepted DNS packet leaves the same way",
    ),
    (
        "nat_manip_fexit",
        354,
        "51",
        "fexit: 3 `bpf_probe_read_kernel` (skb->head, skb->network_header, the 20-byte IPv4 header), return at protocol != UDP",
    ),
    (
        "conntrack_confi",
        833,
        "55",
        "fexit: verdict NF_ACCEPT, then the same 3 reads and the protocol check",
    ),
    (
        "netfilter_nft_enter",
        35,
        "34",
        "kprobe: every packet: 2 per-CPU array lookups to push (skb, chain) on the stash",
    ),
    (
        "netfilter_nft_exit",
        585,
        "32",
        "kretprobe: 2 lookups to pop, the verdict is not a drop, return",
    ),
    (
        "nat_manip_enter",
        35,
        "34",
        "kprobe: every packet: 2 lookups to push",
    ),
    (
        "nat_manip_exit",
        376,
        "74",
        "kretprobe: 2 lookups to pop, 3 probe reads, return at protocol != UDP",
    ),
    (
        "conntrack_confirm_enter",
        42,
        "116",
        "kprobe: 2 lookups to push, of which 83 in a byte-loop `memset` (16 bytes) the compiler emitted for `Args { b: 0, c: 0 }`",
    ),
    (
        "conntrack_confirm_exit",
        849,
        "78",
        "kretprobe: 2 lookups to pop, verdict NF_ACCEPT, 3 probe reads, return at protocol != UDP",
    ),
];

/// The Markdown section "Deep tier in a VM".
pub fn markdown(r: &VmResults) -> String {
    let d = &r.data;
    let (tiers, cpu_q, cpu_c) = figures(d);
    let base = Spread::of(&cpu_q).median;
    let mut md = String::new();
    let _ = writeln!(md, "## Deep tier in a VM\n");
    let _ = writeln!(
        md,
        "Written by `cargo xtask bench` (`--vm {}` runs only this part). Debian's kernel {} under qemu TCG \
         (`tracer vm run --kernel {} --cpus {GUEST_CPUS}`), {} vCPU, on this machine's root; {} s of guest wall time. \
         TCG makes every absolute time 5-20x the host's, so only ratios inside this one guest count: \
         the ns figures below are guest ns, comparable with each other and not with the host sections.\n",
        r.kernel_spec,
        d["kernel"].as_str().unwrap_or("?"),
        r.kernel_spec,
        d["cpus"].as_u64().unwrap_or(0),
        r.wall_s.round(),
    );
    let _ = writeln!(md, "### Method\n");
    let _ = writeln!(
        md,
        "- tracer built from commit `{}`; BPF run statistics on in the guest (`BPF_ENABLE_STATS`, as `kernel.bpf_stats_enabled=1`)",
        d["commit"].as_str().unwrap_or("?")
    );
    let _ = writeln!(
        md,
        "- lab: `tracer lab up --prefix {PREFIX}` in the guest; tiers: untraced, then `tracer trace --lab --prefix {PREFIX} --hooks tracepoint|kprobe|fentry`, \
         {} interleaved rounds, order rotated each round",
        d["rounds"].as_u64().unwrap_or(0)
    );
    let _ = writeln!(
        md,
        "- DNS load per run: `ip netns exec {PREFIX}-client0 dnsperf -s {SERVICE} -l {} -c 1 -q 10 -Q {} -t 1` (a fixed rate TCG copes with, the same for every tier)",
        d["seconds"].as_u64().unwrap_or(0),
        d["qps"].as_u64().unwrap_or(0)
    );
    let _ = writeln!(
        md,
        "- then non-DNS traffic through the same hooks: TCP connections from {PREFIX}-client0 to {SERVICE}:{OTHER_PORT} (the Service's metrics port) at {} per second for {} s: \
         each is DNATed to a DNS pod, where nothing listens, so it is a SYN and a RST, both through the bridge's netfilter chains (br_netfilter), NAT and conntrack (a new entry per connection)",
        d["conn_rate"].as_u64().unwrap_or(0),
        d["seconds"].as_u64().unwrap_or(0)
    );
    let _ = writeln!(
        md,
        "- BPF ns per DNS query: the sum of every tracer program's run_time_ns over the DNS run / queries answered; per non-DNS packet: over the TCP run / (2 x refused connections + other attempts)\n"
    );
    if let Some(plans) = d["plans"].as_object() {
        for (tier, lines) in plans {
            let lines: Vec<&str> = lines
                .as_array()
                .map(|a| a.iter().filter_map(Value::as_str).collect())
                .unwrap_or_default();
            let _ = writeln!(
                md,
                "`--hooks {tier}` plan:\n\n```\n{}\n```\n",
                lines.join("\n")
            );
        }
    }
    if let Some(skipped) = d["skipped"].as_object() {
        for (tier, why) in skipped {
            let _ = writeln!(
                md,
                "- `--hooks {tier}` not measured: {}\n",
                why.as_str().unwrap_or("?")
            );
        }
    }
    let _ = writeln!(md, "### Results (min / median / max over rounds)\n");
    let _ = writeln!(
        md,
        "Untraced guest CPU per DNS query (the whole guest's busy time over the dnsperf run / queries answered): {} ns; per non-DNS connection: {} ns.\n",
        spread(&cpu_q, 0),
        spread(&cpu_c, 0)
    );
    let _ = writeln!(
        md,
        "| tier | BPF ns per DNS query | of untraced CPU per query (median) | ratio to tracepoint, same round | deep programs: ns per non-DNS packet | all programs: ns per non-DNS packet |"
    );
    let _ = writeln!(md, "|---|---|---:|---|---|---|");
    for tier in TIERS.iter().skip(1) {
        let Some(f) = tiers.get(*tier) else { continue };
        let _ = writeln!(
            md,
            "| {tier} | {} | {:.1} % | {} | {} | {} |",
            spread(&f.bpf_per_query, 0),
            100.0 * div(Spread::of(&f.bpf_per_query).median, base),
            if *tier == "tracepoint" {
                "1".to_owned()
            } else {
                spread(&f.ratio_to_tracepoint, 2)
            },
            spread(&f.deep_per_packet, 0),
            spread(&f.all_per_packet, 0)
        );
    }
    let _ = writeln!(md);
    for tier in DEEP {
        let Some(f) = tiers.get(tier) else { continue };
        let ratio = Spread::of(&f.ratio_to_tracepoint);
        let _ = writeln!(
            md,
            "Target, `--hooks {tier}`: BPF time per DNS query at most 2.5x the tracepoint tier's: median {:.2}x (rounds {:.2}-{:.2}x): **{}**.\n",
            ratio.median,
            ratio.min,
            ratio.max,
            if ratio.median <= 2.5 { "met" } else { "missed" }
        );
    }
    for tier in TIERS.iter().skip(1) {
        let Some(f) = tiers.get(*tier) else { continue };
        let _ = writeln!(
            md,
            "Per program, `--hooks {tier}` ({:.0} queries, {:.0} non-DNS packets over the rounds):\n",
            f.queries, f.packets
        );
        let _ = writeln!(
            md,
            "| program | DNS: runs per query | ns per run | ns per query | non-DNS: runs per packet | ns per run | ns per packet |"
        );
        let _ = writeln!(md, "|---|---:|---:|---:|---:|---:|---:|");
        for (name, (q, p)) in &f.programs {
            let _ = writeln!(
                md,
                "| {name} | {:.2} | {:.0} | {:.0} | {:.2} | {:.0} | {:.0} |",
                div(q.run_cnt as f64, f.queries),
                div(q.run_time_ns as f64, q.run_cnt as f64),
                div(q.run_time_ns as f64, f.queries),
                div(p.run_cnt as f64, f.packets),
                div(p.run_time_ns as f64, p.run_cnt as f64),
                div(p.run_time_ns as f64, f.packets),
            );
        }
        let _ = writeln!(md);
    }
    let _ = writeln!(md, "### Every run\n");
    let _ = writeln!(
        md,
        "| round | tier | queries answered | lost | qps | BPF ns per query | connections refused / other | BPF ns per non-DNS packet (deep / all) |"
    );
    let _ = writeln!(md, "|---:|---|---:|---:|---:|---:|---|---|");
    if let Some(all) = d["runs"].as_array() {
        for (r, v) in all.iter().zip(runs(d)) {
            let _ = writeln!(
                md,
                "| {} | {} | {} | {} | {:.0} | {:.0} | {} / {} | {:.0} / {:.0} |",
                v.round,
                v.tier,
                v.completed,
                r["dns"]["lost"].as_u64().unwrap_or(0),
                r["dns"]["qps"].as_f64().unwrap_or(0.0),
                div(sum_ns(&v.dns_bpf, |_| true) as f64, v.completed),
                r["tcp"]["refused"].as_u64().unwrap_or(0),
                v.conns - r["tcp"]["refused"].as_u64().unwrap_or(0) as f64,
                div(sum_ns(&v.tcp_bpf, is_deep_program) as f64, v.packets),
                div(sum_ns(&v.tcp_bpf, |_| true) as f64, v.packets),
            );
        }
    }
    let _ = writeln!(md);
    let _ = writeln!(md, "### The early exit of a non-DNS packet\n");
    let xlated: BTreeMap<String, u64> = d["xlated"]
        .as_object()
        .map(|m| {
            m.iter()
                .map(|(k, v)| (k.clone(), v.as_u64().unwrap_or(0)))
                .collect()
        })
        .unwrap_or_default();
    let _ = writeln!(
        md,
        "The guest dumped every deep program (`bpftool prog dump xlated id N`) to `{}` (the bench's target dir).\n",
        r.xlated_dir.display()
    );
    let _ = writeln!(
        md,
        "| program | xlated instructions now | counted on | instructions a non-DNS packet runs | how |"
    );
    let _ = writeln!(md, "|---|---:|---:|---:|---|");
    for (name, counted_len, runs, how) in EARLY_EXIT {
        let now = xlated.get(*name).copied();
        let _ = writeln!(
            md,
            "| {name} | {} | {counted_len} | {runs}{} | {how} |",
            now.map_or("not loaded".to_owned(), |n| n.to_string()),
            match now {
                Some(n) if n != *counted_len =>
                    " (the program changed since it was counted: recount)",
                _ => "",
            }
        );
    }
    for (name, n) in &xlated {
        if !EARLY_EXIT.iter().any(|(e, ..)| e == name) {
            let _ = writeln!(md, "| {name} | {n} | - | not counted | |");
        }
    }
    let _ = writeln!(md);
    let _ = writeln!(
        md,
        "Noise: other helpers run VMs and builds on this 2-core machine at the same time, and the guest's vCPU is a host thread: \
         a host preemption inside a BPF program inflates its run_time_ns. The spread over rounds above is that noise; \
         compare tiers within a round (the ratio column), not across runs of the bench."
    );
    md
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

// ---------------------------------------------------------------------------------------------
// Guest side.

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
        let mut cmd = Command::new(&a.tracer);
        cmd.args(["trace", "--lab", "--prefix", PREFIX, "--hooks", tier]);
        Some(traced::Attached::start(
            "tracer",
            cmd,
            "reporting failed queries",
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
                let o = Command::new("bpftool")
                    .args(["prog", "dump", "xlated", "id", &id.to_string()])
                    .output()
                    .context("failed to run bpftool prog dump")?;
                let text = String::from_utf8_lossy(&o.stdout);
                let insns = text
                    .lines()
                    .filter(|l| {
                        l.trim_start()
                            .split_once(':')
                            .is_some_and(|(n, _)| n.parse::<u32>().is_ok())
                    })
                    .count() as u64;
                std::fs::create_dir_all(out.join("xlated"))?;
                std::fs::write(out.join(format!("xlated/{name}.txt")), text.as_bytes())?;
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
    super::catch_signals()?;
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
