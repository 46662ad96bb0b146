//! `tracer fleet` on node reports of real labs, as an SRE collects them: three labs stand for
//! three nodes of one cluster (fl1 and fl2 healthy on iptables-nft, fl3 on iptables-legacy with a
//! DROP rule in front of the DNS pods, the seed story's odd subnet), each reports with `probe
//! --report` or `inspect --report`, then `fleet` reads the directory. Scenario: the odd node must
//! be named first with the backend reason and exit code 8, the healthy nodes never flagged, one
//! row per report; the agreeing nodes alone exit 0 with no flag; a fourth lab with the
//! `mixed-backend` fault is flagged as mixed. Run as root, one test at a time.

mod common;

use std::{
    path::{Path, PathBuf},
    process::{Command, Output},
};

use common::{LabGuard, leftovers};
use tracer::{
    lab::FaultName,
    node::Backend,
    report::fleet::{Fleet, Rule},
};

/// The labs: two healthy nft nodes, the legacy node with DNS loss, a mixed-backend node.
const PREFIXES: [&str; 4] = ["fl1", "fl2", "fl3", "fl4"];

fn tracer(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_tracer"))
        .args(args)
        .env("RUST_LOG", "warn")
        .output()
        .expect("run tracer")
}

/// Runs `args`, asserting it exits with `code`; returns stdout.
fn run(args: &[&str], code: i32) -> String {
    let out = tracer(args);
    assert_eq!(
        out.status.code(),
        Some(code),
        "tracer {}: stdout:\n{}\nstderr:\n{}",
        args.join(" "),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("utf-8")
}

/// `tracer fleet ARGS --output json` with its exit code asserted.
fn fleet(args: &[&str], code: i32) -> Fleet {
    let mut all = vec!["fleet"];
    all.extend_from_slice(args);
    all.extend(["--output", "json"]);
    let text = run(&all, code);
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("fleet printed no fleet ({e}): {text}"))
}

/// A scratch directory removed when dropped.
struct Scratch(PathBuf);

