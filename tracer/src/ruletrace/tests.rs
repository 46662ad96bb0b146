//! Parsing and assembly on captured bytes: tests/fixtures/ruletrace/ holds the trace messages,
//! `nft -j list ruleset` and `iptables-nft-save` of the first scenario in tests/ruletrace.rs
//! (a UDP/53 packet that filter INPUT jumps to HR-POLICY, where a commented rule drops it),
//! written by that file's ignored `capture_fixtures` test on kernel 6.18, nft 1.0.6, iptables 1.8.9.

use std::net::{IpAddr, Ipv4Addr};

use super::{
    message::{self, Family, Malformed, TraceMessage, TraceType, Verdict},
    nflog,
    path::{Assembler, MAX_STEPS, PathEnd},
    rules::{self, RuleBook, RuleRef},
    table::{self, TABLE},
};

const FX: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../tests/fixtures/ruletrace");

fn fixture(name: &str) -> String {
    std::fs::read_to_string(format!("{FX}/{name}")).unwrap_or_else(|e| panic!("{name}: {e}"))
}

/// The captured netlink messages, one per line in hex (`#` lines are comments).
fn captured() -> Vec<Vec<u8>> {
    fixture("drop-in-jumped-chain.hex")
        .lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .map(|l| {
            (0..l.len())
                .step_by(2)
                .map(|i| u8::from_str_radix(&l[i..i + 2], 16).expect("hex"))
                .collect()
        })
        .collect()
}

fn parse_one(bytes: &[u8]) -> Result<Option<TraceMessage>, Malformed> {
    let mut all: Vec<_> = message::messages(bytes).collect();
    assert_eq!(all.len(), 1, "{all:?}");
    all.remove(0)
}

fn trace_messages() -> Vec<TraceMessage> {
    captured()
        .iter()
        .map(|m| parse_one(m).expect("well-formed").expect("a trace message"))
        .collect()
}

#[test]
fn captured_messages_name_tables_chains_rules_and_verdicts() {
    let msgs = trace_messages();
    assert_eq!(msgs.len(), 5, "{msgs:#?}");
    let summary: Vec<(Family, &str, &str, TraceType, &Verdict, bool)> = msgs
        .iter()
        .map(|m| {
            let (f, t, c) = (m.family, m.table.as_str(), m.chain.as_str());
            (f, t, c, m.kind, &m.verdict, m.handle.is_some())
        })
        .collect();
    let jump = Verdict::Jump("HR-POLICY".to_owned());
    assert_eq!(
        summary,
        [
            (
                Family::Inet,
                TABLE,
                "prerouting",
                TraceType::Rule,
                &Verdict::Continue,
                true
            ),
            // The chain's end: a continue that names no rule (a rule message on 6.18).
            (
                Family::Inet,
                TABLE,
                "prerouting",
                TraceType::Rule,
                &Verdict::Continue,
                false
            ),
            (
                Family::Inet,
                TABLE,
                "prerouting",
                TraceType::Policy,
                &Verdict::Accept,
                false
            ),
            (Family::Ip, "filter", "INPUT", TraceType::Rule, &jump, true),
            (
                Family::Ip,
                "filter",
                "HR-POLICY",
                TraceType::Rule,
                &Verdict::Drop,
                true
            ),
        ]
    );
    // One packet: one id; IPv4 everywhere.
    assert!(
        msgs.iter()
            .all(|m| m.id == msgs[0].id && m.nfproto == Some(2))
    );
    // The headers come with the first message of each base chain's run only.
    let tuple = msgs[0].tuple.expect("headers in the first message");
    let with_headers: Vec<bool> = msgs.iter().map(|m| m.tuple.is_some()).collect();
    assert_eq!(with_headers, [true, false, false, true, false]);
    assert_eq!(msgs[3].tuple, Some(tuple));
    assert_eq!(tuple.src, IpAddr::V4(Ipv4Addr::new(10, 213, 0, 1)));
    assert_eq!(tuple.dst, IpAddr::V4(Ipv4Addr::new(10, 213, 0, 2)));
    assert_eq!((tuple.dport, tuple.proto), (53, 17));
    assert!(msgs[0].iif.is_some() && msgs[0].oif.is_none());
}

