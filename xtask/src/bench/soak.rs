//! `cargo xtask bench --soak SECONDS`: whether `tracer trace --lab --metrics` holds its memory
//! flat over time. DNS load runs through the lab's Service (`tracer probe`, two names) while the
//! tracer's VmRSS is sampled every
//! [`EVERY`] and its `/metrics` scraped at the same time, optionally with a lab fault held
//! throughout; prints the start, end and largest RSS and the growth per hour after the warm-up
//! and over the second half. Not part of `cargo xtask test`, nor of the full bench.

use std::{
    io::{Read as _, Write as _},
    net::{SocketAddr, TcpListener, TcpStream},
    path::{Path, PathBuf},
    process::{Command, Stdio},
    thread::sleep,
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};

use super::{ChildGuard, check_interrupted, measure::status_kb};

/// How often RSS is sampled and the metrics scraped.
const EVERY: Duration = Duration::from_secs(5);
/// Lookups per second of the load.
const RATE: &str = "200";

/// Seconds since the start, RSS bytes, anonymous RSS bytes, queries counted.
type Sample = (f64, u64, u64, f64);
/// One of a sample's byte counts.
type Bytes = fn(&Sample) -> u64;

/// What `--soak` runs.
#[derive(Debug, Clone)]
pub struct Soak {
    /// How long the load runs.
    pub seconds: u64,
    /// The lab's prefix.
    pub prefix: String,
    /// `tracer lab fault` arguments held through the soak.
    pub fault: Option<String>,
}

/// Tears the soak's lab down however the soak ends.
struct Lab {
    tracer: PathBuf,
    prefix: String,
}

impl Drop for Lab {
    fn drop(&mut self) {
        let ok = Command::new(&self.tracer)
            .args(["lab", "down", "--prefix", &self.prefix])
            .status();
        if !ok.is_ok_and(|s| s.success()) {
            eprintln!("soak: `tracer lab down --prefix {}` failed", self.prefix);
        }
    }
}

/// One scrape of `/metrics`: the body.
fn scrape(addr: SocketAddr) -> anyhow::Result<String> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    write!(s, "GET /metrics HTTP/1.0\r\n\r\n")?;
    let mut text = String::new();
    s.read_to_string(&mut text)?;
    if !text.starts_with("HTTP/1.1 200") {
        bail!("scrape: {}", text.lines().next().unwrap_or_default());
    }
    Ok(text)
}

