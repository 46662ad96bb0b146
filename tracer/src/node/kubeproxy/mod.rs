//! kube-proxy as the node shows it: `iptables-save -c` output parsed into tables, chains and rules
//! with their packet counters; the proxy mode; the DNS Service and its endpoints found from the
//! rules themselves (the `kube-system/kube-dns` comments, `KUBE-SERVICES` -> `KUBE-SVC-…` ->
//! `KUBE-SEP-…` -> `DNAT --to-destination`), with no cluster API.

use std::{
    collections::BTreeSet,
    net::{IpAddr, SocketAddr},
};

use serde::Serialize;

use super::Backend;

/// What failed reading a save.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("failed to parse iptables-save line {line}: {what}: {text:?}")]
    Parse {
        line: usize,
        what: &'static str,
        text: String,
    },
}

/// The kube-proxy name of the DNS Service's UDP port.
pub const DNS_PORT_NAME: &str = "kube-system/kube-dns:dns";

/// One `iptables-save` output.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Save {
    /// Tables in the order printed.
    pub tables: Vec<TableSave>,
}

/// One `*table` section.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct TableSave {
    /// `filter`, `nat`, `mangle`, `raw`, `security`.
    pub name: String,
    /// Declared chains (`:NAME POLICY [p:b]`).
    pub chains: Vec<String>,
    /// Rules in order.
    pub rules: Vec<Rule>,
}

/// One `-A` rule.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Rule {
    /// The chain it is appended to.
    pub chain: String,
    /// The rule as printed, from `-A` on (without the counters).
    pub text: String,
    /// Packets that matched it (with `-c`).
    pub packets: Option<u64>,
    /// Bytes that matched it (with `-c`).
    pub bytes: Option<u64>,
    /// `-m comment --comment`.
    pub comment: Option<String>,
    /// `-j` target.
    pub target: Option<String>,
    /// `-d` (without `/32` or `/128`).
    pub dst: Option<String>,
    /// `-p`.
    pub proto: Option<String>,
    /// `--dport`.
    pub dport: Option<u16>,
    /// `DNAT --to-destination`.
    pub to_destination: Option<String>,
}

impl Rule {
    /// Whether the rule belongs to kube-proxy or the kubelet: its chain or its target is `KUBE-*`.
    pub fn is_kube(&self) -> bool {
        self.chain.starts_with("KUBE-")
            || self
                .target
                .as_deref()
                .is_some_and(|t| t.starts_with("KUBE-"))
    }
}

impl Save {
    /// The table called `name`.
    pub fn table(&self, name: &str) -> Option<&TableSave> {
        self.tables.iter().find(|t| t.name == name)
    }

    /// All rules with their table.
    pub fn rules(&self) -> impl Iterator<Item = (&str, &Rule)> {
        self.tables
            .iter()
            .flat_map(|t| t.rules.iter().map(move |r| (t.name.as_str(), r)))
    }

    /// The number of kube-proxy/kubelet rules (`KUBE-*` chain or target).
    pub fn kube_rules(&self) -> usize {
        self.rules().filter(|(_, r)| r.is_kube()).count()
    }

    /// All rules (`-A` lines), as kube-proxy's iptables-wrapper counts them.
    pub fn rule_count(&self) -> usize {
        self.tables.iter().map(|t| t.rules.len()).sum()
    }

    /// The kubelet's hint chains present (`KUBE-IPTABLES-HINT`, `KUBE-KUBELET-CANARY`), as
    /// `table/chain`.
    pub fn hint_chains(&self) -> Vec<String> {
        self.tables
            .iter()
            .flat_map(|t| {
                t.chains
                    .iter()
                    .filter(|c| *c == "KUBE-IPTABLES-HINT" || *c == "KUBE-KUBELET-CANARY")
                    .map(move |c| format!("{}/{c}", t.name))
            })
            .collect()
    }

    /// Declared `KUBE-*` chains, as `table/chain`.
    pub fn kube_chains(&self) -> Vec<String> {
        self.tables
            .iter()
            .flat_map(|t| {
                t.chains
                    .iter()
                    .filter(|c| c.starts_with("KUBE-"))
                    .map(move |c| format!("{}/{c}", t.name))
            })
            .collect()
    }

    /// Whether kube-proxy's entry point is wired: a built-in nat chain jumps to `KUBE-SERVICES`.
    pub fn has_service_portals(&self) -> bool {
        self.table("nat").is_some_and(|t| {
            t.rules.iter().any(|r| {
                matches!(r.chain.as_str(), "PREROUTING" | "OUTPUT")
                    && r.target.as_deref() == Some("KUBE-SERVICES")
            })
        })
    }
}

