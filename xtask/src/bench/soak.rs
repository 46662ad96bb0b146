//! `cargo xtask bench --soak SECONDS`: whether `tracer trace --lab --metrics` holds its memory
//! flat over time. DNS load runs through the lab's Service (`tracer probe`, two names) while the
//! tracer's VmRSS is sampled every
//! [`EVERY`] and its `/metrics` scraped at the same time; prints the start, end and largest RSS
//! and the growth per hour after the warm-up. Not part of `cargo xtask test`, nor of the full
//! bench.

use std::{
    io::{Read as _, Write as _},
    net::{SocketAddr, TcpStream},
    path::{Path, PathBuf},
    process::{Command, Stdio},
    thread::sleep,
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};

use super::{ChildGuard, check_interrupted, measure::status_kb};

/// How often RSS is sampled and the metrics scraped.
const EVERY: Duration = Duration::from_secs(5);
/// The metrics port (loopback).
const PORT: u16 = 9746;
/// Lookups per second of the load.
const RATE: &str = "200";

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

/// Runs the soak for `seconds` on lab `prefix`.
pub fn run(tracer: &Path, prefix: &str, seconds: u64) -> anyhow::Result<()> {
    println!("soak: lab up (prefix {prefix}), {seconds} s under {RATE} lookups/s");
    let _lab = Lab {
        tracer: tracer.to_owned(),
        prefix: prefix.to_owned(),
    };
    crate::sh(Command::new(tracer).args(["lab", "up", "--prefix", prefix]))?;
    let addr = SocketAddr::from(([127, 0, 0, 1], PORT));
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
    // (seconds since the start, RSS bytes, anonymous RSS bytes, queries counted)
    let mut samples: Vec<(f64, u64, u64, f64)> = Vec::new();
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
    let (Some(first), Some(last)) = (samples.first(), samples.last()) else {
        bail!("no samples");
    };
    // After the warm-up (a fifth of the run, at most a minute): BTF parsing and the first maps.
    let warm = (seconds as f64 / 5.0).min(60.0);
    let from = samples.iter().find(|s| s.0 >= warm).unwrap_or(first);
    let max = samples.iter().map(|s| s.1).max().unwrap_or(0);
    let hours = (last.0 - from.0) / 3600.0;
    let per_hour = |a: u64, b: u64| (b as f64 - a as f64) / hours.max(1e-9) / f64::from(1u32 << 20);
    println!(
        "soak: {} samples over {:.0} s, {:.0} queries counted ({:.0}/s)",
        samples.len(),
        last.0,
        last.3,
        last.3 / last.0
    );
    println!(
        "soak: RSS start {:.1} MiB, after warm-up ({:.0} s) {:.1} MiB, end {:.1} MiB, max {:.1} MiB; growth after warm-up {:.2} MiB/hour",
        mib(first.1),
        from.0,
        mib(from.1),
        mib(last.1),
        mib(max),
        per_hour(from.1, last.1)
    );
    println!(
        "soak: anonymous RSS after warm-up {:.1} MiB, end {:.1} MiB; growth {:.2} MiB/hour",
        mib(from.2),
        mib(last.2),
        per_hour(from.2, last.2)
    );
    Ok(())
}

fn mib(bytes: u64) -> f64 {
    bytes as f64 / f64::from(1u32 << 20)
}
