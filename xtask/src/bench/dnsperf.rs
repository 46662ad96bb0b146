//! The load: Debian's dnsperf in the lab's client pod, against the lab's DNS Service IP only.

use std::{
    path::{Path, PathBuf},
    process::{Command, Stdio},
    thread::sleep,
    time::Duration,
};

use anyhow::{Context as _, bail};

use super::{ChildGuard, check_interrupted};

/// Names every lab DNS pod serves (tracer/src/lab/dns.rs), so every query is answered NOERROR.
const QUERIES: &str = "\
kubernetes.default.svc.cluster.local A
kube-dns.kube-system.svc.cluster.local A
kube-dns.kube-system.svc.cluster.local AAAA
whoami.cluster.local A
";

/// The query file, removed when dropped.
pub struct QueryFile(PathBuf);

impl QueryFile {
    /// Writes the query file under `dir`.
    pub fn create(dir: &Path) -> anyhow::Result<Self> {
        std::fs::create_dir_all(dir)
            .with_context(|| format!("failed to create {}", dir.display()))?;
        let path = dir.join("bench-queries.txt");
        std::fs::write(&path, QUERIES)
            .with_context(|| format!("failed to write {}", path.display()))?;
        Ok(Self(path))
    }
}

impl Drop for QueryFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// How dnsperf loads the lab: closed loop (a query goes out when one comes back), as fast as
/// answers return, with this many sockets and queries in flight.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Load {
    /// `-c`: client sockets (each its own source port).
    pub clients: u32,
    /// `-q`: queries outstanding at most.
    pub outstanding: u32,
}

impl Load {
    /// The dnsperf arguments for this load.
    pub fn args(&self) -> String {
        format!("-c {} -q {}", self.clients, self.outstanding)
    }
}

/// What one dnsperf run reported.
#[derive(Debug, Clone, Copy, Default)]
pub struct Outcome {
    /// Queries sent.
    pub sent: u64,
    /// Queries answered.
    pub completed: u64,
    /// Queries that timed out.
    pub lost: u64,
    /// Answered queries per second.
    pub qps: f64,
    /// Mean latency, microseconds.
    pub latency_us: f64,
}

impl Outcome {
    /// Parses dnsperf's "Statistics:" block.
    pub fn parse(out: &str) -> anyhow::Result<Self> {
        let field = |label: &str| -> anyhow::Result<f64> {
            let line = out
                .lines()
                .find_map(|l| l.trim().strip_prefix(label))
                .with_context(|| format!("dnsperf printed no {label:?} line:\n{out}"))?;
            let token = line
                .trim_start_matches(':')
                .split_whitespace()
                .next()
                .unwrap_or("");
            token
                .parse()
                .with_context(|| format!("bad number {token:?} after {label:?} in dnsperf output"))
        };
        Ok(Self {
            sent: field("Queries sent")? as u64,
            completed: field("Queries completed")? as u64,
            lost: field("Queries lost")? as u64,
            qps: field("Queries per second")?,
            latency_us: field("Average Latency (s)")? * 1e6,
        })
    }

    /// Lost queries as a fraction of those sent.
    pub fn loss(&self) -> f64 {
        if self.sent == 0 {
            0.0
        } else {
            self.lost as f64 / self.sent as f64
        }
    }
}

/// The dnsperf command for one run of `secs` seconds.
pub fn command(
    client_netns: &str,
    service: &str,
    queries: &QueryFile,
    load: Load,
    secs: u32,
) -> Command {
    let mut c = Command::new("ip");
    c.args([
        "netns",
        "exec",
        client_netns,
        "dnsperf",
        "-s",
        service,
        "-d",
    ]);
    c.arg(&queries.0);
    c.args([
        "-l",
        &secs.to_string(),
        "-c",
        &load.clients.to_string(),
        "-q",
        &load.outstanding.to_string(),
    ]);
    // A query unanswered for 1 s is lost: at full rate a real answer takes about a millisecond.
    c.args(["-t", "1"]);
    c
}

/// Runs dnsperf to completion (killed on Ctrl-C), calling `during` every 100 ms while it runs.
pub fn run(mut cmd: Command, mut during: impl FnMut()) -> anyhow::Result<Outcome> {
    let out_path = std::env::temp_dir().join(format!("trb-dnsperf-{}.out", std::process::id()));
    let out_file = std::fs::File::create(&out_path)
        .with_context(|| format!("failed to create {}", out_path.display()))?;
    let err_file = out_file
        .try_clone()
        .context("failed to duplicate dnsperf's output file")?;
    let child = cmd
        .stdout(Stdio::from(out_file))
        .stderr(Stdio::from(err_file))
        .spawn()
        .with_context(|| format!("failed to start {cmd:?}"))?;
    let mut guard = ChildGuard::new("dnsperf", child);
    let status = loop {
        check_interrupted()?;
        if let Some(s) = guard
            .child
            .try_wait()
            .context("failed to wait for dnsperf")?
        {
            break s;
        }
        during();
        sleep(Duration::from_millis(100));
    };
    let out = std::fs::read_to_string(&out_path).unwrap_or_default();
    let _ = std::fs::remove_file(&out_path);
    if !status.success() {
        bail!("dnsperf failed ({status}): {out}");
    }
    Outcome::parse(&out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_dnsperf_statistics() {
        let out = "Statistics:\n\n  Queries sent:         1000\n  Queries completed:    998 (99.80%)\n  Queries lost:         2 (0.20%)\n\n  Response codes:       NOERROR 998 (100.00%)\n  Run time (s):         0.017612\n  Queries per second:   56779.014309\n\n  Average Latency (s):  0.000839 (min 0.000040, max 0.001742)\n";
        let o = Outcome::parse(out).unwrap();
        assert_eq!((o.sent, o.completed, o.lost), (1000, 998, 2));
        assert!((o.qps - 56779.014309).abs() < 1e-6);
        assert!((o.latency_us - 839.0).abs() < 1e-6);
        assert!(Outcome::parse("no statistics").is_err());
    }
}