/// The steps of the captured messages, with rules from the captured ruleset, as `RuleTrace`
/// assembles them.
#[test]
fn captured_path_names_the_commented_rule() {
    let book = RuleBook::parse(
        &fixture("nft-j-list-ruleset.json"),
        &[(Family::Ip, &fixture("iptables-nft-save.txt"))],
    );
    let mut assembler = Assembler::new(16);
    for (i, msg) in trace_messages().into_iter().enumerate() {
        let own = msg.family == Family::Inet && msg.table == TABLE;
        let rule = msg.handle.filter(|_| !own).map(|h| {
            book.get(msg.family, &msg.table, h)
                .expect("rule in the book")
                .clone()
        });
        assembler.push(msg, rule, own, i as u64);
    }
    let paths = assembler.take();
    assert_eq!(paths.len(), 1);
    let path = &paths[0];
    assert_eq!((path.end, path.messages), (PathEnd::Final, 5));
    assert_eq!(path.chains(), ["INPUT", "HR-POLICY"]);
    let decided = path.decided().expect("the drop");
    let rule = decided.rule.as_ref().expect("its rule");
    assert_eq!(rule.comment.as_deref(), Some("hr drop dns"));
    assert_eq!(
        rule.text,
        "-p udp -m udp --dport 53 -m comment --comment \"hr drop dns\" -j DROP"
    );
    // Without the save program's output the rule is in nft's syntax, the comment opaque.
    let nft_only = RuleBook::parse(&fixture("nft-j-list-ruleset.json"), &[]);
    let handle = rule.handle;
    let bare = nft_only
        .get(Family::Ip, "filter", handle)
        .expect("the rule");
    assert_eq!(bare.text, "udp dport 53 xt match comment drop");
    assert_eq!(bare.comment, None);
    // tracer's own rules carry their comment in nft's rule comment.
    let own = trace_messages()[0].handle.expect("own rule handle");
    let own = nft_only.get(Family::Inet, TABLE, own).expect("own rule");
    assert_eq!(own.text, "udp dport 53 meta nftrace set 1");
    assert_eq!(own.comment.as_deref(), Some(table::COMMENT));
}

/// Every prefix and every single-byte corruption of every captured message parses or is
/// malformed; none panics, and a cut message is never taken for a whole one.
#[test]
fn truncated_and_corrupted_messages_are_malformed_never_a_panic() {
    let mut malformed = 0;
    for msg in captured() {
        for cut in 0..msg.len() {
            let mut short = msg[..cut].to_vec();
            if cut >= 4 {
                short[..4].copy_from_slice(&(cut as u32).to_ne_bytes());
            }
            for result in message::messages(&short) {
                // A cut inside the attributes is malformed; a cut on an attribute boundary that
                // keeps every required one still parses.
                malformed += usize::from(result.is_err());
            }
        }
        for at in 0..msg.len() {
            for value in [0x00, 0xff, 0x7f] {
                let mut bad = msg.clone();
                bad[at] = value;
                let _ = message::messages(&bad).count();
            }
        }
    }
    assert!(malformed > 100, "{malformed}");
}

/// A trace message with the given attributes (`(type, value)`; a nested value is pre-encoded).
fn build(family: u8, attrs: &[(u16, Vec<u8>)]) -> Vec<u8> {
    let mut body = vec![family, 0, 0, 0];
    for (kind, value) in attrs {
        let len = 4 + value.len();
        body.extend_from_slice(&(len as u16).to_ne_bytes());
        body.extend_from_slice(&kind.to_ne_bytes());
        body.extend_from_slice(value);
        body.resize(body.len().next_multiple_of(4), 0);
    }
    let mut msg = Vec::new();
    msg.extend_from_slice(&((16 + body.len()) as u32).to_ne_bytes());
    msg.extend_from_slice(&message::NFT_TRACE_MSG_TYPE.to_ne_bytes());
    msg.extend_from_slice(&[0; 10]);
    msg.extend_from_slice(&body);
    msg
}

