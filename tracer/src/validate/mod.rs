//! Kernel-upgrade validation with no cluster. Runs the lab's scenarios
//! (healthy and every fault, in both iptables backends) on this kernel with the tracer, checks
//! that each one is detected and attributed to the right stage, measures the healthy loss and
//! latency, and writes a report to `compare` with the one from the previous kernel.
//!
//! Each scenario gets a fresh lab (brought down however the scenario ends), so one scenario's
//! leftovers (conntrack entries, rules) cannot make the next one pass or fail.

//!
//! # Layout
//! - `mod.rs`: the scenarios and running them, each on a fresh lab.
//! - `checks`: what each scenario must show in the tracer's records and counters.

mod checks;

use std::{
    net::SocketAddr,
    time::{Duration, Instant},
};

use self::checks::*;
use crate::{
    flow::record::Stage,
    lab::{self, FaultName},
    measure::BatchSpec,
    netns,
    node::Backend,
    report::{
        document::ProbeReport,
        validation::{ScenarioResult, Validation},
    },
    trace::{self, Settings, Target, progress_bar, traced_batch},
};

/// What failed while validating (a scenario that fails its checks is a result, not an error).
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("failed to bring up lab {prefix} for scenario {scenario}: {source}")]
    Lab {
        prefix: String,
        scenario: String,
        source: Box<lab::Error>,
    },
    #[error("failed to run scenario {scenario} ({backend}): {source}")]
    Probe {
        scenario: String,
        backend: &'static str,
        source: Box<trace::Error>,
    },
    #[error("failed to read the lab's rules for scenario {scenario}: {source}")]
    Rules {
        scenario: String,
        source: Box<trace::Error>,
    },
    #[error(
        "interrupted by {signal} after {done} of {total} scenarios; the scenario's lab was brought down"
    )]
    Interrupted {
        signal: &'static str,
        done: usize,
        total: usize,
    },
    #[error("unknown scenario {name:?}: say healthy or a fault name ({known})")]
    UnknownScenario { name: String, known: String },
}

/// One scenario: a fault (or none), the batch it needs, and its checks.
struct Scenario {
    name: &'static str,
    fault: Option<(FaultName, Option<u8>)>,
    count: u32,
    timeout: Duration,
    parallel_a_aaaa: bool,
    expected: &'static str,
    /// The stages that must have recorded the lost queries (any of them): a fault whose stage
    /// recorded none of them was missed, whatever the other checks say.
    stages: &'static [Stage],
    check: fn(&Observed, &mut Vec<String>),
}

/// The scenarios, healthy first. Timeouts are 1 s, and 5 s where the kernel's neighbour code
/// needs about 3 s to give up on an address nobody answers for.
fn scenarios(healthy_count: u32) -> Vec<Scenario> {
    let one = Duration::from_secs(1);
    let five = Duration::from_secs(5);
    let s = |name, fault, count, timeout, expected, check| Scenario {
        name,
        fault,
        count,
        timeout,
        parallel_a_aaaa: false,
        expected,
        stages: &[],
        check,
    };
    let at = |stages: &'static [Stage], sc: Scenario| Scenario { stages, ..sc };
    vec![
        s(
            "healthy",
            None,
            healthy_count,
            one,
            "every query answered",
            check_healthy,
        ),
        at(
            &[Stage::Netfilter],
            s(
                "filter-drop",
                Some((FaultName::FilterDrop, Some(0))),
                40,
                one,
                "some lost, each a netfilter NETFILTER_DROP after DNAT to dns0",
                check_filter_drop,
            ),
        ),
        at(
            &[Stage::Netfilter],
            s(
                "no-endpoints",
                Some((FaultName::NoEndpoints, None)),
                20,
                one,
                "all lost, each dropped by netfilter before DNAT (rejected where an ICMP error was sent)",
                check_no_endpoints,
            ),
        ),
        at(
            &[Stage::Socket],
            s(
                "pod-down",
                Some((FaultName::PodDown, Some(0))),
                40,
                one,
                "some lost, each NO_SOCKET at the socket stage inside dns0",
                check_pod_down,
            ),
        ),
        at(
            &[Stage::Neighbour, Stage::Bridge],
            s(
                "pod-link-down",
                Some((FaultName::PodLinkDown, Some(0))),
                20,
                five,
                "some lost, each sent to dns0 and dropped at the neighbour (or bridge) stage",
                check_pod_link_down,
            ),
        ),
        at(
            &[Stage::Conntrack],
            s(
                "conntrack-full",
                Some((FaultName::ConntrackFull, None)),
                10,
                one,
                "all lost, each dropped at conntrack, with conntrack's drop statistic rising",
                check_conntrack_full,
            ),
        ),
        s(
            "stale-conntrack",
            Some((FaultName::StaleConntrack, None)),
            10,
            five,
            "all lost, each sent to an endpoint the rules no longer hold",
            check_stale_conntrack,
        ),
        s(
            "mixed-backend",
            Some((FaultName::MixedBackend, None)),
            10,
            five,
            "some lost, each sent to a target that is not an endpoint",
            check_mixed_backend,
        ),
        Scenario {
            parallel_a_aaaa: true,
            ..s(
                "conntrack-race",
                Some((FaultName::ConntrackRace, None)),
                200,
                one,
                "nothing lost, conntrack's clash_resolve rising",
                check_conntrack_race,
            )
        },
    ]
}

