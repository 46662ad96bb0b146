//! What `tracer doctor` reads of the node beside `inspect`: which netfilter modules are loaded,
//! the old single `xtables-multi` binary, kube-proxy's process (its `--proxy-mode` and config
//! file's `mode:`), and the kernel log's "nf_conntrack: table full, dropping packet" lines.
//! Read-only; what cannot be read is said, not an error.

use std::{io::Read as _, os::unix::fs::OpenOptionsExt as _, path::PathBuf};

use serde::{Deserialize, Serialize};

/// The line netfilter logs (rate-limited) for packets it drops because the table is full; kernels
/// since 5.x name the namespace: `nf_conntrack: table full in netns 4026532178, dropping packet`.
pub const CONNTRACK_FULL_LINE: &str = "nf_conntrack: table full, dropping packet";

/// Whether a kernel module is there.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ModuleState {
    /// In `/proc/modules`.
    Loaded,
    /// Not a module, but `/sys/module/<name>` exists: built into the kernel.
    BuiltIn,
    /// Neither.
    Absent,
}

impl std::fmt::Display for ModuleState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            ModuleState::Loaded => "loaded",
            ModuleState::BuiltIn => "built in",
            ModuleState::Absent => "not loaded",
        })
    }
}

/// The running kernel's build configuration: `/boot/config-RELEASE`, else `/proc/config.gz`
/// (through `zcat`); `None` where neither is there.
pub fn kernel_config() -> Option<String> {
    let release = nix::sys::utsname::uname()
        .ok()?
        .release()
        .to_string_lossy()
        .into_owned();
    if let Ok(text) = std::fs::read_to_string(format!("/boot/config-{release}")) {
        return Some(text);
    }
    let out = std::process::Command::new("zcat")
        .arg("/proc/config.gz")
        .output()
        .ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The state of kernel module `name`, whose build option is `CONFIG_{symbol}`: in
/// `/proc/modules`, else built in (`/sys/module/NAME`, `modules.builtin`, or `=y` in `config`).
pub fn module_state(name: &str, symbol: &str, config: Option<&str>) -> ModuleState {
    let modules = std::fs::read_to_string("/proc/modules").unwrap_or_default();
    if modules
        .lines()
        .any(|l| l.split_whitespace().next() == Some(name))
    {
        return ModuleState::Loaded;
    }
    let release = nix::sys::utsname::uname()
        .map(|u| u.release().to_string_lossy().into_owned())
        .unwrap_or_default();
    let builtin = std::fs::read_to_string(format!("/lib/modules/{release}/modules.builtin"))
        .unwrap_or_default();
    let ko = format!("/{name}.ko");
    let configured = format!("CONFIG_{symbol}=y");
    if std::path::Path::new("/sys/module").join(name).exists()
        || builtin.lines().any(|l| l.ends_with(&ko))
        || config.is_some_and(|c| c.lines().any(|l| l == configured))
    {
        ModuleState::BuiltIn
    } else {
        ModuleState::Absent
    }
}

/// The old single binary (`xtables-multi`, iptables before 1.6), where the `PATH` directories hold
/// one.
pub fn xtables_multi() -> Option<PathBuf> {
    ["/usr/sbin", "/sbin", "/usr/bin", "/bin"]
        .iter()
        .map(|d| std::path::Path::new(d).join("xtables-multi"))
        .find(|p| p.exists())
}

/// kube-proxy's process on the node, as its command line and config file say.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KubeProxyProcess {
    /// Its process id.
    pub pid: i32,
    /// `--proxy-mode`, when given.
    pub mode_arg: Option<String>,
    /// `--config`, when given.
    pub config: Option<String>,
    /// `mode:` in the config file, read through the process's root (a container's file system).
    pub config_mode: Option<String>,
}

/// The value of `--name=V` or `--name V` in `args`.
fn flag(args: &[String], name: &str) -> Option<String> {
    let eq = format!("{name}=");
    args.iter().enumerate().find_map(|(i, a)| {
        a.strip_prefix(&eq)
            .map(str::to_owned)
            .or_else(|| (a == name).then(|| args.get(i + 1).cloned()).flatten())
    })
}

/// `mode:` in a kube-proxy configuration file (`KubeProxyConfiguration`, YAML), unquoted.
pub fn config_mode(text: &str) -> Option<String> {
    text.lines().find_map(|l| {
        let v = l.strip_prefix("mode:")?.trim().trim_matches(['"', '\'']);
        Some(v.to_owned())
    })
}

/// kube-proxy's process: the first whose `comm` is `kube-proxy`.
pub fn kube_proxy_process() -> Option<KubeProxyProcess> {
    let entries = std::fs::read_dir("/proc").ok()?;
    for entry in entries.flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let comm = std::fs::read_to_string(entry.path().join("comm")).unwrap_or_default();
        if comm.trim() != "kube-proxy" {
            continue;
        }
        let cmdline = std::fs::read(entry.path().join("cmdline")).unwrap_or_default();
        let args: Vec<String> = cmdline
            .split(|b| *b == 0)
            .map(|a| String::from_utf8_lossy(a).into_owned())
            .collect();
        let config = flag(&args, "--config");
        let config_mode = config.as_ref().and_then(|c| {
            let path = entry.path().join("root").join(c.trim_start_matches('/'));
            config_mode(&std::fs::read_to_string(path).ok()?)
        });
        return Some(KubeProxyProcess {
            pid,
            mode_arg: flag(&args, "--proxy-mode"),
            config,
            config_mode,
        });
    }
    None
}

