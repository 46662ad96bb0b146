//! The lost queries' trace records and the node's findings, turned into causes ranked by how
//! many of the probe's queries each explains; each with the evidence that proves it and the
//! command that would resolve it.

use std::{
    collections::BTreeMap,
    net::{IpAddr, SocketAddr},
};

use super::checks::HostFacts;
use crate::{
    flow::{
        cause::Cause as LossCause,
        record::{CONFIRM_FAILED, Leg, QueryRecord, Stage},
        transport::Transport,
    },
    node::{Backend, RuleCounter, inspect::Report, inspect::Severity},
    report::{doctor::Cause, trace::TraceSummary},
};

/// What the causes are judged from.
pub struct Context<'a> {
    /// The node before the probe.
    pub report: &'a Report,
    /// The trace of the probe.
    pub summary: &'a TraceSummary,
    /// What doctor read beside inspect.
    pub facts: &'a HostFacts,
    /// Put before every fix command (`ip netns exec NODE ` on the lab).
    pub fix_prefix: String,
    /// The node's veth links that are down.
    pub down_links: Vec<String>,
}

/// What one lost query points to.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
enum Kind {
    /// A conntrack entry that outlived its endpoint sent it to a gone pod.
    StaleConntrack,
    /// Dropped at conntrack (a full table).
    ConntrackFull,
    /// conntrack could not insert the query's entry: A and AAAA sent at once from one socket
    /// clashed and the kernel could not resolve it.
    ConntrackRace,
    /// The answer came after its query's conntrack entry expired (from this pod): the DNAT could
    /// not be undone and the client refused it.
    ExpiredEntry(Option<IpAddr>),
    /// DNATed to an address that is no endpoint of the Service: stale rules.
    StaleRules(IpAddr),
    /// The Service has no endpoints: kube-proxy's REJECT.
    NoEndpoints,
    /// A netfilter rule dropped it (after DNAT: to this pod), over UDP or TCP.
    BlockingRule(Transport),
    /// The DNS server in this pod could not keep up: its socket's receive queue was full (the
    /// query refused there, or queued and never read).
    Overloaded(Option<IpAddr>),
    /// Nothing listens in the pod it was sent to.
    NotListening(Option<IpAddr>),
    /// The pod did not answer the node's neighbour resolution.
    PodUnreachable(Option<IpAddr>),
    /// Anything else: the trace's own words for it.
    Other(String),
}

/// The finding ids a kind explains (so they are not listed again as causes of their own).
fn explains(kind: &Kind) -> &'static [&'static str] {
    match kind {
        Kind::StaleConntrack => &["conntrack-stale-dns"],
        Kind::ConntrackFull => &["conntrack-full", "conntrack-nearly-full", "conntrack-drops"],
        Kind::ConntrackRace => &["conntrack-drops"],
        Kind::StaleRules(_) => &[
            "iptables-mixed",
            "iptables-stale",
            "iptables-default-differs",
        ],
        // Without endpoints every DNS entry's pod is "no endpoint any more".
        Kind::NoEndpoints => &[
            "dns-no-endpoints",
            "dns6-no-endpoints",
            "conntrack-stale-dns",
        ],
        Kind::BlockingRule(_) => &["dns-blocking-rule"],
        _ => &[],
    }
}

/// What the lost queries are judged against: the Service as the rules say now, and the pods the
/// node's stale DNS conntrack entries still send clients to.
struct Judge {
    endpoints: Vec<IpAddr>,
    rejects: bool,
    stale_entries_to: Vec<IpAddr>,
    /// Endpoints only another backend's rules (or kube-proxy table) hold: stale rules' targets.
    elsewhere: Vec<IpAddr>,
}

