//! The findings of reports assembled from saved outputs (tests/fixtures/inspect): a CentOS 7
//! legacy node, a mixed node, a node whose `iptables` points at the other backend, and a node
//! with a full table, stale entries, br_netfilter off and strict rp_filter.

use std::{
    net::{Ipv4Addr, SocketAddr},
    path::PathBuf,
};

use super::{Evidence, Severity, findings};
use crate::node::{
    Backend,
    backend::{Backends, Saves},
    conntrack::{self, CpuStats, Entry},
    facts::{self, Facts, LinkKind},
    inspect::{ConntrackReport, DnsInBackend, Report, counters_of, dns_by_backend},
    kubeproxy,
};

use crate::node::inspect::tests::entry;

const FX: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../tests/fixtures/inspect");

fn save(path: &str) -> kubeproxy::Save {
    kubeproxy::parse_save(&std::fs::read_to_string(format!("{FX}/{path}")).unwrap()).unwrap()
}

fn facts(links: Vec<facts::Link>, br_netfilter: Option<facts::BrNetfilter>) -> Facts {
    Facts {
        kernel: "3.10.0-1160.el7.x86_64".into(),
        os: Some("CentOS Linux 7 (Core)".into()),
        btf: false,
        kprobes: true,
        ftrace_functions: true,
        module_btf: false,
        tier: crate::probes::plan::Tier::Kprobe,
        tier_reason: "no BTF".into(),
        tier_loaded: false,
        br_netfilter,
        ip_forward: Some(1),
        rp_filter_all: Some(0),
        links,
        udp_timeout: Some(30),
        udp_timeout_stream: Some(180),
    }
}

fn link(name: &str, kind: LinkKind, rp: u32) -> facts::Link {
    facts::Link {
        name: name.into(),
        kind,
        rp_filter: Some(rp),
        rp_filter_effective: Some(rp),
    }
}

/// A report assembled from saved outputs, as `collect` assembles one from the live node.
fn report(
    backends: Backends,
    facts: Facts,
    table: conntrack::Table,
    total: CpuStats,
    stale: Vec<Entry>,
) -> Report {
    let saves = [backends.saves.legacy.as_ref(), backends.saves.nft.as_ref()];
    let proxy_mode_evidence = kubeproxy::mode_evidence(saves.into_iter().flatten(), false, &[]);
    let dns_by_backend = dns_by_backend(&backends.saves, backends.verdict.primary);
    let dns_service = dns_by_backend.first().map(|d| d.service.clone());
    let counters = dns_service
        .as_ref()
        .map(|s| counters_of(&backends.saves, s))
        .unwrap_or_default();
    let mut r = Report {
        netns: None,
        facts,
        proxy_mode: kubeproxy::mode(&proxy_mode_evidence),
        proxy_mode_evidence,
        backends,
        dns_by_backend,
        dns_service,
        dns6_by_backend: vec![],
        dns_service6: None,
        ipvs_services: Vec::new(),
        counters,
        conntrack: ConntrackReport {
            usage_percent: f64::from(table.count) * 100.0 / f64::from(table.max),
            table,
            per_cpu: vec![total],
            total,
            dns_entries: stale.len(),
            dns_unreplied: 0,
            dns_stale: stale,
        },
        nodelocal: None,
        findings: vec![],
    };
    r.findings = findings(&r);
    r
}

const SMALL: conntrack::Table = conntrack::Table {
    count: 120,
    max: 262144,
    buckets: 65536,
};

fn ids(r: &Report) -> Vec<(Severity, &'static str)> {
    r.findings.iter().map(|f| (f.severity, f.id)).collect()
}

#[test]
fn centos7_node_is_legacy_without_errors() {
    let saves = Saves {
        legacy: Some(save("centos7/iptables-save-c.txt")),
        nft: None,
        warnings: vec![],
    };
    let links = vec![
        PathBuf::from("/usr/sbin/iptables"),
        PathBuf::from("/usr/sbin/xtables-multi"),
    ];
    let b = Backends::assemble(
        links,
        Some("iptables v1.4.21".into()),
        Some(vec!["filter".into(), "nat".into()]),
        None,
        saves,
    );
    let r = report(
        b,
        facts(
            vec![link("cni0", LinkKind::Bridge, 0)],
            Some(facts::BrNetfilter {
                call_iptables: 1,
                call_ip6tables: 1,
            }),
        ),
        SMALL,
        CpuStats::default(),
        vec![],
    );
    assert_eq!(r.backends.verdict.to_string(), "legacy");
    assert_eq!(r.backends.link_backend, Some(Backend::Legacy));
    assert!(
        r.findings.iter().all(|f| f.severity == Severity::Info),
        "{:#?}",
        r.findings
    );
    assert!(ids(&r).contains(&(Severity::Info, "dns-service")));
    let dns = r.findings.iter().find(|f| f.id == "dns-service").unwrap();
    assert!(
        dns.title.ends_with("10.244.0.10:53, 10.244.0.11:53"),
        "{dns:?}"
    );
    assert!(
        dns.evidence
            .iter()
            .map(ToString::to_string)
            .any(|e| e.contains("[21 pkts]") && e.contains("DNAT")),
        "{dns:?}"
    );
}

