//! `lab up --ip-family ipv6|dual`: IPv6 on the lab's node as a dual-stack cluster has it. Every
//! pod gets `fd00:10:244::N/64` next to its `10.244.0.N` (same N), the bridge the gateway
//! `fd00:10:244::1`, the DNS Service the cluster IP `fd00:10:96::a`, and kube-proxy's IPv6 rules
//! go to `ip6tables-{nft,legacy}-restore` (the same `KUBE-SERVICES`/`KUBE-SVC-`/`KUBE-SEP-`
//! chains, with IPv6 addresses, as kube-proxy writes them for the IPv6 family). dnsmasq listens
//! on every address, so each DNS pod answers over both families.
//!
//! The pods keep their IPv4 addresses in `ipv6` mode too (the lab's own readiness checks and
//! conntrack faults use them); what `ipv6` changes is the family the lab's clients ask over.

use std::{
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    time::{Duration, Instant},
};

use super::{Error, LabInfo, State, rules, topology};
use crate::node::Backend;

/// The IP families of the lab's DNS Service.
#[derive(
    Debug,
    Clone,
    Copy,
    Default,
    PartialEq,
    Eq,
    clap::ValueEnum,
    serde::Serialize,
    serde::Deserialize,
)]
#[serde(rename_all = "kebab-case")]
pub enum IpFamily {
    /// IPv4 only (the default).
    #[default]
    Ipv4,
    /// IPv6: the Service and the clients' queries are IPv6.
    Ipv6,
    /// Dual-stack: the Service has an IPv4 and an IPv6 cluster IP; clients ask over IPv4 unless
    /// told otherwise.
    Dual,
}

impl IpFamily {
    /// Whether the lab has IPv6 addresses and rules.
    pub fn has_ipv6(self) -> bool {
        self != Self::Ipv4
    }
}

/// The DNS Service's IPv6 cluster IP.
pub const SERVICE_IP6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x10, 0x96, 0, 0, 0, 0, 0xa);
/// The bridge's IPv6 address: the pods' default gateway.
const GATEWAY6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x10, 0x244, 0, 0, 0, 0, 1);
/// The node's IPv6 uplink address on the sink device (documentation prefix).
const UPLINK6: &str = "2001:db8::2/64";

/// The IPv6 address of the pod whose IPv4 address is `v4`: `fd00:10:244::N` for `10.244.0.N`.
pub fn pod_ip6(v4: Ipv4Addr) -> Ipv6Addr {
    Ipv6Addr::new(0xfd00, 0x10, 0x244, 0, 0, 0, 0, u16::from(v4.octets()[3]))
}

impl LabInfo {
    /// The Service address the lab's clients ask by default: IPv6 in an `ipv6` lab, else IPv4.
    pub fn client_service_ip(&self) -> IpAddr {
        match self.ip_family {
            IpFamily::Ipv6 => SERVICE_IP6.into(),
            _ => self.service_ip.into(),
        }
    }

    /// The Service's cluster IPs, one per family the lab has.
    pub fn service_ips(&self) -> Vec<IpAddr> {
        let mut ips = vec![IpAddr::from(self.service_ip)];
        if self.ip_family.has_ipv6() {
            ips.push(SERVICE_IP6.into());
        }
        ips
    }
}

/// Adds IPv6 to the node: forwarding, ip6tables on bridged traffic, the gateway on the bridge,
/// the uplink's address and default route. Addresses skip duplicate address detection, so they
/// are usable at once.
pub fn setup_node(prefix: &str, family: IpFamily) -> Result<(), Error> {
    if !family.has_ipv6() {
        return Ok(());
    }
    let node = topology::node_netns(prefix);
    let ip = |args: &[&str]| topology::run("ip", &[&["-n", node.as_str(), "-6"], args].concat());
    topology::sysctl(&node, "net/ipv6/conf/all/forwarding", "1")?;
    topology::sysctl(&node, "net/bridge/bridge-nf-call-ip6tables", "1")?;
    let br = topology::bridge(prefix);
    ip(&[
        "addr",
        "add",
        &format!("{GATEWAY6}/64"),
        "dev",
        &br,
        "nodad",
    ])?;
    let uplink = format!("{prefix}eth0");
    ip(&["addr", "add", UPLINK6, "dev", &uplink, "nodad"])?;
    ip(&["route", "add", "default", "dev", &uplink])?;
    Ok(())
}

