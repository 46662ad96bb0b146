//! `tracer validate`: kernel-upgrade validation with no cluster. Runs the lab's scenarios
//! (healthy and every fault, in both iptables backends) on this kernel with the tracer, checks
//! that each one is detected and attributed to the right stage, measures the healthy loss and
//! latency, and writes a report to `compare` with the one from the previous kernel.
//!
//! Each scenario gets a fresh lab (brought down however the scenario ends), so one scenario's
//! leftovers (conntrack entries, rules) cannot make the next one pass or fail.

use std::{
    io::Write as _,
    net::{Ipv4Addr, SocketAddrV4},
    time::{Duration, Instant},
};

use serde::{Deserialize, Serialize};

use crate::{
    cli::{Backend, FaultName, OutputFormat, ValidateArgs},
    flow::record::{Leg, QueryRecord as TraceRecord, Verdict},
    lab::{self, LabInfo},
    measure::{
        BatchSpec,
        probe::{self, progress_bar, traced_batch},
    },
    netns,
    node::{conntrack::CpuStats, inspect},
    probes::{
        plan::{Fate, Tier},
        session::Counters,
        table::Stage,
    },
    report::{
        document::{self, Document, NodeFacts, ProbeReport},
        trace::TraceSummary,
    },
    trace::{self, Settings, Target},
};

/// What failed while validating (a scenario that fails its checks is a result, not an error).
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("failed to bring up lab {prefix} for scenario {scenario}: {source}")]
    Lab {
        prefix: String,
        scenario: String,
        source: Box<lab::Error>,
    },
    #[error("failed to run scenario {scenario} ({backend}): {source}")]
    Probe {
        scenario: String,
        backend: &'static str,
        source: Box<probe::Error>,
    },
    #[error("failed to read the lab's rules for scenario {scenario}: {source}")]
    Rules {
        scenario: String,
        source: Box<trace::Error>,
    },
    #[error("unknown scenario {name:?}: say healthy or a fault name ({known})")]
    UnknownScenario { name: String, known: String },
    #[error("failed to inspect the node for the report: {source}")]
    Inspect { source: inspect::Error },
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
    #[error("failed to find this tracer's binary to run in the VM: {source}")]
    CurrentExe { source: std::io::Error },
    #[error(
        "this tracer runs from {exe}, which the VM cannot see (its /tmp and /run are its own): run a copy from elsewhere, /var/tmp say"
    )]
    ExeHidden { exe: std::path::PathBuf },
    #[error("failed to run validate in a VM on kernel {spec}: {source}")]
    Vm {
        spec: String,
        source: Box<crate::vm::Error>,
    },
    #[error(
        "validate in the VM on kernel {release} exited with status {status} and wrote no report{}",
        if stderr_tail.is_empty() { String::new() } else { format!("; its stderr ends:\n{stderr_tail}") }
    )]
    VmNoReport {
        release: String,
        status: i32,
        stderr_tail: String,
    },
    #[error(
        "validate in the VM on kernel {release} failed with exit status {status} (see its output above)"
    )]
    VmStatus { release: String, status: i32 },
}

/// One scenario on one backend.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ScenarioResult {
    /// The iptables backend of the lab's rules.
    pub backend: Backend,
    /// `healthy` or the fault's name.
    pub scenario: String,
    /// Every check held.
    pub passed: bool,
    /// The hook tier the tracer had.
    pub tier: String,
    /// What the checks expect, in words.
    pub expected: String,
    /// The checks that failed, in words.
    pub problems: Vec<String>,
    /// What the probe measured, with every lost query's trace record.
    pub probe: ProbeReport,
    /// Conntrack statistics change over the scenario in the lab's node.
    pub conntrack_delta: Option<CpuStats>,
    /// The kernel's counters over the scenario: what each stage saw (absent in reports written
    /// before they were kept).
    #[serde(default)]
    pub counters: Option<Counters>,
}

impl ScenarioResult {
    /// `nft` or `legacy`.
    pub fn backend_name(&self) -> &'static str {
        backend_name(self.backend)
    }
}

/// Every scenario run.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Validation {
    /// The hook tier the tracer had on this kernel.
    pub tier: String,
    /// Every scenario passed.
    pub passed: bool,
    /// Seconds it took.
    pub seconds: f64,
    /// Scenario by scenario.
    pub scenarios: Vec<ScenarioResult>,
}

/// The accelerator `vm::run` uses (KVM does not work on this machine, see KERNEL.md).
const VM_ACCEL: &str = "tcg";

/// How often `validate --kernel` says the VM is still running.
const VM_HEARTBEAT: Duration = Duration::from_secs(60);

