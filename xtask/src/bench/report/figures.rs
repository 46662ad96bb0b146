//! Figures over the rounds: spreads, ratios to untraced, costs per query, and the ones the
//! sections share (`Headline`).

use std::collections::BTreeMap;

use crate::bench::{Mode, Results, Run, measure::ProgStats};

/// When the untraced rounds alone spread more than this (percent of their median), throughput
/// cannot show a 3 % difference (identical rounds vary about ±5 % on a quiet 2-core machine).
pub const NOISY_PERCENT: f64 = 10.0;

/// Minimum, median and maximum.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Spread {
    /// Smallest.
    pub min: f64,
    /// Middle (mean of the two middle values for an even count).
    pub median: f64,
    /// Largest.
    pub max: f64,
}

impl Spread {
    /// Over `v`; all zero when empty.
    pub fn of(v: &[f64]) -> Self {
        if v.is_empty() {
            return Self::default();
        }
        let mut s = v.to_vec();
        s.sort_by(f64::total_cmp);
        let n = s.len();
        let median = if n % 2 == 1 {
            s[n / 2]
        } else {
            (s[n / 2 - 1] + s[n / 2]) / 2.0
        };
        Self {
            min: s[0],
            median,
            max: s[n - 1],
        }
    }

    /// `min / median / max` with `digits` decimals.
    pub fn show(&self, digits: usize) -> String {
        format!(
            "{:.d$} / {:.d$} / {:.d$}",
            self.min,
            self.median,
            self.max,
            d = digits
        )
    }
}

/// The runs of `mode`.
pub fn runs(r: &Results, mode: Mode) -> impl Iterator<Item = &Run> {
    r.runs.iter().filter(move |x| x.mode == mode)
}

/// Throughput of `mode` over untraced, per round.
pub fn ratios(r: &Results, mode: Mode) -> Vec<f64> {
    runs(r, mode)
        .filter_map(|t| {
            let u = runs(r, Mode::Untraced).find(|u| u.round == t.round)?;
            (u.dns.qps > 0.0).then(|| t.dns.qps / u.dns.qps)
        })
        .collect()
}

/// `ns` per query, 0 without queries.
pub fn per_query(ns: u64, queries: u64) -> f64 {
    if queries == 0 {
        0.0
    } else {
        ns as f64 / queries as f64
    }
}

/// Machine busy CPU nanoseconds per answered query, per run of `mode`.
pub fn machine_ns_per_query(r: &Results, mode: Mode) -> Vec<f64> {
    runs(r, mode)
        .map(|x| per_query(x.busy_ns, x.dns.completed))
        .collect()
}

/// The lab's CPU nanoseconds (dnsperf, dnsmasq, ksoftirqd) per answered query, per run of `mode`.
pub fn lab_ns_per_query(r: &Results, mode: Mode) -> Vec<f64> {
    runs(r, mode)
        .map(|x| per_query(x.lab_ns, x.dns.completed))
        .collect()
}

/// The lab's CPU nanoseconds per query of `mode` minus the same round's untraced run's.
pub fn extra_lab_ns(r: &Results, mode: Mode) -> Vec<f64> {
    runs(r, mode)
        .filter_map(|t| {
            let u = runs(r, Mode::Untraced).find(|u| u.round == t.round)?;
            Some(per_query(t.lab_ns, t.dns.completed) - per_query(u.lab_ns, u.dns.completed))
        })
        .collect()
}

/// Per-program counters summed over a mode's runs, and the queries answered in them.
pub fn hooks(r: &Results, mode: Mode) -> (BTreeMap<String, ProgStats>, u64) {
    let mut sum = BTreeMap::<String, ProgStats>::new();
    let mut queries = 0;
    for x in runs(r, mode) {
        queries += x.dns.completed;
        for (name, s) in &x.bpf {
            let e = sum.entry(name.clone()).or_default();
            e.run_cnt += s.run_cnt;
            e.run_time_ns += s.run_time_ns;
        }
    }
    (sum, queries)
}

