//! The iptables rules of the lab's node, as kube-proxy (iptables mode) and the kubelet write them,
//! rendered as `iptables-restore` input.
//!
//! Chain names, comments, argument order and the statistic probabilities follow kube-proxy's
//! iptables proxier: `KUBE-SVC-`/`KUBE-SEP-` names are the first 16 base32 characters of a SHA-256
//! of the service port name and protocol (and endpoint), so the lab's `KUBE-SVC-TCOU7JCQXEZGVUNU`
//! is the one every real cluster has for `kube-system/kube-dns:dns`.

use std::{
    fmt::Write as _,
    net::{IpAddr, SocketAddr},
};

use sha2::{Digest as _, Sha256};

use super::policy::{self, PolicyDrop};

/// The cluster's pod CIDR: traffic from outside it to a Service is masqueraded.
pub const CLUSTER_CIDR: &str = "10.244.0.0/16";
/// The cluster's IPv6 pod CIDR (dual-stack and IPv6 labs).
pub const CLUSTER_CIDR6: &str = "fd00:10:244::/56";

/// The pod CIDR of `ip`'s family.
fn cluster_cidr(ip: IpAddr) -> &'static str {
    if ip.is_ipv6() {
        CLUSTER_CIDR6
    } else {
        CLUSTER_CIDR
    }
}

/// The prefix length of one address of `ip`'s family (32, 128).
fn host_bits(ip: IpAddr) -> u8 {
    if ip.is_ipv6() { 128 } else { 32 }
}

/// The ports of the `kube-system/kube-dns` Service, as CoreDNS's manifest declares them.
pub(super) const DNS_SERVICE_PORTS: [ServicePort; 3] = [
    ServicePort {
        service: "kube-dns",
        name: "dns",
        protocol: "udp",
        port: 53,
    },
    ServicePort {
        service: "kube-dns",
        name: "dns-tcp",
        protocol: "tcp",
        port: 53,
    },
    ServicePort {
        service: "kube-dns",
        name: "metrics",
        protocol: "tcp",
        port: 9153,
    },
];

/// The ports of `kube-system/kube-dns-upstream`, the Service NodeLocal DNSCache's manifest adds
/// for the cache's misses: the same CoreDNS endpoints behind a ClusterIP of its own.
pub(super) const UPSTREAM_SERVICE_PORTS: [ServicePort; 2] = [
    ServicePort {
        service: "kube-dns-upstream",
        name: "dns",
        protocol: "udp",
        port: 53,
    },
    ServicePort {
        service: "kube-dns-upstream",
        name: "dns-tcp",
        protocol: "tcp",
        port: 53,
    },
];

pub(super) struct ServicePort {
    /// The Service's name in `kube-system`.
    pub(super) service: &'static str,
    pub(super) name: &'static str,
    pub(super) protocol: &'static str,
    pub(super) port: u16,
}

impl ServicePort {
    /// `kube-system/kube-dns:dns`, kube-proxy's `ServicePortName.String()`.
    pub(super) fn full_name(&self) -> String {
        format!("kube-system/{}:{}", self.service, self.name)
    }

    fn svc_chain(&self) -> String {
        format!(
            "KUBE-SVC-{}",
            chain_hash(&format!("{}{}", self.full_name(), self.protocol))
        )
    }

    fn sep_chain(&self, endpoint: IpAddr) -> String {
        // kube-proxy's endpoint string: `10.244.0.10:53`, `[fd00:10:244::a]:53`.
        let ep = SocketAddr::new(endpoint, self.port);
        format!(
            "KUBE-SEP-{}",
            chain_hash(&format!("{}{}{ep}", self.full_name(), self.protocol))
        )
    }
}

/// What the rules say about the DNS Service.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuleSet {
    /// The Service's cluster IP (IPv4 for `iptables-restore`, IPv6 for `ip6tables-restore`).
    pub service_ip: IpAddr,
    /// The ready endpoints kube-proxy knows of; none gives kube-proxy's REJECT rules.
    pub endpoints: Vec<IpAddr>,
    /// Pod IPs that get a DROP for UDP/53 at the top of filter FORWARD (the filter-drop fault).
    pub filter_drop: Vec<IpAddr>,
    /// Pod IPs that get a DROP for TCP/53 at the top of filter FORWARD (the tcp-blocked fault).
    pub tcp_drop: Vec<IpAddr>,
    /// A NetworkPolicy engine's per-pod chains that drop DNS from one client (the policy-drop
    /// fault).
    pub policy_drop: Option<PolicyDrop>,
    /// Whether the kubelet's chains (`KUBE-IPTABLES-HINT`, `KUBE-KUBELET-CANARY`) are included.
    pub kubelet: bool,
    /// NodeLocal DNSCache's rules and its upstream Service, when the node runs the cache.
    pub nodelocal: Option<NodeLocalRules>,
}