/// The kernel log's conntrack-full lines.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ConntrackFullLog {
    /// How many lines in the kernel's log buffer (it is rate-limited: each stands for at least
    /// one dropped packet).
    pub lines: u64,
    /// The first one's time, seconds since boot.
    pub first_s: Option<f64>,
    /// The last one's.
    pub last_s: Option<f64>,
}

/// Counts one `/dev/kmsg` record (`PRI,SEQ,TS_USEC,FLAGS;MESSAGE`) when it is a conntrack-full
/// line of namespace `netns` (its inode; lines that name no namespace count for every one)
/// logged at or after `after_s` seconds since boot: the kernel reuses a gone namespace's inode,
/// and lines from before the namespace was made are another's.
fn tally(log: &mut ConntrackFullLog, record: &str, netns: u32, after_s: f64) {
    let Some((head, message)) = record.split_once(';') else {
        return;
    };
    let message = message.lines().next().unwrap_or_default();
    if !(message.contains("nf_conntrack")
        && message.contains("table full")
        && message.contains("dropping packet"))
    {
        return;
    }
    let named = message
        .split_once("in netns ")
        .and_then(|(_, rest)| rest.split(',').next()?.trim().parse::<u32>().ok());
    if named.is_some_and(|n| n != netns) {
        return;
    }
    let ts = head
        .split(',')
        .nth(2)
        .and_then(|t| t.parse::<u64>().ok())
        .map(|us| us as f64 / 1e6);
    if ts.is_some_and(|t| t < after_s) {
        return;
    }
    log.lines += 1;
    if log.first_s.is_none() {
        log.first_s = ts;
    }
    log.last_s = ts.or(log.last_s);
}

/// Reads the whole kernel log buffer from `/dev/kmsg` (one record per read, without waiting for
/// new ones) and counts the conntrack-full lines of namespace `netns` (its inode) logged since
/// `after_s` seconds after boot (when the namespace was made).
pub fn conntrack_full_log(netns: u32, after_s: f64) -> Result<ConntrackFullLog, std::io::Error> {
    let mut kmsg = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open("/dev/kmsg")?;
    let mut log = ConntrackFullLog::default();
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        match kmsg.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => tally(
                &mut log,
                &String::from_utf8_lossy(&buf[..n]),
                netns,
                after_s,
            ),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
            // Overwritten while reading: the next read goes on from the oldest record left.
            Err(e) if e.raw_os_error() == Some(libc::EPIPE) => continue,
            Err(e) => return Err(e),
        }
    }
    Ok(log)
}

/// Seconds since boot (`/proc/uptime`).
pub fn uptime_s() -> Option<f64> {
    std::fs::read_to_string("/proc/uptime")
        .ok()?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kube_proxy_flags_and_config_mode_are_read() {
        let args: Vec<String> = [
            "kube-proxy",
            "--config=/var/lib/kube-proxy/config.conf",
            "--proxy-mode",
            "ipvs",
        ]
        .map(str::to_owned)
        .to_vec();
        assert_eq!(flag(&args, "--proxy-mode").as_deref(), Some("ipvs"));
        assert_eq!(
            flag(&args, "--config").as_deref(),
            Some("/var/lib/kube-proxy/config.conf")
        );
        assert_eq!(flag(&args, "--cluster-cidr"), None);
        let yaml = "apiVersion: kubeproxy.config.k8s.io/v1alpha1\nkind: KubeProxyConfiguration\nmode: \"iptables\"\n";
        assert_eq!(config_mode(yaml).as_deref(), Some("iptables"));
        assert_eq!(config_mode("kind: KubeProxyConfiguration\n"), None);
    }

    #[test]
    fn kmsg_records_count_only_conntrack_full_lines_of_the_namespace() {
        let mut log = ConntrackFullLog::default();
        let full = |ts: &str, ns: &str| {
            format!(
                "4,812,{ts},-;nf_conntrack: nf_conntrack: table full in netns {ns}, dropping packet\n"
            )
        };
        // Before the namespace was made (at 4 s): an earlier namespace with the same inode.
        tally(&mut log, &full("3000000", "4026532178"), 4026532178, 4.0);
        tally(&mut log, &full("5000000", "4026532178"), 4026532178, 4.0);
        tally(&mut log, "6,813,6000000,-;eth0: link up\n", 4026532178, 4.0);
        tally(&mut log, &full("7000000", "4026531840"), 4026532178, 4.0);
        tally(
            &mut log,
            "4,814,9500000,-;nf_conntrack: nf_conntrack: table full, dropping packet\n",
            4026532178,
            4.0,
        );
        tally(&mut log, "garbage without a separator", 4026532178, 4.0);
        assert_eq!(log.lines, 2);
        assert_eq!(log.first_s, Some(5.0));
        assert_eq!(log.last_s, Some(9.5));
    }
}
