//! `tracer trace` stopped at any moment: 100 start/stop cycles on one lab under DNS load, with
//! SIGINT, SIGTERM and SIGKILL sent while it loads, while it attaches and while traffic flows.
//! SIGINT and SIGTERM must end it with the summary and exit 0; after every cycle, killed ones
//! included, nothing of the tracer may stay in the kernel: programs, links, TC filters and
//! qdiscs, pinned objects, its nftrace table and TRACE rules. And two tracers at once: each keeps
//! its own results, and a second rule trace in one namespace is refused, not stolen. And `lab up`,
//! `validate` and `doctor` stopped by a signal: a distinct exit code, no lab, no program left.
//! Run as root, one test at a time.

mod common;

use std::{
    collections::HashSet,
    io::{BufRead as _, BufReader},
    process::{Command, ExitStatus, Stdio},
    sync::{Arc, Mutex},
    thread,
    time::{Duration, Instant, SystemTime},
};

use common::{ChildGuard, LabGuard, leftovers};
use nix::{
    sys::signal::{Signal, kill},
    unistd::Pid,
};
use tracer::node::Backend;

const TRACER: &str = env!("CARGO_BIN_EXE_tracer");

/// The eBPF programs' names (as the kernel keeps them: at most 15 bytes).
const PROGRAMS: [&str; 19] = [
    "conntrack_confirm_enter",
    "conntrack_confirm_exit",
    "conntrack_confirm_fexit",
    "device_tc_egress",
    "device_tc_ingress",
    "drop_icmp_send",
    "drop_kfree_skb",
    "drop_kfree_skb_noreason",
    "nat_manip_enter",
    "nat_manip_exit",
    "nat_manip_fexit",
    "netfilter_ipt_enter",
    "netfilter_ipt_exit",
    "netfilter_ipt_fexit",
    "netfilter_nft_enter",
    "netfilter_nft_exit",
    "netfilter_nft_fexit",
    "socket_rcvqueue_full",
    "socket_udp_fail_queue",
];

/// The eBPF maps' names.
const MAPS: [&str; 7] = [
    "CONFIG",
    "EVENTS",
    "QUERY_SLOTS",
    "PENDING",
    "COUNTERS",
    "LATENCY",
    "NETNS_FILTER",
];

/// The header line `trace` prints once everything is attached.
const ATTACHED: &str = "ms to attach";
/// The summary's first line.
const SUMMARY: &str = "== summary:";

