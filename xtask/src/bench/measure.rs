//! What is read around a run: the machine's busy CPU time, a process's CPU time and memory, and
//! the run counters of the BPF programs a process holds.

use std::{
    collections::BTreeMap,
    process::Command,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    thread::{self, JoinHandle},
    time::Duration,
};

use anyhow::{Context as _, bail};

/// Nanoseconds per clock tick (`USER_HZ`) of /proc/stat and /proc/PID/stat.
fn tick_ns() -> u64 {
    let hz = nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)
        .ok()
        .flatten()
        .unwrap_or(100);
    1_000_000_000 / hz.max(1) as u64
}

/// Busy CPU time of the whole machine so far (every CPU: user, nice, system, irq, softirq,
/// steal), nanoseconds.
pub fn machine_busy_ns() -> anyhow::Result<u64> {
    let stat = std::fs::read_to_string("/proc/stat").context("failed to read /proc/stat")?;
    let line = stat.lines().next().context("/proc/stat is empty")?;
    let v: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .map(|t| t.parse().unwrap_or(0))
        .collect();
    if v.len() < 8 {
        bail!("unexpected /proc/stat cpu line: {line}");
    }
    // user nice system idle iowait irq softirq steal (guest time is already in user).
    Ok((v[0] + v[1] + v[2] + v[5] + v[6] + v[7]) * tick_ns())
}

/// A process's user + system CPU time so far, nanoseconds.
pub fn process_cpu_ns(pid: u32) -> anyhow::Result<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .with_context(|| format!("failed to read /proc/{pid}/stat"))?;
    // Fields after the command name, which is in parentheses and may hold spaces.
    let rest = stat
        .rsplit_once(')')
        .map(|(_, r)| r)
        .context("unexpected /proc/PID/stat")?;
    let f: Vec<&str> = rest.split_whitespace().collect();
    // rest starts at field 3 (state); utime and stime are fields 14 and 15.
    let num = |i: usize| f.get(i).and_then(|t| t.parse::<u64>().ok()).unwrap_or(0);
    Ok((num(11) + num(12)) * tick_ns())
}

/// CPU time of every process in these network namespaces (by inode) and of the softirq
/// threads, nanoseconds. With tick-based accounting (this kernel) softirq work is charged to the
/// process it interrupted or to ksoftirqd, so this is the lab's own CPU time, apart from whatever
/// else runs on the machine.
pub fn netns_cpu_ns(netns: &[u64]) -> anyhow::Result<u64> {
    let mut total = 0;
    for entry in std::fs::read_dir("/proc").context("failed to list /proc")? {
        let Ok(entry) = entry else { continue };
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<u32>().ok())
        else {
            continue;
        };
        let in_lab = std::fs::read_link(format!("/proc/{pid}/ns/net"))
            .ok()
            .and_then(|l| {
                l.to_str()?
                    .strip_prefix("net:[")?
                    .strip_suffix(']')?
                    .parse::<u64>()
                    .ok()
            })
            .is_some_and(|ino| netns.contains(&ino));
        let softirq = || {
            std::fs::read_to_string(format!("/proc/{pid}/comm"))
                .is_ok_and(|c| c.starts_with("ksoftirqd/"))
        };
        if in_lab || softirq() {
            // A process may exit between listing and reading: it then counts nothing.
            total += process_cpu_ns(pid).unwrap_or(0);
        }
    }
    Ok(total)
}

/// CPU time of this process's reaped children so far, nanoseconds.
pub fn children_cpu_ns() -> anyhow::Result<u64> {
    let u = nix::sys::resource::getrusage(nix::sys::resource::UsageWho::RUSAGE_CHILDREN)
        .context("failed to read the children's CPU time")?;
    let ns =
        |t: nix::sys::time::TimeVal| t.tv_sec() as u64 * 1_000_000_000 + t.tv_usec() as u64 * 1000;
    Ok(ns(u.user_time()) + ns(u.system_time()))
}

/// A line of /proc/PID/status in kB, as bytes.
pub fn status_kb(pid: u32, key: &str) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    s.lines()
        .find_map(|l| l.strip_prefix(key)?.strip_prefix(':'))
        .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
        .map(|kb| kb * 1024)
}

/// Samples a process's VmRSS on its own thread until stopped.
pub struct RssSampler {
    stop: Arc<AtomicBool>,
    handle: JoinHandle<Vec<u64>>,
}

impl RssSampler {
    /// Starts sampling `pid` every `every`.
    pub fn start(pid: u32, every: Duration) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let handle = thread::spawn(move || {
            let mut samples = Vec::new();
            while !flag.load(Ordering::Relaxed) {
                if let Some(rss) = status_kb(pid, "VmRSS") {
                    samples.push(rss);
                }
                thread::sleep(every);
            }
            samples
        });
        Self { stop, handle }
    }

    /// Stops and returns the samples (bytes), oldest first.
    pub fn stop(self) -> Vec<u64> {
        self.stop.store(true, Ordering::Relaxed);
        self.handle.join().unwrap_or_default()
    }
}

/// Run counters of one BPF program.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ProgStats {
    /// Nanoseconds spent running (counted while `kernel.bpf_stats_enabled` is 1).
    pub run_time_ns: u64,
    /// Runs (counted while `kernel.bpf_stats_enabled` is 1).
    pub run_cnt: u64,
}

