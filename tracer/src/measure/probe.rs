//! `tracer probe`: queries at a fixed rate from a pod or the node, with the tracer running
//! alongside so that every lost query is attributed to a stage and reason; a progress bar while
//! it runs, a summary table (or JSON) at the end, and a versioned report with `--report`.

use std::{
    io::Write as _,
    net::SocketAddrV4,
    time::{Duration, Instant},
};

use indicatif::{ProgressBar, ProgressStyle};

use super::{BatchResult, BatchSpec, query_batch, server_addr};
use crate::{
    cli::{FaultName, OutputFormat, ProbeArgs},
    flow::record::QueryRecord as TraceRecord,
    lab, netns,
    node::inspect,
    report::{
        document::{self, Document, NodeFacts, ProbeReport},
        trace::TraceSummary,
    },
    trace::{self, Settings, Target, Tracer},
};

/// What failed while probing.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Measure {
        #[from]
        source: super::Error,
    },
    #[error("failed to trace the probe's queries (`--no-trace` only counts them): {source}")]
    Trace {
        #[from]
        source: trace::Error,
    },
    #[error("failed to inspect the node for the report: {source}")]
    Inspect {
        #[from]
        source: inspect::Error,
    },
    #[error(transparent)]
    Report {
        #[from]
        source: document::Error,
    },
    #[error("failed to write the result: {source}")]
    Output {
        #[from]
        source: std::io::Error,
    },
    #[error("failed to encode the result as JSON: {source}")]
    Json {
        #[from]
        source: serde_json::Error,
    },
    #[error("the DNS query thread panicked")]
    Panicked,
}

/// A batch sent while the tracer watched.
#[derive(Debug)]
pub struct Traced {
    /// What the client saw.
    pub result: BatchResult,
    /// The tracer's records: failed and slow queries (every query with `Settings::all`).
    pub records: Vec<TraceRecord>,
    /// The trace summary; `None` when the tracer did not run.
    pub summary: Option<TraceSummary>,
}

