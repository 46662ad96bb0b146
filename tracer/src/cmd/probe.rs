//! `tracer probe`: queries at a fixed rate from a pod or the node, with the tracer running
//! alongside so that every lost query is attributed to a stage and reason; a progress bar while
//! it runs, a summary table (or JSON) at the end, and a versioned report with `--report`.

use std::{io::Write as _, net::SocketAddr, path::PathBuf, time::Duration};

use super::{Error, lab_info};
use crate::{
    cli::{OutputFormat, ProbeArgs},
    lab::FaultName,
    measure::{BatchSpec, server_addr},
    netns,
    node::{self, inspect},
    report::document::{Document, NodeFacts, ProbeReport},
    trace::{Settings, Target, progress_bar, traced_batch},
};

/// Runs `tracer probe`. Loss is a result, not an error: only a failure to send, trace or write
/// exits non-zero.
pub fn run(args: ProbeArgs) -> Result<(), Error> {
    if !(args.timeout.is_finite() && args.timeout > 0.0) {
        return Err(Error::Usage {
            reason: "the timeout must be a positive number of seconds",
        });
    }
    if args.count.is_none() && !(args.duration.is_finite() && args.duration > 0.0) {
        return Err(Error::Usage {
            reason: "the duration must be a positive number of seconds",
        });
    }
    let count = args
        .count
        .unwrap_or_else(|| (args.rate * args.duration).round().max(1.0) as u32);
    let mut spec = BatchSpec {
        names: args.names.clone(),
        qtypes: args.types.clone(),
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
    let Path {
        netns,
        server,
        target,
        node_netns,
    } = if args.lab {
        lab_path(&args, &mut spec, say)?
    } else {
        node_path(&args)?
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

/// Where the queries go from and to, and what the tracer watches.
struct Path {
    /// The client's namespace; `None`: the node's (this process's).
    netns: Option<String>,
    server: SocketAddr,
    /// `None` with `--no-trace`.
    target: Option<Target>,
    /// The node's namespace, for the report's node facts.
    node_netns: Option<PathBuf>,
}

/// From the lab's first client to its Service, sending as its faults need (the stale source
/// port, A and AAAA in parallel).
fn lab_path(args: &ProbeArgs, spec: &mut BatchSpec, say: impl Fn(String)) -> Result<Path, Error> {
    let info = lab_info(&args.prefix)?;
    let client = info.clients.first().ok_or_else(|| Error::NoLab {
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
        .unwrap_or((info.client_service_ip(), Some(info.dns_port)));
    let target = if args.no_trace {
        None
    } else {
        Some(Target::lab(&info)?)
    };
    Ok(Path {
        netns: Some(client.netns.clone()),
        server: server_addr(ip, port),
        target,
        node_netns: Some(netns::named(&info.node_netns)),
    })
}

/// From `--netns` (or the node) to `--server`, or to the node's kube-dns Service from its rules.
fn node_path(args: &ProbeArgs) -> Result<Path, Error> {
    let (ip, port) = match args.server {
        Some(server) => server,
        None => node::dns_service(None)?
            .map(|s| (s.ip, Some(s.port)))
            .ok_or(Error::Usage {
                reason: "no kube-dns Service in this node's rules: say --server IP[:PORT], or --lab",
            })?,
    };
    let server = server_addr(ip, port);
    let target = if args.no_trace {
        None
    } else {
        Some(node_target(server)?)
    };
    Ok(Path {
        netns: args.netns.clone(),
        server,
        target,
        node_netns: None,
    })
}

/// The tracer's target for a probe of the node's own DNS Service at `server`: its endpoints
/// from the node's rules when they describe that Service.
fn node_target(server: SocketAddr) -> Result<Target, Error> {
    let svc = node::dns_service(None)?.filter(|s| s.ip == server.ip());
    Ok(Target {
        service: server,
        links_netns: None,
        netns_filter: Vec::new(),
        rules: svc,
        rules6: None,
        cache: None,
    })
}
