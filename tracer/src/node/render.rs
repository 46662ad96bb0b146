//! The inspect report rendered: a table and the findings for people, JSON, and the few lines
//! `tracer trace` prints at start.

use comfy_table::{ContentArrangement, Table, presets::UTF8_BORDERS_ONLY};

use super::{
    conntrack::CpuStats,
    findings::{Severity, endpoints_text},
    inspect::{Error, Report},
};

impl Report {
    /// A few lines for the start of `tracer trace`: backend, mode, DNS Service, conntrack, and the
    /// errors and warnings by title.
    pub fn summary(&self) -> Vec<String> {
        let mut lines = vec![
            format!(
                "node: iptables {} · kube-proxy {} · conntrack {}/{} ({:.1} %)",
                self.backends.verdict,
                self.proxy_mode,
                self.conntrack.table.count,
                self.conntrack.table.max,
                self.conntrack.usage_percent
            ),
            match &self.dns_service {
                Some(s) => format!(
                    "dns service: {} -> {}",
                    s.socket(),
                    endpoints_text(&s.endpoints)
                ),
                None => "dns service: not found in the rules".to_owned(),
            },
        ];
        lines.extend(self.dns_service6.as_ref().map(|s| {
            format!(
                "dns service (IPv6): {} -> {}",
                s.socket(),
                endpoints_text(&s.endpoints)
            )
        }));
        lines.extend(
            self.findings
                .iter()
                .filter(|f| f.severity != Severity::Info)
                .map(|f| format!("{}: {}", f.severity, f.title)),
        );
        lines
    }

    /// The IPv6 DNS Service in each backend that holds one.
    fn dns6_text(&self) -> String {
        if self.dns6_by_backend.is_empty() {
            return "none (no IPv6 Service in the ip6tables rules)".to_owned();
        }
        let found: Vec<String> = self
            .dns6_by_backend
            .iter()
            .map(|d| {
                let s = &d.service;
                format!(
                    "{} -> {} ({})",
                    s.socket(),
                    endpoints_text(&s.endpoints),
                    d.backend
                )
            })
            .collect();
        found.join("; ")
    }

    /// The report for people.
    pub fn render_text(&self) -> String {
        let mut out = String::new();
        let table = |rows: Vec<(String, String)>| {
            let mut t = Table::new();
            t.load_style(UTF8_BORDERS_ONLY)
                .set_content_arrangement(ContentArrangement::Dynamic)
                .set_width(120);
            for (k, v) in rows {
                t.add_row(vec![k, v]);
            }
            t.to_string()
        };
        let f = &self.facts;
        out.push_str(&format!(
            "Node{}\n",
            self.netns.as_ref().map_or(String::new(), |p| format!(
                " (network namespace {})",
                p.display()
            ))
        ));
        out.push_str(&table(vec![
            ("kernel".into(), f.kernel.clone()),
            ("os".into(), f.os.clone().unwrap_or_default()),
            (
                "tracing tier".into(),
                format!("{} ({})", f.tier, f.tier_reason),
            ),
            ("iptables backend".into(), self.backends.verdict.to_string()),
            ("kube-proxy mode".into(), self.proxy_mode.to_string()),
            (
                "dns service".into(),
                self.dns_service
                    .as_ref()
                    .map_or("not found".to_owned(), |s| {
                        format!("{} -> {}", s.socket(), endpoints_text(&s.endpoints))
                    }),
            ),
            ("dns service (IPv6)".into(), self.dns6_text()),
            (
                "conntrack".into(),
                format!(
                    "{} / {} ({:.1} %), {} buckets; DNS entries {} ({} unreplied, {} stale)",
                    self.conntrack.table.count,
                    self.conntrack.table.max,
                    self.conntrack.usage_percent,
                    self.conntrack.table.buckets,
                    self.conntrack.dns_entries,
                    self.conntrack.dns_unreplied,
                    self.conntrack.dns_stale.len()
                ),
            ),
        ]));
        if let Some(c) = &self.nodelocal {
            let addresses: Vec<String> = c.addresses.iter().map(ToString::to_string).collect();
            out.push_str(&format!(
                "\nnodelocal dns cache: link {} ({}), {} UDP listeners on port 53, {} NOTRACK and {} ACCEPT rules\n",
                c.link,
                addresses.join(", "),
                c.listeners.len(),
                c.notrack().count(),
                c.accepts().count()
            ));
        }
        out.push_str(&self.ipvs_text());
        out.push_str("\n\nConntrack statistics\n");
        let mut stats = Table::new();
        stats.load_style(UTF8_BORDERS_ONLY);
        let mut header = vec!["cpu".to_owned()];
        header.extend(
            CpuStats::default()
                .fields()
                .iter()
                .map(|(n, _)| (*n).to_owned()),
        );
        stats.set_header(header);
        for s in self
            .conntrack
            .per_cpu
            .iter()
            .chain(std::iter::once(&self.conntrack.total))
        {
            let mut row = vec![if std::ptr::eq(s, &self.conntrack.total) {
                "all".to_owned()
            } else {
                s.cpu.to_string()
            }];
            row.extend(s.fields().iter().map(|(_, v)| v.to_string()));
            stats.add_row(row);
        }
        out.push_str(&stats.to_string());
        if !self.counters.is_empty() {
            out.push_str("\n\nDNS rule counters\n");
            let mut t = Table::new();
            t.load_style(UTF8_BORDERS_ONLY)
                .set_content_arrangement(ContentArrangement::Dynamic)
                .set_width(160);
            t.set_header(vec!["backend", "table", "packets", "rule"]);
            for c in &self.counters {
                t.add_row(vec![
                    c.backend.name().to_owned(),
                    c.table.clone(),
                    c.packets.to_string(),
                    c.rule.clone(),
                ]);
            }
            out.push_str(&t.to_string());
        }
        out.push_str("\n\nFindings\n");
        for f in &self.findings {
            out.push_str(&format!("\n[{}] {}\n", f.severity, f.title));
            for e in &f.evidence {
                out.push_str(&format!("    {e}\n"));
            }
            if let Some(a) = &f.action {
                out.push_str(&format!("  → {a}\n"));
            }
        }
        out
    }

    /// IPVS's virtual services and real servers (none: empty).
    fn ipvs_text(&self) -> String {
        if self.ipvs_services.is_empty() {
            return String::new();
        }
        let mut out =
            "\n\nIPVS virtual services (kube-proxy's ipvs mode: IPVS does the NAT)\n".to_owned();
        let mut t = Table::new();
        t.load_style(UTF8_BORDERS_ONLY);
        t.set_header(vec![
            "service",
            "scheduler",
            "real server",
            "forward",
            "weight",
            "active",
            "inactive",
        ]);
        for s in &self.ipvs_services {
            let proto = match s.protocol {
                6 => "tcp".to_owned(),
                17 => "udp".to_owned(),
                p => p.to_string(),
            };
            let name = format!("{proto} {}:{}", s.addr, s.port);
            if s.destinations.is_empty() {
                t.add_row(vec![name.clone(), s.scheduler.clone(), "(none)".to_owned()]);
            }
            for d in &s.destinations {
                t.add_row(vec![
                    name.clone(),
                    s.scheduler.clone(),
                    format!("{}:{}", d.addr, d.port),
                    d.forward.name().to_owned(),
                    d.weight.to_string(),
                    d.active.to_string(),
                    d.inactive.to_string(),
                ]);
            }
        }
        out.push_str(&t.to_string());
        out
    }

    /// The report as JSON.
    pub fn render_json(&self) -> Result<String, Error> {
        serde_json::to_string_pretty(self).map_err(|source| Error::Json { source })
    }
}