/// Parses `iptables-save` output, with or without `-c` counters. Comment lines (`# Generated`,
/// `# Warning`) are skipped.
pub fn parse_save(text: &str) -> Result<Save, Error> {
    let mut save = Save::default();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim_end();
        let err = |what| Error::Parse {
            line: i + 1,
            what,
            text: line.to_owned(),
        };
        if line.is_empty() || line.starts_with('#') || line == "COMMIT" {
            continue;
        }
        if let Some(name) = line.strip_prefix('*') {
            save.tables.push(TableSave {
                name: name.to_owned(),
                ..TableSave::default()
            });
            continue;
        }
        let table = save
            .tables
            .last_mut()
            .ok_or_else(|| err("a chain or rule outside a table"))?;
        if let Some(decl) = line.strip_prefix(':') {
            let name = decl
                .split_whitespace()
                .next()
                .ok_or_else(|| err("a chain declaration without a name"))?;
            table.chains.push(name.to_owned());
            continue;
        }
        let (counters, rest) = match line.strip_prefix('[') {
            Some(c) => {
                let (counters, rest) = c
                    .split_once(']')
                    .ok_or_else(|| err("unterminated counters"))?;
                let (p, b) = counters
                    .split_once(':')
                    .ok_or_else(|| err("counters without ':'"))?;
                let p = p.parse().map_err(|_| err("bad packet counter"))?;
                let b = b.parse().map_err(|_| err("bad byte counter"))?;
                (Some((p, b)), rest.trim_start())
            }
            None => (None, line),
        };
        let words = split_words(rest).ok_or_else(|| err("unterminated quote"))?;
        if words.first().map(String::as_str) != Some("-A") || words.len() < 2 {
            return Err(err("expected -A CHAIN"));
        }
        let mut rule = Rule {
            chain: words[1].clone(),
            text: rest.to_owned(),
            packets: counters.map(|c| c.0),
            bytes: counters.map(|c| c.1),
            ..Rule::default()
        };
        let mut it = words[2..].iter().peekable();
        let mut negated = false;
        while let Some(w) = it.next() {
            // `! -d X` matches everything but X: a negated match names no Service or port.
            let positive = !std::mem::replace(&mut negated, w == "!");
            let mut value = || it.peek().map(|v| v.to_string());
            match w.as_str() {
                "--comment" => rule.comment = value(),
                "-j" | "-g" => rule.target = value(),
                "-d" if positive => {
                    rule.dst = value().map(|d| {
                        d.trim_end_matches("/32")
                            .trim_end_matches("/128")
                            .to_owned()
                    })
                }
                "-p" if positive => rule.proto = value(),
                "--dport" if positive => rule.dport = value().and_then(|p| p.parse().ok()),
                "--to-destination" => rule.to_destination = value(),
                // Other options, their values, and `!`.
                _ => continue,
            }
            it.next();
        }
        table.rules.push(rule);
    }
    Ok(save)
}

/// Shell-like words: double quotes group, backslash escapes inside quotes.
fn split_words(s: &str) -> Option<Vec<String>> {
    let mut words = Vec::new();
    let mut chars = s.chars().peekable();
    loop {
        while chars.peek().is_some_and(|c| c.is_whitespace()) {
            chars.next();
        }
        if chars.peek().is_none() {
            return Some(words);
        }
        let mut word = String::new();
        let mut quoted = false;
        while let Some(c) = chars.next() {
            match c {
                '"' => quoted = !quoted,
                '\\' if quoted => word.push(chars.next()?),
                c if c.is_whitespace() && !quoted => break,
                c => word.push(c),
            }
        }
        if quoted {
            return None;
        }
        words.push(word);
    }
}

/// How kube-proxy runs on the node, judged from what it left there.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ProxyMode {
    /// `KUBE-SVC-*`/`KUBE-SEP-*` chains in the iptables nat table.
    Iptables,
    /// The `kube-ipvs0` dummy interface holding Service IPs (and `KUBE-*` ipsets in the rules).
    Ipvs,
    /// The `kube-proxy` nftables table (kube-proxy's nftables mode).
    Nftables,
    /// None of the above.
    Unknown,
}

impl std::fmt::Display for ProxyMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            ProxyMode::Iptables => "iptables",
            ProxyMode::Ipvs => "ipvs",
            ProxyMode::Nftables => "nftables",
            ProxyMode::Unknown => "unknown",
        })
    }
}

/// The evidence the mode is judged from.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct ModeEvidence {
    /// The `kube-ipvs0` interface exists.
    pub kube_ipvs0: bool,
    /// Rules match `KUBE-*` ipsets (`--match-set KUBE-…`).
    pub kube_ipsets: bool,
    /// An nftables table named `kube-proxy` exists (any family).
    pub nft_kube_proxy_table: bool,
    /// `KUBE-SVC-*` chains in a nat table of either backend.
    pub svc_chains: usize,
    /// A `KUBE-SERVICES` chain in a nat or filter table of either backend: iptables mode even
    /// when no Service has endpoints (kube-proxy then writes no `KUBE-SVC-*` chain, only its
    /// REJECT rules).
    pub kube_services: bool,
}

