//! Bad input to every command, through the real binary: each case must end with its documented
//! exit code (README: "Exit codes") and a one-line message naming what was wrong, never a panic or
//! a backtrace (RUST_BACKTRACE=1 is set to show that none is printed even when asked for).
//! Scenario: run `tracer ARGS`, read its exit status and stderr. Nothing is created: the lab
//! prefix `hb9` is never brought up, and the namespaces named do not exist.

use std::{
    os::unix::fs::PermissionsExt as _,
    path::{Path, PathBuf},
    process::{Command, Output},
};

use tracer::report::document::{Document, SCHEMA_VERSION};

/// Usage errors: clap's own code.
const USAGE: i32 = 2;
/// Errors found while running.
const ERROR: i32 = 1;

/// A lab prefix that is never up.
const DOWN: &str = "hb9";

fn tracer(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_tracer"))
        .args(args)
        .env("RUST_BACKTRACE", "1")
        .env("RUST_LOG", "warn")
        .env_remove("TRACER_LAB_PREFIX")
        .env_remove("TRACER_VALIDATE_PREFIX")
        .output()
        .expect("run tracer")
}

/// Runs `args` and asserts the exit code, that stderr holds no panic or backtrace, and that the
/// error is one line starting `error:` that says `expect`; returns that line.
fn refused(args: &[&str], code: i32, expect: &str) -> String {
    let out = tracer(args);
    let stderr = String::from_utf8_lossy(&out.stderr);
    let what = format!(
        "tracer {}: exit {:?}, stderr:\n{stderr}",
        args.join(" "),
        out.status.code()
    );
    assert_eq!(out.status.code(), Some(code), "{what}");
    assert!(!stderr.contains("panicked"), "{what}");
    assert!(
        !stderr.contains("backtrace") && !stderr.contains("Caused by"),
        "{what}"
    );
    let errors: Vec<&str> = stderr.lines().filter(|l| l.starts_with("error:")).collect();
    assert_eq!(errors.len(), 1, "one error line: {what}");
    let line = errors[0];
    assert!(line.contains(expect), "expected {expect:?}: {what}");
    if code == ERROR {
        // Errors found while running end stderr; clap's usage errors add a usage hint after.
        assert_eq!(
            stderr.lines().last(),
            Some(line),
            "the error is the last line: {what}"
        );
    }
    line.to_owned()
}

/// A scratch directory removed when dropped.
struct Scratch(PathBuf);