#[test]
fn mixed_node_gives_the_mixed_error_first() {
    let saves = Saves {
        legacy: Some(save("mixed/iptables-legacy-save-c.txt")),
        nft: Some(save("mixed/iptables-nft-save-c.txt")),
        warnings: vec![
            std::fs::read_to_string(format!("{FX}/mixed/iptables-nft-save-stderr.txt"))
                .unwrap()
                .trim()
                .to_owned(),
        ],
    };
    let links = vec![
        PathBuf::from("/usr/sbin/iptables"),
        PathBuf::from("/usr/sbin/xtables-nft-multi"),
    ];
    let b = Backends::assemble(
        links,
        None,
        Some(vec!["nat".into()]),
        Some(vec!["ip nat".into()]),
        saves,
    );
    let r = report(b, facts(vec![], None), SMALL, CpuStats::default(), vec![]);
    let first = &r.findings[0];
    assert_eq!(
        (first.severity, first.id),
        (Severity::Error, "iptables-mixed")
    );
    assert!(
        first.title.contains("mixed (nft current, legacy stale)"),
        "{first:?}"
    );
    assert!(
        first
            .evidence
            .iter()
            .map(ToString::to_string)
            .any(|e| e.starts_with("legacy: ") && e.ends_with("10.244.0.99:53")),
        "{first:#?}"
    );
    assert!(
        first
            .evidence
            .iter()
            .map(ToString::to_string)
            .any(|e| e.contains("iptables-legacy tables present")),
        "{first:#?}"
    );
    assert!(first.action.as_deref().unwrap().contains("same priority"));
    // trace's default Service comes from the current backend.
    assert_eq!(r.dns_service.as_ref().unwrap().endpoints.len(), 2);
}

#[test]
fn default_iptables_pointing_at_the_other_backend_is_a_warning() {
    let saves = Saves {
        legacy: None,
        nft: Some(save("modern/iptables-nft-save-c.txt")),
        warnings: vec![],
    };
    let links = vec![
        PathBuf::from("/usr/sbin/iptables"),
        PathBuf::from("/usr/sbin/xtables-legacy-multi"),
    ];
    let b = Backends::assemble(
        links,
        Some("iptables v1.8.9 (legacy)".into()),
        Some(vec![]),
        Some(vec![]),
        saves,
    );
    let r = report(b, facts(vec![], None), SMALL, CpuStats::default(), vec![]);
    assert!(
        ids(&r).contains(&(Severity::Warning, "iptables-default-differs")),
        "{:#?}",
        ids(&r)
    );
}

