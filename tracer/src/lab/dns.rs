//! The CoreDNS stand-ins: one dnsmasq per DNS pod, answering `*.cluster.local` from its own
//! records, daemonised with its pid file and log in the lab's state directory.

use std::{
    net::{Ipv4Addr, SocketAddr},
    path::{Path, PathBuf},
    thread,
    time::{Duration, Instant},
};

use nix::{
    errno::Errno,
    sys::signal::{Signal, kill},
    unistd::Pid,
};

use super::{Error, topology};
use crate::measure::{self, BatchSpec, Outcome, RecordType};

/// The DNS server every pod runs (Debian's dnsmasq-base).
pub const DNSMASQ: &str = "/usr/sbin/dnsmasq";

/// A name every DNS pod answers with its own pod IP (like CoreDNS's `whoami`): which endpoint a
/// flow was balanced to, seen from the client.
pub const WHOAMI: &str = "whoami.cluster.local";

/// A name every DNS pod answers (with `LONG_NAME_IP`) that is as long as a name may be: 253
/// characters, 255 bytes on the wire. Search-path expansion of long Service and namespace names
/// gives names of this size; a tracer that copies only part of the question cannot name them.
pub const LONG_NAME: &str = concat!(
    "a-service-name-as-long-as-one-dns-label-may-be-sixty-three-byte.",
    "in-a-namespace-with-a-name-that-is-as-long-as-the-protocol-lets.",
    "expanded-with-a-search-domain-by-the-stub-resolver-of-the-pods.",
    "to-two-hundred-and-fifty-three-characters-in-all.cluster.local",
);

/// The address `LONG_NAME` resolves to.
pub const LONG_NAME_IP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 253);

/// A name every DNS pod answers with a TXT record too large for UDP: five strings of
/// `LARGE_STRING_LEN` bytes, more than 512 bytes (DNS without EDNS) and than 1232 (the EDNS
/// buffer of dig and most resolvers), so a UDP answer comes back truncated (TC bit) and the
/// client retries over TCP.
pub const LARGE: &str = "large.cluster.local";
/// Strings in `LARGE`'s TXT record.
pub const LARGE_STRINGS: usize = 5;
/// Bytes of each.
pub const LARGE_STRING_LEN: usize = 250;

/// `LARGE`'s TXT record, as dnsmasq's `--txt-record` takes it.
fn large_record() -> String {
    let strings: Vec<String> = (0..LARGE_STRINGS)
        .map(|i| {
            format!(
                "\"{}\"",
                char::from(b'a' + i as u8)
                    .to_string()
                    .repeat(LARGE_STRING_LEN)
            )
        })
        .collect();
    format!("--txt-record={LARGE},{}", strings.join(","))
}

/// The records every pod serves.
const HOST_RECORDS: [&str; 2] = [
    "kubernetes.default.svc.cluster.local,10.96.0.1",
    "kube-dns.kube-system.svc.cluster.local,10.96.0.10,fd00:10:96::a",
];

/// How long a DNS pod may take to answer after dnsmasq started.
const READY_WITHIN: Duration = Duration::from_secs(5);

fn pid_file(state_dir: &Path, pod: u8) -> PathBuf {
    state_dir.join(format!("dns{pod}.pid"))
}

/// Starts dnsmasq in DNS pod `pod` and waits until it answers from the node.
pub fn start(prefix: &str, state_dir: &Path, pod: u8) -> Result<(), Error> {
    let ns = topology::pod_netns(prefix, &format!("dns{pod}"));
    let ip = topology::DNS_IPS[usize::from(pod)];
    let pid = pid_file(state_dir, pod);
    let log = state_dir.join(format!("dns{pod}.log"));
    let mut args = vec![
        // No configuration, upstreams, /etc/hosts, lease or cache file: nothing outside the
        // state directory is read or written.
        "--conf-file=/dev/null".to_owned(),
        "--no-resolv".to_owned(),
        "--no-hosts".to_owned(),
        "--no-poll".to_owned(),
        "--local=/cluster.local/".to_owned(),
        format!("--pid-file={}", pid.display()),
        format!("--log-facility={}", log.display()),
        format!("--host-record={WHOAMI},{ip}"),
        format!("--host-record={LONG_NAME},{LONG_NAME_IP}"),
        large_record(),
    ];
    args.extend(HOST_RECORDS.iter().map(|r| format!("--host-record={r}")));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    topology::run_in(&ns, DNSMASQ, &args, None)?;
    wait_ready(prefix, pod, ip)
}