/// `validate --kernel SPEC`: boots SPEC in a VM, runs this tracer's `validate` there with the same
/// arguments, prints its output, and writes its report (marked as a VM run) to `--report` or
/// `validate-<release>.json`. Returns whether every scenario passed, as a local run does.
fn run_in_vm(spec: &str, args: &ValidateArgs) -> Result<bool, Error> {
    use crate::vm::{self, KernelSpec, RunOptions};

    let vm_err = |source| Error::Vm {
        spec: spec.to_owned(),
        source: Box::new(source),
    };
    let kernel_spec: KernelSpec = match spec.parse() {
        Ok(k) => k,
        Err(never) => match never {},
    };
    let exe = std::env::current_exe().map_err(|source| Error::CurrentExe { source })?;
    // The guest sees this machine's `/` but mounts fresh tmpfs on /tmp and /run.
    if exe.starts_with("/tmp") || exe.starts_with("/run") {
        return Err(Error::ExeHidden { exe });
    }
    let started = Instant::now();
    let kernel = vm::prepare(&kernel_spec).map_err(vm_err)?;
    // The guest writes through its share; `exec "$0"` keeps the binary's path unexpanded.
    let mut argv: Vec<String> = vec![
        "sh".into(),
        "-c".into(),
        format!(
            "exec \"$0\" validate --report \"${}/report.json\" \"$@\"",
            vm::OUT_ENV
        ),
        exe.to_string_lossy().into_owned(),
        "--prefix".into(),
        args.prefix.clone(),
        "--healthy-count".into(),
        args.healthy_count.to_string(),
    ];
    for b in &args.backends {
        argv.extend(["--backend".into(), backend_name(*b).into()]);
    }
    for sc in &args.scenarios {
        argv.extend(["--scenario".into(), sc.clone()]);
    }
    if args.out.format == OutputFormat::Json {
        argv.extend(["--output".into(), "json".into()]);
    }
    let opts = RunOptions {
        timeout: Duration::from_secs(args.vm_timeout),
        env: std::env::var("RUST_LOG")
            .map(|v| vec![("RUST_LOG".to_owned(), v)])
            .unwrap_or_default(),
        ..RunOptions::default()
    };
    eprintln!(
        "validate: booting kernel {} ({spec}) in a VM (qemu {VM_ACCEL}, {} vCPU, timeout {} s); the output comes when it ends",
        kernel.release, opts.cpus, args.vm_timeout
    );
    stop_guest_on_interrupt();
    let (done, ticks) = std::sync::mpsc::channel::<()>();
    let release = kernel.release.clone();
    let heartbeat = std::thread::spawn(move || {
        while let Err(std::sync::mpsc::RecvTimeoutError::Timeout) = ticks.recv_timeout(VM_HEARTBEAT)
        {
            eprintln!(
                "validate: kernel {release} in the VM, {:.0} s so far",
                started.elapsed().as_secs_f64()
            );
        }
    });
    let guest = vm::run(&kernel, &argv, &opts);
    let _ = done.send(());
    let _ = heartbeat.join();
    let guest = guest.map_err(vm_err)?;
    print!("{}", guest.stdout);
    eprint!("{}", guest.stderr);
    std::io::stdout().flush()?;
    let guest_report = guest.out_dir().join("report.json");
    if !guest_report.exists() {
        return Err(Error::VmNoReport {
            release: kernel.release,
            status: guest.status,
            stderr_tail: guest
                .stderr
                .lines()
                .rev()
                .take(10)
                .collect::<Vec<_>>()
                .into_iter()
                .rev()
                .collect::<Vec<_>>()
                .join("\n"),
        });
    }
    let mut doc = Document::read(&guest_report)?;
    if doc.kernel != kernel.release {
        log::warn!(
            "the VM's report names kernel {}, but {} was booted",
            doc.kernel,
            kernel.release
        );
    }
    doc.vm = Some(document::VmRun {
        spec: spec.to_owned(),
        release: kernel.release.clone(),
        host_kernel: nix::sys::utsname::uname()
            .map(|u| u.release().to_string_lossy().into_owned())
            .unwrap_or_default(),
        accel: VM_ACCEL.to_owned(),
        cpus: opts.cpus,
        memory_mib: opts.memory_mib,
        boot_s: guest.boot_time.as_secs_f64(),
        wall_s: guest.wall_time.as_secs_f64(),
    });
    let path = args
        .out
        .report
        .clone()
        .unwrap_or_else(|| format!("validate-{}.json", kernel.release).into());
    doc.write(&path)?;
    eprintln!(
        "validate: kernel {} in the VM: exit status {}, boot {:.0} s, VM {:.0} s, {:.0} s in all; report written to {}",
        kernel.release,
        guest.status,
        guest.boot_time.as_secs_f64(),
        guest.wall_time.as_secs_f64(),
        started.elapsed().as_secs_f64(),
        path.display()
    );
    match guest.status {
        0 => Ok(true),
        2 => Ok(false),
        status => Err(Error::VmStatus {
            release: kernel.release,
            status,
        }),
    }
}

