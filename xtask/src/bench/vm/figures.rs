//! The guest's JSON read back into figures: BPF time per DNS query and per non-DNS packet, per
//! tier and round, and the untraced guest CPU they are compared with.

use std::collections::BTreeMap;

use serde_json::Value;

use super::is_deep_program;
use crate::bench::{measure::ProgStats, report::Spread};

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

/// The run time of the programs `keep` keeps, ns.
pub fn sum_ns(stats: &BTreeMap<String, ProgStats>, keep: impl Fn(&str) -> bool) -> u64 {
    stats
        .iter()
        .filter(|(n, _)| keep(n))
        .map(|(_, s)| s.run_time_ns)
        .sum()
}

/// `a / b`, 0 when `b` is 0.
pub fn div(a: f64, b: f64) -> f64 {
    if b == 0.0 { 0.0 } else { a / b }
}

/// One traced or untraced run, as the figures need it.
pub struct RunView<'a> {
    /// Round number, from 1.
    pub round: u64,
    /// `untraced`, or the `--hooks` tier.
    pub tier: &'a str,
    /// DNS queries answered.
    pub completed: f64,
    /// The guest's busy CPU time over the DNS load.
    pub dns_busy_ns: f64,
    /// BPF counters over the DNS load.
    pub dns_bpf: BTreeMap<String, ProgStats>,
    /// Non-DNS packets (a refused connection is two).
    pub packets: f64,
    /// Non-DNS connection attempts.
    pub conns: f64,
    /// The guest's busy CPU time over the non-DNS load.
    pub tcp_busy_ns: f64,
    /// BPF counters over the non-DNS load.
    pub tcp_bpf: BTreeMap<String, ProgStats>,
}

/// Every run in the guest's JSON.
pub fn runs(data: &Value) -> Vec<RunView<'_>> {
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

/// `min / median / max` of `v` with `digits` decimals.
pub fn spread(v: &[f64], digits: usize) -> String {
    let s = Spread::of(v);
    format!(
        "{:.d$} / {:.d$} / {:.d$}",
        s.min,
        s.median,
        s.max,
        d = digits
    )
}
