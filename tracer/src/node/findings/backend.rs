//! The iptables backend: which one holds kube-proxy's rules, both (mixed), none, leftovers, and
//! whether `iptables` and kube-proxy's iptables-wrapper point at it.

use super::{Evidence, Finding, Severity};
use crate::{
    netns,
    node::{Backend, backend::Kind, inspect::Report, kubeproxy::ProxyMode},
};

/// The backend findings of `r`.
pub(super) fn findings(r: &Report) -> Vec<Finding> {
    let b = &r.backends;
    let mut evidence = vec![
        Evidence::IptablesLinks(b.iptables_links.clone()),
        Evidence::IptablesVersion(b.version.clone()),
        Evidence::LegacyTables(b.legacy_tables.clone()),
        Evidence::NftTables(b.nft_tables.clone()),
        Evidence::Side(Backend::Legacy, b.legacy.clone()),
        Evidence::Side(Backend::Nft, b.nft.clone()),
    ];
    evidence.extend(b.warnings.iter().cloned().map(Evidence::SaveWarning));
    let mut out = Vec::new();
    match b.verdict.kind {
        Kind::Mixed => out.push(mixed(r, evidence.clone())),
        Kind::None if matches!(r.proxy_mode, ProxyMode::Iptables | ProxyMode::Unknown) => {
            out.push(Finding {
                severity: Severity::Warning,
                id: "iptables-no-kube-rules",
                title: format!(
                    "no kube-proxy rules in either iptables backend ({})",
                    b.verdict
                ),
                evidence: evidence.clone(),
                action: Some(
                    "Check that kube-proxy runs on this node and which mode it uses.".to_owned(),
                ),
            });
        }
        _ => {
            out.push(Finding {
                severity: Severity::Info,
                id: "iptables-backend",
                title: format!("iptables backend: {}", b.verdict),
                evidence: evidence.clone(),
                action: None,
            });
            out.extend(b.verdict.stale.map(|stale| stale_chains(r, stale)));
        }
    }
    if let Some(primary) = b.verdict.primary {
        let tool = b.link_backend.or(b.version_backend);
        if let Some(tool) = tool.filter(|t| *t != primary) {
            out.push(Finding {
                severity: Severity::Warning,
                id: "iptables-default-differs",
                title: format!(
                    "`iptables` on this node is {} but kube-proxy's rules are in {}",
                    tool.name(),
                    primary.name()
                ),
                evidence: evidence[..2].to_vec(),
                action: Some(
                    "Rules added by hand or by node tools with plain `iptables` land in the other backend, and `iptables-save` does not show kube-proxy's. Point /etc/alternatives/iptables at the backend kube-proxy uses.".to_owned(),
                ),
            });
        }
        if b.wrapper_choice != primary {
            out.push(Finding {
                severity: Severity::Warning,
                id: "iptables-wrapper-choice",
                title: format!(
                    "kube-proxy's iptables-wrapper would pick {}, but the current rules are in {}",
                    b.wrapper_choice.name(),
                    primary.name()
                ),
                evidence: evidence[4..6].to_vec(),
                action: Some("A restarted kube-proxy container would write to the other backend: remove the stray hint chains or rules.".to_owned()),
            });
        }
    }
    out
}

/// kube-proxy's rules in both backends: the error, with the DNS Service as each one says.
fn mixed(r: &Report, mut evidence: Vec<Evidence>) -> Finding {
    let b = &r.backends;
    evidence.extend(r.dns_by_backend.iter().cloned().map(Evidence::ServiceIn));
    let stale = b
        .verdict
        .stale
        .map(Backend::name)
        .unwrap_or("the one kube-proxy does not use");
    let run = netns::exec_prefix(r.netns.as_deref());
    Finding {
        severity: Severity::Error,
        id: "iptables-mixed",
        title: format!("kube-proxy rules in both iptables backends: {}", b.verdict),
        evidence,
        action: Some(format!(
            "Both backends hook NAT at the same priority; for a new UDP flow the table registered \
             last runs first and its DNAT wins, so DNS queries to the Service IP go wherever the \
             stale rules say (a gone pod, or a DROP/REJECT), and conntrack then pins the client's \
             flow there until its UDP timeout. Remove the rules from the {stale} backend \
             (`{run}iptables-{stale}-save` to review, then flush its nat/filter/mangle KUBE-* chains), make \
             kube-proxy, the kubelet and the CNI use one backend (iptables-wrapper, matching \
             /etc/alternatives), then delete the UDP/53 conntrack entries \
             (`{run}conntrack -D -p udp --dport 53`)."
        )),
    }
}

/// Empty KUBE-* chains left in the backend kube-proxy does not use.
fn stale_chains(r: &Report, stale: Backend) -> Finding {
    let b = &r.backends;
    let side = match stale {
        Backend::Legacy => &b.legacy,
        Backend::Nft => &b.nft,
    };
    Finding {
        severity: Severity::Warning,
        id: "iptables-stale",
        title: format!("the {} backend holds leftover KUBE-* chains", stale.name()),
        evidence: vec![Evidence::Side(stale, side.clone())],
        action: Some(format!(
            "Harmless while they hold no rules; delete them (`{}iptables-{}` -X on the empty KUBE-* chains) so no tool counts them as a sign of that backend.",
            netns::exec_prefix(r.netns.as_deref()),
            stale.name()
        )),
    }
}