fn cstr(s: &str) -> Vec<u8> {
    let mut v = s.as_bytes().to_vec();
    v.push(0);
    v
}

fn verdict_attr(code: i32, chain: Option<&str>) -> Vec<u8> {
    let mut nested = Vec::new();
    nested.extend_from_slice(&8u16.to_ne_bytes());
    nested.extend_from_slice(&1u16.to_ne_bytes());
    nested.extend_from_slice(&code.to_be_bytes());
    if let Some(chain) = chain {
        let value = cstr(chain);
        nested.extend_from_slice(&((4 + value.len()) as u16).to_ne_bytes());
        nested.extend_from_slice(&2u16.to_ne_bytes());
        nested.extend_from_slice(&value);
        nested.resize(nested.len().next_multiple_of(4), 0);
    }
    nested
}

fn rule_msg(id: u32, chain: &str, handle: u64, verdict: Vec<u8>) -> Vec<u8> {
    build(
        2,
        &[
            (6, id.to_be_bytes().to_vec()),
            (4, 3u32.to_be_bytes().to_vec()),
            (1, cstr("filter")),
            (2, cstr(chain)),
            (3, handle.to_be_bytes().to_vec()),
            (5, verdict),
        ],
    )
}

#[test]
fn verdicts_and_missing_attributes() {
    let parse = |code: i32, chain: Option<&str>| {
        parse_one(&rule_msg(7, "INPUT", 3, verdict_attr(code, chain))).map(|m| m.unwrap().verdict)
    };
    assert_eq!(parse(1, None), Ok(Verdict::Accept));
    assert_eq!(parse(0, None), Ok(Verdict::Drop));
    // NF_DROP_ERR(-EPERM) and NF_QUEUE_NR(5).
    assert_eq!(parse(1 << 16, None), Ok(Verdict::Drop));
    assert_eq!(parse(5 << 16 | 3, None), Ok(Verdict::Queue(5)));
    assert_eq!(parse(-3, Some("X")), Ok(Verdict::Jump("X".to_owned())));
    assert_eq!(parse(-4, Some("Y")), Ok(Verdict::Goto("Y".to_owned())));
    assert_eq!(parse(-5, None), Ok(Verdict::Return));
    assert!(parse(-3, None).is_err());
    assert_eq!(parse(-9, None), Ok(Verdict::Other(-9)));

    // No id: malformed. Another message type: not a trace, ignored.
    let mut no_id = rule_msg(7, "INPUT", 3, verdict_attr(1, None));
    no_id[16 + 4 + 2..16 + 4 + 4].copy_from_slice(&99u16.to_ne_bytes());
    assert_eq!(
        parse_one(&no_id),
        Err(Malformed("trace message without an id"))
    );
    let mut other = rule_msg(7, "INPUT", 3, verdict_attr(1, None));
    other[4..6].copy_from_slice(&(10u16 << 8 | 6).to_ne_bytes());
    assert_eq!(parse_one(&other), Ok(None));
    // An attribute claiming more bytes than the message has.
    let mut long = rule_msg(7, "INPUT", 3, verdict_attr(1, None));
    long[20..22].copy_from_slice(&500u16.to_ne_bytes());
    assert!(parse_one(&long).is_err());
    // Two messages in one datagram.
    let mut two = rule_msg(7, "INPUT", 3, verdict_attr(1, None));
    two.extend(rule_msg(8, "INPUT", 4, verdict_attr(0, None)));
    assert_eq!(message::messages(&two).filter(|m| m.is_ok()).count(), 2);
}

