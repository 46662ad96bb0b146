//! `tracer doctor`: where the probe goes from and to (the lab's client pod, `--netns`, or a pod
//! namespace found on the node), the diagnosis, its page (or JSON) and its report.

use std::{
    io::{IsTerminal as _, Write as _},
    net::SocketAddr,
    time::Duration,
};

use super::{Error, lab_info};
use crate::{
    cli::{DoctorArgs, OutputFormat},
    doctor::{self, Options},
    measure::{BatchSpec, server_addr},
    node,
    report::{
        doctor::Health,
        document::{Document, NodeFacts},
    },
    trace::Target,
};

/// The tracer judges a query this much after the client stopped waiting for it: the kernel's
/// last word on it (a neighbour failure, a late drop) comes in that time.
const TRACE_GRACE: Duration = Duration::from_millis(500);

/// Lookups over TCP beside the UDP probe: a TCP leg dropped (a policy allowing only UDP) shows.
const TCP_QUERIES: u32 = 4;

/// The probe and what the tracer follows: the lab's, or this node's.
fn options(args: &DoctorArgs, spec: BatchSpec) -> Result<Options, Error> {
    let trace_timeout = spec.timeout + TRACE_GRACE;
    if args.lab {
        let info = lab_info(&args.prefix)?;
        let client = info.clients.first().ok_or_else(|| Error::NoLab {
            prefix: args.prefix.clone(),
        })?;
        let mut spec = spec;
        // stale-conntrack's entry is one flow's: its source port shows it (as `probe --lab`).
        spec.source_port = spec.source_port.or(info.stale_source_port);
        let mut target = Target::lab(&info)?;
        if let Some((ip, port)) = args.server {
            target.service = server_addr(ip, port);
        }
        return Ok(Options {
            client_netns: client.netns.clone(),
            node_netns: Some(info.node_netns.clone()),
            target,
            spec,
            tcp_queries: TCP_QUERIES,
            trace_timeout,
        });
    }
    let rules = node::dns_service(None)?;
    let service = match (args.server, &rules) {
        (Some((ip, port)), _) => server_addr(ip, port),
        (None, Some(s)) => SocketAddr::new(s.ip, s.port),
        (None, None) => return Err(Error::NoService),
    };
    let client_netns = match &args.netns {
        Some(n) => n.clone(),
        None => doctor::find_pod_netns(None)?,
    };
    Ok(Options {
        client_netns,
        node_netns: None,
        target: Target {
            service,
            links_netns: None,
            netns_filter: Vec::new(),
            rules: rules.filter(|s| s.ip == service.ip()),
            rules6: None,
            cache: None,
        },
        spec,
        tcp_queries: TCP_QUERIES,
        trace_timeout,
    })
}

/// Runs `tracer doctor`; the verdict is the result (`main` makes it the exit code).
pub fn run(args: DoctorArgs) -> Result<Health, Error> {
    if !(args.timeout.is_finite() && args.timeout > 0.0) {
        return Err(Error::Usage {
            reason: "the timeout must be a positive number of seconds",
        });
    }
    if !(args.rate.is_finite() && args.rate > 0.0) || args.count == 0 {
        return Err(Error::Usage {
            reason: "the rate and count must be positive",
        });
    }
    let spec = BatchSpec {
        count: args.count,
        rate: args.rate,
        timeout: Duration::from_secs_f64(args.timeout),
        // A and AAAA at once from one socket, as glibc pods send them (unless single-request).
        parallel_a_aaaa: !args.single_request,
        ..BatchSpec::default()
    };
    let o = options(&args, spec)?;
    let found = doctor::run(&o)?;
    let d = &found.diagnosis;
    let mut stdout = std::io::stdout().lock();
    match args.out.format {
        OutputFormat::Text => write!(stdout, "{}", d.text(std::io::stdout().is_terminal()))?,
        OutputFormat::Json => {
            serde_json::to_writer_pretty(&mut stdout, d)?;
            writeln!(stdout)?;
        }
    }
    if let Some(path) = &args.out.report {
        let mut doc = Document::new("doctor")?.with_trace(found.summary.clone(), &found.failed);
        doc.node = Some(NodeFacts::from_inspect(&found.node));
        doc.doctor = Some(d.clone());
        doc.write(path)?;
        if args.out.format == OutputFormat::Text {
            writeln!(stdout, "report written to {}", path.display())?;
        }
    }
    Ok(d.health)
}
