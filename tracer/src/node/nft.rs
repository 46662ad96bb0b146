//! nftables as `nft -j` prints it (libnftables' JSON schema, `json_schema_version` 1): the tables
//! of `nft -j list tables`, and the DNS Service in kube-proxy's nftables-mode table
//! (`nft -j list table ip kube-proxy`). Only the fields read here are typed; every other object,
//! expression or value is skipped, so a ruleset with things this module does not know still parses.

use std::{collections::HashMap, net::SocketAddr};

use serde::{Deserialize, de::IgnoredAny};

use super::kubeproxy::{DNS_PORT_NAME, DnsService};

/// A ruleset: `{"nftables": [ {"metainfo": …}, {"table": …}, {"chain": …}, … ]}`.
#[derive(Debug, Deserialize)]
pub struct Ruleset {
    nftables: Vec<Object>,
}

/// One object; exactly one of the fields is set (or none, for kinds not read here).
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct Object {
    table: Option<TableObject>,
    chain: Option<ChainObject>,
    rule: Option<RuleObject>,
    map: Option<MapObject>,
}

#[derive(Debug, Deserialize)]
struct TableObject {
    family: String,
    name: String,
}

#[derive(Debug, Deserialize)]
struct ChainObject {
    name: String,
}

#[derive(Debug, Deserialize)]
struct RuleObject {
    chain: String,
    #[serde(default)]
    expr: Vec<Expr>,
}

#[derive(Debug, Deserialize)]
struct MapObject {
    #[serde(default)]
    elem: Vec<Element>,
}

/// A map element: `[key, value]`.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum Element {
    Pair(Key, Value),
    Other(IgnoredAny),
}

/// A map key: a concatenation (`10.96.0.10 . udp . 53`), possibly wrapped with a comment.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum Key {
    Concat { concat: Vec<Scalar> },
    Commented { elem: CommentedKey },
    Other(IgnoredAny),
}

#[derive(Debug, Deserialize)]
struct CommentedKey {
    val: Box<Key>,
    comment: Option<String>,
}

/// A map value or vmap entry: a verdict (`goto`/`jump` a chain) or anything else.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum Value {
    Goto { goto: Target },
    Jump { jump: Target },
    Other(IgnoredAny),
}

#[derive(Debug, Deserialize)]
struct Target {
    target: String,
}

/// A string or number in an expression.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum Scalar {
    Str(String),
    Num(u64),
    Other(IgnoredAny),
}

/// One statement of a rule; one field is set (or none, for statements not read here).
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct Expr {
    #[serde(rename = "match")]
    matches: Option<Match>,
    dnat: Option<Nat>,
    vmap: Option<Vmap>,
    goto: Option<Target>,
    jump: Option<Target>,
}

#[derive(Debug, Deserialize)]
struct Match {
    op: String,
    left: Operand,
    right: Scalar,
}

/// The left side of a match: a header field (`ip daddr`, `udp dport`) or anything else.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum Operand {
    Payload { payload: Payload },
    Other(IgnoredAny),
}

#[derive(Debug, Deserialize)]
struct Payload {
    protocol: String,
    field: String,
}

#[derive(Debug, Deserialize)]
struct Nat {
    addr: Option<Scalar>,
    port: Option<Scalar>,
}

#[derive(Debug, Deserialize)]
struct Vmap {
    data: VmapData,
}

/// An anonymous vmap's elements (`{ 0 : goto endpoint-…, 1 : … }`), or a named map.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum VmapData {
    Set { set: Vec<Element> },
    Other(IgnoredAny),
}

impl Scalar {
    fn str(&self) -> Option<&str> {
        match self {
            Scalar::Str(s) => Some(s),
            _ => None,
        }
    }

    fn num(&self) -> Option<u64> {
        match self {
            Scalar::Num(n) => Some(*n),
            Scalar::Str(s) => s.parse().ok(),
            Scalar::Other(_) => None,
        }
    }
}

impl Value {
    fn target(&self) -> Option<&str> {
        match self {
            Value::Goto { goto: t } | Value::Jump { jump: t } => Some(&t.target),
            Value::Other(_) => None,
        }
    }
}

impl Key {
    /// The concatenated parts and the element's comment.
    fn parts(&self) -> Option<(&[Scalar], Option<&str>)> {
        match self {
            Key::Concat { concat } => Some((concat, None)),
            Key::Commented { elem } => {
                let (parts, _) = elem.val.parts()?;
                Some((parts, elem.comment.as_deref()))
            }
            Key::Other(_) => None,
        }
    }
}