/// Sends `spec` from `netns` to `server` while the tracer (when `trace` is given) follows every
/// query: the tracer starts before the first query and stops after the last one was answered or
/// timed out. `progress` counts lookups as they are sent.
pub fn traced_batch(
    netns: Option<&str>,
    server: SocketAddrV4,
    spec: &BatchSpec,
    trace: Option<(Target, Settings)>,
    progress: &ProgressBar,
) -> Result<Traced, Error> {
    let mut tracer = match trace {
        Some((target, settings)) => Some(Tracer::start(target, &settings)?),
        None => None,
    };
    let mut records = Vec::new();
    let start = Instant::now();
    let result = std::thread::scope(|scope| -> Result<BatchResult, Error> {
        let sender = scope.spawn(|| query_batch(netns, server, spec));
        while !sender.is_finished() {
            if let Some(t) = tracer.as_mut() {
                records.extend(t.poll()?);
            }
            let due = (start.elapsed().as_secs_f64() * spec.rate) as u64;
            progress.set_position(due.min(u64::from(spec.count)));
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(sender.join().map_err(|_| Error::Panicked)??)
    })?;
    progress.finish_and_clear();
    let summary = match tracer {
        Some(mut t) => {
            // The client gave up on its last query a moment ago; let the tracer see the
            // kernel's last word on it before judging.
            let grace = Instant::now() + Duration::from_millis(300);
            while Instant::now() < grace {
                records.extend(t.poll()?);
                std::thread::sleep(Duration::from_millis(50));
            }
            let (rest, summary) = t.finish()?;
            records.extend(rest);
            trace::attribute_backends(&mut records, &summary.rule_counters);
            Some(summary)
        }
        None => None,
    };
    Ok(Traced {
        result,
        records,
        summary,
    })
}

/// A progress bar on stderr for `count` lookups; hidden when stderr is not a terminal (or when
/// `hidden`).
pub fn progress_bar(count: u32, hidden: bool) -> ProgressBar {
    if hidden {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::new(u64::from(count));
    if let Ok(style) = ProgressStyle::with_template(
        "{spinner} {elapsed_precise} [{wide_bar}] {pos}/{len} lookups ({eta} left)",
    ) {
        bar.set_style(style);
    }
    bar
}

/// Runs `tracer probe`. Loss is a result, not an error: only a failure to send, trace or write
/// exits non-zero.
pub fn run(args: ProbeArgs) -> Result<(), Error> {
    if !(args.timeout.is_finite() && args.timeout > 0.0) {
        return Err(super::Error::Spec {
            reason: "the timeout must be a positive number of seconds",
        }
        .into());
    }
    if args.count.is_none() && !(args.duration.is_finite() && args.duration > 0.0) {
        return Err(super::Error::Spec {
            reason: "the duration must be a positive number of seconds",
        }
        .into());
    }
    let count = args
        .count
        .unwrap_or_else(|| (args.rate * args.duration).round().max(1.0) as u32);
    let mut spec = BatchSpec {
        names: args.names,
        qtypes: args.types,
        count,
        rate: args.rate,
        timeout: Duration::from_secs_f64(args.timeout),
        source_port: args.source_port,
        parallel_a_aaaa: args.parallel_a_aaaa,
    };
    let json = args.out.format == OutputFormat::Json;
    let say = |line: String| {
        if !json {
            println!("{line}");
        }
    };
    let (netns, server, target, node_netns) = if args.lab {
        let info = lab::info(&args.prefix)
            .map_err(|source| super::Error::Lab {
                source: Box::new(source),
            })?
            .ok_or_else(|| super::Error::NoLab {
                prefix: args.prefix.clone(),
            })?;
        let client = info.clients.first().ok_or_else(|| super::Error::NoLab {
            prefix: args.prefix.clone(),
        })?;
        if spec.source_port.is_none() && info.stale_source_port.is_some() {
            spec.source_port = info.stale_source_port;
            say(format!(
                "lab fault stale-conntrack: sending from its stale source port {}",
                spec.source_port.unwrap_or(0)
            ));
        }
        if info.faults.contains(&FaultName::ConntrackRace) && !spec.parallel_a_aaaa {
            spec.parallel_a_aaaa = true;
            say("lab fault conntrack-race: sending A and AAAA in parallel from one socket".into());
        }
        let (ip, port) = args
            .server
            .unwrap_or((info.service_ip, Some(info.dns_port)));
        let target = if args.no_trace {
            None
        } else {
            Some(Target::lab(&info)?)
        };
        (
            Some(client.netns.clone()),
            server_addr(ip, port),
            target,
            Some(netns::named(&info.node_netns)),
        )
    } else {
        // The node's kube-dns Service from its rules, unless one is named.
        let (ip, port) = match args.server {
            Some(server) => server,
            None => crate::node::dns_service(None)?
                .map(|s| (s.ip, Some(s.port)))
                .ok_or(super::Error::Spec {
                    reason: "no kube-dns Service in this node's rules: say --server IP[:PORT], or --lab",
                })?,
        };
        let server = server_addr(ip, port);
        let target = if args.no_trace {
            None
        } else {
            Some(node_target(server)?)
        };
        (args.netns, server, target, None)
    };
    let node = match &args.out.report {
        Some(_) => Some(inspect::inspect(node_netns.as_deref())?),
        None => None,
    };
    let from = netns.clone().unwrap_or_else(|| "node".to_owned());
    say(format!(
        "probing {server} from {from}: {count} lookups at {}/s, timeout {} s; {}",
        spec.rate,
        args.timeout,
        if target.is_some() {
            "the tracer attributes every lost query"
        } else {
            "not traced"
        }
    ));
    let settings = Settings {
        timeout: spec.timeout,
        ..Settings::default()
    };
    let bar = progress_bar(count, json);
    let traced = traced_batch(
        netns.as_deref(),
        server,
        &spec,
        target.map(|t| (t, settings)),
        &bar,
    )?;
    let report = ProbeReport::new(
        &from,
        server,
        &spec,
        &traced.result,
        traced.summary.as_ref(),
        &traced.records,
    );
    let mut stdout = std::io::stdout().lock();
    if json {
        serde_json::to_writer_pretty(&mut stdout, &report)?;
        writeln!(stdout)?;
    } else {
        write!(stdout, "{}", report.text())?;
    }
    if let Some(path) = &args.out.report {
        let mut doc = Document::new("probe")?;
        if let Some(summary) = traced.summary {
            doc = doc.with_trace(summary, &traced.records);
        }
        doc.node = node.as_ref().map(NodeFacts::from_inspect);
        doc.probe = Some(report);
        doc.write(path)?;
        if !json {
            writeln!(stdout, "report written to {}", path.display())?;
        }
    }
    Ok(())
}

/// The tracer's target for a probe of the node's own DNS Service at `server`: its endpoints
/// from the node's rules when they describe that Service.
fn node_target(server: SocketAddrV4) -> Result<Target, Error> {
    let svc = crate::node::dns_service(None)?.filter(|s| s.ip == *server.ip());
    Ok(Target {
        service: server,
        links_netns: None,
        netns_filter: Vec::new(),
        rules: svc,
    })
}