fn classify(r: &QueryRecord, j: &Judge) -> Kind {
    let stage = r.drop.as_ref().map(|d| d.stage);
    let icmp = r.icmp.as_ref().map(|i| i.what.as_str());
    let (endpoints, rejects) = (j.endpoints.as_slice(), j.rejects);
    let target = stale_target(r, endpoints);
    if r.stale.is_some() {
        return Kind::StaleConntrack;
    }
    // A stale ruleset's target first: its DNAT leaves entries that look stale too.
    if let Some(ip) = target.filter(|ip| j.elsewhere.contains(ip)) {
        return Kind::StaleRules(ip);
    }
    if r.endpoint.is_some_and(|e| j.stale_entries_to.contains(&e)) {
        return Kind::StaleConntrack;
    }
    // On the answer leg, the conntrack stage is an entry that expired before its answer came
    // (trace/expiry.rs); a full table refuses the query's new flow.
    if stage == Some(Stage::Conntrack) {
        if r.drop.as_ref().is_some_and(|d| d.leg == Leg::Answer) {
            return Kind::ExpiredEntry(r.endpoint);
        }
        if r.drop.as_ref().is_some_and(|d| d.reason == CONFIRM_FAILED) {
            return Kind::ConntrackRace;
        }
        return Kind::ConntrackFull;
    }
    if let Some(ip) = target {
        return Kind::StaleRules(ip);
    }
    if stage == Some(Stage::Neighbour) || icmp.is_some_and(|w| w.contains("host unreachable")) {
        return Kind::PodUnreachable(r.endpoint);
    }
    let full_queue = r.drop.as_ref().is_some_and(|d| {
        d.stage == Stage::Socket && (d.socket.is_some() || d.reason == "SOCKET_RCVBUFF")
    });
    if full_queue || matches!(LossCause::of(r), LossCause::Queued { .. }) {
        return Kind::Overloaded(r.endpoint);
    }
    if stage == Some(Stage::Socket) || (r.endpoint.is_some() && icmp.is_some()) {
        return Kind::NotListening(r.endpoint);
    }
    if r.endpoint.is_none() && rejects && (stage == Some(Stage::Netfilter) || icmp.is_some()) {
        return Kind::NoEndpoints;
    }
    if stage == Some(Stage::Netfilter) {
        return Kind::BlockingRule(r.transport);
    }
    Kind::Other(LossCause::of(r).to_string())
}

/// The address a query was DNATed to that is no endpoint of the Service: its endpoint, or the
/// pod its drop names as none (a stale rule's target never reached a pod link).
fn stale_target(r: &QueryRecord, endpoints: &[IpAddr]) -> Option<IpAddr> {
    if let Some(ep) = r.endpoint
        && !endpoints.is_empty()
        && !endpoints.contains(&ep)
    {
        return Some(ep);
    }
    let why = &r.drop.as_ref()?.why;
    let (before, _) = why.split_once(" is not an endpoint of the Service")?;
    before.rsplit("; ").next()?.parse().ok()
}

/// The causes, ranked: those explaining lost queries by how many, then the node's errors and
/// warnings (inspect's findings) that explain none.
pub fn causes(ctx: &Context, failed: &[&QueryRecord]) -> Vec<Cause> {
    let (endpoints, rejects) = match &ctx.report.dns_service {
        Some(s) => (s.endpoint_ips(), s.rejects),
        None => (Vec::new(), false),
    };
    let elsewhere = ctx
        .report
        .dns_by_backend
        .iter()
        .flat_map(|d| d.service.endpoint_ips())
        .filter(|ip| !endpoints.contains(ip))
        .collect();
    let judge = Judge {
        endpoints,
        rejects,
        elsewhere,
        stale_entries_to: ctx
            .report
            .conntrack
            .dns_stale
            .iter()
            .map(|e| e.reply.src)
            .collect(),
    };
    let mut groups: BTreeMap<Kind, Vec<&QueryRecord>> = BTreeMap::new();
    for r in failed {
        groups.entry(classify(r, &judge)).or_default().push(r);
    }
    // conntrack's drop statistics count since boot: a cause only when they rose during the probe.
    let ct_rose = ctx
        .summary
        .conntrack_delta
        .is_some_and(|d| d.drop + d.insert_failed + d.early_drop > 0);
    let mut out: Vec<Cause> = groups
        .iter()
        .map(|(kind, records)| cause(ctx, kind, records))
        .collect();
    out.sort_by_key(|c| std::cmp::Reverse(c.queries));
    let explained: Vec<&str> = groups.keys().flat_map(explains).copied().collect();
    out.extend(
        ctx.report
            .findings
            .iter()
            .filter(|f| f.severity <= Severity::Warning && !explained.contains(&f.id))
            .filter(|f| f.id != "conntrack-drops" || ct_rose)
            .map(|f| Cause {
                id: f.id.to_owned(),
                title: f.title.clone(),
                queries: 0,
                evidence: f.evidence.iter().take(4).map(ToString::to_string).collect(),
                fix: f.action.clone(),
            }),
    );
    out
}

