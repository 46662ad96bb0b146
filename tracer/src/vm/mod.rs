//! Boots a Linux kernel under qemu with this machine's root filesystem shared read-only, runs one
//! command in it and brings back its exit status, output and the files it wrote.
//!
//! Used to try the tracer on kernels this machine does not run (Debian's 5.10, 6.1, 6.12: netfilter
//! as modules, kprobes, older BTF). See `shared/KERNEL.md`, "Other kernels", for the measured recipe.
//!
//! # Layout
//! - `fetch`: a kernel spec to an unpacked, depmod'ed kernel in the cache (apt-get download, dpkg-deb).
//! - `initramfs`: the busybox initramfs that mounts the host's `/` over 9p and switch_roots into it.
//! - `qemu`: one guest run: the shared directory, qemu, the timeout, the results.
//! - `command`: `tracer vm run|prepare|list`.

mod fetch;
mod initramfs;
mod qemu;

use std::{
    path::{Path, PathBuf},
    str::FromStr,
    time::Duration,
};

pub use fetch::{cache_dir, cached, prepare};
pub use qemu::run;

/// The Debian kernels the aliases stand for. Pinned so that CI boots the same kernel every run: each
/// is the newest `-amd64` image of its suite's main component (not -security, whose packages are
/// replaced and vanish) as of 2026-12: bullseye is frozen, bookworm changes only at point releases.
/// Check a newer one with `apt-cache search` against the private sources (`fetch::SOURCES`).
pub const ALIASES: &[(&str, &str, &str)] = &[
    ("5.10", "linux-image-5.10.0-32-amd64", "bullseye"),
    ("6.1", "linux-image-6.1.0-50-amd64", "bookworm"),
    ("6.12", "linux-image-6.12.117+deb13-amd64", "trixie"),
];

/// Where the guest command finds its output directory (the host's `GuestRun::out_dir`).
pub const OUT_ENV: &str = "TRACER_VM_OUT";

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{tool} not found: install the Debian package {package} (cargo xtask setup does)")]
    MissingTool {
        tool: &'static str,
        package: &'static str,
    },
    #[error(
        "package {package} is not in Debian's archive (bullseye, bookworm, bookworm-backports, trixie); aliases: {}",
        aliases()
    )]
    PackageNotFound { package: String },
    #[error(
        "{spec:?} is no kernel: give an alias ({}), a Debian kernel package (linux-image-...), a .deb file or an unpacked directory",
        aliases()
    )]
    UnknownKernel { spec: String },
    #[error("failed to run {command}: {detail}")]
    Command { command: String, detail: String },
    #[error("failed to {action} {path}: {source}")]
    Io {
        action: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path} is not a kernel: {reason}")]
    NotAKernel { path: PathBuf, reason: String },
    #[error(
        "kernel {release} lacks module {module} (needed to mount the host's root; a -cloud kernel has no 9p)"
    )]
    MissingModule { release: String, module: String },
    #[error("invalid environment variable name {name:?} for the guest")]
    BadEnvName { name: String },
    #[error("no command to run in the guest")]
    EmptyCommand,
    #[error("guest on kernel {release} timed out after {timeout:?}; console tail:\n{console_tail}")]
    Timeout {
        release: String,
        timeout: Duration,
        console_tail: String,
    },
    #[error(
        "guest on kernel {release} ended without an exit status ({reason}); console tail:\n{console_tail}"
    )]
    GuestFailed {
        release: String,
        reason: String,
        console_tail: String,
    },
    #[error("interrupted: the guest on kernel {release} was stopped")]
    Interrupted { release: String },
}

impl Error {
    pub(crate) fn io(
        action: &'static str,
        path: impl Into<PathBuf>,
    ) -> impl FnOnce(std::io::Error) -> Error {
        let path = path.into();
        move |source| Error::Io {
            action,
            path,
            source,
        }
    }
}

fn aliases() -> String {
    ALIASES
        .iter()
        .map(|(a, p, _)| format!("{a} = {p}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Which kernel to boot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KernelSpec {
    /// A Debian package name (`linux-image-6.1.0-50-amd64`); aliases are resolved by `FromStr`.
    Package(String),
    /// A downloaded `linux-image-*.deb`.
    Deb(PathBuf),
    /// An unpacked kernel: `boot/vmlinuz-<release>` and `lib/modules/<release>/` (or `usr/lib/modules`).
    Dir(PathBuf),
}

impl FromStr for KernelSpec {
    type Err = std::convert::Infallible;

    /// An alias (`5.10`, `6.1`, `6.12`) -> its pinned package; an existing `.deb` file -> `Deb`; an
    /// existing directory -> `Dir`; anything else -> a package name.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if let Some((_, package, _)) = ALIASES.iter().find(|(a, _, _)| *a == s) {
            return Ok(KernelSpec::Package((*package).to_owned()));
        }
        let path = Path::new(s);
        if s.ends_with(".deb") && path.is_file() {
            return Ok(KernelSpec::Deb(path.to_owned()));
        }
        if path.is_dir() {
            return Ok(KernelSpec::Dir(path.to_owned()));
        }
        Ok(KernelSpec::Package(s.to_owned()))
    }
}