/// Queries the pod directly from the node until it answers (dnsmasq has bound its socket once
/// its parent exits, but the pod's link may still be settling).
fn wait_ready(prefix: &str, pod: u8, ip: Ipv4Addr) -> Result<(), Error> {
    let spec = BatchSpec {
        names: vec![WHOAMI.to_owned()],
        qtypes: vec![RecordType::A],
        count: 1,
        rate: 1.0,
        timeout: Duration::from_millis(200),
        source_port: None,
        parallel_a_aaaa: false,
    };
    let node = topology::node_netns(prefix);
    let deadline = Instant::now() + READY_WITHIN;
    while Instant::now() < deadline {
        let result = measure::query_batch(Some(&node), SocketAddr::from((ip, 53)), &spec)
            .map_err(|source| Error::Measure { source })?;
        if let Some(Outcome::Answered { .. }) = result.queries.first().map(|q| &q.outcome) {
            return Ok(());
        }
        thread::sleep(Duration::from_millis(100));
    }
    Err(Error::NotReady {
        pod,
        within: READY_WITHIN,
    })
}

/// The pid of DNS pod `pod`'s dnsmasq, when its pid file names a process started with that
/// pid file (after a crash the number may be someone else's).
pub fn pid(state_dir: &Path, pod: u8) -> Option<i32> {
    pid_at(&pid_file(state_dir, pod))
}

/// The pid in the dnsmasq pid file `path`, when it names a process started with that pid file.
pub fn pid_at(path: &Path) -> Option<i32> {
    let pid = std::fs::read_to_string(path)
        .ok()?
        .trim()
        .parse::<i32>()
        .ok()?;
    std::fs::read(format!("/proc/{pid}/cmdline"))
        .is_ok_and(|c| {
            String::from_utf8_lossy(&c).contains(&format!("--pid-file={}", path.display()))
        })
        .then_some(pid)
}

/// Stops DNS pod `pod`'s dnsmasq (SIGCONT in case server-overload stopped it, SIGTERM, then
/// SIGKILL); fine when it is not running.
pub fn stop(state_dir: &Path, pod: u8) -> Result<(), Error> {
    let path = pid_file(state_dir, pod);
    if !path.exists() {
        return Ok(());
    }
    if let Some(pid) = pid(state_dir, pod) {
        let _ = kill(Pid::from_raw(pid), Signal::SIGCONT);
        terminate(pid);
    }
    match std::fs::remove_file(&path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(Error::Io { path, source: e }),
        _ => Ok(()),
    }
}

/// Whether DNS pod `pod`'s dnsmasq is running.
pub fn running(state_dir: &Path, pod: u8) -> bool {
    std::fs::read_to_string(pid_file(state_dir, pod))
        .ok()
        .and_then(|t| t.trim().parse::<i32>().ok())
        .is_some_and(|pid| kill(Pid::from_raw(pid), None).is_ok())
}

/// Ends a process: SIGTERM, up to a second to exit, then SIGKILL.
pub fn terminate(pid: i32) {
    let pid = Pid::from_raw(pid);
    if kill(pid, Signal::SIGTERM) == Err(Errno::ESRCH) {
        return;
    }
    let deadline = Instant::now() + Duration::from_secs(1);
    while Instant::now() < deadline {
        if gone(pid) {
            return;
        }
        thread::sleep(Duration::from_millis(10));
    }
    let _ = kill(pid, Signal::SIGKILL);
}

/// Exited: no such process, or a zombie waiting for whoever adopted it to reap it.
fn gone(pid: Pid) -> bool {
    if kill(pid, None) == Err(Errno::ESRCH) {
        return true;
    }
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| {
            s.rsplit_once(')')
                .map(|(_, rest)| rest.trim_start().starts_with('Z'))
        })
        .unwrap_or(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_long_name_is_as_long_as_a_name_may_be() {
        assert_eq!(LONG_NAME.len(), 253);
        assert!(LONG_NAME.split('.').all(|l| (1..=63).contains(&l.len())));
        assert!(
            LONG_NAME.ends_with(".cluster.local"),
            "a name the pods answer"
        );
    }
}
