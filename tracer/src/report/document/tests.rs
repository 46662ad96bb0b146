use super::*;

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