/// Ctrl-C or SIGTERM stop the guest (`vm::run` returns, its guard kills qemu and removes its
/// directory) instead of killing this process outright.
fn stop_guest_on_interrupt() {
    use nix::sys::signal::{self, SaFlags, SigAction, SigHandler, SigSet, Signal};

    extern "C" fn stop(_: libc::c_int) {
        crate::vm::interrupt();
    }
    let action = SigAction::new(SigHandler::Handler(stop), SaFlags::empty(), SigSet::empty());
    for sig in [Signal::SIGINT, Signal::SIGTERM] {
        // SAFETY: the handler only stores to an atomic.
        let _ = unsafe { signal::sigaction(sig, &action) };
    }
}

fn backend_name(b: Backend) -> &'static str {
    match b {
        Backend::Nft => "nft",
        Backend::Legacy => "legacy",
    }
}

/// What a check sees.
struct Seen<'a> {
    lab: &'a LabInfo,
    /// The tracer's summary (`None`: it gave none).
    summary: Option<&'a TraceSummary>,
    /// The tracer's records (every query in the healthy scenario, failed ones elsewhere).
    records: &'a [TraceRecord],
    report: &'a ProbeReport,
    /// The Service's endpoints as the rules hold them now.
    live: Vec<Ipv4Addr>,
}

impl Seen<'_> {
    fn dns0(&self) -> Option<Ipv4Addr> {
        self.lab.endpoints.first().map(|p| p.ip)
    }

    /// The trace record of every lost query (those without one are reported by `attributed`).
    fn lost(&self) -> impl Iterator<Item = (u16, &TraceRecord)> {
        self.report
            .lost_queries
            .iter()
            .filter_map(|q| q.trace.as_ref().map(|r| (q.id, r)))
    }
}

/// One scenario: a fault (or none), the batch it needs, and its checks.
struct Scenario {
    name: &'static str,
    fault: Option<(FaultName, Option<u8>)>,
    count: u32,
    timeout: Duration,
    parallel_a_aaaa: bool,
    expected: &'static str,
    /// The stages that must have recorded the lost queries (any of them): a fault whose stage
    /// recorded none of them was missed, whatever the other checks say.
    stages: &'static [&'static str],
    check: fn(&Seen, &mut Vec<String>),
}

/// The scenarios, healthy first. Timeouts are 1 s, and 5 s where the kernel's neighbour code
/// needs about 3 s to give up on an address nobody answers for.
fn scenarios(healthy_count: u32) -> Vec<Scenario> {
    let one = Duration::from_secs(1);
    let five = Duration::from_secs(5);
    let s = |name, fault, count, timeout, expected, check| Scenario {
        name,
        fault,
        count,
        timeout,
        parallel_a_aaaa: false,
        expected,
        stages: &[],
        check,
    };
    let at = |stages: &'static [&'static str], sc: Scenario| Scenario { stages, ..sc };
    vec![
        s(
            "healthy",
            None,
            healthy_count,
            one,
            "every query answered",
            check_healthy,
        ),
        at(
            &["netfilter"],
            s(
                "filter-drop",
                Some((FaultName::FilterDrop, Some(0))),
                40,
                one,
                "some lost, each a netfilter NETFILTER_DROP after DNAT to dns0",
                check_filter_drop,
            ),
        ),
        at(
            &["netfilter"],
            s(
                "no-endpoints",
                Some((FaultName::NoEndpoints, None)),
                20,
                one,
                "all lost, each dropped by netfilter before DNAT (rejected where an ICMP error was sent)",
                check_no_endpoints,
            ),
        ),
        at(
            &["socket"],
            s(
                "pod-down",
                Some((FaultName::PodDown, Some(0))),
                40,
                one,
                "some lost, each NO_SOCKET at the socket stage inside dns0",
                check_pod_down,
            ),
        ),
        at(
            &["neighbour", "bridge"],
            s(
                "pod-link-down",
                Some((FaultName::PodLinkDown, Some(0))),
                20,
                five,
                "some lost, each sent to dns0 and dropped at the neighbour (or bridge) stage",
                check_pod_link_down,
            ),
        ),
        at(
            &["conntrack"],
            s(
                "conntrack-full",
                Some((FaultName::ConntrackFull, None)),
                10,
                one,
                "all lost, each dropped at conntrack, with conntrack's drop statistic rising",
                check_conntrack_full,
            ),
        ),
        s(
            "stale-conntrack",
            Some((FaultName::StaleConntrack, None)),
            10,
            five,
            "all lost, each sent to an endpoint the rules no longer hold",
            check_stale_conntrack,
        ),
        s(
            "mixed-backend",
            Some((FaultName::MixedBackend, None)),
            10,
            five,
            "some lost, each sent to a target that is not an endpoint",
            check_mixed_backend,
        ),
        Scenario {
            parallel_a_aaaa: true,
            ..s(
                "conntrack-race",
                Some((FaultName::ConntrackRace, None)),
                200,
                one,
                "nothing lost, conntrack's clash_resolve rising",
                check_conntrack_race,
            )
        },
    ]
}

