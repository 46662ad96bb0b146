//! The tracer and the bpftrace anchor as child processes: started, waited on until attached,
//! stopped with SIGINT, their output kept and parsed. The tracer runs with `--output json` and is
//! read through its JSON lines (`TraceLine`), never its text.

use std::{
    collections::VecDeque,
    io::{BufRead as _, BufReader},
    path::Path,
    process::{Child, Command, Stdio},
    sync::mpsc,
    thread::{self, JoinHandle},
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};
use serde::Deserialize;

use super::{Mode, check_interrupted};

/// Lines kept from the end of the output (the summary); the lines before the attach marker are
/// all kept, the ones between are only counted (with `--all` there is one per query).
const TAIL_LINES: usize = 200;

/// What a child printed.
#[derive(Debug, Default)]
pub struct Captured {
    /// The lines up to and including the attach marker.
    pub head: Vec<String>,
    /// The last lines.
    pub tail: Vec<String>,
    /// Lines printed after the attach marker.
    pub lines_after_head: u64,
}

/// A child that has attached its programs.
pub struct Attached {
    guard: ChildGuard,
    /// Its pid.
    pub pid: u32,
    /// From spawn to the attach marker.
    pub ready: Duration,
    /// Where its stderr goes.
    stderr_path: std::path::PathBuf,
    reader: JoinHandle<Captured>,
    /// The lines up to the attach marker (a copy of `Captured::head`).
    pub head: Vec<String>,
}

enum Msg {
    Line(String),
    Ready,
}

impl Attached {
    /// Spawns `cmd` and waits until it prints a line `ready` accepts (the attach marker).
    pub fn start(
        name: &'static str,
        mut cmd: Command,
        ready: fn(&str) -> bool,
        within: Duration,
    ) -> anyhow::Result<Self> {
        let stderr_path =
            std::env::temp_dir().join(format!("trb-{name}-{}.err", std::process::id()));
        let err = std::fs::File::create(&stderr_path)
            .with_context(|| format!("failed to create {}", stderr_path.display()))?;
        let started = Instant::now();
        let mut child = cmd
            .stdout(Stdio::piped())
            .stderr(Stdio::from(err))
            .spawn()
            .with_context(|| format!("failed to start {cmd:?}"))?;
        let stdout = child.stdout.take().context("child stdout not piped")?;
        let pid = child.id();
        let guard = ChildGuard::new(name, child);
        let (tx, rx) = mpsc::channel();
        let reader = thread::spawn(move || {
            let mut cap = Captured::default();
            let mut tail = VecDeque::with_capacity(TAIL_LINES);
            let mut attached = false;
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if !attached {
                    attached = ready(&line);
                    cap.head.push(line.clone());
                    let _ = tx.send(Msg::Line(line));
                    if attached {
                        let _ = tx.send(Msg::Ready);
                    }
                    continue;
                }
                cap.lines_after_head += 1;
                if tail.len() == TAIL_LINES {
                    tail.pop_front();
                }
                tail.push_back(line);
            }
            cap.tail = tail.into();
            cap
        });
        let mut me = Self {
            guard,
            pid,
            ready: Duration::ZERO,
            stderr_path,
            reader,
            head: Vec::new(),
        };
        loop {
            check_interrupted()?;
            match rx.recv_timeout(Duration::from_millis(50)) {
                Ok(Msg::Line(l)) => me.head.push(l),
                Ok(Msg::Ready) => break,
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    if started.elapsed() > within {
                        bail!("{name} did not attach within {within:?}: {}", me.stderr());
                    }
                }
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    let _ = me.guard.child.wait();
                    bail!(
                        "{name} exited before attaching: {}{}",
                        me.head.join("\n"),
                        me.stderr()
                    );
                }
            }
        }
        me.ready = started.elapsed();
        Ok(me)
    }

    fn stderr(&self) -> String {
        std::fs::read_to_string(&self.stderr_path).unwrap_or_default()
    }

    /// Sends SIGINT and waits for the exit; returns the time from the signal to the exit, and
    /// the output.
    pub fn stop(mut self, name: &str) -> anyhow::Result<(Duration, Captured)> {
        let sent = Instant::now();
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.pid as i32),
            nix::sys::signal::Signal::SIGINT,
        )
        .with_context(|| format!("failed to signal {name}"))?;
        let status = loop {
            if let Some(s) = self
                .guard
                .child
                .try_wait()
                .with_context(|| format!("failed to wait for {name}"))?
            {
                break s;
            }
            if sent.elapsed() > Duration::from_secs(30) {
                bail!("{name} did not exit within 30 s of SIGINT");
            }
            thread::sleep(Duration::from_millis(1));
        };
        let detach = sent.elapsed();
        let err = self.stderr();
        let cap = self.reader.join().unwrap_or_default();
        let _ = std::fs::remove_file(&self.stderr_path);
        if !status.success() {
            bail!("{name} failed ({status}): {err}");
        }
        Ok((detach, cap))
    }
}

