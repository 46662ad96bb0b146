//! `tracer probe` with the tracer alongside, versioned reports and `tracer compare`, against the
//! lab. Run as root, one test at a time (`--test-threads=1`).

mod common;

use std::{
    net::{IpAddr, Ipv4Addr, SocketAddr},
    path::PathBuf,
    process::{Command, Output},
};

use common::{LabGuard, batch};
use tracer::{
    flow::record::Stage,
    lab::FaultName,
    node::Backend,
    report::{
        compare::{Thresholds, compare},
        document::{self, Document, ProbeReport, SCHEMA_VERSION},
    },
    trace::{Settings, Target, Traced, traced_batch},
};

const DNS0: IpAddr = IpAddr::V4(Ipv4Addr::new(10, 244, 0, 10));
const TRACER: &str = env!("CARGO_BIN_EXE_tracer");

/// A file in the temporary directory, removed when dropped.
struct TempFile(PathBuf);

impl TempFile {
    fn new(name: &str) -> Self {
        Self(std::env::temp_dir().join(format!("trr-{}-{name}", std::process::id())))
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// 100 lookups from client0 with the tracer alongside; returns the probe report and the trace.
fn probe(lab: &LabGuard) -> (ProbeReport, Traced) {
    let spec = batch(100);
    let server = SocketAddr::from((lab.info.service_ip, lab.info.dns_port));
    let target = Target::lab(&lab.info).expect("lab target");
    let settings = Settings {
        timeout: spec.timeout,
        ..Settings::default()
    };
    let client = &lab.info.clients[0].netns;
    let traced = traced_batch(
        Some(client),
        server,
        &spec,
        Some((target, settings)),
        &indicatif::ProgressBar::hidden(),
    )
    .expect("traced probe");
    let report = ProbeReport::new(
        client,
        server,
        &spec,
        &traced.result,
        traced.summary.as_ref(),
        &traced.records,
    );
    assert!(
        report.traced && report.tier.is_some(),
        "the tracer ran alongside"
    );
    (report, traced)
}

/// Writes a probe report as `tracer probe --report` does.
fn write_report(file: &TempFile, report: ProbeReport, traced: Traced) {
    let mut doc = Document::new("probe").expect("new report");
    doc = doc.with_trace(traced.summary.expect("traced"), &traced.records);
    doc.probe = Some(report);
    doc.write(&file.0).expect("write report");
}

fn tracer(args: &[&str]) -> Output {
    Command::new(TRACER)
        .args(args)
        .output()
        .expect("run tracer")
}

fn path(f: &TempFile) -> &str {
    f.0.to_str().expect("utf-8 temp path")
}

/// Thresholds with the latency check out of the way: on this shared 2-core machine p99 latency
/// moves with whatever else runs, and these tests are about loss and drops.
fn loss_only() -> Thresholds {
    Thresholds {
        min_p99_increase_ms: 10_000.0,
        ..Thresholds::default()
    }
}

// Scenario: probe the healthy lab twice, then with a DROP for one of the two endpoints. Healthy:
// nothing lost, and the two healthy reports compare clean. Faulty: about half lost, every loss
// attributed to dns0 and netfilter, and compare flags the regression (exit code 3).
#[test]
fn probe_attributes_every_loss_and_compare_flags_the_fault() {
    for backend in [Backend::Nft, Backend::Legacy] {
        let mut lab = LabGuard::up("trr1", backend);
        let (healthy, traced) = probe(&lab);
        assert_eq!(
            (healthy.sent, healthy.lost),
            (100, 0),
            "{backend:?}: {healthy:?}"
        );
        assert_eq!(healthy.rcodes.get("NoError"), Some(&100), "{backend:?}");
        let before = TempFile::new("before.json");
        write_report(&before, healthy, traced);
        let (healthy2, traced2) = probe(&lab);
        assert_eq!(healthy2.lost, 0, "{backend:?}: {healthy2:?}");
        let again = TempFile::new("again.json");
        write_report(&again, healthy2, traced2);

        lab.fault(FaultName::FilterDrop, Some(0));
        let (faulty, traced) = probe(&lab);
        assert!(
            (20.0..=80.0).contains(&faulty.loss_percent),
            "{backend:?}: one endpoint of two drops, lost {} %",
            faulty.loss_percent
        );
        assert_eq!(
            faulty.unattributed, 0,
            "{backend:?}: every loss has a trace record"
        );
        assert_eq!(faulty.lost_queries.len() as u32, faulty.lost);
        for q in &faulty.lost_queries {
            let r = q.trace.as_ref().expect("matched by source port and id");
            assert_eq!((r.client.port(), r.id), (q.source_port, q.id));
            assert_eq!(r.endpoint, Some(DNS0), "{backend:?}: sent to dns0: {r:?}");
            let d = r.drop.as_ref().expect("a drop");
            assert_eq!(
                (d.stage, d.reason.as_str()),
                (Stage::Netfilter, "NETFILTER_DROP"),
                "{d:?}"
            );
        }
        assert_eq!(
            faulty.lost_by_endpoint.keys().collect::<Vec<_>>(),
            vec!["10.244.0.10"]
        );
        let after = TempFile::new("after.json");
        write_report(&after, faulty, traced);

        // Round trip: what was written reads back, and compares.
        let (b, a, g) = (
            Document::read(&before.0).expect("read before"),
            Document::read(&after.0).expect("read after"),
            Document::read(&again.0).expect("read again"),
        );
        assert_eq!(b.schema_version, SCHEMA_VERSION);
        assert_eq!(
            a.probe.as_ref().map(|p| p.lost_queries.len()),
            Some(a.failed_queries.len())
        );
        let clean = compare(&before.0, &b, &again.0, &g, &loss_only());
        assert_eq!(
            clean.regressions,
            0,
            "{backend:?}: two healthy reports: {}",
            clean.text()
        );
        let flagged = compare(&before.0, &b, &after.0, &a, &loss_only());
        let names = flagged.regressed();
        assert!(
            names.contains(&"probe.loss_percent"),
            "{backend:?}: {names:?}"
        );
        assert!(
            names
                .iter()
                .any(|n| n.starts_with("probe.lost_by_cause[netfilter: NETFILTER_DROP")),
            "{backend:?}: {names:?}"
        );

        // The command: exit code 3 on a regression, 0 without.
        let out = tracer(&["compare", path(&before), path(&after)]);
        assert_eq!(out.status.code(), Some(3), "{backend:?}: {out:?}");
        assert!(
            String::from_utf8_lossy(&out.stderr).contains("regression"),
            "{out:?}"
        );
        let out = tracer(&[
            "compare",
            path(&before),
            path(&again),
            "--min-p99-increase-ms",
            "10000",
        ]);
        assert_eq!(out.status.code(), Some(0), "{backend:?}: {out:?}");
        let out = tracer(&["compare", path(&before), path(&after), "--output", "json"]);
        let json: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON comparison");
        assert!(json["regressions"].as_u64().unwrap_or(0) >= 2, "{json}");
    }
}

// Scenario: a report of another schema version is refused, naming both versions.
#[test]
fn other_schema_versions_are_refused_with_both_versions_named() {
    let doc = Document::new("inspect").expect("new report");
    let old = TempFile::new("old.json");
    let mut v = serde_json::to_value(&doc).expect("encode");
    v["schema_version"] = 0.into();
    std::fs::write(&old.0, v.to_string()).expect("write");
    let err = Document::read(&old.0).expect_err("version 0 is refused");
    assert!(
        matches!(err, document::Error::Version { found: 0, .. }),
        "{err:?}"
    );
    let current = TempFile::new("current.json");
    doc.write(&current.0).expect("write");
    let out = tracer(&["compare", path(&old), path(&current)]);
    assert_eq!(
        out.status.code(),
        Some(1),
        "an error, not a regression: {out:?}"
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("schema version 0")
            && stderr.contains(&format!("version {SCHEMA_VERSION}")),
        "{stderr}"
    );
}

// Scenario: `--report` on probe, trace and inspect writes reports that read back and compare.
#[test]
fn probe_trace_and_inspect_reports_round_trip() {
    let lab = LabGuard::up("trr2", Backend::Nft);
    let prefix = lab.info.prefix.as_str();
    let (p, t, i) = (
        TempFile::new("p.json"),
        TempFile::new("t.json"),
        TempFile::new("i.json"),
    );
    let out = tracer(&[
        "probe",
        "--lab",
        "--prefix",
        prefix,
        "--count",
        "50",
        "--rate",
        "200",
        "--timeout",
        "1",
        "--report",
        path(&p),
    ]);
    assert!(out.status.success(), "{out:?}");
    let out = tracer(&["inspect", "--lab", "--prefix", prefix, "--report", path(&i)]);
    assert!(out.status.success(), "{out:?}");
    let out = tracer(&[
        "trace",
        "--lab",
        "--prefix",
        prefix,
        "--duration",
        "1",
        "--report",
        path(&t),
    ]);
    assert!(out.status.success(), "{out:?}");
    for (file, command) in [(&p, "probe"), (&t, "trace"), (&i, "inspect")] {
        let doc = Document::read(&file.0).unwrap_or_else(|e| panic!("{command}: {e}"));
        assert_eq!(doc.command, command);
        let node = doc.node.as_ref().expect("node facts from inspect");
        assert_eq!(node.iptables_backend, "nft", "{command}");
        assert!(
            node.dns_service
                .as_deref()
                .is_some_and(|s| s.starts_with("10.96.0.10:53")),
            "{command}"
        );
        assert!(!doc.kernel.is_empty() && !doc.created.is_empty());
    }
    let probe = Document::read(&p.0).expect("probe report");
    let pr = probe.probe.as_ref().expect("probe result");
    assert_eq!((pr.sent, pr.lost), (50, 0), "{pr:?}");
    assert!(
        probe.trace.is_some() && probe.tier.is_some(),
        "traced alongside"
    );
    assert!(Document::read(&t.0).expect("trace report").trace.is_some());
    let out = tracer(&["compare", path(&p), path(&p)]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "a report against itself: {out:?}"
    );
    let out = tracer(&["compare", path(&i), path(&t)]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "reports of different commands compare; what only one measured is not judged: {out:?}"
    );
}
