//! throttled-server: the DNS server of one pod runs 0.2 s of every 2.7 s (SIGSTOP/SIGCONT from a
//! small loop, as a CPU quota throttling its cgroup would), and the node's
//! `nf_conntrack_udp_timeout` is 1 s: most answers leave after the query's conntrack entry
//! expired, so the node cannot undo their DNAT and the client refuses an answer from the pod's
//! own address. Cleared by ending the loop, resuming the server and restoring the timeout.

use std::{
    os::unix::process::CommandExt,
    path::{Path, PathBuf},
    process::{Command, Stdio},
};

use nix::{
    sys::signal::{Signal, kill},
    unistd::Pid,
};

use super::{Error, dns, topology};
use crate::netns;

/// The node's UDP conntrack timeout while the fault is active (seconds).
pub const UDP_TIMEOUT_S: u32 = 1;
/// How long the server is stopped in each cycle.
pub const STOPPED: &str = "2.5";
/// How long it runs in each cycle.
const RUNNING: &str = "0.2";
/// The node's sysctl the fault shortens.
pub const UDP_TIMEOUT: &str = "net/netfilter/nf_conntrack_udp_timeout";

fn pid_file(state_dir: &Path, pod: u8) -> PathBuf {
    state_dir.join(format!("throttle{pod}.pid"))
}

fn io(path: PathBuf) -> impl FnOnce(std::io::Error) -> Error {
    move |source| Error::Io { path, source }
}

/// Shortens the node's UDP conntrack timeout and starts the loop throttling pod `pod`'s server;
/// returns the timeout it replaced (to restore on clear).
pub fn apply(prefix: &str, state_dir: &Path, pod: u8) -> Result<String, Error> {
    let server = dns::pid(state_dir, pod).ok_or_else(|| Error::Fault {
        what: format!("the DNS server of pod dns{pod} is not running"),
    })?;
    let node = topology::node_netns(prefix);
    let before = topology::read_sysctl(&node, UDP_TIMEOUT)?;
    topology::sysctl(&node, UDP_TIMEOUT, &UDP_TIMEOUT_S.to_string())?;
    // The loop signals only the lab's own server, by pid. Its last argument names the state
    // directory, so that a census of the lab's processes finds it.
    let script = format!(
        "while kill -STOP {server}; do sleep {STOPPED}; kill -CONT {server} || exit; sleep {RUNNING}; done"
    );
    let file = pid_file(state_dir, pod);
    let ns = topology::pod_netns(prefix, &format!("dns{pod}"));
    let child = netns::run_in(&netns::named(&ns), || {
        Command::new("/bin/sh")
            .args(["-c", &script, "throttle"])
            .arg(&file)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .process_group(0)
            .spawn()
    })
    .map_err(|source| Error::Netns {
        netns: ns.clone(),
        source,
    })?
    .map_err(|source| Error::Spawn {
        command: "/bin/sh (throttle loop)".to_owned(),
        source,
    })?;
    std::fs::write(&file, child.id().to_string()).map_err(io(file))?;
    Ok(before)
}

/// Ends pod `pod`'s throttle loop and lets its server run; fine when there is none.
pub fn stop(state_dir: &Path, pod: u8) -> Result<(), Error> {
    let file = pid_file(state_dir, pod);
    let Ok(text) = std::fs::read_to_string(&file) else {
        return Ok(());
    };
    // Only the loop started with this pid file: after a crash the number may be someone else's.
    if let Ok(pid) = text.trim().parse::<i32>()
        && std::fs::read(format!("/proc/{pid}/cmdline"))
            .is_ok_and(|c| String::from_utf8_lossy(&c).contains(&*file.to_string_lossy()))
    {
        dns::terminate(pid);
    }
    if let Some(server) = dns::pid(state_dir, pod) {
        let _ = kill(Pid::from_raw(server), Signal::SIGCONT);
    }
    std::fs::remove_file(&file).map_err(io(file))
}
