//! NodeLocal DNSCache: a client's query to the node's cache (169.254.20.10, or the kube-dns
//! ClusterIP the cache holds) and, on a miss, the cache's own query to the cluster DNS, sent from
//! the node namespace through kube-proxy's DNAT to a CoreDNS pod, linked into one lookup.
//!
//! The two legs are two DNS transactions (the cache asks with its own socket and id), so they are
//! linked by question: an upstream leg with the client leg's name and type, sent while the client
//! waited. A client leg answered with no upstream leg is a hit; one with upstream legs a miss,
//! whichever pod served it named by the upstream leg.

use std::net::IpAddr;

use super::record::{QueryRecord, Verdict};

/// How long a finished client leg waits for an upstream leg reported after it (an upstream leg
/// that failed is judged after the correlator's hold), in microseconds.
const WAIT_US: u64 = 1_000_000;

/// What the cache did with a client's lookup.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum CacheOutcome {
    /// Answered from the cache: no query went upstream.
    Hit,
    /// The cache asked the cluster DNS (the upstream legs).
    Miss,
    /// Neither answered nor asked upstream (the cache is down or the query never reached it).
    Unanswered,
}

impl std::fmt::Display for CacheOutcome {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Hit => "cache hit",
            Self::Miss => "cache miss",
            Self::Unanswered => "cache unanswered",
        })
    }
}

/// A client's lookup at the node's cache.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct CacheLookup {
    /// Hit, miss or unanswered.
    pub outcome: CacheOutcome,
    /// On a miss, the cache's queries to the cluster DNS for this lookup, in the order sent: each
    /// a record of its own (its endpoint is the pod that served it, its verdict and drop where
    /// that leg failed).
    pub upstream: Vec<QueryRecord>,
}

impl CacheLookup {
    /// The pod that answered the miss, when an upstream leg was answered.
    pub fn served_by(&self) -> Option<IpAddr> {
        self.upstream
            .iter()
            .find(|u| u.verdict == Verdict::Answered)
            .and_then(|u| u.endpoint)
    }
}

/// Lookups by what the cache did, over a trace.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct CacheTally {
    /// Client lookups answered from the cache.
    pub hits: u64,
    /// Client lookups the cache sent upstream.
    pub misses: u64,
    /// Client lookups the cache neither answered nor sent upstream.
    pub unanswered: u64,
    /// Upstream queries no client lookup claimed (the cache's own, or a client leg not reported).
    pub upstream_unlinked: u64,
}

/// Links client legs and upstream legs as records come out of the correlator.
#[derive(Debug)]
pub struct Linker {
    /// The addresses the cache listens on.
    local_ips: Vec<IpAddr>,
    /// The client's timeout (µs): an unanswered client leg waited that long.
    timeout_us: u64,
    /// Client legs waiting for upstream legs.
    clients: Vec<QueryRecord>,
    /// Upstream legs no client leg claimed yet.
    upstream: Vec<QueryRecord>,
    /// Counts so far.
    pub tally: CacheTally,
}

impl Linker {
    /// A linker for a cache listening on `local_ips`, with clients giving up after `timeout_us`.
    pub fn new(local_ips: Vec<IpAddr>, timeout_us: u64) -> Self {
        Self {
            local_ips,
            timeout_us,
            clients: Vec::new(),
            upstream: Vec::new(),
            tally: CacheTally::default(),
        }
    }

    /// A query to the cache.
    fn is_client_leg(&self, r: &QueryRecord) -> bool {
        self.local_ips.contains(&r.server.ip())
    }

    /// A query sent from the node namespace (no pod link saw it leave) to somewhere else.
    fn is_upstream_leg(&self, r: &QueryRecord) -> bool {
        r.client_link.is_none() && !self.is_client_leg(r)
    }

    /// When a client leg ended: its answer, else its timeout.
    fn end_us(&self, r: &QueryRecord) -> u64 {
        r.time_us + r.latency_us.unwrap_or(self.timeout_us)
    }

    /// Takes the records the correlator completed and returns those ready: other records at
    /// once, client legs `WAIT_US` after they ended (with their upstream legs), upstream legs
    /// no client leg claimed once none could. With `last`, everything.
    pub fn push(&mut self, records: Vec<QueryRecord>, now_us: u64, last: bool) -> Vec<QueryRecord> {
        let mut out = Vec::new();
        for r in records {
            if self.is_client_leg(&r) {
                self.clients.push(r);
            } else if self.is_upstream_leg(&r) {
                self.upstream.push(r);
            } else {
                out.push(r);
            }
        }
        self.claim();
        let wait = WAIT_US;
        let (ready, waiting): (Vec<_>, Vec<_>) = std::mem::take(&mut self.clients)
            .into_iter()
            .partition(|c| last || self.end_us(c) + wait <= now_us);
        self.clients = waiting;
        for mut c in ready {
            let lookup = c.cache.get_or_insert(CacheLookup {
                outcome: CacheOutcome::Unanswered,
                upstream: Vec::new(),
            });
            lookup.outcome = if !lookup.upstream.is_empty() {
                CacheOutcome::Miss
            } else if c.verdict == Verdict::Answered {
                CacheOutcome::Hit
            } else {
                CacheOutcome::Unanswered
            };
            match lookup.outcome {
                CacheOutcome::Hit => self.tally.hits += 1,
                CacheOutcome::Miss => self.tally.misses += 1,
                CacheOutcome::Unanswered => self.tally.unanswered += 1,
            }
            out.push(c);
        }
        // An upstream leg is claimable while a client leg that started before it may still come.
        let keep = self.timeout_us + 2 * wait;
        let (gone, kept): (Vec<_>, Vec<_>) = std::mem::take(&mut self.upstream)
            .into_iter()
            .partition(|u| last || u.time_us + keep <= now_us);
        self.upstream = kept;
        self.tally.upstream_unlinked += gone.len() as u64;
        out.extend(gone);
        out.sort_by_key(|r| r.time_us);
        out
    }