/// `10.244.0.10 (20), 10.244.0.11 (20)`: the pods the queries were sent to after DNAT.
fn by_pod(records: &[&QueryRecord]) -> String {
    let mut n: BTreeMap<String, u64> = BTreeMap::new();
    for r in records {
        let key = r
            .endpoint
            .map_or("before DNAT".to_owned(), |e| e.to_string());
        *n.entry(key).or_default() += 1;
    }
    let parts: Vec<String> = n.iter().map(|(k, v)| format!("{k} ({v})")).collect();
    parts.join(", ")
}

/// The first record's drop or ICMP error, in the trace's words.
fn how(records: &[&QueryRecord]) -> String {
    let Some(r) = records.first() else {
        return String::new();
    };
    match (&r.drop, &r.icmp) {
        (Some(d), _) => format!(
            "{} {} at {} in {}: {}",
            d.stage, d.reason, d.location, d.at, d.why
        ),
        (None, Some(i)) => format!("ICMP {} from {}", i.what, i.by),
        (None, None) => LossCause::of(r).to_string(),
    }
}

/// The iptables binary of a backend.
fn iptables(b: Backend) -> &'static str {
    match b {
        Backend::Nft => "iptables-nft",
        Backend::Legacy => "iptables-legacy",
    }
}

/// The DROP and REJECT rules on the DNS path whose counters moved during the probe (not
/// kube-proxy's no-endpoints REJECT), that match `transport` (a rule naming no protocol is a
/// UDP query's).
fn moved_blocking(s: &TraceSummary, transport: Transport) -> Vec<&RuleCounter> {
    s.rule_counters
        .iter()
        .filter(|r| {
            (r.rule.contains("-j DROP") || r.rule.contains("-j REJECT"))
                && !r.rule.contains("has no endpoints")
                && r.rule.contains("-p tcp") == (transport == Transport::Tcp)
        })
        .collect()
}

/// `POD`'s delete command: a new pod gets a new network namespace, link and server.
fn delete_pod(ip: Option<IpAddr>) -> String {
    match ip {
        Some(ip) => format!("kubectl -n kube-system delete pod --field-selector status.podIP={ip}"),
        None => "kubectl -n kube-system get pods -l k8s-app=kube-dns -o wide".to_owned(),
    }
}

