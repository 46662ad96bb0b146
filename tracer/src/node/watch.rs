//! The DNS Service's rules followed while a trace runs: kube-proxy resyncs, CoreDNS pods roll.
//!
//! nf_tables announces every change on the `NFNLGRP_NFTABLES` netlink group, so with an
//! nf_tables backend a change is noticed within a poll; the Service is then read again once the
//! burst of messages (a kube-proxy resync is one transaction, but a restore of several tables is
//! several) has been quiet for [`QUIET`]. Legacy xtables announce nothing: the rules are also read
//! again on a period that grows with what a read costs ([`COST_FACTOR`] times the last read, at
//! least [`MIN_PERIOD`]), so a node with a large ruleset spends at most about 2% of a core on it.

use std::{
    io,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use netlink_sys::{Socket, protocols::NETLINK_NETFILTER};

use super::{DnsService, inspect};
use crate::netns;

/// `NFNLGRP_NFTABLES`: nf_tables' change notifications.
const NFNLGRP_NFTABLES: u32 = 7;
/// Quiet time after the last nf_tables notification before the rules are read.
const QUIET: Duration = Duration::from_millis(200);
/// Shortest period between two reads of legacy rules.
const MIN_PERIOD: Duration = Duration::from_secs(2);
/// The period between reads of legacy rules, in multiples of the last read's duration.
const COST_FACTOR: u32 = 50;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("failed to subscribe to nf_tables notifications: {source}")]
    Subscribe { source: io::Error },
    #[error("failed to enter the rules' namespace: {source}")]
    Netns { source: netns::Error },
}

/// A change of the Service's rules, as the tracer noticed it.
#[derive(Debug, Clone)]
pub struct Changed {
    /// The Service as the rules now describe it (`None`: no DNS Service any more).
    pub service: Option<DnsService>,
    /// The last read before this one, which still showed the old rules: the change happened
    /// after it (with nf_tables notifications, just before `read_at`).
    pub after: Instant,
    /// When this read was made.
    pub read_at: Instant,
}

/// Follows the DNS Service's rules in one namespace.
pub struct Watch {
    netns: Option<PathBuf>,
    /// nf_tables notifications; `None` when the subscription failed (the rules are then read on
    /// the legacy period).
    notifications: Option<Socket>,
    /// The last notification not yet followed by a read.
    last_notice: Option<Instant>,
    last_read: Instant,
    last_cost: Duration,
    current: Option<DnsService>,
    buf: Vec<u8>,
    /// Reads that failed (logged); the previous rules stand.
    pub failed_reads: u64,
    /// Reads made.
    pub reads: u64,
}

impl Watch {
    /// Follows the rules of `netns` (`None`: ours), starting from `current`, read just now.
    pub fn start(netns: Option<&Path>, current: Option<DnsService>) -> Result<Self, Error> {
        let subscribe = || -> io::Result<Socket> {
            let mut socket = Socket::new(NETLINK_NETFILTER)?;
            socket.bind_auto()?;
            socket.add_membership(NFNLGRP_NFTABLES)?;
            socket.set_non_blocking(true)?;
            Ok(socket)
        };
        let socket = match netns {
            Some(p) => netns::run_in(p, subscribe).map_err(|source| Error::Netns { source })?,
            None => subscribe(),
        };
        let notifications = match socket {
            Ok(s) => Some(s),
            Err(e) if e.raw_os_error() == Some(libc::EPROTONOSUPPORT) => None,
            Err(source) => return Err(Error::Subscribe { source }),
        };
        Ok(Self {
            netns: netns.map(Path::to_owned),
            notifications,
            last_notice: None,
            last_read: Instant::now(),
            last_cost: Duration::ZERO,
            current,
            buf: vec![0; 64 << 10],
            failed_reads: 0,
            reads: 0,
        })
    }

    /// Reads the rules again if they may have changed; returns the Service when it did.
    pub fn poll(&mut self) -> Option<Changed> {
        let now = Instant::now();
        self.drain_notifications(now);
        let notified = self
            .last_notice
            .is_some_and(|last| now.duration_since(last) >= QUIET);
        if !notified && now.duration_since(self.last_read) < self.legacy_period() {
            return None;
        }
        let after = self.last_read;
        self.last_notice = None;
        let read = inspect::dns_service(self.netns.as_deref());
        self.last_cost = now.elapsed();
        self.last_read = Instant::now();
        self.reads += 1;
        let service = match read {
            Ok(s) => s,
            Err(e) => {
                self.failed_reads += 1;
                log::warn!("failed to read the DNS Service's rules again: {e}");
                return None;
            }
        };
        if same_endpoints(service.as_ref(), self.current.as_ref()) {
            return None;
        }
        self.current.clone_from(&service);
        Some(Changed {
            service,
            after,
            read_at: self.last_read,
        })
    }

    fn legacy_period(&self) -> Duration {
        (self.last_cost * COST_FACTOR).max(MIN_PERIOD)
    }

    /// Notes every waiting notification (a full buffer means some were lost: a change all the
    /// same).
    fn drain_notifications(&mut self, now: Instant) {
        let Some(socket) = self.notifications.as_ref() else {
            return;
        };
        loop {
            match socket.recv(&mut &mut self.buf[..], 0) {
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) if e.raw_os_error() == Some(libc::ENOBUFS) => {}
                Err(e) => {
                    log::warn!("nf_tables notifications: {e}; reading the rules on a period");
                    self.notifications = None;
                    return;
                }
            }
            self.last_notice = Some(now);
        }
    }
}

/// Whether two readings name the same endpoints (and the same REJECT).
fn same_endpoints(a: Option<&DnsService>, b: Option<&DnsService>) -> bool {
    match (a, b) {
        (Some(a), Some(b)) => a.endpoints == b.endpoints && a.rejects == b.rejects,
        (None, None) => true,
        _ => false,
    }
}
