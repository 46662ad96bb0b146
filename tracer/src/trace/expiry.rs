//! Answers that came after their query's conntrack entry expired: the node could not undo the
//! DNAT, so the answer reached the client from the pod's own address and the client refused it
//! (`NO_SOCKET`). The drop alone says "nothing listens there"; the entry's DESTROY event and the
//! node's `nf_conntrack_udp_timeout` say what happened.

use std::net::{IpAddr, SocketAddr};

use crate::{
    flow::{
        recent::Recent,
        record::{Drop, Leg, QueryRecord, Stage},
    },
    kernel::symbols,
};

/// The sysctl, under /proc/sys, read in the node's namespace at trace start.
pub const UDP_TIMEOUT: &str = "net/netfilter/nf_conntrack_udp_timeout";
/// How many destroyed entries are remembered.
const REMEMBERED: usize = 4096;

/// A DNATed DNS entry conntrack destroyed.
#[derive(Debug, Clone, Copy)]
struct Destroyed {
    /// When its DESTROY event was read (Unix time, microseconds).
    at_us: u64,
    /// Where the client sent the query (the Service).
    service: SocketAddr,
    /// The endpoint the entry DNATed to.
    endpoint: IpAddr,
}

/// The DNATed DNS entries destroyed lately, by client socket.
#[derive(Debug)]
pub struct Expiries {
    /// `nf_conntrack_udp_timeout` of the node at trace start (seconds).
    pub udp_timeout_s: Option<u32>,
    destroyed: Recent<SocketAddr, Destroyed>,
}

/// `hh:mm:ss` (UTC) of a Unix time in microseconds.
fn clock(unix_us: u64) -> String {
    let s = unix_us / 1_000_000 % 86_400;
    format!("{:02}:{:02}:{:02}", s / 3600, s / 60 % 60, s % 60)
}

/// Whether the kernel refused `d` because no socket took it (its reason, or before 5.17 its
/// location).
fn no_socket(d: &Drop) -> bool {
    d.reason == "NO_SOCKET"
        || (d.reason.is_empty() && symbols::function(&d.location) == "__udp4_lib_rcv")
}

impl Expiries {
    /// Nothing destroyed yet; the node's UDP timeout as read at trace start.
    pub fn new(udp_timeout_s: Option<u32>) -> Self {
        Self {
            udp_timeout_s,
            destroyed: Recent::new(REMEMBERED),
        }
    }

    /// Conntrack destroyed the entry of `client`'s query to `service`, DNATed to `endpoint`.
    pub fn destroyed(
        &mut self,
        client: SocketAddr,
        service: SocketAddr,
        endpoint: IpAddr,
        at_us: u64,
    ) {
        let d = Destroyed {
            at_us,
            service,
            endpoint,
        };
        self.destroyed.insert(client, d);
    }

    /// Names an answer the client refused because its entry was gone: the drop moves to the
    /// conntrack stage, with the delay, the timeout and when the entry was destroyed.
    pub fn explain(&self, r: &mut QueryRecord) {
        let (Some(d), Some(x)) = (r.drop.as_mut(), self.destroyed.get(&r.client)) else {
            return;
        };
        // The answer came from the pod's own address: its DNAT was not undone.
        let from_pod = r.endpoint == Some(x.endpoint) && r.server == x.service;
        if d.leg != Leg::Answer || !no_socket(d) || !from_pod {
            return;
        }
        let delay_ms = d.time_us.map(|t| t.saturating_sub(r.time_us) / 1000);
        let timeout = self
            .udp_timeout_s
            .map_or_else(|| "unknown".to_owned(), |s| format!("{s}s"));
        let expired = match (delay_ms, self.udp_timeout_s) {
            (Some(ms), Some(s)) => ms >= u64::from(s) * 1000,
            _ => true,
        };
        let delay = delay_ms.map_or_else(|| "some time".to_owned(), |ms| format!("{ms} ms"));
        d.stage = Stage::Conntrack;
        d.why = format!(
            "reply came {delay} after the query, after the conntrack entry {} \
             (nf_conntrack_udp_timeout={timeout}; destroyed at {}): the node could not undo the DNAT \
             to {}, so the answer reached the client from the pod's address and was refused there",
            if expired { "expired" } else { "was removed" },
            clock(x.at_us),
            x.endpoint,
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clock_is_utc_time_of_day() {
        assert_eq!(
            clock((86_400 * 3 + 3600 * 13 + 60 * 5 + 9) * 1_000_000 + 7),
            "13:05:09"
        );
    }
}