impl Match {
    /// The right side of an `==` match on `protocol field`.
    fn equal(&self, protocol: &str, field: &str) -> Option<&Scalar> {
        match &self.left {
            Operand::Payload { payload: p }
                if self.op == "==" && p.protocol == protocol && p.field == field =>
            {
                Some(&self.right)
            }
            _ => None,
        }
    }
}

impl Ruleset {
    /// Parses `nft -j` output.
    pub fn parse(json: &str) -> Result<Ruleset, serde_json::Error> {
        serde_json::from_str(json)
    }

    /// The tables, as `FAMILY NAME`.
    pub fn tables(&self) -> Vec<String> {
        self.nftables
            .iter()
            .filter_map(|o| o.table.as_ref())
            .map(|t| format!("{} {}", t.family, t.name))
            .collect()
    }

    fn chain_names(&self) -> impl Iterator<Item = &str> {
        self.nftables
            .iter()
            .filter_map(|o| Some(o.chain.as_ref()?.name.as_str()))
    }

    /// Every map element `(key, value)` of every map.
    fn map_elements(&self) -> impl Iterator<Item = (&Key, &Value)> {
        self.nftables
            .iter()
            .filter_map(|o| o.map.as_ref())
            .flat_map(|m| &m.elem)
            .filter_map(|e| match e {
                Element::Pair(k, v) => Some((k, v)),
                Element::Other(_) => None,
            })
    }

    /// The statements of every rule of each chain, in rule order.
    fn chains(&self) -> HashMap<&str, Vec<&Expr>> {
        let mut chains: HashMap<&str, Vec<&Expr>> = HashMap::new();
        for rule in self.nftables.iter().filter_map(|o| o.rule.as_ref()) {
            chains.entry(&rule.chain).or_default().extend(&rule.expr);
        }
        chains
    }
}

/// Whether a chain's statements match UDP destination port 53.
fn matches_udp53(body: &[&Expr]) -> bool {
    body.iter()
        .filter_map(|e| e.matches.as_ref()?.equal("udp", "dport")?.num())
        .any(|p| p == 53)
}

/// The chains a service chain sends to: its vmap's targets and direct gotos/jumps, in order.
fn endpoint_chains<'a>(body: &[&'a Expr]) -> Vec<&'a str> {
    let mut out = Vec::new();
    for e in body {
        if let Some(VmapData::Set { set }) = e.vmap.as_ref().map(|v| &v.data) {
            out.extend(set.iter().filter_map(|el| match el {
                Element::Pair(_, v) => v.target(),
                Element::Other(_) => None,
            }));
        }
        out.extend(
            [&e.goto, &e.jump]
                .into_iter()
                .flatten()
                .map(|t| t.target.as_str()),
        );
    }
    out.retain(|t| t.starts_with("endpoint-"));
    out
}

/// The `dnat to ADDR:PORT` of an endpoint chain.
fn dnat_target(body: &[&Expr]) -> Option<SocketAddr> {
    body.iter().find_map(|e| {
        let nat = e.dnat.as_ref()?;
        let ip = nat.addr.as_ref()?.str()?.parse().ok()?;
        let port = u16::try_from(nat.port.as_ref()?.num()?).ok()?;
        Some(SocketAddr::new(ip, port))
    })
}

/// The UDP DNS Service in kube-proxy's nftables table (its nftables mode): the
/// `service-…-kube-system/kube-dns/udp/dns` chain (else any service chain matching UDP port 53),
/// its `goto endpoint-…` targets and their `dnat to`; or the Service's element in the
/// `no-endpoint-services` map, which rejects.
pub fn dns_service(ruleset: &Ruleset) -> Option<DnsService> {
    let chains = ruleset.chains();
    let body_of = |name: &str| chains.get(name).map(Vec::as_slice).unwrap_or_default();
    let service = ruleset
        .chain_names()
        .find(|n| n.starts_with("service-") && n.ends_with("-kube-system/kube-dns/udp/dns"))
        .or_else(|| {
            ruleset
                .chain_names()
                .find(|n| n.starts_with("service-") && matches_udp53(body_of(n)))
        });
    let Some(name) = service else {
        return no_endpoints(ruleset);
    };
    let body = body_of(name);
    let daddr = body.iter().find_map(|e| {
        let m = e.matches.as_ref()?;
        m.equal("ip", "daddr")?.str()
    });
    let ip = match daddr {
        Some(ip) => ip.parse().ok()?,
        // Without a masquerade rule the chain does not name the IP: the service-ips map does.
        None => ruleset
            .map_elements()
            .find(|(_, v)| v.target() == Some(name))
            .and_then(|(k, _)| k.parts()?.0.first()?.str())?
            .parse()
            .ok()?,
    };
    let port = body
        .iter()
        .find_map(|e| e.matches.as_ref()?.equal("udp", "dport")?.num())
        .and_then(|p| u16::try_from(p).ok())
        .unwrap_or(53);
    let endpoints = endpoint_chains(body)
        .into_iter()
        .filter_map(|ep| dnat_target(body_of(ep)))
        .collect();
    // `service-HASH-NAMESPACE/NAME/PROTO/PORTNAME` -> `NAMESPACE/NAME:PORTNAME`.
    let port_name = name.splitn(3, '-').nth(2).and_then(|rest| {
        let parts: Vec<&str> = rest.split('/').collect();
        (parts.len() == 4).then(|| format!("{}/{}:{}", parts[0], parts[1], parts[3]))
    });
    Some(DnsService {
        name: port_name.unwrap_or_else(|| "udp/53".to_owned()),
        ip,
        port,
        svc_chain: Some(name.to_owned()),
        endpoints,
        rejects: false,
    })
}

