//! Rule handles -> what the rule says: `nft -j list ruleset`, each rule rendered compactly in
//! nft's syntax, and for iptables-nft's tables the rule as `iptables-nft-save` prints it (its xt
//! matches and targets, a `-m comment` among them, are opaque in nft's JSON).
//!
//! The JSON types are a minimal copy of the idea in `node::nft` (whose types are private there
//! and read other fields): only rules, with their expressions left as JSON values to render.

use std::collections::HashMap;

use serde::Deserialize;
use serde_json::Value;

use super::{Error, message::Family, table::command};

/// A rule that gave a verdict.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct RuleRef {
    /// The rule's handle, unique within its table.
    pub handle: u64,
    /// The rule, compact: for iptables-nft's tables as `iptables-nft-save` prints it without
    /// `-A CHAIN`, else in nft's syntax without counters. Empty when the rule was not in the
    /// ruleset when it was read (it has been replaced or removed since).
    pub text: String,
    /// The rule's comment (nft's `comment "…"`, iptables' `-m comment --comment "…"`).
    pub comment: Option<String>,
    /// The rule's position in its chain, from 1 (as `iptables -L --line-numbers` counts);
    /// `None` when the rule was not in the ruleset read.
    pub number: Option<u64>,
}

#[derive(Debug, Deserialize)]
struct Ruleset {
    nftables: Vec<Object>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct Object {
    rule: Option<RuleObject>,
}

#[derive(Debug, Deserialize)]
struct RuleObject {
    family: String,
    table: String,
    chain: String,
    handle: u64,
    #[serde(default)]
    comment: Option<String>,
    #[serde(default)]
    expr: Vec<Value>,
}

/// Key of a rule: its table's family and name, and its handle.
type Key = (Family, String, u64);

/// Every rule of a namespace's ruleset, by handle.
#[derive(Debug, Default)]
pub(crate) struct RuleBook {
    rules: HashMap<Key, RuleRef>,
}

impl RuleBook {
    /// Reads the ruleset of the calling thread's namespace (`nft -j list ruleset`, and
    /// `iptables-nft-save` / `ip6tables-nft-save` when there are ip / ip6 tables; a failing or
    /// missing save program only loses the iptables syntax).
    pub(crate) fn read() -> Result<RuleBook, Error> {
        let out = command("nft", &["-j", "list", "ruleset"], None)?;
        let json = String::from_utf8_lossy(&out.stdout);
        let ruleset: Ruleset =
            serde_json::from_str(&json).map_err(|source| Error::Ruleset { source })?;
        let mut saves = Vec::new();
        for (family, program) in [
            (Family::Ip, "iptables-nft-save"),
            (Family::Ip6, "ip6tables-nft-save"),
        ] {
            let has = ruleset
                .nftables
                .iter()
                .filter_map(|o| o.rule.as_ref())
                .any(|r| Family::from_name(&r.family) == family);
            if !has {
                continue;
            }
            match command(program, &[], None) {
                Ok(out) => saves.push((family, String::from_utf8_lossy(&out.stdout).into_owned())),
                Err(e) => log::debug!("rules of {family} tables in nft syntax only: {e}"),
            }
        }
        let saves: Vec<(Family, &str)> = saves.iter().map(|(f, s)| (*f, s.as_str())).collect();
        Ok(RuleBook::build(ruleset, &saves))
    }

    /// The book of `nft -j list ruleset` output and `*-save` outputs (for tests).
    #[cfg(test)]
    pub(crate) fn parse(json: &str, saves: &[(Family, &str)]) -> RuleBook {
        RuleBook::build(serde_json::from_str(json).expect("nft -j JSON"), saves)
    }

    fn build(ruleset: Ruleset, saves: &[(Family, &str)]) -> RuleBook {
        let mut chains: HashMap<(Family, &str, &str), Vec<&RuleObject>> = HashMap::new();
        for rule in ruleset.nftables.iter().filter_map(|o| o.rule.as_ref()) {
            let family = Family::from_name(&rule.family);
            chains
                .entry((family, &rule.table, &rule.chain))
                .or_default()
                .push(rule);
        }
        let saved: HashMap<(Family, &str, &str), Vec<&str>> = saves
            .iter()
            .flat_map(|(family, text)| {
                save_rules(text)
                    .into_iter()
                    .map(move |((table, chain), lines)| ((*family, table, chain), lines))
            })
            .collect();
        let mut rules = HashMap::new();
        for (key @ (family, table, _), objects) in &chains {
            // The save program lists a chain's rules in the kernel's order, as nft does; a chain
            // whose counts differ (rules changed between the two reads) keeps nft's syntax.
            let lines = saved.get(key).filter(|l| l.len() == objects.len());
            for (i, rule) in objects.iter().enumerate() {
                let (text, comment) = match lines {
                    Some(lines) => (lines[i].to_owned(), save_comment(lines[i])),
                    None => (render(&rule.expr), None),
                };
                let rule_ref = RuleRef {
                    handle: rule.handle,
                    text,
                    comment: rule.comment.clone().or(comment),
                    number: Some(i as u64 + 1),
                };
                rules.insert((*family, (*table).to_owned(), rule.handle), rule_ref);
            }
        }
        RuleBook { rules }
    }

