//! Where and why a failed query died, as one value: what the summaries count failed queries by
//! and `compare` names its figures after.
//!
//! In JSON a cause is its text (`netfilter: NETFILTER_DROP @ nft_do_chain`), so that it can key
//! a map; [`Cause::from_str`] reads that text back, and also the `no drop seen (last seen:
//! AtEndpoint)` form that reports written before [`Seen`] had a name used.

use std::{fmt, net::SocketAddr, str::FromStr};

use super::record::{Drop, QueryRecord, Seen, Stage};
use crate::kernel::symbols;

/// Where and why a failed query died. Ordered by kind (ICMP error, drop, queued behind a full
/// receive queue, no drop seen, no record), then by stage in path order, reason and function.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Cause {
    /// Refused with an ICMP error: `icmp: port unreachable`.
    Icmp {
        /// The error (`port unreachable`).
        what: String,
    },
    /// Freed by the kernel: `netfilter: NETFILTER_DROP @ nft_do_chain`.
    Drop {
        /// The stage.
        stage: Stage,
        /// The drop reason from this kernel's BTF (empty before 5.17).
        reason: String,
        /// The function that freed it (empty when no location was recorded).
        function: String,
    },
    /// No drop: delivered into a server socket whose receive queue was full, never read:
    /// `queued behind a full receive queue at 10.244.0.10:53, never read`.
    Queued {
        /// The server socket.
        endpoint: SocketAddr,
    },
    /// No drop and no ICMP error seen: `no drop seen (last seen: at_endpoint)`.
    NoDropSeen {
        /// How far it was seen.
        last_seen: Seen,
    },
    /// The tracer has no record of the query (a lost query of `probe`): `not seen by the tracer`.
    NotTraced,
}

const ICMP: &str = "icmp: ";
const NO_DROP: &str = "no drop seen (last seen: ";
const NOT_TRACED: &str = "not seen by the tracer";
const QUEUED: &str = "queued behind a full receive queue at ";
const NEVER_READ: &str = ", never read";

impl Cause {
    /// The cause of a failed query: a drop placed at conntrack (an ICMP error after it, such as
    /// the client's port unreachable for an answer whose DNAT was not undone, is its
    /// consequence), else its ICMP error, else its drop, else the full receive queue it sat in,
    /// else how far it was seen.
    pub fn of(r: &QueryRecord) -> Self {
        match (&r.icmp, &r.drop) {
            (Some(_), Some(d)) if d.stage == Stage::Conntrack => Self::of_drop(d),
            (Some(i), _) => Self::Icmp {
                what: i.what.clone(),
            },
            (None, Some(d)) => Self::of_drop(d),
            (None, None) => match &r.queued {
                Some(q) => Self::Queued {
                    endpoint: q.endpoint,
                },
                None => Self::NoDropSeen {
                    last_seen: r.last_seen,
                },
            },
        }
    }

    /// The cause a drop names: its stage, reason and the function of its location.
    pub fn of_drop(d: &Drop) -> Self {
        Self::Drop {
            stage: d.stage,
            reason: d.reason.clone(),
            function: symbols::function(&d.location).to_owned(),
        }
    }
}

impl fmt::Display for Cause {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Cause::Icmp { what } => write!(f, "{ICMP}{what}"),
            Cause::Drop {
                stage,
                reason,
                function,
            } => write!(f, "{stage}: {reason} @ {function}"),
            Cause::Queued { endpoint } => write!(f, "{QUEUED}{endpoint}{NEVER_READ}"),
            Cause::NoDropSeen { last_seen } => write!(f, "{NO_DROP}{last_seen})"),
            Cause::NotTraced => f.write_str(NOT_TRACED),
        }
    }
}

/// A text that is no cause.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "{text:?} is not a cause of a failed query (`icmp: ...`, `STAGE: REASON @ FUNCTION`, `queued behind a full receive queue at ADDRESS:PORT, never read`, `no drop seen (last seen: ...)` or `not seen by the tracer`)"
)]
pub struct ParseError {
    /// The text.
    pub text: String,
}

impl FromStr for Cause {
    type Err = ParseError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = || ParseError { text: s.to_owned() };
        if s == NOT_TRACED {
            return Ok(Cause::NotTraced);
        }
        if let Some(what) = s.strip_prefix(ICMP) {
            return Ok(Cause::Icmp {
                what: what.to_owned(),
            });
        }
        if let Some(rest) = s.strip_prefix(QUEUED) {
            let endpoint = rest.strip_suffix(NEVER_READ).ok_or_else(err)?;
            let endpoint = endpoint.parse().map_err(|_| err())?;
            return Ok(Cause::Queued { endpoint });
        }
        if let Some(rest) = s.strip_prefix(NO_DROP) {
            let name = rest.strip_suffix(')').ok_or_else(err)?;
            let last_seen = Seen::from_name(name).ok_or_else(err)?;
            return Ok(Cause::NoDropSeen { last_seen });
        }
        // The stage's name has no `: ` and the function no ` @ `; the reason may be empty.
        let (stage, rest) = s.split_once(": ").ok_or_else(err)?;
        let stage = Stage::from_name(stage).ok_or_else(err)?;
        let (reason, function) = rest.rsplit_once(" @ ").ok_or_else(err)?;
        Ok(Cause::Drop {
            stage,
            reason: reason.to_owned(),
            function: function.to_owned(),
        })
    }
}