/// The tracer, attached to the lab in `mode` (the default, `--all` or `--rules`).
pub fn tracer(bin: &Path, prefix: &str, mode: Mode) -> anyhow::Result<Attached> {
    let args: &[&str] = match mode {
        Mode::TracerAll => &["--all"],
        Mode::TracerRules => &["--rules"],
        _ => &[],
    };
    if mode == Mode::Baseline {
        let mut cmd = Command::new(bin);
        cmd.args(["trace", "--lab", "--prefix", prefix, "--output", "json"]);
        return Attached::start(mode.name(), cmd, is_any_plan_line, Duration::from_secs(60));
    }
    tracer_with(bin, prefix, args, mode.name(), Duration::from_secs(60))
}

/// `tracer trace --lab --prefix PREFIX --output json` with `args`, waited on until it printed its
/// plan line (it prints it once attached).
pub fn tracer_with(
    bin: &Path,
    prefix: &str,
    args: &[&str],
    name: &'static str,
    within: Duration,
) -> anyhow::Result<Attached> {
    let mut cmd = Command::new(bin);
    cmd.args(["trace", "--lab", "--prefix", prefix, "--output", "json"]);
    cmd.args(args);
    Attached::start(name, cmd, is_plan_line, within)
}

/// The bpftrace anchor, filtered to these namespace inodes.
pub fn bpftrace(script: &Path, netns_inodes: &[u64; 4]) -> anyhow::Result<Attached> {
    let mut cmd = Command::new("bpftrace");
    // Unbuffered, so "Attaching N probes..." arrives when printed.
    cmd.args(["-B", "none"]).arg(script);
    cmd.args(netns_inodes.iter().map(u64::to_string));
    let a = Attached::start(
        "bpftrace",
        cmd,
        |l| l.contains("Attaching"),
        Duration::from_secs(60),
    )?;
    // bpftrace prints "Attaching" first, then loads and attaches its three programs.
    let deadline = Instant::now() + Duration::from_secs(30);
    while super::measure::prog_ids(a.pid)?.len() < 3 {
        check_interrupted()?;
        if Instant::now() > deadline {
            bail!("bpftrace printed its attach line but holds fewer than 3 programs after 30 s");
        }
        thread::sleep(Duration::from_millis(20));
    }
    Ok(a)
}

/// What the tracer's JSON lines say.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct TracerReport {
    /// Loading and attaching, as the tracer measured it (the plan line's `attach_ms`).
    pub attach_ms: f64,
    /// The hook plan, rebuilt from the plan line in the form the tracer's text output prints it.
    pub plan: Vec<String>,
    /// Queries the kernel side counted leaving a client.
    pub queries_seen: u64,
    /// Queries it saw answered.
    pub answered: u64,
    /// Ring-buffer records lost.
    pub lost_events: u64,
    /// Per-query lines printed (failed, slow, or every query with `--all`).
    pub query_lines: u64,
}

