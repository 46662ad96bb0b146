//! Without root or the capabilities a command needs, tracer refuses before doing anything, with
//! one line naming what is missing and exit code 5: run as the unprivileged user `nobody`, and as
//! root with CAP_BPF and CAP_PERFMON dropped from the bounding set (`setpriv`).
//! Run as root, one test at a time.

mod common;

use std::process::{Command, Output};

use common::leftovers;

const TRACER: &str = env!("CARGO_BIN_EXE_tracer");

/// The exit code of a refusal for missing privileges.
const EXIT_PRIVILEGES: i32 = 5;

/// Runs tracer `args` under `setpriv` with `setpriv_args`.
fn run_as(setpriv_args: &[&str], args: &[&str]) -> Output {
    Command::new("setpriv")
        .args(setpriv_args)
        .arg("--")
        .arg(TRACER)
        .args(args)
        .env("TRACER_LAB_PREFIX", "hl3")
        .output()
        .expect("run setpriv")
}

/// The one line of stderr a refusal prints (panics unless the run was refused with code 5).
fn refusal(out: &Output, what: &str) -> String {
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(
        out.status.code(),
        Some(EXIT_PRIVILEGES),
        "{what}: {:?}\nstderr:\n{err}",
        out.status
    );
    assert_eq!(err.lines().count(), 1, "{what}: not one line:\n{err}");
    assert!(out.stdout.is_empty(), "{what}: printed {:?}", out.stdout);
    err
}

const NOBODY: [&str; 3] = ["--reuid=65534", "--regid=65534", "--clear-groups"];

/// Scenario: `nobody` runs each privileged command; each is refused naming the capabilities it
/// lacks, its uid and, for the eBPF ones, kernel.unprivileged_bpf_disabled; nothing is created.
#[test]
fn without_root_each_privileged_command_exits_5_naming_what_is_missing() {
    let ebpf = ["CAP_BPF", "CAP_PERFMON", "CAP_NET_ADMIN", "CAP_SYS_ADMIN"];
    let cases: [(&[&str], &[&str]); 5] = [
        (&["trace", "--lab", "--duration", "1"], &ebpf),
        (&["probe", "--lab", "--count", "1"], &ebpf),
        (&["hooks"], &["CAP_BPF", "CAP_PERFMON", "CAP_NET_ADMIN"]),
        (&["validate"], &ebpf),
        (&["lab", "up"], &["CAP_NET_ADMIN", "CAP_SYS_ADMIN"]),
    ];
    for (args, missing) in cases {
        let err = refusal(&run_as(&NOBODY, args), &args.join(" "));
        assert!(err.contains("uid 65534"), "{args:?}: {err}");
        for cap in missing {
            assert!(err.contains(cap), "{args:?}: {cap} not named: {err}");
        }
        if args[0] != "lab" {
            assert!(
                err.contains("unprivileged_bpf_disabled"),
                "{args:?}: the sysctl not named: {err}"
            );
        }
    }
    // Commands that need nothing still run: compare reads two files (here, none).
    let out = run_as(&NOBODY, &["compare", "/nonexistent-a", "/nonexistent-b"]);
    assert_ne!(out.status.code(), Some(EXIT_PRIVILEGES), "{out:?}");
    assert!(
        leftovers("hl3").is_empty(),
        "a refused command made something"
    );
}

/// Scenario: root without CAP_BPF and CAP_PERFMON (dropped from the bounding set, so the exec'd
/// tracer lacks them) is refused naming those two and not the ones it has.
#[test]
fn root_without_bpf_and_perfmon_is_refused_naming_only_those() {
    let drop = ["--bounding-set=-bpf,-perfmon"];
    for args in [&["hooks"][..], &["trace", "--lab", "--duration", "1"]] {
        let err = refusal(&run_as(&drop, args), &args.join(" "));
        assert!(err.contains("uid 0"), "{err}");
        assert!(err.contains("lacks CAP_BPF, CAP_PERFMON ("), "{err}");
        assert!(!err.contains("lacks CAP_NET_ADMIN"), "{err}");
    }
    // With every capability it needs, hooks is not refused (it loads and attaches nothing).
    let out = Command::new(TRACER)
        .arg("hooks")
        .output()
        .expect("run hooks");
    assert_eq!(out.status.code(), Some(0), "{out:?}");
}

/// Runs `script` in Debian's 6.1 under qemu booted with `lockdown=MODE`: its stdout.
fn in_locked_down_guest(mode: &str, script: &str) -> String {
    let out = Command::new(TRACER)
        .args([
            "vm",
            "run",
            "--kernel",
            "6.1",
            "--lockdown",
            mode,
            "--timeout",
            "600",
        ])
        .args(["--", "sh", "-c", script])
        .output()
        .expect("tracer vm run");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "guest with lockdown={mode}: {:?}\n{stdout}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

/// Scenario: a kernel locked down. With lockdown=integrity (what Secure Boot gives) a traced
/// probe runs as on any node; with lockdown=confidentiality, which forbids eBPF reads of kernel
/// memory, a traced probe and `hooks` are refused with exit 5 and one line naming the lockdown,
/// and `probe --no-trace` still measures. On Debian's 6.1 under qemu (this machine's kernel has
/// securityfs unmounted and no lockdown); skipped inside a guest.
#[test]
fn lockdown_integrity_traces_and_confidentiality_is_refused_in_one_line() {
    if std::env::var_os("TRACER_VM_OUT").is_some() {
        eprintln!("skipped: already in a guest (this test boots its own)");
        return;
    }
    let script = format!(
        "T={TRACER}; cat /sys/kernel/security/lockdown; $T lab up --prefix lk >/dev/null; \
         $T probe --lab --prefix lk --count 20 --rate 20 >/tmp/p 2>/tmp/e; echo probe=$?; \
         cat /tmp/p /tmp/e; $T hooks >/dev/null 2>/tmp/h; echo hooks=$?; cat /tmp/h; \
         $T probe --lab --prefix lk --no-trace --count 5 --rate 20 >/dev/null 2>&1; \
         echo notrace=$?"
    );
    let open = in_locked_down_guest("integrity", &script);
    assert!(open.contains("[integrity]"), "{open}");
    assert!(
        open.contains("probe=0") && open.contains("hooks=0"),
        "{open}"
    );
    assert!(
        open.contains("answered") && open.contains("traced with hook tier"),
        "{open}"
    );
    let locked = in_locked_down_guest("confidentiality", &script);
    assert!(locked.contains("[confidentiality]"), "{locked}");
    for (command, code) in [("probe", "probe=5"), ("hooks", "hooks=5")] {
        assert!(
            locked.contains(code),
            "{command} under confidentiality:\n{locked}"
        );
        let line =
            format!("error: tracer {command} cannot trace under kernel lockdown=confidentiality");
        assert!(locked.contains(&line), "{command}:\n{locked}");
    }
    assert!(locked.contains("notrace=0"), "{locked}");
}