fn msg(id: u32, verdict: Verdict, src_port: Option<u16>) -> TraceMessage {
    TraceMessage {
        id,
        family: Family::Ip,
        nfproto: Some(2),
        kind: TraceType::Rule,
        table: "filter".to_owned(),
        chain: "INPUT".to_owned(),
        handle: Some(1),
        verdict,
        tuple: src_port.map(|p| super::Tuple {
            src: Ipv4Addr::LOCALHOST.into(),
            dst: Ipv4Addr::LOCALHOST.into(),
            sport: p,
            dport: 53,
            proto: 17,
        }),
        iif: None,
        oif: None,
        mark: None,
    }
}

fn rule() -> Option<RuleRef> {
    Some(RuleRef {
        handle: 1,
        text: "accept".to_owned(),
        comment: None,
        number: Some(1),
    })
}

#[test]
fn paths_end_by_drop_idleness_flush_eviction_and_reuse() {
    let mut a = Assembler::new(2);
    a.push(msg(1, Verdict::Accept, Some(1000)), rule(), false, 0);
    a.push(msg(2, Verdict::Continue, Some(1001)), rule(), false, 10);
    assert!(a.take().is_empty());
    // Idle for 100: id 1 is, id 2 is not.
    a.expire(100, 100);
    let idle = a.take();
    assert_eq!((idle.len(), idle[0].id, idle[0].end), (1, 1, PathEnd::Idle));
    // A drop ends a path at once; its headers were in the first message only.
    a.push(msg(2, Verdict::Drop, None), rule(), false, 20);
    let dropped = a.take();
    assert_eq!(
        (dropped[0].end, dropped[0].steps.len()),
        (PathEnd::Final, 2)
    );
    assert_eq!(dropped[0].steps[1].tuple.map(|t| t.sport), Some(1001));
    // The same id with another packet's headers starts a new path.
    a.push(msg(3, Verdict::Accept, Some(1)), rule(), false, 30);
    a.push(msg(3, Verdict::Accept, Some(2)), rule(), false, 31);
    assert_eq!(a.take()[0].end, PathEnd::Reused);
    // A third open packet evicts the one idle longest.
    a.push(msg(4, Verdict::Accept, Some(4)), rule(), false, 32);
    a.push(msg(5, Verdict::Accept, Some(5)), rule(), false, 33);
    let evicted = a.take();
    assert_eq!(
        (evicted.len(), evicted[0].id, evicted[0].end),
        (1, 3, PathEnd::Evicted)
    );
    assert_eq!(a.evicted, 1);
    a.flush();
    let flushed = a.take();
    assert_eq!(flushed.iter().map(|p| p.id).collect::<Vec<_>>(), [4, 5]);
    assert!(flushed.iter().all(|p| p.end == PathEnd::Flushed));
    // Own steps count as messages, not steps; a loop cannot grow a path without bound.
    a.push(msg(6, Verdict::Continue, Some(6)), None, true, 40);
    for t in 0..MAX_STEPS as u64 + 5 {
        a.push(msg(6, Verdict::Continue, None), rule(), false, 41 + t);
    }
    a.flush();
    let long = &a.take()[0];
    assert_eq!((long.steps.len(), long.truncated), (MAX_STEPS, 5));
    assert_eq!(long.messages as usize, MAX_STEPS + 6);
    assert_eq!(long.decided(), None);
}

