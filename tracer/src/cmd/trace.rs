//! `tracer trace`: every DNS query followed until Ctrl-C or `--duration`; one line (or JSON
//! object) per failed or slow query, then the summary; with `--metrics`, every query counted
//! for Prometheus while it runs.

use std::{
    io::Write,
    net::SocketAddr,
    time::{Duration, Instant},
};

use super::Error;
use crate::{
    cli::{OutputFormat, TraceArgs},
    flow::record::{QueryRecord, Verdict},
    lab, netns, node, process,
    report::{
        document,
        metrics::NodeInfo,
        trace::{TraceLine, line, reported_without_all},
    },
    trace::{Settings, Target, Tracer, attribute_backends, metrics},
};

/// What to trace, from the command line (the lab fills what is not given when it is up).
fn target(args: &TraceArgs) -> Result<Target, Error> {
    let lab = if args.lab || (args.service.is_none() && args.links_netns.is_none()) {
        lab::info(&args.prefix).map_err(|source| Error::Lab {
            prefix: args.prefix.clone(),
            source,
        })?
    } else {
        None
    };
    if args.lab && lab.is_none() {
        return Err(Error::NoLab {
            prefix: args.prefix.clone(),
        });
    }
    let mut t = match &lab {
        Some(info) => Target::lab(info)?,
        None => Target {
            service: SocketAddr::from((std::net::Ipv4Addr::UNSPECIFIED, 53)),
            links_netns: None,
            netns_filter: Vec::new(),
            rules: None,
            rules6: None,
            cache: None,
        },
    };
    if let Some(name) = &args.links_netns {
        t.links_netns = Some((name.clone(), netns::named(name)));
    }
    if lab.is_none() {
        t.rules = node::dns_service(t.links_netns.as_ref().map(|(_, p)| p.as_path()))?;
        if let Some(svc) = &t.rules {
            t.service = SocketAddr::new(svc.ip, svc.port);
        }
        t.rules6 = node::ipv6::dns_service6(t.links_netns.as_ref().map(|(_, p)| p.as_path()))?;
    }
    if let Some((ip, port)) = args.service {
        t.service = SocketAddr::new(ip, port.unwrap_or(53));
    }
    if t.service.ip().is_unspecified() {
        return Err(Error::NoService);
    }
    if !args.netns.is_empty() {
        t.netns_filter = args
            .netns
            .iter()
            .map(|n| netns::inode(&netns::named(n)))
            .collect::<Result<_, _>>()?;
    }
    Ok(t)
}