/// The DNS Service's element in a map that sends it to `reject-chain` (kube-proxy's
/// `no-endpoint-services`).
fn no_endpoints(ruleset: &Ruleset) -> Option<DnsService> {
    let (parts, _) = ruleset
        .map_elements()
        .filter(|(_, v)| v.target() == Some("reject-chain"))
        .filter_map(|(k, _)| k.parts())
        .find(|(_, comment)| *comment == Some(DNS_PORT_NAME))?;
    Some(DnsService {
        name: DNS_PORT_NAME.to_owned(),
        ip: parts.first()?.str()?.parse().ok()?,
        port: u16::try_from(parts.get(2)?.num()?).ok()?,
        svc_chain: None,
        endpoints: Vec::new(),
        rejects: true,
    })
}

#[cfg(test)]
mod tests {
    use std::net::IpAddr;

    use super::*;

    const FX: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../tests/fixtures/inspect");

    fn fixture(path: &str) -> Ruleset {
        let json = std::fs::read_to_string(format!("{FX}/{path}")).unwrap();
        Ruleset::parse(&json).unwrap_or_else(|e| panic!("{path}: {e}"))
    }

    fn ep(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    #[test]
    fn tables_from_nft_j_list_tables() {
        assert_eq!(
            fixture("mixed/nft-j-list-tables.json").tables(),
            ["ip mangle", "ip filter", "ip nat"]
        );
        assert_eq!(
            fixture("modern/nft-j-list-table-kube-proxy.json").tables(),
            ["ip kube-proxy"]
        );
    }

    // The JSON fixtures are `nft -j list table ip kube-proxy` after `nft -f` of the text fixture
    // nft-list-table-kube-proxy.txt (and of variants) in a fresh network namespace, nft 1.0.6.
    #[test]
    fn nftables_mode_table_gives_the_dns_service() {
        let svc = dns_service(&fixture("modern/nft-j-list-table-kube-proxy.json")).unwrap();
        assert_eq!(svc.name, DNS_PORT_NAME);
        assert_eq!((svc.ip, svc.port), (IpAddr::from([10, 96, 0, 10]), 53));
        assert_eq!(svc.endpoints, [ep("10.244.0.10:53"), ep("10.244.0.11:53")]);
        assert_eq!(
            svc.svc_chain.as_deref(),
            Some("service-FY5PMXPG-kube-system/kube-dns/udp/dns")
        );
        assert!(!svc.rejects);

        // Without the masquerade rule the IP comes from the service-ips map.
        let bare = dns_service(&fixture("modern/nft-j-list-table-kube-proxy-bare.json")).unwrap();
        assert_eq!(bare.ip, IpAddr::from([10, 96, 0, 10]));
        assert_eq!(bare.endpoints, svc.endpoints);

        let none = dns_service(&fixture(
            "modern/nft-j-list-table-kube-proxy-no-endpoints.json",
        ))
        .unwrap();
        assert!(none.rejects && none.endpoints.is_empty());
        assert_eq!((none.ip, none.port), (IpAddr::from([10, 96, 0, 10]), 53));

        let empty = r#"{"nftables": [{"metainfo": {"json_schema_version": 1}}, {"table": {"family": "ip", "name": "kube-proxy", "handle": 1}}]}"#;
        assert_eq!(dns_service(&Ruleset::parse(empty).unwrap()), None);
        assert!(Ruleset::parse("table ip kube-proxy {\n}\n").is_err());
    }
}
