//! NodeLocal DNSCache on this node: the `nodelocaldns` link node-cache creates and its addresses,
//! the UDP sockets bound to port 53 on them (from `/proc/net/udp`), and the NOTRACK and ACCEPT
//! rules node-cache installs for them, in whichever iptables backend holds them.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};

use serde::Serialize;

use super::{
    backend::{Backend, Saves},
    kubeproxy::RuleCounter,
};

/// The link node-cache creates for its addresses.
pub const LINK: &str = "nodelocaldns";

/// What was found of the cache.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct NodeLocalCache {
    /// The link (`nodelocaldns`).
    pub link: String,
    /// Its addresses (169.254.20.10, and in iptables mode the kube-dns ClusterIP), without the
    /// IPv6 link-local address every link has.
    pub addresses: Vec<IpAddr>,
    /// UDP sockets bound to port 53 on one of them (or on every address).
    pub listeners: Vec<SocketAddr>,
    /// Rules on the addresses: raw `NOTRACK` and filter `ACCEPT`, with their backend.
    pub rules: Vec<RuleCounter>,
}

impl NodeLocalCache {
    /// The raw table's rules (NOTRACK).
    pub fn notrack(&self) -> impl Iterator<Item = &RuleCounter> {
        self.rules.iter().filter(|r| r.table == "raw")
    }

    /// The filter table's rules (ACCEPT).
    pub fn accepts(&self) -> impl Iterator<Item = &RuleCounter> {
        self.rules.iter().filter(|r| r.table == "filter")
    }

    /// The backends holding its rules.
    pub fn backends(&self) -> Vec<Backend> {
        let mut out: Vec<Backend> = self.rules.iter().map(|r| r.backend).collect();
        out.sort_by_key(|b| b.name());
        out.dedup();
        out
    }
}

/// The cache in the calling thread's namespace: `None` without a `nodelocaldns` link.
pub fn find(saves: &Saves) -> Option<NodeLocalCache> {
    let addresses = link_addresses()?;
    // The calling thread's namespace (`/proc/net` is the process's: its main thread's).
    let udp = std::fs::read_to_string("/proc/thread-self/net/udp")
        .inspect_err(|e| log::warn!("failed to read /proc/thread-self/net/udp: {e}"))
        .unwrap_or_default();
    Some(NodeLocalCache {
        link: LINK.to_owned(),
        listeners: listeners(&udp, &addresses),
        rules: rules(saves, &addresses),
        addresses,
    })
}

/// The addresses of the `nodelocaldns` link, or `None` when there is no such link.
fn link_addresses() -> Option<Vec<IpAddr>> {
    let all = nix::ifaddrs::getifaddrs()
        .inspect_err(|e| log::warn!("failed to list the interfaces' addresses: {e}"))
        .ok()?;
    let mut found = false;
    let mut out = Vec::new();
    for a in all.filter(|a| a.interface_name == LINK) {
        found = true;
        let Some(address) = a.address else { continue };
        if let Some(v4) = address.as_sockaddr_in() {
            out.push(IpAddr::from(v4.ip()));
        } else if let Some(v6) = address.as_sockaddr_in6()
            && !v6.ip().is_unicast_link_local()
        {
            // Not the link's own fe80:: address: the kernel gives every link one.
            out.push(IpAddr::from(v6.ip()));
        }
    }
    found.then_some(out)
}

/// The UDP sockets in `/proc/net/udp` text bound to port 53 on one of `addresses` or on every
/// address (`0.0.0.0`).
pub fn listeners(proc_net_udp: &str, addresses: &[IpAddr]) -> Vec<SocketAddr> {
    proc_net_udp
        .lines()
        .skip(1)
        .filter_map(|line| {
            let local = line.split_whitespace().nth(1)?;
            let (ip, port) = local.split_once(':')?;
            // The address as the kernel's u32 in host byte order, printed %08X.
            let ip = Ipv4Addr::from(u32::from_str_radix(ip, 16).ok()?.to_ne_bytes());
            let port = u16::from_str_radix(port, 16).ok()?;
            let on_cache = ip.is_unspecified() || addresses.contains(&IpAddr::from(ip));
            (port == 53 && on_cache).then(|| SocketAddr::from((ip, port)))
        })
        .collect()
}

/// The rules of both backends' saves on `addresses`: raw NOTRACK and filter ACCEPT rules whose
/// `-d` or `-s` is one of them.
fn rules(saves: &Saves, addresses: &[IpAddr]) -> Vec<RuleCounter> {
    let mut out = Vec::new();
    for backend in [Backend::Nft, Backend::Legacy] {
        let Some(save) = saves.of(backend) else {
            continue;
        };
        for table in save
            .tables
            .iter()
            .filter(|t| matches!(t.name.as_str(), "raw" | "filter"))
        {
            for rule in &table.rules {
                // iptables-nft prints NOTRACK as `-j CT --notrack`.
                let wanted = match (table.name.as_str(), rule.target.as_deref()) {
                    ("raw", Some("NOTRACK")) => true,
                    ("raw", Some("CT")) => rule.text.contains("--notrack"),
                    ("filter", Some("ACCEPT")) => true,
                    _ => false,
                };
                let names_cache = addresses.iter().any(|ip| {
                    let host = if ip.is_ipv4() { 32 } else { 128 };
                    rule.text.contains(&format!("-d {ip}/{host} "))
                        || rule.text.contains(&format!("-s {ip}/{host} "))
                });
                if wanted && names_cache {
                    out.push(RuleCounter {
                        backend,
                        table: table.name.clone(),
                        rule: rule.text.clone(),
                        packets: rule.packets.unwrap_or(0),
                        bytes: rule.bytes.unwrap_or(0),
                    });
                }
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listeners_on_the_cache_addresses_are_found() {
        // dnsmasq on 169.254.20.10:53 and 10.96.0.10:53, and a resolver on 127.0.0.53:53.
        let udp = "   sl  local_address rem_address   st tx_queue rx_queue tr tx_queue uid timeout inode ref pointer drops
  1: 0A14FEA9:0035 00000000:0000 07 00000000:00000000 00:00000000 00000000     0        0 1 2 0 0
  2: 0A00600A:0035 00000000:0000 07 00000000:00000000 00:00000000 00000000     0        0 2 2 0 0
  3: 3500007F:0035 00000000:0000 07 00000000:00000000 00:00000000 00000000     0        0 3 2 0 0
  4: 0A14FEA9:1F90 00000000:0000 07 00000000:00000000 00:00000000 00000000     0        0 4 2 0 0
";
        let cache: Vec<IpAddr> = vec![
            "169.254.20.10".parse().unwrap(),
            "10.96.0.10".parse().unwrap(),
        ];
        let got = listeners(udp, &cache);
        assert_eq!(
            got,
            vec![
                "169.254.20.10:53".parse::<SocketAddr>().unwrap(),
                "10.96.0.10:53".parse().unwrap()
            ]
        );
        assert!(listeners(udp, &[]).is_empty());
    }
}
