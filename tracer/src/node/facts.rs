//! Kernel and node facts: kernel and OS release, BTF, which hook tier tracing would get,
//! br_netfilter, IP forwarding, rp_filter on the pod-facing interfaces, conntrack UDP timeouts.
//!
//! Sysctls under `/proc/sys/net` and `/proc/thread-self/net` are read in the calling thread's
//! network namespace; the rest is the machine's.

use std::{io, path::Path};

use serde::Serialize;

use crate::{kernel::features::Features, probes::plan::Tier};

/// What failed reading the facts.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("failed to read {path}: {source}")]
    Read { path: String, source: io::Error },
    #[error("failed to list the interfaces with `ip -o -d link`: {source}")]
    Links { source: super::backend::Error },
}

/// br_netfilter's switches (absent when the module is not loaded).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct BrNetfilter {
    /// `bridge-nf-call-iptables`: bridged IPv4 traffic goes through iptables (and so is DNATed).
    pub call_iptables: u32,
    /// `bridge-nf-call-ip6tables`.
    pub call_ip6tables: u32,
}

/// An interface's kind, as far as DNS cares.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum LinkKind {
    /// A Linux bridge (a bridge CNI's `cni0`).
    Bridge,
    /// A veth (a pod's link).
    Veth,
    /// kube-proxy's IPVS dummy interface.
    KubeIpvs,
    /// Anything else.
    Other,
}

/// One interface with its reverse-path filter.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Link {
    /// Name.
    pub name: String,
    /// Kind.
    pub kind: LinkKind,
    /// Its own `rp_filter`.
    pub rp_filter: Option<u32>,
    /// What the kernel applies: the maximum of `all` and the interface's (1 strict, 2 loose).
    pub rp_filter_effective: Option<u32>,
}

/// The facts.
#[derive(Debug, Clone, Serialize)]
pub struct Facts {
    /// Kernel release.
    pub kernel: String,
    /// `PRETTY_NAME` from `/etc/os-release`.
    pub os: Option<String>,
    /// `/sys/kernel/btf/vmlinux` exists.
    pub btf: bool,
    /// The kprobe PMU exists.
    pub kprobes: bool,
    /// ftrace function hooks exist (`available_filter_functions`), which fentry needs.
    pub ftrace_functions: bool,
    /// The tier tracing gets, found by loading every program (see `tracer hooks`).
    pub tier: Tier,
    /// Why that tier.
    pub tier_reason: String,
    /// br_netfilter's switches; `None` when br_netfilter is not loaded.
    pub br_netfilter: Option<BrNetfilter>,
    /// `net.ipv4.ip_forward`.
    pub ip_forward: Option<u32>,
    /// `net.ipv4.conf.all.rp_filter`.
    pub rp_filter_all: Option<u32>,
    /// Interfaces other than loopback.
    pub links: Vec<Link>,
    /// `nf_conntrack_udp_timeout` (s): an unreplied UDP flow's life.
    pub udp_timeout: Option<u32>,
    /// `nf_conntrack_udp_timeout_stream` (s): an assured UDP flow's life.
    pub udp_timeout_stream: Option<u32>,
}

/// `PRETTY_NAME` (else `NAME VERSION`) of an os-release file.
pub fn parse_os_release(text: &str) -> Option<String> {
    let get = |key: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(key)?.strip_prefix('='))
            .map(|v| v.trim().trim_matches('"').to_owned())
    };
    get("PRETTY_NAME").or_else(|| {
        Some(
            format!("{} {}", get("NAME")?, get("VERSION").unwrap_or_default())
                .trim()
                .to_owned(),
        )
    })
}

/// Interfaces and kinds from `ip -o -d link` (one line per link).
pub fn parse_links(text: &str) -> Vec<(String, LinkKind)> {
    text.lines()
        .filter_map(|line| {
            let name = line.split(": ").nth(1)?;
            let name = name.split('@').next()?.trim().to_owned();
            let words: Vec<&str> = line.split_whitespace().collect();
            let kind = if name == "kube-ipvs0" {
                LinkKind::KubeIpvs
            } else if words.contains(&"veth") {
                LinkKind::Veth
            } else if words
                .windows(2)
                .any(|w| w[0] == "bridge" && w[1] == "forward_delay")
            {
                LinkKind::Bridge
            } else {
                LinkKind::Other
            };
            (name != "lo").then_some((name, kind))
        })
        .collect()
}

