//! The versioned report: one JSON document that `probe`, `trace`, `inspect` and `validate` write
//! with `--report FILE` and `compare` reads. A reader refuses any other schema version.

use std::{
    collections::BTreeMap,
    fmt::Write as _,
    net::SocketAddr,
    path::{Path, PathBuf},
    time::Duration,
};

use comfy_table::{Table, presets::UTF8_BORDERS_ONLY};
use serde::{Deserialize, Serialize};

use crate::{
    flow::{cause::Cause, record::QueryRecord as TraceRecord},
    measure::{BatchResult, BatchSpec, Outcome, SentQuery},
    node::{DnsService, conntrack::CpuStats, inspect},
    probes::plan::Tier,
    report::trace::{TraceSummary, endpoint_key, line},
    report::validation::Validation,
};

/// The schema version this tracer writes and reads. Bump it on any change a reader of the
/// previous version would misread (a renamed or re-typed field), not for added optional fields.
pub const SCHEMA_VERSION: u32 = 1;

/// What failed while writing or reading a report.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("failed to write the report {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("failed to read the report {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("failed to encode the report: {source}")]
    Encode { source: serde_json::Error },
    #[error("{path} is not a tracer report: {source}")]
    Decode {
        path: PathBuf,
        source: serde_json::Error,
    },
    #[error("{path} is larger than {max} bytes: it is not a tracer report")]
    TooLarge { path: PathBuf, max: u64 },
    #[error("{path} has no schema_version: it is not a tracer report")]
    NoVersion { path: PathBuf },
    #[error(
        "{path} has report schema version {found}, but this tracer ({tool}) reads only version {supported}: re-create the report with this tracer"
    )]
    Version {
        path: PathBuf,
        found: u64,
        supported: u32,
        tool: String,
    },
    #[error("failed to read the kernel release: {source}")]
    Uname { source: nix::errno::Errno },
    #[error("failed to inspect the node for the report: {source}")]
    Inspect { source: Box<inspect::Error> },
}

/// The tool that wrote a report.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Tool {
    /// `tracer`.
    pub name: String,
    /// The crate version.
    pub version: String,
}

/// One report.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Document {
    /// [`SCHEMA_VERSION`] when written.
    pub schema_version: u32,
    /// Who wrote it.
    pub tool: Tool,
    /// The command that wrote it: `probe`, `trace`, `inspect`, `validate` or `doctor`.
    pub command: String,
    /// The running kernel's release (`uname -r`).
    pub kernel: String,
    /// When it was written (RFC 3339, UTC).
    pub created: String,
    /// The hook tier the tracer had (`fentry`, `kprobe`, `tracepoint`), when it ran.
    pub tier: Option<Tier>,
    /// The node as `tracer inspect` saw it.
    pub node: Option<NodeFacts>,
    /// The probe's result (`probe`).
    pub probe: Option<ProbeReport>,
    /// The trace summary (`probe` and `trace`).
    pub trace: Option<TraceSummary>,
    /// The trace records of every query that failed (or was slow).
    pub failed_queries: Vec<TraceRecord>,
    /// Conntrack statistics change over the run, in the node's namespace.
    pub conntrack_delta: Option<CpuStats>,
    /// The scenarios `validate` ran.
    pub validate: Option<Validation>,
    /// Set when the run happened in a virtual machine (`validate --kernel`): `kernel` is then the
    /// guest's. Absent (null) for a run on the machine itself; reports written before this field
    /// existed read as such.
    #[serde(default)]
    pub vm: Option<VmRun>,
    /// What `doctor` found (absent in other commands' reports and in reports written before it).
    #[serde(default)]
    pub doctor: Option<crate::report::doctor::Diagnosis>,
    /// The host name of the machine that wrote it (`uname -n`), which `fleet` names the node by;
    /// absent from reports written before it existed.
    #[serde(default)]
    pub hostname: Option<String>,
}