#[test]
fn full_table_stale_entries_bridge_and_rp_filter_findings() {
    let saves = Saves {
        legacy: None,
        nft: Some(save("modern/iptables-nft-save-c.txt")),
        warnings: vec![],
    };
    let b = Backends::assemble(vec![], None, None, None, saves);
    let links = vec![
        link("cni0", LinkKind::Bridge, 0),
        link("veth1", LinkKind::Veth, 1),
        link("eth0", LinkKind::Other, 1),
    ];
    let full = conntrack::Table {
        count: 262144,
        max: 262144,
        buckets: 262144,
    };
    let total = CpuStats {
        cpu: 2,
        drop: 7,
        insert: 262144,
        ..CpuStats::default()
    };
    let stale = vec![entry([10, 244, 0, 12])];
    let r = report(b, facts(links, None), full, total, stale);
    let got = ids(&r);
    for want in [
        (Severity::Error, "conntrack-full"),
        (Severity::Warning, "conntrack-drops"),
        (Severity::Error, "conntrack-stale-dns"),
        (Severity::Error, "br-netfilter-off"),
        (Severity::Warning, "rp-filter-strict"),
    ] {
        assert!(got.contains(&want), "{want:?} missing from {got:?}");
    }
    let stale = r
        .findings
        .iter()
        .find(|f| f.id == "conntrack-stale-dns")
        .unwrap();
    assert!(
        stale
            .title
            .starts_with("1 UDP conntrack entry sends DNS clients to 10.244.0.12"),
        "{stale:?}"
    );
    let delete = "conntrack -D -p udp --orig-dst 10.96.0.10 --reply-src 10.244.0.12`";
    let action = stale.action.as_deref().unwrap_or_default();
    assert!(action.contains(&format!("`{delete}")), "{action}");
    // Inspected in a named namespace (the lab's node): the command runs there.
    let mut in_lab = r.clone();
    in_lab.netns = Some(PathBuf::from("/run/netns/lab-node"));
    let stale = findings(&in_lab)
        .into_iter()
        .find(|f| f.id == "conntrack-stale-dns")
        .unwrap();
    let action = stale.action.unwrap_or_default();
    assert!(
        action.contains(&format!("`ip netns exec lab-node {delete}")),
        "{action}"
    );
    let rp = r
        .findings
        .iter()
        .find(|f| f.id == "rp-filter-strict")
        .unwrap();
    assert!(
        rp.evidence[1].to_string().ends_with("veth1"),
        "only pod-facing interfaces: {rp:?}"
    );
    // Errors first, then warnings, then info.
    assert!(
        r.findings
            .windows(2)
            .all(|w| w[0].severity <= w[1].severity)
    );
    let summary = r.summary();
    assert!(
        summary[0].contains("conntrack 262144/262144 (100.0 %)"),
        "{summary:?}"
    );
    assert!(
        summary
            .iter()
            .any(|l| l.starts_with("error: the conntrack table is full")),
        "{summary:?}"
    );
    let text = r.render_text();
    assert!(
        text.contains("[error] the conntrack table is full"),
        "{text}"
    );
    let json: serde_json::Value = serde_json::from_str(&r.render_json().unwrap()).unwrap();
    assert_eq!(json["conntrack"]["table"]["count"], 262144);
    assert_eq!(json["findings"][0]["severity"], "error");
    assert_eq!(json["backends"]["verdict"]["kind"], "nft");
}

#[test]
fn evidence_serializes_as_its_line() {
    let e = Evidence::UdpTimeouts(Some(30), None);
    assert_eq!(e.to_string(), "UDP timeouts: 30 s unreplied, ? s assured");
    assert_eq!(
        serde_json::to_value(&e).unwrap(),
        serde_json::json!("UDP timeouts: 30 s unreplied, ? s assured")
    );
    let ep = SocketAddr::from((Ipv4Addr::new(10, 244, 0, 10), 53));
    assert_eq!(
        Evidence::Endpoints(vec![ep]).to_string(),
        "endpoints now: 10.244.0.10:53"
    );
}

/// A modern nft node whose IPv6 DNS rules sit in legacy ip6tables (saved from a dual-stack lab
/// on the legacy backend): the IPv6 Service is read, and the split between the families is an
/// error naming both backends.
#[test]
fn ipv6_rules_in_the_other_backend_are_a_split() {
    let saves = Saves {
        legacy: None,
        nft: Some(save("modern/iptables-nft-save-c.txt")),
        warnings: vec![],
    };
    let b = Backends::assemble(vec![], None, Some(vec![]), Some(vec![]), saves);
    let mut r = report(b, facts(vec![], None), SMALL, CpuStats::default(), vec![]);
    assert!(
        !ids(&r).iter().any(|(_, id)| id.starts_with("dns6")),
        "{:?}",
        ids(&r)
    );
    let service = kubeproxy::dns_service(&save("ipv6/ip6tables-legacy-save-c.txt")).unwrap();
    assert_eq!(service.socket().to_string(), "[fd00:10:96::a]:53");
    assert_eq!(service.endpoints.len(), 2, "{service:?}");
    r.dns6_by_backend = vec![DnsInBackend {
        backend: Backend::Legacy,
        service: service.clone(),
    }];
    r.dns_service6 = Some(service);
    r.findings = findings(&r);
    assert!(
        ids(&r).contains(&(Severity::Info, "dns6-service")),
        "{:?}",
        ids(&r)
    );
    let split = r
        .findings
        .iter()
        .find(|f| f.id == "dns6-backend-split")
        .unwrap();
    assert_eq!(split.severity, Severity::Error);
    assert!(
        split.title.contains("in legacy but the IPv4 ones in nft"),
        "{split:?}"
    );
    assert!(
        split.evidence[0].to_string().starts_with("legacy: "),
        "{split:?}"
    );
}