fn attributed(s: &Seen, p: &mut Vec<String>) {
    if s.report.unattributed > 0 {
        p.push(format!(
            "{} of {} lost queries have no trace record",
            s.report.unattributed, s.report.lost
        ));
    }
}

fn some_lost(s: &Seen, p: &mut Vec<String>) {
    if s.report.lost == 0 || s.report.lost == s.report.sent {
        p.push(format!(
            "expected some of {} queries lost (one endpoint of two), lost {}",
            s.report.sent, s.report.lost
        ));
    }
}

fn all_lost(s: &Seen, p: &mut Vec<String>) {
    if s.report.lost != s.report.sent {
        p.push(format!(
            "expected all {} queries lost, lost {}",
            s.report.sent, s.report.lost
        ));
    }
}

fn to_dns0(s: &Seen, id: u16, r: &TraceRecord, p: &mut Vec<String>) -> bool {
    if r.endpoint != s.dns0() {
        p.push(format!(
            "query {id:#06x}: sent to {:?}, expected dns0 {:?}",
            r.endpoint,
            s.dns0()
        ));
        return false;
    }
    true
}

fn check_healthy(s: &Seen, p: &mut Vec<String>) {
    if s.report.lost != 0 || s.report.sent == 0 {
        p.push(format!(
            "expected every query answered: sent {}, lost {}",
            s.report.sent, s.report.lost
        ));
    }
}

fn check_filter_drop(s: &Seen, p: &mut Vec<String>) {
    some_lost(s, p);
    for (id, r) in s.lost() {
        to_dns0(s, id, r, p);
        match &r.drop {
            Some(d)
                if d.stage == "netfilter"
                    && d.reason == "NETFILTER_DROP"
                    && d.leg == Leg::QueryToPod => {}
            other => p.push(format!(
                "query {id:#06x}: expected a netfilter NETFILTER_DROP after DNAT, got {other:?}"
            )),
        }
    }
}

fn check_no_endpoints(s: &Seen, p: &mut Vec<String>) {
    all_lost(s, p);
    let mut rejected = 0;
    for (id, r) in s.lost() {
        if r.endpoint.is_some() {
            p.push(format!(
                "query {id:#06x}: DNATed to {:?}, expected no DNAT",
                r.endpoint
            ));
        }
        match &r.drop {
            Some(d) if d.stage == "netfilter" && d.leg == Leg::QueryBeforeDnat => {}
            other => p.push(format!(
                "query {id:#06x}: expected a netfilter drop before DNAT, got {other:?}"
            )),
        }
        if r.icmp.is_some() {
            rejected += 1;
            if r.verdict != Verdict::Rejected {
                p.push(format!(
                    "query {id:#06x}: an ICMP error was sent, verdict is {}",
                    r.verdict
                ));
            }
        }
    }
    if rejected == 0 && s.report.lost > 0 {
        p.push(
            "no query was rejected with an ICMP error (the first one is not rate-limited)".into(),
        );
    }
}

fn check_pod_down(s: &Seen, p: &mut Vec<String>) {
    some_lost(s, p);
    let pod_ns = s.lab.endpoints.first().map(|e| format!("{}/", e.netns));
    for (id, r) in s.lost() {
        to_dns0(s, id, r, p);
        match &r.drop {
            Some(d)
                if d.stage == "socket"
                    && d.reason == "NO_SOCKET"
                    && pod_ns.as_ref().is_some_and(|ns| d.at.starts_with(ns)) => {}
            other => p.push(format!(
                "query {id:#06x}: expected NO_SOCKET at the socket stage in dns0, got {other:?}"
            )),
        }
    }
}

fn check_pod_link_down(s: &Seen, p: &mut Vec<String>) {
    some_lost(s, p);
    for (id, r) in s.lost() {
        to_dns0(s, id, r, p);
        match &r.drop {
            Some(d) if d.stage == "neighbour" || d.stage == "bridge" => {}
            other => p.push(format!(
                "query {id:#06x}: expected a drop at the neighbour or bridge stage, got {other:?}"
            )),
        }
    }
}

fn check_conntrack_full(s: &Seen, p: &mut Vec<String>) {
    all_lost(s, p);
    for (id, r) in s.lost() {
        match &r.drop {
            Some(d) if d.stage == "conntrack" => {}
            other => p.push(format!(
                "query {id:#06x}: expected a drop at conntrack, got {other:?}"
            )),
        }
    }
    let drops = conntrack_delta(s).map_or(0, |d| d.drop);
    if drops < s.report.lost {
        p.push(format!(
            "conntrack's drop statistic rose by {drops}, fewer than the {} lost queries",
            s.report.lost
        ));
    }
}