/// The ids of the BPF programs `pid` holds a file descriptor to (from /proc/PID/fdinfo).
pub fn prog_ids(pid: u32) -> anyhow::Result<Vec<u32>> {
    let dir = format!("/proc/{pid}/fdinfo");
    let mut ids = Vec::new();
    for entry in std::fs::read_dir(&dir).with_context(|| format!("failed to list {dir}"))? {
        let Ok(entry) = entry else { continue };
        let Ok(info) = std::fs::read_to_string(entry.path()) else {
            continue;
        };
        if let Some(Ok(id)) = info
            .lines()
            .find_map(|l| l.strip_prefix("prog_id:"))
            .map(|id| id.trim().parse())
        {
            ids.push(id);
        }
    }
    ids.sort_unstable();
    ids.dedup();
    Ok(ids)
}

/// Every BPF program on the machine: id -> (name, counters).
pub fn progs() -> anyhow::Result<BTreeMap<u32, (String, ProgStats)>> {
    let out = Command::new("bpftool")
        .args(["prog", "show", "--json"])
        .output()
        .context("failed to run bpftool")?;
    if !out.status.success() {
        bail!(
            "bpftool prog show failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let progs: Vec<serde_json::Value> =
        serde_json::from_slice(&out.stdout).context("failed to parse bpftool prog show --json")?;
    Ok(progs
        .iter()
        .filter_map(|p| {
            let id = u32::try_from(p["id"].as_u64()?).ok()?;
            let name = p["name"]
                .as_str()
                .map(str::to_owned)
                .unwrap_or_else(|| format!("id {id}"));
            let stats = ProgStats {
                run_time_ns: p["run_time_ns"].as_u64().unwrap_or(0),
                run_cnt: p["run_cnt"].as_u64().unwrap_or(0),
            };
            Some((id, (name, stats)))
        })
        .collect())
}

/// The counters of the programs with these ids, by program name (summed when names repeat).
pub fn prog_stats(ids: &[u32]) -> anyhow::Result<BTreeMap<String, ProgStats>> {
    let mut stats = BTreeMap::<String, ProgStats>::new();
    for (id, (name, p)) in progs()? {
        if ids.contains(&id) {
            let s = stats.entry(name).or_default();
            s.run_time_ns += p.run_time_ns;
            s.run_cnt += p.run_cnt;
        }
    }
    Ok(stats)
}

/// `after - before` per program.
pub fn prog_delta(
    before: &BTreeMap<String, ProgStats>,
    after: &BTreeMap<String, ProgStats>,
) -> BTreeMap<String, ProgStats> {
    after
        .iter()
        .map(|(name, a)| {
            let b = before.get(name).copied().unwrap_or_default();
            let d = ProgStats {
                run_time_ns: a.run_time_ns.saturating_sub(b.run_time_ns),
                run_cnt: a.run_cnt.saturating_sub(b.run_cnt),
            };
            (name.clone(), d)
        })
        .collect()
}

/// BPF run statistics (`run_time_ns`, `run_cnt`) on while held: the kernel counts them while
/// `kernel.bpf_stats_enabled` is 1 or any `BPF_ENABLE_STATS` file descriptor is open. The bench
/// holds such a descriptor rather than writing the sysctl, so that nobody else's write to the
/// sysctl can switch the counters off halfway, and there is nothing to restore.
pub struct BpfStats {
    _fd: std::os::fd::OwnedFd,
}

impl BpfStats {
    /// Turns BPF run statistics on until dropped.
    pub fn enable() -> anyhow::Result<Self> {
        use std::os::fd::FromRawFd as _;
        const BPF_ENABLE_STATS: nix::libc::c_long = 32;
        const BPF_STATS_RUN_TIME: u32 = 0;
        // union bpf_attr's enable_stats member: { __u32 type; }.
        let attr = BPF_STATS_RUN_TIME;
        // SAFETY: bpf(2) reads `size_of::<u32>()` bytes from a valid pointer to a u32.
        let fd = unsafe {
            nix::libc::syscall(
                nix::libc::SYS_bpf,
                BPF_ENABLE_STATS,
                &attr as *const u32,
                std::mem::size_of::<u32>(),
            )
        };
        if fd < 0 {
            bail!(
                "failed to enable BPF run statistics (bpf BPF_ENABLE_STATS): {}",
                std::io::Error::last_os_error()
            );
        }
        // SAFETY: the kernel just returned this descriptor to us; nothing else owns it.
        Ok(Self {
            _fd: unsafe { std::os::fd::OwnedFd::from_raw_fd(fd as i32) },
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delta_subtracts_per_program() {
        let s = |t, c| ProgStats {
            run_time_ns: t,
            run_cnt: c,
        };
        let before = BTreeMap::from([("a".to_owned(), s(100, 1)), ("b".to_owned(), s(5, 5))]);
        let after = BTreeMap::from([
            ("a".to_owned(), s(350, 3)),
            ("b".to_owned(), s(5, 5)),
            ("c".to_owned(), s(7, 1)),
        ]);
        let d = prog_delta(&before, &after);
        assert_eq!(d["a"], s(250, 2));
        assert_eq!(d["b"], s(0, 0));
        assert_eq!(d["c"], s(7, 1));
    }

    #[test]
    fn reads_own_status_and_stat() {
        let me = std::process::id();
        assert!(status_kb(me, "VmRSS").is_some_and(|b| b > 0));
        assert!(status_kb(me, "NoSuchKey").is_none());
        assert!(process_cpu_ns(me).is_ok());
        assert!(process_cpu_ns(u32::MAX).is_err());
    }
}
