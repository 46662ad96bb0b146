//! The policy-drop fault: a NetworkPolicy engine's per-pod chain (Calico's `cali-tw-<iface>`,
//! reached from filter FORWARD by jumps) drops DNS from client0. `trace --rules` names the chain,
//! the rule and its `cali:` comment; deep tiers without `--rules` name what their verdict probe
//! sees; a DROP in PREROUTING is told from one in FORWARD. Run as root, one test at a time
//! (`--test-threads=1`).

mod common;

use std::{net::SocketAddr, time::Duration};

use common::{BACKENDS, LabGuard, batch, in_node, tier};
use tracer::{
    flow::record::{QueryRecord, RulePath, Stage, Verdict},
    lab::FaultName,
    measure,
    node::Backend,
    probes::plan::{Fate, Tier},
    ruletrace,
    trace::{Settings, Target, Traced, traced_batch},
};

const QUERIES: u32 = 30;

fn iptables(backend: Backend) -> &'static str {
    match backend {
        Backend::Nft => "iptables-nft",
        Backend::Legacy => "iptables-legacy",
    }
}

/// A lab whose legacy rules, on the legacy backend, include the raw table (as Calico's do): the
/// legacy side of `--rules` puts its TRACE rules there and never creates the table itself.
fn up(prefix: &str, backend: Backend, clients: u8) -> LabGuard {
    let lab = LabGuard::up_with_clients(prefix, backend, clients);
    if backend == Backend::Legacy {
        in_node(&lab, &["iptables-legacy", "-t", "raw", "-S"]);
    }
    lab
}

/// Sends `count` queries from client `client` to the Service while the tracer (this tier, a
/// record for every query, `rules` as asked) watches.
fn traced(lab: &LabGuard, client: usize, count: u32, rules: bool) -> Traced {
    let settings = Settings {
        tier: tier(),
        timeout: Duration::from_secs(1),
        all: true,
        rules,
        ..Settings::default()
    };
    traced_batch(
        Some(&lab.info.clients[client].netns),
        SocketAddr::from((lab.info.service_ip, lab.info.dns_port)),
        &batch(count),
        Some((Target::lab(&lab.info).expect("lab target"), settings)),
        &indicatif::ProgressBar::hidden(),
    )
    .expect("traced batch")
}

/// The failed records, after checking there is one record per query and one failed per loss.
fn failed<'a>(t: &'a Traced, what: &str) -> Vec<&'a QueryRecord> {
    assert_eq!(
        t.records.len() as u32,
        t.result.sent,
        "{what}: a record for every query"
    );
    let failed: Vec<_> = t
        .records
        .iter()
        .filter(|r| r.verdict != Verdict::Answered)
        .collect();
    assert_eq!(
        failed.len() as u32,
        t.result.lost,
        "{what}: one failed record per loss"
    );
    failed
}

/// The failed records with their rule paths: with `--rules` every failed query carries one, on
/// every kernel and tier. A miss panics with how many lack one and the trace's counters.
fn failed_with_paths<'a>(t: &'a Traced, what: &str) -> Vec<(&'a QueryRecord, &'a RulePath)> {
    let failed = failed(t, what);
    assert!(!failed.is_empty(), "{what}: no failed query to check");
    let missing: Vec<_> = failed.iter().filter(|r| r.rules.is_none()).collect();
    if let Some(r) = missing.first() {
        let s = t.summary.as_ref().expect("the trace summary");
        panic!(
            "{what}: {} of {} failed queries without a rule path, e.g. {r:?}; rule traces: {:?} {:?} {:?}",
            missing.len(),
            failed.len(),
            s.rule_trace,
            s.rule_trace_legacy,
            s.rule_trace_notes
        );
    }
    eprintln!(
        "{what}: {} of {} queries lost, each with a rule path",
        failed.len(),
        t.result.sent
    );
    failed
        .into_iter()
        .map(|r| (r, r.rules.as_ref().expect("checked above")))
        .collect()
}

