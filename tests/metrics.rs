//! `tracer trace --metrics` on the lab: scraped directly, and by a real Prometheus (Debian's
//! `prometheus`, a process of the test's own on a free port with its own data directory, never a
//! system one) while DNS load runs through the `filter-drop` fault and its clearing. Run as root,
//! one test at a time.
//!
//! Scenarios: (1) every family of the metrics contract is served with sane values, and nothing
//! listens once the trace stops; (2) per backend, Prometheus sees the loss rate rise with the
//! stage and reason the trace gives for filter-drop and fall to zero after `fault clear`, the
//! latency histogram count grow with the answers, and `tracer_node_info` name the lab's backend.

mod common;

use std::{
    io::{Read as _, Write as _},
    net::{SocketAddr, TcpListener, TcpStream},
    path::PathBuf,
    process::{Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use common::{ChildGuard, LabGuard, batch, leftovers};
use nix::sys::signal::{Signal, kill};
use tracer::{lab::FaultName, measure::Outcome, node::Backend};

const TRACER: &str = env!("CARGO_BIN_EXE_tracer");

/// Every family of the contract, as scraped (counters with `_total`), but for
/// `tracer_dns_lost_total`, which has no series until a query is lost (the Prometheus test sees
/// it).
const FAMILIES: [&str; 11] = [
    "tracer_dns_queries_total{",
    "tracer_dns_answered_total{",
    "tracer_dns_latency_seconds_count",
    "tracer_conntrack_entries",
    "tracer_conntrack_max",
    "tracer_conntrack_stat_total{",
    "tracer_node_info{",
    "tracer_events_lost_total",
    "tracer_packets_unparsed_total",
    "tracer_probes_skipped",
    "tracer_dns_latency_seconds_bucket{le=\"0.0005\"}",
];

/// A free loopback port (bound, read and released).
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port()
}

/// `GET path` over HTTP/1.0: (status code, body); `Err` when nothing accepts the connection.
fn get(addr: SocketAddr, path: &str) -> std::io::Result<(u16, String)> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
    s.set_read_timeout(Some(Duration::from_secs(20)))?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n")?;
    let mut text = String::new();
    s.read_to_string(&mut text)?;
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let code = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    Ok((code, body.to_owned()))
}

/// Polls `f` every half second until it returns `Some` (panics with `what` after `bound`).
fn wait_for<T>(what: &str, bound: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + bound;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < deadline, "{what}: not within {bound:?}");
        thread::sleep(Duration::from_millis(500));
    }
}

/// `tracer trace --lab --metrics ADDR` on lab `prefix`, once it serves.
fn trace(prefix: &str, addr: SocketAddr) -> ChildGuard {
    let mut cmd = Command::new(TRACER);
    cmd.args(["trace", "--lab", "--prefix", prefix])
        .args(["--metrics", &addr.to_string()]);
    if let Some(tier) = common::tier() {
        cmd.args(["--hooks", &tier.to_string()]);
    }
    let child = cmd
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start tracer trace");
    let guard = ChildGuard(Some(child));
    // The port is bound before the programs attach and served once the trace polls.
    wait_for("the metrics endpoint", Duration::from_secs(60), || {
        get(addr, "/metrics").ok().filter(|(code, _)| *code == 200)
    });
    guard
}