fn check_stale_conntrack(s: &Seen, p: &mut Vec<String>) {
    all_lost(s, p);
    for (id, r) in s.lost() {
        match r.endpoint {
            Some(ep) if !s.live.contains(&ep) => {}
            other => p.push(format!(
                "query {id:#06x}: expected it sent to an endpoint the rules no longer hold ({:?}), sent to {other:?}",
                s.live
            )),
        }
    }
}

fn check_mixed_backend(s: &Seen, p: &mut Vec<String>) {
    if s.report.lost == 0 {
        p.push(
            "expected lost queries: the stale backend's rules send some to a dead target".into(),
        );
    }
    for (id, r) in s.lost() {
        let not_endpoint = r.endpoint.is_some_and(|ep| !s.live.contains(&ep))
            || r.drop
                .as_ref()
                .is_some_and(|d| d.why.contains("not an endpoint"));
        if !not_endpoint {
            p.push(format!(
                "query {id:#06x}: expected it sent to a target that is not an endpoint ({:?}), got endpoint {:?}, drop {:?}",
                s.live, r.endpoint, r.drop
            ));
        }
    }
}

fn check_conntrack_race(s: &Seen, p: &mut Vec<String>) {
    if s.report.lost != 0 {
        p.push(format!(
            "expected nothing lost (this kernel resolves the clashes), lost {}",
            s.report.lost
        ));
    }
    let cpus = std::thread::available_parallelism().map_or(1, usize::from);
    let clashes = conntrack_delta(s).map_or(0, |d| d.clash_resolve);
    if cpus >= 2 && clashes == 0 {
        p.push("conntrack's clash_resolve did not rise: A and AAAA did not race".into());
    }
}

fn conntrack_delta(s: &Seen) -> Option<CpuStats> {
    s.summary.and_then(|t| t.conntrack_delta)
}

/// Stages that saw nothing where the probe says they must have seen something. A program that
/// did not attach, or attached where the packets are not, passes every per-query check by
/// seeing nothing; this names the stage instead.
fn dead_stages(sc: &Scenario, s: &Seen, p: &mut Vec<String>) {
    let Some(summary) = s.summary else {
        p.push("the tracer gave no summary: no stage can be checked".into());
        return;
    };
    let c = &summary.counters;
    let answered = u64::from(s.report.answered);
    // Device stage (TC on the pod links): every answered query left a client, reached an
    // endpoint and came back. Half is the floor, so that a query the tracer missed here or there
    // is not taken for a dead stage.
    let seen = c.queries.min(c.at_endpoint).min(c.answered);
    if answered > 0 && seen * 2 < answered {
        p.push(format!(
            "device stage saw {seen} of {answered} answered queries (queries {}, at an endpoint {}, answered {}): the TC programs did not attach or did not see the pod links",
            c.queries, c.at_endpoint, c.answered
        ));
    }
    // The fault's own stage must have recorded the queries it lost.
    if !sc.stages.is_empty() && s.report.lost > 0 {
        let recorded = s
            .lost()
            .filter(|(_, r)| {
                r.drop
                    .as_ref()
                    .is_some_and(|d| sc.stages.contains(&d.stage.as_str()))
            })
            .count();
        if recorded == 0 {
            p.push(format!(
                "{} stage recorded none of the {} lost queries: its programs did not attach or did not see them",
                sc.stages.join(" or "),
                s.report.lost
            ));
        }
    }
    // On a deep tier the NAT stage rewrites every healthy query to a pod.
    let Some(plan) = &summary.plan else { return };
    let nat_attached = plan
        .outcomes
        .iter()
        .any(|o| o.stage == Stage::Nat && matches!(o.fate, Fate::Attached { .. }));
    if plan.tier == Tier::Tracepoint || sc.fault.is_some() || answered == 0 {
        return;
    }
    if c.deep_events == 0 {
        p.push(format!(
            "deep stages (netfilter, NAT, conntrack on the {} tier) saw no event for {answered} answered queries: their programs attached but did not fire",
            plan.tier
        ));
    }
    let records: Vec<&TraceRecord> = s
        .records
        .iter()
        .filter(|r| r.verdict == Verdict::Answered)
        .collect();
    let natted = records.iter().filter(|r| r.nat.is_some()).count();
    if nat_attached && !records.is_empty() && natted == 0 {
        p.push(format!(
            "NAT stage named no DNAT target for any of the {} answered query records ({} tier): its programs attached but did not see the queries",
            records.len(),
            plan.tier
        ));
    }
}

/// Every check of a scenario: attribution, the scenario's own, and dead stages.
fn problems(sc: &Scenario, s: &Seen) -> Vec<String> {
    let mut p = Vec::new();
    attributed(s, &mut p);
    (sc.check)(s, &mut p);
    dead_stages(sc, s, &mut p);
    p
}

/// Brings a lab down when dropped, however the scenario ends.
struct LabDown<'a> {
    prefix: &'a str,
}