/// How a report's run happened in a virtual machine.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct VmRun {
    /// The kernel asked for: an alias, a Debian package name, a `.deb` or a directory.
    pub spec: String,
    /// The guest kernel's release.
    pub release: String,
    /// The host kernel release that ran the VM.
    pub host_kernel: String,
    /// qemu's accelerator: `tcg` (emulation) makes wall times 5-20x the host's.
    pub accel: String,
    /// Guest vCPUs.
    pub cpus: u32,
    /// Guest memory in MiB.
    pub memory_mib: u32,
    /// Seconds from starting qemu until the command started.
    pub boot_s: f64,
    /// Seconds the VM ran, boot included.
    pub wall_s: f64,
}

impl VmRun {
    /// `qemu tcg, 1 vCPU, kernel 6.1.0-50-amd64 (--kernel 6.1)`.
    pub fn describe(&self) -> String {
        format!(
            "VM: qemu {}, {} vCPU, kernel {} (--kernel {})",
            self.accel, self.cpus, self.release, self.spec
        )
    }
}

impl Document {
    /// An empty report of `command`, stamped with this tracer, kernel and time.
    pub fn new(command: &str) -> Result<Self, Error> {
        let uname = nix::sys::utsname::uname().map_err(|source| Error::Uname { source })?;
        Ok(Self {
            schema_version: SCHEMA_VERSION,
            tool: Tool {
                name: env!("CARGO_PKG_NAME").to_owned(),
                version: env!("CARGO_PKG_VERSION").to_owned(),
            },
            command: command.to_owned(),
            kernel: uname.release().to_string_lossy().into_owned(),
            hostname: Some(uname.nodename().to_string_lossy().into_owned()),
            created: jiff::Timestamp::now().to_string(),
            tier: None,
            node: None,
            probe: None,
            trace: None,
            failed_queries: Vec::new(),
            conntrack_delta: None,
            validate: None,
            vm: None,
            doctor: None,
        })
    }

    /// Adds a trace's summary, its failed records and its conntrack delta.
    pub fn with_trace(mut self, summary: TraceSummary, records: &[TraceRecord]) -> Self {
        self.tier = summary.plan.as_ref().map(|p| p.tier);
        self.conntrack_delta = summary.conntrack_delta;
        self.failed_queries = records
            .iter()
            .filter(|r| r.verdict != crate::flow::record::Verdict::Answered)
            .cloned()
            .collect();
        self.trace = Some(summary);
        self
    }

    /// Writes the report as pretty JSON.
    pub fn write(&self, path: &Path) -> Result<(), Error> {
        let mut text =
            serde_json::to_string_pretty(self).map_err(|source| Error::Encode { source })?;
        text.push('\n');
        write_private(path, text.as_bytes()).map_err(|source| Error::Write {
            path: path.to_owned(),
            source,
        })
    }

    /// Reads a report, refusing any schema version but [`SCHEMA_VERSION`].
    pub fn read(path: &Path) -> Result<Self, Error> {
        use std::io::Read as _;
        let read = |source| Error::Read {
            path: path.to_owned(),
            source,
        };
        // Bounded: a path to a device or a huge file is refused, not read into memory whole.
        let mut text = String::new();
        std::fs::File::open(path)
            .map_err(read)?
            .take(MAX_REPORT_BYTES + 1)
            .read_to_string(&mut text)
            .map_err(read)?;
        if text.len() as u64 > MAX_REPORT_BYTES {
            return Err(Error::TooLarge {
                path: path.to_owned(),
                max: MAX_REPORT_BYTES,
            });
        }
        Self::parse(path, &text)
    }

