//! kube-proxy: its mode, the DNS Service its rules describe, and DROP/REJECT rules in the way.

use super::{Evidence, Finding, Severity, endpoints_text};
use crate::node::{
    inspect::Report,
    kubeproxy::{ProxyMode, RuleCounter},
};

/// The kube-proxy findings of `r`.
pub(super) fn findings(r: &Report) -> Vec<Finding> {
    let mut out = vec![Finding {
        severity: Severity::Info,
        id: "kube-proxy-mode",
        title: format!("kube-proxy mode: {}", r.proxy_mode),
        evidence: vec![Evidence::ProxyMode(r.proxy_mode_evidence.clone())],
        action: None,
    }];
    out.extend(dns_service(r));
    out.extend(dns_service6(r));
    out.extend(blocking_rules(&r.counters));
    out
}

/// The DNS Service: found (with its DNAT counters), rejecting for lack of endpoints, or missing.
fn dns_service(r: &Report) -> Option<Finding> {
    match &r.dns_service {
        Some(s) if s.rejects => Some(Finding {
            severity: Severity::Error,
            id: "dns-no-endpoints",
            title: format!(
                "the DNS Service {} has no endpoints: kube-proxy rejects every query",
                s.socket()
            ),
            evidence: vec![Evidence::NoEndpointsReject(s.name.clone())],
            action: Some("Check the CoreDNS pods (`kubectl -n kube-system get pods -l k8s-app=kube-dns`) and their readiness.".to_owned()),
        }),
        Some(s) => Some(Finding {
            severity: Severity::Info,
            id: "dns-service",
            title: format!(
                "DNS Service {} {} -> {}",
                s.name,
                s.socket(),
                endpoints_text(&s.endpoints)
            ),
            evidence: r
                .counters
                .iter()
                .filter(|c| c.rule.contains("DNAT") || c.rule.starts_with("-A KUBE-SERVICES"))
                .cloned()
                .map(Evidence::Rule)
                .collect(),
            action: None,
        }),
        None if r.proxy_mode == ProxyMode::Iptables => Some(Finding {
            severity: Severity::Warning,
            id: "dns-service-missing",
            title: "no kube-dns Service (or any UDP/53 Service) in kube-proxy's rules".to_owned(),
            evidence: vec![],
            action: Some("Give `tracer trace --service IP` explicitly.".to_owned()),
        }),
        None => None,
    }
}

/// The IPv6 DNS Service of a dual-stack or IPv6 node (from the `ip6tables` saves): found,
/// rejecting for lack of endpoints, or held by another backend than the IPv4 rules (kube-proxy
/// writes both families with one backend: a split means two writers, one of them stale).
fn dns_service6(r: &Report) -> Vec<Finding> {
    let Some(s) = &r.dns_service6 else {
        return Vec::new();
    };
    let evidence: Vec<Evidence> = r
        .dns6_by_backend
        .iter()
        .cloned()
        .map(Evidence::ServiceIn)
        .collect();
    let mut out = vec![if s.rejects {
        Finding {
            severity: Severity::Error,
            id: "dns6-no-endpoints",
            title: format!(
                "the IPv6 DNS Service {} has no endpoints: kube-proxy rejects every IPv6 query",
                s.socket()
            ),
            evidence: vec![Evidence::NoEndpointsReject(s.name.clone())],
            action: Some("Check the CoreDNS pods' IPv6 addresses and readiness (`kubectl -n kube-system get endpointslices -l k8s-app=kube-dns`).".to_owned()),
        }
    } else {
        Finding {
            severity: Severity::Info,
            id: "dns6-service",
            title: format!(
                "IPv6 DNS Service {} {} -> {}",
                s.name,
                s.socket(),
                endpoints_text(&s.endpoints)
            ),
            evidence: evidence.clone(),
            action: None,
        }
    }];
    let v6: Vec<_> = r.dns6_by_backend.iter().map(|d| d.backend).collect();
    let v4 = r.dns_by_backend.first().map(|d| d.backend);
    let split = v6.len() > 1 || v4.is_some_and(|b| !v6.contains(&b));
    if split {
        out.push(Finding {
            severity: Severity::Error,
            id: "dns6-backend-split",
            title: format!(
                "the IPv6 DNS rules are in {} but the IPv4 ones in {}: two writers, one of them stale",
                v6.iter().map(|b| b.name()).collect::<Vec<_>>().join(" and "),
                v4.map_or("neither backend", |b| b.name())
            ),
            evidence,
            action: Some("Every writer of kube-proxy's rules must use one backend for both families: remove the stale backend's IPv6 rules (`ip6tables-legacy-save` / `ip6tables-nft-save` show which) and check the kube-proxy image's iptables wrapper.".to_owned()),
        });
    }
    out
}

/// DROP and REJECT rules (other than kube-proxy's own no-endpoints REJECT) on the DNS path: an
/// error once they matched packets.
fn blocking_rules(counters: &[RuleCounter]) -> Option<Finding> {
    let blocking: Vec<&RuleCounter> = counters
        .iter()
        .filter(|c| c.rule.ends_with(" -j DROP") || c.rule.contains(" -j REJECT"))
        .filter(|c| !c.rule.contains("has no endpoints"))
        .collect();
    if blocking.is_empty() {
        return None;
    }
    let hit = blocking.iter().any(|c| c.packets > 0);
    Some(Finding {
        severity: if hit { Severity::Error } else { Severity::Warning },
        id: "dns-blocking-rule",
        title: format!(
            "{} DROP/REJECT rules match DNS to the Service or its endpoints{}",
            blocking.len(),
            if hit { ", and they have matched packets" } else { "" }
        ),
        evidence: blocking.into_iter().cloned().map(Evidence::Rule).collect(),
        action: Some(
            "Find who added the rule (a network policy controller, a firewall manager, a hand-made rule) and remove it; `tracer trace` ties each dropped query to the rule whose counter moved.".to_owned(),
        ),
    })
}
