//! `tracer doctor`: the on-call playbook in one run. The node's read-only checks (inspect's, and
//! what [`crate::node::host`] adds), a short probe through the Service IP from a pod's network
//! namespace with the tracer attached (a pod's query crosses FORWARD, a host-network one only
//! OUTPUT; A and AAAA at once from one socket as glibc sends them, and a few lookups over TCP),
//! a few queries from the node itself when the pod's were lost (does it hit host-network
//! pods too?), then one [`Diagnosis`]: the verdict, the causes ranked with their evidence and
//! fix (never run), and one line per check.
//!
//! # Layout
//! - `diagnose`: the lost queries' records and the node's findings -> ranked causes.
//! - `checks`: one line per check of the seed's manual procedure.

pub mod checks;
pub mod diagnose;

use std::{net::SocketAddr, path::PathBuf, time::Duration};

use crate::{
    flow::{
        record::{QueryRecord, Verdict},
        transport::Transport,
    },
    links::{self, LinkKind},
    measure::{
        self, BatchResult, BatchSpec,
        tcp::{self, TcpResult},
    },
    netns, node,
    report::doctor::{BROKEN_LOSS_PERCENT, Diagnosis, Health, ProbeFigures},
    trace::{Settings, Target, traced_traffic},
};

/// What failed (a lost query is a result, not an error).
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(
        "interrupted by {signal} during the probe: nothing judged, everything attached removed"
    )]
    Interrupted { signal: &'static str },
    #[error("failed to inspect the node: {0}")]
    Inspect(#[from] node::inspect::Error),
    #[error("failed to probe the DNS Service with the tracer attached: {0}")]
    Trace(#[from] crate::trace::Error),
    #[error("failed to probe the DNS Service from the node: {0}")]
    Measure(#[from] measure::Error),
    #[error("failed to read network namespace {netns}: {source}")]
    Links {
        netns: String,
        source: crate::netns::Error,
    },
    #[error(
        "no pod network namespace to send from: none in {dir} holds a veth `eth0` without a DNS server; pass --netns NAME (or --lab)",
        dir = netns::NETNS_DIR
    )]
    NoPod,
}

/// What doctor probes and from where.
#[derive(Debug, Clone)]
pub struct Options {
    /// The pod namespace (a name in /run/netns) the probe is sent from.
    pub client_netns: String,
    /// The node's namespace (a name in /run/netns); `None`: the tracer's own.
    pub node_netns: Option<String>,
    /// What the tracer follows (the Service, pod links, namespace filter, the Service's rules).
    pub target: Target,
    /// The probe over UDP.
    pub spec: BatchSpec,
    /// Lookups sent over TCP beside it, each on a connection of its own.
    pub tcp_queries: u32,
    /// How long the tracer waits for an answer before judging a query (longer than the kernel's
    /// 3 s of neighbour resolution, so that an unreachable pod is named).
    pub trace_timeout: Duration,
}

impl Options {
    /// The node's namespace as a path.
    fn node_path(&self) -> Option<PathBuf> {
        self.node_netns.as_deref().map(netns::named)
    }

    /// What every fix command is prefixed with: the node's namespace, where it is not ours.
    pub fn fix_prefix(&self) -> String {
        netns::exec_prefix(self.node_path().as_deref())
    }
}

/// The first namespace in /run/netns (sorted, `skip` left out) that looks like a client pod's: a
/// veth named `eth0` and no UDP socket on port 53 (not a DNS pod).
pub fn find_pod_netns(skip: Option<&str>) -> Result<String, Error> {
    let mut names: Vec<String> = std::fs::read_dir(netns::NETNS_DIR)
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    for name in names.into_iter().filter(|n| Some(n.as_str()) != skip) {
        let looks_like_pod = netns::run_in(&netns::named(&name), || {
            let pod_link = links::list()
                .map(|l| {
                    l.iter()
                        .any(|l| l.name == "eth0" && l.kind == LinkKind::Veth)
                })
                .unwrap_or(false);
            pod_link && !serves_dns()
        });
        if looks_like_pod.unwrap_or(false) {
            return Ok(name);
        }
    }
    Err(Error::NoPod)
}

/// A UDP socket bound to port 53 in the calling thread's namespace (`/proc/net/udp`, read there).
fn serves_dns() -> bool {
    let udp = std::fs::read_to_string("/proc/self/net/udp").unwrap_or_default();
    udp.lines().skip(1).any(|l| {
        l.split_whitespace()
            .nth(1)
            .is_some_and(|local| local.ends_with(":0035"))
    })
}

/// The node's veth links that are down (a pod cut off), in the node's namespace.
fn down_pod_links(o: &Options) -> Result<Vec<String>, Error> {
    let list = || {
        links::list()
            .map(|l| {
                l.into_iter()
                    .filter(|l| l.kind == LinkKind::Veth && !l.up)
                    .map(|l| l.name)
                    .collect::<Vec<_>>()
            })
            .unwrap_or_default()
    };
    match o.node_path() {
        Some(path) => netns::run_in(&path, list).map_err(|source| Error::Links {
            netns: o.node_netns.clone().unwrap_or_default(),
            source,
        }),
        None => Ok(list()),
    }
}

/// What the node's own queries got (host network: through OUTPUT, not FORWARD).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NodeProbe {
    /// Sent.
    pub sent: u32,
    /// Answered.
    pub answered: u32,
}