impl Drop for LabDown<'_> {
    fn drop(&mut self) {
        if let Err(e) = lab::down(self.prefix) {
            log::warn!("failed to bring lab {} down: {e}", self.prefix);
        }
    }
}

fn run_scenario(prefix: &str, backend: Backend, sc: &Scenario) -> Result<ScenarioResult, Error> {
    let lab_err = |source: lab::Error| Error::Lab {
        prefix: prefix.to_owned(),
        scenario: sc.name.to_owned(),
        source: Box::new(source),
    };
    let _down = LabDown { prefix };
    lab::up(prefix, backend, 1).map_err(lab_err)?;
    if let Some((fault, pod)) = sc.fault {
        lab::fault(prefix, fault, pod).map_err(lab_err)?;
    }
    let info = lab::info(prefix).map_err(lab_err)?.ok_or_else(|| {
        lab_err(lab::Error::NotUp {
            prefix: prefix.to_owned(),
        })
    })?;
    let probe_err = |source: probe::Error| Error::Probe {
        scenario: sc.name.to_owned(),
        backend: backend_name(backend),
        source: Box::new(source),
    };
    let spec = BatchSpec {
        count: sc.count,
        rate: 200.0,
        timeout: sc.timeout,
        source_port: info.stale_source_port,
        parallel_a_aaaa: sc.parallel_a_aaaa,
        ..BatchSpec::default()
    };
    let target = Target::lab(&info).map_err(|source| probe_err(source.into()))?;
    // A record of every healthy query, so that the NAT stage's work on answered queries can
    // be checked (a record costs about 5 µs of CPU; the probe's 200 queries/s do not notice).
    let settings = Settings {
        timeout: sc.timeout,
        all: sc.fault.is_none(),
        ..Settings::default()
    };
    let client = info.clients.first().map(|c| c.netns.clone());
    let server = SocketAddrV4::new(info.service_ip, info.dns_port);
    let traced = traced_batch(
        client.as_deref(),
        server,
        &spec,
        Some((target, settings)),
        &progress_bar(sc.count, true),
    )
    .map_err(probe_err)?;
    let report = ProbeReport::new(
        client.as_deref().unwrap_or("node"),
        server,
        &spec,
        &traced.result,
        traced.summary.as_ref(),
        &traced.records,
    );
    let live = crate::node::dns_service(Some(&netns::named(&info.node_netns)))
        .map_err(|source| Error::Rules {
            scenario: sc.name.to_owned(),
            source: Box::new(trace::Error::from(source)),
        })?
        .map(|s| s.endpoint_ips())
        .unwrap_or_default();
    let summary = traced.summary.as_ref();
    let seen = Seen {
        lab: &info,
        summary,
        records: &traced.records,
        report: &report,
        live,
    };
    let problems = problems(sc, &seen);
    Ok(ScenarioResult {
        backend,
        scenario: sc.name.to_owned(),
        passed: problems.is_empty(),
        tier: summary
            .and_then(|s| s.plan.as_ref())
            .map_or("unknown".to_owned(), |p| p.tier.to_string()),
        expected: sc.expected.to_owned(),
        problems,
        conntrack_delta: summary.and_then(|s| s.conntrack_delta),
        counters: summary.map(|s| s.counters),
        probe: report,
    })
}

/// Runs the chosen scenarios (`names` empty: all) on the chosen backends (empty: both), with
/// labs named `prefix`; `each` is called with every result as it comes.
pub fn validate(
    prefix: &str,
    backends: &[Backend],
    names: &[String],
    healthy_count: u32,
    mut each: impl FnMut(&ScenarioResult),
) -> Result<Validation, Error> {
    let all = scenarios(healthy_count);
    for name in names {
        if !all.iter().any(|s| s.name == name) {
            return Err(Error::UnknownScenario {
                name: name.clone(),
                known: all.iter().map(|s| s.name).collect::<Vec<_>>().join(", "),
            });
        }
    }
    let backends = if backends.is_empty() {
        &[Backend::Nft, Backend::Legacy][..]
    } else {
        backends
    };
    let start = Instant::now();
    let mut results = Vec::new();
    for &backend in backends {
        for sc in all
            .iter()
            .filter(|s| names.is_empty() || names.iter().any(|n| n == s.name))
        {
            let r = run_scenario(prefix, backend, sc)?;
            each(&r);
            results.push(r);
        }
    }
    let tier = results
        .first()
        .map_or("unknown".to_owned(), |r| r.tier.clone());
    Ok(Validation {
        tier,
        passed: results.iter().all(|r| r.passed),
        seconds: start.elapsed().as_secs_f64(),
        scenarios: results,
    })
}