    /// The rule with `handle` in table `family table`.
    pub(crate) fn get(&self, family: Family, table: &str, handle: u64) -> Option<&RuleRef> {
        self.rules.get(&(family, table.to_owned(), handle))
    }

    /// How many rules the book holds.
    pub(crate) fn len(&self) -> usize {
        self.rules.len()
    }
}

/// The `-A CHAIN …` lines of `*-save` output by table and chain, without `-A CHAIN `.
fn save_rules(text: &str) -> HashMap<(&str, &str), Vec<&str>> {
    let mut out: HashMap<(&str, &str), Vec<&str>> = HashMap::new();
    let mut table = "";
    for line in text.lines() {
        if let Some(name) = line.strip_prefix('*') {
            table = name.trim();
        } else if let Some(rest) = line.strip_prefix("-A ") {
            let (chain, rule) = rest.split_once(' ').unwrap_or((rest, ""));
            out.entry((table, chain)).or_default().push(rule);
        }
    }
    out
}

/// The value of `--comment` in an iptables-save rule (quoted with `"` and `\"` escapes, or one
/// word).
pub(crate) fn save_comment(rule: &str) -> Option<String> {
    let at = rule.find("--comment ")? + "--comment ".len();
    let rest = &rule[at..];
    let Some(quoted) = rest.strip_prefix('"') else {
        return rest.split_whitespace().next().map(str::to_owned);
    };
    let mut out = String::new();
    let mut chars = quoted.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => out.extend(chars.next()),
            '"' => return Some(out),
            c => out.push(c),
        }
    }
    Some(out)
}

/// A rule's expressions in nft's syntax, counters left out.
pub(crate) fn render(exprs: &[Value]) -> String {
    exprs
        .iter()
        .filter_map(statement)
        .collect::<Vec<_>>()
        .join(" ")
}

/// The one key of a JSON object and its value.
fn single(v: &Value) -> Option<(&str, &Value)> {
    let map = v.as_object()?;
    if map.len() != 1 {
        return None;
    }
    map.iter().next().map(|(k, v)| (k.as_str(), v))
}

fn statement(e: &Value) -> Option<String> {
    let Some((key, v)) = single(e) else {
        return Some(operand(e));
    };
    Some(match key {
        "counter" => return None,
        "match" => {
            let op = v["op"].as_str().unwrap_or("==");
            let op = if matches!(op, "==" | "in") {
                String::new()
            } else {
                format!("{op} ")
            };
            format!("{} {op}{}", operand(&v["left"]), operand(&v["right"]))
        }
        "jump" | "goto" => format!("{key} {}", operand(&v["target"])),
        "mangle" => format!("{} set {}", operand(&v["key"]), operand(&v["value"])),
        "xt" => format!("xt {} {}", operand(&v["type"]), operand(&v["name"])),
        "dnat" | "snat" => match (v.get("addr"), v.get("port")) {
            (Some(a), Some(p)) => format!("{key} to {}:{}", operand(a), operand(p)),
            (Some(a), None) => format!("{key} to {}", operand(a)),
            _ => key.to_owned(),
        },
        "vmap" | "map" => format!("{} {key} {}", operand(&v["key"]), operand(&v["data"])),
        _ if v.is_null() => key.to_owned(),
        _ => format!("{key} {}", operand(v)),
    })
}

fn operand(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Number(n) => n.to_string(),
        Value::Bool(b) => b.to_string(),
        Value::Null => String::new(),
        Value::Array(items) => list(items),
        Value::Object(_) => match single(v) {
            Some(("payload", p)) if p.get("protocol").is_some() => {
                format!("{} {}", operand(&p["protocol"]), operand(&p["field"]))
            }
            Some(("payload", p)) => format!(
                "@{},{},{}",
                operand(&p["base"]),
                operand(&p["offset"]),
                operand(&p["len"])
            ),
            Some(("meta" | "ct" | "rt" | "socket" | "fib", m)) if m.get("key").is_some() => {
                let name = single(v).map(|(k, _)| k).unwrap_or_default();
                format!("{name} {}", operand(&m["key"]))
            }
            Some(("set", Value::Array(items))) => list(items),
            Some(("concat", Value::Array(items))) => {
                items.iter().map(operand).collect::<Vec<_>>().join(" . ")
            }
            Some(("range", Value::Array(r))) if r.len() == 2 => {
                format!("{}-{}", operand(&r[0]), operand(&r[1]))
            }
            Some(("prefix", p)) => format!("{}/{}", operand(&p["addr"]), operand(&p["len"])),
            Some(("elem", e)) => operand(&e["val"]),
            Some(("jump" | "goto", t)) => {
                format!(
                    "{} {}",
                    single(v).map(|(k, _)| k).unwrap_or_default(),
                    operand(&t["target"])
                )
            }
            Some((key, Value::Null)) => key.to_owned(),
            _ => v.to_string(),
        },
    }
}

fn list(items: &[Value]) -> String {
    let parts: Vec<String> = items
        .iter()
        .map(|item| match item {
            // A map element: `[key, value]`.
            Value::Array(pair) if pair.len() == 2 => {
                format!("{} : {}", operand(&pair[0]), operand(&pair[1]))
            }
            other => operand(other),
        })
        .collect();
    format!("{{ {} }}", parts.join(", "))
}
