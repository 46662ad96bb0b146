//! Which hook kinds this kernel lets the tracer use.

use std::path::Path;

/// What was found, with the reason for each missing piece.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Features {
    /// Kernel release (`uname -r`).
    pub release: String,
    /// `/sys/kernel/btf/vmlinux` exists (needed by tp_btf and fentry programs and for offsets).
    pub btf: bool,
    /// The kprobe PMU exists (`/sys/bus/event_source/devices/kprobe`): kprobes can attach.
    pub kprobes: bool,
}

impl Features {
    /// Looks at this machine.
    pub fn detect() -> Self {
        let release = nix::sys::utsname::uname()
            .map(|u| u.release().to_string_lossy().into_owned())
            .unwrap_or_else(|_| "unknown".to_owned());
        Self {
            release,
            btf: Path::new(super::btf::VMLINUX).exists(),
            kprobes: Path::new("/sys/bus/event_source/devices/kprobe").exists(),
        }
    }
}

/// Whether this kernel has TCX (6.6): aya attaches TC programs as links, owned by a file
/// descriptor and without a clsact qdisc; before it, as netlink filters that outlive the process.
pub fn has_tcx() -> bool {
    aya::util::KernelVersion::current().is_ok_and(|v| v >= aya::util::KernelVersion::new(6, 6, 0))
}
