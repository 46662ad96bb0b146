//! Helpers shared by the scenario tests: a lab that goes down however the test ends, DNS batches
//! from a client pod through the Service IP, conntrack statistics of the node, and a census of
//! what a lab left behind. Each test file uses only some of them.
#![allow(dead_code)]

use std::{process::Command, time::Duration};

use tracer::{
    lab::{self, LabInfo},
    measure::{self, BatchResult, BatchSpec, Outcome, RecordType},
    netns,
    node::{
        Backend,
        conntrack::{self, CpuStats},
    },
    probes::plan::{Fate, Tier},
    trace::{Settings, Target, Tracer},
};

/// Both iptables backends, as the scenario tests run each of them.
pub const BACKENDS: [Backend; 2] = [Backend::Nft, Backend::Legacy];

/// The hook tier the scenario tests must run on: `TRACER_TEST_TIER` (fentry, kprobe,
/// tracepoint), set by `cargo xtask test` for each tier a kernel offers; unset or `auto`: the best
/// this kernel allows.
pub fn tier() -> Option<Tier> {
    match std::env::var("TRACER_TEST_TIER").as_deref() {
        Ok("fentry") => Some(Tier::Fentry),
        Ok("kprobe") => Some(Tier::Kprobe),
        Ok("tracepoint") => Some(Tier::Tracepoint),
        Ok("auto") | Err(_) => None,
        Ok(other) => panic!("TRACER_TEST_TIER={other}: say fentry, kprobe, tracepoint or auto"),
    }
}

/// Whether this kernel names drop reasons (5.17 and later); before, drops are placed by location.
pub fn has_drop_reasons() -> bool {
    !tracer::kernel::btf::KernelBtf::load()
        .expect("kernel BTF")
        .drop_reasons()
        .is_empty()
}

/// Starts the tracer on the lab, and checks that both TC programs hang on every pod link: without
/// them no record has its device stages, and a scenario could pass on the other hooks' evidence
/// alone.
pub fn trace_lab(info: &LabInfo, settings: &Settings) -> Tracer {
    let tracer =
        Tracer::start(Target::lab(info).expect("lab target"), settings).expect("start the tracer");
    for program in ["device_tc_ingress", "device_tc_egress"] {
        let outcomes = &tracer.plan().outcomes;
        let fate = outcomes
            .iter()
            .find(|o| o.program == program)
            .map(|o| &o.fate);
        assert!(
            matches!(fate, Some(Fate::Attached { to }) if !to.contains("failed on")),
            "{program} on every pod link: {fate:?}"
        );
    }
    tracer
}

/// A lab brought up for one test and brought down when the guard drops (also on panic).
pub struct LabGuard {
    /// The running lab.
    pub info: LabInfo,
}

impl LabGuard {
    /// Brings up lab `prefix` (each test its own prefix) with one client pod.
    pub fn up(prefix: &str, backend: Backend) -> Self {
        Self::up_with_clients(prefix, backend, 1)
    }

    /// Brings up lab `prefix` with `clients` client pods.
    pub fn up_with_clients(prefix: &str, backend: Backend, clients: u8) -> Self {
        let info =
            lab::up(prefix, backend, clients).unwrap_or_else(|e| panic!("lab up {prefix}: {e}"));
        Self { info }
    }

    /// The lab as it is now (faults, stale port).
    pub fn refresh(&mut self) -> &LabInfo {
        self.info = lab::info(&self.info.prefix)
            .expect("lab info")
            .expect("lab is up");
        &self.info
    }

    /// Applies a fault, panicking with the error.
    pub fn fault(&mut self, name: tracer::lab::FaultName, pod: Option<u8>) -> &LabInfo {
        lab::fault(&self.info.prefix, name, pod).unwrap_or_else(|e| panic!("fault {name:?}: {e}"));
        self.refresh()
    }

    /// Clears every fault, panicking with the error.
    pub fn clear(&mut self) {
        lab::clear(&self.info.prefix).unwrap_or_else(|e| panic!("fault clear: {e}"));
        self.refresh();
    }

