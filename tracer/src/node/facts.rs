//! Kernel and node facts: kernel and OS release, BTF, which hook tier tracing would get (from cheap
//! feature checks: nothing is loaded), br_netfilter, IP forwarding, rp_filter on the pod-facing
//! interfaces, conntrack UDP timeouts.
//!
//! Sysctls under `/proc/sys/net` and `/proc/thread-self/net` are read in the calling thread's
//! network namespace; the rest is the machine's.

use std::{io, path::Path};

use serde::Serialize;

pub use crate::links::LinkKind;
use crate::{kernel::features::Features, links, probes::plan::Tier};

/// What failed reading the facts.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("failed to read {path}: {source}")]
    Read { path: String, source: io::Error },
    #[error("failed to list the interfaces: {source}")]
    Links { source: links::Error },
}

/// br_netfilter's switches (absent when the module is not loaded).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct BrNetfilter {
    /// `bridge-nf-call-iptables`: bridged IPv4 traffic goes through iptables (and so is DNATed).
    pub call_iptables: u32,
    /// `bridge-nf-call-ip6tables`.
    pub call_ip6tables: u32,
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
    /// Kernel modules have BTF (`/sys/kernel/btf/` holds more than `vmlinux`): fexit programs on
    /// functions in modules (nf_tables, nf_nat, nf_conntrack built as modules) need it.
    pub module_btf: bool,
    /// The tier tracing gets. Without `tier_loaded` it is the tier the feature checks guarantee
    /// (kprobe where the kprobe PMU exists, else tracepoint): whether fentry works is known only
    /// by loading the programs (`tracer hooks`, `tracer inspect --tier`).
    pub tier: Tier,
    /// Why that tier.
    pub tier_reason: String,
    /// The tier was found by loading every program (`inspect --tier`) or by a running trace.
    pub tier_loaded: bool,
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

/// Whether `/sys/kernel/btf` holds a module's BTF besides `vmlinux`.
fn has_module_btf() -> bool {
    std::fs::read_dir("/sys/kernel/btf").is_ok_and(|dir| {
        dir.filter_map(Result::ok)
            .any(|e| e.file_name() != "vmlinux")
    })
}

/// The tier the cheap feature checks guarantee, and why; loads nothing. fentry needs BTF and ftrace
/// function hooks, and then only loading the programs tells whether the verifier and the attach
/// points accept them.
pub fn tier_from_features(
    btf: bool,
    kprobes: bool,
    ftrace_functions: bool,
    module_btf: bool,
) -> (Tier, String) {
    let fentry = if !btf {
        "no fentry: no BTF (/sys/kernel/btf/vmlinux)".to_owned()
    } else if !ftrace_functions {
        "no fentry: no ftrace function hooks (available_filter_functions unreadable)".to_owned()
    } else {
        format!(
            "fentry: unknown until loaded; run `tracer hooks` or `inspect --tier` ({})",
            if module_btf {
                "module BTF present"
            } else {
                "no module BTF: fexit only on built-in netfilter"
            }
        )
    };
    if kprobes {
        (Tier::Kprobe, format!("kprobe PMU present; {fentry}"))
    } else {
        (Tier::Tracepoint, format!("no kprobe PMU; {fentry}"))
    }
}

/// Each interface's kind and reverse-path filter: `rp_filter` reads an interface's own setting
/// (`None` where it has none), `rp_filter_all` is `net.ipv4.conf.all.rp_filter`.
fn link_facts(
    links: Vec<links::Link>,
    rp_filter_all: Option<u32>,
    rp_filter: impl Fn(&str) -> Result<Option<u32>, Error>,
) -> Result<Vec<Link>, Error> {
    links
        .into_iter()
        .map(|link| {
            let own = rp_filter(&link.name)?;
            Ok(Link {
                kind: link.kind,
                rp_filter: own,
                rp_filter_effective: own.map(|v| v.max(rp_filter_all.unwrap_or(0))),
                name: link.name,
            })
        })
        .collect()
}