/// Whether the file can be read and is not empty: `available_filter_functions` exists but reading
/// it fails (EPERM) where ftrace function hooks are disabled.
fn lists_something(path: &Path) -> bool {
    use std::io::Read as _;
    let mut buf = [0u8; 64];
    std::fs::File::open(path)
        .and_then(|mut f| f.read(&mut buf))
        .is_ok_and(|n| n > 0)
}

/// A number from a sysctl file; `None` when it does not exist (module not loaded).
pub fn read_sysctl(path: impl AsRef<Path>) -> Result<Option<u32>, Error> {
    let path = path.as_ref();
    match std::fs::read_to_string(path) {
        Ok(text) => Ok(text.trim().parse().ok()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(Error::Read {
            path: path.display().to_string(),
            source,
        }),
    }
}

/// Reads the facts in the calling thread's namespace. The hook tier is `known` when the caller
/// already loaded the probes (trace); else it is found by loading them (`probes::detect_tier`).
pub fn collect(known: Option<(Tier, String)>) -> Result<Facts, Error> {
    let features = Features::detect();
    let ftrace_functions = [
        "/sys/kernel/tracing/available_filter_functions",
        "/sys/kernel/debug/tracing/available_filter_functions",
    ]
    .iter()
    .any(|p| lists_something(Path::new(p)));
    let (tier, tier_reason) = known.unwrap_or_else(|| {
        crate::probes::detect_tier(&features).unwrap_or_else(|e| {
            (
                Tier::Tracepoint,
                format!("could not load the probes to find out: {e}"),
            )
        })
    });
    let os = std::fs::read_to_string("/etc/os-release")
        .ok()
        .as_deref()
        .and_then(parse_os_release);
    let bridge = "/proc/sys/net/bridge";
    let br_netfilter = match (
        read_sysctl(format!("{bridge}/bridge-nf-call-iptables"))?,
        read_sysctl(format!("{bridge}/bridge-nf-call-ip6tables"))?,
    ) {
        (Some(call_iptables), ip6) => Some(BrNetfilter {
            call_iptables,
            call_ip6tables: ip6.unwrap_or(0),
        }),
        (None, _) => None,
    };
    let conf = "/proc/sys/net/ipv4/conf";
    let rp_filter_all = read_sysctl(format!("{conf}/all/rp_filter"))?;
    let text = super::backend::run("ip", &["-o", "-d", "link"])
        .map_err(|source| Error::Links { source })?;
    let mut links = Vec::new();
    for (name, kind) in text.map(|(out, _)| parse_links(&out)).unwrap_or_default() {
        let rp_filter = read_sysctl(format!("{conf}/{name}/rp_filter"))?;
        let rp_filter_effective = rp_filter.map(|v| v.max(rp_filter_all.unwrap_or(0)));
        links.push(Link {
            name,
            kind,
            rp_filter,
            rp_filter_effective,
        });
    }
    let nf = "/proc/sys/net/netfilter";
    Ok(Facts {
        kernel: features.release,
        os,
        btf: features.btf,
        kprobes: features.kprobes,
        ftrace_functions,
        tier,
        tier_reason,
        br_netfilter,
        ip_forward: read_sysctl("/proc/sys/net/ipv4/ip_forward")?,
        rp_filter_all,
        links,
        udp_timeout: read_sysctl(format!("{nf}/nf_conntrack_udp_timeout"))?,
        udp_timeout_stream: read_sysctl(format!("{nf}/nf_conntrack_udp_timeout_stream"))?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn os_release_of_centos7_and_a_name_only_file() {
        let centos = include_str!("../../../tests/fixtures/inspect/centos7/os-release");
        assert_eq!(
            parse_os_release(centos).as_deref(),
            Some("CentOS Linux 7 (Core)")
        );
        assert_eq!(
            parse_os_release("NAME=Foo\nVERSION=\"2\"\n").as_deref(),
            Some("Foo 2")
        );
        assert_eq!(parse_os_release("garbage"), None);
    }

    #[test]
    fn links_and_kinds_from_ip_o_d_link() {
        let text = include_str!("../../../tests/fixtures/inspect/modern/ip-o-d-link.txt");
        let links = parse_links(text);
        assert!(links.iter().all(|(n, _)| n != "lo"));
        assert!(
            links.contains(&("cni0".to_owned(), LinkKind::Bridge)),
            "{links:?}"
        );
        assert!(
            links.contains(&("veth1a2b3c".to_owned(), LinkKind::Veth)),
            "{links:?}"
        );
        assert!(
            links.contains(&("kube-ipvs0".to_owned(), LinkKind::KubeIpvs)),
            "{links:?}"
        );
        assert!(
            links.contains(&("eth0".to_owned(), LinkKind::Other)),
            "{links:?}"
        );
    }
}