/// What NodeLocal DNSCache adds to a node's rules.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeLocalRules {
    /// The addresses node-cache listens on (169.254.20.10 and, in iptables mode, the kube-dns
    /// ClusterIP): NOTRACK in raw, ACCEPT in filter.
    pub local_ips: Vec<IpAddr>,
    /// The ClusterIP of `kube-dns-upstream`, balanced over the same endpoints as kube-dns.
    pub upstream_ip: IpAddr,
}

/// The Services kube-proxy writes rules for: kube-dns, and kube-dns-upstream with the cache.
fn services(rules: &RuleSet) -> Vec<(IpAddr, &'static [ServicePort])> {
    let mut all = vec![(rules.service_ip, &DNS_SERVICE_PORTS[..])];
    if let Some(n) = &rules.nodelocal {
        all.push((n.upstream_ip, &UPSTREAM_SERVICE_PORTS[..]));
    }
    all
}

/// The comment on the lab's own fault rules, so a reader of `iptables-save` sees what they are.
pub const FAULT_COMMENT: &str = "tracer lab fault: filter-drop";
/// The comment on the tcp-blocked fault's rules.
pub const TCP_FAULT_COMMENT: &str = "tracer lab fault: tcp-blocked";

/// kube-proxy's chain-name hash: base32 (RFC 4648 alphabet) of SHA-256, first 16 characters.
pub(super) fn chain_hash(input: &str) -> String {
    const ALPHABET: &[u8; 32] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";
    let digest = Sha256::digest(input.as_bytes());
    // 16 base32 characters are 80 bits: the first 10 bytes of the digest.
    let mut bits: u128 = 0;
    for byte in &digest[..10] {
        bits = (bits << 8) | u128::from(*byte);
    }
    (0..16)
        .rev()
        .map(|i| ALPHABET[((bits >> (i * 5)) & 0x1f) as usize] as char)
        .collect()
}

/// Renders `mangle`, `filter` and `nat` for `iptables-restore` (without `--noflush`, so each
/// table is replaced whole).
pub fn render(rules: &RuleSet) -> String {
    let mut out = String::new();
    if let Some(n) = &rules.nodelocal {
        render_raw(&mut out, n);
    }
    render_mangle(&mut out, rules);
    render_filter(&mut out, rules);
    render_nat(&mut out, rules);
    out
}

fn canaries(out: &mut String, rules: &RuleSet) {
    if rules.kubelet {
        out.push_str(":KUBE-KUBELET-CANARY - [0:0]\n");
    }
    out.push_str(":KUBE-PROXY-CANARY - [0:0]\n");
}

fn render_mangle(out: &mut String, rules: &RuleSet) {
    out.push_str("*mangle\n");
    out.push_str(":PREROUTING ACCEPT [0:0]\n:INPUT ACCEPT [0:0]\n:FORWARD ACCEPT [0:0]\n");
    out.push_str(":OUTPUT ACCEPT [0:0]\n:POSTROUTING ACCEPT [0:0]\n");
    if rules.kubelet {
        // The kubelet's hint that tells tools which iptables backend the node uses.
        out.push_str(":KUBE-IPTABLES-HINT - [0:0]\n");
    }
    canaries(out, rules);
    out.push_str("COMMIT\n");
}

/// node-cache's NOTRACK rules (`-I`, so the last address it adds comes first): queries to its
/// addresses and answers from them skip conntrack, so kube-proxy's DNAT never sees them.
fn render_raw(out: &mut String, n: &NodeLocalRules) {
    out.push_str("*raw\n:PREROUTING ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n");
    for ip in n.local_ips.iter().rev() {
        for p in ["udp", "tcp"] {
            let _ = writeln!(
                out,
                "-A PREROUTING -d {ip}/32 -p {p} -m {p} --dport 53 -j NOTRACK"
            );
        }
    }
    for ip in n.local_ips.iter().rev() {
        let _ = writeln!(
            out,
            "-A OUTPUT -s {ip}/32 -p tcp -m tcp --sport 8080 -j NOTRACK"
        );
        let _ = writeln!(
            out,
            "-A OUTPUT -d {ip}/32 -p tcp -m tcp --dport 8080 -j NOTRACK"
        );
        for p in ["udp", "tcp"] {
            let _ = writeln!(
                out,
                "-A OUTPUT -d {ip}/32 -p {p} -m {p} --dport 53 -j NOTRACK"
            );
        }
        for p in ["udp", "tcp"] {
            let _ = writeln!(
                out,
                "-A OUTPUT -s {ip}/32 -p {p} -m {p} --sport 53 -j NOTRACK"
            );
        }
    }
    out.push_str("COMMIT\n");
}