/// What doctor found, with what its report keeps beside the diagnosis.
#[derive(Debug, Clone)]
pub struct Found {
    /// The verdict, causes and checks.
    pub diagnosis: Diagnosis,
    /// The node as inspect saw it before the probe.
    pub node: node::Report,
    /// The trace of the probe.
    pub summary: crate::report::trace::TraceSummary,
    /// The trace records of the queries that failed.
    pub failed: Vec<QueryRecord>,
}

/// Runs the checks and the probe, and judges.
pub fn run(o: &Options) -> Result<Found, Error> {
    let node_path = o.node_path();
    let report = node::inspect(node_path.as_deref())?;
    let own = std::path::Path::new("/proc/self/ns/net");
    let ns = node_path.as_deref().unwrap_or(own);
    let inode = netns::inode(ns).map_err(|source| Error::Links {
        netns: o
            .node_netns
            .clone()
            .unwrap_or_else(|| "of the tracer".to_owned()),
        source,
    })?;
    // A namespace file's time is when the namespace was made.
    let made_us = std::fs::metadata(ns)
        .and_then(|m| m.modified())
        .ok()
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map_or(0, |d| d.as_micros() as u64);
    let facts = checks::HostFacts::read(inode, made_us);
    // Every query's record: a TCP connection the kernel retried to success is told apart.
    let settings = Settings {
        timeout: o.trace_timeout,
        all: true,
        ..Settings::default()
    };
    let service = o.target.service;
    let bar = indicatif::ProgressBar::hidden();
    let netns = Some(o.client_netns.as_str());
    let name = o.spec.names.first().map_or("", String::as_str);
    // The UDP probe, then the TCP leg (sent at once with it, a TCP connection's neighbour
    // resolution and the UDP queries' lost count disagreed on pod-link-down).
    let ((udp, tcp), records, summary) =
        traced_traffic(&o.spec, Some((o.target.clone(), settings)), &bar, || {
            let udp = measure::query_batch(netns, service, &o.spec)?;
            let tcp = tcp::queries(netns, service, name, o.tcp_queries, o.spec.timeout)?;
            Ok((udp, tcp))
        })?;
    // SIGINT or SIGTERM stopped the probe early: its figures would judge a half-sent probe.
    if let Some(signal) = crate::process::stop_signal() {
        return Err(Error::Interrupted { signal });
    }
    let node_probe = if udp.lost > 0 || tcp.answered < tcp.sent {
        Some(probe_from_node(o, service)?)
    } else {
        None
    };
    let failed = lost_queries(records);
    let summary = summary.unwrap_or_default();
    let ctx = diagnose::Context {
        report: &report,
        summary: &summary,
        facts: &facts,
        fix_prefix: o.fix_prefix(),
        down_links: down_pod_links(o)?,
    };
    let causes = diagnose::causes(&ctx, &failed.iter().collect::<Vec<_>>());
    let probe = figures(o, &udp, tcp, &summary);
    let checks = checks::checks(&ctx, &probe, node_probe);
    // The causes that explain no lost query are the node's errors and warnings.
    let node_problem = causes.iter().any(|c| c.queries == 0);
    let health = if probe.loss_percent >= BROKEN_LOSS_PERCENT {
        Health::Broken
    } else if probe.answered < probe.sent || node_problem {
        Health::Degraded
    } else {
        Health::Healthy
    };
    Ok(Found {
        diagnosis: Diagnosis {
            health,
            probe,
            causes,
            checks,
        },
        node: report,
        summary,
        failed,
    })
}

/// The records of the queries that were lost. A TCP connection whose first SYN died (to a pod
/// gone silent) can be retried by the kernel from the same socket and answered: its failed
/// attempt lost nothing.
fn lost_queries(records: Vec<QueryRecord>) -> Vec<QueryRecord> {
    let answered_tcp: Vec<SocketAddr> = records
        .iter()
        .filter(|r| r.transport == Transport::Tcp && r.verdict == Verdict::Answered)
        .map(|r| r.client)
        .collect();
    records
        .into_iter()
        .filter(|r| r.verdict != Verdict::Answered)
        .filter(|r| !(r.transport == Transport::Tcp && answered_tcp.contains(&r.client)))
        .collect()
}

/// A few queries from the node's own namespace.
fn probe_from_node(o: &Options, service: SocketAddr) -> Result<NodeProbe, Error> {
    let spec = BatchSpec {
        count: 10,
        rate: 100.0,
        timeout: Duration::from_secs(1),
        source_port: None,
        parallel_a_aaaa: false,
        ..o.spec.clone()
    };
    let r = measure::query_batch(o.node_netns.as_deref(), service, &spec)?;
    Ok(NodeProbe {
        sent: r.sent,
        answered: r.answered,
    })
}

/// The probe's figures with the tracer's counters.
fn figures(
    o: &Options,
    r: &BatchResult,
    tcp: TcpResult,
    s: &crate::report::trace::TraceSummary,
) -> ProbeFigures {
    let c = &s.counters;
    let (sent, answered) = (r.sent + tcp.sent, r.answered + tcp.answered);
    ProbeFigures {
        from: o.client_netns.clone(),
        service: o.target.service,
        sent,
        answered,
        loss_percent: if sent == 0 {
            0.0
        } else {
            f64::from(sent - answered) * 100.0 / f64::from(sent)
        },
        parallel_a_aaaa: o.spec.parallel_a_aaaa,
        tcp_sent: tcp.sent,
        tcp_answered: tcp.answered,
        seen_to_service: c.queries,
        seen_at_pod: c.at_endpoint,
        seen_from_pod: c.from_endpoint,
        seen_answered: c.answered,
        tier: s.plan.as_ref().map(|p| p.tier),
    }
}