/// Brings a lab down when dropped, however the scenario ends.
struct LabDown<'a> {
    prefix: &'a str,
}

impl Drop for LabDown<'_> {
    fn drop(&mut self) {
        if let Err(e) = lab::down(self.prefix) {
            log::warn!("failed to bring lab {} down: {e}", self.prefix);
        }
    }
}

fn run_scenario(prefix: &str, backend: Backend, sc: &Scenario) -> Result<ScenarioResult, Error> {
    let lab_err = |source: lab::Error| Error::Lab {
        prefix: prefix.to_owned(),
        scenario: sc.name.to_owned(),
        source: Box::new(source),
    };
    let _down = LabDown { prefix };
    lab::up(prefix, backend, 1).map_err(lab_err)?;
    if let Some((fault, pod)) = sc.fault {
        lab::fault(prefix, fault, pod).map_err(lab_err)?;
    }
    let info = lab::info(prefix).map_err(lab_err)?.ok_or_else(|| {
        lab_err(lab::Error::NotUp {
            prefix: prefix.to_owned(),
        })
    })?;
    let probe_err = |source: trace::Error| Error::Probe {
        scenario: sc.name.to_owned(),
        backend: backend.name(),
        source: Box::new(source),
    };
    let spec = BatchSpec {
        count: sc.count,
        rate: 200.0,
        timeout: sc.timeout,
        source_port: info.stale_source_port,
        parallel_a_aaaa: sc.parallel_a_aaaa,
        ..BatchSpec::default()
    };
    let target = Target::lab(&info).map_err(probe_err)?;
    // A record of every healthy query, so that the NAT stage's work on answered queries can
    // be checked (a record costs about 5 µs of CPU; the probe's 200 queries/s do not notice).
    let settings = Settings {
        timeout: sc.timeout,
        all: sc.fault.is_none(),
        ..Settings::default()
    };
    let client = info.clients.first().map(|c| c.netns.clone());
    let server = SocketAddr::from((info.service_ip, info.dns_port));
    let traced = traced_batch(
        client.as_deref(),
        server,
        &spec,
        Some((target, settings)),
        &progress_bar(sc.count, true),
    )
    .map_err(probe_err)?;
    let report = ProbeReport::new(
        client.as_deref().unwrap_or("node"),
        server,
        &spec,
        &traced.result,
        traced.summary.as_ref(),
        &traced.records,
    );
    let live = crate::node::dns_service(Some(&netns::named(&info.node_netns)))
        .map_err(|source| Error::Rules {
            scenario: sc.name.to_owned(),
            source: Box::new(trace::Error::from(source)),
        })?
        .map(|s| s.endpoint_ips())
        .unwrap_or_default();
    let summary = traced.summary.as_ref();
    let seen = Observed {
        lab: &info,
        summary,
        records: &traced.records,
        report: &report,
        live,
    };
    let problems = problems(sc, &seen);
    Ok(ScenarioResult {
        backend,
        scenario: sc.name.to_owned(),
        passed: problems.is_empty(),
        tier: summary.and_then(|s| s.plan.as_ref()).map(|p| p.tier),
        expected: sc.expected.to_owned(),
        problems,
        conntrack_delta: summary.and_then(|s| s.conntrack_delta),
        counters: summary.map(|s| s.counters),
        probe: report,
    })
}

/// Runs the chosen scenarios (`names` empty: all) on the chosen backends (empty: both), with
/// labs named `prefix`; `each` is called with every result as it comes.
pub fn validate(
    prefix: &str,
    backends: &[Backend],
    names: &[String],
    healthy_count: u32,
    mut each: impl FnMut(&ScenarioResult),
) -> Result<Validation, Error> {
    let all = scenarios(healthy_count);
    for name in names {
        if !all.iter().any(|s| s.name == name) {
            return Err(Error::UnknownScenario {
                name: name.clone(),
                known: all.iter().map(|s| s.name).collect::<Vec<_>>().join(", "),
            });
        }
    }
    let backends = if backends.is_empty() {
        &[Backend::Nft, Backend::Legacy][..]
    } else {
        backends
    };
    let start = Instant::now();
    let chosen: Vec<&Scenario> = all
        .iter()
        .filter(|s| names.is_empty() || names.iter().any(|n| n == s.name))
        .collect();
    let total = chosen.len() * backends.len();
    let mut results = Vec::new();
    for &backend in backends {
        for sc in &chosen {
            // SIGINT or SIGTERM (`main` made them a stop request): a scenario cut short proves
            // nothing, so none is judged after it; its lab went down with `run_scenario`.
            let r = run_scenario(prefix, backend, sc);
            if let Some(signal) = crate::process::stop_signal() {
                return Err(Error::Interrupted {
                    signal,
                    done: results.len(),
                    total,
                });
            }
            let r = r?;
            each(&r);
            results.push(r);
        }
    }
    let tier = results.first().and_then(|r| r.tier);
    Ok(Validation {
        tier,
        passed: results.iter().all(|r| r.passed),
        seconds: start.elapsed().as_secs_f64(),
        scenarios: results,
    })
}

#[cfg(test)]
mod tests;
