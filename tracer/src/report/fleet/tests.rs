use super::*;

/// A healthy nft node on 6.18 that probed without loss.
fn node(name: &str) -> Row {
    Row {
        node: name.to_owned(),
        hostname: Some(name.to_owned()),
        file: PathBuf::from(format!("{name}.json")),
        command: "probe".to_owned(),
        iptables_backend: Some("nft".to_owned()),
        proxy_mode: Some("iptables".to_owned()),
        kernel: "6.18.0".to_owned(),
        os: Some("Debian GNU/Linux 12 (bookworm)".to_owned()),
        conntrack_count: Some(10),
        conntrack_max: Some(1000),
        conntrack_usage_percent: Some(1.0),
        udp_timeout: Some(30),
        udp_timeout_stream: Some(120),
        br_netfilter: Some(BrNetfilter::On),
        dns_loss_percent: Some(0.0),
    }
}

fn reasons(rows: &[Row]) -> Vec<(String, Rule, String)> {
    flags(rows)
        .into_iter()
        .map(|f| (f.node, f.rule, f.reason))
        .collect()
}

#[test]
fn agreeing_nodes_are_not_flagged() {
    assert!(flags(&[node("a"), node("b"), node("c")]).is_empty());
    assert!(flags(&[node("a")]).is_empty());
}

/// Every rule fires on its own node, the backend first, each reason with its figures.
#[test]
fn each_rule_names_its_odd_node_with_figures_in_rule_order() {
    let mut rows: Vec<Row> = ["a", "b", "c", "d", "e", "f", "g"].map(node).to_vec();
    rows[6].br_netfilter = Some(BrNetfilter::Off);
    rows[5].udp_timeout = Some(10);
    rows[4].conntrack_count = Some(950);
    rows[4].conntrack_usage_percent = Some(95.0);
    rows[3].kernel = "5.10.0".to_owned();
    rows[3].dns_loss_percent = Some(40.0);
    rows[2].proxy_mode = Some("ipvs".to_owned());
    rows[1].iptables_backend = Some("legacy".to_owned());
    let got = reasons(&rows);
    let expect = [
        ("b", Rule::Backend, "backend legacy, 6 of 7 nodes use nft"),
        (
            "c",
            Rule::ProxyMode,
            "kube-proxy mode ipvs, 6 of 7 nodes run iptables",
        ),
        (
            "d",
            Rule::KernelAndLoss,
            "kernel 5.10.0, 6 of 7 nodes run 6.18.0; and DNS loss 40.0 %, 0.0 % on those",
        ),
        (
            "e",
            Rule::Conntrack,
            "conntrack table 95 % full (950 of 1000 entries), over 90 %",
        ),
        (
            "f",
            Rule::UdpTimeouts,
            "UDP timeouts 10/120 s, 6 of 7 nodes use 30/120 s",
        ),
        (
            "g",
            Rule::BrNetfilter,
            "br_netfilter off (bridge-nf-call-iptables 0), 6 of 7 nodes have it on",
        ),
    ];
    let expect: Vec<(String, Rule, String)> = expect
        .iter()
        .map(|(n, r, s)| ((*n).to_owned(), *r, (*s).to_owned()))
        .collect();
    assert_eq!(got, expect);
}

/// A kernel of its own is no flag while the node's DNS loss matches the others'.
#[test]
fn another_kernel_alone_is_not_flagged() {
    let mut rows = vec![node("a"), node("b"), node("c")];
    rows[2].kernel = "6.1.0".to_owned();
    rows[2].dns_loss_percent = Some(0.5);
    assert!(flags(&rows).is_empty());
}

/// A mixed node is flagged even when most nodes are mixed; with no majority every node is.
#[test]
fn mixed_is_always_flagged_and_a_split_flags_every_node() {
    let mut rows = vec![node("a"), node("b"), node("c")];
    for r in &mut rows {
        r.iptables_backend = Some("mixed (nft current, legacy stale)".to_owned());
    }
    assert_eq!(flags(&rows).len(), 3);
    rows[0].iptables_backend = Some("nft".to_owned());
    rows[1].iptables_backend = Some("nft".to_owned());
    let got = reasons(&rows);
    assert_eq!(got.len(), 1, "{got:?}");
    assert_eq!(
        got[0].2,
        "backend mixed (nft current, legacy stale): kube-proxy's rules are in both \
         iptables-legacy and iptables-nft, and every node must use one backend; 2 of 3 nodes use nft"
    );
    let mut split = vec![node("a"), node("b")];
    split[1].iptables_backend = Some("legacy".to_owned());
    let got = reasons(&split);
    assert_eq!(got.len(), 2, "{got:?}");
    assert!(got[0].2.contains("no majority: 1 legacy, 1 nft"), "{got:?}");
}

#[test]
fn repeated_host_names_fall_back_to_the_file_stem() {
    let doc = |host: &str| {
        let mut d = Document::new("inspect").unwrap();
        d.hostname = Some(host.to_owned());
        d
    };
    let reports = vec![
        (PathBuf::from("/r/fl1.json"), doc("node")),
        (PathBuf::from("/r/fl2.json"), doc("node")),
        (PathBuf::from("/r/x.json"), doc("other")),
        (PathBuf::from("/s/fl1.json"), doc("node")),
    ];
    assert_eq!(
        names(&reports),
        ["/r/fl1.json", "fl2", "other", "/s/fl1.json"]
    );
}