impl Scratch {
    fn new(name: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("tracer-fleet-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("scratch dir");
        Self(dir)
    }
    fn path(&self, name: &str) -> String {
        self.0.join(name).to_string_lossy().into_owned()
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// `probe --lab --report` (untraced: the loss is what fleet reads).
fn probe_report(prefix: &str, path: &str) {
    run(
        &[
            "probe",
            "--lab",
            "--prefix",
            prefix,
            "--no-trace",
            "--count",
            "40",
            "--rate",
            "100",
            "--timeout",
            "0.5",
            "--report",
            path,
        ],
        0,
    );
}

/// `inspect --lab --report`.
fn inspect_report(prefix: &str, path: &str) {
    run(
        &["inspect", "--lab", "--prefix", prefix, "--report", path],
        0,
    );
}

/// A copy of the report at `from`, its kernel release replaced, written to `to`.
fn with_kernel(from: &str, to: &Path, kernel: &str) {
    let mut v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(from).expect("read report")).expect("json");
    v["kernel"] = kernel.into();
    v["node"]["kernel"] = kernel.into();
    std::fs::write(to, serde_json::to_string_pretty(&v).expect("encode")).expect("write copy");
}

#[test]
fn the_node_on_another_backend_is_named_first_and_agreeing_nodes_pass() {
    for p in PREFIXES {
        assert!(leftovers(p).is_empty(), "{p} is in use: {:?}", leftovers(p));
    }
    let dir = Scratch::new("nodes");
    {
        let _fl1 = LabGuard::up("fl1", Backend::Nft);
        let _fl2 = LabGuard::up("fl2", Backend::Nft);
        let mut fl3 = LabGuard::up("fl3", Backend::Legacy);
        let mut fl4 = LabGuard::up("fl4", Backend::Nft);
        fl3.fault(FaultName::FilterDrop, None);
        fl4.fault(FaultName::MixedBackend, None);
        probe_report("fl1", &dir.path("fl1.json"));
        // An inspect report: no probe, so its DNS loss is "-".
        inspect_report("fl2", &dir.path("fl2.json"));
        probe_report("fl3", &dir.path("fl3.json"));
        // Out of the directory: the mixed node is read on its own fleet below.
        inspect_report("fl4", &format!("{}.fl4", dir.path("mixed")));
    }
    for p in PREFIXES {
        assert_eq!(leftovers(p), Vec::<String>::new(), "lab {p} left these");
    }
    let reports = std::fs::read_dir(&dir.0)
        .expect("list")
        .filter(|e| {
            e.as_ref()
                .unwrap()
                .path()
                .extension()
                .is_some_and(|x| x == "json")
        })
        .count();
    assert_eq!(reports, 3);

    // The three nodes: fl3 is odd out, on its backend, first.
    let dir_arg = dir.0.to_string_lossy().into_owned();
    let f = fleet(&[&dir_arg], 8);
    assert_eq!(f.rows.len(), reports, "one row per report: {f:#?}");
    let names: Vec<&str> = f.rows.iter().map(|r| r.node.as_str()).collect();
    // Lab nodes share the machine's host name: the file stems tell them apart.
    assert_eq!(names, ["fl1", "fl2", "fl3"]);
    assert!(!f.agrees);
    let first = &f.flags[0];
    assert_eq!(
        (first.node.as_str(), first.rule),
        ("fl3", Rule::Backend),
        "{f:#?}"
    );
    assert_eq!(first.reason, "backend legacy, 2 of 3 nodes use nft");
    assert_eq!(
        f.odd_nodes(),
        ["fl3"],
        "the healthy nodes are not flagged: {f:#?}"
    );
    let loss = |n: usize| f.rows[n].dns_loss_percent;
    assert_eq!(loss(0), Some(0.0), "fl1 answered every query: {f:#?}");
    assert_eq!(loss(1), None, "fl2's report is an inspect report");
    assert!(
        loss(2).is_some_and(|l| l > 50.0),
        "filter-drop loses fl3's queries: {f:#?}"
    );

    // The text: the table, then the finding; main names the odd node on stderr.
    let out = tracer(&["fleet", &dir_arg]);
    assert_eq!(out.status.code(), Some(8));
    let text = String::from_utf8_lossy(&out.stdout);
    // Shown with --nocapture: README's example.
    println!("{text}");
    assert!(text.contains("1 of 3 nodes odd out"), "{text}");
    assert!(
        text.contains("  fl3: backend legacy, 2 of 3 nodes use nft"),
        "{text}"
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("fleet: 1 of 3 nodes odd out: fl3"),
        "{stderr}"
    );

    // The agreeing nodes alone: exit 0, no flag.
    let (fl1, fl2) = (dir.path("fl1.json"), dir.path("fl2.json"));
    let ok = fleet(&[&fl1, &fl2], 0);
    assert_eq!(
        (ok.rows.len(), ok.flags.len(), ok.agrees),
        (2, 0, true),
        "{ok:#?}"
    );
    let text = run(&["fleet", &fl1, &fl2], 0);
    assert!(text.contains("the 2 nodes agree"), "{text}");

    // A mixed node is flagged though the others' backend is the majority's.
    let mixed = format!("{}.fl4", dir.path("mixed"));
    let mixed_json = dir.path("fl4.json");
    std::fs::rename(&mixed, &mixed_json).expect("rename");
    let m = fleet(&[&fl1, &fl2, &mixed_json], 8);
    assert_eq!(m.odd_nodes(), ["fl4"], "{m:#?}");
    assert_eq!(m.flags[0].rule, Rule::Backend);
    assert!(
        m.flags[0].reason.starts_with("backend mixed")
            && m.flags[0].reason.ends_with("2 of 3 nodes use nft"),
        "{m:#?}"
    );

    // The kernel rule needs nodes on different kernels, which labs on one machine cannot be:
    // fl3's real report with its kernel release edited stands for a node on another kernel.
    let other = Scratch::new("kernel");
    with_kernel(
        &dir.path("fl3.json"),
        &other.0.join("fl3.json"),
        "5.10.0-fake",
    );
    let k = fleet(&[&fl1, &fl2, &other.path("fl3.json")], 8);
    let rules: Vec<Rule> = k.flags.iter().map(|f| f.rule).collect();
    assert_eq!(rules, [Rule::Backend, Rule::KernelAndLoss], "{k:#?}");
    let kernel = &k.flags[1];
    assert_eq!(kernel.node, "fl3");
    assert!(
        kernel
            .reason
            .starts_with("kernel 5.10.0-fake, 2 of 3 nodes run ")
            && kernel.reason.contains("DNS loss")
            && kernel.reason.ends_with("0.0 % on those"),
        "{k:#?}"
    );
}
