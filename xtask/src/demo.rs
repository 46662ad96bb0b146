//! The README's main job on the lab: `tracer doctor` on a healthy node, then on two faults (each
//! page under a screen), teardown. The whole output fits in three screens of 50 lines.

use std::process::Command;

use anyhow::Context as _;

use crate::sh;

/// The demo's own lab, so that it never touches a lab someone else has up
/// (`TRACER_DEMO_PREFIX` names another).
const PREFIX: &str = "trdemo";

fn tracer() -> Command {
    let mut c = Command::new(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../target/release/tracer"
    ));
    let prefix = std::env::var("TRACER_DEMO_PREFIX").unwrap_or_else(|_| PREFIX.to_owned());
    c.env("TRACER_LAB_PREFIX", prefix);
    c
}

/// Tears the lab down however the demo ends.
struct LabGuard;

impl Drop for LabGuard {
    fn drop(&mut self) {
        let _ = tracer().args(["lab", "down"]).status();
    }
}

fn step(title: &str) {
    println!("\n=== {title}");
}

/// `tracer doctor --lab`, which must exit with `expected` (0 healthy, 7 broken).
fn doctor(expected: i32) -> anyhow::Result<()> {
    let status = tracer()
        .args(["doctor", "--lab", "--count", "20", "--rate", "40"])
        .status()
        .context("failed to start tracer doctor")?;
    anyhow::ensure!(
        status.code() == Some(expected),
        "tracer doctor exited with {status}, expected {expected}"
    );
    Ok(())
}

pub fn run() -> anyhow::Result<()> {
    sh(crate::cargo().args(["build", "--release", "-p", "tracer"]))?;
    step("lab up: a node with kube-proxy's rules (iptables-nft), two CoreDNS pods, one client pod");
    sh(tracer()
        .args(["lab", "up"])
        .stdout(std::process::Stdio::null()))?;
    let _guard = LabGuard;
    step("healthy: `tracer doctor --lab` (exit code 0)");
    doctor(0)?;
    step("fault filter-drop: a DROP in filter FORWARD for DNS to the CoreDNS pods (exit code 7)");
    sh(tracer()
        .args(["lab", "fault", "filter-drop"])
        .stdout(std::process::Stdio::null()))?;
    doctor(7)?;
    step("fault pod-down: the DNS server in pod dns0 stopped (exit code 7)");
    sh(tracer()
        .args(["lab", "fault", "clear"])
        .stdout(std::process::Stdio::null()))?;
    sh(tracer()
        .args(["lab", "fault", "pod-down"])
        .stdout(std::process::Stdio::null()))?;
    doctor(7)?;
    step("lab down");
    Ok(())
}
