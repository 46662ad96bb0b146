//! Installs what a fresh machine lacks, and nothing else. Every step checks first.

use std::{path::Path, process::Command};

use anyhow::Context as _;

use crate::sh;

/// Debian packages the tool, the lab and the tests use, and why.
const PACKAGES: &[(&str, &str)] = &[
    ("llvm-22-dev", "bpf-linker links against LLVM 22"),
    ("iproute2", "the lab's namespaces, veths and bridge"),
    ("iptables", "kube-proxy's rules, legacy and nft backends"),
    ("nftables", "nft, to read and check nf_tables rulesets"),
    (
        "conntrack",
        "the lab's stale-conntrack fault and cross-checks",
    ),
    (
        "dnsmasq-base",
        "the real DNS server in the lab's CoreDNS pods",
    ),
    ("dnsperf", "real DNS load for the bench"),
    (
        "ipset",
        "the lab's ipvs mode: kube-proxy's KUBE-CLUSTER-IP and KUBE-LOOP-BACK sets",
    ),
    ("dnsutils", "dig, for the README's manual checks"),
    (
        "prometheus",
        "tests/metrics.rs scrapes `trace --metrics` with a real Prometheus (its own process); tests/deploy.rs runs promtool on deploy/alerts.yaml",
    ),
    ("bpftrace", "the bench's reference tracer"),
    (
        "bpftool",
        "the bench's BPF run counters, and the deep programs' xlated dumps in the VM",
    ),
    (
        "qemu-system-x86",
        "tracer vm: boots Debian's 5.10/6.1/6.12 kernels (TCG) for validate and the tests",
    ),
    (
        "busybox-static",
        "tracer vm: the initramfs's shell, insmod and switch_root (must be static)",
    ),
    (
        "kmod",
        "modprobe and depmod: the VM guest's module autoloading and its module trees",
    ),
    (
        "xz-utils",
        "tracer vm: 6.12's modules are .ko.xz, busybox insmod needs them plain",
    ),
];

const BPF_LINKER_VERSION: &str = "0.13.0";

pub fn run() -> anyhow::Result<()> {
    packages()?;
    rust_src()?;
    bpf_linker()?;
    mount("bpf", "/sys/fs/bpf")?;
    mount("tracefs", "/sys/kernel/tracing")?;
    Ok(())
}

fn installed(pkg: &str) -> bool {
    Command::new("dpkg-query")
        .args(["-W", "-f=${Status}", pkg])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).contains("install ok installed"))
        .unwrap_or(false)
}

fn packages() -> anyhow::Result<()> {
    let missing: Vec<&str> = PACKAGES
        .iter()
        .map(|(p, _)| *p)
        .filter(|p| !installed(p))
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    eprintln!("setup: installing {}", missing.join(" "));
    sh(Command::new("apt-get").args(["update", "-qq"]))?;
    sh(Command::new("apt-get")
        .args(["install", "-y", "-qq", "--no-install-recommends"])
        .args(&missing)
        .env("DEBIAN_FRONTEND", "noninteractive"))
}

fn toolchain() -> String {
    std::env::var("RUSTUP_TOOLCHAIN").unwrap_or_else(|_| "stable".to_owned())
}

fn rust_src() -> anyhow::Result<()> {
    let out = Command::new("rustup")
        .args([
            "component",
            "list",
            "--installed",
            "--toolchain",
            &toolchain(),
        ])
        .output()
        .context("failed to run rustup")?;
    if String::from_utf8_lossy(&out.stdout)
        .lines()
        .any(|l| l.starts_with("rust-src"))
    {
        return Ok(());
    }
    eprintln!("setup: adding rust-src (the eBPF crate builds core from source)");
    sh(Command::new("rustup").args(["component", "add", "rust-src", "--toolchain", &toolchain()]))
}

fn bpf_linker() -> anyhow::Result<()> {
    let have = Command::new("bpf-linker")
        .arg("--version")
        .output()
        .map(|o| {
            o.status.success() && String::from_utf8_lossy(&o.stdout).contains(BPF_LINKER_VERSION)
        })
        .unwrap_or(false);
    if have {
        return Ok(());
    }
    eprintln!(
        "setup: building bpf-linker {BPF_LINKER_VERSION} against Debian's LLVM 22 (about 2 min)"
    );
    // Without LLVM_PREFIX its build script finds llvm-14's llvm-config first and fails to link.
    sh(crate::cargo()
        .args([
            "install",
            "--locked",
            &format!("bpf-linker@{BPF_LINKER_VERSION}"),
        ])
        .args(["--no-default-features", "--features", "llvm-22"])
        .env("LLVM_PREFIX", "/usr/lib/llvm-22"))
}

fn mount(fstype: &str, target: &str) -> anyhow::Result<()> {
    let mounted = Command::new("mountpoint")
        .args(["-q", target])
        .status()
        .map(|s| s.success());
    if mounted.unwrap_or(false) || !Path::new(target).exists() {
        return Ok(());
    }
    eprintln!("setup: mounting {fstype} on {target}");
    sh(Command::new("mount").args(["-t", fstype, fstype, target]))
}
