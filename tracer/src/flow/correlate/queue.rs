//! A server socket whose receive queue overflowed: the queries it refused, and the unanswered
//! ones it had taken before (they sit in the full queue the server is not reading).

use std::{collections::HashMap, net::SocketAddr};

use tracer_common::flow::{Packet, Slot, flag};

use super::{Context, Place, addr, port};
use crate::flow::{
    event::SocketHook,
    record::{Drop, QueryRecord, Queued, Seen, SocketQueue, Stage},
};

/// Why a query refused by a full receive queue died.
pub(super) const FULL: &str =
    "the server's socket receive queue was full: the server is not reading fast enough";

/// `-ENOMEM` from `__udp_enqueue_schedule_skb`: the queue would exceed `sk_rcvbuf`.
const ENOMEM: i32 = -12;

/// The kernel's drop-reason name for what a socket hook saw: `SOCKET_RCVBUFF` for a full
/// receive queue (the name the kernel frees the packet with), `SOCKET_REFUSED` otherwise.
pub(super) fn reason(hook: SocketHook) -> String {
    match hook {
        SocketHook::UdpFailQueue { rc: ENOMEM } | SocketHook::RcvqueueFull => "SOCKET_RCVBUFF",
        SocketHook::UdpFailQueue { .. } => "SOCKET_REFUSED",
    }
    .to_owned()
}

/// Adds a socket refusal to a held record. It names the drop even when the kernel's free of the
/// same packet came first (that one knows the reason, not the queue).
pub(super) fn add_socket_drop(
    r: &mut QueryRecord,
    reason: String,
    location: String,
    queue: Option<SocketQueue>,
    place: Place,
) {
    if r.drop.as_ref().is_some_and(|d| d.stage != Stage::Socket) {
        return;
    }
    let why = match (reason == "SOCKET_RCVBUFF", queue) {
        (true, Some(q)) => format!(
            "the server's socket receive queue was full ({q}): the server is not reading fast enough"
        ),
        (true, None) => FULL.to_owned(),
        (false, Some(q)) => format!("the receiving socket refused it ({q})"),
        (false, None) => "the receiving socket refused it".to_owned(),
    };
    r.drop = Some(Drop {
        stage: Stage::Socket,
        reason,
        location,
        backend: None,
        backend_from: None,
        table: None,
        chain: None,
        leg: place.leg,
        at: place.at,
        why: why + &place.stale,
        time_us: None,
        socket: queue,
    });
}

/// When a socket overflowed: first and last refusal seen, and its queue at the last one.
#[derive(Debug, Clone, Copy)]
struct Overflow {
    first_ns: u64,
    last_ns: u64,
    queue: SocketQueue,
}

/// The server sockets (endpoint address and port) whose receive queue overflowed.
#[derive(Debug, Default)]
pub(super) struct Overflows(HashMap<SocketAddr, Overflow>);

impl Overflows {
    /// A socket refused `p` (a query to the endpoint) at `ts`, its queue as given.
    pub(super) fn saw(&mut self, ts: u64, p: &Packet, queue: SocketQueue) {
        let socket = SocketAddr::new(addr(p.daddr), port(p.dport));
        let o = self.0.entry(socket).or_insert(Overflow {
            first_ns: ts,
            last_ns: ts,
            queue,
        });
        o.first_ns = o.first_ns.min(ts);
        if ts >= o.last_ns {
            o.last_ns = ts;
            o.queue = queue;
        }
    }

    /// For an unanswered query `r` (slot `s`) delivered to its endpoint and never answered: the
    /// endpoint's socket, when it overflowed within one query timeout of the delivery.
    pub(super) fn queued(&self, r: &QueryRecord, s: &Slot, ctx: &Context) -> Option<Queued> {
        if r.last_seen != Seen::AtEndpoint || s.t_endpoint() == 0 {
            return None;
        }
        let dport = if s.flags & flag::NATTED != 0 {
            port(s.nat_port)
        } else if r.server.port() != 0 {
            r.server.port()
        } else {
            ctx.dns_port
        };
        let endpoint = SocketAddr::new(r.endpoint?, dport);
        let o = self.0.get(&endpoint)?;
        let t = s.t_endpoint();
        let around = t.saturating_add(ctx.timeout_ns) >= o.first_ns
            && t <= o.last_ns.saturating_add(ctx.timeout_ns);
        around.then_some(Queued {
            endpoint,
            queue: o.queue,
        })
    }
}