/// DNS load on the lab: `tracer probe --no-trace` from client0, for at most ten minutes.
fn load(prefix: &str, rate: u32) -> ChildGuard {
    let child = Command::new(TRACER)
        .args(["probe", "--lab", "--prefix", prefix, "--no-trace"])
        .args(["--rate", &rate.to_string(), "--duration", "600"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start the DNS load");
    ChildGuard(Some(child))
}

/// A running `tracer trace --lab` and what it printed so far.
struct Traced {
    child: ChildGuard,
    stdout: Arc<Mutex<String>>,
    stderr: Arc<Mutex<String>>,
    readers: Vec<thread::JoinHandle<()>>,
}

fn trace(prefix: &str, rules: bool) -> Traced {
    let mut cmd = Command::new(TRACER);
    cmd.args(["trace", "--lab", "--prefix", prefix]);
    if rules {
        cmd.arg("--rules");
    }
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start tracer trace");
    let stdout = Arc::new(Mutex::new(String::new()));
    let stderr = Arc::new(Mutex::new(String::new()));
    let mut readers = Vec::new();
    let out = child.stdout.take().expect("stdout");
    let err = child.stderr.take().expect("stderr");
    for (pipe, text) in [
        (
            Box::new(out) as Box<dyn std::io::Read + Send>,
            stdout.clone(),
        ),
        (Box::new(err), stderr.clone()),
    ] {
        readers.push(thread::spawn(move || {
            for line in BufReader::new(pipe).lines().map_while(Result::ok) {
                let mut t = text.lock().expect("lock");
                t.push_str(&line);
                t.push('\n');
            }
        }));
    }
    Traced {
        child: ChildGuard(Some(child)),
        stdout,
        stderr,
        readers,
    }
}

impl Traced {
    fn printed(&self, what: &str) -> bool {
        self.stdout.lock().expect("lock").contains(what)
    }

    /// Waits until the header says everything is attached (panics after `bound`).
    fn wait_attached(&self, bound: Duration) {
        let deadline = Instant::now() + bound;
        while !self.printed(ATTACHED) {
            assert!(
                Instant::now() < deadline,
                "trace did not attach within {bound:?}: {}",
                self.stderr.lock().expect("lock")
            );
            thread::sleep(Duration::from_millis(10));
        }
    }

    /// Sends `signal`, waits for the exit and both pipes' end: (status, stdout, stderr).
    fn stop(self, signal: Signal) -> (ExitStatus, String, String) {
        kill(self.child.pid(), signal).expect("signal the tracer");
        self.exit()
    }

    /// Waits for the exit and both pipes' end: (status, stdout, stderr).
    fn exit(mut self) -> (ExitStatus, String, String) {
        let status = self.child.wait(Duration::from_secs(60));
        for r in self.readers.drain(..) {
            r.join().expect("reader");
        }
        let out = self.stdout.lock().expect("lock").clone();
        let err = self.stderr.lock().expect("lock").clone();
        (status, out, err)
    }
}

/// A small xorshift generator; the seed is printed so that a failing run can be replayed.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }
}

/// Runs `args` in the lab's node namespace: (success, stdout).
fn in_node(node: &str, args: &[&str]) -> (bool, String) {
    let out = Command::new("ip")
        .args(["netns", "exec", node])
        .args(args)
        .output()
        .expect("run in the node namespace");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

/// Whether `name` (as the kernel truncates it) is one of the tracer's programs.
fn is_tracer_program(name: &str) -> bool {
    PROGRAMS
        .iter()
        .any(|p| p.starts_with(name) && name.len() >= 8)
}

/// The BPF programs on the lab's node links that `tc` shows (classic TC filters, as attached
/// before 6.6) and clsact qdiscs. TCX links (6.6+) are not shown by `tc`: a TCX link nobody holds
/// is found by [`tracer_leftovers`] among the links of orphan programs.
fn attached_in_node(node: &str) -> Vec<String> {
    let mut found = Vec::new();
    let (_, links) = in_node(node, &["ip", "-o", "link", "show"]);
    for line in links.lines() {
        let Some(name) = line.split(": ").nth(1).and_then(|n| n.split('@').next()) else {
            continue;
        };
        for dir in ["ingress", "egress"] {
            let (_, filters) = in_node(node, &["tc", "filter", "show", "dev", name, dir]);
            found.extend(
                filters
                    .lines()
                    .filter(|l| l.contains(" bpf ") && PROGRAMS.iter().any(|p| l.contains(&p[..8])))
                    .map(|l| format!("{name} {dir}: {l}")),
            );
        }
    }
    let (_, qdiscs) = in_node(node, &["tc", "qdisc", "show"]);
    found.extend(
        qdiscs
            .lines()
            .filter(|l| l.contains("clsact"))
            .map(|l| format!("qdisc {l}")),
    );
    found
}

/// How many TC links (TCX: a link with an interface) process `pid` holds, from its fdinfo.
fn tc_links_held(pid: Pid) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fdinfo"))
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|fd| std::fs::read_to_string(fd.path()).ok())
        .filter(|info| info.contains("link_id:") && info.contains("ifindex:"))
        .count()
}

