//! The conntrack table: full or nearly, drops and failed inserts, DNS entries that point at a gone
//! pod, and the DNS entries' count.

use std::net::IpAddr;

use super::{Evidence, Finding, Severity, delete_entries_command, usage_percent};
use crate::{
    netns,
    node::{
        inspect::{ConntrackReport, Report},
        kubeproxy::DnsService,
    },
};

/// The conntrack findings of `r`.
pub(super) fn findings(r: &Report) -> Vec<Finding> {
    let c = &r.conntrack;
    let mut out: Vec<Finding> = [size(c), drops(c)].into_iter().flatten().collect();
    if let Some(s) = &r.dns_service {
        out.extend(stale_dns(c, s, &netns::exec_prefix(r.netns.as_deref())));
        out.push(Finding {
            severity: if c.dns_entries > 0 && c.dns_unreplied * 2 > c.dns_entries {
                Severity::Warning
            } else {
                Severity::Info
            },
            id: "conntrack-dns-entries",
            title: format!(
                "{} UDP conntrack entries to the DNS Service, {} unreplied, {} stale",
                c.dns_entries,
                c.dns_unreplied,
                c.dns_stale.len()
            ),
            evidence: vec![
                Evidence::TableSize(c.table),
                Evidence::UdpTimeouts(r.facts.udp_timeout, r.facts.udp_timeout_stream),
            ],
            action: None,
        });
    }
    out
}

/// A full (or 90 % full) table.
fn size(c: &ConntrackReport) -> Option<Finding> {
    let evidence = vec![Evidence::TableSize(c.table), Evidence::StatsTotal(c.total)];
    if c.table.max > 0 && c.table.count >= c.table.max {
        Some(Finding {
            severity: Severity::Error,
            id: "conntrack-full",
            title: "the conntrack table is full: new flows (every new DNS query's) are dropped".to_owned(),
            evidence,
            action: Some(
                "Find what fills it (`conntrack -L | awk '{print $1, $4, $5}' | sort | uniq -c | sort -n`), shorten UDP timeouts, raise nf_conntrack_max (in the initial namespace), or consider NodeLocal DNSCache to keep DNS off conntrack.".to_owned(),
            ),
        })
    } else if usage_percent(&c.table) >= 90.0 {
        Some(Finding {
            severity: Severity::Warning,
            id: "conntrack-nearly-full",
            title: format!(
                "the conntrack table is {:.0} % full",
                usage_percent(&c.table)
            ),
            evidence,
            action: Some(
                "Raise nf_conntrack_max or find what fills the table before it drops new flows."
                    .to_owned(),
            ),
        })
    } else {
        None
    }
}

/// Drops, failed inserts and evictions since boot, per CPU.
fn drops(c: &ConntrackReport) -> Option<Finding> {
    let t = &c.total;
    if t.drop == 0 && t.insert_failed == 0 && t.early_drop == 0 {
        return None;
    }
    let mut evidence = vec![Evidence::StatsTotal(*t)];
    evidence.extend(
        c.per_cpu
            .iter()
            .filter(|s| s.drop + s.insert_failed + s.early_drop > 0)
            .map(|s| Evidence::CpuDrops(*s)),
    );
    Some(Finding {
        severity: Severity::Warning,
        id: "conntrack-drops",
        title: format!(
            "conntrack dropped {} packets, failed {} inserts and evicted {} entries since boot (or namespace creation)",
            t.drop, t.insert_failed, t.early_drop
        ),
        evidence,
        action: Some(
            "drop/early_drop come from a full table; insert_failed from unresolved clashes (parallel A/AAAA over UDP: `options single-request-reopen`, or NodeLocal DNSCache). Watch the deltas with `tracer trace`.".to_owned(),
        ),
    })
}

/// DNS entries whose reply comes from an address that is no endpoint any more; `run` prefixes
/// the commands that delete them (the node's namespace).
fn stale_dns(c: &ConntrackReport, s: &DnsService, run: &str) -> Option<Finding> {
    if c.dns_stale.is_empty() {
        return None;
    }
    let mut gone: Vec<IpAddr> = c.dns_stale.iter().map(|e| e.reply.src).collect();
    gone.sort();
    gone.dedup();
    let mut evidence = vec![Evidence::Endpoints(s.endpoints.clone())];
    evidence.extend(c.dns_stale.iter().take(5).cloned().map(Evidence::Entry));
    if c.dns_stale.len() > 5 {
        evidence.push(Evidence::More(c.dns_stale.len() - 5));
    }
    let gone_text: Vec<String> = gone.iter().map(ToString::to_string).collect();
    let deletes: Vec<String> = gone
        .iter()
        .map(|ip| format!("`{}`", delete_entries_command(run, s.ip, *ip)))
        .collect();
    Some(Finding {
        severity: Severity::Error,
        id: "conntrack-stale-dns",
        title: format!(
            "{} UDP conntrack {} DNS clients to {} that {} no endpoint any more",
            c.dns_stale.len(),
            if c.dns_stale.len() == 1 {
                "entry sends"
            } else {
                "entries send"
            },
            gone_text.join(", "),
            if gone.len() == 1 { "is" } else { "are" }
        ),
        evidence,
        action: Some(format!(
            "A client that keeps its source port keeps hitting the gone pod until the entry expires. Delete them: {}",
            deletes.join(", ")
        )),
    })
}
