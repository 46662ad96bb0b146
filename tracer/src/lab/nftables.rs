//! kube-proxy's nftables mode in the lab: the `ip kube-proxy` table its nftables proxier
//! (kubernetes `pkg/proxy/nftables/proxier.go`) writes, and the lab's own fault table, both as
//! `nft -f` input that replaces what was there in one transaction.
//!
//! Chain names follow the proxier: `service-HASH-kube-system/kube-dns/udp/dns` and
//! `endpoint-HASH-kube-system/kube-dns/udp/dns__10.244.0.10/53`, HASH being the first 8 base32
//! characters of a SHA-256 of the rest of the name. ClusterIP traffic is looked up in the
//! `service-ips` verdict map (`ip daddr . meta l4proto . th dport`); a Service without endpoints
//! has an element in `no-endpoint-services` instead, which the `filter-forward` chain sends to
//! `reject-chain`.

use std::{fmt::Write as _, net::IpAddr};

use super::rules::{CLUSTER_CIDR, DNS_SERVICE_PORTS, RuleSet, ServicePort, chain_hash};

/// The table kube-proxy's nftables mode owns.
pub const TABLE: &str = "kube-proxy";
/// The lab's own table for the filter-drop fault in nftables mode (kube-proxy's table is its own).
pub const FAULT_TABLE: &str = "tracer-lab-fault";
/// The Service CIDR (kubeadm's default): unallocated ClusterIPs in it are dropped.
const SERVICE_CIDR: &str = "10.96.0.0/12";

/// How kube-proxy programs the lab's node.
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
pub enum ProxyMode {
    /// KUBE-SERVICES, KUBE-SVC-…, KUBE-SEP-… chains in the chosen iptables backend.
    #[default]
    Iptables,
    /// The `ip kube-proxy` nftables table with its verdict maps (implies the nft backend).
    Nftables,
    /// IPVS virtual services on `kube-ipvs0`, ipsets and a few iptables rules (needs IPVS in the
    /// kernel: the `ip_vs` module).
    Ipvs,
}

impl ProxyMode {
    /// The name as the command line spells it.
    pub fn name(self) -> &'static str {
        match self {
            Self::Iptables => "iptables",
            Self::Nftables => "nftables",
            Self::Ipvs => "ipvs",
        }
    }
}

impl std::fmt::Display for ProxyMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// `HASH-name`, HASH being the first 8 base32 characters of the name's SHA-256: the proxier's
/// `hashAndTruncate` (the names here are far below its length limit).
fn hashed(name: &str) -> String {
    format!("{}-{name}", &chain_hash(name)[..8])
}

/// `service-HASH-kube-system/kube-dns/udp/dns` (`servicePortChainNameBase`).
fn service_chain(sp: &ServicePort) -> String {
    let name = format!("kube-system/kube-dns/{}/{}", sp.protocol, sp.name);
    format!("service-{}", hashed(&name))
}

/// `endpoint-HASH-kube-system/kube-dns/udp/dns__10.244.0.10/53`
/// (`servicePortEndpointChainNameBase`).
fn endpoint_chain(sp: &ServicePort, ep: IpAddr) -> String {
    let name = format!(
        "kube-system/kube-dns/{}/{}__{ep}/{}",
        sp.protocol, sp.name, sp.port
    );
    format!("endpoint-{}", hashed(&name))
}

