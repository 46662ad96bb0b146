//! The tracer and the bpftrace anchor as child processes: started, waited on until attached,
//! stopped with SIGINT, their output kept and parsed.

use std::{
    collections::VecDeque,
    io::{BufRead as _, BufReader},
    path::Path,
    process::{Command, Stdio},
    sync::mpsc,
    thread::{self, JoinHandle},
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};

use super::{ChildGuard, check_interrupted};

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
    /// Spawns `cmd` and waits until it prints a line containing `marker`.
    pub fn start(
        name: &'static str,
        mut cmd: Command,
        marker: &'static str,
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
            let mut ready = false;
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if !ready {
                    ready = line.contains(marker);
                    cap.head.push(line.clone());
                    let _ = tx.send(Msg::Line(line));
                    if ready {
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

/// The tracer, attached to the lab.
pub fn tracer(bin: &Path, prefix: &str, all: bool) -> anyhow::Result<Attached> {
    let mut cmd = Command::new(bin);
    cmd.args(["trace", "--lab", "--prefix", prefix]);
    if all {
        cmd.arg("--all");
    }
    Attached::start(
        if all { "tracer --all" } else { "tracer" },
        cmd,
        "reporting failed queries",
        Duration::from_secs(60),
    )
}

/// The bpftrace anchor, filtered to these namespace inodes.
pub fn bpftrace(script: &Path, netns_inodes: &[u64; 4]) -> anyhow::Result<Attached> {
    let mut cmd = Command::new("bpftrace");
    // Unbuffered, so "Attaching N probes..." arrives when printed.
    cmd.args(["-B", "none"]).arg(script);
    cmd.args(netns_inodes.iter().map(u64::to_string));
    let a = Attached::start("bpftrace", cmd, "Attaching", Duration::from_secs(60))?;
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

/// What the tracer's text output says.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct TracerReport {
    /// "N ms to attach": loading and attaching, as the tracer measured it.
    pub attach_ms: f64,
    /// The hook plan lines.
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

/// The number right before `what` in `line`.
fn number_before(line: &str, what: &str) -> Option<f64> {
    let (before, _) = line.split_once(what)?;
    before
        .split_whitespace()
        .last()?
        .trim_start_matches(',')
        .parse()
        .ok()
}

/// The number right after `what` in `line`.
fn number_after(line: &str, what: &str) -> Option<u64> {
    let (_, after) = line.split_once(what)?;
    after
        .split_whitespace()
        .next()?
        .trim_end_matches(',')
        .parse()
        .ok()
}

impl TracerReport {
    /// Parses the tracer's head (attach line, plan) and summary.
    pub fn parse(cap: &Captured) -> anyhow::Result<Self> {
        let attach_ms = cap
            .head
            .iter()
            .find_map(|l| number_before(l, "ms to attach"))
            .with_context(|| {
                format!(
                    "the tracer printed no attach time:\n{}",
                    cap.head.join("\n")
                )
            })?;
        let plan = cap
            .head
            .iter()
            .filter(|l| l.starts_with("  ") || l.starts_with("hook tier"))
            .cloned()
            .collect();
        let summary_at = cap
            .tail
            .iter()
            .position(|l| l.starts_with("== summary"))
            .with_context(|| format!("the tracer printed no summary:\n{}", cap.tail.join("\n")))?;
        let summary = &cap.tail[summary_at..];
        let counts = summary
            .iter()
            .find(|l| l.starts_with("queries seen"))
            .context("the tracer's summary has no \"queries seen\" line")?;
        let lost_line = summary
            .iter()
            .find(|l| l.contains("ring-buffer records"))
            .context("the tracer's summary has no lost count")?;
        Ok(Self {
            attach_ms,
            plan,
            queries_seen: number_after(counts, "queries seen").context("no queries seen count")?,
            answered: number_after(counts, "answered").context("no answered count")?,
            lost_events: number_after(lost_line, "lost:").context("no lost ring-buffer count")?,
            // Lines after the attach marker, minus the summary's own lines.
            query_lines: cap
                .lines_after_head
                .saturating_sub((cap.tail.len() - summary_at) as u64),
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_tracer_output() {
        let cap = Captured {
            head: vec![
                "tracing DNS to 10.96.0.10:53 (pod links in trb-node), 187 ms to attach".to_owned(),
                "hook tier: tracepoint".to_owned(),
                "  device_tc_ingress          attached  trb-vc0, trb-vd0".to_owned(),
                "reporting failed queries and answers slower than 100 ms; Ctrl-C to stop".to_owned(),
            ],
            tail: vec![
                "12:00:00.001 SLOW ...".to_owned(),
                "".to_owned(),
                "== summary: 10.2 s".to_owned(),
                "queries seen 500000  answered 499990  slow 1  drops 0  icmp errors 0  (kernel counters, every query)".to_owned(),
                "not judged: 3 in flight at the end, 0 pushed out; lost: 7 ring-buffer records, 0 malformed records".to_owned(),
            ],
            lines_after_head: 5,
        };
        let r = TracerReport::parse(&cap).unwrap();
        assert_eq!(r.attach_ms, 187.0);
        assert_eq!(r.plan.len(), 2);
        assert_eq!(
            (r.queries_seen, r.answered, r.lost_events, r.query_lines),
            (500000, 499990, 7, 2)
        );
        assert!(TracerReport::parse(&Captured::default()).is_err());
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
