//! The kprobe and fentry programs must pass the verifier on this kernel even where they cannot
//! attach, and the plan must say why each one is not attached. Run as root.

use tracer::probes::{
    plan::Fate,
    session::{Options, Session},
    table::Hook,
};

// Scenario: load every program without attaching any; the verifier checks each.
#[test]
fn every_program_is_built_and_passes_the_verifier() {
    let session = Session::start(Options {
        attach: false,
        ..Options::default()
    })
    .expect("load the eBPF object");
    let kernel = nix::sys::utsname::uname()
        .map(|u| u.release().to_string_lossy().into_owned())
        .unwrap_or_default();
    for o in &session.plan.outcomes {
        match (o.hook, &o.fate) {
            (_, Fate::Verified { .. }) => {}
            // This kernel has no ftrace function hooks: fexit programs are refused at load with
            // EPERM, and the plan must say so. Any other refusal is a bug in the program.
            (Hook::Fexit, Fate::Skipped { reason }) if reason.contains("EPERM") => {
                eprintln!("skipped on kernel {kernel}: {} ({reason})", o.program);
            }
            (_, fate) => panic!(
                "{} did not pass the verifier on kernel {kernel}: {fate:?}",
                o.program
            ),
        }
    }
    let kprobes = session
        .plan
        .outcomes
        .iter()
        .filter(|o| matches!(o.hook, Hook::Kprobe | Hook::Kretprobe));
    assert_eq!(
        kprobes.count(),
        8,
        "the kprobe tier has an entry and a return program for four functions"
    );
}

/// A namespace with one interface for the TC programs, deleted however the test ends.
struct Links(&'static str);

impl Links {
    fn new(name: &'static str) -> Self {
        let _ = std::process::Command::new("ip")
            .args(["netns", "del", name])
            .stderr(std::process::Stdio::null())
            .status();
        // This kernel has no dummy driver; a veth pair is always there.
        for args in [
            vec!["netns", "add", name],
            vec![
                "-n", name, "link", "add", "d0", "type", "veth", "peer", "name", "d1",
            ],
        ] {
            assert!(
                std::process::Command::new("ip")
                    .args(&args)
                    .status()
                    .expect("ip")
                    .success(),
                "ip {args:?}"
            );
        }
        Self(name)
    }
}

impl Drop for Links {
    fn drop(&mut self) {
        let _ = std::process::Command::new("ip")
            .args(["netns", "del", self.0])
            .status();
    }
}

// Scenario: trace on this kernel; every probe that is not attached says why.
#[test]
fn the_plan_names_the_tier_and_every_skip_reason() {
    let links = Links::new("trhooks-links");
    let session = Session::start(Options {
        attach: true,
        links_netns: Some(tracer::netns::named(links.0)),
        ..Options::default()
    })
    .expect("load and attach");
    let plan = &session.plan;
    let text = plan.to_string();
    assert!(text.starts_with("hook tier: "), "{text}");
    for o in &plan.outcomes {
        match &o.fate {
            Fate::Attached { to } => assert!(!to.is_empty()),
            Fate::Verified { reason } | Fate::Skipped { reason } => {
                assert!(!reason.is_empty(), "{} has no reason", o.program)
            }
        }
    }
    let tc = plan
        .outcomes
        .iter()
        .find(|o| o.program == "device_tc_ingress")
        .unwrap();
    assert_eq!(
        tc.fate,
        Fate::Attached {
            to: "2 links: d0 d1".to_owned()
        }
    );
    for tp in ["drop_kfree_skb", "drop_icmp_send"] {
        let o = plan.outcomes.iter().find(|o| o.program == tp).unwrap();
        assert!(
            matches!(o.fate, Fate::Attached { .. }),
            "{tp} attaches on every tier: {:?}",
            o.fate
        );
    }
    if !std::path::Path::new("/sys/bus/event_source/devices/kprobe").exists() {
        let o = plan
            .outcomes
            .iter()
            .find(|o| o.program == "nat_manip_enter")
            .unwrap();
        match &o.fate {
            Fate::Skipped { reason } => assert!(reason.contains("no kprobes"), "{reason}"),
            f => panic!("nat_manip_enter cannot attach without kprobes and should say so: {f:?}"),
        }
    }
}
