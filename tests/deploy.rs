//! deploy/: the alert rules through promtool (their syntax, and their unit tests, which must fire
//! and stay silent for every alert), and the DaemonSet manifest read as the Kubernetes API's own
//! types (a misspelled or misplaced field fails), with the facts its comments state: the metrics
//! port the scrape annotations name, the host namespaces, the volumes, and the capabilities the
//! tracer's own privilege check asks for. Needs promtool (Debian's `prometheus` package) and root
//! (the capabilities are read from a refusal as `nobody`).

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::process::Command;

use k8s_openapi::api::apps::v1::DaemonSet;
use k8s_openapi::api::core::v1::{Container, Namespace, ServiceAccount};
use serde::Deserialize;
use serde_json::Value;

const TRACER: &str = env!("CARGO_BIN_EXE_tracer");

/// The metric names `tracer trace --metrics` exports (the metrics contract the exporter and these
/// rules share); the rules may use no other `tracer_` name.
const METRICS: &[&str] = &[
    "tracer_dns_queries_total",
    "tracer_dns_answered_total",
    "tracer_dns_lost_total",
    "tracer_dns_latency_seconds_bucket",
    "tracer_dns_latency_seconds_sum",
    "tracer_dns_latency_seconds_count",
    "tracer_conntrack_entries",
    "tracer_conntrack_max",
    "tracer_conntrack_stat_total",
    "tracer_node_info",
    "tracer_events_lost_total",
    "tracer_packets_unparsed_total",
    "tracer_probes_skipped",
];

/// Capabilities the DaemonSet adds beyond those `tracer trace` checks for (cmd/privileges.rs),
/// each with why (the manifest's comment says the same).
const EXTRA_CAPS: &[(&str, &str)] = &[(
    "SYS_PTRACE",
    "kube-proxy's --config file is read through /proc/PID/root of a process with more capabilities",
)];

fn deploy(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../deploy")
        .join(name)
}

/// Every YAML document of `name`, as JSON values.
fn documents(name: &str) -> Vec<Value> {
    let path = deploy(name);
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path:?}: {e}"));
    serde_yaml_ng::Deserializer::from_str(&text)
        .map(|doc| Value::deserialize(doc).unwrap_or_else(|e| panic!("{path:?}: {e}")))
        .collect()
}

fn promtool(args: &[&str]) -> String {
    let out = Command::new("promtool")
        .args(args)
        .current_dir(deploy(""))
        .output()
        .expect("run promtool (apt-get install prometheus; cargo xtask setup does)");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success(),
        "promtool {args:?}: {:?}\n{text}",
        out.status
    );
    text
}

/// The alerting rules of deploy/alerts.yaml.
fn alert_rules() -> Vec<Value> {
    let docs = documents("alerts.yaml");
    assert_eq!(docs.len(), 1, "alerts.yaml: one document");
    docs[0]["groups"]
        .as_array()
        .expect("groups")
        .iter()
        .flat_map(|g| g["rules"].as_array().expect("rules").clone())
        .collect()
}

fn text<'a>(v: &'a Value, what: &str) -> &'a str {
    v.as_str()
        .unwrap_or_else(|| panic!("{what}: not a string: {v}"))
}

/// Scenario: promtool accepts the rule file and counts as many rules as the file holds, each an
/// alert with a `for`, a severity, a summary and a description, over the contract's metrics only.
#[test]
fn promtool_accepts_the_rules_and_each_alert_is_complete() {
    let rules = alert_rules();
    let out = promtool(&["check", "rules", "alerts.yaml"]);
    assert!(
        out.contains(&format!("SUCCESS: {} rules found", rules.len())),
        "{out}"
    );
    let known: BTreeSet<&str> = METRICS.iter().copied().collect();
    for rule in &rules {
        let name = text(&rule["alert"], "a rule without `alert`");
        let expr = text(&rule["expr"], name);
        assert!(rule["for"].is_string(), "{name}: no `for`");
        let severity = text(&rule["labels"]["severity"], name);
        assert!(
            ["critical", "warning", "info"].contains(&severity),
            "{name}: severity {severity}"
        );
        for key in ["summary", "description"] {
            text(&rule["annotations"][key], name);
        }
        let used: Vec<&str> = expr
            .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .filter(|w| w.starts_with("tracer_"))
            .collect();
        for metric in &used {
            assert!(known.contains(metric), "{name}: unknown metric {metric}");
        }
        assert!(
            !used.is_empty() || expr.contains("up{job=\"tracer\"}"),
            "{name}: reads no tracer metric: {expr}"
        );
    }
}

