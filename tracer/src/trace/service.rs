//! The DNS Service's endpoints over the trace (followed by `node::watch`), and the failed queries
//! that a conntrack entry sent to an address that was no longer one of them.
//!
//! A query DNATed to a non-endpoint has one of two culprits. A rule (a stale kube-proxy ruleset
//! in the other backend) DNATs new flows there: conntrack then reports a new entry for the client
//! socket after the endpoint was gone, or none at all (a new flow dropped before conntrack
//! confirmed it leaves no entry). An entry that outlived its endpoint (kube-proxy removed the
//! endpoint, nobody removed the UDP entry, and the client's socket keeps it alive by asking
//! again) was created before: seen created during the trace while the endpoint was live, or in
//! the table when the trace started. It is named stale, with when it was created and when the
//! endpoint went, and the command that clears it.

use std::{
    collections::HashMap,
    net::{IpAddr, SocketAddr},
    path::PathBuf,
    time::Instant,
};

use crate::{
    flow::record::{QueryRecord, StaleEntry, Verdict},
    node::{
        DnsService,
        watch::{Changed, Watch},
    },
    report::trace::{EndpointChange, KEPT_ENDPOINT_CHANGES},
};

/// A conntrack entry the trace saw created (ctnetlink NEW event).
#[derive(Debug, Clone)]
pub(super) struct CreatedEntry {
    /// `entry 10.244.0.20:40000 -> 10.96.0.10:53, DNAT to 10.244.0.10:53`.
    pub(super) note: String,
    /// When it was read (Unix µs): within a poll of its creation.
    pub(super) at_us: u64,
    /// Where it sends the client (its reply source), when NATed.
    pub(super) dnat: Option<IpAddr>,
}

/// One endpoint set and the time from which it held.
#[derive(Debug, Clone)]
struct Epoch {
    /// The set held from after this time (Unix µs): the last read that still showed the old set.
    after_us: u64,
    /// When the tracer read it (Unix µs).
    noticed_us: u64,
    endpoints: Vec<IpAddr>,
}

/// The Service's endpoints since the trace started.
pub(super) struct Endpoints {
    service: SocketAddr,
    /// The rules named the Service's endpoints at the start (else nothing is judged).
    known: bool,
    /// The DNATed DNS entries in the table at the start: client socket -> where they send it.
    existing: HashMap<SocketAddr, IpAddr>,
    watch: Option<Watch>,
    /// The named namespace the rules and entries live in; `None`: ours.
    netns: Option<String>,
    /// The set at the start and after each change, the last [`KEPT_ENDPOINT_CHANGES`] changes
    /// (a query is judged within seconds of being sent; an endpoint whose removal was forgotten
    /// is named gone before the trace).
    epochs: Vec<Epoch>,
    /// Changes no longer kept.
    forgotten: u64,
    /// Unix µs minus `Instant` time, to date the watch's readings.
    started: (Instant, u64),
}

impl Endpoints {
    /// Starts following the rules of `netns` (its name and path; `None`: ours) from `current`,
    /// read at `now_us`, with the DNATed DNS entries `existing` then. Without rules to follow (no
    /// Service found), nothing is ever named stale.
    pub(super) fn start(
        service: SocketAddr,
        netns: Option<&(String, PathBuf)>,
        current: Option<&DnsService>,
        existing: HashMap<SocketAddr, IpAddr>,
        now_us: u64,
    ) -> Self {
        let watch = current.and_then(|svc| {
            Watch::start(netns.map(|(_, p)| p.as_path()), Some(svc.clone()))
                .inspect_err(|e| log::warn!("the Service's endpoints will not be followed: {e}"))
                .ok()
        });
        Self {
            service,
            known: current.is_some(),
            existing,
            watch,
            netns: netns.map(|(n, _)| n.clone()),
            forgotten: 0,
            epochs: vec![Epoch {
                after_us: 0,
                noticed_us: now_us,
                endpoints: current.map(DnsService::endpoint_ips).unwrap_or_default(),
            }],
            started: (Instant::now(), now_us),
        }
    }

    /// Reads the rules again if they may have changed; returns the new endpoints when they did.
    pub(super) fn poll(&mut self) -> Option<Vec<IpAddr>> {
        let Changed {
            service,
            after,
            read_at,
        } = self.watch.as_mut()?.poll()?;
        let endpoints = service
            .as_ref()
            .map(DnsService::endpoint_ips)
            .unwrap_or_default();
        let epoch = Epoch {
            after_us: self.unix_us(after),
            noticed_us: self.unix_us(read_at),
            endpoints: endpoints.clone(),
        };
        log::info!(
            "the DNS Service's endpoints changed: {:?} -> {:?}",
            self.current(),
            endpoints
        );
        self.record(epoch);
        Some(endpoints)
    }