/// Gives pod namespace `ns` (IPv4 address `v4`) its IPv6 address and default route.
pub fn setup_pod(ns: &str, v4: Ipv4Addr, family: IpFamily) -> Result<(), Error> {
    if !family.has_ipv6() {
        return Ok(());
    }
    let addr = format!("{}/64", pod_ip6(v4));
    topology::run(
        "ip",
        &[
            "-n", ns, "-6", "addr", "replace", &addr, "dev", "eth0", "nodad",
        ],
    )?;
    topology::run(
        "ip",
        &[
            "-n",
            ns,
            "-6",
            "route",
            "replace",
            "default",
            "via",
            &GATEWAY6.to_string(),
        ],
    )
    .map(drop)
}

/// Waits until no address of the lab is tentative (duplicate address detection of the links'
/// link-local addresses still running): until then neighbour discovery from that namespace
/// stalls, and the first IPv6 queries and answers wait a second or more.
pub fn settle(prefix: &str, family: IpFamily) -> Result<(), Error> {
    if !family.has_ipv6() {
        return Ok(());
    }
    let deadline = Instant::now() + SETTLE_WITHIN;
    for ns in topology::existing_netns(prefix)? {
        loop {
            let tentative = topology::run("ip", &["-n", &ns, "-6", "addr", "show", "tentative"])?;
            if tentative.trim().is_empty() || Instant::now() > deadline {
                break;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
    Ok(())
}

/// How long `settle` waits for duplicate address detection (1 s per address by default).
const SETTLE_WITHIN: Duration = Duration::from_secs(5);

fn restore6(backend: Backend) -> &'static str {
    match backend {
        Backend::Nft => "ip6tables-nft-restore",
        Backend::Legacy => "ip6tables-legacy-restore",
    }
}

/// The IPv6 counterpart of the IPv4 rules `set`: the same endpoints, filter-drop pods and
/// REJECTs, at the pods' and the Service's IPv6 addresses (no NetworkPolicy chains: policy-drop
/// is IPv4 only).
fn rule_set6(set: &rules::RuleSet) -> rules::RuleSet {
    let v6 = |ips: &[IpAddr]| {
        ips.iter()
            .map(|ip| match ip {
                IpAddr::V4(v4) => IpAddr::from(pod_ip6(*v4)),
                IpAddr::V6(_) => *ip,
            })
            .collect()
    };
    rules::RuleSet {
        service_ip: SERVICE_IP6.into(),
        endpoints: v6(&set.endpoints),
        filter_drop: v6(&set.filter_drop),
        tcp_drop: v6(&set.tcp_drop),
        policy_drop: None,
        kubelet: set.kubelet,
        nodelocal: None,
    }
}

/// Loads the IPv6 rules matching the IPv4 rules `set` into `state`'s backend (`ip6tables-*`),
/// when the lab has IPv6.
pub fn load_rules6(prefix: &str, state: &State, set: &rules::RuleSet) -> Result<(), Error> {
    if !state.ip_family.has_ipv6() {
        return Ok(());
    }
    let text = rules::render(&rule_set6(set));
    topology::run_in(
        &topology::node_netns(prefix),
        restore6(state.backend),
        &[],
        Some(&text),
    )
    .map(drop)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ipv6_rules_are_kube_proxys_for_the_ipv6_family() {
        let set = rules::RuleSet {
            service_ip: IpAddr::from([10, 96, 0, 10]),
            endpoints: vec![IpAddr::from([10, 244, 0, 10])],
            filter_drop: vec![IpAddr::from([10, 244, 0, 11])],
            tcp_drop: vec![IpAddr::from([10, 244, 0, 10])],
            policy_drop: None,
            kubelet: true,
            nodelocal: None,
        };
        let text = rules::render(&rule_set6(&set));
        assert!(text.contains("-d fd00:10:96::a --dport 53 -j KUBE-SVC-TCOU7JCQXEZGVUNU"));
        assert!(text.contains("-j DNAT --to-destination [fd00:10:244::a]:53"));
        assert!(text.contains("-A FORWARD -d fd00:10:244::b/128 -p udp"));
        assert!(text.contains("-A FORWARD -d fd00:10:244::a/128 -p tcp -m tcp --dport 53"));
        assert!(text.contains("! -s fd00:10:244::/56 -j KUBE-MARK-MASQ"));
        assert!(!text.contains("10.244."));
        assert_eq!(
            pod_ip6(Ipv4Addr::new(10, 244, 0, 20)).to_string(),
            "fd00:10:244::14"
        );
    }
}