/// node-cache's filter rules, ahead of everything else in INPUT and OUTPUT: the untracked
/// packets would otherwise miss the conntrack-state ACCEPTs a host firewall relies on.
fn nodelocal_accepts(out: &mut String, n: &NodeLocalRules) {
    for ip in n.local_ips.iter().rev() {
        for p in ["udp", "tcp"] {
            let _ = writeln!(
                out,
                "-A INPUT -d {ip}/32 -p {p} -m {p} --dport 53 -j ACCEPT"
            );
        }
    }
    for ip in n.local_ips.iter().rev() {
        for p in ["udp", "tcp"] {
            let _ = writeln!(
                out,
                "-A OUTPUT -s {ip}/32 -p {p} -m {p} --sport 53 -j ACCEPT"
            );
        }
    }
}

fn render_filter(out: &mut String, rules: &RuleSet) {
    out.push_str("*filter\n:INPUT ACCEPT [0:0]\n:FORWARD ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n");
    for chain in [
        "KUBE-EXTERNAL-SERVICES",
        "KUBE-FORWARD",
        "KUBE-NODEPORTS",
        "KUBE-PROXY-FIREWALL",
        "KUBE-SERVICES",
    ] {
        let _ = writeln!(out, ":{chain} - [0:0]");
    }
    canaries(out, rules);
    if let Some(p) = &rules.policy_drop {
        out.push_str(&policy::chains(p));
    }
    let new = "-m conntrack --ctstate NEW";
    let lb_fw = "-m comment --comment \"kubernetes load balancer firewall\" -j KUBE-PROXY-FIREWALL";
    let ext = "-m comment --comment \"kubernetes externally-visible service portals\" -j KUBE-EXTERNAL-SERVICES";
    let svc = "-m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES";
    if let Some(n) = &rules.nodelocal {
        nodelocal_accepts(out, n);
    }
    let _ = writeln!(out, "-A INPUT {new} {lb_fw}");
    out.push_str("-A INPUT -m comment --comment \"kubernetes health check service ports\" -j KUBE-NODEPORTS\n");
    let _ = writeln!(out, "-A INPUT {new} {ext}");
    for ip in &rules.filter_drop {
        let _ = writeln!(
            out,
            "-A FORWARD -d {ip}/{} -p udp -m udp --dport 53 -m comment --comment \"{FAULT_COMMENT}\" -j DROP",
            host_bits(*ip)
        );
    }
    for ip in &rules.tcp_drop {
        let _ = writeln!(
            out,
            "-A FORWARD -d {ip}/{} -p tcp -m tcp --dport 53 -m comment --comment \"{TCP_FAULT_COMMENT}\" -j DROP",
            host_bits(*ip)
        );
    }
    if let Some(p) = &rules.policy_drop {
        out.push_str(&policy::rules(p));
    }
    let _ = writeln!(out, "-A FORWARD {new} {lb_fw}");
    out.push_str(
        "-A FORWARD -m comment --comment \"kubernetes forwarding rules\" -j KUBE-FORWARD\n",
    );
    let _ = writeln!(out, "-A FORWARD {new} {svc}");
    let _ = writeln!(out, "-A FORWARD {new} {ext}");
    let _ = writeln!(out, "-A OUTPUT {new} {lb_fw}");
    let _ = writeln!(out, "-A OUTPUT {new} {svc}");
    out.push_str("-A KUBE-FORWARD -m conntrack --ctstate INVALID -j DROP\n");
    out.push_str("-A KUBE-FORWARD -m comment --comment \"kubernetes forwarding rules\" -m mark --mark 0x4000/0x4000 -j ACCEPT\n");
    out.push_str("-A KUBE-FORWARD -m comment --comment \"kubernetes forwarding conntrack rule\" -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT\n");
    if rules.endpoints.is_empty() {
        for (ip, ports) in services(rules) {
            for sp in ports {
                let _ = writeln!(
                    out,
                    "-A KUBE-SERVICES -m comment --comment \"{} has no endpoints\" -m {p} -p {p} -d {ip} --dport {} -j REJECT",
                    sp.full_name(),
                    sp.port,
                    p = sp.protocol,
                );
            }
        }
    }
    out.push_str("COMMIT\n");
}