/// Scenario: promtool runs the unit tests and they pass; every alert of the rule file is tested
/// both ways (a case where it fires, with its exact labels and annotations, and one where it
/// stays silent), and the tests name no alert the file lacks.
#[test]
fn promtool_unit_tests_fire_and_silence_every_alert() {
    let alerts: BTreeSet<String> = alert_rules()
        .iter()
        .map(|r| text(&r["alert"], "alert").to_owned())
        .collect();
    let docs = documents("alerts.test.yaml");
    assert_eq!(docs.len(), 1, "alerts.test.yaml: one document");
    // alertname -> (cases where it fires, cases where it is silent)
    let mut cases: BTreeMap<String, (usize, usize)> = BTreeMap::new();
    for test in docs[0]["tests"].as_array().expect("tests") {
        for case in test["alert_rule_test"].as_array().expect("alert_rule_test") {
            let name = text(&case["alertname"], "alertname").to_owned();
            let expected = case["exp_alerts"].as_array().expect("exp_alerts");
            for alert in expected {
                assert!(
                    alert["exp_labels"]["severity"].is_string(),
                    "{name}: no severity in {alert}"
                );
                for key in ["summary", "description"] {
                    text(&alert["exp_annotations"][key], &name);
                }
            }
            let entry = cases.entry(name).or_default();
            if expected.is_empty() {
                entry.1 += 1;
            } else {
                entry.0 += 1;
            }
        }
    }
    let tested: BTreeSet<String> = cases.keys().cloned().collect();
    assert_eq!(
        tested, alerts,
        "the alerts tested are not the alerts defined"
    );
    for (name, (fires, silent)) in &cases {
        assert!(*fires > 0, "{name}: no case where it fires");
        assert!(*silent > 0, "{name}: no case where it stays silent");
    }
    let out = promtool(&["test", "rules", "alerts.test.yaml"]);
    assert!(out.contains("SUCCESS"), "{out}");
}

/// Where `a` and `b` first differ, as a path of keys.
fn difference(a: &Value, b: &Value, path: &str) -> Option<String> {
    match (a, b) {
        (Value::Object(x), Value::Object(y)) => {
            x.keys()
                .chain(y.keys())
                .find_map(|k| match (x.get(k), y.get(k)) {
                    (Some(p), Some(q)) => difference(p, q, &format!("{path}.{k}")),
                    (p, q) => Some(format!("{path}.{k}: {p:?} vs {q:?}")),
                })
        }
        (Value::Array(x), Value::Array(y)) if x.len() == y.len() => x
            .iter()
            .zip(y)
            .enumerate()
            .find_map(|(i, (p, q))| difference(p, q, &format!("{path}[{i}]"))),
        _ => (a != b).then(|| format!("{path}: {a} vs {b}")),
    }
}

/// `doc` through the Kubernetes type `T` and back: what the type does not know is lost.
fn round_trip<T: serde::de::DeserializeOwned + serde::Serialize>(doc: &Value) -> Value {
    let typed: T = serde_json::from_value(doc.clone()).unwrap_or_else(|e| panic!("{e}: {doc}"));
    serde_json::to_value(&typed).expect("serialize")
}

/// Scenario: each document of daemonset.yaml read as its Kubernetes type and written back is the
/// document itself (k8s-openapi ignores unknown fields, so a misspelled or misplaced field comes
/// back missing and fails here).
#[test]
fn the_manifest_round_trips_through_the_kubernetes_types() {
    let docs = documents("daemonset.yaml");
    let kinds: Vec<&str> = docs.iter().map(|d| text(&d["kind"], "kind")).collect();
    assert_eq!(kinds, ["Namespace", "ServiceAccount", "DaemonSet"]);
    for doc in &docs {
        let back = match text(&doc["kind"], "kind") {
            "Namespace" => round_trip::<Namespace>(doc),
            "ServiceAccount" => round_trip::<ServiceAccount>(doc),
            _ => round_trip::<DaemonSet>(doc),
        };
        if let Some(diff) = difference(doc, &back, "") {
            panic!("{}: not a field of its type: {diff}", doc["kind"]);
        }
    }
}

fn daemonset() -> DaemonSet {
    let docs = documents("daemonset.yaml");
    let doc = docs
        .iter()
        .find(|d| d["kind"] == "DaemonSet")
        .expect("a DaemonSet");
    serde_json::from_value(doc.clone()).expect("a DaemonSet")
}