impl Scratch {
    fn new(name: &str) -> Self {
        let dir =
            std::env::temp_dir().join(format!("tracer-badinput-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("scratch dir");
        Self(dir)
    }
    fn file(&self, name: &str, bytes: &[u8]) -> String {
        let p = self.0.join(name);
        std::fs::write(&p, bytes).expect("write scratch file");
        p.to_string_lossy().into_owned()
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A report this tracer wrote (an inspect report without node facts).
fn valid_report() -> String {
    let mut text = String::new();
    let dir = Scratch::new("valid");
    let path = dir.0.join("r.json");
    Document::new("inspect")
        .expect("document")
        .write(&path)
        .expect("write report");
    text.push_str(&std::fs::read_to_string(&path).expect("read report"));
    text
}

#[test]
fn malformed_addresses_and_ports_are_usage_errors() {
    for (args, expect) in [
        (&["trace", "--service", "10.96.0"][..], "bad address"),
        (&["trace", "--service", "10.96.0.10:99999"], "bad port"),
        (&["trace", "--service", "10.96.0.10:0"], "0 is not a port"),
        (
            &["trace", "--service", "[fd00:10:96::a]:0"],
            "0 is not a port",
        ),
        (&["trace", "--service", "kube-dns:53"], "bad address"),
        (&["trace", "--service", ""], "bad address"),
        (&["trace", "--pod-ip", "10.244.0.300"], "--pod-ip"),
        (&["trace", "--metrics", "127.0.0.1"], "--metrics"),
        (&["trace", "--metrics", "localhost:9745"], "--metrics"),
        (&["trace", "--metrics", "127.0.0.1:99999"], "--metrics"),
        (&["probe", "--server", "10.96.0.10:dns"], "bad port"),
        (&["probe", "--source-port", "0"], "--source-port"),
        (&["probe", "--source-port", "65536"], "--source-port"),
    ] {
        refused(args, USAGE, expect);
    }
}

#[test]
fn out_of_range_numbers_are_usage_errors() {
    for (args, expect) in [
        (&["trace", "--duration", "-1"][..], "out of range"),
        (&["trace", "--duration", "0"], "out of range"),
        // These two panicked before (a Duration from infinity).
        (&["trace", "--duration", "inf"], "out of range"),
        (&["trace", "--timeout", "nan"], "out of range"),
        (&["trace", "--duration", "1e300"], "out of range"),
        (&["trace", "--slow-ms", "-5"], "unexpected argument '-5'"),
        (&["trace", "--hooks", "kretprobe"], "--hooks"),
        (&["probe", "--rate", "0"], "out of range"),
        (&["probe", "--rate", "1e-300"], "out of range"),
        (&["probe", "--rate", "-50"], "out of range"),
        (&["probe", "--count", "0"], "--count"),
        (&["probe", "--count", "5000000000"], "--count"),
        (&["probe", "--timeout", "0"], "out of range"),
        (&["probe", "--duration", "nan"], "out of range"),
        (&["probe", "--type", "BOGUS"], "unknown query type"),
        (&["doctor", "--count", "0"], "--count"),
        (&["doctor", "--rate", "-1"], "out of range"),
        (&["doctor", "--timeout", "inf"], "out of range"),
        (&["doctor", "--server", "10.96.0.300"], "--server"),
        (
            &["compare", "--max-loss-increase", "nan", "a", "b"],
            "out of range",
        ),
        (
            &["compare", "--max-p99-increase-percent", "-1", "a", "b"],
            "out of range",
        ),
        (
            &["compare", "--max-drop-increase", "-1", "a", "b"],
            "unexpected argument '-1'",
        ),
        (
            &["lab", "--prefix", DOWN, "up", "--clients", "0"],
            "--clients",
        ),
        (
            &["lab", "--prefix", DOWN, "up", "--clients", "201"],
            "--clients",
        ),
        (
            &[
                "lab",
                "--prefix",
                DOWN,
                "fault",
                "filter-drop",
                "--pod",
                "2",
            ],
            "--pod",
        ),
        (
            &["lab", "--prefix", DOWN, "fault", "no-such-fault"],
            "no-such-fault",
        ),
        (&["validate", "--healthy-count", "0"], "--healthy-count"),
        (
            &["validate", "--vm-timeout", "0", "--kernel", "6.1"],
            "--vm-timeout",
        ),
        (
            &["vm", "run", "--kernel", "6.1", "--cpus", "0", "--", "true"],
            "--cpus",
        ),
        (
            &[
                "vm", "run", "--kernel", "6.1", "--memory", "1", "--", "true",
            ],
            "--memory",
        ),
        (
            &[
                "vm",
                "run",
                "--kernel",
                "6.1",
                "--timeout",
                "0",
                "--",
                "true",
            ],
            "--timeout",
        ),
        (
            &[
                "vm", "run", "--kernel", "6.1", "--env", "NOEQUALS", "--", "true",
            ],
            "NAME=VALUE",
        ),
        (&["no-such-command"], "no-such-command"),
    ] {
        refused(args, USAGE, expect);
    }
}

#[test]
fn unknown_namespaces_pods_and_labs_are_one_line_errors() {
    for (args, expect) in [
        (
            &[
                "trace",
                "--netns",
                "tracer-no-such-ns",
                "--service",
                "10.96.0.10",
                "--duration",
                "1",
            ][..],
            "failed to open network namespace /run/netns/tracer-no-such-ns",
        ),
        (
            &[
                "trace",
                "--links-netns",
                "tracer-no-such-ns",
                "--service",
                "10.96.0.10",
                "--duration",
                "1",
            ],
            "tracer-no-such-ns",
        ),
        (
            &["trace", "--lab", "--prefix", DOWN, "--duration", "1"],
            "lab hb9 is not up",
        ),
        (
            &["inspect", "--netns", "tracer-no-such-ns"],
            "failed to enter network namespace /run/netns/tracer-no-such-ns",
        ),
        (&["inspect", "--lab", "--prefix", DOWN], "lab hb9 is not up"),
        (
            &[
                "probe",
                "--netns",
                "tracer-no-such-ns",
                "--server",
                "127.0.0.1",
                "--no-trace",
                "--count",
                "1",
            ],
            "tracer-no-such-ns",
        ),
        (
            &[
                "probe",
                "--lab",
                "--prefix",
                DOWN,
                "--no-trace",
                "--count",
                "1",
            ],
            "hb9",
        ),
        (
            &[
                "probe",
                "--server",
                "127.0.0.1",
                "--name",
                "..bad..",
                "--no-trace",
                "--count",
                "1",
            ],
            "invalid query name",
        ),
        (
            &["lab", "--prefix", DOWN, "fault", "filter-drop"],
            "hb9 is down",
        ),
        (
            &["lab", "--prefix", DOWN, "pod", "add", "late"],
            "hb9 is down",
        ),
        (&["lab", "--prefix", DOWN, "pod", "del", "nosuch"], "hb9"),
        (
            &[
                "validate",
                "--prefix",
                DOWN,
                "--scenario",
                "no-such-scenario",
            ],
            "unknown scenario \"no-such-scenario\"",
        ),
    ] {
        refused(args, ERROR, expect);
    }
}

#[test]
fn a_metrics_address_that_cannot_be_bound_is_a_one_line_error_before_attaching() {
    // Held by this test: the port is in use.
    let held = std::net::TcpListener::bind("127.0.0.1:0").expect("bind a port");
    let addr = held.local_addr().expect("its address").to_string();
    let args = ["trace", "--service", "10.96.0.10", "--duration", "1"];
    for (metrics, expect) in [
        (addr.as_str(), "failed to listen for metrics on"),
        // An address this machine does not have (TEST-NET-1).
        (
            "192.0.2.1:9745",
            "failed to listen for metrics on 192.0.2.1:9745",
        ),
    ] {
        let line = refused(
            &[&args[..], &["--metrics", metrics]].concat(),
            ERROR,
            expect,
        );
        assert!(!line.contains("attach"), "{line}");
    }
}

#[test]
fn a_node_without_a_dns_service_is_a_one_line_error() {
    // This machine's own namespace holds no kube-proxy rules: no Service to trace or probe.
    refused(
        &["trace", "--duration", "1"],
        ERROR,
        "no DNS Service to trace",
    );
    refused(&["probe", "--no-trace", "--count", "1"], ERROR, "kube-dns");
}

#[test]
fn unreadable_truncated_malformed_and_foreign_reports_are_refused_by_compare() {
    let dir = Scratch::new("compare");
    let good_text = valid_report();
    let good = dir.file("good.json", good_text.as_bytes());
    let other_version = good_text.replacen(
        &format!("\"schema_version\": {SCHEMA_VERSION}"),
        "\"schema_version\": 999",
        1,
    );
    assert_ne!(
        other_version, good_text,
        "the report names its schema version"
    );
    let dir_path = dir.0.to_string_lossy().into_owned();
    let cases: Vec<(String, &str)> = vec![
        (
            "/nonexistent/report.json".into(),
            "failed to read the report /nonexistent/report.json",
        ),
        (dir_path.clone(), "Is a directory"),
        (dir.file("empty.json", b""), "is not a tracer report"),
        (
            dir.file(
                "truncated.json",
                &good_text.as_bytes()[..good_text.len() / 2],
            ),
            "is not a tracer report",
        ),
        (
            dir.file("garbage.json", b"\x00\xff\xfe not json"),
            "did not contain valid UTF-8",
        ),
        (
            dir.file("nul.json", b"\x00\x00\x00\x00"),
            "is not a tracer report",
        ),
        (
            dir.file("array.json", b"[1, 2, 3]"),
            "has no schema_version",
        ),
        (
            dir.file("noversion.json", b"{\"tool\": \"tracer\"}"),
            "has no schema_version",
        ),
        (
            dir.file("strversion.json", b"{\"schema_version\": \"1\"}"),
            "has no schema_version",
        ),
        (
            dir.file("other.json", other_version.as_bytes()),
            "has report schema version 999",
        ),
        (
            dir.file(
                "fields.json",
                format!("{{\"schema_version\": {SCHEMA_VERSION}}}").as_bytes(),
            ),
            "is not a tracer report",
        ),
        ("/dev/zero".into(), "is larger than"),
    ];
    for (bad, expect) in &cases {
        refused(&["compare", &good, bad], ERROR, expect);
        refused(&["compare", bad, &good], ERROR, expect);
    }
    // The same report on both sides compares clean: the refusals above are about the files.
    let out = tracer(&["compare", &good, &good]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn missing_empty_and_foreign_node_reports_are_refused_by_fleet() {
    let dir = Scratch::new("fleet");
    let good_text = valid_report();
    let good = dir.file("good.json", good_text.as_bytes());
    let other_version = good_text.replacen(
        &format!("\"schema_version\": {SCHEMA_VERSION}"),
        "\"schema_version\": 999",
        1,
    );
    let empty = Scratch::new("fleet-empty");
    let empty_dir = empty.0.to_string_lossy().into_owned();
    // A directory without *.json files is as empty as one without files.
    let other = Scratch::new("fleet-other");
    other.file("notes.txt", b"not a report");
    let other_dir = other.0.to_string_lossy().into_owned();
    for (bad, expect) in [
        (
            "/nonexistent/report.json".to_owned(),
            "failed to read the report /nonexistent/report.json",
        ),
        (empty_dir.clone(), "holds no report (no *.json file)"),
        (other_dir, "holds no report (no *.json file)"),
        (
            dir.file("array.json", b"[1, 2, 3]"),
            "has no schema_version",
        ),
        (
            dir.file(
                "truncated.json",
                &good_text.as_bytes()[..good_text.len() / 2],
            ),
            "is not a tracer report",
        ),
        (
            dir.file("other.json", other_version.as_bytes()),
            "has report schema version 999",
        ),
    ] {
        refused(&["fleet", &good, &bad], ERROR, expect);
    }
    // A directory holding one bad report is refused for it.
    let dir_path = dir.0.to_string_lossy().into_owned();
    refused(&["fleet", &dir_path], ERROR, "has no schema_version");
    refused(&["fleet"], USAGE, "required arguments were not provided");
    // One good report is a fleet that agrees: the refusals above are about the files.
    let out = tracer(&["fleet", &good, &good]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn reports_are_written_0644_whatever_the_umask_and_an_unwritable_path_is_an_error() {
    let dir = Scratch::new("mode");
    // A file already there, world-writable: the report replaces its content and its mode.
    let path = dir.file("r.json", b"old");
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o666)).expect("chmod");
    let old = nix::sys::stat::umask(nix::sys::stat::Mode::empty());
    Document::new("inspect")
        .expect("document")
        .write(Path::new(&path))
        .expect("write");
    let fresh = dir.0.join("fresh.json");
    Document::new("inspect")
        .expect("document")
        .write(&fresh)
        .expect("write");
    nix::sys::stat::umask(old);
    for p in [Path::new(&path), fresh.as_path()] {
        let mode = std::fs::metadata(p).expect("stat").permissions().mode() & 0o777;
        assert_eq!(mode, 0o644, "{}", p.display());
        Document::read(p).expect("the report reads back");
    }
    refused(
        &["inspect", "--report", "/nonexistent/dir/r.json"],
        ERROR,
        "/nonexistent/dir/r.json",
    );
}

#[test]
fn help_names_every_exit_code() {
    let out = tracer(&["--help"]);
    assert_eq!(out.status.code(), Some(0));
    let help = String::from_utf8_lossy(&out.stdout);
    for code in [
        "0 ok",
        "1 an error",
        "2 bad usage",
        "3 `compare` found a regression",
        "4 a `validate` scenario failed",
        "5 missing privileges",
        "6 `doctor` found the node degraded, 7 broken",
        "8 `fleet` found an odd node out",
        "130 `lab up`, `validate`, `doctor` or `vm run` stopped by SIGINT or SIGTERM",
    ] {
        assert!(help.contains(code), "{code:?} in:\n{help}");
    }
}

#[test]
fn a_kernel_spec_that_is_no_kernel_is_a_one_line_error() {
    let dir = Scratch::new("kernel");
    let empty = dir.0.to_string_lossy().into_owned();
    refused(
        &["vm", "prepare", "--kernel", &empty],
        ERROR,
        "is not a kernel: no lib/modules/",
    );
    refused(
        &["vm", "run", "--kernel", &empty, "--", "true"],
        ERROR,
        "is not a kernel: no lib/modules/",
    );
    // Neither an alias nor a kernel package: refused before apt looks it up in Debian's archive.
    for spec in ["9.99", "5.1O", "bash"] {
        refused(
            &["vm", "prepare", "--kernel", spec],
            ERROR,
            "is no kernel: give an alias (5.10",
        );
    }
}