/// Per-query costs of a traced mode.
#[derive(Debug, Clone, Copy, Default)]
pub struct Cost {
    /// BPF run time per answered query, ns.
    pub bpf_ns: Spread,
    /// The tracing process's CPU time per answered query, ns.
    pub user_ns: Spread,
    /// The two together.
    pub total_ns: Spread,
}

/// BPF run time per answered query of one run.
fn bpf_per_query(x: &Run) -> f64 {
    per_query(x.bpf.values().map(|s| s.run_time_ns).sum(), x.dns.completed)
}

/// The default-mode tracer's BPF time per query over the baseline's in the same round.
fn baseline_ratios(r: &Results) -> Vec<f64> {
    runs(r, Mode::Tracer)
        .filter_map(|t| {
            let b = runs(r, Mode::Baseline).find(|b| b.round == t.round)?;
            let base = bpf_per_query(b);
            (base > 0.0).then(|| bpf_per_query(t) / base)
        })
        .collect()
}

fn cost(r: &Results, mode: Mode) -> Cost {
    let bpf: Vec<f64> = runs(r, mode).map(bpf_per_query).collect();
    let user: Vec<f64> = runs(r, mode)
        .map(|x| per_query(x.proc_cpu_ns.unwrap_or(0), x.dns.completed))
        .collect();
    let total: Vec<f64> = bpf.iter().zip(&user).map(|(b, u)| b + u).collect();
    Cost {
        bpf_ns: Spread::of(&bpf),
        user_ns: Spread::of(&user),
        total_ns: Spread::of(&total),
    }
}

/// Bytes in MB.
pub fn mb(bytes: f64) -> f64 {
    bytes / 1e6
}

/// The figures more than one section shows.
#[derive(Debug, Clone, Copy)]
pub struct Headline {
    /// The lab's CPU per answered query, untraced: the base of every percentage.
    pub untraced_cpu: Spread,
    /// The whole machine's busy time per answered query, untraced.
    pub untraced_machine: Spread,
    /// Per-query cost of the default-mode tracer.
    pub tracer: Cost,
    /// Of `tracer --all`.
    pub all: Cost,
    /// Of `tracer --rules`.
    pub rules: Cost,
    /// What `--rules` adds to the lab's CPU per query over the same round's untraced run:
    /// netfilter's trace messages are kernel time in the packets' path, not BPF.
    pub rules_lab_ns: Spread,
    /// Of the bpftrace anchor.
    pub anchor: Cost,
    /// Of the baseline commit's tracer (zero without `--baseline`).
    pub baseline: Cost,
    /// The default-mode tracer's BPF time per query over the baseline's, per round.
    pub vs_baseline: Spread,
    /// Throughput ratio to untraced of the default-mode tracer.
    pub tr_ratio: Spread,
    /// Of `tracer --all`.
    pub all_ratio: Spread,
    /// Of `tracer --rules`.
    pub rules_ratio: Spread,
    /// `tracer --rules`' attach and detach times (its table and rules included).
    pub rules_attach_ms: Spread,
    /// SIGINT to exit of `tracer --rules`.
    pub rules_detach_ms: Spread,
    /// Of the bpftrace anchor.
    pub bt_ratio: Spread,
    /// How far apart the untraced rounds' qps are, percent of their median.
    pub untraced_spread: f64,
    /// Attach time as the tracer reports it, both tracer modes.
    pub attach_ms: Spread,
    /// Spawn to ready, both tracer modes.
    pub ready_ms: Spread,
    /// SIGINT to exit, both tracer modes.
    pub detach_ms: Spread,
}