fn render_nat(out: &mut String, rules: &RuleSet) {
    out.push_str("*nat\n:PREROUTING ACCEPT [0:0]\n:INPUT ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n");
    out.push_str(":POSTROUTING ACCEPT [0:0]\n");
    for chain in [
        "KUBE-MARK-MASQ",
        "KUBE-NODEPORTS",
        "KUBE-POSTROUTING",
        "KUBE-SERVICES",
    ] {
        let _ = writeln!(out, ":{chain} - [0:0]");
    }
    canaries(out, rules);
    if !rules.endpoints.is_empty() {
        for sp in services(rules).into_iter().flat_map(|(_, ports)| ports) {
            let _ = writeln!(out, ":{} - [0:0]", sp.svc_chain());
            for ep in &rules.endpoints {
                let _ = writeln!(out, ":{} - [0:0]", sp.sep_chain(*ep));
            }
        }
    }
    let portals = "-m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES";
    let _ = writeln!(out, "-A PREROUTING {portals}");
    let _ = writeln!(out, "-A OUTPUT {portals}");
    out.push_str("-A POSTROUTING -m comment --comment \"kubernetes postrouting rules\" -j KUBE-POSTROUTING\n");
    out.push_str("-A KUBE-MARK-MASQ -j MARK --or-mark 0x4000\n");
    out.push_str("-A KUBE-POSTROUTING -m mark ! --mark 0x4000/0x4000 -j RETURN\n");
    out.push_str("-A KUBE-POSTROUTING -j MARK --xor-mark 0x4000\n");
    out.push_str("-A KUBE-POSTROUTING -m comment --comment \"kubernetes service traffic requiring SNAT\" -j MASQUERADE --random-fully\n");
    if !rules.endpoints.is_empty() {
        for (ip, ports) in services(rules) {
            for sp in ports {
                nat_service_port(out, sp, ip, &rules.endpoints);
            }
        }
    }
    out.push_str("-A KUBE-SERVICES -m comment --comment \"kubernetes service nodeports; NOTE: this must be the last rule in this chain\" -m addrtype --dst-type LOCAL -j KUBE-NODEPORTS\n");
    out.push_str("COMMIT\n");
}

/// One Service port's rules in nat: the ClusterIP match, the masquerade mark for traffic from
/// outside the pod CIDR, the random split over the endpoints and the DNAT to each.
fn nat_service_port(out: &mut String, sp: &ServicePort, ip: IpAddr, endpoints: &[IpAddr]) {
    let (name, p, port) = (sp.full_name(), sp.protocol, sp.port);
    let svc = sp.svc_chain();
    let matches = format!("-m {p} -p {p} -d {ip} --dport {port}");
    let _ = writeln!(
        out,
        "-A KUBE-SERVICES -m comment --comment \"{name} cluster IP\" {matches} -j {svc}"
    );
    let _ = writeln!(
        out,
        "-A {svc} -m comment --comment \"{name} cluster IP\" {matches} ! -s {} -j KUBE-MARK-MASQ",
        cluster_cidr(ip)
    );
    let n = endpoints.len();
    for (i, ep) in endpoints.iter().enumerate() {
        let statistic = if i + 1 < n {
            format!(
                " -m statistic --mode random --probability {:.10}",
                1.0 / (n - i) as f64
            )
        } else {
            String::new()
        };
        let _ = writeln!(
            out,
            "-A {svc} -m comment --comment \"{name} -> {}\"{statistic} -j {}",
            SocketAddr::new(*ep, port),
            sp.sep_chain(*ep)
        );
    }
    for ep in endpoints {
        let sep = sp.sep_chain(*ep);
        let _ = writeln!(
            out,
            "-A {sep} -m comment --comment {name} -s {ep} -j KUBE-MARK-MASQ"
        );
        let _ = writeln!(
            out,
            "-A {sep} -m comment --comment {name} -m {p} -p {p} -j DNAT --to-destination {}",
            SocketAddr::new(*ep, port)
        );
    }
}

