//! Tracing: kernel hooks -> ring buffer -> correlator -> per-query records -> summary.
//!
//! # Layout
//! - `Tracer` (here): a running trace of one Service; `poll` returns the completed queries.
//! - `batch`: a batch of DNS queries sent while the tracer watches.
//! - `metrics`: the `/metrics` endpoint of `trace --metrics`, fed from the completed queries.

use std::{
    collections::HashMap,
    net::{IpAddr, SocketAddr},
    path::PathBuf,
    time::{Duration, Instant},
};

use tracer_common::{config::Config, flow::flag};

mod batch;
mod expiry;
pub mod metrics;
mod rules;
mod service;
pub use batch::{Traced, TracedTraffic, progress_bar, traced_batch, traced_traffic};
use expiry::Expiries;
use rules::RuleTraces;
use service::{CreatedEntry, Endpoints};

use crate::{
    flow::{
        cache::Linker,
        correlate::{Context, Correlator},
        event::KernelEvent,
        names::Names,
        recent::Recent,
        record::{BackendEvidence, NetfilterBackend, QueryRecord, Stage, Verdict},
    },
    lab,
    links::{self, Change},
    netns,
    node::{
        self, DnsService, RuleCounter,
        conntrack::{self, CpuStats, EventKind},
    },
    probes::{
        plan::Tier,
        session::{Options, Session},
    },
    report::trace::{Latency, TraceSummary},
};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Measure(#[from] crate::measure::Error),
    #[error("the DNS query thread panicked")]
    Panicked,
    #[error(transparent)]
    Lab(#[from] lab::Error),
    #[error(transparent)]
    Session(#[from] crate::probes::session::Error),
    #[error(transparent)]
    Netns(#[from] netns::Error),
    #[error("failed to read conntrack state: {0}")]
    Conntrack(#[from] conntrack::Error),
    #[error("failed to read the node's rules: {0}")]
    Rules(#[from] node::inspect::Error),
    #[error("failed to trace the netfilter rules (--rules): {0}")]
    RuleTrace(#[from] crate::ruletrace::Error),
    #[error("failed to listen for metrics on {addr}: {source}")]
    Listen {
        addr: SocketAddr,
        source: std::io::Error,
    },
}

/// What to trace.
#[derive(Debug, Clone)]
pub struct Target {
    /// The DNS Service.
    pub service: SocketAddr,
    /// The namespace holding the node side of the pod links: (name, path); `None`: our own.
    pub links_netns: Option<(String, PathBuf)>,
    /// Namespaces to trace (inodes); empty: all.
    pub netns_filter: Vec<u32>,
    /// The Service as the node's rules describe it (endpoints, REJECT), when they do.
    pub rules: Option<DnsService>,
    /// The Service's IPv6 side as the node's ip6tables rules describe it (dual-stack and IPv6
    /// nodes), when they do.
    pub rules6: Option<DnsService>,
    /// A node-local DNS cache (NodeLocal DNSCache): the addresses it listens on (traced as DNS
    /// targets) and the Service it sends misses to; its queries are linked to the clients'.
    pub cache: Option<NodeCache>,
}

impl Target {
    /// The DNS targets besides the Service: its other families' cluster IPs, and a node-local
    /// cache's addresses and upstream Service.
    fn also_services(&self) -> Vec<IpAddr> {
        [&self.rules, &self.rules6]
            .into_iter()
            .flatten()
            .map(|r| r.ip)
            .chain(self.cache.iter().flat_map(|c| c.local_ips.iter().copied()))
            .chain(self.cache.iter().map(|c| c.upstream))
            .filter(|ip| *ip != self.service.ip())
            .collect()
    }
}

/// A node-local DNS cache the trace follows.
#[derive(Debug, Clone)]
pub struct NodeCache {
    /// The addresses it listens on (169.254.20.10, the kube-dns ClusterIP).
    pub local_ips: Vec<IpAddr>,
    /// The ClusterIP of the Service it sends misses to (`kube-dns-upstream`).
    pub upstream: IpAddr,
}

impl Target {
    /// The lab's node, Service and pods.
    pub fn lab(info: &lab::LabInfo) -> Result<Self, Error> {
        let mut netns_filter = vec![netns::inode(&netns::named(&info.node_netns))?];
        for pod in info.endpoints.iter().chain(&info.clients).chain(&info.pods) {
            netns_filter.push(netns::inode(&netns::named(&pod.netns))?);
        }
        let links = netns::named(&info.node_netns);
        // The endpoints are what the rules say now (a fault may have removed one), not the pods.
        let rules = node::dns_service(Some(&links))?;
        let rules6 = if info.ip_family.has_ipv6() {
            node::ipv6::dns_service6(Some(&links))?
        } else {
            None
        };
        Ok(Self {
            service: SocketAddr::new(info.client_service_ip(), info.dns_port),
            links_netns: Some((info.node_netns.clone(), links)),
            netns_filter,
            rules,
            rules6,
            cache: info.nodelocal.as_ref().map(|c| NodeCache {
                local_ips: c.local_ips.iter().map(|ip| IpAddr::from(*ip)).collect(),
                upstream: c.upstream_ip.into(),
            }),
        })
    }
}

/// How to trace.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Deep tier; `None`: the best available.
    pub tier: Option<Tier>,
    /// A record for every query.
    pub all: bool,
    /// Slow-answer threshold.
    pub slow: Duration,
    /// Unanswered after this.
    pub timeout: Duration,
    /// Only this pod IP.
    pub pod_ip: Option<IpAddr>,
    /// Netfilter's own tracing of DNS packets, naming the rule that decided each failed query.
    pub rules: bool,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            tier: None,
            all: false,
            slow: Duration::from_millis(100),
            timeout: Duration::from_secs(5),
            pod_ip: None,
            rules: false,
        }
    }
}

const CONNTRACK_REMEMBERED: usize = 4096;
/// How often the allocator is asked to give its free memory back (see [`trim_heap`]).
const TRIM_EVERY: Duration = Duration::from_secs(60);

/// Gives the allocator's free pages back to the kernel. A trace starved of CPU drains bigger
/// batches (up to a full ring buffer of records); glibc keeps the heap they grew into, and the
/// tracer's RSS would climb to the largest burst it ever saw and stay there.
fn trim_heap() {
    #[cfg(target_env = "gnu")]
    // SAFETY: malloc_trim takes no pointer and may run at any time.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// A running trace.
pub struct Tracer {
    session: Session,
    corr: Correlator,
    target: Target,
    links_inode: u32,
    started: Instant,
    last_scan: Instant,
    last_trim: Instant,
    ct_events: Option<conntrack::Events>,
    ct_entries: Recent<SocketAddr, CreatedEntry>,
    ct_start: Option<CpuStats>,
    rules_start: Vec<RuleCounter>,
    rule_traces: Option<RuleTraces>,
    /// The Service's endpoints over the trace.
    endpoints: Endpoints,
    /// The pod links' namespace's veths coming and going; `None` when the subscription failed
    /// (logged): then only the links found at the start are traced.
    link_changes: Option<links::Changes>,
    /// DNATed DNS entries conntrack destroyed, to name answers that came after theirs expired.
    expiries: Expiries,
    /// With a node-local cache: links the clients' queries to it with its queries upstream.
    cache: Option<Linker>,
    summary: TraceSummary,
}

/// Unix time in µs.
fn unix_now_us() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_micros() as u64
}

/// The node's `nf_conntrack_udp_timeout` (in the pod links' namespace, or here); `None`, logged,
/// when it cannot be read (conntrack not loaded).
fn udp_timeout(path: Option<&PathBuf>) -> Option<u32> {
    let file = std::path::Path::new("/proc/sys").join(expiry::UDP_TIMEOUT);
    let read = || std::fs::read_to_string(&file);
    let text = match path {
        Some(p) => netns::run_in(p, read).map_err(|e| e.to_string()),
        None => Ok(read()),
    }
    .and_then(|r| r.map_err(|e| e.to_string()));
    text.inspect_err(|e| log::debug!("{}: {e}", file.display()))
        .ok()
        .and_then(|t| t.trim().parse().ok())
}

fn monotonic_ns() -> u64 {
    // CLOCK_MONOTONIC is bpf_ktime_get_ns's clock; it cannot fail on Linux.
    nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC)
        .map(|t| t.tv_sec() as u64 * 1_000_000_000 + t.tv_nsec() as u64)
        .unwrap_or(0)
}

impl Tracer {
    /// Loads and attaches the probes and starts reading.
    pub fn start(target: Target, settings: &Settings) -> Result<Self, Error> {
        let config = Config {
            pod_ip: settings
                .pod_ip
                .map(crate::flow::correlate::raw_addr)
                .unwrap_or([0; 4]),
            netns_filter: u32::from(!target.netns_filter.is_empty()),
            export_all: u32::from(settings.all),
            dns_port: 53u16.to_be(),
            slow_ns: settings.slow.as_nanos() as u64,
            ..Config::default()
        };
        // Subscribed before the programs attach, so no link created meanwhile goes unseen.
        let mut link_changes = subscribe_links(target.links_netns.as_ref().map(|(_, p)| p));
        let session = Session::start(Options {
            config,
            tier: settings.tier,
            links_netns: target.links_netns.as_ref().map(|(_, p)| p.clone()),
            netns_filter: target.netns_filter.clone(),
            attach: true,
        })?;
        let links_inode = match &target.links_netns {
            Some((_, p)) => netns::inode(p)?,
            None => netns::inode(std::path::Path::new("/proc/self/ns/net"))?,
        };
        let links = target.links_netns.as_ref().map(|(_, p)| p.clone());
        let ct_events = in_netns(links.as_ref(), || {
            let ev = conntrack::Events::subscribe()?;
            ev.set_nonblocking(true)?;
            Ok(ev)
        })
        .ok();
        let ct_start = in_netns(links.as_ref(), || {
            conntrack::stats().map(|s| CpuStats::sum(&s))
        })
        .ok();
        let expiries = Expiries::new(udp_timeout(links.as_ref()));
        let unix_us = unix_now_us() as i64;
        let ctx = Context {
            service: Some(target.service.ip()),
            also_services: target.also_services(),
            dns_port: 53,
            endpoints: [&target.rules, &target.rules6]
                .into_iter()
                .flatten()
                .flat_map(DnsService::endpoint_ips)
                .collect(),
            service_rejects: [&target.rules, &target.rules6]
                .into_iter()
                .flatten()
                .any(|r| r.rejects),
            ipvs: target.rules.as_ref().is_some_and(DnsService::by_ipvs),
            drop_reasons: session.drop_reasons.clone(),
            clock_offset_us: unix_us - (monotonic_ns() / 1000) as i64,
            timeout_ns: settings.timeout.as_nanos() as u64,
        };
        let rules_start = target
            .rules
            .as_ref()
            .and_then(|svc| node::dns_counters(links.as_deref(), svc).ok())
            .unwrap_or_default();
        let rule_traces = match settings.rules {
            true => Some(RuleTraces::start(links.as_deref(), &rules_start)?),
            false => None,
        };
        if let Some(changes) = link_changes.as_mut() {
            changes.know(session.link_names.keys().copied());
        }
        let existing = match target.rules {
            Some(_) => in_netns(links.as_ref(), dnat_dns_entries).unwrap_or_else(|e| {
                log::warn!("stale conntrack entries from before the trace will not be named: {e}");
                HashMap::new()
            }),
            None => HashMap::new(),
        };
        let endpoints = Endpoints::start(
            target.service,
            target.links_netns.as_ref(),
            target.rules.as_ref(),
            existing,
            unix_now_us(),
        );
        let names = Names::new(links_inode, &session.link_names);
        let cache = target
            .cache
            .as_ref()
            .map(|c| Linker::new(c.local_ips.clone(), settings.timeout.as_micros() as u64));
        let summary = TraceSummary {
            plan: Some(session.plan.clone()),
            ..Default::default()
        };
        Ok(Self {
            session,
            corr: Correlator::new(ctx, names),
            target,
            links_inode,
            started: Instant::now(),
            last_scan: Instant::now(),
            last_trim: Instant::now(),
            ct_events,
            ct_entries: Recent::new(CONNTRACK_REMEMBERED),
            ct_start,
            rules_start,
            rule_traces,
            endpoints,
            link_changes,
            expiries,
            cache,
            summary,
        })
    }

    /// Attaches the TC programs to the pod links that appeared since the last poll and lets go
    /// of those that went.
    fn apply_link_changes(&mut self) -> Result<(), Error> {
        let Some(subscription) = self.link_changes.as_mut() else {
            return Ok(());
        };
        let changes = match subscription.read() {
            Ok(changes) => changes,
            Err(e) => {
                log::warn!("failed to read link notifications: {e}");
                return Ok(());
            }
        };
        for change in changes {
            match change {
                Change::Added(link) => {
                    if let Some(failed) = self.session.attach_link(&link)? {
                        log::warn!("TC programs on new pod link {}: {failed}", link.name);
                    }
                    let names = self.corr.names_mut();
                    names.learn_link(self.links_inode, link.index, &link.name);
                    log::info!("pod link {} (index {}) appeared", link.name, link.index);
                }
                Change::Removed { index, name } => {
                    if self.session.forget_link(index, &name) {
                        log::info!("pod link {name} (index {index}) went away");
                    }
                }
            }
        }
        self.summary.links_added = self.session.links_added;
        self.summary.links_removed = self.session.links_removed;
        Ok(())
    }

    /// The probes' plan as carried out.
    pub fn plan(&self) -> &crate::probes::plan::Plan {
        &self.session.plan
    }

    /// Pod links that appeared since the start and got the TC programs, and those that went
    /// (as of the last poll).
    pub fn links_changed(&self) -> (u64, u64) {
        (self.session.links_added, self.session.links_removed)
    }

    /// The kernel side's counters so far (every query, lost records, unparsed packets).
    pub fn counters(&self) -> Result<crate::probes::session::Counters, Error> {
        Ok(self.session.counters()?)
    }

    /// Conntrack's table and per-CPU statistics (summed) in the pod links' namespace, each
    /// `None`, logged, when it cannot be read.
    pub fn conntrack(&self) -> (Option<conntrack::Table>, Option<CpuStats>) {
        let links = self.target.links_netns.as_ref().map(|(_, p)| p);
        let table = in_netns(links, conntrack::table)
            .inspect_err(|e| log::debug!("conntrack table: {e}"))
            .ok();
        (table, self.ct_stats())
    }

    /// How long loading and attaching took.
    pub fn attach_time(&self) -> Duration {
        self.session.attach_time
    }

    fn ct_stats(&self) -> Option<CpuStats> {
        let links = self.target.links_netns.as_ref().map(|(_, p)| p);
        in_netns(links, || conntrack::stats().map(|s| CpuStats::sum(&s))).ok()
    }

    fn read_conntrack_events(&mut self) {
        let Some(ev) = self.ct_events.as_mut() else {
            return;
        };
        // Bounded as the rule trace's reads are (`ruletrace::READ_BUDGET`): a drain that never
        // empties under load would keep the trace from its stop request.
        for _ in 0..crate::ruletrace::READ_BUDGET {
            let Ok(batch) = ev.recv() else { break };
            if batch.is_empty() {
                break;
            }
            for e in batch {
                let o = &e.entry.orig;
                if o.proto != 17 || o.dport != 53 {
                    continue;
                }
                let (src, dst, rsrc) = (o.src, o.dst, e.entry.reply.src);
                let client = SocketAddr::new(src, o.sport);
                if e.kind == EventKind::Destroy {
                    if dst != rsrc {
                        let service = SocketAddr::new(dst, o.dport);
                        self.expiries
                            .destroyed(client, service, rsrc, unix_now_us());
                    }
                    continue;
                }
                if e.kind != EventKind::New {
                    continue;
                }
                let (note, dnat) = if dst != rsrc {
                    (
                        format!(
                            "entry {client} -> {}, DNAT to {}",
                            SocketAddr::new(dst, 53),
                            SocketAddr::new(rsrc, e.entry.reply.sport)
                        ),
                        Some(rsrc),
                    )
                } else {
                    (
                        format!("entry {client} -> {}, no NAT", SocketAddr::new(dst, 53)),
                        None,
                    )
                };
                let created = CreatedEntry {
                    note,
                    at_us: unix_now_us(),
                    dnat,
                };
                self.ct_entries.insert(client, created);
            }
        }
    }

    fn finish_record(&mut self, mut r: QueryRecord) -> QueryRecord {
        self.expiries.explain(&mut r);
        let created = self.ct_entries.get(&r.client);
        r.stale = self.endpoints.stale(&r, created);
        r.conntrack = match created {
            Some(c) => Some(c.note.clone()),
            None if self.ct_events.is_some() && r.verdict != Verdict::Answered => {
                Some("no conntrack entry was confirmed for this client socket (a dropped new flow leaves none)".to_owned())
            }
            None => None,
        };
        if r.verdict != Verdict::Answered
            && let Some(rt) = &self.rule_traces
        {
            r.rules = rt.path(&r.client);
        }
        self.summary.add(&r);
        r
    }

    /// Reads what the kernel exported and returns the queries it completed.
    pub fn poll(&mut self) -> Result<Vec<QueryRecord>, Error> {
        self.read(false)
    }

    /// `poll`; with `last`, every open rule path is handed out too (the trace is ending).
    fn read(&mut self, last: bool) -> Result<Vec<QueryRecord>, Error> {
        self.apply_link_changes()?;
        if let Some(now) = self.endpoints.poll() {
            self.corr.set_endpoints(now);
        }
        let mut events = Vec::new();
        // Decoded once here; a record that does not decode is counted as malformed by the session.
        self.session.drain(|e| {
            KernelEvent::try_from(&e)
                .map(|k| events.push(k))
                .inspect_err(|err| log::debug!("malformed kernel record: {err}"))
        });
        // Rule paths after the kernel's records: netfilter queues a rule's trace message
        // (nfnetlink, synchronously) before the packet is freed, so every drop drained above has
        // its path's messages waiting now. Read before the drain, a drop that came in between was
        // judged in this same poll, without its path, when the poll outlasted the hold time
        // (Debian 6.1 under qemu: polls of over a second on one vCPU with the kprobe tier).
        if let Some(rt) = self.rule_traces.as_mut() {
            match last {
                true => rt.flush()?,
                false => rt.poll()?,
            }
        }
        self.read_conntrack_events();
        if events.iter().any(|e| matches!(e, KernelEvent::Drop { .. }))
            && let Some(now) = self.ct_stats()
        {
            self.corr.conntrack_drops = self.ct_start.map_or(0, |s| u64::from(now.delta(&s).drop));
        }
        let mut out = Vec::new();
        for e in &events {
            out.extend(self.corr.push(e, self.links_inode));
        }
        let now = monotonic_ns();
        out.extend(self.corr.flush(now, false));
        if self.last_scan.elapsed() >= Duration::from_secs(1) {
            self.last_scan = Instant::now();
            let pending = self.session.pending()?;
            out.extend(self.corr.scan(&pending, now, self.links_inode));
        }
        if self.last_trim.elapsed() >= TRIM_EVERY {
            self.last_trim = Instant::now();
            trim_heap();
        }
        let out = out.into_iter().map(|r| self.finish_record(r)).collect();
        Ok(self.link_cache(out, false))
    }

    /// Holds and links the node-local cache's legs (`last`: releases everything).
    fn link_cache(&mut self, records: Vec<QueryRecord>, last: bool) -> Vec<QueryRecord> {
        match self.cache.as_mut() {
            Some(linker) => linker.push(records, unix_now_us(), last),
            None => records,
        }
    }

    /// Stops: the last records, then the summary. Dropping the tracer detaches every probe.
    pub fn finish(mut self) -> Result<(Vec<QueryRecord>, TraceSummary), Error> {
        let mut out = self.read(true)?;
        let now = monotonic_ns();
        let rest: Vec<QueryRecord> = self.corr.flush(now, true);
        let mut last: Vec<QueryRecord> = rest.into_iter().map(|r| self.finish_record(r)).collect();
        let pending = self.session.pending()?;
        let judged: Vec<QueryRecord> = self.corr.scan(&pending, now, self.links_inode);
        let judged_n = judged.len();
        last.extend(judged.into_iter().map(|r| self.finish_record(r)));
        // `read` linked what it returned; the last records, and every leg still held, now.
        out.extend(self.link_cache(last, true));
        self.summary.cache = self.cache.as_ref().map(|l| l.tally);
        let end = self.ct_stats();
        let links = self.target.links_netns.as_ref().map(|(_, p)| p.as_path());
        let rules_end = match &self.target.rules {
            Some(svc) => node::dns_counters(links, svc).unwrap_or_default(),
            None => Vec::new(),
        };
        let s = &mut self.summary;
        s.rule_counters = node::counter_deltas(&self.rules_start, &rules_end);
        attribute_backends(&mut out, &s.rule_counters);
        s.seconds = self.started.elapsed().as_secs_f64();
        s.counters = self.session.counters()?;
        s.latency = Latency::from_histogram(&self.session.latency_histogram()?);
        s.in_flight_at_end = pending
            .iter()
            .filter(|p| p.flags & flag::EVIDENCE == 0)
            .count()
            .saturating_sub(judged_n) as u64;
        s.tally = self.corr.tally;
        if let Some(rt) = &self.rule_traces {
            let (nft, legacy) = rt.counters();
            s.rule_trace = Some(nft);
            s.rule_trace_legacy = legacy;
            s.rule_trace_notes = rt.notes().to_vec();
        }
        (s.endpoint_changes, s.endpoint_changes_not_kept) = self.endpoints.changes();
        s.malformed_records = self.session.malformed_records;
        s.conntrack_events_lost = self.ct_events.as_ref().map(|e| e.lost()).unwrap_or(0);
        s.conntrack_delta = match (self.ct_start, end) {
            (Some(a), Some(b)) => Some(b.delta(&a)),
            _ => None,
        };
        Ok((out, self.summary.clone()))
    }
}

/// Names the backend of netfilter drops that nothing else placed (no verdict probe, freed at
/// `nf_hook_slow`) when the DROP/REJECT rules on the DNS path that moved are all in one backend:
/// rule counters are evidence on every kernel, where the drop location is not.
pub fn attribute_backends(records: &mut [QueryRecord], moved: &[RuleCounter]) {
    let mut backends = moved
        .iter()
        .filter(|r| r.rule.contains("-j DROP") || r.rule.contains("-j REJECT"))
        .map(|r| r.backend);
    let Some(first) = backends.next() else {
        return;
    };
    if backends.any(|b| b != first) {
        return;
    }
    let backend = NetfilterBackend::from(first);
    for d in records.iter_mut().filter_map(|r| r.drop.as_mut()) {
        if d.stage == Stage::Netfilter && d.backend.is_none() {
            d.backend = Some(backend);
            d.backend_from = Some(BackendEvidence::RuleCounters);
        }
    }
}

/// A subscription to the veths coming and going in the pod links' namespace (or here); `None`,
/// logged, when it fails.
fn subscribe_links(path: Option<&PathBuf>) -> Option<links::Changes> {
    let subscribe = || links::Changes::subscribe([]);
    let result = match path {
        Some(p) => netns::run_in(p, subscribe).map_err(|e| e.to_string()),
        None => Ok(subscribe()),
    }
    .and_then(|r| r.map_err(|e| e.to_string()));
    result
        .inspect_err(|e| log::warn!("new pod links will not be traced: {e}"))
        .ok()
}

/// The DNATed UDP/53 entries of the calling thread's namespace: client socket -> where the entry
/// sends it.
fn dnat_dns_entries() -> Result<HashMap<SocketAddr, IpAddr>, conntrack::Error> {
    Ok(conntrack::dump_udp(53)?
        .into_iter()
        .filter(conntrack::Entry::dnat)
        .map(|e| (SocketAddr::new(e.orig.src, e.orig.sport), e.reply.src))
        .collect())
}

/// Runs a conntrack query in the pod links' namespace (or here).
fn in_netns<T: Send>(
    path: Option<&PathBuf>,
    f: impl FnOnce() -> Result<T, conntrack::Error> + Send,
) -> Result<T, Error> {
    Ok(match path {
        Some(p) => netns::run_in(p, f)??,
        None => f()?,
    })
}