#[test]
fn rules_render_compactly() {
    let render = |json: &str| rules::render(&serde_json::from_str::<Vec<_>>(json).unwrap());
    assert_eq!(
        render(
            r#"[{"match": {"op": "==", "left": {"payload": {"protocol": "ip", "field": "daddr"}}, "right": "10.96.0.10"}},
                {"match": {"op": "!=", "left": {"meta": {"key": "l4proto"}}, "right": {"set": ["tcp", "udp"]}}},
                {"counter": {"packets": 1, "bytes": 2}},
                {"vmap": {"key": {"numgen": {"mode": "random", "mod": 2, "offset": 0}}, "data": {"set": [[0, {"goto": {"target": "endpoint-A"}}]]}}}]"#
        ),
        "ip daddr 10.96.0.10 meta l4proto != { tcp, udp } \
         {\"numgen\":{\"mod\":2,\"mode\":\"random\",\"offset\":0}} vmap { 0 : goto endpoint-A }"
    );
    assert_eq!(
        render(r#"[{"dnat": {"addr": "10.244.0.10", "port": 53}}, {"reject": null}]"#),
        "dnat to 10.244.0.10:53 reject"
    );
}

#[test]
fn the_table_script_only_sets_nftrace() {
    let script = table::script(&[53, 5353], true, false);
    assert!(script.starts_with("table inet tracer_rules {\n"));
    let owner = format!("\tcomment \"tracer pid={} start=", std::process::id());
    assert!(script.contains(&owner), "{script}");
    assert_eq!(script.matches("meta nftrace set 1").count(), 8);
    assert_eq!(script.matches("priority -350; policy accept;").count(), 2);
    assert!(script.contains("\t\tudp sport { 53, 5353 } meta nftrace set 1 comment "));
    assert!(!script.contains("drop") && !script.contains("jump"));
    let again = table::script(&[53], true, true);
    assert!(again.starts_with("delete table inet tracer_rules\ntable inet tracer_rules {\n"));
    let queries = table::script(&[53], false, false);
    assert_eq!(queries.matches("meta nftrace set 1").count(), 4);
    assert!(queries.contains("\t\tudp dport { 53 } meta nftrace") && !queries.contains("sport"));
}

/// An nflog packet message with a prefix and an IPv4/UDP payload from 10.0.0.1:4000 (IP id
/// `ip_id`) to 10.0.0.2:53.
fn nflog_msg(prefix: &str, ip_id: u16) -> Vec<u8> {
    let mut ip = vec![
        0x45, 0, 0, 28, 0, 0, 0, 0, 64, 17, 0, 0, 10, 0, 0, 1, 10, 0, 0, 2,
    ];
    ip[4..6].copy_from_slice(&ip_id.to_be_bytes());
    ip.extend_from_slice(&[0x0f, 0xa0, 0, 53, 0, 8, 0, 0]);
    let mut body = vec![2, 0, 0, 0];
    for (kind, value) in [
        (10u16, cstr(prefix)),
        (9, ip),
        (4, 3u32.to_be_bytes().to_vec()),
    ] {
        body.extend_from_slice(&((4 + value.len()) as u16).to_ne_bytes());
        body.extend_from_slice(&kind.to_ne_bytes());
        body.extend_from_slice(&value);
        body.resize(body.len().next_multiple_of(4), 0);
    }
    let mut msg = Vec::new();
    msg.extend_from_slice(&((16 + body.len()) as u32).to_ne_bytes());
    msg.extend_from_slice(&(4u16 << 8).to_ne_bytes());
    msg.extend_from_slice(&[0; 10]);
    msg.extend_from_slice(&body);
    msg
}

const LEGACY_SAVE: &str = "*filter
:INPUT ACCEPT [0:0]
:FORWARD DROP [0:0]
:HR-POLICY - [0:0]
-A INPUT -p udp -m udp --dport 53 -j HR-POLICY
-A INPUT -p udp -m udp --dport 53 -m comment --comment \"hr drop -j ACCEPT\" -j REJECT --reject-with icmp-port-unreachable
-A HR-POLICY -s 10.99.0.0/16 -g KUBE-X
-A HR-POLICY -j MARK --set-xmark 0x4000/0x4000
COMMIT
*nat
:PREROUTING ACCEPT [0:0]
-A PREROUTING -d 10.96.0.10/32 -p udp -j DNAT --to-destination 10.244.0.10:53
COMMIT
";