/// The capabilities `tracer trace` names when it refuses to run as `nobody`, without `CAP_`.
fn trace_capabilities() -> BTreeSet<String> {
    let out = Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups", "--"])
        .args([
            TRACER,
            "trace",
            "--service",
            "10.96.0.10",
            "--duration",
            "1",
        ])
        .output()
        .expect("run setpriv");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(5), "not refused: {err}");
    let needs = err
        .split_once(" needs ")
        .and_then(|(_, rest)| rest.split_once(';'))
        .unwrap_or_else(|| panic!("no capability list in: {err}"))
        .0;
    needs
        .split(", ")
        .map(|c| c.trim_start_matches("CAP_").to_owned())
        .collect()
}

/// Scenario: the DaemonSet's pod runs `trace --metrics $(POD_IP):9745` on the port its scrape
/// annotations name, in the node's network and PID namespaces, on every node, with every mount
/// declared and every volume mounted (read-only but /tmp), unprivileged with exactly the
/// capabilities `tracer trace` asks for plus the documented extras.
#[test]
fn the_daemonset_runs_trace_with_metrics_scraped_and_the_capabilities_it_needs() {
    let ds = daemonset();
    let template = ds.spec.expect("spec").template;
    let annotations = template.metadata.and_then(|m| m.annotations).unwrap();
    let pod = template.spec.expect("pod spec");
    assert_eq!(pod.containers.len(), 1);
    let c: &Container = &pod.containers[0];
    let args = c.args.clone().unwrap_or_default();
    assert_eq!(args.first().map(String::as_str), Some("trace"), "{args:?}");
    assert!(!args.iter().any(|a| a == "--lab"), "{args:?}");
    let at = args
        .iter()
        .position(|a| a == "--metrics")
        .expect("--metrics");
    let listen = args.get(at + 1).expect("--metrics' address");
    let port = listen
        .strip_prefix("$(POD_IP):")
        .expect("listens on the pod IP");
    let env = c.env.clone().unwrap_or_default();
    let pod_ip = env.iter().find(|e| e.name == "POD_IP").expect("POD_IP");
    let field = pod_ip
        .value_from
        .as_ref()
        .and_then(|v| v.field_ref.as_ref());
    assert_eq!(field.map(|f| f.field_path.as_str()), Some("status.podIP"));
    assert_eq!(annotations["prometheus.io/scrape"], "true");
    assert_eq!(annotations["prometheus.io/port"], port);
    assert_eq!(annotations["prometheus.io/path"], "/metrics");
    let ports = c.ports.clone().unwrap_or_default();
    assert_eq!(ports.len(), 1);
    assert_eq!(ports[0].container_port.to_string(), port);
    assert_eq!(pod.host_network, Some(true));
    assert_eq!(pod.host_pid, Some(true));
    assert_eq!(pod.dns_policy.as_deref(), Some("ClusterFirstWithHostNet"));
    assert_eq!(
        pod.priority_class_name.as_deref(),
        Some("system-node-critical")
    );
    let tolerations = pod.tolerations.clone().unwrap_or_default();
    assert!(
        tolerations
            .iter()
            .any(|t| t.operator.as_deref() == Some("Exists") && t.key.is_none()),
        "does not tolerate every taint: {tolerations:?}"
    );
    assert!(
        c.resources
            .as_ref()
            .and_then(|r| r.limits.as_ref())
            .is_some()
    );
    let volumes: BTreeSet<String> = pod
        .volumes
        .clone()
        .unwrap_or_default()
        .into_iter()
        .map(|v| v.name)
        .collect();
    let mounts = c.volume_mounts.clone().unwrap_or_default();
    let mounted: BTreeSet<String> = mounts.iter().map(|m| m.name.clone()).collect();
    assert_eq!(mounted, volumes, "mounts and volumes differ");
    for m in &mounts {
        let writable = m.mount_path == "/tmp";
        assert_eq!(m.read_only.unwrap_or(false), !writable, "{}", m.mount_path);
    }
    let security = c.security_context.clone().expect("securityContext");
    assert_eq!(security.privileged, Some(false));
    let added: BTreeSet<String> = security
        .capabilities
        .and_then(|c| c.add)
        .unwrap_or_default()
        .into_iter()
        .collect();
    let mut wanted = trace_capabilities();
    wanted.extend(EXTRA_CAPS.iter().map(|(cap, _)| (*cap).to_owned()));
    assert_eq!(
        added, wanted,
        "capabilities added vs trace's own plus the extras"
    );
}
