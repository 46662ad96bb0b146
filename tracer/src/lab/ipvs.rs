//! kube-proxy's ipvs mode in the lab (kubernetes `pkg/proxy/ipvs/proxier.go`): the dummy link
//! `kube-ipvs0` holding the ClusterIP, one IPVS virtual service per Service port (scheduler `rr`,
//! masquerade forwarding) with the ready endpoints as real servers, the ipsets its iptables rules
//! match, those rules (`KUBE-SERVICES`, `KUBE-MARK-MASQ`, `KUBE-POSTROUTING`, `KUBE-NODE-PORT`,
//! `KUBE-FORWARD`), and its sysctls (`net.ipv4.vs.conntrack=1`: IPVS keeps conntrack's entry
//! in step with its own NAT, so the masquerade rules and conntrack's reply tuple work).
//!
//! The NAT is IPVS's own: a query to the ClusterIP is local (kube-ipvs0), IPVS takes it in
//! LOCAL_IN (`ip_vs_in`), rewrites the destination and sends it on through LOCAL_OUT
//! (`ip_vs_nat_xmit`), so after the rewrite it crosses filter OUTPUT and nat POSTROUTING, never
//! FORWARD: the lab's filter-drop rule sits in OUTPUT in this mode. Everything lives in the node
//! namespace and goes with it.

use std::{
    fmt::Write as _,
    net::{IpAddr, Ipv4Addr},
};

use super::{Error, SERVICE_IP, rules, topology};
use crate::node::ipvs::{self, Destination, Ipvs, Service};

/// kube-proxy's dummy link for every ClusterIP.
pub const DUMMY: &str = "kube-ipvs0";
/// IPVS's scheduler as kube-proxy configures it by default.
const SCHEDULER: &str = "rr";
/// kube-proxy's sysctls for ipvs mode, in the node namespace.
const SYSCTLS: [(&str, &str); 4] = [
    ("net/ipv4/vs/conntrack", "1"),
    ("net/ipv4/vs/expire_nodest_conn", "1"),
    ("net/ipv4/vs/expire_quiescent_template", "1"),
    ("net/ipv4/ip_forward", "1"),
];
/// The DNS Service's IPVS ports: udp and tcp 53 (the metrics port is left out).
const PORTS: [(u8, &str, u16); 2] = [(17, "udp", 53), (6, "tcp", 53)];

fn ipvs_error(source: ipvs::Error) -> Error {
    Error::Ipvs { source }
}

/// Checks that this kernel has IPVS, loading `ip_vs` if it is a module that is not loaded yet.
pub fn check() -> Result<(), Error> {
    match Ipvs::open() {
        Err(ipvs::Error::Unavailable { .. }) => {
            // A module not loaded yet: kube-proxy loads it too. Its failure says nothing more
            // than the lookup that follows.
            let _ = topology::run("modprobe", &["ip_vs"]);
            Ipvs::open().map(drop).map_err(ipvs_error)
        }
        other => other.map(drop).map_err(ipvs_error),
    }
}

/// The node's one-time setup: kube-ipvs0 with the ClusterIP, and the sysctls.
pub fn setup_node(prefix: &str) -> Result<(), Error> {
    let node = topology::node_netns(prefix);
    topology::run_in(&node, "ip", &["link", "add", DUMMY, "type", "dummy"], None)?;
    let cidr = format!("{SERVICE_IP}/32");
    topology::run_in(&node, "ip", &["addr", "add", &cidr, "dev", DUMMY], None)?;
    for (key, value) in SYSCTLS {
        topology::sysctl(&node, key, value)?;
    }
    Ok(())
}

fn services(endpoints: &[Ipv4Addr]) -> Vec<Service> {
    PORTS
        .iter()
        .map(|&(protocol, _, port)| Service {
            addr: SERVICE_IP,
            protocol,
            port,
            scheduler: SCHEDULER.to_owned(),
            destinations: endpoints
                .iter()
                .map(|ip| Destination::masquerade(*ip, port))
                .collect(),
        })
        .collect()
}

/// Makes the node's IPVS services, ipsets and iptables rules those of `rules` (replacing what
/// was there): the ipsets first, since the rules match them.
pub fn load(prefix: &str, restore: &str, rules: &rules::RuleSet) -> Result<(), Error> {
    let node = topology::node_netns(prefix);
    let endpoints: Vec<Ipv4Addr> = v4(&rules.endpoints);
    let wanted = services(&endpoints);
    crate::netns::run_in(&crate::netns::named(&node), || sync(&wanted))
        .map_err(|source| Error::Netns {
            netns: node.clone(),
            source,
        })?
        .map_err(ipvs_error)?;
    topology::run_in(
        &node,
        "ipset",
        &["restore", "-exist"],
        Some(&ipsets(&endpoints)),
    )?;
    topology::run_in(&node, restore, &[], Some(&render(rules)))?;
    Ok(())
}