/// The base objects every full sync writes (the proxier's `setupNFTables`), after replacing the
/// table: sets, maps, chains and their rules, for the Service CIDR [`SERVICE_CIDR`].
const BASE: &str = r#"add table ip kube-proxy { comment "rules for kube-proxy" ; }
delete table ip kube-proxy
add table ip kube-proxy { comment "rules for kube-proxy" ; }
add set ip kube-proxy cluster-ips { type ipv4_addr ; comment "Active ClusterIPs" ; }
add set ip kube-proxy nodeport-ips { type ipv4_addr ; comment "IPs that accept NodePort traffic" ; }
add map ip kube-proxy firewall-ips { type ipv4_addr . inet_proto . inet_service : verdict ; comment "destinations that are subject to LoadBalancerSourceRanges" ; }
add map ip kube-proxy no-endpoint-nodeports { type inet_proto . inet_service : verdict ; comment "vmap to drop or reject packets to service nodeports with no endpoints" ; }
add map ip kube-proxy no-endpoint-services { type ipv4_addr . inet_proto . inet_service : verdict ; comment "vmap to drop or reject packets to services with no endpoints" ; }
add map ip kube-proxy service-ips { type ipv4_addr . inet_proto . inet_service : verdict ; comment "ClusterIP, ExternalIP and LoadBalancer IP traffic" ; }
add map ip kube-proxy service-nodeports { type inet_proto . inet_service : verdict ; comment "NodePort traffic" ; }
add chain ip kube-proxy cluster-ips-check
add chain ip kube-proxy filter-prerouting-pre-dnat { type filter hook prerouting priority -110 ; }
add chain ip kube-proxy filter-output-pre-dnat { type filter hook output priority -110 ; }
add chain ip kube-proxy filter-forward { type filter hook forward priority 0 ; }
add chain ip kube-proxy filter-input { type filter hook input priority 0 ; }
add chain ip kube-proxy filter-output { type filter hook output priority 0 ; }
add chain ip kube-proxy firewall-check
add chain ip kube-proxy mark-for-masquerade
add chain ip kube-proxy masquerading
add chain ip kube-proxy nat-output { type nat hook output priority -100 ; }
add chain ip kube-proxy nat-postrouting { type nat hook postrouting priority 100 ; }
add chain ip kube-proxy nat-prerouting { type nat hook prerouting priority -100 ; }
add chain ip kube-proxy nodeport-endpoints-check
add chain ip kube-proxy reject-chain { comment "helper for @no-endpoint-services / @no-endpoint-nodeports" ; }
add chain ip kube-proxy services
add chain ip kube-proxy service-endpoints-check
add rule ip kube-proxy cluster-ips-check ip daddr @cluster-ips reject comment "Reject traffic to invalid ports of ClusterIPs"
add rule ip kube-proxy cluster-ips-check ip daddr { SERVICE_CIDR } drop comment "Drop traffic to unallocated ClusterIPs"
add rule ip kube-proxy filter-prerouting-pre-dnat ct state new jump firewall-check
add rule ip kube-proxy filter-forward ct state new jump service-endpoints-check
add rule ip kube-proxy filter-forward ct state new jump cluster-ips-check
add rule ip kube-proxy filter-input ct state new jump nodeport-endpoints-check
add rule ip kube-proxy filter-input ct state new jump service-endpoints-check
add rule ip kube-proxy filter-output ct state new jump service-endpoints-check
add rule ip kube-proxy filter-output-pre-dnat ct state new jump firewall-check
add rule ip kube-proxy filter-output ct state new jump cluster-ips-check
add rule ip kube-proxy firewall-check ip daddr . meta l4proto . th dport vmap @firewall-ips
add rule ip kube-proxy mark-for-masquerade mark set mark or 0x4000
add rule ip kube-proxy masquerading mark and 0x4000 == 0 return
add rule ip kube-proxy masquerading mark set mark xor 0x4000
add rule ip kube-proxy masquerading masquerade fully-random
add rule ip kube-proxy nat-output jump services
add rule ip kube-proxy nat-postrouting jump masquerading
add rule ip kube-proxy nat-prerouting jump services
add rule ip kube-proxy nodeport-endpoints-check ip daddr @nodeport-ips meta l4proto . th dport vmap @no-endpoint-nodeports
add rule ip kube-proxy reject-chain reject
add rule ip kube-proxy services ip daddr . meta l4proto . th dport vmap @service-ips
add rule ip kube-proxy services ip daddr @nodeport-ips meta l4proto . th dport vmap @service-nodeports
add rule ip kube-proxy service-endpoints-check ip daddr . meta l4proto . th dport vmap @no-endpoint-services
"#;

/// The DNS Service's objects: its ClusterIP, and per port either a service chain balancing over
/// endpoint chains (`numgen random mod N vmap`) or a `no-endpoint-services` element.
fn render_service(out: &mut String, rules: &RuleSet) {
    let t = format!("ip {TABLE}");
    let ip = rules.service_ip;
    let _ = writeln!(out, "add element {t} cluster-ips {{ {ip} }}");
    for sp in &DNS_SERVICE_PORTS {
        let key = format!("{ip} . {} . {}", sp.protocol, sp.port);
        if rules.endpoints.is_empty() {
            let _ = writeln!(
                out,
                "add element {t} no-endpoint-services {{ {key} comment \"{}\" : goto reject-chain }}",
                sp.full_name()
            );
            continue;
        }
        // Chains exist before a rule names them: the endpoint chains first, as the proxier does.
        for ep in &rules.endpoints {
            let chain = endpoint_chain(sp, *ep);
            let _ = writeln!(out, "add chain {t} {chain}");
            let _ = writeln!(
                out,
                "add rule {t} {chain} ip saddr {ep} jump mark-for-masquerade"
            );
            let _ = writeln!(
                out,
                "add rule {t} {chain} meta l4proto {} dnat to {ep}:{}",
                sp.protocol, sp.port
            );
        }
        let svc = service_chain(sp);
        let _ = writeln!(out, "add chain {t} {svc}");
        let _ = writeln!(
            out,
            "add rule {t} {svc} ip daddr {ip} ip saddr != {CLUSTER_CIDR} jump mark-for-masquerade"
        );
        let targets: Vec<String> = rules
            .endpoints
            .iter()
            .enumerate()
            .map(|(i, ep)| format!("{i} : goto {}", endpoint_chain(sp, *ep)))
            .collect();
        let _ = writeln!(
            out,
            "add rule {t} {svc} numgen random mod {} vmap {{ {} }}",
            rules.endpoints.len(),
            targets.join(", ")
        );
        let _ = writeln!(out, "add element {t} service-ips {{ {key} : goto {svc} }}");
    }
}