    /// Parses a report's text (`path` only names it in errors).
    pub fn parse(path: &Path, text: &str) -> Result<Self, Error> {
        let decode = |source| Error::Decode {
            path: path.to_owned(),
            source,
        };
        let value: serde_json::Value = serde_json::from_str(text).map_err(decode)?;
        let found = value
            .get("schema_version")
            .and_then(serde_json::Value::as_u64)
            .ok_or_else(|| Error::NoVersion {
                path: path.to_owned(),
            })?;
        if found != u64::from(SCHEMA_VERSION) {
            return Err(Error::Version {
                path: path.to_owned(),
                found,
                supported: SCHEMA_VERSION,
                tool: format!("{} {}", env!("CARGO_PKG_NAME"), env!("CARGO_PKG_VERSION")),
            });
        }
        serde_json::from_value(value).map_err(decode)
    }
}

/// Writes the report of `tracer trace`: the node inspected in `netns` (the pod links'
/// namespace; `None`: ours), the summary and the failed records.
pub fn write_trace_report(
    path: &Path,
    netns: Option<&Path>,
    summary: TraceSummary,
    records: &[TraceRecord],
) -> Result<(), Error> {
    let node = inspect::inspect(netns).map_err(|source| Error::Inspect {
        source: Box::new(source),
    })?;
    let mut doc = Document::new("trace")?.with_trace(summary, records);
    doc.node = Some(NodeFacts::from_inspect(&node));
    doc.write(path)
}

/// Writes the report of `tracer inspect`.
pub fn write_inspect_report(path: &Path, report: &inspect::Report) -> Result<(), Error> {
    let mut doc = Document::new("inspect")?;
    doc.tier = Some(report.facts.tier);
    doc.node = Some(NodeFacts::from_inspect(report));
    doc.write(path)
}

/// Writes `bytes` to `path` readable by all and writable by its owner only (0644), whatever the
/// umask and whatever mode a file already there had.
fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::{
        io::Write as _, os::unix::fs::OpenOptionsExt as _, os::unix::fs::PermissionsExt as _,
    };
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(REPORT_MODE)
        .open(path)?;
    f.set_permissions(std::fs::Permissions::from_mode(REPORT_MODE))?;
    f.write_all(bytes)
}

/// The largest report `read` takes (a validate report with every failed record is under 1 MiB).
pub const MAX_REPORT_BYTES: u64 = 64 << 20;

/// The mode of the reports tracer writes: not writable by group or others.
pub const REPORT_MODE: u32 = 0o644;

/// One finding of `tracer inspect`, in short.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FindingLine {
    /// `error`, `warning` or `info`.
    pub severity: String,
    /// The finding's stable id.
    pub id: String,
    /// Its one-line title.
    pub title: String,
}

/// The node as `tracer inspect` saw it: the figures `compare` uses, and the whole inspect report.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct NodeFacts {
    /// The namespace inspected (`None`: the tracer's own).
    pub netns: Option<PathBuf>,
    /// Kernel release.
    pub kernel: String,
    /// OS release.
    pub os: Option<String>,
    /// The hook tier tracing gets here.
    pub tier: Tier,
    /// The iptables backend verdict (`legacy`, `nft`, `mixed`, ...).
    pub iptables_backend: String,
    /// kube-proxy's mode.
    pub proxy_mode: String,
    /// The DNS Service and its endpoints, as the rules say.
    pub dns_service: Option<String>,
    /// The IPv6 DNS Service and its endpoints (dual-stack and IPv6 nodes); absent from reports
    /// written before it was read.
    #[serde(default)]
    pub dns_service6: Option<String>,
    /// Conntrack entries.
    pub conntrack_count: u32,
    /// Conntrack table limit.
    pub conntrack_max: u32,
    /// Conntrack statistics since boot (or the namespace's creation), summed over CPUs.
    pub conntrack_stats: CpuStats,
    /// UDP conntrack entries to the DNS Service.
    pub dns_conntrack_entries: usize,
    /// Of those, stale (reply from an address that is no endpoint).
    pub dns_conntrack_stale: usize,
    /// Findings, most severe first.
    pub findings: Vec<FindingLine>,
    /// The whole report, as `tracer inspect --output json` prints it.
    pub inspect: serde_json::Value,
}

