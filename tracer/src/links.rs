//! The network interfaces of a namespace and their kinds, as far as DNS cares (`ip -o -d link`).
//! Below both `node` (inspect's facts) and `probes` (which interfaces get the TC programs).

use std::{io, process::Command};

use serde::Serialize;

/// What failed listing the interfaces.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("failed to run `ip -o -d link`: {source}")]
    Run { source: io::Error },
    #[error("`ip -o -d link` failed ({status}): {stderr}")]
    Failed {
        status: std::process::ExitStatus,
        stderr: String,
    },
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

/// `ip -o -d link` in the calling thread's namespace (a child process inherits it); `Ok(None)`
/// when `ip` is not installed.
pub fn ip_link() -> Result<Option<String>, Error> {
    let out = match Command::new("ip").args(["-o", "-d", "link"]).output() {
        Ok(out) => out,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(source) => return Err(Error::Run { source }),
    };
    if !out.status.success() {
        return Err(Error::Failed {
            status: out.status,
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
        });
    }
    Ok(Some(String::from_utf8_lossy(&out.stdout).into_owned()))
}

/// Interfaces other than loopback and their kinds, from `ip -o -d link` (one line per link).
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn links_and_kinds_from_ip_o_d_link() {
        let text = include_str!("../../tests/fixtures/inspect/modern/ip-o-d-link.txt");
        let links = parse_links(text);
        assert!(links.iter().all(|(n, _)| n != "lo"));
        for want in [
            ("cni0", LinkKind::Bridge),
            ("veth1a2b3c", LinkKind::Veth),
            ("kube-ipvs0", LinkKind::KubeIpvs),
            ("eth0", LinkKind::Other),
        ] {
            assert!(
                links.contains(&(want.0.to_owned(), want.1)),
                "{want:?} in {links:?}"
            );
        }
    }
}
