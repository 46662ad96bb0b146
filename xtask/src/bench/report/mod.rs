//! Figures over the rounds, the targets met or missed, and the Markdown the bench
//! prints and writes.
//!
//! # Layout
//! - `figures`: spreads, ratios and costs per query over the rounds.
//! - `sections`: the report's sections, one function each, in the order they are written.

mod figures;
mod sections;

pub use figures::Spread;

use std::process::Command;

use super::Results;

/// The machine the figures came from.
#[derive(Debug, Clone, Default)]
pub struct Machine {
    /// CPUs online.
    pub nproc: usize,
    /// `uname -r`.
    pub kernel: String,
    /// /proc/cpuinfo's model name.
    pub cpu: String,
    /// UTC date and time.
    pub date: String,
    /// /proc/loadavg at the end.
    pub loadavg: String,
    /// Network namespaces that are not the bench's (other labs running at the same time).
    pub other_netns: Vec<String>,
}

impl Machine {
    /// Reads this machine.
    pub fn read() -> Self {
        let read = |p: &str| {
            std::fs::read_to_string(p)
                .unwrap_or_default()
                .trim()
                .to_owned()
        };
        let cpu = read("/proc/cpuinfo")
            .lines()
            .find_map(|l| {
                l.strip_prefix("model name")
                    .and_then(|v| v.split_once(':'))
                    .map(|(_, v)| v.trim().to_owned())
            })
            .unwrap_or_else(|| "unknown".to_owned());
        let date = Command::new("date")
            .args(["-u", "+%Y-%m-%d %H:%M UTC"])
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
            .unwrap_or_default();
        let other_netns = std::fs::read_dir("/run/netns")
            .map(|d| {
                d.filter_map(|e| e.ok()?.file_name().into_string().ok())
                    .filter(|n| !n.starts_with(&format!("{}-", super::PREFIX)))
                    .collect()
            })
            .unwrap_or_default();
        Self {
            nproc: std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(0),
            kernel: read("/proc/sys/kernel/osrelease"),
            cpu,
            date,
            loadavg: read("/proc/loadavg"),
            other_netns,
        }
    }
}

/// The whole report.
pub fn markdown(r: &Results, m: &Machine) -> String {
    let h = figures::Headline::of(r);
    let mut s = String::new();
    sections::machine(&mut s, r, m);
    sections::commands(&mut s, r);
    sections::calibration(&mut s, r);
    sections::targets(&mut s, r, &h);
    sections::throughput(&mut s, r);
    sections::per_hook(&mut s, r, &h);
    sections::tracer_process(&mut s, r, &h);
    sections::anchor(&mut s);
    s
}