/// DNS load from client0 through the Service (`tracer probe --no-trace`), at most ten minutes.
fn load(prefix: &str) -> ChildGuard {
    let child = Command::new(TRACER)
        .args(["probe", "--lab", "--prefix", prefix, "--no-trace"])
        .args(["--rate", "40", "--duration", "600", "--timeout", "1"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start the DNS load");
    ChildGuard(Some(child))
}

/// The value of the sample `line_start` (a metric name with its labels) in a scrape.
fn sample(text: &str, line_start: &str) -> Option<f64> {
    text.lines()
        .find(|l| l.starts_with(line_start))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

/// Asserts that nothing accepts connections on `addr` any more.
fn assert_refused(addr: SocketAddr) {
    let err = TcpStream::connect_timeout(&addr, Duration::from_secs(5))
        .expect_err("the metrics port still accepts connections after the trace stopped");
    assert_eq!(err.kind(), std::io::ErrorKind::ConnectionRefused, "{err}");
}

// Scenario: trace with --metrics, a batch of lookups, a direct scrape; then stop the trace.
#[test]
fn a_scrape_has_every_contract_family_and_the_port_closes_at_the_end() {
    let prefix = "mx3";
    let lab = LabGuard::up(prefix, Backend::Nft);
    let addr = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let mut traced = trace(prefix, addr);
    let result = lab.probe(&batch(60));
    let answered = result
        .queries
        .iter()
        .filter(|q| matches!(q.outcome, Outcome::Answered { .. }))
        .count() as f64;
    assert!(answered >= 50.0, "the healthy lab answers");
    // Records are handed over within a poll; conntrack and the kernel counters within 3 s.
    let text = wait_for("every answer counted", Duration::from_secs(30), || {
        let (_, text) = get(addr, "/metrics").ok()?;
        let counted = sample(&text, "tracer_dns_latency_seconds_count")?;
        let ct = sample(&text, "tracer_conntrack_entries")?;
        (counted >= answered * 0.9 && ct > 0.0).then_some(text)
    });
    for family in FAMILIES {
        assert!(text.contains(family), "{family} missing:\n{text}");
    }
    assert!(!text.contains("tracer_dns_lost"), "nothing lost: {text}");
    let queries = sample(
        &text,
        "tracer_dns_queries_total{family=\"ipv4\",transport=\"udp\"}",
    );
    assert!(queries >= Some(answered * 0.9), "{text}");
    let by_endpoint: f64 = text
        .lines()
        .filter(|l| l.starts_with("tracer_dns_answered_total{endpoint=\"10.244.0.1"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum();
    assert!(by_endpoint >= answered * 0.9, "answers by pod:\n{text}");
    assert!(sample(&text, "tracer_conntrack_max") > Some(0.0), "{text}");
    assert!(
        text.contains("iptables_backend=\"nft\",kube_proxy_mode=\"iptables\""),
        "{text}"
    );
    assert_eq!(
        sample(&text, "tracer_events_lost_total"),
        Some(0.0),
        "{text}"
    );
    assert_eq!(get(addr, "/").map(|(c, _)| c).ok(), Some(404));
    kill(traced.pid(), Signal::SIGINT).expect("signal the tracer");
    assert!(traced.wait(Duration::from_secs(60)).success());
    assert_refused(addr);
    drop(lab);
    assert!(leftovers(prefix).is_empty(), "{:?}", leftovers(prefix));
}

/// A Prometheus of the test's own, killed and its directory removed when dropped.
struct Prometheus {
    child: ChildGuard,
    dir: PathBuf,
    addr: SocketAddr,
}

impl Prometheus {
    /// Scrapes `target` every second.
    fn start(target: SocketAddr) -> Self {
        let dir = std::env::temp_dir().join(format!("tracer-metrics-prom-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("data")).expect("prometheus dir");
        let config = dir.join("prometheus.yml");
        std::fs::write(
            &config,
            format!(
                "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nscrape_configs:\n  - job_name: tracer\n    static_configs:\n      - targets: ['{target}']\n"
            ),
        )
        .expect("prometheus config");
        let addr = SocketAddr::from(([127, 0, 0, 1], free_port()));
        let child = Command::new("prometheus")
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.join("data").display()
            ))
            .arg(format!("--web.listen-address={addr}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start prometheus (the Debian package `prometheus`: cargo xtask setup)");
        let p = Self {
            child: ChildGuard(Some(child)),
            dir,
            addr,
        };
        wait_for("prometheus ready", Duration::from_secs(60), || {
            get(p.addr, "/-/ready").ok().filter(|(c, _)| *c == 200)
        });
        p
    }

    /// An instant query's result vector: (labels, value) per series.
    fn query(&self, promql: &str) -> Vec<(serde_json::Value, f64)> {
        let encoded: String = promql
            .bytes()
            .map(|b| match b {
                b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'_' | b'.' | b'-' => {
                    (b as char).to_string()
                }
                _ => format!("%{b:02X}"),
            })
            .collect();
        let (code, body) =
            get(self.addr, &format!("/api/v1/query?query={encoded}")).expect("query prometheus");
        assert_eq!(code, 200, "{promql}: {body}");
        let v: serde_json::Value = serde_json::from_str(&body).expect("prometheus JSON");
        v["data"]["result"]
            .as_array()
            .expect("a vector")
            .iter()
            .map(|s| {
                let value = s["value"][1].as_str().and_then(|t| t.parse().ok());
                (s["metric"].clone(), value.unwrap_or(f64::NAN))
            })
            .collect()
    }

    /// The single value of `promql` (0 when it has no series).
    fn value(&self, promql: &str) -> f64 {
        self.query(promql).first().map_or(0.0, |(_, v)| *v)
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        drop(self.child.0.take().map(|c| ChildGuard(Some(c))));
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Scenario (2) on `backend`, lab `prefix`.
fn losses_rise_and_fall_in_prometheus(prefix: &str, backend: Backend) {
    let mut lab = LabGuard::up(prefix, backend);
    let addr = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let mut traced = trace(prefix, addr);
    let prom = Prometheus::start(addr);
    let _load = load(prefix);
    let wait = Duration::from_secs(90);
    let answered = "sum(tracer_dns_answered_total)";
    let latency_count = "sum(tracer_dns_latency_seconds_count)";
    let before = wait_for("answers in prometheus", wait, || {
        let n = prom.value(latency_count);
        (n >= 40.0 && prom.value(answered) >= 40.0).then_some(n)
    });
    let node = prom.query("tracer_node_info");
    assert_eq!(node.len(), 1, "{node:?}");
    let backend_name = match backend {
        Backend::Nft => "nft",
        Backend::Legacy => "legacy",
    };
    assert_eq!(node[0].0["iptables_backend"], backend_name, "{node:?}");
    assert_eq!(node[0].0["kube_proxy_mode"], "iptables", "{node:?}");
    assert_eq!(node[0].1, 1.0);

    lab.fault(FaultName::FilterDrop, None);
    let loss_rate = "sum by (stage, reason) (rate(tracer_dns_lost_total[5s]))";
    let rising = wait_for("the loss rate rising", wait, || {
        let series = prom.query(loss_rate);
        series.iter().any(|(_, v)| *v > 0.0).then_some(series)
    });
    // The stage and reason the trace gives filter-drop (tests/trace.rs).
    let reason = if common::has_drop_reasons() {
        "NETFILTER_DROP"
    } else {
        "unknown"
    };
    let (labels, _) = rising
        .iter()
        .filter(|(_, v)| *v > 0.0)
        .max_by(|a, b| a.1.total_cmp(&b.1))
        .expect("a rising series");
    assert_eq!(labels["stage"], "netfilter", "{rising:?}");
    assert_eq!(labels["reason"], reason, "{rising:?}");

    lab.clear();
    let total_rate = "sum(rate(tracer_dns_lost_total[5s]))";
    wait_for("the loss rate back to 0 with answers", wait, || {
        let answering = prom.value("sum(rate(tracer_dns_answered_total[5s]))") > 0.0;
        (prom.value(total_rate) == 0.0 && answering).then_some(())
    });
    let after = prom.value(latency_count);
    assert!(after > before, "latency count {before} -> {after}");
    assert!(prom.value("sum(tracer_dns_lost_total)") > 0.0);

    kill(traced.pid(), Signal::SIGINT).expect("signal the tracer");
    assert!(traced.wait(Duration::from_secs(60)).success());
    assert_refused(addr);
    drop(prom);
    drop(lab);
    assert!(leftovers(prefix).is_empty(), "{:?}", leftovers(prefix));
}

#[test]
fn prometheus_sees_filter_drop_rise_and_fall_nft() {
    losses_rise_and_fall_in_prometheus("mx1", Backend::Nft);
}

#[test]
fn prometheus_sees_filter_drop_rise_and_fall_legacy() {
    losses_rise_and_fall_in_prometheus("mx2", Backend::Legacy);
}