/// Runs the command.
pub fn run(args: TraceArgs) -> Result<(), Error> {
    // Bound first: a port in use or an address not ours fails before anything is attached.
    let listener = args.metrics.map(metrics::Listener::bind).transpose()?;
    let target = target(&args)?;
    let settings = Settings {
        tier: args.hooks,
        // The metrics count every query: the kernel hands over a record for each.
        all: args.all || listener.is_some(),
        slow: Duration::from_millis(args.slow_ms),
        timeout: Duration::from_secs_f64(args.timeout.max(0.05)),
        pod_ip: args.pod_ip,
        rules: args.rules,
    };
    // SIGINT and SIGTERM only ask to stop (`main` set that up first thing): one that came while
    // loading and attaching is seen by the first poll, and everything attached is removed.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .enable_io()
        .build()?;
    let mut tracer = Tracer::start(target.clone(), &settings)?;
    let json = args.out.format == OutputFormat::Json;
    // Buffered and flushed once per poll: with --all, a flush per line cost more than tracing.
    let mut stdout = std::io::BufWriter::new(std::io::stdout().lock());
    let links = target.links_netns.as_ref().map(|(_, p)| p.as_path());
    // The node's state, for the header and the metrics' node info.
    let inspected = (!json || listener.is_some()).then(|| {
        let tier = (tracer.plan().tier, "as attached by this trace".to_owned());
        node::inspect_with_tier(links, Some(tier))
    });
    if json {
        let attach_ms = tracer.attach_time().as_secs_f64() * 1000.0;
        write_json(
            &mut stdout,
            &TraceLine::Plan {
                plan: tracer.plan(),
                attach_ms,
            },
        )?;
    } else {
        header(&mut stdout, &target, &tracer, &args, inspected.as_ref())?;
    }
    stdout.flush()?;
    let mut exporter = match listener {
        Some(l) => {
            let report = inspected.as_ref().and_then(|r| r.as_ref().ok());
            let node = NodeInfo::new(report, tracer.plan());
            Some(metrics::Exporter::start(&rt, l, node)?)
        }
        None => None,
    };
    let slow_us = args.slow_ms.saturating_mul(1000);
    // Only where --metrics asked the kernel for every record: without it, what it hands over
    // is what is printed.
    let filtered = !args.all && args.metrics.is_some();
    let write = |out: &mut dyn Write, r: &QueryRecord| -> Result<(), Error> {
        if filtered && !reported_without_all(r, slow_us) {
            Ok(())
        } else if json {
            write_json(out, &TraceLine::Query(r))
        } else {
            Ok(writeln!(out, "{}", line(r))?)
        }
    };
    let deadline = args
        .duration
        .map(|d| Instant::now() + Duration::from_secs_f64(d.max(0.0)));
    // With --report, the failed records are kept for it.
    let keep = args.out.report.is_some();
    let mut kept = Vec::new();
    follow(&rt, &mut tracer, deadline, |tracer, records| {
        if let Some(e) = exporter.as_mut() {
            e.update(tracer, &records)?;
        }
        for r in records {
            write(&mut stdout, &r)?;
            if keep && r.verdict != Verdict::Answered {
                kept.push(r);
            }
        }
        Ok(stdout.flush()?)
    })?;
    // Nothing listens once the trace stops.
    if let Some(e) = exporter {
        e.stop(&rt);
    }
    let (rest, summary) = tracer.finish()?;
    for r in &rest {
        write(&mut stdout, r)?;
    }
    if json {
        write_json(&mut stdout, &TraceLine::Summary(&summary))?;
    } else {
        write!(stdout, "{}", summary.text())?;
    }
    stdout.flush()?;
    if let Some(path) = &args.out.report {
        kept.extend(rest);
        attribute_backends(&mut kept, &summary.rule_counters);
        document::write_trace_report(path, links, summary, &kept)?;
    }
    Ok(())
}

/// One JSON object and a newline.
fn write_json(out: &mut dyn Write, line: &TraceLine) -> Result<(), Error> {
    serde_json::to_writer(&mut *out, line)?;
    Ok(writeln!(out)?)
}

/// What is traced, the plan, the node's state in a few lines.
fn header(
    out: &mut dyn Write,
    target: &Target,
    tracer: &Tracer,
    args: &TraceArgs,
    inspected: Option<&Result<node::inspect::Report, node::inspect::Error>>,
) -> Result<(), Error> {
    let slow_ms = args.slow_ms;
    writeln!(
        out,
        "tracing DNS to {} (pod links in {}), {:.0} ms to attach",
        target.service,
        target
            .links_netns
            .as_ref()
            .map(|(n, _)| n.as_str())
            .unwrap_or("this namespace"),
        tracer.attach_time().as_secs_f64() * 1000.0
    )?;
    if args.verbose {
        write!(out, "{}", tracer.plan())?;
    } else {
        writeln!(out, "{}", tracer.plan().one_line())?;
    }
    match inspected {
        Some(Ok(report)) => {
            for l in report.summary() {
                writeln!(out, "{l}")?;
            }
        }
        Some(Err(e)) => writeln!(out, "node inspection failed: {e}")?,
        None => {}
    }
    if let Some(addr) = args.metrics {
        writeln!(out, "metrics at http://{addr}/metrics")?;
    }
    writeln!(
        out,
        "reporting failed queries and answers slower than {slow_ms} ms; Ctrl-C to stop"
    )?;
    Ok(())
}

/// Polls the tracer until SIGINT, SIGTERM or `deadline`, handing over the queries each poll
/// completed.
fn follow(
    rt: &tokio::runtime::Runtime,
    tracer: &mut Tracer,
    deadline: Option<Instant>,
    mut each: impl FnMut(&Tracer, Vec<QueryRecord>) -> Result<(), Error>,
) -> Result<(), Error> {
    rt.block_on(async {
        let mut tick = tokio::time::interval(Duration::from_millis(50));
        loop {
            tick.tick().await;
            let records = tracer.poll()?;
            each(tracer, records)?;
            if process::stop_requested() || deadline.is_some_and(|d| Instant::now() >= d) {
                break;
            }
        }
        Ok(())
    })
}