/// `iptables-restore` input that empties `mangle`, `filter` and `nat` (deleting their user chains).
pub fn empty() -> String {
    "*mangle\nCOMMIT\n*filter\nCOMMIT\n*nat\nCOMMIT\n".to_owned()
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;

    /// The lab's rule set with `endpoints` and no fault (for the renderers' tests here and in
    /// `nftables`).
    pub(in crate::lab) fn lab(endpoints: &[&str]) -> RuleSet {
        RuleSet {
            service_ip: "10.96.0.10".parse().unwrap(),
            endpoints: endpoints.iter().map(|e| e.parse().unwrap()).collect(),
            filter_drop: vec![],
            tcp_drop: vec![],
            policy_drop: None,
            kubelet: true,
            nodelocal: None,
        }
    }

    #[test]
    fn chain_names_match_real_clusters() {
        // The names every kubeadm cluster has for kube-dns.
        assert_eq!(
            DNS_SERVICE_PORTS[0].svc_chain(),
            "KUBE-SVC-TCOU7JCQXEZGVUNU"
        );
        assert_eq!(
            DNS_SERVICE_PORTS[1].svc_chain(),
            "KUBE-SVC-ERIFXISQEP7F7OF4"
        );
        assert_eq!(
            DNS_SERVICE_PORTS[2].svc_chain(),
            "KUBE-SVC-JD5MR3NA4I4DYORP"
        );
    }

    #[test]
    fn two_endpoints_split_half_and_rest() {
        let text = render(&lab(&["10.244.0.10", "10.244.0.11"]));
        assert!(text.contains(
            "-A KUBE-SVC-TCOU7JCQXEZGVUNU -m comment --comment \"kube-system/kube-dns:dns -> 10.244.0.10:53\" -m statistic --mode random --probability 0.5000000000 -j KUBE-SEP-"
        ));
        assert!(text.contains("-m udp -p udp -j DNAT --to-destination 10.244.0.11:53\n"));
        assert!(!text.contains("has no endpoints"));
        assert!(text.contains(":KUBE-IPTABLES-HINT - [0:0]"));
    }

    #[test]
    fn no_endpoints_rejects_in_filter_and_has_no_svc_chain() {
        let text = render(&lab(&[]));
        assert!(text.contains(
            "-A KUBE-SERVICES -m comment --comment \"kube-system/kube-dns:dns has no endpoints\" -m udp -p udp -d 10.96.0.10 --dport 53 -j REJECT\n"
        ));
        assert!(!text.contains("KUBE-SVC-"));
    }

    #[test]
    fn filter_drop_comes_first_in_forward() {
        let mut rules = lab(&["10.244.0.10", "10.244.0.11"]);
        rules.filter_drop = vec!["10.244.0.10".parse().unwrap()];
        let text = render(&rules);
        let forward: Vec<&str> = text
            .lines()
            .filter(|l| l.starts_with("-A FORWARD"))
            .collect();
        assert!(forward[0].starts_with("-A FORWARD -d 10.244.0.10/32 -p udp -m udp --dport 53"));
        assert!(forward[0].ends_with("-j DROP"));
    }

    #[test]
    fn nodelocal_adds_notrack_accepts_and_the_upstream_service() {
        let mut rules = lab(&["10.244.0.10", "10.244.0.11"]);
        rules.nodelocal = Some(NodeLocalRules {
            local_ips: vec![
                "169.254.20.10".parse().unwrap(),
                "10.96.0.10".parse().unwrap(),
            ],
            upstream_ip: "10.96.0.11".parse().unwrap(),
        });
        let text = render(&rules);
        assert!(text.starts_with("*raw\n"));
        for ip in ["169.254.20.10", "10.96.0.10"] {
            assert!(text.contains(&format!(
                "-A PREROUTING -d {ip}/32 -p udp -m udp --dport 53 -j NOTRACK\n"
            )));
            assert!(text.contains(&format!(
                "-A INPUT -d {ip}/32 -p udp -m udp --dport 53 -j ACCEPT\n"
            )));
        }
        let input: Vec<&str> = text.lines().filter(|l| l.starts_with("-A INPUT")).collect();
        assert!(input[..4].iter().all(|l| l.ends_with("-j ACCEPT")));
        assert!(text.contains("\"kube-system/kube-dns-upstream:dns cluster IP\" -m udp -p udp -d 10.96.0.11 --dport 53 -j KUBE-SVC-"));
        assert_eq!(
            text.matches("-j DNAT --to-destination 10.244.0.10:53")
                .count(),
            4
        );
        rules.endpoints.clear();
        let text = render(&rules);
        assert!(
            text.contains("kube-dns-upstream:dns has no endpoints\" -m udp -p udp -d 10.96.0.11")
        );
    }
}