/// What a tracer left anywhere: programs and links of its names that no process holds (what a
/// killed run leaves attached through netlink or a pin), pinned objects of its names, and on the
/// lab's node its TC programs and qdiscs, its nftrace table and TRACE rules.
fn tracer_leftovers(node: &str) -> Vec<String> {
    let mut left = attached_in_node(node);
    let json = |args: &[&str]| -> serde_json::Value {
        let out = Command::new("bpftool")
            .args(args)
            .output()
            .expect("bpftool");
        serde_json::from_slice(&out.stdout).unwrap_or_default()
    };
    let (held_progs, held_links) = held_bpf_ids();
    let progs = json(&["prog", "list", "-j"]);
    let mut orphan_ids = Vec::new();
    for p in progs.as_array().into_iter().flatten() {
        let name = p["name"].as_str().unwrap_or_default();
        let id = p["id"].as_u64().unwrap_or_default();
        if is_tracer_program(name) && !held_progs.contains(&id) {
            left.push(format!("program {name} (id {id}) held by no process"));
            orphan_ids.push(id);
        }
    }
    for l in json(&["link", "list", "-j"])
        .as_array()
        .into_iter()
        .flatten()
    {
        let (id, prog) = (l["id"].as_u64(), l["prog_id"].as_u64().unwrap_or_default());
        if !id.is_some_and(|id| held_links.contains(&id)) && orphan_ids.contains(&prog) {
            left.push(format!("link {id:?} of program {prog}"));
        }
    }
    let mut pinned = Vec::new();
    pinned_under(std::path::Path::new("/sys/fs/bpf"), &mut pinned);
    left.extend(pinned);
    if in_node(node, &["nft", "list", "table", "inet", "tracer_rules"]).0 {
        left.push("nft table inet tracer_rules".to_owned());
    }
    let (_, raw) = in_node(node, &["iptables-legacy-save", "-t", "raw"]);
    left.extend(
        raw.lines()
            .filter(|l| l.contains("-j TRACE"))
            .map(|l| format!("legacy rule {l}")),
    );
    left
}

/// The BPF programs and links some process holds a file descriptor of (`prog_id` and `link_id`
/// in `/proc/PID/fdinfo`; a link's fd names its program too): a tracer's, killed or not, holds
/// its own, and only what is attached without one (netlink TC, pins) outlives it.
fn held_bpf_ids() -> (HashSet<u64>, HashSet<u64>) {
    let (mut progs, mut links) = (HashSet::new(), HashSet::new());
    for proc in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        for fd in std::fs::read_dir(proc.path().join("fdinfo"))
            .into_iter()
            .flatten()
            .flatten()
        {
            let Ok(info) = std::fs::read_to_string(fd.path()) else {
                continue;
            };
            for line in info.lines() {
                let id = |key: &str| line.strip_prefix(key)?.trim().parse::<u64>().ok();
                if let Some(id) = id("prog_id:") {
                    progs.insert(id);
                }
                if let Some(id) = id("link_id:") {
                    links.insert(id);
                }
            }
        }
    }
    (progs, links)
}

/// Pinned files under `dir` named like the tracer's maps or programs.
fn pinned_under(dir: &std::path::Path, out: &mut Vec<String>) {
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let path = entry.path();
        let name = entry.file_name().to_string_lossy().into_owned();
        if MAPS.contains(&name.as_str()) || is_tracer_program(&name) || name.contains("tracer") {
            out.push(format!("pinned {}", path.display()));
        }
        if entry.file_type().is_ok_and(|t| t.is_dir()) {
            pinned_under(&path, out);
        }
    }
}

/// When a signal is sent.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Moment {
    /// 5-80 ms after the start: arguments, the lab's state, BTF, loading.
    Loading,
    /// 80-600 ms after the start: loading and attaching (whatever the header says by then).
    Attaching,
    /// After the header said everything is attached, with the load's queries flowing.
    Flowing,
}

