//! What a killed `tracer trace` leaves on the node is removed by the next start. From 6.6 the TC
//! programs are TCX links that die with the process; before 6.6 they are netlink filters, with
//! the clsact qdiscs the tracer added, that outlive it. Its own binary so that the kernel matrix
//! runs it where those kernels are (5.10 and 6.1 under qemu, `Suites::Paths`) without adding two
//! slow trace starts to every guest run. Run as root, one test at a time.

mod common;

use common::LabGuard;
use tracer::node::Backend;

/// The tracer's TC filters on the lab's pod links, and the clsact qdiscs there, as `tc` lists
/// them in the node namespace (before 6.6 the programs hang there as netlink filters; TCX links
/// are not listed).
fn tc_leftovers(lab: &LabGuard) -> Vec<String> {
    let tc = |args: &[&str]| -> serde_json::Value {
        let out = std::process::Command::new("ip")
            .args(["netns", "exec", &lab.info.node_netns, "tc", "-j"])
            .args(args)
            .output()
            .expect("tc");
        serde_json::from_slice(&out.stdout).unwrap_or_default()
    };
    let mut found = Vec::new();
    for pod in lab.info.endpoints.iter().chain(&lab.info.clients) {
        let dev = pod.host_ifname.as_str();
        for dir in ["ingress", "egress"] {
            for f in tc(&["filter", "show", "dev", dev, dir])
                .as_array()
                .into_iter()
                .flatten()
            {
                let name = f["options"]["bpf_name"].as_str().unwrap_or_default();
                if name.starts_with("device_tc_") {
                    found.push(format!(
                        "{dev} {dir}: {name} (prog {})",
                        f["options"]["prog"]["id"]
                    ));
                }
            }
        }
        let qdiscs = tc(&["qdisc", "show", "dev", dev]);
        if qdiscs
            .as_array()
            .into_iter()
            .flatten()
            .any(|q| q["kind"] == "clsact")
        {
            found.push(format!("{dev}: clsact qdisc"));
        }
    }
    found
}

/// A `tracer trace --lab` process, once it said everything is attached.
fn trace_process(prefix: &str) -> std::process::Child {
    use std::io::BufRead as _;
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_tracer"))
        .args(["trace", "--lab", "--prefix", prefix])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("start tracer trace");
    let mut out = std::io::BufReader::new(child.stdout.take().expect("stdout"));
    let mut line = String::new();
    while !line.contains("ms to attach") {
        line.clear();
        assert!(
            out.read_line(&mut line).expect("read the trace's header") > 0,
            "the trace ended before attaching"
        );
    }
    // The rest of its output is not read: keep the pipe open and drained.
    std::thread::spawn(move || std::io::copy(&mut out, &mut std::io::sink()));
    child
}

// Scenario: a trace killed with SIGKILL. From 6.6 its TC links (TCX) die with it; before, its
// netlink filters and the clsact qdiscs it added stay on the pod links, and the next trace removes
// them at its start. After that one stops (SIGINT), nothing of the tracer is left on the links.
#[test]
fn a_killed_trace_is_cleaned_up_by_the_next_start() {
    let lab = LabGuard::up("trk", Backend::Nft);
    assert!(tc_leftovers(&lab).is_empty(), "{:?}", tc_leftovers(&lab));
    let mut killed = trace_process("trk");
    let attached = tc_leftovers(&lab);
    killed.kill().expect("SIGKILL the trace");
    killed.wait().expect("reap the trace");
    let left = tc_leftovers(&lab);
    if tracer::kernel::features::has_tcx() {
        assert!(
            left.is_empty(),
            "TCX links outlived a killed trace: {left:?}"
        );
    } else {
        // Two programs on each pod link and its clsact qdisc: the case the next start must clean.
        let links = lab.info.endpoints.len() + lab.info.clients.len();
        assert_eq!(attached.len(), 3 * links, "attached: {attached:?}");
        assert_eq!(
            left, attached,
            "a killed trace left other than it had attached"
        );
    }
    let mut next = trace_process("trk");
    assert_eq!(
        tc_leftovers(&lab).len(),
        attached.len(),
        "the next trace did not replace the killed one's filters: {:?}",
        tc_leftovers(&lab)
    );
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(next.id() as i32),
        nix::sys::signal::Signal::SIGINT,
    )
    .expect("SIGINT the trace");
    assert!(next.wait().expect("wait for the trace").success());
    let left = tc_leftovers(&lab);
    assert!(left.is_empty(), "left after the next trace: {left:?}");
}
