//! NodeLocal DNSCache: the cache's link, whether something listens on its addresses, and the
//! NOTRACK and ACCEPT rules that keep its queries away from conntrack and kube-proxy's DNAT.

use super::{Evidence, Finding, Severity};
use crate::node::{inspect::Report, nodelocal::NodeLocalCache};

/// The cache's findings: none without a `nodelocaldns` link.
pub(super) fn findings(r: &Report) -> Vec<Finding> {
    let Some(c) = &r.nodelocal else {
        return Vec::new();
    };
    let mut out = Vec::new();
    let rules: Vec<Evidence> = c.rules.iter().cloned().map(Evidence::Rule).collect();
    let (notrack, accepts) = (c.notrack().count(), c.accepts().count());
    let backends: Vec<&str> = c.backends().iter().map(|b| b.name()).collect();
    let mut evidence = vec![link(c), Evidence::CacheListeners(c.listeners.clone())];
    evidence.extend(rules);
    out.push(Finding {
        severity: Severity::Info,
        id: "nodelocal-dns-cache",
        title: format!(
            "NodeLocal DNSCache on {}: {} UDP listeners on port 53, {notrack} NOTRACK and {accepts} ACCEPT rules in iptables-{}",
            c.link,
            c.listeners.len(),
            if backends.is_empty() { "(none)".to_owned() } else { backends.join(" and iptables-") }
        ),
        evidence,
        action: None,
    });
    if c.listeners.is_empty() {
        out.push(Finding {
            severity: Severity::Error,
            id: "nodelocal-not-listening",
            title: format!(
                "nothing listens on UDP port 53 of {}'s addresses: pods asking the node-local cache get no answer",
                c.link
            ),
            evidence: vec![link(c), Evidence::CacheListeners(Vec::new())],
            action: Some("Check the node-local-dns pod on this node (kubectl -n kube-system get pods -l k8s-app=node-local-dns -o wide) and its logs.".to_owned()),
        });
    }
    if notrack == 0 {
        out.push(Finding {
            severity: Severity::Warning,
            id: "nodelocal-no-notrack",
            title: format!(
                "no NOTRACK rule for {}'s addresses: queries to the cache are conntracked, and where the link holds the kube-dns ClusterIP kube-proxy DNATs them past the cache",
                c.link
            ),
            evidence: vec![link(c)],
            action: Some("node-cache installs its rules at start and re-checks them every minute (-syncinterval): check its logs for iptables errors, and that it uses the node's iptables backend.".to_owned()),
        });
    }
    out
}

fn link(c: &NodeLocalCache) -> Evidence {
    Evidence::CacheLink {
        name: c.link.clone(),
        addresses: c.addresses.clone(),
    }
}
