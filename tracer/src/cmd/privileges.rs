//! What each command needs from the kernel's privilege checks, checked before it does anything:
//! the effective capabilities (`CapEff` in `/proc/self/status`), and for the commands that load
//! eBPF, `kernel.unprivileged_bpf_disabled` (named when CAP_BPF is missing) and the lockdown mode
//! (`confidentiality` forbids what tracing needs; `integrity` only forbids
//! `bpf_probe_write_user`, which the tracer does not use). `main` exits with code 5 on a refusal.

use super::Error;
use crate::cli::Command;

/// A capability the tracer may need, with its number (`linux/capability.h`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Cap {
    /// TC programs, netlink changes (qdiscs, nftables), conntrack dumps, iptables saves.
    NetAdmin = 12,
    /// Entering other network namespaces (setns), making the lab's; BPF before CAP_BPF (5.8).
    SysAdmin = 21,
    /// Tracing programs and their perf-event attachments (tracepoints, kprobes).
    Perfmon = 38,
    /// Loading programs and making maps.
    Bpf = 39,
}

impl Cap {
    fn name(self) -> &'static str {
        match self {
            Cap::NetAdmin => "CAP_NET_ADMIN",
            Cap::SysAdmin => "CAP_SYS_ADMIN",
            Cap::Perfmon => "CAP_PERFMON",
            Cap::Bpf => "CAP_BPF",
        }
    }
}

/// What loading and attaching the eBPF programs needs (with the namespaces they go into).
const EBPF: &[Cap] = &[Cap::Bpf, Cap::Perfmon, Cap::NetAdmin, Cap::SysAdmin];

/// The capabilities `command` needs, and whether it loads eBPF.
fn needs(command: &Command) -> (&'static [Cap], bool) {
    match command {
        Command::Trace(_) | Command::Doctor(_) => (EBPF, true),
        Command::Hooks(_) => (&[Cap::Bpf, Cap::Perfmon, Cap::NetAdmin], true),
        Command::Probe(a) if !a.no_trace => (EBPF, true),
        Command::Probe(a) if a.lab || a.netns.is_some() => (&[Cap::SysAdmin], false),
        Command::Validate(a) if a.kernel.is_none() => (EBPF, true),
        Command::Inspect(a) if a.tier => (EBPF, true),
        Command::Inspect(a) if a.lab || a.netns.is_some() => {
            (&[Cap::NetAdmin, Cap::SysAdmin], false)
        }
        Command::Inspect(_) => (&[Cap::NetAdmin], false),
        Command::Lab(_) => (&[Cap::NetAdmin, Cap::SysAdmin], false),
        _ => (&[], false),
    }
}

/// Refuses `command` (named `name` in the message) when this process lacks what it needs.
pub fn check(name: &str, command: &Command) -> Result<(), Error> {
    let (caps, ebpf) = needs(command);
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let field = |name: &str| {
        let line = status.lines().find(|l| l.starts_with(name))?;
        Some(line[name.len()..].split_whitespace().collect::<Vec<_>>())
    };
    let effective = field("CapEff:")
        .and_then(|f| u64::from_str_radix(f.first()?, 16).ok())
        .unwrap_or(0);
    // Uid: real, effective, saved, filesystem.
    let euid = field("Uid:")
        .and_then(|f| Some(f.get(1)?.to_string()))
        .unwrap_or_else(|| "?".to_owned());
    // Before 5.8 (no CAP_BPF, CAP_PERFMON) CAP_SYS_ADMIN stands for both.
    let last_cap: u32 = read_trimmed("/proc/sys/kernel/cap_last_cap")
        .and_then(|s| s.parse().ok())
        .unwrap_or(40);
    let mut wanted: Vec<Cap> = Vec::new();
    for &cap in caps {
        let cap = if cap as u32 > last_cap {
            Cap::SysAdmin
        } else {
            cap
        };
        if !wanted.contains(&cap) {
            wanted.push(cap);
        }
    }
    let missing: Vec<&str> = wanted
        .iter()
        .filter(|&&c| effective & (1u64 << c as u32) == 0)
        .map(|c| c.name())
        .collect();
    if !missing.is_empty() {
        let bpf_missing = missing
            .iter()
            .any(|m| *m == "CAP_BPF" || *m == "CAP_SYS_ADMIN");
        let why = match read_trimmed("/proc/sys/kernel/unprivileged_bpf_disabled") {
            Some(v) if ebpf && bpf_missing => format!(
                "; kernel.unprivileged_bpf_disabled={v}{}",
                if v == "0" {
                    ""
                } else {
                    ": no BPF without CAP_BPF"
                }
            ),
            _ => String::new(),
        };
        return Err(Error::Privileges {
            reason: format!(
                "tracer {name} needs {}; this process (uid {}) lacks {} (effective capabilities {effective:#x}{why}): {}",
                wanted
                    .iter()
                    .map(|c| c.name())
                    .collect::<Vec<_>>()
                    .join(", "),
                euid,
                missing.join(", "),
                if euid == "0" {
                    "its bounding set or container dropped them; grant them"
                } else {
                    "run it as root or grant those capabilities"
                },
            ),
        });
    }
    if ebpf && lockdown().as_deref() == Some("confidentiality") {
        return Err(Error::Privileges {
            reason: format!(
                "tracer {name} cannot trace under kernel lockdown=confidentiality (/sys/kernel/security/lockdown): it forbids eBPF reads of kernel memory (bpf_probe_read_kernel), kprobes, tracefs and perf events; boot with lockdown=integrity or none (`inspect` and `probe --no-trace` work as they are)"
            ),
        });
    }
    Ok(())
}

/// The kernel's lockdown mode (`none`, `integrity`, `confidentiality`), if securityfs says.
fn lockdown() -> Option<String> {
    let text = read_trimmed("/sys/kernel/security/lockdown")?;
    let start = text.find('[')? + 1;
    let end = start + text[start..].find(']')?;
    Some(text[start..end].to_owned())
}

fn read_trimmed(path: &str) -> Option<String> {
    Some(std::fs::read_to_string(path).ok()?.trim().to_owned())
}