/// The mode the evidence points to (nftables before ipvs before iptables: newer modes leave the
/// older ones' chains behind after a switch, not the other way round).
pub fn mode(e: &ModeEvidence) -> ProxyMode {
    if e.nft_kube_proxy_table {
        ProxyMode::Nftables
    } else if e.kube_ipvs0 || e.kube_ipsets {
        ProxyMode::Ipvs
    } else if e.svc_chains > 0 || e.kube_services {
        ProxyMode::Iptables
    } else {
        ProxyMode::Unknown
    }
}

/// Counts the evidence of `saves` (any backend) for [`mode`].
pub fn mode_evidence<'a>(
    saves: impl IntoIterator<Item = &'a Save>,
    kube_ipvs0: bool,
    nft_tables: &[String],
) -> ModeEvidence {
    let mut e = ModeEvidence {
        kube_ipvs0,
        nft_kube_proxy_table: nft_tables
            .iter()
            .any(|t| t.split_whitespace().last() == Some("kube-proxy")),
        ..ModeEvidence::default()
    };
    for save in saves {
        e.kube_ipsets |= save
            .rules()
            .any(|(_, r)| r.text.contains("--match-set KUBE-"));
        e.kube_services |= ["nat", "filter"].iter().any(|name| {
            save.table(name)
                .is_some_and(|t| t.chains.iter().any(|c| c == "KUBE-SERVICES"))
        });
        e.svc_chains += save.table("nat").map_or(0, |t| {
            t.chains
                .iter()
                .filter(|c| c.starts_with("KUBE-SVC-"))
                .count()
        });
    }
    e
}

/// The DNS Service as kube-proxy's rules describe it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DnsService {
    /// kube-proxy's name of the port (`kube-system/kube-dns:dns`), or `udp/53` when found by port.
    pub name: String,
    /// The cluster IP.
    pub ip: IpAddr,
    /// The Service port.
    pub port: u16,
    /// The `KUBE-SVC-*` chain; `None` when the Service has no endpoints.
    pub svc_chain: Option<String>,
    /// DNAT targets, in rule order.
    pub endpoints: Vec<SocketAddr>,
    /// kube-proxy's "has no endpoints" REJECT is in place.
    pub rejects: bool,
}

/// The name of a DNS Service read from IPVS's virtual services (kube-proxy's ipvs mode).
pub const IPVS_DNS_NAME: &str = "ipvs udp/53";

impl DnsService {
    /// Read from IPVS (kube-proxy's ipvs mode): IPVS, not a nat table, does its NAT.
    pub fn by_ipvs(&self) -> bool {
        self.name == IPVS_DNS_NAME
    }

    /// The Service address (`10.96.0.10:53`, `[fd00:10:96::a]:53`).
    pub fn socket(&self) -> SocketAddr {
        SocketAddr::new(self.ip, self.port)
    }

    /// The endpoints' addresses.
    pub fn endpoint_ips(&self) -> Vec<IpAddr> {
        self.endpoints.iter().map(SocketAddr::ip).collect()
    }
}

/// The UDP DNS Service in one save: the rule in nat `KUBE-SERVICES` commented
/// `kube-system/kube-dns:dns cluster IP` (else any UDP/53 Service rule), followed through its
/// `KUBE-SVC-` chain to the `KUBE-SEP-` chains' DNAT targets; or kube-proxy's "has no endpoints"
/// REJECT in filter `KUBE-SERVICES`.
pub fn dns_service(save: &Save) -> Option<DnsService> {
    let is_dns_name = |r: &Rule| {
        r.comment
            .as_deref()
            .is_some_and(|c| c.starts_with(&format!("{DNS_PORT_NAME} ")))
    };
    let udp53 = |r: &Rule| r.proto.as_deref() == Some("udp") && r.dport == Some(53);
    let portal = |r: &&Rule| {
        r.chain == "KUBE-SERVICES"
            && r.dst.is_some()
            && r.target
                .as_deref()
                .is_some_and(|t| t.starts_with("KUBE-SVC-"))
            && r.proto.as_deref() == Some("udp")
    };
    if let Some(nat) = save.table("nat") {
        let rule = nat
            .rules
            .iter()
            .filter(portal)
            .find(|r| is_dns_name(r))
            .or_else(|| nat.rules.iter().filter(portal).find(|r| udp53(r)));
        if let Some(rule) = rule {
            let ip = rule.dst.as_deref()?.parse().ok()?;
            let svc = rule.target.clone()?;
            let endpoints = nat
                .rules
                .iter()
                .filter(|r| r.chain == svc)
                .filter_map(|r| r.target.as_deref().filter(|t| t.starts_with("KUBE-SEP-")))
                .filter_map(|sep| {
                    nat.rules
                        .iter()
                        .filter(|r| r.chain == sep)
                        .find_map(|r| r.to_destination.as_deref()?.parse::<SocketAddr>().ok())
                })
                .collect();
            let name = if is_dns_name(rule) {
                DNS_PORT_NAME.to_owned()
            } else {
                "udp/53".to_owned()
            };
            return Some(DnsService {
                name,
                ip,
                port: rule.dport.unwrap_or(53),
                svc_chain: Some(svc),
                endpoints,
                rejects: false,
            });
        }
    }
    let reject = save.table("filter")?.rules.iter().find(|r| {
        r.chain == "KUBE-SERVICES"
            && r.target.as_deref() == Some("REJECT")
            && udp53(r)
            && r.comment
                .as_deref()
                .is_some_and(|c| c.ends_with("has no endpoints"))
    })?;
    let name = reject
        .comment
        .as_deref()
        .and_then(|c| c.strip_suffix(" has no endpoints"))
        .unwrap_or("udp/53");
    Some(DnsService {
        name: name.to_owned(),
        ip: reject.dst.as_deref()?.parse().ok()?,
        port: reject.dport.unwrap_or(53),
        svc_chain: None,
        endpoints: Vec::new(),
        rejects: true,
    })
}

