//! `tracer probe`: one batch of queries, a one-line summary and a line per lost query.

use std::time::Duration;

use super::{BatchResult, BatchSpec, Error, Outcome, query_batch, server_addr};
use crate::{
    cli::{FaultName, ProbeArgs},
    lab,
};

/// Runs `tracer probe`. Loss is a result, not an error: only a failure to send exits non-zero.
pub fn run(args: ProbeArgs) -> Result<(), Error> {
    if !(args.timeout.is_finite() && args.timeout > 0.0) {
        return Err(Error::Spec {
            reason: "the timeout must be a positive number of seconds",
        });
    }
    let mut spec = BatchSpec {
        names: args.names,
        qtypes: args.types,
        count: args.count,
        rate: args.rate,
        timeout: Duration::from_secs_f64(args.timeout),
        source_port: args.source_port,
        parallel_a_aaaa: args.parallel_a_aaaa,
    };
    let (netns, server) = if args.lab {
        let lab = lab::info(&args.prefix)
            .map_err(|source| Error::Lab {
                source: Box::new(source),
            })?
            .ok_or_else(|| Error::NoLab {
                prefix: args.prefix.clone(),
            })?;
        let client = lab.clients.first().ok_or_else(|| Error::NoLab {
            prefix: args.prefix.clone(),
        })?;
        if spec.source_port.is_none() && lab.stale_source_port.is_some() {
            spec.source_port = lab.stale_source_port;
            println!(
                "lab fault stale-conntrack: sending from its stale source port {}",
                spec.source_port.unwrap_or(0)
            );
        }
        if lab.faults.contains(&FaultName::ConntrackRace) && !spec.parallel_a_aaaa {
            spec.parallel_a_aaaa = true;
            println!("lab fault conntrack-race: sending A and AAAA in parallel from one socket");
        }
        let (ip, port) = args.server.unwrap_or((lab.service_ip, Some(lab.dns_port)));
        (Some(client.netns.clone()), server_addr(ip, port))
    } else {
        let (ip, port) = args.server.ok_or(Error::Spec {
            reason: "say --server IP[:PORT], or --lab",
        })?;
        (args.netns, server_addr(ip, port))
    };
    let result = query_batch(netns.as_deref(), server, &spec)?;
    println!("{}", summary(&result));
    for q in result.lost_queries() {
        let why = match &q.outcome {
            Outcome::Refused => "refused (ICMP port unreachable)".to_owned(),
            Outcome::SendFailed { error } => format!("not sent: {error}"),
            _ => "no answer".to_owned(),
        };
        println!(
            "  lost: id {:#06x} {} {} from port {} sent at +{:.3} s: {why}",
            q.id,
            q.name,
            q.qtype,
            q.source_port,
            q.sent_at.as_secs_f64()
        );
    }
    Ok(())
}

/// `sent 20, answered 20, lost 0 (0.0 %), p50 0.21 ms, p99 0.45 ms`.
pub fn summary(result: &BatchResult) -> String {
    let ms = |p| {
        result.latency_percentile(p).map_or_else(
            || "-".to_owned(),
            |d: Duration| format!("{:.2} ms", d.as_secs_f64() * 1000.0),
        )
    };
    let pct = if result.sent == 0 {
        0.0
    } else {
        100.0 * f64::from(result.lost) / f64::from(result.sent)
    };
    let mut line = format!(
        "sent {}, answered {}, lost {} ({pct:.1} %), p50 {}, p99 {}",
        result.sent,
        result.answered,
        result.lost,
        ms(50.0),
        ms(99.0)
    );
    if result.bad_answers > 0 {
        line.push_str(&format!(", {} bad answers", result.bad_answers));
    }
    line
}