/// The lab's fault table: replaced whole, and holding the filter-drop (and tcp-blocked) rules
/// when that fault is active (a DROP for DNS over UDP (TCP) to the chosen pods in the forward
/// hook, after DNAT).
fn render_faults(out: &mut String, rules: &RuleSet) {
    let t = format!("ip {FAULT_TABLE}");
    let _ = writeln!(out, "add table {t}\ndelete table {t}");
    if rules.filter_drop.is_empty() && rules.tcp_drop.is_empty() {
        return;
    }
    let _ = writeln!(out, "add table {t}");
    let _ = writeln!(
        out,
        "add chain {t} forward {{ type filter hook forward priority 0 ; }}"
    );
    for ip in &rules.filter_drop {
        let _ = writeln!(
            out,
            "add rule {t} forward ip daddr {ip} udp dport 53 drop comment \"{}\"",
            super::rules::FAULT_COMMENT
        );
    }
    for ip in &rules.tcp_drop {
        let _ = writeln!(
            out,
            "add rule {t} forward ip daddr {ip} tcp dport 53 drop comment \"{}\"",
            super::rules::TCP_FAULT_COMMENT
        );
    }
}

/// `nft -f` input replacing kube-proxy's table and the lab's fault table with what `rules` says.
pub fn render(rules: &RuleSet) -> String {
    let mut out = BASE.replace("SERVICE_CIDR", SERVICE_CIDR);
    render_service(&mut out, rules);
    render_faults(&mut out, rules);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lab::rules::tests::lab;

    #[test]
    fn chain_names_match_real_clusters() {
        // kube-proxy's own test vectors (pkg/proxy/nftables/proxier_test.go).
        assert_eq!(hashed("ns1/svc1/tcp/p80"), "ULMVA6XW-ns1/svc1/tcp/p80");
        assert_eq!(
            hashed("ns1/svc1/tcp/p80__10.180.0.1/80"),
            "5OJB2KTY-ns1/svc1/tcp/p80__10.180.0.1/80"
        );
        // The names kube-proxy's nftables mode gives kube-dns in every cluster.
        assert_eq!(
            service_chain(&DNS_SERVICE_PORTS[0]),
            "service-FY5PMXPG-kube-system/kube-dns/udp/dns"
        );
        assert_eq!(
            service_chain(&DNS_SERVICE_PORTS[1]),
            "service-NWBZK7IH-kube-system/kube-dns/tcp/dns-tcp"
        );
        assert_eq!(
            endpoint_chain(&DNS_SERVICE_PORTS[0], IpAddr::from([10, 244, 0, 10])),
            "endpoint-LCNDTFG3-kube-system/kube-dns/udp/dns__10.244.0.10/53"
        );
    }

    #[test]
    fn two_endpoints_are_balanced_by_numgen() {
        let text = render(&lab(&["10.244.0.10", "10.244.0.11"]));
        assert!(text.contains("add rule ip kube-proxy service-FY5PMXPG-kube-system/kube-dns/udp/dns numgen random mod 2 vmap { 0 : goto endpoint-LCNDTFG3-kube-system/kube-dns/udp/dns__10.244.0.10/53, 1 : goto endpoint-"));
        assert!(text.contains("meta l4proto udp dnat to 10.244.0.11:53\n"));
        assert!(text.contains("add element ip kube-proxy service-ips { 10.96.0.10 . udp . 53 : goto service-FY5PMXPG-kube-system/kube-dns/udp/dns }"));
        assert!(!text.contains("no-endpoint-services {  10"));
        assert!(!text.contains("add chain ip tracer-lab-fault forward"));
    }

    #[test]
    fn no_endpoints_goes_to_the_reject_chain() {
        let text = render(&lab(&[]));
        assert!(text.contains("add element ip kube-proxy no-endpoint-services { 10.96.0.10 . udp . 53 comment \"kube-system/kube-dns:dns\" : goto reject-chain }"));
        assert!(!text.contains("service-FY5PMXPG") && !text.contains("dnat to"));
    }

    #[test]
    fn filter_drop_is_in_the_fault_table() {
        let mut rules = lab(&["10.244.0.10", "10.244.0.11"]);
        rules.filter_drop = vec!["10.244.0.10".parse().unwrap()];
        let text = render(&rules);
        assert!(text.contains(
            "add rule ip tracer-lab-fault forward ip daddr 10.244.0.10 udp dport 53 drop"
        ));
    }
}