/// Scenario: 100 cycles of `trace --lab` (every third with `--rules`) on one nft lab under DNS
/// load, stopped by SIGINT, SIGTERM or SIGKILL at a random moment; each INT and TERM exits 0 with
/// the summary, and at the end nothing of the tracer is left on the node or in the kernel.
#[test]
fn a_hundred_signal_cycles_under_load_leave_nothing_behind() {
    const PREFIX: &str = "hl2";
    const CYCLES: usize = 100;
    let seed = std::env::var("TRACER_LIFECYCLE_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            SystemTime::now()
                .duration_since(SystemTime::UNIX_EPOCH)
                .expect("clock")
                .as_nanos() as u64
                | 1
        });
    eprintln!("lifecycle: seed {seed} (TRACER_LIFECYCLE_SEED replays it)");
    let mut rng = Rng(seed);
    let lab = LabGuard::up(PREFIX, Backend::Nft);
    let node = lab.info.node_netns.clone();
    let before = tracer_leftovers(&node);
    assert!(before.is_empty(), "left before the test: {before:?}");
    let started = Instant::now();
    let load = load(PREFIX, 200);
    let signals = [Signal::SIGINT, Signal::SIGTERM, Signal::SIGKILL];
    let mut counts = [0usize; 3];
    let mut moments = [0usize; 3];
    let (mut seen_attached, mut leftover_tables_removed) = (0, 0);
    for i in 0..CYCLES {
        let which = (i + rng.below(3) as usize) % 3;
        let signal = signals[which];
        let moment = [Moment::Loading, Moment::Attaching, Moment::Flowing][rng.below(3) as usize];
        let rules = i % 3 == 0;
        let t = trace(PREFIX, rules);
        match moment {
            Moment::Loading => thread::sleep(Duration::from_millis(5 + rng.below(75))),
            Moment::Attaching => thread::sleep(Duration::from_millis(80 + rng.below(520))),
            Moment::Flowing => {
                t.wait_attached(Duration::from_secs(30));
                let held = tc_links_held(t.child.pid());
                let classic = attached_in_node(&node);
                assert!(
                    held > 0 || !classic.is_empty(),
                    "cycle {i}: the header says attached, but the tracer holds no TC link and the node's links carry no tracer filter"
                );
                seen_attached += 1;
                thread::sleep(Duration::from_millis(rng.below(400)));
            }
        }
        counts[which] += 1;
        moments[moment as usize] += 1;
        let (status, out, err) = t.stop(signal);
        if err.contains("left by a killed run") {
            leftover_tables_removed += 1;
        }
        if signal == Signal::SIGKILL {
            assert_eq!(
                std::os::unix::process::ExitStatusExt::signal(&status),
                Some(9),
                "cycle {i}: SIGKILL at {moment:?}: {status:?}"
            );
        } else {
            assert!(
                status.success(),
                "cycle {i}: {signal} at {moment:?} (--rules {rules}) gave {status:?}; stderr:\n{err}"
            );
            assert!(
                out.contains(SUMMARY),
                "cycle {i}: {signal} at {moment:?}: no summary; stdout:\n{out}\nstderr:\n{err}"
            );
            let left = attached_in_node(&node);
            assert!(
                left.is_empty(),
                "cycle {i}: {signal} at {moment:?} left {left:?}"
            );
        }
    }
    // The last cycle may have been killed: the next start cleans its leftovers.
    let (status, out, err) = {
        let t = trace(PREFIX, true);
        t.wait_attached(Duration::from_secs(30));
        t.stop(Signal::SIGINT)
    };
    assert!(
        status.success() && out.contains(SUMMARY),
        "{status:?}\n{err}"
    );
    drop(load);
    eprintln!(
        "lifecycle: {CYCLES} cycles in {:.0} s: INT {} TERM {} KILL {}; loading {} attaching {} flowing {}; attached seen {seen_attached}; killed runs' tables removed by the next start {leftover_tables_removed}",
        started.elapsed().as_secs_f64(),
        counts[0],
        counts[1],
        counts[2],
        moments[0],
        moments[1],
        moments[2]
    );
    for (n, what) in counts.iter().zip(["SIGINT", "SIGTERM", "SIGKILL"]) {
        assert!(*n >= 20, "only {n} cycles with {what}: {counts:?}");
    }
    for (n, what) in moments.iter().zip(["loading", "attaching", "flowing"]) {
        assert!(
            *n >= 10,
            "only {n} cycles signalled while {what}: {moments:?}"
        );
    }
    assert!(
        seen_attached >= 10,
        "programs seen attached in {seen_attached} cycles"
    );
    let left = tracer_leftovers(&node);
    assert!(left.is_empty(), "the tracer left: {left:?}");
    drop(lab);
    let left = leftovers(PREFIX);
    assert!(left.is_empty(), "the lab left: {left:?}");
}