impl serde::Serialize for Cause {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for Cause {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Text;
        impl serde::de::Visitor<'_> for Text {
            type Value = Cause;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("the cause of a failed query as text")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Cause, E> {
                v.parse().map_err(E::custom)
            }
        }
        d.deserialize_str(Text)
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    fn drop(stage: Stage, reason: &str, function: &str) -> Cause {
        Cause::Drop {
            stage,
            reason: reason.to_owned(),
            function: function.to_owned(),
        }
    }

    /// One cause of every kind and stage, with the edge cases of a drop: no reason (before
    /// 5.17), no location (a verdict probe's record alone), an unnamed reason.
    fn every() -> Vec<Cause> {
        let mut all = vec![
            Cause::Icmp {
                what: "port unreachable".to_owned(),
            },
            Cause::Icmp {
                what: "destination unreachable (code 2)".to_owned(),
            },
            drop(Stage::Netfilter, "", "nf_hook_slow"),
            drop(Stage::Netfilter, "NETFILTER_DROP", ""),
            drop(Stage::Netfilter, "", ""),
            drop(Stage::Kernel, "reason 77", "0xffffffff81000000"),
            drop(Stage::Socket, "SOCKET_RCVBUFF", "udp_fail_queue_rcv_skb"),
            Cause::Queued {
                endpoint: "10.244.0.10:53".parse().unwrap(),
            },
            Cause::NotTraced,
        ];
        all.extend(Stage::ALL.map(|s| drop(s, "NETFILTER_DROP", "nft_do_chain")));
        all.extend(Seen::ALL.map(|last_seen| Cause::NoDropSeen { last_seen }));
        all
    }

    #[test]
    fn display_is_the_key_text() {
        assert_eq!(
            drop(Stage::Netfilter, "NETFILTER_DROP", "nft_do_chain").to_string(),
            "netfilter: NETFILTER_DROP @ nft_do_chain"
        );
        assert_eq!(
            Cause::Icmp {
                what: "port unreachable".into()
            }
            .to_string(),
            "icmp: port unreachable"
        );
        assert_eq!(
            Cause::NoDropSeen {
                last_seen: Seen::AtEndpoint
            }
            .to_string(),
            "no drop seen (last seen: at_endpoint)",
            "the JSON name of the point, not its Rust name"
        );
        assert_eq!(Cause::NotTraced.to_string(), "not seen by the tracer");
        assert_eq!(
            Cause::Queued {
                endpoint: "10.244.0.10:53".parse().unwrap()
            }
            .to_string(),
            "queued behind a full receive queue at 10.244.0.10:53, never read"
        );
    }

    #[test]
    fn every_cause_round_trips_through_text_and_json() {
        for c in every() {
            let text = c.to_string();
            assert_eq!(text.parse::<Cause>(), Ok(c.clone()), "{text}");
            let json = serde_json::to_string(&c).unwrap();
            assert_eq!(json, serde_json::to_string(&text).unwrap());
            assert_eq!(serde_json::from_str::<Cause>(&json).unwrap(), c);
        }
    }

    #[test]
    fn a_map_by_cause_is_a_json_object_keyed_by_text() {
        let map: BTreeMap<Cause, u64> = every().into_iter().zip(1..).collect();
        let json = serde_json::to_value(&map).unwrap();
        assert_eq!(json["netfilter: NETFILTER_DROP @ nft_do_chain"], 10);
        let back: BTreeMap<Cause, u64> = serde_json::from_value(json).unwrap();
        assert_eq!(back, map);
    }

    /// Reports written before `Seen` had a name keyed "no drop seen" by its Rust name.
    #[test]
    fn the_rust_name_of_last_seen_still_reads() {
        assert_eq!(
            "no drop seen (last seen: AnsweredByEndpoint)".parse::<Cause>(),
            Ok(Cause::NoDropSeen {
                last_seen: Seen::AnsweredByEndpoint
            })
        );
    }

    #[test]
    fn other_text_is_refused() {
        for bad in [
            "",
            "dropped",
            "netfilter NETFILTER_DROP",
            "nat: X @ f",
            "no drop seen (last seen: far)",
            "no drop seen (last seen: sent",
            "queued behind a full receive queue at 10.244.0.10:53",
            "queued behind a full receive queue at somewhere, never read",
        ] {
            assert!(bad.parse::<Cause>().is_err(), "{bad:?}");
        }
        let err = serde_json::from_str::<Cause>("\"nat: X @ f\"").unwrap_err();
        assert!(err.to_string().contains("is not a cause"), "{err}");
    }

    #[test]
    fn order_is_kind_then_path_order() {
        let mut v = [
            Cause::NotTraced,
            Cause::NoDropSeen {
                last_seen: Seen::Sent,
            },
            drop(Stage::Socket, "NO_SOCKET", "__udp4_lib_rcv"),
            drop(Stage::Netfilter, "NETFILTER_DROP", "nf_hook_slow"),
            Cause::Queued {
                endpoint: "10.244.0.10:53".parse().unwrap(),
            },
            Cause::Icmp {
                what: "port unreachable".into(),
            },
        ];
        v.sort();
        let kinds: Vec<String> = v.iter().map(|c| c.to_string()).collect();
        assert_eq!(
            kinds,
            [
                "icmp: port unreachable",
                "netfilter: NETFILTER_DROP @ nf_hook_slow",
                "socket: NO_SOCKET @ __udp4_lib_rcv",
                "queued behind a full receive queue at 10.244.0.10:53, never read",
                "no drop seen (last seen: sent)",
                "not seen by the tracer",
            ]
        );
    }
}