    /// Keeps `epoch` as the set now, forgetting the oldest change past the bound.
    fn record(&mut self, epoch: Epoch) {
        self.epochs.push(epoch);
        if self.epochs.len() > KEPT_ENDPOINT_CHANGES + 1 {
            self.epochs.remove(0);
            self.forgotten += 1;
        }
    }

    /// The endpoints now.
    pub(super) fn current(&self) -> &[IpAddr] {
        self.epochs.last().map_or(&[], |e| &e.endpoints)
    }

    /// The changes kept (what was added and removed, and when it was noticed) and how many
    /// earlier ones were not.
    pub(super) fn changes(&self) -> (Vec<EndpointChange>, u64) {
        let kept = self
            .epochs
            .windows(2)
            .map(|w| EndpointChange {
                noticed_us: w[1].noticed_us,
                added: diff(&w[1].endpoints, &w[0].endpoints),
                removed: diff(&w[0].endpoints, &w[1].endpoints),
            })
            .collect();
        (kept, self.forgotten)
    }

    /// The stale entry that sent failed query `r` to a gone endpoint, if that is what happened;
    /// `created` is the entry the trace saw created for its client socket, if any.
    pub(super) fn stale(
        &self,
        r: &QueryRecord,
        created: Option<&CreatedEntry>,
    ) -> Option<StaleEntry> {
        if r.verdict == Verdict::Answered || !self.known {
            return None;
        }
        let prior = self.existing.get(&r.client).copied();
        // Where the packets went, else where the entry sends them (a query that died waiting for
        // the gone pod's address to resolve was never seen past the client's link).
        let endpoint = r
            .nat
            .map(|n| n.ip())
            .or(r.endpoint)
            .or(created.and_then(|c| c.dnat))
            .or(prior)?;
        if endpoint == self.service.ip() || self.is_endpoint_at(endpoint, r.time_us) {
            return None;
        }
        let removed_us = self.removed_at(endpoint, r.time_us);
        let created_us = match created {
            // A new entry DNATed there once the endpoint was gone: a rule did it.
            Some(c) if c.dnat == Some(endpoint) => {
                if c.at_us >= removed_us.unwrap_or(0) {
                    return None;
                }
                Some(c.at_us)
            }
            _ if prior == Some(endpoint) => None,
            // No entry sends the socket there: a rule DNATed a new flow that died unconfirmed.
            _ => return None,
        };
        Some(StaleEntry {
            client: r.client,
            service: r.server,
            endpoint,
            created_us,
            removed_us,
            netns: self.netns.clone(),
        })
    }

    /// Whether `ip` was an endpoint for a query at `t_us`. The set in force is the last one that
    /// held from before `t_us`; between a legacy change and the read that noticed it, the old set
    /// is not trusted to hold `ip`.
    fn is_endpoint_at(&self, ip: IpAddr, t_us: u64) -> bool {
        self.epochs
            .iter()
            .rev()
            .find(|e| e.after_us <= t_us)
            .is_some_and(|e| e.endpoints.contains(&ip))
            && self
                .epochs
                .iter()
                .filter(|e| e.after_us <= t_us && t_us < e.noticed_us)
                .all(|e| e.endpoints.contains(&ip))
    }

    /// When the tracer saw `ip` leave the endpoints last before `t_us`; `None`: it was not an
    /// endpoint at the start.
    fn removed_at(&self, ip: IpAddr, t_us: u64) -> Option<u64> {
        self.epochs
            .windows(2)
            .filter(|w| w[1].after_us <= t_us)
            .filter(|w| w[0].endpoints.contains(&ip) && !w[1].endpoints.contains(&ip))
            .map(|w| w[1].noticed_us)
            .next_back()
    }

    fn unix_us(&self, at: Instant) -> u64 {
        let (i0, u0) = self.started;
        match at.checked_duration_since(i0) {
            Some(d) => u0 + d.as_micros() as u64,
            None => u0.saturating_sub(i0.duration_since(at).as_micros() as u64),
        }
    }
}