/// A kernel ready to boot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Kernel {
    /// `uname -r` in the guest.
    pub release: String,
    /// The kernel image.
    pub vmlinuz: PathBuf,
    /// The module tree, `lib/modules/<release>`, with `modules.dep`.
    pub modules: PathBuf,
}

/// How to run the guest.
#[derive(Debug, Clone)]
pub struct RunOptions {
    /// qemu is killed after this long (boot included).
    pub timeout: Duration,
    /// vCPUs. 1 by default: 6.12 under TCG with 2 panicked at boot once (KERNEL.md).
    pub cpus: u32,
    /// Guest memory.
    pub memory_mib: u32,
    /// Extra environment for the command (after PATH, HOME and TRACER_VM_OUT, so it can override them).
    pub env: Vec<(String, String)>,
    /// The command's working directory in the guest (default `/`).
    pub workdir: Option<PathBuf>,
    /// The kernel lockdown mode to boot with (`lockdown=` on its command line), as a node with
    /// Secure Boot or a hardened profile runs; `None`: the kernel's default (none).
    pub lockdown: Option<Lockdown>,
}

/// A kernel lockdown mode (`Documentation/admin-guide/kernel-parameters.txt`, `lockdown=`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Lockdown {
    /// Blocks changes to the running kernel (unsigned modules, /dev/mem, kexec ...).
    Integrity,
    /// Integrity, and reads of kernel memory too: eBPF's, kprobes, tracefs, perf.
    Confidentiality,
}

impl Default for RunOptions {
    fn default() -> Self {
        RunOptions {
            timeout: Duration::from_secs(600),
            cpus: 1,
            memory_mib: 2048,
            env: Vec::new(),
            workdir: None,
            lockdown: None,
        }
    }
}

/// What one guest run brought back. Owns the shared directory: dropping it removes `out_dir`.
#[derive(Debug)]
pub struct GuestRun {
    /// The command's exit status (128 + signal when a signal ended it).
    pub status: i32,
    /// The command's standard output.
    pub stdout: String,
    /// The command's standard error.
    pub stderr: String,
    /// The serial console log of the whole boot.
    pub console: String,
    /// From starting qemu until the command started.
    pub boot_time: Duration,
    /// From starting qemu until it exited (a retried boot included).
    pub wall_time: Duration,
    /// Boots attempted (2 when the first one failed before init and was retried).
    pub boots: u32,
    share: qemu::ShareDir,
}

impl GuestRun {
    /// The files the guest command wrote to `$TRACER_VM_OUT`.
    pub fn out_dir(&self) -> &Path {
        self.share.out_dir()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spec_aliases_paths_and_names() {
        assert_eq!(
            "6.1".parse::<KernelSpec>().unwrap(),
            KernelSpec::Package("linux-image-6.1.0-50-amd64".into())
        );
        assert_eq!(
            "linux-image-6.1.0-49-amd64".parse::<KernelSpec>().unwrap(),
            KernelSpec::Package("linux-image-6.1.0-49-amd64".into())
        );
        assert_eq!(
            "/".parse::<KernelSpec>().unwrap(),
            KernelSpec::Dir("/".into())
        );
        // A .deb that does not exist is taken as a package name (and will not be found).
        assert_eq!(
            "/nonexistent/k.deb".parse::<KernelSpec>().unwrap(),
            KernelSpec::Package("/nonexistent/k.deb".into())
        );
        let dir = std::env::temp_dir().join(format!("tracer-vm-spec-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let deb = dir.join("linux-image-x.deb");
        std::fs::write(&deb, b"").unwrap();
        assert_eq!(
            deb.to_str().unwrap().parse::<KernelSpec>().unwrap(),
            KernelSpec::Deb(deb.clone())
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// The whole path on a real kernel: prepare (downloads once), boot, argv, env, out dir, status.
    #[test]
    #[ignore = "boots a VM: needs root, qemu-system-x86, busybox-static, kmod and Debian's archive"]
    fn boots_6_1_and_brings_back_output_status_and_files() {
        let kernel = prepare(&"6.1".parse().unwrap()).expect("prepare 6.1");
        let opts = RunOptions {
            timeout: Duration::from_secs(120),
            env: vec![("GREETING".into(), "it's here".into())],
            ..RunOptions::default()
        };
        let argv = [
            "sh",
            "-c",
            "uname -r; echo \"$GREETING\" > $TRACER_VM_OUT/f; exit 3",
        ];
        let argv: Vec<String> = argv.iter().map(|s| s.to_string()).collect();
        let guest = run(&kernel, &argv, &opts).expect("guest run");
        assert_eq!(guest.status, 3);
        assert_eq!(guest.stdout.trim(), kernel.release);
        let f = guest.out_dir().join("f");
        assert_eq!(std::fs::read_to_string(&f).unwrap(), "it's here\n");
        let dir = guest.out_dir().to_owned();
        drop(guest);
        assert!(!dir.exists(), "the out dir outlived its GuestRun");
    }

    #[test]
    fn every_alias_is_a_generic_amd64_image() {
        for (alias, package, _) in ALIASES {
            assert!(package.starts_with("linux-image-") && package.ends_with("-amd64"));
            assert!(!package.contains("cloud"), "{alias}: cloud kernels lack 9p");
        }
    }
}