    /// Gives each waiting upstream leg to the earliest client leg asking the same question that
    /// was waiting when it was sent.
    fn claim(&mut self) {
        let mut unclaimed = Vec::new();
        for u in std::mem::take(&mut self.upstream) {
            let owner = self
                .clients
                .iter()
                .enumerate()
                .filter(|(_, c)| {
                    c.name.is_some()
                        && c.name == u.name
                        && c.qtype == u.qtype
                        && c.time_us <= u.time_us
                        && u.time_us <= self.end_us(c)
                })
                .min_by_key(|(_, c)| c.time_us)
                .map(|(i, _)| i);
            match owner {
                Some(i) => self.clients[i]
                    .cache
                    .get_or_insert(CacheLookup {
                        outcome: CacheOutcome::Miss,
                        upstream: Vec::new(),
                    })
                    .upstream
                    .push(u),
                None => unclaimed.push(u),
            }
        }
        self.upstream = unclaimed;
    }
}

#[cfg(test)]
mod tests {
    use std::net::SocketAddr;

    use super::*;
    use crate::flow::record::{Seen, Stage};

    /// An answered query from `client` to `server` for `name`: `QueryRecord::dropped`'s record
    /// with its drop and endpoint taken away.
    fn record(client: &str, server: &str, name: &str, time_us: u64) -> QueryRecord {
        let mut r = QueryRecord::dropped(1, Stage::Netfilter);
        r.time_us = time_us;
        r.client = client.parse().unwrap();
        r.server = server.parse().unwrap();
        r.name = Some(name.to_owned());
        r.qtype = Some("A".to_owned());
        r.verdict = Verdict::Answered;
        r.endpoint = None;
        r.latency_us = Some(2_000);
        r.last_seen = Seen::Delivered;
        r.drop = None;
        r
    }

    fn client(name: &str, time_us: u64) -> QueryRecord {
        let mut r = record("10.244.0.20:40000", "169.254.20.10:53", name, time_us);
        r.client_link = Some("c0".to_owned());
        r
    }

    fn upstream(name: &str, time_us: u64) -> QueryRecord {
        let mut r = record("10.244.0.1:50000", "10.244.0.11:53", name, time_us);
        r.endpoint = Some("10.244.0.11".parse().unwrap());
        r.endpoint_link = Some("d1".to_owned());
        r
    }

    #[test]
    fn a_miss_has_both_legs_and_a_hit_one() {
        let ips = vec!["169.254.20.10".parse().unwrap()];
        let mut l = Linker::new(ips, 5_000_000);
        // The upstream leg is reported first (it ends before the cache answers the client).
        let out = l.push(vec![upstream("a.cluster.local", 1_100)], 10_000, false);
        assert!(out.is_empty(), "held for its client leg");
        let out = l.push(
            vec![
                client("a.cluster.local", 1_000),
                client("b.cluster.local", 5_000),
            ],
            2_000_000,
            false,
        );
        assert_eq!(out.len(), 2);
        let miss = out[0].cache.as_ref().unwrap();
        assert_eq!(miss.outcome, CacheOutcome::Miss);
        assert_eq!(miss.served_by(), Some("10.244.0.11".parse().unwrap()));
        let hit = out[1].cache.as_ref().unwrap();
        assert_eq!((hit.outcome, hit.upstream.len()), (CacheOutcome::Hit, 0));
        assert_eq!(
            l.tally,
            CacheTally {
                hits: 1,
                misses: 1,
                unanswered: 0,
                upstream_unlinked: 0
            }
        );
    }

    #[test]
    fn an_upstream_leg_of_another_question_or_time_is_not_linked() {
        let ips = vec!["169.254.20.10".parse().unwrap()];
        let mut l = Linker::new(ips, 5_000_000);
        let mut late = upstream("a.cluster.local", 900_000);
        late.client = SocketAddr::from(([10, 244, 0, 1], 50001));
        let out = l.push(
            vec![
                client("a.cluster.local", 1_000),
                upstream("other.cluster.local", 1_100),
                late,
            ],
            0,
            true,
        );
        assert_eq!(out.len(), 3);
        let c = out.iter().find(|r| r.cache.is_some()).unwrap();
        assert_eq!(c.cache.as_ref().unwrap().outcome, CacheOutcome::Hit);
        assert_eq!(l.tally.upstream_unlinked, 2);
    }
}