fn cause(ctx: &Context, kind: &Kind, records: &[&QueryRecord]) -> Cause {
    let n = records.len() as u64;
    let p = &ctx.fix_prefix;
    let mut evidence = vec![format!("{n} queries: {}", how(records))];
    match kind {
        Kind::StaleRules(ip) => evidence.push(format!("sent to: {ip} ({n})")),
        Kind::NoEndpoints => {}
        _ => evidence.push(format!("sent to: {}", by_pod(records))),
    }
    let (id, title, fix) = match kind {
        Kind::StaleConntrack => stale_conntrack(ctx, records, &mut evidence),
        Kind::ConntrackFull => conntrack_full(ctx, &mut evidence),
        Kind::ExpiredEntry(ip) => expired_entry(ctx, *ip, &mut evidence),
        Kind::Overloaded(ip) => overloaded(*ip),
        Kind::StaleRules(ip) => stale_rules(ctx, *ip, &mut evidence),
        Kind::NoEndpoints => {
            let svc = ctx.report.dns_service.as_ref();
            evidence.extend(
                ctx.report
                    .counters
                    .iter()
                    .filter(|c| c.rule.contains("has no endpoints"))
                    .map(|c| format!("{} {}: {}", c.backend, c.table, c.rule)),
            );
            if evidence.len() == 1 {
                // No counter on it (kube-proxy's nftables mode): inspect's finding says it.
                evidence.extend(
                    ctx.report
                        .findings
                        .iter()
                        .filter(|f| f.id == "dns-no-endpoints")
                        .flat_map(|f| f.evidence.iter().map(ToString::to_string)),
                );
            }
            (
                "no-endpoints",
                format!(
                    "the DNS Service {} has no endpoints: kube-proxy's rules reject every query",
                    svc.map_or("?".to_owned(), |s| s.socket().to_string())
                ),
                Some("kubectl -n kube-system get endpointslices -l kubernetes.io/service-name=kube-dns; kubectl -n kube-system rollout restart deployment/coredns".to_owned()),
            )
        }
        Kind::ConntrackRace => conntrack_race(ctx, &mut evidence),
        Kind::BlockingRule(transport) => blocking_rule(ctx, *transport, &mut evidence),
        Kind::NotListening(ip) => (
            "pod-not-listening",
            format!(
                "nothing listens on port 53 in the DNS pod {}",
                ip.map_or("?".to_owned(), |i| i.to_string())
            ),
            Some(delete_pod(*ip)),
        ),
        Kind::PodUnreachable(ip) => {
            evidence.extend(
                ctx.down_links
                    .iter()
                    .map(|l| format!("pod link {l} is down on the node")),
            );
            let fix = match ctx.down_links.as_slice() {
                [] => delete_pod(*ip),
                links => links
                    .iter()
                    .map(|l| format!("{p}ip link set dev {l} up"))
                    .collect::<Vec<_>>()
                    .join("; "),
            };
            (
                "pod-unreachable",
                format!(
                    "the DNS pod {} does not answer the node's neighbour resolution (its link is down)",
                    ip.map_or("?".to_owned(), |i| i.to_string())
                ),
                Some(fix),
            )
        }
        Kind::Other(what) => (
            "unexplained",
            format!("queries lost: {what}"),
            Some(
                "tracer trace --rules --duration 30   (the netfilter rule of each lost query)"
                    .to_owned(),
            ),
        ),
    };
    Cause {
        id: id.to_owned(),
        title,
        queries: n,
        evidence,
        fix,
    }
}

fn blocking_rule(
    ctx: &Context,
    transport: Transport,
    evidence: &mut Vec<String>,
) -> (&'static str, String, Option<String>) {
    let moved = moved_blocking(ctx.summary, transport);
    evidence.extend(moved.iter().map(|r| {
        format!(
            "rule: {} {}: {} (+{} packets during the probe)",
            r.backend, r.table, r.rule, r.packets
        )
    }));
    let fix: Vec<String> = moved
        .iter()
        .map(|r| {
            let rule = r.rule.strip_prefix("-A ").unwrap_or(&r.rule);
            let p = &ctx.fix_prefix;
            format!("{p}{} -t {} -D {rule}", iptables(r.backend), r.table)
        })
        .collect();
    let (id, title) = match transport {
        Transport::Udp => (
            "blocking-rule",
            "a netfilter rule drops DNS queries on their way to the CoreDNS pods",
        ),
        Transport::Tcp => (
            "tcp-blocked",
            "a netfilter rule drops DNS over TCP to the CoreDNS pods: lookups whose UDP answer is truncated (large answers) get nothing",
        ),
    };
    (
        id,
        title.to_owned(),
        Some(if fix.is_empty() {
            "tracer trace --rules --duration 30   (names the rule; no counter moved)".to_owned()
        } else {
            fix.join("; ")
        }),
    )
}

