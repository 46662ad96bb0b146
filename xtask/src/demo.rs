//! The README's main job on the lab: healthy DNS, one fault, where the queries died, teardown.

use std::{process::Command, thread::sleep, time::Duration};

use anyhow::Context as _;

use crate::sh;

/// The demo's own lab, so that it never touches a lab someone else has up.
const PREFIX: &str = "trdemo";

fn tracer() -> Command {
    let mut c = Command::new(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../target/release/tracer"
    ));
    c.env("TRACER_LAB_PREFIX", PREFIX);
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

/// Traces the lab while the client pod sends `count` queries to the Service IP.
fn trace_while_probing(count: &str) -> anyhow::Result<()> {
    let mut trace = tracer()
        .args(["trace", "--lab", "--duration", "4", "--timeout", "1.5"])
        .spawn()
        .context("failed to start tracer trace")?;
    // Attaching takes well under a second; give it one before the first query.
    sleep(Duration::from_secs(1));
    // The probe only counts (it can trace too): the trace above says where each lost query died.
    let probe = sh(tracer().args(["probe", "--lab", "--no-trace", "--count", count]));
    let traced = trace.wait().context("failed to wait for tracer trace")?;
    probe?;
    anyhow::ensure!(traced.success(), "tracer trace failed: {traced}");
    Ok(())
}

pub fn run() -> anyhow::Result<()> {
    sh(crate::cargo().args(["build", "--release", "-p", "tracer"]))?;
    step("lab up: a node with kube-proxy's rules (iptables-nft), two CoreDNS pods, one client pod");
    sh(tracer().args(["lab", "up"]))?;
    let _guard = LabGuard;
    step("healthy: 20 queries from the client pod to the Service IP, traced");
    trace_while_probing("20")?;
    step("fault: a DROP in filter FORWARD for DNS to CoreDNS pod dns0");
    sh(tracer().args(["lab", "fault", "filter-drop", "--pod", "0"]))?;
    trace_while_probing("20")?;
    step("fault: kube-proxy's REJECT for a Service without endpoints");
    sh(tracer().args(["lab", "fault", "clear"]))?;
    sh(tracer().args(["lab", "fault", "no-endpoints"]))?;
    trace_while_probing("10")?;
    step("lab down");
    Ok(())
}
