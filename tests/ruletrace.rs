//! Scenario tests of `tracer::ruletrace` in a namespace pair of their own (`hr-rt-a` sends,
//! `hr-rt-b` receives and is traced, a veth between them): iptables-nft rules in `filter INPUT`
//! and a custom chain, one DNS packet, and the path that names the rule that dropped it; a
//! non-DNS packet that is not traced; an accepted packet that still arrives; bursts of dropped
//! and accepted queries, one path each; the output hook; the ruleset exactly as it was after the
//! trace; a killed trace's table removed by the next start; and the same for the legacy side
//! (`LegacyTrace`, TRACE over nfnetlink_log). Run as root, one at a time (`--test-threads=1`).

use std::{
    net::{Ipv4Addr, SocketAddr, UdpSocket},
    os::fd::{AsFd, AsRawFd},
    process::Command,
    time::Duration,
};

use tracer::{
    netns,
    ruletrace::{self, Family, LegacyTrace, Options, PacketPath, PathEnd, RuleTrace, Verdict},
};

const A: &str = "hr-rt-a";
const B: &str = "hr-rt-b";
const A_IP: Ipv4Addr = Ipv4Addr::new(10, 213, 0, 1);
const B_IP: Ipv4Addr = Ipv4Addr::new(10, 213, 0, 2);