    /// Sends `spec` from client0 to the Service IP.
    pub fn probe(&self, spec: &BatchSpec) -> BatchResult {
        let client = &self.info.clients[0].netns;
        let server = std::net::SocketAddr::from((self.info.service_ip, self.info.dns_port));
        measure::query_batch(Some(client), server, spec).expect("query batch")
    }

    /// The node's conntrack statistics summed over CPUs.
    pub fn conntrack_stats(&self) -> CpuStats {
        let stats = netns::run_in(&netns::named(&self.info.node_netns), conntrack::stats)
            .expect("enter node namespace")
            .expect("conntrack statistics");
        CpuStats::sum(&stats)
    }
}

impl Drop for LabGuard {
    fn drop(&mut self) {
        if let Err(e) = lab::down(&self.info.prefix) {
            eprintln!("lab down {}: {e}", self.info.prefix);
        }
    }
}

/// `count` A queries for kubernetes.default at 200 lookups/s, 1 s timeout.
pub fn batch(count: u32) -> BatchSpec {
    BatchSpec {
        count,
        rate: 200.0,
        timeout: Duration::from_secs(1),
        ..BatchSpec::default()
    }
}

/// `count` whoami queries: each answer names the DNS pod that served it.
pub fn whoami(count: u32) -> BatchSpec {
    BatchSpec {
        names: vec![lab::WHOAMI.to_owned()],
        qtypes: vec![RecordType::A],
        ..batch(count)
    }
}

/// The addresses in every answer of a batch.
pub fn answer_addresses(result: &BatchResult) -> Vec<std::net::IpAddr> {
    result
        .queries
        .iter()
        .filter_map(|q| match &q.outcome {
            Outcome::Answered { addresses, .. } => Some(addresses.clone()),
            _ => None,
        })
        .flatten()
        .collect()
}

/// What lab `prefix` left: its namespaces, processes started from its state directory, and the
/// state directory itself.
pub fn leftovers(prefix: &str) -> Vec<String> {
    let mut left = Vec::new();
    if let Ok(entries) = std::fs::read_dir(netns::NETNS_DIR) {
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.starts_with(&format!("{prefix}-")) {
                left.push(format!("namespace {name}"));
            }
        }
    }
    let state_dir = lab::state_dir(prefix);
    let marker = format!("{}/", state_dir.display());
    if let Ok(entries) = std::fs::read_dir("/proc") {
        for entry in entries.flatten() {
            let cmdline = std::fs::read(entry.path().join("cmdline")).unwrap_or_default();
            if String::from_utf8_lossy(&cmdline).contains(&marker) {
                left.push(format!("process {}", entry.file_name().to_string_lossy()));
            }
        }
    }
    if state_dir.exists() {
        left.push(format!("state directory {}", state_dir.display()));
    }
    left
}

/// Runs `args` in the lab's node namespace and returns its stdout.
pub fn in_node(lab: &LabGuard, args: &[&str]) -> String {
    let out = Command::new("ip")
        .args(["netns", "exec", &lab.info.node_netns])
        .args(args)
        .output()
        .expect("run in the node namespace");
    assert!(out.status.success(), "{args:?}: {out:?}");
    String::from_utf8(out.stdout).expect("utf-8")
}

/// A child process ended with SIGKILL (and reaped) when the guard drops, unless it exited.
pub struct ChildGuard(pub Option<std::process::Child>);

impl ChildGuard {
    pub fn pid(&self) -> nix::unistd::Pid {
        nix::unistd::Pid::from_raw(self.0.as_ref().expect("child").id() as i32)
    }

    /// Waits for the child to exit (at most `bound`: a hang is a failure, not a wait forever).
    pub fn wait(&mut self, bound: Duration) -> std::process::ExitStatus {
        let deadline = std::time::Instant::now() + bound;
        let child = self.0.as_mut().expect("child");
        loop {
            if let Some(status) = child.try_wait().expect("wait for the tracer") {
                self.0 = None;
                return status;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "the tracer did not exit within {bound:?} of its signal"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        if let Some(child) = self.0.as_mut() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}
