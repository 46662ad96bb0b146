//! The VM part's summary line and its RESULTS.md section, "Deep tier in a VM".

use std::{collections::BTreeMap, fmt::Write as _};

use serde_json::Value;

use super::{
    DEEP, GUEST_CPUS, OTHER_PORT, PREFIX, SERVICE, TIERS, VmResults,
    figures::{TierFigures, div, figures, runs, spread, sum_ns},
    is_deep_program,
};
use crate::bench::report::Spread;

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
    let mut md = String::new();
    method(&mut md, r);
    plans(&mut md, d);
    results(&mut md, &tiers, &cpu_q, &cpu_c);
    per_program(&mut md, &tiers);
    every_run(&mut md, d);
    early_exit(&mut md, r);
    let _ = writeln!(
        md,
        "Noise: other helpers run VMs and builds on this 2-core machine at the same time, and the guest's vCPU is a host thread: \
         a host preemption inside a BPF program inflates its run_time_ns. The spread over rounds above is that noise; \
         compare tiers within a round (the ratio column), not across runs of the bench."
    );
    md
}

/// The heading, what ran and how the figures are taken.
fn method(md: &mut String, r: &VmResults) {
    let d = &r.data;
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
        "- lab: `tracer lab up --prefix {PREFIX}` in the guest; tiers: untraced, then `tracer trace --lab --prefix {PREFIX} --output json --hooks tracepoint|kprobe|fentry`, \
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
}

/// Each tier's hook plan, and the tiers not measured.
fn plans(md: &mut String, d: &Value) {
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
}

/// The tiers' figures and the target on the deep tiers.
fn results(md: &mut String, tiers: &BTreeMap<String, TierFigures>, cpu_q: &[f64], cpu_c: &[f64]) {
    let base = Spread::of(cpu_q).median;
    let _ = writeln!(md, "### Results (min / median / max over rounds)\n");
    let _ = writeln!(
        md,
        "Untraced guest CPU per DNS query (the whole guest's busy time over the dnsperf run / queries answered): {} ns; per non-DNS connection: {} ns.\n",
        spread(cpu_q, 0),
        spread(cpu_c, 0)
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
}

/// Per program and tier: runs and time per DNS query and per non-DNS packet.
fn per_program(md: &mut String, tiers: &BTreeMap<String, TierFigures>) {
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
}

/// "Every run".
fn every_run(md: &mut String, d: &Value) {
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
}

/// "The early exit of a non-DNS packet": the counted instructions next to the xlated sizes now.
fn early_exit(md: &mut String, r: &VmResults) {
    let d = &r.data;
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
}