/// The addresses of `a` not in `b`.
fn diff(a: &[IpAddr], b: &[IpAddr]) -> Vec<IpAddr> {
    a.iter().filter(|ip| !b.contains(ip)).copied().collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::flow::record::Stage;

    const SVC: SocketAddr = SocketAddr::new(IpAddr::V4(std::net::Ipv4Addr::new(10, 96, 0, 10)), 53);
    const OLD: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(10, 244, 0, 10));
    const OTHER: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(10, 244, 0, 11));
    const NEW: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(10, 244, 0, 12));

    /// Endpoints OLD and OTHER from the start (1000 µs), then OTHER and NEW from after 5000 µs
    /// (noticed at 7000 µs).
    fn churned() -> Endpoints {
        Endpoints {
            service: SVC,
            known: true,
            existing: HashMap::from([(lost_at(0).client, OLD)]),
            watch: None,
            netns: Some("node".to_owned()),
            forgotten: 0,
            epochs: vec![
                Epoch {
                    after_us: 0,
                    noticed_us: 1000,
                    endpoints: vec![OLD, OTHER],
                },
                Epoch {
                    after_us: 5000,
                    noticed_us: 7000,
                    endpoints: vec![OTHER, NEW],
                },
            ],
            started: (Instant::now(), 1000),
        }
    }

    fn lost_at(time_us: u64) -> QueryRecord {
        QueryRecord {
            time_us,
            ..QueryRecord::dropped(1, Stage::Neighbour)
        }
    }

    fn entry(at_us: u64, dnat: IpAddr) -> CreatedEntry {
        CreatedEntry {
            note: String::new(),
            at_us,
            dnat: Some(dnat),
        }
    }

    #[test]
    fn an_entry_older_than_the_endpoints_removal_is_stale() {
        let e = churned();
        let s = e
            .stale(&lost_at(8000), Some(&entry(2000, OLD)))
            .expect("stale");
        assert_eq!(
            (s.endpoint, s.created_us, s.removed_us),
            (OLD, Some(2000), Some(7000))
        );
        assert!(s.to_string().contains(
            "`ip netns exec node conntrack -D -p udp --orig-src 10.244.0.20 --sport 1001 --orig-dst 10.96.0.10 --dport 53` clears it"
        ));
        // Made before the trace: created is unknown.
        let s = e.stale(&lost_at(8000), None).expect("stale");
        assert_eq!(s.created_us, None);
    }

    #[test]
    fn a_live_endpoint_or_a_new_entry_after_the_removal_is_not_stale() {
        let e = churned();
        assert!(e.stale(&lost_at(3000), None).is_none(), "OLD was live then");
        assert!(
            e.stale(&lost_at(8000), Some(&entry(7500, OLD))).is_none(),
            "a rule DNATed a new flow to it"
        );
        let mut to_other = lost_at(8000);
        to_other.endpoint = Some(OTHER);
        assert!(e.stale(&to_other, None).is_none());
    }

    #[test]
    fn a_query_seen_only_at_the_client_is_placed_by_its_entry() {
        let mut unseen = lost_at(8000);
        unseen.endpoint = None;
        let s = churned()
            .stale(&unseen, Some(&entry(2000, OLD)))
            .expect("stale");
        assert_eq!(s.endpoint, OLD);
        let s = churned()
            .stale(&unseen, None)
            .expect("the entry in the table at the start");
        assert_eq!((s.endpoint, s.created_us), (OLD, None));
        let mut e = churned();
        e.existing.clear();
        assert!(e.stale(&unseen, None).is_none(), "nowhere to place it");
    }

    #[test]
    fn between_a_change_and_its_reading_the_old_set_is_not_trusted() {
        // Lost at 6000: after the change's lower bound, before it was noticed.
        assert!(churned().stale(&lost_at(6000), None).is_some());
    }

    #[test]
    fn a_target_never_an_endpoint_with_a_new_entry_is_a_rule() {
        let mut e = churned();
        e.epochs.truncate(1);
        e.epochs[0].endpoints = vec![OTHER];
        assert!(e.stale(&lost_at(8000), Some(&entry(7900, OLD))).is_none());
        let s = e
            .stale(&lost_at(8000), None)
            .expect("an entry from before the trace");
        assert_eq!(s.removed_us, None);
    }

    #[test]
    fn a_service_whose_pods_keep_changing_keeps_its_last_changes() {
        let mut e = churned();
        for i in 0..300u64 {
            let t = 10_000 + 1000 * i;
            e.record(Epoch {
                after_us: t,
                noticed_us: t + 500,
                endpoints: if i % 2 == 0 { vec![NEW] } else { vec![OTHER] },
            });
        }
        let (c, forgotten) = e.changes();
        assert_eq!((c.len(), forgotten), (KEPT_ENDPOINT_CHANGES, 301 - 256));
        assert!(e.epochs.capacity() <= 2 * (KEPT_ENDPOINT_CHANGES + 1));
        assert_eq!(c.last().map(|c| c.noticed_us), Some(10_000 + 299_000 + 500));
        assert_eq!(e.current(), &[OTHER]);
        // The last change still judges a query after it.
        let mut to_new = lost_at(400_000);
        to_new.endpoint = Some(NEW);
        assert!(e.stale(&to_new, Some(&entry(10_000, NEW))).is_some());
    }

    #[test]
    fn changes_name_what_was_added_and_removed() {
        let (c, forgotten) = churned().changes();
        assert_eq!((c.len(), forgotten), (1, 0));
        assert_eq!(
            (c[0].added.clone(), c[0].removed.clone()),
            (vec![NEW], vec![OLD])
        );
        assert_eq!(c[0].noticed_us, 7000);
    }
}