fn stale_conntrack(
    ctx: &Context,
    records: &[&QueryRecord],
    evidence: &mut Vec<String>,
) -> (&'static str, String, Option<String>) {
    let p = &ctx.fix_prefix;
    let stale = records.iter().find_map(|r| r.stale.as_ref());
    evidence.extend(stale.map(|s| format!("{s}")));
    let pod = stale
        .map(|s| s.endpoint)
        .or_else(|| records.iter().find_map(|r| r.endpoint));
    let entries: Vec<_> = ctx
        .report
        .conntrack
        .dns_stale
        .iter()
        .filter(|e| Some(e.reply.src) == pod)
        .collect();
    evidence.extend(
        entries
            .iter()
            .take(3)
            .map(|e| format!("conntrack entry: {}", crate::node::findings::entry_line(e))),
    );
    let fix = match (stale, entries.first()) {
        (Some(s), _) => Some(s.clear_command()),
        (None, Some(e)) => Some(crate::node::findings::delete_entries_command(
            p,
            e.orig.dst,
            e.reply.src,
        )),
        (None, None) => None,
    };
    (
        "stale-conntrack",
        format!(
            "a conntrack entry outlived its endpoint: queries go to the removed pod {}",
            pod.map_or("?".to_owned(), |i| i.to_string())
        ),
        fix,
    )
}

fn overloaded(ip: Option<IpAddr>) -> (&'static str, String, Option<String>) {
    let pod = ip.map_or("the DNS pod".to_owned(), |i| i.to_string());
    (
        "server-overloaded",
        format!("the DNS server in {pod} cannot keep up: its socket's receive queue was full"),
        Some(format!(
            "kubectl -n kube-system scale deployment/coredns --replicas=$(( $(kubectl -n kube-system get deployment coredns -o jsonpath='{{.spec.replicas}}') + 1 ))   (and see what slows {pod}: its CPU limit, its upstream)"
        )),
    )
}

fn expired_entry(
    ctx: &Context,
    ip: Option<IpAddr>,
    evidence: &mut Vec<String>,
) -> (&'static str, String, Option<String>) {
    let timeout = ctx.report.facts.udp_timeout;
    evidence.push(format!(
        "nf_conntrack_udp_timeout: {} s (the kernel's default is 30 s)",
        timeout.map_or("?".to_owned(), |t| t.to_string())
    ));
    let pod = ip.map_or("the DNS pod".to_owned(), |i| i.to_string());
    (
        "conntrack-expired",
        format!(
            "answers from {pod} came after their conntrack entry expired: the node could not undo the DNAT and the clients refused them"
        ),
        Some(format!(
            "{}sysctl -w net.netfilter.nf_conntrack_udp_timeout=30   (and find why {pod} answers so slowly: CPU throttling, an overloaded upstream)",
            ctx.fix_prefix
        )),
    )
}

fn conntrack_race(
    ctx: &Context,
    evidence: &mut Vec<String>,
) -> (&'static str, String, Option<String>) {
    if let Some(d) = &ctx.summary.conntrack_delta {
        evidence.push(format!(
            "conntrack statistics during the probe: insert_failed +{}, drop +{}, clash_resolve +{}",
            d.insert_failed, d.drop, d.clash_resolve
        ));
    }
    (
        "conntrack-race",
        "A and AAAA sent at once from one socket (glibc) race in conntrack: the clash drops one of the pair"
            .to_owned(),
        // The pods' resolver option (their resolv.conf, from the pod spec), or a cache on the
        // node that takes the pods' queries before conntrack's DNAT.
        Some("set options single-request-reopen in the pods' resolv.conf (spec.dnsConfig.options: [{name: single-request-reopen}]), or run NodeLocal DNSCache".to_owned()),
    )
}

fn conntrack_full(
    ctx: &Context,
    evidence: &mut Vec<String>,
) -> (&'static str, String, Option<String>) {
    let t = &ctx.report.conntrack.table;
    evidence.push(format!(
        "conntrack table: {} of max {} entries ({:.1} %)",
        t.count, t.max, ctx.report.conntrack.usage_percent
    ));
    if let Some(d) = &ctx.summary.conntrack_delta {
        evidence.push(format!(
            "conntrack statistics during the probe: drop +{}, insert_failed +{}, early_drop +{}",
            d.drop, d.insert_failed, d.early_drop
        ));
    }
    evidence.push(ctx.facts.kmsg_line());
    (
        "conntrack-full",
        "the conntrack table is full: the kernel drops every new flow, DNS queries included"
            .to_owned(),
        // The limit is the initial namespace's (read-only in the others): no namespace prefix.
        Some(format!(
            "sysctl -w net.netfilter.nf_conntrack_max={}",
            (u64::from(t.max) * 2).max(262_144)
        )),
    )
}