/// `SERVICE -> [ENDPOINT, ...]`.
fn service_text(s: &DnsService) -> String {
    let eps: Vec<String> = s.endpoints.iter().map(ToString::to_string).collect();
    format!("{} -> [{}]", s.socket(), eps.join(", "))
}

impl NodeFacts {
    /// From an inspect report.
    pub fn from_inspect(r: &inspect::Report) -> Self {
        let text = |v: serde_json::Result<serde_json::Value>| {
            v.ok()
                .and_then(|v| v.as_str().map(str::to_owned))
                .unwrap_or_default()
        };
        Self {
            netns: r.netns.clone(),
            kernel: r.facts.kernel.clone(),
            os: r.facts.os.clone(),
            tier: r.facts.tier,
            iptables_backend: r.backends.verdict.to_string(),
            proxy_mode: text(serde_json::to_value(r.proxy_mode)),
            dns_service: r.dns_service.as_ref().map(service_text),
            dns_service6: r.dns_service6.as_ref().map(service_text),
            conntrack_count: r.conntrack.table.count,
            conntrack_max: r.conntrack.table.max,
            conntrack_stats: r.conntrack.total,
            dns_conntrack_entries: r.conntrack.dns_entries,
            dns_conntrack_stale: r.conntrack.dns_stale.len(),
            findings: r
                .findings
                .iter()
                .map(|f| FindingLine {
                    severity: text(serde_json::to_value(f.severity)),
                    id: f.id.to_owned(),
                    title: f.title.clone(),
                })
                .collect(),
            inspect: serde_json::to_value(r).unwrap_or(serde_json::Value::Null),
        }
    }
}

/// Latency percentiles of the answered queries, in milliseconds (nearest rank, exact).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct LatencyMs {
    /// Median.
    pub p50: f64,
    /// 90th percentile.
    pub p90: f64,
    /// 99th percentile.
    pub p99: f64,
    /// Slowest answer.
    pub max: f64,
}

/// One query that got no answer, with what the tracer saw of it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LostQuery {
    /// DNS id.
    pub id: u16,
    /// Name asked for.
    pub name: String,
    /// Query type.
    pub qtype: String,
    /// The client's source port.
    pub source_port: u16,
    /// Sent this many milliseconds after the start.
    pub sent_at_ms: f64,
    /// What the client saw: `timed out`, `refused`, `not sent: ...`.
    pub outcome: String,
    /// The tracer's record of it (matched by source port and DNS id), when the tracer ran.
    pub trace: Option<TraceRecord>,
}

impl LostQuery {
    /// Where and why it died, as the trace summary counts it, or that the tracer has no record.
    pub fn cause(&self) -> Cause {
        self.trace.as_ref().map_or(Cause::NotTraced, Cause::of)
    }
}

/// What `tracer probe` measured.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ProbeReport {
    /// Where the queries were sent from (network namespace, or `node`).
    pub from: String,
    /// The DNS server (the Service IP).
    pub server: SocketAddr,
    /// Lookups per second.
    pub rate: f64,
    /// Lookups planned.
    pub lookups: u32,
    /// Seconds each query was waited for.
    pub timeout_s: f64,
    /// Names asked, in turn.
    pub names: Vec<String>,
    /// Query types, in turn.
    pub types: Vec<String>,
    /// A and AAAA in parallel from one socket.
    pub parallel_a_aaaa: bool,
    /// The fixed source port, if any.
    pub source_port: Option<u16>,
    /// The tracer ran alongside and attributed the losses.
    pub traced: bool,
    /// The hook tier the tracer had.
    pub tier: Option<Tier>,
    /// Queries sent.
    pub sent: u32,
    /// Queries answered.
    pub answered: u32,
    /// Queries lost.
    pub lost: u32,
    /// lost / sent, in percent.
    pub loss_percent: f64,
    /// Latency of the answered queries.
    pub latency_ms: Option<LatencyMs>,
    /// Answers by response code (`NoError`, `NXDomain`, ...).
    pub rcodes: BTreeMap<String, u32>,
    /// Datagrams that matched no query.
    pub bad_answers: u32,
    /// Lost queries by where and why they died (in JSON, keyed by the cause's text).
    pub lost_by_cause: BTreeMap<Cause, u32>,
    /// Lost queries by the endpoint they were sent to.
    pub lost_by_endpoint: BTreeMap<String, u32>,
    /// Lost queries the tracer has no record of.
    pub unattributed: u32,
    /// Every lost query.
    pub lost_queries: Vec<LostQuery>,
}

