//! What each kernel offers and which runs `--kernels` selects.

use anyhow::bail;

/// A kernel of the matrix and the hook tiers it offers, best first.
struct Kernel {
    /// `host`, or the `tracer vm` alias of a pinned Debian kernel.
    name: &'static str,
    /// Best first: the first is what `tracer hooks` says trace gets (`TRACER_EXPECT_TIER`).
    tiers: &'static [&'static str],
}

/// What each kernel gives, as `tracer hooks` reported it in each guest (2026-12-01, after
/// `modprobe -a nf_tables x_tables ip_tables nf_nat nf_conntrack`):
/// - host (this machine's 6.18): tracepoint only. No kprobes ("kernel 6.18.44 (BTF yes, kprobes
///   no): tracing would get the tracepoint tier") and fexit attach fails with EPERM (no ftrace
///   function hooks).
/// - 5.10: kprobe, tracepoint. No module BTF before 5.11, so no fentry on the module functions
///   netfilter, NAT and conntrack live in: "this kernel has no BTF for module nf_nat
///   (/sys/kernel/btf/nf_nat is missing: module BTF needs 5.11+ with CONFIG_DEBUG_INFO_BTF_MODULES)".
/// - 6.1 and 6.12: fentry, kprobe, tracepoint ("tracing would get the fentry tier"; every fexit
///   program verified, and attaches under TCG).
const KERNELS: &[Kernel] = &[
    Kernel {
        name: "host",
        tiers: &["tracepoint"],
    },
    Kernel {
        name: "5.10",
        tiers: &["kprobe", "tracepoint"],
    },
    Kernel {
        name: "6.1",
        tiers: &["fentry", "kprobe", "tracepoint"],
    },
    Kernel {
        name: "6.12",
        tiers: &["fentry", "kprobe", "tracepoint"],
    },
];

/// Which test binaries a VM run runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Suites {
    /// The hooks test and the trace scenarios.
    Core,
    /// Core, and what differs by kernel besides the hooks: DNS over TCP (its parser and
    /// connection drops), kube-proxy's IPVS mode (ip_vs is a module there, not on the host) and
    /// the netlink TC filters a killed trace leaves before 6.6 (`cleanup`).
    Paths,
    /// Every suite of the matrix (`BINARIES`): policy, rules, ruletrace, live, causes and names
    /// too.
    All,
}

/// `--kernels ci`, besides the host run: every (kernel, tier) with the core suites, and the best
/// tier of 5.10 and 6.1 with the DNS paths' suites too (6.12/fentry passed them on 2026-12-01 in
/// 16 min, 5 more than Core: left to `--kernels all` to keep CI's margin). It must fit CI's 90 minutes with two guests
/// at once on 2 cores (README.md, "What CI runs", has the measured times); drop runs here if
/// kernels or tests are added and it no longer does. `--kernels all` runs every suite on every
/// run (6.1/fentry, all suites: 25 min of guest time, 2026-12-01); a run moves to `Suites::All`
/// here once its suites pass there.
const CI: &[(&str, &str, Suites)] = &[
    ("5.10", "kprobe", Suites::Paths),
    ("5.10", "tracepoint", Suites::Core),
    ("6.1", "fentry", Suites::Paths),
    ("6.1", "kprobe", Suites::Core),
    ("6.1", "tracepoint", Suites::Core),
    ("6.12", "fentry", Suites::Core),
    ("6.12", "kprobe", Suites::Core),
    ("6.12", "tracepoint", Suites::Core),
];

/// What `--kernels` selected.
#[derive(Debug, PartialEq)]
pub struct Selection {
    /// The host run.
    pub host: bool,
    /// (kernel alias, tier, suites), in matrix order.
    pub runs: Vec<(&'static str, &'static str, Suites)>,
}

impl Selection {
    /// `ci`, `all`, `host`, or a comma-separated list of `host`, `KERNEL` (every tier it offers)
    /// and `KERNEL:TIER`; a run named in a list runs every suite.
    pub fn parse(s: &str) -> anyhow::Result<Selection> {
        let vms = || KERNELS.iter().filter(|k| k.name != "host");
        match s {
            "ci" => {
                return Ok(Selection {
                    host: true,
                    runs: CI.to_vec(),
                });
            }
            "all" => {
                return Ok(Selection {
                    host: true,
                    runs: vms()
                        .flat_map(|k| k.tiers.iter().map(|t| (k.name, *t, Suites::All)))
                        .collect(),
                });
            }
            _ => {}
        }
        let mut sel = Selection {
            host: false,
            runs: Vec::new(),
        };
        for item in s.split(',').map(str::trim).filter(|i| !i.is_empty()) {
            if item == "host" {
                sel.host = true;
                continue;
            }
            let (name, tier) = match item.split_once(':') {
                Some((n, t)) => (n, Some(t)),
                None => (item, None),
            };
            let Some(kernel) = vms().find(|k| k.name == name) else {
                bail!(
                    "--kernels: unknown kernel {name:?}: say ci, all, host, or a list of {} (KERNEL or KERNEL:TIER)",
                    vms().map(|k| k.name).collect::<Vec<_>>().join(", ")
                );
            };
            match tier {
                None => sel
                    .runs
                    .extend(kernel.tiers.iter().map(|t| (kernel.name, *t, Suites::All))),
                Some(t) => match kernel.tiers.iter().find(|k| **k == t) {
                    Some(t) => sel.runs.push((kernel.name, t, Suites::All)),
                    None => bail!(
                        "--kernels: kernel {name} offers {}, not {t:?}",
                        kernel.tiers.join(", ")
                    ),
                },
            }
        }
        if !sel.host && sel.runs.is_empty() {
            bail!("--kernels {s:?} selects nothing");
        }
        // Matrix order, each run once.
        let order = |(k, t, _): &(&str, &str, Suites)| {
            let ki = KERNELS.iter().position(|x| x.name == *k).unwrap_or(0);
            let ti = KERNELS[ki].tiers.iter().position(|x| x == t).unwrap_or(0);
            (ki, ti)
        };
        sel.runs.sort_by_key(order);
        sel.runs.dedup();
        Ok(sel)
    }
}

pub fn best_tier(kernel: &str) -> &'static str {
    KERNELS
        .iter()
        .find(|k| k.name == kernel)
        .map(|k| k.tiers[0])
        .unwrap_or("auto")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn selections() {
        let all = Selection::parse("all").unwrap();
        assert!(all.host);
        assert_eq!(all.runs.len(), 8);
        assert_eq!(
            Selection::parse("6.1:kprobe,5.10").unwrap(),
            Selection {
                host: false,
                runs: vec![
                    ("5.10", "kprobe", Suites::All),
                    ("5.10", "tracepoint", Suites::All),
                    ("6.1", "kprobe", Suites::All)
                ]
            }
        );
        assert!(Selection::parse("5.10:fentry").is_err());
        assert!(Selection::parse("4.19").is_err());
        for (k, t, _) in CI {
            assert!(KERNELS.iter().any(|x| x.name == *k && x.tiers.contains(t)));
        }
    }
}