fn stale_rules(
    ctx: &Context,
    ip: IpAddr,
    evidence: &mut Vec<String>,
) -> (&'static str, String, Option<String>) {
    let r = ctx.report;
    for d in &r.dns_by_backend {
        let eps: Vec<String> = d
            .service
            .endpoints
            .iter()
            .map(SocketAddr::to_string)
            .collect();
        evidence.push(format!(
            "{} rules: {} -> {}",
            d.backend,
            d.service.socket(),
            if eps.is_empty() {
                "no endpoints".to_owned()
            } else {
                eps.join(", ")
            }
        ));
    }
    let stale = r.backends.verdict.stale.or_else(|| {
        r.dns_by_backend
            .iter()
            .find(|d| d.service.endpoint_ips().contains(&ip))
            .map(|d| d.backend)
    });
    let fix = stale.map(|b| {
        format!(
            "{}{} -t nat -F KUBE-SERVICES   (the stale {b} rules; kube-proxy writes the other backend)",
            ctx.fix_prefix,
            iptables(b)
        )
    });
    (
        "stale-rules",
        format!(
            "queries are DNATed to {ip}, no endpoint of the Service: stale kube-proxy rules in the {} backend",
            stale.map_or("other".to_owned(), |b| b.to_string())
        ),
        fix,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The lab's Service: two endpoints, nothing stale.
    fn judge() -> Judge {
        Judge {
            endpoints: vec![
                "10.244.0.10".parse().unwrap(),
                "10.244.0.11".parse().unwrap(),
            ],
            rejects: false,
            stale_entries_to: Vec::new(),
            elsewhere: Vec::new(),
        }
    }

    // A query conntrack could not insert (the tracer's CONFIRM_FAILED: an unresolved A/AAAA
    // clash) is the race; any other drop at conntrack on the query's way is a full table.
    #[test]
    fn a_failed_conntrack_insert_is_the_race_not_a_full_table() {
        let mut r = QueryRecord::dropped(1, Stage::Conntrack);
        assert_eq!(classify(&r, &judge()), Kind::ConntrackFull);
        if let Some(d) = r.drop.as_mut() {
            d.reason = CONFIRM_FAILED.to_owned();
        }
        assert_eq!(classify(&r, &judge()), Kind::ConntrackRace);
    }

    // A netfilter drop of a TCP query is the TCP leg's rule, told apart from a UDP one, and each
    // takes only its own protocol's moved rules as evidence.
    #[test]
    fn a_netfilter_drop_names_its_transport_and_its_rules() {
        let mut r = QueryRecord::dropped(1, Stage::Netfilter);
        assert_eq!(classify(&r, &judge()), Kind::BlockingRule(Transport::Udp));
        r.transport = Transport::Tcp;
        assert_eq!(classify(&r, &judge()), Kind::BlockingRule(Transport::Tcp));
        let rule = |text: &str| RuleCounter {
            backend: Backend::Nft,
            table: "filter".to_owned(),
            rule: text.to_owned(),
            packets: 3,
            bytes: 180,
        };
        let summary = TraceSummary {
            rule_counters: vec![
                rule("-A FORWARD -d 10.244.0.10/32 -p udp -m udp --dport 53 -j DROP"),
                rule("-A FORWARD -d 10.244.0.10/32 -p tcp -m tcp --dport 53 -j DROP"),
                rule("-A KUBE-SEP-X -p udp -j DNAT --to-destination 10.244.0.10:53"),
            ],
            ..TraceSummary::default()
        };
        let on = |t| -> Vec<&str> {
            moved_blocking(&summary, t)
                .iter()
                .map(|r| r.rule.as_str())
                .collect()
        };
        assert_eq!(
            on(Transport::Udp),
            ["-A FORWARD -d 10.244.0.10/32 -p udp -m udp --dport 53 -j DROP"]
        );
        assert_eq!(
            on(Transport::Tcp),
            ["-A FORWARD -d 10.244.0.10/32 -p tcp -m tcp --dport 53 -j DROP"]
        );
    }
}