impl Headline {
    /// From every run.
    pub fn of(r: &Results) -> Self {
        let untraced_qps = Spread::of(
            &runs(r, Mode::Untraced)
                .map(|x| x.dns.qps)
                .collect::<Vec<_>>(),
        );
        let untraced_spread = if untraced_qps.median > 0.0 {
            100.0 * (untraced_qps.max - untraced_qps.min) / untraced_qps.median
        } else {
            0.0
        };
        let trs: Vec<&Run> = runs(r, Mode::Tracer)
            .chain(runs(r, Mode::TracerAll))
            .collect();
        let reports: Vec<_> = trs.iter().filter_map(|x| x.tracer.as_ref()).collect();
        let ms = |d: &[std::time::Duration]| {
            Spread::of(&d.iter().map(|d| d.as_secs_f64() * 1e3).collect::<Vec<_>>())
        };
        Self {
            untraced_cpu: Spread::of(&lab_ns_per_query(r, Mode::Untraced)),
            untraced_machine: Spread::of(&machine_ns_per_query(r, Mode::Untraced)),
            tracer: cost(r, Mode::Tracer),
            all: cost(r, Mode::TracerAll),
            rules: cost(r, Mode::TracerRules),
            rules_lab_ns: Spread::of(&extra_lab_ns(r, Mode::TracerRules)),
            anchor: cost(r, Mode::Bpftrace),
            baseline: cost(r, Mode::Baseline),
            vs_baseline: Spread::of(&baseline_ratios(r)),
            tr_ratio: Spread::of(&ratios(r, Mode::Tracer)),
            all_ratio: Spread::of(&ratios(r, Mode::TracerAll)),
            rules_ratio: Spread::of(&ratios(r, Mode::TracerRules)),
            rules_attach_ms: Spread::of(
                &runs(r, Mode::TracerRules)
                    .filter_map(|x| x.tracer.as_ref().map(|t| t.attach_ms))
                    .collect::<Vec<_>>(),
            ),
            rules_detach_ms: ms(&runs(r, Mode::TracerRules)
                .filter_map(|x| x.detach)
                .collect::<Vec<_>>()),
            bt_ratio: Spread::of(&ratios(r, Mode::Bpftrace)),
            untraced_spread,
            attach_ms: Spread::of(&reports.iter().map(|t| t.attach_ms).collect::<Vec<_>>()),
            ready_ms: ms(&trs.iter().filter_map(|x| x.ready).collect::<Vec<_>>()),
            detach_ms: ms(&trs.iter().filter_map(|x| x.detach).collect::<Vec<_>>()),
        }
    }

    /// `ns` in percent of the untraced CPU per query (median).
    pub fn pct(&self, ns: f64) -> f64 {
        if self.untraced_cpu.median > 0.0 {
            100.0 * ns / self.untraced_cpu.median
        } else {
            0.0
        }
    }
}

/// The worst run's median VmRSS sample of `mode`, bytes.
pub fn steady_rss(r: &Results, mode: Mode) -> f64 {
    runs(r, mode)
        .map(|x| Spread::of(&x.rss.iter().map(|b| *b as f64).collect::<Vec<_>>()).median)
        .fold(0.0, f64::max)
}

/// The highest VmHWM of `mode`'s runs, bytes.
pub fn peak_rss(r: &Results, mode: Mode) -> f64 {
    runs(r, mode).filter_map(|x| x.hwm).max().unwrap_or(0) as f64
}

/// Ring-buffer records the tracer lost over `mode`'s runs.
pub fn lost_events(r: &Results, mode: Mode) -> u64 {
    runs(r, mode)
        .filter_map(|x| x.tracer.as_ref())
        .map(|t| t.lost_events)
        .sum::<u64>()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spread_of_odd_even_and_empty() {
        assert_eq!(
            Spread::of(&[3.0, 1.0, 2.0]),
            Spread {
                min: 1.0,
                median: 2.0,
                max: 3.0
            }
        );
        assert_eq!(
            Spread::of(&[4.0, 1.0, 2.0, 3.0]),
            Spread {
                min: 1.0,
                median: 2.5,
                max: 4.0
            }
        );
        assert_eq!(Spread::of(&[]), Spread::default());
    }
}