impl ProbeReport {
    /// From a batch, its spec, and the tracer's summary and records (`None` and empty when the
    /// tracer did not run): each lost query is matched to its trace record by (source port, DNS
    /// id).
    pub fn new(
        from: &str,
        server: SocketAddr,
        spec: &BatchSpec,
        result: &BatchResult,
        summary: Option<&TraceSummary>,
        records: &[TraceRecord],
    ) -> Self {
        let by_key: BTreeMap<(u16, u16), &TraceRecord> = records
            .iter()
            .map(|r| ((r.client.port(), r.id), r))
            .collect();
        let ms = |d: Duration| d.as_secs_f64() * 1000.0;
        let latency_ms = match (
            result.latency_percentile(50.0),
            result.latency_percentile(90.0),
            result.latency_percentile(99.0),
            result.latency_percentile(100.0),
        ) {
            (Some(p50), Some(p90), Some(p99), Some(max)) => Some(LatencyMs {
                p50: ms(p50),
                p90: ms(p90),
                p99: ms(p99),
                max: ms(max),
            }),
            _ => None,
        };
        let mut rcodes = BTreeMap::new();
        for q in &result.queries {
            if let Outcome::Answered { rcode, .. } = &q.outcome {
                *rcodes.entry(format!("{rcode:?}")).or_default() += 1;
            }
        }
        let lost_queries: Vec<LostQuery> = result
            .lost_queries()
            .map(|q| lost(q, by_key.get(&(q.source_port, q.id)).copied()))
            .collect();
        let (mut lost_by_cause, mut lost_by_endpoint) = (BTreeMap::new(), BTreeMap::new());
        let mut unattributed = 0;
        for q in &lost_queries {
            *lost_by_cause.entry(q.cause()).or_default() += 1;
            match &q.trace {
                Some(r) => *lost_by_endpoint.entry(endpoint_key(r)).or_default() += 1,
                None => unattributed += 1,
            }
        }
        Self {
            from: from.to_owned(),
            server,
            rate: spec.rate,
            lookups: spec.count,
            timeout_s: spec.timeout.as_secs_f64(),
            names: spec.names.clone(),
            types: if spec.parallel_a_aaaa {
                vec!["A".to_owned(), "AAAA".to_owned()]
            } else {
                spec.qtypes.iter().map(ToString::to_string).collect()
            },
            parallel_a_aaaa: spec.parallel_a_aaaa,
            source_port: spec.source_port,
            traced: summary.is_some(),
            tier: summary.and_then(|s| s.plan.as_ref()).map(|p| p.tier),
            sent: result.sent,
            answered: result.answered,
            lost: result.lost,
            loss_percent: if result.sent == 0 {
                0.0
            } else {
                100.0 * f64::from(result.lost) / f64::from(result.sent)
            },
            latency_ms,
            rcodes,
            bad_answers: result.bad_answers,
            lost_by_cause,
            lost_by_endpoint,
            unattributed,
            lost_queries,
        }
    }
}

/// Lost queries listed one a line in the text summary; the JSON and the report list every one.
const LOST_LINES: usize = 20;