fn legacy_step(prefix: &str) -> (TraceMessage, Option<RuleRef>) {
    let book = nflog::LegacyBook::parse(LEGACY_SAVE);
    let bytes = nflog_msg(prefix, 7);
    let mut all: Vec<_> = nflog::messages(&bytes).collect();
    let Ok(nflog::Received::Trace(msg)) = all.remove(0) else {
        panic!("{prefix}: not a trace message");
    };
    let id = nflog::packet_id(&msg.payload);
    book.translate(msg, id)
}

#[test]
fn legacy_trace_messages_name_rules_by_position_and_verdicts_by_target() {
    let (jump, rule) = legacy_step("TRACE: filter:INPUT:rule:1 ");
    assert_eq!(
        (jump.table.as_str(), jump.chain.as_str()),
        ("filter", "INPUT")
    );
    assert_eq!(jump.verdict, Verdict::Jump("HR-POLICY".to_owned()));
    assert_eq!(rule.as_ref().map(|r| r.handle), Some(1));
    let tuple = jump.tuple.expect("the payload's tuple");
    assert_eq!((tuple.sport, tuple.dport, tuple.proto), (4000, 53, 17));
    assert_eq!(jump.iif, Some(3));
    // A comment holding `-j ACCEPT` does not hide the real target.
    let (reject, rule) = legacy_step("TRACE: filter:INPUT:rule:2 ");
    assert_eq!(reject.verdict, Verdict::Drop);
    assert_eq!(
        rule.and_then(|r| r.comment).as_deref(),
        Some("hr drop -j ACCEPT")
    );
    let verdicts: Vec<Verdict> = [
        "TRACE: filter:HR-POLICY:rule:1 ",
        "TRACE: filter:HR-POLICY:rule:2 ",
        "TRACE: filter:HR-POLICY:return:3 ",
        "TRACE: filter:FORWARD:policy:1 ",
        "TRACE: filter:INPUT:policy:3 ",
        "TRACE: nat:PREROUTING:rule:1 ",
    ]
    .iter()
    .map(|p| legacy_step(p).0.verdict)
    .collect();
    assert_eq!(
        verdicts,
        [
            Verdict::Goto("KUBE-X".to_owned()),
            Verdict::Continue,
            Verdict::Return,
            Verdict::Drop,
            Verdict::Accept,
            Verdict::Accept,
        ]
    );
    // A rule number the book does not have: no text, no verdict claimed.
    let (unknown, rule) = legacy_step("TRACE: filter:INPUT:rule:9 ");
    assert_eq!(unknown.verdict, Verdict::Continue);
    assert_eq!(rule.map(|r| r.text), Some(String::new()));
    // One packet's messages share an id; another IP id is another packet.
    let id = |ip_id| {
        let bytes = nflog_msg("TRACE: filter:INPUT:rule:1 ", ip_id);
        match nflog::messages(&bytes).next() {
            Some(Ok(nflog::Received::Trace(msg))) => nflog::packet_id(&msg.payload),
            other => panic!("{other:?}"),
        }
    };
    assert_eq!(id(7), id(7));
    assert_ne!(id(7), id(8));
}

#[test]
fn legacy_prefixes_and_malformed_nflog_messages() {
    for bad in [
        "TRACE: filter:INPUT:rule",
        "TRACE: filter:INPUT:jump:1",
        "TRACE: filter::rule:x",
    ] {
        let bytes = nflog_msg(bad, 1);
        let all: Vec<_> = nflog::messages(&bytes).collect();
        assert!(all[0].is_err(), "{bad}: {all:?}");
    }
    // A logged packet that is not a trace is ignored; so is a chain name holding ':'.
    let bytes = nflog_msg("kube drop: ", 1);
    assert_eq!(
        nflog::messages(&bytes).next(),
        Some(Ok(nflog::Received::Other))
    );
    let (msg, _) = legacy_step("TRACE: filter:A:B:rule:1 ");
    assert_eq!(msg.chain, "A:B");
    // Every prefix of a message is malformed or ignored, never a panic.
    let whole = nflog_msg("TRACE: filter:INPUT:rule:1 ", 1);
    for cut in 0..whole.len() {
        let mut short = whole[..cut].to_vec();
        if cut >= 4 {
            short[..4].copy_from_slice(&(cut as u32).to_ne_bytes());
        }
        let _ = nflog::messages(&short).count();
    }
}