/// Scenario: two traces of one lab at once each see the load and end cleanly, and a second
/// `--rules` trace in the namespace of a running one is refused (naming its pid) without taking
/// the first one's table; the first keeps tracing and removes its table at its exit.
#[test]
fn two_tracers_at_once_keep_their_own_results() {
    const PREFIX: &str = "hl4";
    let lab = LabGuard::up(PREFIX, Backend::Nft);
    let node = lab.info.node_netns.clone();
    let _load = load(PREFIX, 100);
    let first = trace(PREFIX, true);
    first.wait_attached(Duration::from_secs(30));
    let first_pid = first.child.pid();
    let second = trace(PREFIX, false);
    second.wait_attached(Duration::from_secs(30));
    let (status, _, err) = trace(PREFIX, true).exit();
    assert!(!status.success(), "a second --rules trace ran: {err}");
    assert!(
        err.contains(&format!("another tracer (pid {first_pid})")),
        "{err}"
    );
    assert!(
        in_node(&node, &["nft", "list", "table", "inet", "tracer_rules"]).0,
        "the refused trace took the running one's table"
    );
    thread::sleep(Duration::from_secs(2));
    for (t, name) in [(second, "second"), (first, "first")] {
        let (status, out, err) = t.stop(Signal::SIGTERM);
        assert!(status.success(), "{name}: {status:?}\n{err}");
        let answered = out
            .lines()
            .find_map(|l| {
                let at = l.find("answered ")?;
                l[at + 9..].split_whitespace().next()?.parse::<u64>().ok()
            })
            .unwrap_or(0);
        assert!(answered > 0, "{name} saw no answered query:\n{out}");
    }
    let left = tracer_leftovers(&node);
    assert!(left.is_empty(), "left: {left:?}");
}

/// Scenario: `tracer probe --lab` (traced) stopped by SIGTERM while it sends, and by SIGINT while
/// it loads: it stops sending, exits 0 and prints its table with fewer lookups sent than asked.
#[test]
fn probe_stops_on_a_signal_with_its_table() {
    const PREFIX: &str = "hl5";
    let lab = LabGuard::up(PREFIX, Backend::Nft);
    for (signal, after_start) in [(Signal::SIGTERM, true), (Signal::SIGINT, false)] {
        let mut child = Command::new(TRACER)
            .args(["probe", "--lab", "--prefix", PREFIX])
            .args(["--rate", "100", "--duration", "60", "--timeout", "1"])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start tracer probe");
        let mut stdout = BufReader::new(child.stdout.take().expect("stdout"));
        let mut guard = ChildGuard(Some(child));
        if after_start {
            let mut line = String::new();
            while !line.starts_with("probing") {
                line.clear();
                assert!(
                    stdout.read_line(&mut line).expect("read") > 0,
                    "probe ended before sending"
                );
            }
            thread::sleep(Duration::from_secs(1));
        } else {
            thread::sleep(Duration::from_millis(50));
        }
        kill(guard.pid(), signal).expect("signal probe");
        let status = guard.wait(Duration::from_secs(60));
        let mut out = String::new();
        std::io::Read::read_to_string(&mut stdout, &mut out).expect("read");
        assert!(status.success(), "{signal}: {status:?}\n{out}");
        let sent: u32 = out
            .lines()
            .skip_while(|l| !l.contains("sent"))
            .nth(2)
            .and_then(|l| {
                l.trim_matches(|c: char| !c.is_ascii_digit())
                    .split_whitespace()
                    .next()?
                    .parse()
                    .ok()
            })
            .unwrap_or_else(|| panic!("{signal}: no table:\n{out}"));
        assert!(
            sent < 6000,
            "{signal}: sent {sent} of 6000: it did not stop"
        );
        if after_start {
            assert!(sent > 0, "{signal}: sent nothing in a second:\n{out}");
        }
    }
    drop(lab);
    assert!(leftovers(PREFIX).is_empty());
}