/// One line of `tracer trace --output json` (tracer/src/report/trace.rs `TraceLine`), with only
/// the fields the bench reads.
#[derive(Debug, Deserialize)]
#[serde(tag = "type", rename_all = "lowercase")]
enum TraceLine {
    /// The first line, printed once attached.
    Plan {
        /// Load and attach time.
        attach_ms: f64,
        /// The hook plan as carried out.
        plan: PlanLine,
    },
    /// A query reported (failed, slow, or any with `--all`).
    Query {},
    /// The last line.
    Summary {
        /// The kernel's counters over the trace.
        counters: Counters,
    },
}

/// The plan (tracer/src/probes/plan.rs `Plan`).
#[derive(Debug, Deserialize)]
struct PlanLine {
    tier: String,
    outcomes: Vec<Outcome>,
}

/// One program's outcome: `fate` is attached (with `to`), verified or skipped (with `reason`).
#[derive(Debug, Deserialize)]
struct Outcome {
    program: String,
    fate: String,
    to: Option<String>,
    reason: Option<String>,
}

/// The summary's counters (tracer/src/probes/session/maps.rs `Counters`).
#[derive(Debug, Deserialize)]
struct Counters {
    queries: u64,
    answered: u64,
    lost_events: u64,
}

impl PlanLine {
    /// As the tracer's text output prints it (`Plan`'s `Display`).
    fn text(&self) -> Vec<String> {
        let mut lines = vec![format!("hook tier: {}", self.tier)];
        for o in &self.outcomes {
            let detail = o.to.as_deref().or(o.reason.as_deref()).unwrap_or("");
            lines.push(format!("  {:<26} {:<9} {detail}", o.program, o.fate));
        }
        lines
    }
}

/// Whether `line` is the tracer's plan line, its attach marker.
fn is_plan_line(line: &str) -> bool {
    matches!(
        serde_json::from_str::<TraceLine>(line),
        Ok(TraceLine::Plan { .. })
    )
}

/// An older tracer's plan line too: before its lines were tagged with `type`, the first was
/// `{"plan": ...}` alone (a baseline is read for its BPF run statistics only).
fn is_any_plan_line(line: &str) -> bool {
    is_plan_line(line)
        || serde_json::from_str::<serde_json::Value>(line).is_ok_and(|v| v.get("plan").is_some())
}

impl TracerReport {
    /// Parses the tracer's plan line (the attach marker, last of the head) and the tail, which
    /// ends with the summary. Every line after the plan line that is not in the tail is a query
    /// line: the tracer prints nothing else between the two.
    pub fn parse(cap: &Captured) -> anyhow::Result<Self> {
        let (attach_ms, plan) = cap
            .head
            .iter()
            .find_map(|l| match serde_json::from_str(l) {
                Ok(TraceLine::Plan { attach_ms, plan }) => Some((attach_ms, plan)),
                _ => None,
            })
            .with_context(|| {
                format!("the tracer printed no plan line:\n{}", cap.head.join("\n"))
            })?;
        let tail = cap
            .tail
            .iter()
            .map(|l| {
                serde_json::from_str(l).with_context(|| {
                    format!("the tracer printed a line the bench cannot read: {l}")
                })
            })
            .collect::<anyhow::Result<Vec<TraceLine>>>()?;
        let Some(TraceLine::Summary { counters }) = tail.last() else {
            bail!(
                "the tracer's output does not end with a summary line:\n{}",
                cap.tail.join("\n")
            );
        };
        let not_queries = tail
            .iter()
            .filter(|l| !matches!(l, TraceLine::Query {}))
            .count();
        Ok(Self {
            attach_ms,
            plan: plan.text(),
            queries_seen: counters.queries,
            answered: counters.answered,
            lost_events: counters.lost_events,
            query_lines: cap.lines_after_head.saturating_sub(not_queries as u64),
        })
    }
}