/// One line for a scenario: `PASS nft    filter-drop      tier tracepoint  lost 19/40 ...`.
pub fn line(r: &ScenarioResult) -> String {
    let mut s = format!(
        "{} {:<6} {:<16} tier {:<10} lost {}/{}",
        if r.passed { "PASS" } else { "FAIL" },
        r.backend_name(),
        r.scenario,
        r.tier,
        r.probe.lost,
        r.probe.sent
    );
    if let Some(l) = &r.probe.latency_ms {
        s.push_str(&format!(", p50 {:.2} ms, p99 {:.2} ms", l.p50, l.p99));
    }
    if let Some((cause, _)) = r.probe.lost_by_cause.iter().max_by_key(|(_, n)| **n) {
        s.push_str(&format!(", mostly {cause}"));
    }
    for p in &r.problems {
        s.push_str(&format!("\n       {p}"));
    }
    s
}

/// Runs `tracer validate`; returns whether every scenario passed.
pub fn run(args: ValidateArgs) -> Result<bool, Error> {
    if let Some(spec) = &args.kernel {
        return run_in_vm(spec, &args);
    }
    let json = args.out.format == OutputFormat::Json;
    if !json {
        println!(
            "validating this kernel with the lab's scenarios (labs named {}-*, brought down after each)",
            args.prefix
        );
    }
    let v = validate(
        &args.prefix,
        &args.backends,
        &args.scenarios,
        args.healthy_count,
        |r| {
            if !json {
                println!("{}", line(r));
            }
        },
    )?;
    let mut stdout = std::io::stdout().lock();
    if json {
        serde_json::to_writer_pretty(&mut stdout, &v)?;
        writeln!(stdout)?;
    } else {
        let failed = v.scenarios.iter().filter(|r| !r.passed).count();
        writeln!(
            stdout,
            "{} of {} scenarios passed on kernel {} with hook tier {} in {:.0} s",
            v.scenarios.len() - failed,
            v.scenarios.len(),
            nix::sys::utsname::uname()
                .map(|u| u.release().to_string_lossy().into_owned())
                .unwrap_or_default(),
            v.tier,
            v.seconds
        )?;
    }
    if let Some(path) = &args.out.report {
        let mut doc = Document::new("validate")?;
        doc.tier = Some(v.tier.clone());
        doc.node = Some(NodeFacts::from_inspect(
            &inspect::inspect(None).map_err(|source| Error::Inspect { source })?,
        ));
        doc.validate = Some(v.clone());
        doc.write(path)?;
        if !json {
            writeln!(stdout, "report written to {}", path.display())?;
        }
    }
    Ok(v.passed)
}

#[cfg(test)]
mod tests {
    use std::time::SystemTime;

    use super::*;
    use crate::{
        flow::record::{Drop, Seen as Reached, StageTimes},
        lab::Pod,
        measure::{BatchResult, Outcome, QueryRecord, RecordType, ResponseCode},
        probes::{
            plan::{Outcome as ProgramOutcome, Plan},
            table::Hook,
        },
    };

    const SERVICE: SocketAddrV4 = SocketAddrV4::new(Ipv4Addr::new(10, 96, 0, 10), 53);
    const DNS0: Ipv4Addr = Ipv4Addr::new(10, 244, 0, 10);

    fn lab() -> LabInfo {
        let pod = |name: &str, ip| Pod {
            name: name.to_owned(),
            netns: format!("t-{name}"),
            ip,
            host_ifname: format!("t{name}"),
        };
        LabInfo {
            prefix: "t".to_owned(),
            backend: Backend::Nft,
            node_netns: "t-node".to_owned(),
            service_ip: *SERVICE.ip(),
            dns_port: 53,
            endpoints: vec![
                pod("dns0", DNS0),
                pod("dns1", Ipv4Addr::new(10, 244, 0, 11)),
            ],
            clients: vec![pod("client0", Ipv4Addr::new(10, 244, 0, 20))],
            faults: vec![],
            stale_source_port: None,
        }
    }

    /// `answered` queries answered and `lost` timed out, from source ports 1000 on.
    fn batch(answered: u32, lost: u32) -> BatchResult {
        let query = |i: u32, outcome| QueryRecord {
            id: i as u16,
            name: "kubernetes.default.svc.cluster.local".to_owned(),
            qtype: RecordType::A,
            source_port: 1000 + i as u16,
            sent_at: Duration::from_millis(u64::from(i) * 5),
            outcome,
        };
        let answer = || Outcome::Answered {
            latency: Duration::from_micros(300),
            rcode: ResponseCode::NoError,
            addresses: vec![],
        };
        BatchResult {
            started: SystemTime::now(),
            sent: answered + lost,
            answered,
            lost,
            bad_answers: 0,
            queries: (0..answered)
                .map(|i| query(i, answer()))
                .chain((answered..answered + lost).map(|i| query(i, Outcome::TimedOut)))
                .collect(),
        }
    }

