use super::*;

const MODERN_NFT: &str =
    include_str!("../../../../tests/fixtures/inspect/modern/iptables-nft-save-c.txt");
const CENTOS7: &str =
    include_str!("../../../../tests/fixtures/inspect/centos7/iptables-save-c.txt");
const MIXED_LEGACY: &str =
    include_str!("../../../../tests/fixtures/inspect/mixed/iptables-legacy-save-c.txt");

fn ep(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

#[test]
fn modern_save_gives_dns_service_endpoints_and_counters() {
    let save = parse_save(MODERN_NFT).unwrap();
    assert_eq!(
        save.tables
            .iter()
            .map(|t| t.name.as_str())
            .collect::<Vec<_>>(),
        ["mangle", "filter", "nat"]
    );
    assert_eq!(
        save.hint_chains(),
        [
            "mangle/KUBE-IPTABLES-HINT",
            "mangle/KUBE-KUBELET-CANARY",
            "filter/KUBE-KUBELET-CANARY",
            "nat/KUBE-KUBELET-CANARY"
        ]
    );
    assert!(save.has_service_portals());
    let svc = dns_service(&save).unwrap();
    assert_eq!(svc.name, DNS_PORT_NAME);
    assert_eq!((svc.ip, svc.port), (IpAddr::from([10, 96, 0, 10]), 53));
    assert_eq!(svc.svc_chain.as_deref(), Some("KUBE-SVC-TCOU7JCQXEZGVUNU"));
    assert_eq!(svc.endpoints, [ep("10.244.0.10:53"), ep("10.244.0.11:53")]);
    assert!(!svc.rejects);

    let counters = dns_counters(Backend::Nft, &save, &svc);
    let dnat: Vec<_> = counters
        .iter()
        .filter(|c| c.rule.contains("DNAT"))
        .map(|c| c.packets)
        .collect();
    assert_eq!(dnat, [3, 3], "both DNAT rules, 3 packets each");
    let portal = counters
        .iter()
        .find(|c| c.rule.contains("KUBE-SERVICES -d 10.96.0.10/32 -p udp"))
        .unwrap();
    assert_eq!((portal.packets, portal.bytes), (6, 180));
    // The TCP Service port is not on the UDP DNS path.
    assert!(counters.iter().all(|c| !c.rule.contains("dns-tcp")));
    // A DROP of DNS over TCP to a pod is (what a truncated answer's retry dies to).
    let drop = "-A FORWARD -d 10.244.0.10/32 -p tcp -m tcp --dport 53 -j DROP";
    let (head, filter) = MODERN_NFT.split_once("*filter\n").unwrap();
    let filter = filter.replacen("COMMIT\n", &format!("[7:420] {drop}\nCOMMIT\n"), 1);
    let with_drop = format!("{head}*filter\n{filter}");
    let counters = dns_counters(Backend::Nft, &parse_save(&with_drop).unwrap(), &svc);
    let tcp: Vec<_> = counters
        .iter()
        .filter(|c| c.rule.contains("-p tcp"))
        .collect();
    assert_eq!(tcp.len(), 1, "{tcp:?}");
    assert_eq!((tcp[0].rule.as_str(), tcp[0].packets), (drop, 7));
}

#[test]
fn centos7_legacy_save_without_comments_on_sep_rules() {
    let save = parse_save(CENTOS7).unwrap();
    assert!(
        save.hint_chains().is_empty(),
        "kube-proxy before 1.17 had no hint chains"
    );
    let svc = dns_service(&save).unwrap();
    assert_eq!(svc.endpoints, [ep("10.244.0.10:53"), ep("10.244.0.11:53")]);
    let c = dns_counters(Backend::Legacy, &save, &svc);
    assert_eq!(
        c.iter()
            .filter(|c| c.rule.contains("DNAT"))
            .map(|c| c.packets)
            .sum::<u64>(),
        38
    );
    assert_eq!(
        mode(&mode_evidence([&save], false, &[])),
        ProxyMode::Iptables
    );
}

#[test]
fn stale_legacy_rules_point_to_a_gone_pod() {
    let save = parse_save(MIXED_LEGACY).unwrap();
    assert!(save.hint_chains().is_empty());
    assert!(save.kube_rules() > 10);
    assert_eq!(
        dns_service(&save).unwrap().endpoints,
        [ep("10.244.0.99:53")]
    );
}

#[test]
fn no_endpoints_reject_is_found_in_filter() {
    let text = "*filter\n:KUBE-SERVICES - [0:0]\n-A KUBE-SERVICES -d 10.96.0.10/32 -p udp -m comment --comment \"kube-system/kube-dns:dns has no endpoints\" -m udp --dport 53 -j REJECT --reject-with icmp-port-unreachable\nCOMMIT\n*nat\n:KUBE-SERVICES - [0:0]\nCOMMIT\n";
    let svc = dns_service(&parse_save(text).unwrap()).unwrap();
    assert!(svc.rejects && svc.endpoints.is_empty() && svc.svc_chain.is_none());
    // No KUBE-SVC- chain is left, but kube-proxy's KUBE-SERVICES says iptables mode.
    assert_eq!(
        mode(&mode_evidence([&parse_save(text).unwrap()], false, &[])),
        ProxyMode::Iptables
    );
    assert_eq!(
        (svc.name.as_str(), svc.ip),
        (DNS_PORT_NAME, IpAddr::from([10, 96, 0, 10]))
    );
}

#[test]
fn modes_from_evidence() {
    let ipvs = "*nat\n:KUBE-SERVICES - [0:0]\n-A KUBE-SERVICES -m set --match-set KUBE-CLUSTER-IP dst,dst -j ACCEPT\nCOMMIT\n";
    let save = parse_save(ipvs).unwrap();
    assert_eq!(mode(&mode_evidence([&save], false, &[])), ProxyMode::Ipvs);
    assert_eq!(mode(&mode_evidence([], true, &[])), ProxyMode::Ipvs);
    assert_eq!(
        mode(&mode_evidence(
            [],
            false,
            &["table ip kube-proxy".to_owned()]
        )),
        ProxyMode::Nftables
    );
    assert_eq!(mode(&mode_evidence([], false, &[])), ProxyMode::Unknown);
}

#[test]
fn counter_deltas_keep_moved_rules_only() {
    let save = parse_save(MODERN_NFT).unwrap();
    let svc = dns_service(&save).unwrap();
    let before = dns_counters(Backend::Nft, &save, &svc);
    let mut after = before.clone();
    after[0].packets += 5;
    after[0].bytes += 150;
    let d = counter_deltas(&before, &after);
    assert_eq!(d.len(), 1);
    assert_eq!((d[0].packets, d[0].bytes), (5, 150));
}

#[test]
fn negated_matches_are_not_taken_for_the_service() {
    let save = parse_save("*nat\n-A KUBE-SERVICES ! -d 10.96.0.10/32 ! -p udp -m udp ! --dport 53 -j KUBE-SVC-X\nCOMMIT\n").unwrap();
    let rule = &save.tables[0].rules[0];
    assert_eq!(
        (rule.dst.as_deref(), rule.proto.as_deref(), rule.dport),
        (None, None, None)
    );
    assert_eq!(rule.target.as_deref(), Some("KUBE-SVC-X"));
    assert_eq!(dns_service(&save), None);
}

#[test]
fn bad_saves_are_errors_not_panics() {
    assert!(
        parse_save("-A FOO -j ACCEPT\n").is_err(),
        "rule outside a table"
    );
    assert!(parse_save("*nat\n[1:2 -A X\n").is_err());
    assert!(parse_save("*nat\n-A X -m comment --comment \"open\n").is_err());
    assert!(parse_save("*nat\nbogus\n").is_err());
    assert_eq!(parse_save("").unwrap(), Save::default());
}
