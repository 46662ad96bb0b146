use super::*;

impl VmRun {
    /// A 6.1 guest run, for tests of the reports that carry one.
    pub(crate) fn sample() -> Self {
        Self {
            spec: "6.1".into(),
            release: "6.1.0-50-amd64".into(),
            host_kernel: "6.18.0".into(),
            accel: "tcg".into(),
            cpus: 1,
            memory_mib: 2048,
            boot_s: 4.0,
            wall_s: 240.0,
        }
    }
}

fn doc() -> Document {
    Document::new("probe").unwrap()
}

#[test]
fn round_trips_through_text() {
    let d = doc();
    let text = serde_json::to_string(&d).unwrap();
    let back = Document::parse(Path::new("r.json"), &text).unwrap();
    assert_eq!(back.schema_version, SCHEMA_VERSION);
    assert_eq!((back.command, back.kernel), (d.command, d.kernel));
}

/// `vm` is an optional field added within schema version 1: a report written before it
/// existed still reads (as a run on the machine itself), and a VM run round-trips.
#[test]
fn vm_field_is_optional_within_version_1() {
    let mut v = serde_json::to_value(doc()).unwrap();
    v.as_object_mut().unwrap().remove("vm");
    let back = Document::parse(Path::new("old.json"), &v.to_string()).unwrap();
    assert_eq!(back.vm, None);
    let mut d = doc();
    d.vm = Some(VmRun::sample());
    let text = serde_json::to_string(&d).unwrap();
    let back = Document::parse(Path::new("vm.json"), &text).unwrap();
    assert_eq!(back.vm, d.vm);
    assert_eq!(back.schema_version, 1);
}

/// `hostname` is an optional field added within schema version 1: a report written before it
/// reads with none; a new one names this machine.
#[test]
fn hostname_field_is_optional_within_version_1() {
    let d = doc();
    let host = nix::sys::utsname::uname().unwrap();
    assert_eq!(d.hostname.as_deref(), host.nodename().to_str());
    let mut v = serde_json::to_value(&d).unwrap();
    v.as_object_mut().unwrap().remove("hostname");
    let back = Document::parse(Path::new("old.json"), &v.to_string()).unwrap();
    assert_eq!(back.hostname, None);
}

/// `lost_by_cause` is keyed by each cause's text, as before causes were typed; a report
/// whose "no drop seen" key names the point by its Rust name (written before `Seen` had a
/// name) still reads, as the same cause.
#[test]
fn lost_by_cause_is_keyed_by_the_cause_text_old_and_new() {
    use crate::{
        flow::record::{Seen, Stage},
        measure::{BatchResult, Outcome, RecordType, SentQuery},
    };
    let lost = |i: u16| SentQuery {
        id: i,
        name: "kubernetes.default".to_owned(),
        qtype: RecordType::A,
        source_port: 1000 + i,
        sent_at: Duration::from_millis(u64::from(i)),
        outcome: Outcome::TimedOut,
    };
    let result = BatchResult {
        started: std::time::SystemTime::now(),
        sent: 3,
        answered: 0,
        lost: 3,
        bad_answers: 0,
        queries: (1..=3).map(lost).collect(),
    };
    let mut unseen = TraceRecord::dropped(2, Stage::Netfilter);
    unseen.drop = None;
    unseen.last_seen = Seen::Sent;
    let records = [TraceRecord::dropped(1, Stage::Netfilter), unseen];
    let server = "10.96.0.10:53".parse().unwrap();
    let p = ProbeReport::new("c", server, &BatchSpec::default(), &result, None, &records);
    let json = serde_json::to_value(&p).unwrap();
    assert_eq!(
        json["lost_by_cause"],
        serde_json::json!({
            "netfilter: NETFILTER_DROP @ nft_do_chain": 1,
            "no drop seen (last seen: sent)": 1,
            "not seen by the tracer": 1,
        })
    );
    let mut d = doc();
    d.probe = Some(p.clone());
    let mut old = serde_json::to_value(&d).unwrap();
    let by_cause = old["probe"]["lost_by_cause"].as_object_mut().unwrap();
    let n = by_cause.remove("no drop seen (last seen: sent)").unwrap();
    by_cause.insert("no drop seen (last seen: Sent)".to_owned(), n);
    let back = Document::parse(Path::new("old.json"), &old.to_string()).unwrap();
    assert_eq!(back.probe.unwrap().lost_by_cause, p.lost_by_cause);
}

#[test]
fn other_versions_and_non_reports_are_refused() {
    let mut v = serde_json::to_value(doc()).unwrap();
    v["schema_version"] = 0.into();
    let err = Document::parse(Path::new("old.json"), &v.to_string()).unwrap_err();
    let msg = err.to_string();
    assert!(matches!(err, Error::Version { found: 0, .. }), "{err:?}");
    assert!(
        msg.contains("version 0") && msg.contains(&format!("version {SCHEMA_VERSION}")),
        "{msg}"
    );
    let err = Document::parse(Path::new("x.json"), "{\"a\": 1}").unwrap_err();
    assert!(matches!(err, Error::NoVersion { .. }), "{err:?}");
    let err = Document::parse(Path::new("x.json"), "not json").unwrap_err();
    assert!(matches!(err, Error::Decode { .. }), "{err:?}");
}