/// One rule's packet counter, for deltas over a trace window.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct RuleCounter {
    /// The backend the rule is in.
    pub backend: Backend,
    /// The table.
    pub table: String,
    /// The rule as printed (from `-A` on): its identity across snapshots.
    pub rule: String,
    /// Packets.
    pub packets: u64,
    /// Bytes.
    pub bytes: u64,
}

/// The counters of every rule on the DNS path in `save`: the Service's `KUBE-SERVICES` rules, its
/// `KUBE-SVC-`/`KUBE-SEP-` chains, and any other rule naming the Service IP, an endpoint IP, or
/// UDP port 53 (a DROP or REJECT someone added); of the TCP rules only the DROPs and REJECTs
/// (what blocks a truncated answer's retry), not kube-proxy's TCP Service port.
pub fn dns_counters(backend: Backend, save: &Save, service: &DnsService) -> Vec<RuleCounter> {
    let mut chains: BTreeSet<String> = service.svc_chain.iter().cloned().collect();
    for (_, r) in save.rules() {
        if service.svc_chain.as_deref() == Some(r.chain.as_str())
            && let Some(t) = r.target.as_deref().filter(|t| t.starts_with("KUBE-SEP-"))
        {
            chains.insert(t.to_owned());
        }
    }
    let ips: Vec<String> = std::iter::once(service.ip.to_string())
        .chain(service.endpoints.iter().map(|e| e.ip().to_string()))
        .collect();
    let named = |c: &str| c == service.name || c.starts_with(&format!("{} ", service.name));
    let blocks = |r: &Rule| matches!(r.target.as_deref(), Some("DROP" | "REJECT"));
    save.rules()
        .filter(|(_, r)| match r.proto.as_deref() {
            None | Some("udp") => true,
            Some("tcp") => blocks(r),
            Some(_) => false,
        })
        .filter(|(_, r)| {
            chains.contains(&r.chain)
                || r.target.as_deref().is_some_and(|t| chains.contains(t))
                || r.dport == Some(service.port) && r.proto.is_some()
                || r.comment.as_deref().is_some_and(named)
                || r.dst
                    .as_deref()
                    .is_some_and(|d| ips.iter().any(|ip| ip == d))
                || r.to_destination
                    .as_deref()
                    .is_some_and(|d| ips.iter().any(|ip| d.starts_with(&format!("{ip}:"))))
        })
        .filter_map(|(table, r)| {
            Some(RuleCounter {
                backend,
                table: table.to_owned(),
                rule: r.text.clone(),
                packets: r.packets?,
                bytes: r.bytes?,
            })
        })
        .collect()
}

/// Counter changes between two snapshots, rules that moved only (a rule new in `after` counts
/// from zero).
pub fn counter_deltas(before: &[RuleCounter], after: &[RuleCounter]) -> Vec<RuleCounter> {
    after
        .iter()
        .filter_map(|a| {
            let b = before
                .iter()
                .find(|b| b.backend == a.backend && b.table == a.table && b.rule == a.rule);
            let (bp, bb) = b.map_or((0, 0), |b| (b.packets, b.bytes));
            (a.packets != bp).then(|| RuleCounter {
                packets: a.packets.saturating_sub(bp),
                bytes: a.bytes.saturating_sub(bb),
                ..a.clone()
            })
        })
        .collect()
}

#[cfg(test)]
mod tests;
