//! A NetworkPolicy engine's rules in the node's filter table, as Calico (iptables dataplane)
//! writes them: filter FORWARD jumps to `cali-FORWARD`, which sends traffic bound for a workload
//! to `cali-to-wl-dispatch`, which goes (`-g`) to the per-endpoint chain `cali-tw-<iface>`. There
//! a policy denies DNS from one client (the policy-drop fault), so the other clients still get
//! answers.
//!
//! Every rule carries Calico's `cali:<hash>` comment: per chain, a SHA-224 chained over the chain
//! name and each rule, base64url, first 16 characters (Calico's `RuleHashes`). Calico matches
//! workload interfaces with `-o cali+`; the lab's pods hang off a bridge, where filter FORWARD
//! sees the bridge as the output device, so the bridge port is matched with `physdev`, as
//! kube-router does on its bridge.

use std::{fmt::Write as _, net::Ipv4Addr};

use sha2::{Digest as _, Sha224};

/// The policy-drop fault's rules.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicyDrop {
    /// The client whose DNS queries the policy drops.
    pub client: Ipv4Addr,
    /// The node-side interfaces of the DNS pods the policy applies to, one `cali-tw-` chain each.
    pub interfaces: Vec<String>,
}

/// The per-endpoint chain of `iface` (Calico's `cali-tw-<iface>`: "to workload").
pub fn endpoint_chain(iface: &str) -> String {
    format!("cali-tw-{iface}")
}

/// Calico's rule hashes for `rules` (each rule's text after `-A CHAIN `) in `chain`.
fn rule_hashes(chain: &str, rules: &[String]) -> Vec<String> {
    let mut hash = Sha224::digest(chain.as_bytes()).to_vec();
    rules
        .iter()
        .map(|rule| {
            let mut s = Sha224::new();
            s.update(&hash);
            s.update(rule.as_bytes());
            hash = s.finalize().to_vec();
            base64url(&hash[..12])
        })
        .collect()
}

/// Unpadded base64url of `bytes` (a multiple of 3 long).
fn base64url(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    bytes
        .chunks(3)
        .flat_map(|c| {
            let n = (u32::from(c[0]) << 16)
                | (u32::from(*c.get(1).unwrap_or(&0)) << 8)
                | u32::from(*c.get(2).unwrap_or(&0));
            (0..4)
                .rev()
                .map(move |i| ALPHABET[((n >> (i * 6)) & 0x3f) as usize] as char)
        })
        .collect()
}

/// Appends `rules` to `chain` in `out`, each with its `cali:` comment after the first `matches`
/// (the comment sits where Calico puts it: after the interface match, before the others).
fn chain_rules(out: &mut String, chain: &str, rules: &[(&str, &str)]) {
    let texts: Vec<String> = rules.iter().map(|(m, t)| format!("{m} {t}")).collect();
    for ((matches, target), hash) in rules.iter().zip(rule_hashes(chain, &texts)) {
        let matches = if matches.is_empty() {
            String::new()
        } else {
            format!(" {matches}")
        };
        let _ = writeln!(
            out,
            "-A {chain}{matches} -m comment --comment \"cali:{hash}\" {target}"
        );
    }
}

/// The chain declarations of the filter table (`:chain - [0:0]` lines).
pub fn chains(policy: &PolicyDrop) -> String {
    let mut out = String::from(":cali-FORWARD - [0:0]\n:cali-to-wl-dispatch - [0:0]\n");
    for iface in &policy.interfaces {
        let _ = writeln!(out, ":{} - [0:0]", endpoint_chain(iface));
    }
    out
}

/// The rules: the jump from FORWARD, the dispatch, and each endpoint's chain, where rule 3 drops
/// DNS from the client.
pub fn rules(policy: &PolicyDrop) -> String {
    let mut out = String::new();
    chain_rules(&mut out, "FORWARD", &[("", "-j cali-FORWARD")]);
    chain_rules(
        &mut out,
        "cali-FORWARD",
        &[("-m physdev --physdev-is-bridged", "-j cali-to-wl-dispatch")],
    );
    let dispatch: Vec<(String, String)> = policy
        .interfaces
        .iter()
        .map(|iface| {
            (
                format!("-m physdev --physdev-out {iface} --physdev-is-bridged"),
                format!("-g {}", endpoint_chain(iface)),
            )
        })
        .collect();
    let dispatch: Vec<(&str, &str)> = dispatch
        .iter()
        .map(|(m, t)| (m.as_str(), t.as_str()))
        .collect();
    chain_rules(&mut out, "cali-to-wl-dispatch", &dispatch);
    let deny = format!("-s {}/32 -p udp", policy.client);
    for iface in &policy.interfaces {
        chain_rules(
            &mut out,
            &endpoint_chain(iface),
            &[
                ("", "-m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT"),
                ("", "-m conntrack --ctstate INVALID -j DROP"),
                (deny.as_str(), "-m udp --dport 53 -j DROP"),
            ],
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> PolicyDrop {
        PolicyDrop {
            client: Ipv4Addr::new(10, 244, 0, 20),
            interfaces: vec!["trpdd0".to_owned()],
        }
    }

    #[test]
    fn base64url_matches_rfc_4648() {
        assert_eq!(base64url(b"foobar"), "Zm9vYmFy");
        assert_eq!(base64url(&[0xfb, 0xff, 0xbf]), "-_-_");
    }

    #[test]
    fn the_endpoint_chain_drops_the_client_at_rule_3() {
        let text = rules(&policy());
        let chain: Vec<&str> = text
            .lines()
            .filter(|l| l.starts_with("-A cali-tw-trpdd0 "))
            .collect();
        assert_eq!(chain.len(), 3);
        assert!(
            chain[2].starts_with(
                "-A cali-tw-trpdd0 -s 10.244.0.20/32 -p udp -m comment --comment \"cali:"
            ),
            "{}",
            chain[2]
        );
        assert!(chain[2].ends_with(" -m udp --dport 53 -j DROP"));
        assert!(text.contains(
            "-A cali-to-wl-dispatch -m physdev --physdev-out trpdd0 --physdev-is-bridged -m comment --comment \"cali:"
        ));
        assert!(text.starts_with("-A FORWARD -m comment --comment \"cali:"));
    }

    #[test]
    fn hashes_are_16_characters_and_differ_per_rule() {
        let hashes = rule_hashes("cali-tw-trpdd0", &["a".to_owned(), "a".to_owned()]);
        assert_eq!(hashes[0].len(), 16);
        assert_ne!(
            hashes[0], hashes[1],
            "chained: the same rule twice hashes apart"
        );
    }
}
