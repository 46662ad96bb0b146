//! The README's main job on the lab: healthy DNS, one fault, where the queries died, teardown.

use std::process::Command;

use crate::sh;

fn tracer() -> Command {
    Command::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../target/release/tracer"))
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

pub fn run() -> anyhow::Result<()> {
    sh(crate::cargo().args(["build", "--release", "-p", "tracer"]))?;
    step("lab up: a node with kube-proxy rules (nft backend), two CoreDNS pods, one client");
    sh(tracer().args(["lab", "up"]))?;
    let _guard = LabGuard;
    sh(tracer().args(["lab", "status"]))?;
    step("healthy: 20 queries from the client pod to the Service IP");
    sh(tracer().args(["probe", "--lab", "--count", "20"]))?;
    step("fault: a DROP in filter FORWARD for DNS to one CoreDNS pod");
    sh(tracer().args(["lab", "fault", "filter-drop", "--pod", "0"]))?;
    sh(tracer().args(["probe", "--lab", "--count", "20"]))?;
    step("lab down");
    Ok(())
}