fn v4(ips: &[IpAddr]) -> Vec<Ipv4Addr> {
    ips.iter()
        .filter_map(|ip| match ip {
            IpAddr::V4(v4) => Some(*v4),
            IpAddr::V6(_) => None,
        })
        .collect()
}

/// Replaces the lab's virtual services with `wanted` (kube-proxy syncs real servers one by one;
/// the lab deletes and re-adds, which also drops IPVS's connections to removed servers).
fn sync(wanted: &[Service]) -> Result<(), ipvs::Error> {
    let mut ipvs = Ipvs::open()?;
    for s in ipvs.services()? {
        if wanted
            .iter()
            .any(|w| (w.addr, w.protocol, w.port) == (s.addr, s.protocol, s.port))
        {
            ipvs.del_service(&s)?;
        }
    }
    for s in wanted {
        ipvs.add_service(s)?;
    }
    Ok(())
}

/// The ipsets kube-proxy's rules match, as `ipset restore` input.
fn ipsets(endpoints: &[Ipv4Addr]) -> String {
    let mut out = String::new();
    out.push_str("create KUBE-CLUSTER-IP hash:ip,port family inet hashsize 1024 maxelem 65536\n");
    out.push_str("create KUBE-LOOP-BACK hash:ip,port,ip family inet hashsize 1024 maxelem 65536\n");
    out.push_str("flush KUBE-CLUSTER-IP\nflush KUBE-LOOP-BACK\n");
    for (_, proto, port) in PORTS {
        let _ = writeln!(out, "add KUBE-CLUSTER-IP {SERVICE_IP},{proto}:{port}");
        // A pod reaching itself through the Service (hairpin) is masqueraded.
        for ep in endpoints {
            let _ = writeln!(out, "add KUBE-LOOP-BACK {ep},{proto}:{port},{ep}");
        }
    }
    out
}