/// The packet counts bpftrace printed at exit (`@packets[probe]: N`), summed.
pub fn bpftrace_packets(cap: &Captured) -> u64 {
    cap.tail
        .iter()
        .filter(|l| l.starts_with("@packets["))
        .filter_map(|l| {
            l.rsplit_once(": ")
                .and_then(|(_, n)| n.trim().parse::<u64>().ok())
        })
        .sum()
}

/// A child process stopped (SIGINT, then SIGKILL after 5 s) and reaped when dropped.
pub struct ChildGuard {
    name: &'static str,
    /// The process.
    pub child: Child,
}

impl ChildGuard {
    /// Owns `child`.
    pub fn new(name: &'static str, child: Child) -> Self {
        Self { name, child }
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(Some(_))) {
            return;
        }
        let pid = nix::unistd::Pid::from_raw(self.child.id() as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGINT);
        let until = Instant::now() + Duration::from_secs(5);
        while Instant::now() < until {
            if matches!(self.child.try_wait(), Ok(Some(_))) {
                return;
            }
            thread::sleep(Duration::from_millis(20));
        }
        eprintln!("bench: {} ignored SIGINT for 5 s, killing it", self.name);
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A real `tracer trace --lab --prefix hx --duration 15 --all --output json` on this
    /// machine's 6.18 (tracepoint tier) while `tracer probe --lab --prefix hx --count 12` ran.
    const TRACE_ALL: &str = include_str!("../../fixtures/trace-all.jsonl");
    /// The plan lines the text output of the same trace printed.
    const TRACE_PLAN: &str = include_str!("../../fixtures/trace-plan.txt");

    /// `out` as `Attached` captures it: up to the plan line, then the last `keep` lines.
    fn captured(out: &str, keep: usize) -> Captured {
        let lines: Vec<String> = out.lines().map(str::to_owned).collect();
        let at = lines.iter().position(|l| is_plan_line(l)).unwrap();
        let after = &lines[at + 1..];
        Captured {
            head: lines[..=at].to_vec(),
            tail: after[after.len().saturating_sub(keep)..].to_vec(),
            lines_after_head: after.len() as u64,
        }
    }

    #[test]
    fn parses_tracer_json_lines() {
        let r = TracerReport::parse(&captured(TRACE_ALL, TAIL_LINES)).unwrap();
        assert!((r.attach_ms - 643.9).abs() < 0.1, "{}", r.attach_ms);
        assert_eq!(
            (r.queries_seen, r.answered, r.lost_events, r.query_lines),
            (12, 12, 0, 12)
        );
        // The plan as the text output prints it, from the JSON.
        let text: Vec<&str> = TRACE_PLAN.lines().collect();
        assert_eq!(r.plan, text);
        // With more query lines than the tail keeps, the ones before it are counted too.
        let r = TracerReport::parse(&captured(TRACE_ALL, 3)).unwrap();
        assert_eq!((r.query_lines, r.answered), (12, 12));
    }

    #[test]
    fn a_tracer_output_without_plan_or_summary_is_an_error() {
        assert!(TracerReport::parse(&Captured::default()).is_err());
        let mut cut = captured(TRACE_ALL, TAIL_LINES);
        cut.tail.pop();
        assert!(TracerReport::parse(&cut).is_err());
        // The text output is not read at all.
        assert!(!is_plan_line("hook tier: tracepoint"));
        assert!(!is_plan_line(TRACE_ALL.lines().nth(1).unwrap()));
    }

    #[test]
    fn sums_bpftrace_packet_counts() {
        let cap = Captured {
            tail: vec![
                "@packets[tracepoint:net:net_dev_queue]: 40".to_owned(),
                "@packets[tracepoint:net:netif_receive_skb]: 2".to_owned(),
                "@drops[5]: 9".to_owned(),
            ],
            ..Default::default()
        };
        assert_eq!(bpftrace_packets(&cap), 42);
    }
}