/// Runs `tracer ARGS`, sends `signal` after `after`, and waits: (status, stderr). A command that
/// ended before the signal is returned as it ended.
fn signalled(args: &[&str], signal: Signal, after: Duration) -> (ExitStatus, String) {
    let mut child = Command::new(TRACER)
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start tracer");
    let mut stderr = child.stderr.take().expect("stderr");
    let mut guard = ChildGuard(Some(child));
    thread::sleep(after);
    // An exited child is reaped by `wait` only: a signal to its pid still reaches the zombie.
    kill(guard.pid(), signal).expect("signal the command");
    let status = guard.wait(Duration::from_secs(120));
    let mut err = String::new();
    std::io::Read::read_to_string(&mut stderr, &mut err).expect("read stderr");
    (status, err)
}

/// Whether a command stopped by a signal said so and exited 130.
fn interrupted(status: ExitStatus, err: &str, signal: Signal) -> bool {
    status.code() == Some(130) && err.contains(&format!("interrupted by {signal}"))
}

/// Scenario: `lab up`, `validate` and `doctor` stopped by SIGINT or SIGTERM at several moments
/// (bringing the lab up, attaching, probing): each exits 130 with one line saying it was
/// interrupted (or 0, having finished first), and leaves no lab and no tracer program.
#[test]
fn lab_up_validate_and_doctor_stop_on_a_signal_and_leave_nothing() {
    const LAB: &str = "hl6";
    const VALIDATED: &str = "hl7";
    let mut stopped = 0;
    for (i, ms) in [40u64, 100, 160].into_iter().enumerate() {
        let signal = [Signal::SIGINT, Signal::SIGTERM][i % 2];
        let args = ["lab", "up", "--prefix", LAB, "--backend", "nft"];
        let (status, err) = signalled(&args, signal, Duration::from_millis(ms));
        if interrupted(status, &err, signal) {
            stopped += 1;
        } else {
            assert!(
                status.success(),
                "lab up, {signal} at {ms} ms: {status:?}\n{err}"
            );
            Command::new(TRACER)
                .args(["lab", "down", "--prefix", LAB])
                .status()
                .expect("lab down");
        }
        let left = leftovers(LAB);
        assert!(left.is_empty(), "lab up, {signal} at {ms} ms left {left:?}");
    }
    assert!(stopped >= 2, "lab up was interrupted {stopped} times of 3");
    // Seconds in: the lab coming up, the tracer attaching, the probe's 2000 queries at 200/s.
    for (i, secs) in [1.0, 4.0, 7.0].into_iter().enumerate() {
        let signal = [Signal::SIGTERM, Signal::SIGINT][i % 2];
        let args = [
            "validate",
            "--prefix",
            VALIDATED,
            "--backend",
            "nft",
            "--scenario",
            "healthy",
            "--healthy-count",
            "2000",
        ];
        let (status, err) = signalled(&args, signal, Duration::from_secs_f64(secs));
        assert!(
            interrupted(status, &err, signal),
            "validate, {signal} at {secs} s: {status:?}\n{err}"
        );
        let left = leftovers(VALIDATED);
        assert!(left.is_empty(), "validate at {secs} s left {left:?}");
        // The lab's node namespace is gone: what is left to find is orphan programs and pins.
        let left = tracer_leftovers(VALIDATED);
        assert!(left.is_empty(), "validate at {secs} s left {left:?}");
    }
    let lab = LabGuard::up(LAB, Backend::Nft);
    let node = lab.info.node_netns.clone();
    for (i, ms) in [300u64, 3000].into_iter().enumerate() {
        let signal = [Signal::SIGINT, Signal::SIGTERM][i % 2];
        let args = ["doctor", "--lab", "--prefix", LAB, "--count", "400"];
        let (status, err) = signalled(&args, signal, Duration::from_millis(ms));
        assert!(
            interrupted(status, &err, signal),
            "doctor, {signal} at {ms} ms: {status:?}\n{err}"
        );
        let left = tracer_leftovers(&node);
        assert!(left.is_empty(), "doctor at {ms} ms left {left:?}");
    }
    drop(lab);
    assert!(leftovers(LAB).is_empty());
}