impl ProbeReport {
    /// The summary table, the losses by cause and endpoint, and the first lost queries.
    pub fn text(&self) -> String {
        let mut s = String::new();
        let ms = |f: fn(&LatencyMs) -> f64| {
            self.latency_ms
                .as_ref()
                .map_or("-".to_owned(), |l| format!("{:.2} ms", f(l)))
        };
        let mut t = Table::new();
        t.load_style(UTF8_BORDERS_ONLY).set_header(vec![
            "sent", "answered", "lost", "loss", "p50", "p90", "p99", "max",
        ]);
        t.add_row(vec![
            self.sent.to_string(),
            self.answered.to_string(),
            self.lost.to_string(),
            format!("{:.2} %", self.loss_percent),
            ms(|l| l.p50),
            ms(|l| l.p90),
            ms(|l| l.p99),
            ms(|l| l.max),
        ]);
        let _ = writeln!(s, "{t}");
        let rcodes: Vec<String> = self
            .rcodes
            .iter()
            .map(|(k, n)| format!("{k} {n}"))
            .collect();
        let _ = writeln!(
            s,
            "answers by rcode: {}{}",
            if rcodes.is_empty() {
                "none".to_owned()
            } else {
                rcodes.join(", ")
            },
            if self.bad_answers > 0 {
                format!("; {} datagrams matched no query", self.bad_answers)
            } else {
                String::new()
            }
        );
        match (self.traced, &self.tier) {
            (true, Some(tier)) => {
                let _ = writeln!(s, "traced with hook tier {tier}");
            }
            (true, None) => {
                let _ = writeln!(s, "traced");
            }
            (false, _) => {
                let _ = writeln!(s, "not traced: losses are counted, not attributed");
            }
        }
        if self.lost == 0 {
            return s;
        }
        let by_cause = self.lost_by_cause.iter().map(|(k, n)| (k.to_string(), *n));
        let by_endpoint = self.lost_by_endpoint.iter().map(|(k, n)| (k.clone(), *n));
        for (title, rows) in [
            (
                "lost queries: where and why they died",
                by_cause.collect::<Vec<_>>(),
            ),
            ("lost queries sent to", by_endpoint.collect()),
        ] {
            if rows.is_empty() {
                continue;
            }
            let mut t = Table::new();
            t.load_style(UTF8_BORDERS_ONLY)
                .set_header(vec![title, "queries", "share"]);
            for (k, n) in rows {
                t.add_row(vec![
                    k,
                    n.to_string(),
                    format!("{:.1} %", 100.0 * f64::from(n) / f64::from(self.lost)),
                ]);
            }
            let _ = writeln!(s, "{t}");
        }
        if self.unattributed > 0 {
            let _ = writeln!(s, "{} lost queries have no trace record", self.unattributed);
        }
        for q in self.lost_queries.iter().take(LOST_LINES) {
            let _ = write!(
                s,
                "  lost: id {:#06x} {} {} from port {} at +{:.0} ms, {}",
                q.id, q.name, q.qtype, q.source_port, q.sent_at_ms, q.outcome
            );
            match &q.trace {
                Some(r) => {
                    let _ = writeln!(s, " | {}", line(r));
                }
                None => s.push('\n'),
            }
        }
        if self.lost_queries.len() > LOST_LINES {
            let _ = writeln!(
                s,
                "  ... and {} more (every one is in --output json and --report)",
                self.lost_queries.len() - LOST_LINES
            );
        }
        s
    }
}

fn lost(q: &SentQuery, trace: Option<&TraceRecord>) -> LostQuery {
    LostQuery {
        id: q.id,
        name: q.name.clone(),
        qtype: q.qtype.to_string(),
        source_port: q.source_port,
        sent_at_ms: q.sent_at.as_secs_f64() * 1000.0,
        outcome: match &q.outcome {
            Outcome::Refused => "refused (ICMP port unreachable)".to_owned(),
            Outcome::SendFailed { error } => format!("not sent: {error}"),
            Outcome::TimedOut => "timed out".to_owned(),
            Outcome::Answered { .. } => "answered".to_owned(),
        },
        trace: trace.cloned(),
    }
}

#[cfg(test)]
mod tests;