/// Reads the facts in the calling thread's namespace. The hook tier is `loaded` when the caller
/// loaded the probes (trace, `inspect --tier`); else it comes from [`tier_from_features`].
pub fn collect(loaded: Option<(Tier, String)>) -> Result<Facts, Error> {
    let features = Features::detect();
    let ftrace_functions = [
        "/sys/kernel/tracing/available_filter_functions",
        "/sys/kernel/debug/tracing/available_filter_functions",
    ]
    .iter()
    .any(|p| lists_something(Path::new(p)));
    let module_btf = has_module_btf();
    let tier_loaded = loaded.is_some();
    let (tier, tier_reason) = loaded.unwrap_or_else(|| {
        tier_from_features(features.btf, features.kprobes, ftrace_functions, module_btf)
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
    let links = link_facts(
        links::list().map_err(|source| Error::Links { source })?,
        rp_filter_all,
        |name| read_sysctl(format!("{conf}/{name}/rp_filter")),
    )?;
    let nf = "/proc/sys/net/netfilter";
    Ok(Facts {
        kernel: features.release,
        os,
        btf: features.btf,
        kprobes: features.kprobes,
        ftrace_functions,
        module_btf,
        tier,
        tier_reason,
        tier_loaded,
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

    /// The interfaces of the modern fixture (an `RTM_GETLINK` dump, read by `links`' parser) with
    /// their kinds and effective reverse-path filters; loopback left out.
    #[test]
    fn link_facts_of_the_modern_fixture() {
        let dump = links::fixture::links(include_str!(
            "../../../tests/fixtures/inspect/modern/links.json"
        ));
        // Strict on the veths, none on the bridge, nothing known for kube-ipvs0; `all` is loose.
        let rp_filter = |name: &str| {
            Ok(match name {
                "cni0" => Some(0),
                "kube-ipvs0" => None,
                n if n.starts_with("veth") || n == "vpeer0" => Some(1),
                _ => Some(0),
            })
        };
        let got = link_facts(dump.clone(), Some(2), rp_filter).expect("link facts");
        let link = |name: &str, kind, rp: Option<u32>| Link {
            name: name.to_owned(),
            kind,
            rp_filter: rp,
            rp_filter_effective: rp.map(|v| v.max(2)),
        };
        assert_eq!(
            got,
            [
                link("cni0", LinkKind::Bridge, Some(0)),
                link("vpeer0", LinkKind::Veth, Some(1)),
                link("veth1a2b3c", LinkKind::Veth, Some(1)),
                link("kube-ipvs0", LinkKind::KubeIpvs, None),
                link("flannel.1", LinkKind::Other, Some(0)),
                link("eth0", LinkKind::Other, Some(0)),
                link("vethpod7", LinkKind::Veth, Some(1)),
            ]
        );
        assert_eq!(got[0].rp_filter_effective, Some(2));
        // A sysctl that cannot be read fails the facts instead of reading as absent.
        let unreadable = |name: &str| {
            Err(Error::Read {
                path: format!("{name}/rp_filter"),
                source: io::Error::from(io::ErrorKind::PermissionDenied),
            })
        };
        let failed = link_facts(dump, None, unreadable);
        assert!(matches!(failed, Err(Error::Read { path, .. }) if path == "cni0/rp_filter"));
    }

    #[test]
    fn tier_from_cheap_checks_never_claims_fentry() {
        let (tier, why) = tier_from_features(true, false, false, false);
        assert_eq!(tier, Tier::Tracepoint);
        assert!(why.contains("no ftrace function hooks"), "{why}");
        let (tier, why) = tier_from_features(true, true, true, true);
        assert_eq!(tier, Tier::Kprobe);
        assert!(why.contains("fentry: unknown until loaded"), "{why}");
        assert!(why.contains("inspect --tier"), "{why}");
        let (_, why) = tier_from_features(false, true, true, false);
        assert!(why.contains("no BTF"), "{why}");
    }
}