/// A step of packet `id` (sport 1000) in `table chain`, by the rule at `number` (or the policy).
fn step(
    table: &str,
    chain: &str,
    verdict: Verdict,
    number: Option<u64>,
) -> (TraceMessage, Option<RuleRef>) {
    let policy = number.is_none() && verdict == Verdict::Drop;
    let mut m = msg(9, verdict, Some(1000));
    m.table = table.to_owned();
    m.chain = chain.to_owned();
    let rule = number.map(|n| RuleRef {
        handle: 100 + n,
        text: format!("rule {n} of {chain}"),
        comment: (chain == "cali-tw-trpdd0").then(|| "cali:abc".to_owned()),
        number: Some(n),
    });
    if rule.is_none() {
        m.handle = None;
    }
    if policy {
        m.kind = TraceType::Policy;
    }
    (m, rule)
}

#[test]
fn a_custom_chain_reached_by_jumps_reads_as_its_hook_walk() {
    use crate::flow::record::RulePath;
    let jump = |c: &str| Verdict::Jump(c.to_owned());
    let mut a = Assembler::new(4);
    for (t, (m, r)) in [
        step("nat", "PREROUTING", jump("KUBE-SERVICES"), Some(1)),
        step("nat", "KUBE-SERVICES", Verdict::Accept, Some(2)),
        step("filter", "FORWARD", jump("KUBE-FORWARD"), Some(1)),
        // Returned from: left out of the walk.
        step("filter", "KUBE-FORWARD", Verdict::Return, None),
        step("filter", "FORWARD", jump("cali-FORWARD"), Some(2)),
        step(
            "filter",
            "cali-FORWARD",
            jump("cali-to-wl-dispatch"),
            Some(1),
        ),
        step(
            "filter",
            "cali-to-wl-dispatch",
            Verdict::Goto("cali-tw-trpdd0".to_owned()),
            Some(1),
        ),
        step("filter", "cali-tw-trpdd0", Verdict::Drop, Some(3)),
    ]
    .into_iter()
    .enumerate()
    {
        a.push(m, r, false, t as u64);
    }
    let path = &a.take()[0];
    assert_eq!(
        path.hook_walk(),
        [
            "FORWARD",
            "cali-FORWARD",
            "cali-to-wl-dispatch",
            "cali-tw-trpdd0"
        ]
    );
    assert_eq!(
        RulePath::from(path).to_string(),
        "filter FORWARD -> cali-FORWARD -> cali-to-wl-dispatch -> cali-tw-trpdd0 rule 3 DROP (\"cali:abc\" comment)"
    );
    // A base chain's own rule, without a comment: the rule's text; a policy: the word.
    let mut a = Assembler::new(4);
    let (m, r) = step("mangle", "PREROUTING", Verdict::Drop, Some(2));
    a.push(m, r, false, 0);
    let (m, r) = step("filter", "FORWARD", Verdict::Drop, None);
    let mut m = m;
    m.id = 10;
    a.push(m, r, false, 1);
    let paths: Vec<String> = a
        .take()
        .iter()
        .map(|p| RulePath::from(p).to_string())
        .collect();
    assert_eq!(
        paths,
        [
            "mangle PREROUTING rule 2 DROP: rule 2 of PREROUTING",
            "filter FORWARD policy DROP"
        ]
    );
}
