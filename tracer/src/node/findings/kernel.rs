//! The kernel: br_netfilter on bridged pod traffic, strict reverse-path filtering, and what the
//! kernel offers tracing.

use super::{Evidence, Finding, Severity};
use crate::node::facts::{Facts, LinkKind};

/// The kernel findings of `f`.
pub(super) fn findings(f: &Facts) -> Vec<Finding> {
    let mut out = Vec::new();
    let bridges: Vec<String> = f
        .links
        .iter()
        .filter(|l| l.kind == LinkKind::Bridge)
        .map(|l| l.name.clone())
        .collect();
    if !bridges.is_empty() && f.br_netfilter.is_none_or(|b| b.call_iptables == 0) {
        out.push(Finding {
            severity: Severity::Error,
            id: "br-netfilter-off",
            title: "bridged pod traffic bypasses iptables: answers from a DNS pod on the same bridge are not un-DNATed".to_owned(),
            evidence: vec![Evidence::Bridges(bridges), Evidence::BridgeNfCall(f.br_netfilter)],
            action: Some("`modprobe br_netfilter; sysctl -w net.bridge.bridge-nf-call-iptables=1` (and persist both).".to_owned()),
        });
    }
    let strict: Vec<String> = f
        .links
        .iter()
        .filter(|l| {
            matches!(l.kind, LinkKind::Bridge | LinkKind::Veth) && l.rp_filter_effective == Some(1)
        })
        .map(|l| l.name.clone())
        .collect();
    if !strict.is_empty() {
        out.push(Finding {
            severity: Severity::Warning,
            id: "rp-filter-strict",
            title: format!(
                "strict reverse-path filtering on {} pod-facing interfaces",
                strict.len()
            ),
            evidence: vec![
                Evidence::RpFilterAll(f.rp_filter_all),
                Evidence::RpFilterStrict(strict),
            ],
            action: Some("Strict mode drops packets whose source is routed elsewhere (asymmetric routes, multi-NIC pods); use 2 (loose) or 0.".to_owned()),
        });
    }
    out.push(Finding {
        severity: Severity::Info,
        id: "kernel",
        title: format!(
            "kernel {} on {}; tracing tier: {}",
            f.kernel,
            f.os.as_deref().unwrap_or("unknown OS"),
            f.tier
        ),
        evidence: vec![
            Evidence::KernelFeatures {
                btf: f.btf,
                module_btf: f.module_btf,
                kprobes: f.kprobes,
                ftrace_functions: f.ftrace_functions,
            },
            Evidence::TierReason(f.tier_reason.clone()),
            Evidence::Forwarding(f.br_netfilter, f.ip_forward),
        ],
        action: None,
    });
    out
}