/// The sum of every sample of `name` (a family's samples, any labels).
fn total(text: &str, name: &str) -> f64 {
    text.lines()
        .filter(|l| l.starts_with(name) && l[name.len()..].starts_with(['{', ' ']))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// Runs the soak.
pub fn run(tracer: &Path, soak: &Soak) -> anyhow::Result<()> {
    let (prefix, seconds) = (soak.prefix.as_str(), soak.seconds);
    println!("soak: lab up (prefix {prefix}), {seconds} s under {RATE} lookups/s");
    let _lab = Lab {
        tracer: tracer.to_owned(),
        prefix: prefix.to_owned(),
    };
    crate::sh(Command::new(tracer).args(["lab", "up", "--prefix", prefix]))?;
    if let Some(fault) = &soak.fault {
        println!("soak: fault {fault}");
        crate::sh(
            Command::new(tracer)
                .args(["lab", "fault", "--prefix", prefix])
                .args(fault.split_whitespace()),
        )?;
    }
    // A free loopback port, so that soaks of two labs can run side by side.
    let addr = TcpListener::bind(("127.0.0.1", 0))?.local_addr()?;
    let traced = Command::new(tracer)
        .args(["trace", "--lab", "--prefix", prefix])
        .args(["--metrics", &addr.to_string()])
        .stdout(Stdio::null())
        .spawn()
        .context("failed to start tracer trace")?;
    let traced = ChildGuard::new("tracer trace", traced);
    let pid = traced.child.id();
    let until = Instant::now() + Duration::from_secs(60);
    while scrape(addr).is_err() {
        check_interrupted()?;
        if Instant::now() > until {
            bail!("tracer trace served no metrics within 60 s");
        }
        sleep(Duration::from_millis(200));
    }
    let duration = (seconds + 30).to_string();
    let probe = |names: &[&str]| -> anyhow::Result<ChildGuard> {
        let mut cmd = Command::new(tracer);
        cmd.args(["probe", "--lab", "--prefix", prefix, "--no-trace"])
            .args(["--rate", RATE, "--duration", &duration, "--timeout", "1"]);
        for n in names {
            cmd.args(["--name", n]);
        }
        let child = cmd.stdout(Stdio::null()).stderr(Stdio::null()).spawn()?;
        Ok(ChildGuard::new("tracer probe", child))
    };
    let _load = probe(&["kubernetes.default.svc.cluster.local", "nx.soak.invalid"])?;
    let started = Instant::now();
    let mut samples: Vec<Sample> = Vec::new();
    while started.elapsed() < Duration::from_secs(seconds) {
        check_interrupted()?;
        sleep(EVERY);
        let rss = status_kb(pid, "VmRSS").context("the tracer exited")?;
        // The heap alone: VmRSS also holds the ring buffer's pages as the kernel first fills
        // them, and the binary's pages as they are first run (both bounded).
        let anon = status_kb(pid, "RssAnon").unwrap_or(0);
        let text = scrape(addr)?;
        let queries = total(&text, "tracer_dns_queries_total");
        let t = started.elapsed().as_secs_f64();
        if samples.len().is_multiple_of(12) {
            println!(
                "soak: {t:>6.0} s  RSS {:>6.1} MiB (anonymous {:>6.1} MiB)  {queries:.0} queries counted",
                mib(rss),
                mib(anon)
            );
        }
        samples.push((t, rss, anon, queries));
    }
    drop(traced);
    summarize(&samples, seconds)
}

/// Prints what the samples show: RSS at the start, after the warm-up, at half time and at the
/// end, and its growth per hour after the warm-up and over the second half.
fn summarize(samples: &[Sample], seconds: u64) -> anyhow::Result<()> {
    let (Some(first), Some(last)) = (samples.first(), samples.last()) else {
        bail!("no samples");
    };
    // After the warm-up (a fifth of the run, at most a minute): BTF parsing and the first maps.
    let warm = (seconds as f64 / 5.0).min(60.0);
    let from = samples.iter().find(|s| s.0 >= warm).unwrap_or(first);
    // The second half: the bounded tables are full long before it on any run of minutes.
    let half = samples
        .iter()
        .find(|s| s.0 >= last.0 / 2.0)
        .unwrap_or(first);
    let max = samples.iter().map(|s| s.1).max().unwrap_or(0);
    let per_hour = |a: &Sample, b: &Sample, bytes: Bytes| {
        let hours = ((b.0 - a.0) / 3600.0).max(1e-9);
        (bytes(b) as f64 - bytes(a) as f64) / hours / f64::from(1u32 << 20)
    };
    let (rss, anon): (Bytes, Bytes) = (|s| s.1, |s| s.2);
    println!(
        "soak: {} samples over {:.0} s, {:.0} queries counted ({:.0}/s)",
        samples.len(),
        last.0,
        last.3,
        last.3 / last.0
    );
    println!(
        "soak: RSS start {:.1} MiB, after warm-up ({:.0} s) {:.1} MiB, at half time ({:.0} s) {:.1} MiB, end {:.1} MiB, max {:.1} MiB",
        mib(first.1),
        from.0,
        mib(from.1),
        half.0,
        mib(half.1),
        mib(last.1),
        mib(max),
    );
    println!(
        "soak: RSS growth after warm-up {:.2} MiB/hour, over the second half {:.2} MiB/hour",
        per_hour(from, last, rss),
        per_hour(half, last, rss)
    );
    println!(
        "soak: anonymous RSS after warm-up {:.1} MiB, at half time {:.1} MiB, end {:.1} MiB; growth over the second half {:.2} MiB/hour",
        mib(from.2),
        mib(half.2),
        mib(last.2),
        per_hour(half, last, anon)
    );
    Ok(())
}

fn mib(bytes: u64) -> f64 {
    bytes as f64 / f64::from(1u32 << 20)
}