/// The `cali:` comment of the rule in `chain` of the node's filter table that drops client0.
fn deny_comment(lab: &LabGuard, backend: Backend, chain: &str) -> String {
    let save = in_node(
        lab,
        &[&format!("{}-save", iptables(backend)), "-t", "filter"],
    );
    let rule = save
        .lines()
        .find(|l| l.starts_with(&format!("-A {chain} -s 10.244.0.20/32")))
        .unwrap_or_else(|| panic!("the deny rule in {chain}: {save}"));
    let at = rule.find("\"cali:").expect("a cali: comment") + 1;
    rule[at..]
        .split('"')
        .next()
        .expect("closing quote")
        .to_owned()
}

// Scenario: policy-drop on dns0's chain, two clients, traced with --rules on each backend. Each
// of client0's queries balanced to dns0 dies at rule 3 of cali-tw-<dns0's interface>, reached from
// filter FORWARD, and the record names that chain, rule and comment; client1 gets every answer.
#[test]
fn policy_drop_names_the_custom_chain_rule_and_comment_with_rules() {
    for backend in BACKENDS {
        let mut lab = up("trpd", backend, 2);
        lab.fault(FaultName::PolicyDrop, Some(0));
        let chain = format!("cali-tw-{}", lab.info.endpoints[0].host_ifname);
        let comment = deny_comment(&lab, backend, &chain);
        let t = traced(&lab, 0, QUERIES, true);
        assert!(
            t.result.lost > 0 && t.result.lost < QUERIES,
            "{backend:?}: one of two endpoints drops client0: {:?}",
            t.result
        );
        for (r, path) in failed_with_paths(&t, &format!("{backend:?} client0")) {
            assert_eq!(r.verdict, Verdict::Dropped, "{r:?}");
            assert_eq!(r.endpoint, Some(lab.info.endpoints[0].ip.into()), "{r:?}");
            assert_eq!(r.drop.as_ref().map(|d| d.stage), Some(Stage::Netfilter));
            let d = path.decided.as_ref().expect("a deciding step");
            assert_eq!(
                (
                    d.table.as_str(),
                    d.chain.as_str(),
                    d.number,
                    d.verdict.as_str()
                ),
                ("filter", chain.as_str(), Some(3), "DROP"),
                "{backend:?}: {path}"
            );
            assert_eq!(d.comment.as_deref(), Some(comment.as_str()), "{path}");
            assert_eq!(
                path.walk,
                [
                    "FORWARD",
                    "cali-FORWARD",
                    "cali-to-wl-dispatch",
                    chain.as_str()
                ],
                "{backend:?}: the jumps from the hook's chain"
            );
            assert_eq!(
                path.to_string(),
                format!(
                    "filter FORWARD -> cali-FORWARD -> cali-to-wl-dispatch -> {chain} rule 3 DROP (\"{comment}\" comment)"
                )
            );
        }
        // The other client: the same policy, not denied.
        let other = measure::query_batch(
            Some(&lab.info.clients[1].netns),
            SocketAddr::from((lab.info.service_ip, lab.info.dns_port)),
            &batch(QUERIES),
        )
        .expect("client1's batch");
        assert_eq!(
            (other.sent, other.lost),
            (QUERIES, 0),
            "{backend:?}: client1 is answered"
        );
        assert!(
            ruletrace::leftovers().expect("leftovers").is_empty(),
            "nothing of --rules left"
        );
        drop(lab);
        assert!(
            common::leftovers("trpd").is_empty(),
            "lab down left nothing"
        );
    }
}

/// Whether a netfilter verdict program for `backend` was attached.
fn deep_verdicts(t: &Traced, backend: Backend) -> bool {
    let names: &[&str] = match backend {
        Backend::Nft => &["netfilter_nft_fexit", "netfilter_nft_exit"],
        Backend::Legacy => &["netfilter_ipt_fexit", "netfilter_ipt_exit"],
    };
    let plan = t
        .summary
        .as_ref()
        .and_then(|s| s.plan.as_ref())
        .expect("the plan");
    plan.outcomes
        .iter()
        .any(|o| names.contains(&o.program) && matches!(o.fate, Fate::Attached { .. }))
}

fn kernel() -> String {
    std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .unwrap_or_default()
        .trim()
        .to_owned()
}