/// Runs a command, panicking with its stderr when it fails; returns stdout.
fn run(program: &str, args: &[&str]) -> String {
    let out = Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("run {program}: {e}"));
    assert!(
        out.status.success(),
        "{program} {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Runs a command inside namespace `ns`.
fn ns_run(ns: &str, program: &str, args: &[&str]) -> String {
    let mut all = vec!["netns", "exec", ns, program];
    all.extend_from_slice(args);
    run("ip", &all)
}

/// Two namespaces joined by a veth (`A_IP` in `hr-rt-a`, `B_IP` in `hr-rt-b`), deleted on drop
/// with everything in them (the veth, the rules, tracer's table if a test left it).
struct NsPair;

impl NsPair {
    fn up() -> NsPair {
        for ns in [A, B] {
            // A killed earlier run's namespace goes first.
            let _ = Command::new("ip").args(["netns", "del", ns]).output();
            run("ip", &["netns", "add", ns]);
        }
        let guard = NsPair;
        run(
            "ip",
            &[
                "link", "add", "hr-rt-va", "netns", A, "type", "veth", "peer", "name", "hr-rt-vb",
                "netns", B,
            ],
        );
        for (ns, dev, ip) in [(A, "hr-rt-va", A_IP), (B, "hr-rt-vb", B_IP)] {
            ns_run(ns, "ip", &["addr", "add", &format!("{ip}/30"), "dev", dev]);
            ns_run(ns, "ip", &["link", "set", dev, "up"]);
            ns_run(ns, "ip", &["link", "set", "lo", "up"]);
        }
        guard
    }
}

impl Drop for NsPair {
    fn drop(&mut self) {
        for ns in [A, B] {
            if let Err(e) = Command::new("ip").args(["netns", "del", ns]).output() {
                eprintln!("ip netns del {ns}: {e}");
            }
        }
    }
}

/// Runs `f` on a thread inside namespace `ns`.
fn in_ns<T: Send>(ns: &str, f: impl FnOnce() -> T + Send) -> T {
    netns::run_in(&netns::named(ns), f).unwrap_or_else(|e| panic!("enter {ns}: {e}"))
}

/// Sends one UDP datagram from `hr-rt-a` to `B_IP:port`; returns its source port.
fn send_from_a(port: u16) -> u16 {
    in_ns(A, || {
        let socket = UdpSocket::bind(SocketAddr::from((A_IP, 0))).expect("bind in hr-rt-a");
        socket
            .send_to(b"hr ruletrace", SocketAddr::from((B_IP, port)))
            .expect("send from hr-rt-a");
        socket.local_addr().expect("local address").port()
    })
}

/// Every path of the packets sent so far: waits for the first, then for the rest to go idle.
fn collect(trace: &mut RuleTrace) -> Vec<PacketPath> {
    let mut paths = trace.wait(Duration::from_secs(3)).expect("wait for paths");
    std::thread::sleep(Duration::from_millis(300));
    paths.extend(trace.flush().expect("flush paths"));
    paths
}

/// `nft -s list ruleset` in `hr-rt-b` (without counters: the test's packets move them).
fn stateless_ruleset() -> String {
    ns_run(B, "nft", &["-s", "list", "ruleset"])
}

/// The words of a rule; `'…'` keeps words with spaces together.
fn words(rule: &str) -> Vec<&str> {
    let mut out = Vec::new();
    for (i, part) in rule.split('\'').enumerate() {
        if i % 2 == 1 {
            out.push(part);
        } else {
            out.extend(part.split_whitespace());
        }
    }
    out
}

/// Runs `iptables-nft RULE` in `hr-rt-b`.
fn iptables_b(rule: &str) {
    ns_run(B, "iptables-nft", &words(rule));
}

/// In `hr-rt-b`, with `program` (iptables-nft or iptables-legacy): INPUT jumps UDP/53 to
/// HR-POLICY, whose rule commented "hr drop dns" drops it.
fn drop_in_custom_chain(program: &str) {
    for rule in [
        "-N HR-POLICY",
        "-A INPUT -p udp --dport 53 -j HR-POLICY",
        "-A HR-POLICY -p udp --dport 53 -m comment --comment 'hr drop dns' -j DROP",
    ] {
        ns_run(B, program, &words(rule));
    }
}

fn leftovers_b() -> Vec<String> {
    in_ns(B, ruletrace::leftovers).expect("list leftovers")
}

/// Starts a trace in `hr-rt-b`, sends a DNS and a non-DNS datagram, and returns the paths, the
/// counters and the DNS datagram's source port; the trace is dropped (its table deleted) inside.
fn trace_one_dns_packet() -> (Vec<PacketPath>, ruletrace::Counters, u16) {
    in_ns(B, || {
        let mut trace = RuleTrace::start(Options::default()).expect("start the rule trace");
        assert!(!trace.removed_leftover());
        let sport = send_from_a(53);
        send_from_a(54);
        let paths = collect(&mut trace);
        (paths, trace.counters(), sport)
    })
}

// Scenario: a DNS query dropped by an iptables-nft rule in a custom chain INPUT jumps to; the
// path names the table, both chains, the jump, and the commented rule that dropped it.
#[test]
fn drop_in_a_jumped_to_chain_names_the_commented_rule() {
    let _ns = NsPair::up();
    drop_in_custom_chain("iptables-nft");
    let before = stateless_ruleset();

    let (paths, counters, sport) = trace_one_dns_packet();

    // One path: the DNS packet's; the UDP/54 one was never traced.
    assert_eq!(paths.len(), 1, "{paths:#?}");
    let path = &paths[0];
    let tuple = path.tuple.expect("the packet's headers");
    assert_eq!(
        tuple.to_string(),
        format!("udp {A_IP}:{sport} -> {B_IP}:53")
    );
    assert_eq!(path.end, PathEnd::Final);
    assert_eq!(path.chains(), ["INPUT", "HR-POLICY"]);
    assert_eq!(path.steps.len(), 2, "{path:#?}");
    let jump = &path.steps[0];
    assert_eq!((jump.family, jump.table.as_str()), (Family::Ip, "filter"));
    assert_eq!(jump.verdict, Verdict::Jump("HR-POLICY".to_owned()));
    let jump_rule = jump.rule.as_ref().expect("the jump names its rule");
    assert_eq!(jump_rule.text, "-p udp -m udp --dport 53 -j HR-POLICY");
    let drop = path.decided().expect("a step decided");
    assert_eq!(drop, &path.steps[1]);
    assert_eq!(
        (drop.table.as_str(), drop.chain.as_str()),
        ("filter", "HR-POLICY")
    );
    assert_eq!(drop.verdict, Verdict::Drop);
    assert!(!drop.policy);
    let rule = drop.rule.as_ref().expect("the drop names its rule");
    assert_eq!(rule.comment.as_deref(), Some("hr drop dns"));
    assert!(rule.text.ends_with("-j DROP"), "{}", rule.text);
    assert!(
        path.steps
            .iter()
            .all(|s| s.id == path.id && s.tuple == path.tuple)
    );

    // Tracer's own prerouting chain reports its rule, its end (kernel 6.18; not every kernel
    // does) and its policy; the node's rules 2 more. Nothing malformed or lost.
    assert!(matches!(counters.own, 2 | 3), "{counters:?}");
    assert_eq!(counters.messages, counters.own + 2, "{counters:?}");
    assert_eq!(u64::from(path.messages), counters.messages);
    assert_eq!(
        (counters.malformed, counters.lost, counters.unknown_rules),
        (0, 0, 0)
    );
    assert_eq!(counters.paths, 1);

    assert_eq!(stateless_ruleset(), before, "the ruleset changed");
    assert!(leftovers_b().is_empty());
}

// Scenario: a burst of DNS queries from one socket, each dropped in the custom chain: one path
// per packet (a drop completes a path, so reused trace ids do not merge packets), none lost.
#[test]
fn a_burst_of_dropped_dns_packets_gives_one_path_each() {
    const BURST: usize = 500;
    let _ns = NsPair::up();
    drop_in_custom_chain("iptables-nft");

    let (paths, counters) = in_ns(B, || {
        let mut trace = RuleTrace::start(Options::default()).expect("start the rule trace");
        in_ns(A, || {
            let socket = UdpSocket::bind(SocketAddr::from((A_IP, 0))).expect("bind in hr-rt-a");
            for _ in 0..BURST {
                socket
                    .send_to(b"hr ruletrace", SocketAddr::from((B_IP, 53)))
                    .expect("send from hr-rt-a");
            }
        });
        let started = std::time::Instant::now();
        let mut paths = Vec::new();
        while paths.len() < BURST && started.elapsed() < Duration::from_secs(5) {
            paths.extend(trace.wait(Duration::from_millis(500)).expect("wait"));
        }
        paths.extend(trace.flush().expect("flush"));
        eprintln!(
            "{} paths read in {:?}: {:?}",
            paths.len(),
            started.elapsed(),
            trace.counters()
        );
        (paths, trace.counters())
    });

    assert_eq!(paths.len(), BURST);
    for path in &paths {
        assert_eq!(path.end, PathEnd::Final);
        assert_eq!(path.chains(), ["INPUT", "HR-POLICY"]);
        let rule = path
            .decided()
            .and_then(|s| s.rule.as_ref())
            .expect("a rule decided");
        assert_eq!(rule.comment.as_deref(), Some("hr drop dns"));
    }
    assert_eq!((counters.lost, counters.malformed), (0, 0), "{counters:?}");
    assert_eq!(counters.paths, BURST as u64);
    assert_eq!(counters.messages % BURST as u64, 0, "{counters:?}");
    assert_eq!(counters.messages, counters.own + 2 * BURST as u64);
}

// Scenario: accepted DNS queries from one socket, 2 ms apart (each skb freed before the next is
// allocated): one path per packet, though the kernel's trace id hashes the skb's address.
#[test]
fn a_burst_of_accepted_dns_packets_gives_one_path_each() {
    const BURST: usize = 200;
    let _ns = NsPair::up();
    iptables_b("-A INPUT -p udp --dport 54 -j ACCEPT");

    let (paths, counters, received) = in_ns(B, || {
        let server = UdpSocket::bind(SocketAddr::from((B_IP, 53))).expect("bind in hr-rt-b");
        server.set_nonblocking(true).expect("non-blocking");
        let mut trace = RuleTrace::start(Options::default()).expect("start the rule trace");
        in_ns(A, || {
            let socket = UdpSocket::bind(SocketAddr::from((A_IP, 0))).expect("bind in hr-rt-a");
            for _ in 0..BURST {
                socket
                    .send_to(b"hr ruletrace", SocketAddr::from((B_IP, 53)))
                    .expect("send from hr-rt-a");
                std::thread::sleep(Duration::from_millis(2));
            }
        });
        let paths = collect(&mut trace);
        let mut buf = [0u8; 64];
        let received = std::iter::from_fn(|| server.recv(&mut buf).ok()).count();
        (paths, trace.counters(), received)
    });

    assert_eq!(received, BURST, "every query arrived");
    assert_eq!(paths.len(), BURST, "{counters:?}");
    assert!(
        paths
            .iter()
            .all(|p| p.steps.len() == 1 && p.decided().is_some_and(|s| s.policy))
    );
    assert_eq!((counters.lost, counters.malformed), (0, 0), "{counters:?}");
}

// Scenario: the custom chain has no rule for the packet and returns; the commented rule in
// INPUT after the jump drops it.
#[test]
fn return_from_a_chain_then_the_input_rule_drops() {
    let _ns = NsPair::up();
    iptables_b("-N HR-POLICY");
    iptables_b("-A HR-POLICY -s 10.99.0.0/16 -j ACCEPT");
    iptables_b("-A INPUT -p udp --dport 53 -j HR-POLICY");
    iptables_b("-A INPUT -p udp --dport 53 -m comment --comment 'hr drop dns' -j DROP");

    let (paths, counters, _) = trace_one_dns_packet();

    assert_eq!(paths.len(), 1, "{paths:#?}");
    let steps: Vec<(&str, &Verdict, bool)> = paths[0]
        .steps
        .iter()
        .map(|s| (s.chain.as_str(), &s.verdict, s.rule.is_some()))
        .collect();
    let jump = Verdict::Jump("HR-POLICY".to_owned());
    assert_eq!(
        steps,
        [
            ("INPUT", &jump, true),
            ("HR-POLICY", &Verdict::Return, false),
            ("INPUT", &Verdict::Drop, true),
        ]
    );
    let decided = paths[0].decided().expect("a step decided");
    let rule = decided.rule.as_ref().expect("the drop names its rule");
    assert_eq!(rule.comment.as_deref(), Some("hr drop dns"));
    // The jump, the custom chain's end, the drop; and tracer's own chain.
    assert_eq!(counters.messages, counters.own + 3, "{counters:?}");
    assert_eq!((counters.malformed, counters.lost), (0, 0));
}

// Scenario: no rule drops DNS; the packet still reaches a socket (tracing changes no fate) and
// its path ends with filter INPUT's policy.
#[test]
fn accepted_dns_is_delivered_and_its_path_ends_with_the_policy() {
    let _ns = NsPair::up();
    iptables_b("-A INPUT -p udp --dport 54 -j ACCEPT");

    let (paths, received) = in_ns(B, || {
        let server = UdpSocket::bind(SocketAddr::from((B_IP, 53))).expect("bind in hr-rt-b");
        server
            .set_read_timeout(Some(Duration::from_secs(2)))
            .expect("read timeout");
        let mut trace = RuleTrace::start(Options::default()).expect("start the rule trace");
        send_from_a(53);
        let mut buf = [0u8; 64];
        let received = server.recv(&mut buf).map(|n| buf[..n].to_vec());
        (collect(&mut trace), received)
    });

    assert_eq!(received.expect("the DNS datagram arrived"), b"hr ruletrace");
    assert_eq!(paths.len(), 1, "{paths:#?}");
    let path = &paths[0];
    assert_ne!(path.end, PathEnd::Final);
    assert_eq!(path.steps.len(), 1, "{path:#?}");
    let decided = path.decided().expect("a step decided");
    assert_eq!(
        (decided.chain.as_str(), &decided.verdict),
        ("INPUT", &Verdict::Accept)
    );
    assert!(decided.policy && decided.rule.is_none());
}

// Scenario: a query sent from the traced namespace itself, dropped by filter OUTPUT: the output
// hook is traced too, and the sender sees the drop (EPERM) as it would without the trace.
#[test]
fn a_local_query_dropped_in_output_names_the_output_rule() {
    let _ns = NsPair::up();
    iptables_b("-A OUTPUT -p udp --dport 53 -m comment --comment 'hr drop local dns' -j DROP");

    let (paths, sent) = in_ns(B, || {
        let mut trace = RuleTrace::start(Options::default()).expect("start the rule trace");
        let socket = UdpSocket::bind(SocketAddr::from((B_IP, 0))).expect("bind in hr-rt-b");
        let sent = socket.send_to(b"hr ruletrace", SocketAddr::from((A_IP, 53)));
        (collect(&mut trace), sent)
    });

    let err = sent.expect_err("filter OUTPUT drops the query");
    assert_eq!(err.raw_os_error(), Some(libc::EPERM), "{err}");
    assert_eq!(paths.len(), 1, "{paths:#?}");
    let path = &paths[0];
    assert_eq!(
        path.tuple.map(|t| (t.src, t.dport)),
        Some((B_IP.into(), 53))
    );
    let decided = path.decided().expect("a step decided");
    assert_eq!(
        (decided.chain.as_str(), &decided.verdict),
        ("OUTPUT", &Verdict::Drop)
    );
    let rule = decided.rule.as_ref().expect("the drop names its rule");
    assert_eq!(rule.comment.as_deref(), Some("hr drop local dns"));
    assert_eq!(path.steps.len(), 1, "{path:#?}");
}

// Scenario: a trace's Drop never runs (forgotten) and its table stays. While its process lives
// the table is its owner's and the next start is refused; once the owner is a process that is gone
// (the table a killed run leaves, its comment naming a reaped child), the next start removes it
// first, and that trace's drop leaves the ruleset as it was before either.
#[test]
fn a_killed_traces_table_is_removed_by_the_next_start() {
    let _ns = NsPair::up();
    iptables_b("-A INPUT -p udp --dport 53 -j DROP");
    let before = ns_run(B, "nft", &["list", "ruleset"]);

    in_ns(B, || {
        let killed = RuleTrace::start(Options::default()).expect("start the first trace");
        std::mem::forget(killed);
    });
    assert_eq!(leftovers_b(), ["nft table inet tracer_rules"]);
    assert_ne!(ns_run(B, "nft", &["list", "ruleset"]), before);
    let busy = in_ns(B, || RuleTrace::start(Options::default()).err());
    assert!(
        matches!(busy, Some(ruletrace::Error::Busy { pid }) if pid == std::process::id()),
        "a live owner's table is not taken: {busy:?}"
    );

    // The same table as a killed run leaves it: owned by a process that has exited.
    let mut gone = std::process::Command::new("true")
        .spawn()
        .expect("spawn true");
    let dead = gone.id();
    gone.wait().expect("reap true");
    let listing = ns_run(B, "nft", &["list", "table", "inet", "tracer_rules"]);
    let owned = listing.replace(
        &format!("pid={}", std::process::id()),
        &format!("pid={dead}"),
    );
    assert_ne!(owned, listing, "the table names its owner: {listing}");
    let script = std::env::temp_dir().join(format!("hr-rt-killed-{}.nft", std::process::id()));
    std::fs::write(&script, format!("delete table inet tracer_rules\n{owned}")).expect("write");
    ns_run(B, "nft", &["-f", &script.to_string_lossy()]);
    std::fs::remove_file(&script).expect("remove the script");

    let trace = in_ns(B, || {
        let trace = RuleTrace::start(Options::default()).expect("start the second trace");
        assert!(trace.removed_leftover());
        assert_eq!(
            ruletrace::leftovers().expect("leftovers"),
            ["nft table inet tracer_rules"]
        );
        trace
    });
    // Dropped on a thread in the other namespace: it deletes in its own.
    in_ns(A, move || drop(trace));
    assert!(leftovers_b().is_empty());
    assert_eq!(ns_run(B, "nft", &["list", "ruleset"]), before);
}

// Not a scenario: writes tests/fixtures/ruletrace/ for the unit tests of tracer::ruletrace (the
// first scenario's trace messages, one netlink message per line in hex, with its ruleset as
// `nft -j list ruleset` and `iptables-nft-save` print it while the trace runs). Run:
// cargo test --release -p tracer --test ruletrace -- --ignored capture_fixtures
#[test]
#[ignore]
fn capture_fixtures() {
    use netlink_sys::{Socket, protocols::NETLINK_NETFILTER};

    let _ns = NsPair::up();
    drop_in_custom_chain("iptables-nft");
    let (hex, json, save) = in_ns(B, || {
        let mut raw = Socket::new(NETLINK_NETFILTER).expect("netlink socket");
        raw.bind_auto().expect("bind");
        raw.add_membership(9).expect("join NFNLGRP_NFTRACE");
        let mut trace = RuleTrace::start(Options::default()).expect("start the rule trace");
        send_from_a(53);
        assert_eq!(collect(&mut trace).len(), 1);
        let json = ns_run(B, "nft", &["-j", "list", "ruleset"]);
        let save = ns_run(B, "iptables-nft-save", &[]);
        raw.set_non_blocking(true).expect("non-blocking");
        let mut hex = String::new();
        let mut buf = vec![0u8; 65536];
        while let Ok(n) = raw.recv(&mut &mut buf[..], 0) {
            hex.extend(buf[..n].iter().map(|b| format!("{b:02x}")));
            hex.push('\n');
        }
        (hex, json, save)
    });
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../tests/fixtures/ruletrace");
    std::fs::create_dir_all(dir).expect("fixture directory");
    let header =
        "# NFT_MSG_TRACE messages, one per line in hex (tests/ruletrace.rs capture_fixtures)\n";
    std::fs::write(
        format!("{dir}/drop-in-jumped-chain.hex"),
        format!("{header}{hex}"),
    )
    .expect("write the messages");
    std::fs::write(format!("{dir}/nft-j-list-ruleset.json"), json).expect("write the ruleset");
    // Without the generated-on date lines: the fixture changes only when the rules do.
    let save: String = save
        .lines()
        .filter(|l| !l.starts_with('#'))
        .map(|l| format!("{l}\n"))
        .collect();
    std::fs::write(format!("{dir}/iptables-nft-save.txt"), save).expect("write the save");
}

/// The legacy tables' rules in `hr-rt-b` as `(raw table, every other table)`, without counters
/// and comments, and its IPv4 logger (`/proc/sys/net/netfilter/nf_log/2`).
fn legacy_state() -> (String, String, String) {
    let (mut raw, mut other) = (String::new(), String::new());
    let mut in_raw = false;
    for line in ns_run(B, "iptables-legacy-save", &[]).lines() {
        if line.starts_with('#') {
            continue;
        }
        if let Some(table) = line.strip_prefix('*') {
            in_raw = table == "raw";
        }
        let line = match (line.starts_with(':'), line.rfind(" [")) {
            (true, Some(i)) => &line[..i],
            _ => line,
        };
        let out = if in_raw { &mut raw } else { &mut other };
        out.push_str(line);
        out.push('\n');
    }
    let logger = in_ns(B, || {
        std::fs::read_to_string("/proc/sys/net/netfilter/nf_log/2")
    })
    .expect("read the IPv4 logger");
    (raw, other, logger)
}

// Scenario: the first scenario's drop in a custom chain, in legacy iptables, traced with
// xtables' TRACE over nfnetlink_log: the path names raw PREROUTING's policy (tracer's TRACE rules
// are there), the legacy filter table, both chains and the commented rule; nothing but the
// (now empty) raw table stays behind, and the IPv4 logger is given back.
#[test]
fn legacy_drop_in_a_jumped_to_chain_names_the_commented_rule() {
    let _ns = NsPair::up();
    drop_in_custom_chain("iptables-legacy");
    let (raw_before, before, logger_before) = legacy_state();
    assert_eq!(raw_before, "", "a fresh namespace has no legacy raw table");

    let (paths, counters, sport) = in_ns(B, || {
        let mut trace = LegacyTrace::start(Options::default()).expect("start the legacy trace");
        assert!(!trace.removed_leftover());
        let sport = send_from_a(53);
        send_from_a(54);
        let mut paths = trace.wait(Duration::from_secs(3)).expect("wait for paths");
        std::thread::sleep(Duration::from_millis(300));
        paths.extend(trace.flush().expect("flush paths"));
        (paths, trace.counters(), sport)
    });

    assert_eq!(paths.len(), 1, "{paths:#?}");
    let path = &paths[0];
    let tuple = path.tuple.expect("the packet's headers");
    assert_eq!(
        tuple.to_string(),
        format!("udp {A_IP}:{sport} -> {B_IP}:53")
    );
    assert_eq!(path.end, PathEnd::Final);
    assert_eq!(path.chains(), ["PREROUTING", "INPUT", "HR-POLICY"]);
    let tables: Vec<&str> = path.steps.iter().map(|s| s.table.as_str()).collect();
    assert_eq!(tables, ["raw", "filter", "filter"]);
    assert!(path.steps[0].policy && path.steps[0].verdict == Verdict::Accept);
    assert_eq!(path.steps[1].verdict, Verdict::Jump("HR-POLICY".to_owned()));
    let drop = path.decided().expect("a step decided");
    assert_eq!(
        (drop.chain.as_str(), &drop.verdict),
        ("HR-POLICY", &Verdict::Drop)
    );
    let rule = drop.rule.as_ref().expect("the drop names its rule");
    assert_eq!(rule.handle, 1, "legacy rules are named by position");
    assert_eq!(rule.comment.as_deref(), Some("hr drop dns"));
    // One message per matched rule or policy; tracer's TRACE rule itself sends none.
    assert_eq!(counters.messages, 3, "{counters:?}");
    assert_eq!((counters.own, counters.malformed, counters.lost), (0, 0, 0));

    let (raw_after, after, logger_after) = legacy_state();
    assert_eq!(after, before, "the legacy ruleset changed");
    assert!(!raw_after.contains("-A "), "{raw_after}");
    assert_eq!(logger_after, logger_before);
    assert!(leftovers_b().is_empty());
}

// Scenario: a legacy trace is killed and leaves its 8 TRACE rules; the next start removes them
// first, and its drop leaves none.
#[test]
fn a_killed_legacy_traces_rules_are_removed_by_the_next_start() {
    let _ns = NsPair::up();
    drop_in_custom_chain("iptables-legacy");
    let (_, before, logger_before) = legacy_state();

    in_ns(B, || {
        let killed = LegacyTrace::start(Options::default()).expect("start the first trace");
        // A killed process runs no Drop, and the kernel closes its sockets (which frees nflog
        // group 0 for the next start).
        let fd = killed.as_fd().as_raw_fd();
        std::mem::forget(killed);
        // SAFETY: the forgotten trace's socket, closed once, never used again.
        unsafe { libc::close(fd) };
    });
    let left = leftovers_b();
    assert_eq!(left.len(), 8, "{left:#?}");
    assert!(
        left.iter()
            .all(|l| l.starts_with("iptables-legacy -t raw -A "))
    );

    let trace = in_ns(B, || {
        let trace = LegacyTrace::start(Options::default()).expect("start the second trace");
        assert!(trace.removed_leftover());
        assert_eq!(ruletrace::leftovers().expect("leftovers").len(), 8);
        trace
    });
    in_ns(A, move || drop(trace));
    assert!(leftovers_b().is_empty());
    let (raw_after, after, logger_after) = legacy_state();
    assert_eq!(after, before);
    assert!(!raw_after.contains("-A "), "{raw_after}");
    assert_eq!(logger_after, logger_before);
}