/// kube-proxy's ipvs-mode iptables rules and the kubelet's chains for `iptables-restore`; the
/// filter-drop fault's DROP sits in OUTPUT, where IPVS sends the rewritten query.
pub fn render(rules: &rules::RuleSet) -> String {
    let mut out = String::new();
    out.push_str("*mangle\n:PREROUTING ACCEPT [0:0]\n:INPUT ACCEPT [0:0]\n:FORWARD ACCEPT [0:0]\n");
    out.push_str(":OUTPUT ACCEPT [0:0]\n:POSTROUTING ACCEPT [0:0]\n:KUBE-IPTABLES-HINT - [0:0]\n:KUBE-KUBELET-CANARY - [0:0]\n");
    out.push_str(":KUBE-PROXY-CANARY - [0:0]\nCOMMIT\n");
    out.push_str("*filter\n:INPUT ACCEPT [0:0]\n:FORWARD ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n");
    out.push_str(":KUBE-FORWARD - [0:0]\n:KUBE-NODE-PORT - [0:0]\n:KUBE-PROXY-FIREWALL - [0:0]\n");
    out.push_str(":KUBE-KUBELET-CANARY - [0:0]\n:KUBE-PROXY-CANARY - [0:0]\n");
    out.push_str(
        "-A INPUT -m comment --comment \"kube-proxy firewall rules\" -j KUBE-PROXY-FIREWALL\n",
    );
    out.push_str(
        "-A INPUT -m comment --comment \"kubernetes health check rules\" -j KUBE-NODE-PORT\n",
    );
    out.push_str(
        "-A FORWARD -m comment --comment \"kube-proxy firewall rules\" -j KUBE-PROXY-FIREWALL\n",
    );
    out.push_str(
        "-A FORWARD -m comment --comment \"kubernetes forwarding rules\" -j KUBE-FORWARD\n",
    );
    let drops = [("udp", &rules.filter_drop), ("tcp", &rules.tcp_drop)];
    for (proto, ips) in drops {
        for ip in ips {
            let _ = writeln!(
                out,
                "-A OUTPUT -d {ip}/32 -p {proto} -m {proto} --dport 53 -m comment --comment \"{}\" -j DROP",
                rules::FAULT_COMMENT
            );
        }
    }
    out.push_str("-A KUBE-FORWARD -m comment --comment \"kubernetes forwarding rules\" -m mark --mark 0x4000/0x4000 -j ACCEPT\n");
    out.push_str("-A KUBE-FORWARD -m comment --comment \"kubernetes forwarding conntrack rule\" -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT\n");
    out.push_str("COMMIT\n");
    out.push_str("*nat\n:PREROUTING ACCEPT [0:0]\n:INPUT ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n");
    out.push_str(":POSTROUTING ACCEPT [0:0]\n:KUBE-SERVICES - [0:0]\n:KUBE-POSTROUTING - [0:0]\n");
    out.push_str(":KUBE-NODE-PORT - [0:0]\n:KUBE-LOAD-BALANCER - [0:0]\n:KUBE-MARK-MASQ - [0:0]\n");
    out.push_str(":KUBE-KUBELET-CANARY - [0:0]\n:KUBE-PROXY-CANARY - [0:0]\n");
    out.push_str(
        "-A PREROUTING -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES\n",
    );
    out.push_str(
        "-A OUTPUT -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES\n",
    );
    out.push_str("-A POSTROUTING -m comment --comment \"kubernetes postrouting rules\" -j KUBE-POSTROUTING\n");
    out.push_str("-A KUBE-POSTROUTING -m comment --comment \"Kubernetes endpoints dst ip:port, source ip for solving hairpin purpose\" -m set --match-set KUBE-LOOP-BACK dst,dst,src -j MASQUERADE\n");
    out.push_str("-A KUBE-POSTROUTING -m mark ! --mark 0x4000/0x4000 -j RETURN\n");
    out.push_str("-A KUBE-POSTROUTING -j MARK --set-xmark 0x4000/0x0\n");
    out.push_str("-A KUBE-POSTROUTING -m comment --comment \"kubernetes service traffic requiring SNAT\" -j MASQUERADE --random-fully\n");
    out.push_str("-A KUBE-MARK-MASQ -j MARK --set-xmark 0x4000/0x4000\n");
    let _ = writeln!(
        out,
        "-A KUBE-SERVICES ! -s {} -m comment --comment \"Kubernetes service cluster ip + port for masquerade purpose\" -m set --match-set KUBE-CLUSTER-IP dst,dst -j KUBE-MARK-MASQ",
        rules::CLUSTER_CIDR
    );
    out.push_str("-A KUBE-SERVICES -m addrtype --dst-type LOCAL -j KUBE-NODE-PORT\n");
    out.push_str("-A KUBE-SERVICES -m set --match-set KUBE-CLUSTER-IP dst,dst -j ACCEPT\n");
    out.push_str("COMMIT\n");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn services_carry_the_endpoints_and_sets_the_ports() {
        let eps = [Ipv4Addr::new(10, 244, 0, 10), Ipv4Addr::new(10, 244, 0, 11)];
        let s = services(&eps);
        assert_eq!(s.len(), 2);
        assert!(
            s.iter()
                .all(|s| s.destinations.len() == 2 && s.scheduler == "rr")
        );
        assert!(services(&[]).iter().all(|s| s.destinations.is_empty()));
        let sets = ipsets(&eps);
        assert!(sets.contains("add KUBE-CLUSTER-IP 10.96.0.10,udp:53\n"));
        assert!(sets.contains("add KUBE-LOOP-BACK 10.244.0.11,tcp:53,10.244.0.11\n"));
    }

    #[test]
    fn filter_drop_sits_in_output_and_the_services_match_the_set() {
        let rules = rules::RuleSet {
            service_ip: SERVICE_IP.into(),
            endpoints: vec![],
            filter_drop: vec![IpAddr::from(Ipv4Addr::new(10, 244, 0, 10))],
            tcp_drop: vec![IpAddr::from(Ipv4Addr::new(10, 244, 0, 11))],
            policy_drop: None,
            kubelet: true,
            nodelocal: None,
        };
        let text = render(&rules);
        assert!(text.contains("-A OUTPUT -d 10.244.0.10/32 -p udp"));
        assert!(text.contains("-A OUTPUT -d 10.244.0.11/32 -p tcp -m tcp --dport 53"));
        assert!(!text.contains("-A FORWARD -d"));
        assert!(text.contains("--match-set KUBE-CLUSTER-IP dst,dst -j KUBE-MARK-MASQ"));
        assert_eq!(text.matches("COMMIT\n").count(), 3);
    }
}