    /// The trace record of query `i`, dropped at `stage` after DNAT to dns0.
    fn dropped(i: u32, stage: &str) -> TraceRecord {
        TraceRecord {
            time_us: 0,
            client: SocketAddrV4::new(Ipv4Addr::new(10, 244, 0, 20), 1000 + i as u16),
            server: SERVICE,
            id: i as u16,
            name: None,
            qtype: None,
            verdict: Verdict::Dropped,
            endpoint: Some(DNS0),
            nat: None,
            confirmed: false,
            client_link: None,
            endpoint_link: None,
            latency_us: None,
            stages: StageTimes::default(),
            last_seen: Reached::Sent,
            retries: 0,
            drop: Some(Drop {
                stage: stage.to_owned(),
                reason: "NETFILTER_DROP".to_owned(),
                location: "nft_do_chain+0x3e8".to_owned(),
                backend: None,
                backend_from: None,
                table: None,
                chain: None,
                leg: Leg::QueryToPod,
                at: "t-node/td0".to_owned(),
                why: String::new(),
            }),
            icmp: None,
            conntrack: None,
        }
    }

    fn summary(queries: u64, answered: u64, plan: Option<Plan>) -> TraceSummary {
        TraceSummary {
            counters: Counters {
                queries,
                at_endpoint: queries,
                from_endpoint: answered,
                answered,
                ..Counters::default()
            },
            plan,
            ..TraceSummary::default()
        }
    }

    /// The problems of scenario `name` on this batch, summary and records.
    fn check(
        name: &str,
        result: &BatchResult,
        summary: &TraceSummary,
        records: &[TraceRecord],
    ) -> Vec<String> {
        let all = scenarios(40);
        let sc = all.iter().find(|s| s.name == name).unwrap();
        let lab = lab();
        let report = ProbeReport::new(
            "t-client0",
            SERVICE,
            &BatchSpec::default(),
            result,
            Some(summary),
            records,
        );
        let seen = Seen {
            lab: &lab,
            summary: Some(summary),
            records,
            report: &report,
            live: vec![DNS0, Ipv4Addr::new(10, 244, 0, 11)],
        };
        problems(sc, &seen)
    }

    // Scenario: the probe got every answer, but the TC programs saw nothing (they did not
    // attach): every per-query check passes (nothing was lost), so only the dead-stage check
    // can fail it.
    #[test]
    fn a_device_stage_that_saw_nothing_fails_the_scenario_and_is_named() {
        let healthy = batch(40, 0);
        let p = check("healthy", &healthy, &summary(0, 0, None), &[]);
        assert!(
            p.iter()
                .any(|p| p.starts_with("device stage saw 0 of 40 answered queries")),
            "{p:?}"
        );
        assert!(check("healthy", &healthy, &summary(40, 40, None), &[]).is_empty());
        assert!(
            check("healthy", &healthy, &summary(38, 37, None), &[]).is_empty(),
            "a few missed queries are not a dead stage"
        );
    }

    // Scenario: filter-drop lost queries that the tracer attributed, but not to netfilter.
    #[test]
    fn a_fault_whose_stage_recorded_nothing_names_the_stage() {
        let result = batch(20, 20);
        let records: Vec<TraceRecord> = (20..40).map(|i| dropped(i, "drop")).collect();
        let p = check("filter-drop", &result, &summary(40, 20, None), &records);
        assert!(
            p.iter()
                .any(|p| p.starts_with("netfilter stage recorded none of the 20 lost queries")),
            "{p:?}"
        );
        let records: Vec<TraceRecord> = (20..40).map(|i| dropped(i, "netfilter")).collect();
        let p = check("filter-drop", &result, &summary(40, 20, None), &records);
        assert!(p.is_empty(), "{p:?}");
    }

    // Scenario: on the fentry tier the NAT program attached but never fired.
    #[test]
    fn a_deep_tier_whose_nat_stage_saw_nothing_fails_healthy() {
        let plan = Plan::from_outcomes(vec![ProgramOutcome {
            program: "nat_manip_fexit",
            stage: Stage::Nat,
            hook: Hook::Fexit,
            fate: Fate::Attached {
                to: "nf_nat_manip_pkt".to_owned(),
            },
        }]);
        assert_eq!(plan.tier, Tier::Fentry);
        let healthy = batch(40, 0);
        let answered = |nat: bool| -> Vec<TraceRecord> {
            (0..40)
                .map(|i| TraceRecord {
                    verdict: Verdict::Answered,
                    drop: None,
                    nat: nat.then(|| SocketAddrV4::new(DNS0, 53)),
                    ..dropped(i, "none")
                })
                .collect()
        };
        let dead = summary(40, 40, Some(plan.clone()));
        let p = check("healthy", &healthy, &dead, &answered(false));
        assert!(
            p.iter().any(|p| p.starts_with("deep stages"))
                && p.iter().any(|p| p.starts_with("NAT stage")),
            "{p:?}"
        );
        let mut alive = summary(40, 40, Some(plan));
        alive.counters.deep_events = 120;
        assert!(check("healthy", &healthy, &alive, &answered(true)).is_empty());
    }
}