// Scenario: policy-drop on both DNS pods, traced without --rules on a deep tier (fentry or
// kprobe): every query from client0 is lost, and the verdict probe names the table and the
// hook's base chain, filter FORWARD, on both backends. It cannot name cali-tw-…: nft_do_chain
// runs once per base chain and follows jumps inside, and ipt_do_table once per table and hook.
#[test]
fn policy_drop_names_the_hook_chain_on_deep_tiers_without_rules() {
    if tier() == Some(Tier::Tracepoint) {
        eprintln!(
            "skipped: the tracepoint tier has no netfilter verdict probe (kernel {})",
            kernel()
        );
        return;
    }
    for backend in BACKENDS {
        let mut lab = up("trpf", backend, 1);
        lab.fault(FaultName::PolicyDrop, None);
        let t = traced(&lab, 0, 10, false);
        let plan_tier = t
            .summary
            .as_ref()
            .and_then(|s| s.plan.as_ref())
            .map(|p| p.tier);
        if plan_tier == Some(Tier::Tracepoint) {
            eprintln!(
                "skipped: kernel {} offers only the tracepoint tier (no kprobes, no fentry)",
                kernel()
            );
            return;
        }
        assert_eq!(
            t.result.lost, 10,
            "{backend:?}: client0 is denied on both pods"
        );
        let deep = deep_verdicts(&t, backend);
        for r in failed(&t, &format!("{backend:?}")) {
            let d = r.drop.as_ref().expect("a drop");
            assert_eq!(d.stage, Stage::Netfilter, "{d:?}");
            assert!(r.rules.is_none(), "no rule path without --rules");
            if deep {
                assert_eq!(
                    (d.table.as_deref(), d.chain.as_deref()),
                    (Some("filter"), Some("FORWARD")),
                    "{backend:?}: the hook's base chain, not cali-tw-…: {d:?}"
                );
            }
        }
        if !deep {
            eprintln!(
                "{backend:?}: no netfilter verdict program on {plan_tier:?} here (module BTF missing?)"
            );
        }
    }
}

// Scenario: on each backend, a DROP for client0's DNS in mangle PREROUTING (before DNAT, as a
// pre-DNAT policy would), then, with it removed, policy-drop on both pods (filter FORWARD, after
// DNAT); --rules names the hook chain each time.
#[test]
fn rules_tell_a_prerouting_drop_from_a_forward_one() {
    for backend in BACKENDS {
        let mut lab = up("trpp", backend, 1);
        let pre = [
            "PREROUTING",
            "-s",
            "10.244.0.20/32",
            "-d",
            "10.96.0.10/32",
            "-p",
            "udp",
            "--dport",
            "53",
            "-m",
            "comment",
            "--comment",
            "trpp pre-DNAT drop",
            "-j",
            "DROP",
        ];
        let insert: Vec<&str> = ["-t", "mangle", "-I"].iter().chain(&pre).copied().collect();
        in_node(&lab, &[&[iptables(backend)][..], &insert].concat());
        let t = traced(&lab, 0, 10, true);
        assert_eq!(t.result.lost, 10, "{backend:?}: {:?}", t.result);
        for (r, path) in failed_with_paths(&t, &format!("{backend:?} PREROUTING")) {
            assert_eq!(r.endpoint, None, "dropped before DNAT: {r:?}");
            assert_eq!(path.walk, ["PREROUTING"], "{backend:?}: {path}");
            assert_eq!(
                path.to_string(),
                "mangle PREROUTING rule 1 DROP (\"trpp pre-DNAT drop\" comment)"
            );
        }
        let delete: Vec<&str> = ["-t", "mangle", "-D"].iter().chain(&pre).copied().collect();
        in_node(&lab, &[&[iptables(backend)][..], &delete].concat());
        lab.fault(FaultName::PolicyDrop, None);
        let t = traced(&lab, 0, 10, true);
        assert_eq!(t.result.lost, 10, "{backend:?}: {:?}", t.result);
        for (_, path) in failed_with_paths(&t, &format!("{backend:?} FORWARD")) {
            let d = path.decided.as_ref().expect("a deciding step");
            assert_eq!(
                (path.walk.first().map(String::as_str), d.table.as_str()),
                (Some("FORWARD"), "filter"),
                "{backend:?}: {path}"
            );
            assert!(d.chain.starts_with("cali-tw-"), "{path}");
        }
    }
}
