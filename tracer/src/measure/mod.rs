//! Active DNS measurement: queries sent at a fixed rate, from a chosen network namespace, with
//! every answer, loss and latency recorded.
//!
//! # Layout
//! - this file: [`query_batch`] (the sender), its [`BatchSpec`] and [`BatchResult`].
//! - `tcp`: [`tcp::queries`], a few lookups over TCP, each on a connection of its own.
//!
//! Each lookup gets a fresh UDP socket (a fresh source port, as a stub resolver does), so every
//! lookup is a new conntrack flow that kube-proxy's rules balance on its own; a fixed source port
//! keeps one flow instead. Sockets are connected, so an ICMP port unreachable the kernel delivers
//! marks the query `Refused` rather than waiting for the timeout.

use std::{
    io,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, UdpSocket},
    os::fd::AsFd as _,
    str::FromStr as _,
    sync::{Arc, Barrier, mpsc},
    time::{Duration, Instant, SystemTime},
};

pub use hickory_proto::{op::ResponseCode, rr::RecordType};
use hickory_proto::{
    op::{Message, MessageType, Query},
    rr::{Name, RData},
};
use nix::{
    poll::{PollFd, PollFlags, PollTimeout, poll},
    sched::{CpuSet, sched_getaffinity, sched_setaffinity},
    unistd::Pid,
};

use crate::netns;

/// The largest DNS answer read over UDP (EDNS0's common buffer size).
const MAX_ANSWER: usize = 4096;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("invalid query name {name:?}: {source}")]
    Name {
        name: String,
        source: hickory_proto::ProtoError,
    },
    #[error("failed to encode the {qtype} query for {name}: {source}")]
    Encode {
        name: String,
        qtype: RecordType,
        source: hickory_proto::ProtoError,
    },
    #[error("invalid batch: {reason}")]
    Spec { reason: &'static str },
    #[error("failed to open a UDP socket to {server} from source port {port} in {netns}: {source}")]
    Socket {
        server: SocketAddr,
        port: u16,
        netns: String,
        source: io::Error,
    },
    #[error("failed to wait for DNS answers in {netns}: {source}")]
    Poll {
        netns: String,
        source: nix::errno::Errno,
    },
    #[error("failed to run the DNS queries in network namespace {netns}: {source}")]
    Netns { netns: String, source: netns::Error },
    #[error("the DNS query thread panicked")]
    Panicked,
}

/// What to send.
#[derive(Debug, Clone)]
pub struct BatchSpec {
    /// Names to ask for, used in turn (`kubernetes.default.svc.cluster.local`).
    pub names: Vec<String>,
    /// Query types, used in turn (ignored when `parallel_a_aaaa` is set).
    pub qtypes: Vec<RecordType>,
    /// Number of lookups. A lookup is one query, or an A + AAAA pair with `parallel_a_aaaa`.
    pub count: u32,
    /// Lookups per second.
    pub rate: f64,
    /// How long to wait for each answer before the query counts as lost.
    pub timeout: Duration,
    /// Send every query from this source port (one socket, one conntrack flow) instead of a
    /// fresh port per lookup.
    pub source_port: Option<u16>,
    /// Send A and AAAA for the same name from one socket at the same instant, as glibc's stub
    /// resolver does; the two are sent from threads on two CPUs (where the machine has two), so
    /// the kernel processes both packets of the new flow in parallel.
    pub parallel_a_aaaa: bool,
}

impl Default for BatchSpec {
    fn default() -> Self {
        Self {
            names: vec!["kubernetes.default.svc.cluster.local".to_owned()],
            qtypes: vec![RecordType::A],
            count: 20,
            rate: 50.0,
            timeout: Duration::from_secs(2),
            source_port: None,
            parallel_a_aaaa: false,
        }
    }
}

/// What became of one query.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// An answer with a matching id and question arrived.
    Answered {
        /// From send to answer.
        latency: Duration,
        /// The answer's response code.
        rcode: ResponseCode,
        /// The A and AAAA addresses in the answer section.
        addresses: Vec<IpAddr>,
    },
    /// The kernel reported an ICMP port unreachable (for example kube-proxy's REJECT).
    Refused,
    /// No answer within the timeout.
    TimedOut,
    /// The query could not be sent.
    SendFailed {
        /// The error `send(2)` returned.
        error: String,
    },
}

/// One query sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SentQuery {
    /// The DNS message id.
    pub id: u16,
    /// The name asked for.
    pub name: String,
    /// The query type.
    pub qtype: RecordType,
    /// The client's UDP source port (with `id`, what identifies the query on the wire).
    pub source_port: u16,
    /// When it was sent, from the start of the batch.
    pub sent_at: Duration,
    /// What became of it.
    pub outcome: Outcome,
}

impl SentQuery {
    /// The latency of an answered query.
    pub fn latency(&self) -> Option<Duration> {
        match self.outcome {
            Outcome::Answered { latency, .. } => Some(latency),
            _ => None,
        }
    }
}

/// What a batch saw.
#[derive(Debug, Clone)]
pub struct BatchResult {
    /// Wall-clock time of the first send.
    pub started: SystemTime,
    /// Queries sent (or attempted).
    pub sent: u32,
    /// Queries answered.
    pub answered: u32,
    /// Queries not answered (timed out, refused or not sent).
    pub lost: u32,
    /// Datagrams that could not be matched to a query: unparsable, wrong id or question,
    /// duplicates. Counted, never fatal.
    pub bad_answers: u32,
    /// Every query, in send order.
    pub queries: Vec<SentQuery>,
}

impl BatchResult {
    /// The `p`-th percentile (0-100) of the answered queries' latencies (nearest rank).
    pub fn latency_percentile(&self, p: f64) -> Option<Duration> {
        let mut latencies: Vec<Duration> =
            self.queries.iter().filter_map(SentQuery::latency).collect();
        if latencies.is_empty() {
            return None;
        }
        latencies.sort_unstable();
        let rank = ((p / 100.0) * latencies.len() as f64).ceil() as usize;
        Some(latencies[rank.clamp(1, latencies.len()) - 1])
    }

    /// The queries that got no answer.
    pub fn lost_queries(&self) -> impl Iterator<Item = &SentQuery> {
        self.queries.iter().filter(|q| q.latency().is_none())
    }
}

/// Sends `spec` to `server` from network namespace `netns` (the caller's when `None`) and waits
/// for every answer or timeout. Runs on its own thread; the caller's thread stays where it is.
pub fn query_batch(
    netns: Option<&str>,
    server: SocketAddr,
    spec: &BatchSpec,
) -> Result<BatchResult, Error> {
    validate(spec)?;
    let label = netns.unwrap_or("the tracer's namespace").to_owned();
    let spec = spec.clone();
    match netns {
        Some(name) => netns::run_in(&netns::named(name), move || run(&label, server, &spec))
            .map_err(|source| Error::Netns {
                netns: name.to_owned(),
                source,
            })?,
        None => std::thread::spawn(move || run(&label, server, &spec))
            .join()
            .map_err(|_| Error::Panicked)?,
    }
}

fn validate(spec: &BatchSpec) -> Result<(), Error> {
    if spec.names.is_empty() {
        return Err(Error::Spec {
            reason: "no query names",
        });
    }
    if spec.qtypes.is_empty() && !spec.parallel_a_aaaa {
        return Err(Error::Spec {
            reason: "no query types",
        });
    }
    if !(spec.rate.is_finite() && spec.rate > 0.0) {
        return Err(Error::Spec {
            reason: "the rate must be a positive number of lookups per second",
        });
    }
    if spec.timeout.is_zero() {
        return Err(Error::Spec {
            reason: "the timeout must be positive",
        });
    }
    for name in &spec.names {
        fqdn(name)?;
    }
    Ok(())
}

fn fqdn(name: &str) -> Result<Name, Error> {
    let text = if name.ends_with('.') {
        name.to_owned()
    } else {
        format!("{name}.")
    };
    Name::from_str(&text).map_err(|source| Error::Name {
        name: name.to_owned(),
        source,
    })
}

/// A recursive query for `name` and `qtype`: its id and wire bytes.
fn encode(name: &str, qtype: RecordType) -> Result<(u16, Vec<u8>), Error> {
    let mut msg = Message::query();
    msg.metadata.recursion_desired = true;
    msg.add_query(Query::query(fqdn(name)?, qtype));
    let bytes = msg.to_vec().map_err(|source| Error::Encode {
        name: name.to_owned(),
        qtype,
        source,
    })?;
    Ok((msg.metadata.id, bytes))
}

/// An open socket and the queries waiting on it.
struct Flow {
    socket: UdpSocket,
    port: u16,
    waiting: Vec<usize>,
    /// The fixed-port socket is kept for the whole batch.
    keep: bool,
}

/// Sends the second query of a parallel pair from another CPU.
struct Helper {
    jobs: mpsc::Sender<(UdpSocket, Vec<u8>)>,
    results: mpsc::Receiver<io::Result<()>>,
    barrier: Arc<Barrier>,
}

impl Helper {
    fn start() -> Self {
        let cpus = usable_cpus();
        if let Some(&first) = cpus.first() {
            pin(first);
        }
        let second = cpus.get(1).copied();
        let (jobs, job_rx) = mpsc::channel::<(UdpSocket, Vec<u8>)>();
        let (result_tx, results) = mpsc::channel();
        let barrier = Arc::new(Barrier::new(2));
        let b = barrier.clone();
        std::thread::spawn(move || {
            if let Some(cpu) = second {
                pin(cpu);
            }
            for (socket, bytes) in job_rx {
                b.wait();
                if result_tx.send(socket.send(&bytes).map(drop)).is_err() {
                    break;
                }
            }
        });
        Self {
            jobs,
            results,
            barrier,
        }
    }

    /// Sends `first` here and `second` on the helper thread, released together.
    fn send_pair(&self, socket: &UdpSocket, first: &[u8], second: Vec<u8>) -> [io::Result<()>; 2] {
        let clone = match socket.try_clone() {
            Ok(clone) => clone,
            Err(e) => return [socket.send(first).map(drop), Err(e)],
        };
        if self.jobs.send((clone, second)).is_err() {
            return [
                socket.send(first).map(drop),
                Err(io::Error::other("helper thread gone")),
            ];
        }
        self.barrier.wait();
        let here = socket.send(first).map(drop);
        let there = self
            .results
            .recv()
            .unwrap_or_else(|_| Err(io::Error::other("helper thread gone")));
        [here, there]
    }
}

fn usable_cpus() -> Vec<usize> {
    let Ok(set) = sched_getaffinity(Pid::from_raw(0)) else {
        return vec![];
    };
    (0..CpuSet::count())
        .filter(|&cpu| set.is_set(cpu).unwrap_or(false))
        .collect()
}

/// Pins the calling thread to `cpu`; best effort (a failure only makes a clash less likely).
fn pin(cpu: usize) {
    let mut set = CpuSet::new();
    if set.set(cpu).is_ok() {
        let _ = sched_setaffinity(Pid::from_raw(0), &set);
    }
}

struct Batch<'a> {
    netns: &'a str,
    server: SocketAddr,
    spec: &'a BatchSpec,
    start: Instant,
    queries: Vec<SentQuery>,
    sent_instants: Vec<Instant>,
    flows: Vec<Flow>,
    bad_answers: u32,
    helper: Option<Helper>,
}

fn run(netns: &str, server: SocketAddr, spec: &BatchSpec) -> Result<BatchResult, Error> {
    let started = SystemTime::now();
    let mut batch = Batch {
        netns,
        server,
        spec,
        start: Instant::now(),
        queries: Vec::new(),
        sent_instants: Vec::new(),
        flows: Vec::new(),
        bad_answers: 0,
        helper: spec.parallel_a_aaaa.then(Helper::start),
    };
    if let Some(port) = spec.source_port {
        let socket = batch.open(port)?;
        batch.flows.push(Flow {
            socket,
            port,
            waiting: Vec::new(),
            keep: true,
        });
    }
    let interval = Duration::from_secs_f64(1.0 / spec.rate);
    let mut next = 0u32;
    let mut count = spec.count;
    loop {
        if crate::process::stop_requested() {
            // SIGINT or SIGTERM (`tracer probe`): no more lookups; those sent get their timeout.
            count = count.min(next);
        }
        let now = Instant::now();
        while next < count && now >= batch.start + interval * next {
            batch.send_lookup(next)?;
            next += 1;
        }
        batch.expire(Instant::now());
        let waiting = batch.flows.iter().any(|f| !f.waiting.is_empty());
        if next >= count && !waiting {
            break;
        }
        let mut wake = batch.earliest_deadline().unwrap_or(now + spec.timeout);
        if next < count {
            wake = wake.min(batch.start + interval * next);
        }
        batch.wait(wake.saturating_duration_since(Instant::now()))?;
    }
    let sent = batch.queries.len() as u32;
    let answered = batch
        .queries
        .iter()
        .filter(|q| q.latency().is_some())
        .count() as u32;
    Ok(BatchResult {
        started,
        sent,
        answered,
        lost: sent - answered,
        bad_answers: batch.bad_answers,
        queries: batch.queries,
    })
}

impl Batch<'_> {
    fn open(&self, port: u16) -> Result<UdpSocket, Error> {
        let err = |source| Error::Socket {
            server: self.server,
            port,
            netns: self.netns.to_owned(),
            source,
        };
        let any: IpAddr = if self.server.is_ipv6() {
            Ipv6Addr::UNSPECIFIED.into()
        } else {
            Ipv4Addr::UNSPECIFIED.into()
        };
        let socket = UdpSocket::bind(SocketAddr::new(any, port)).map_err(err)?;
        socket.connect(self.server).map_err(err)?;
        socket.set_nonblocking(true).map_err(err)?;
        Ok(socket)
    }

    fn send_lookup(&mut self, n: u32) -> Result<(), Error> {
        let name = &self.spec.names[n as usize % self.spec.names.len()];
        let qtypes = if self.spec.parallel_a_aaaa {
            vec![RecordType::A, RecordType::AAAA]
        } else {
            vec![self.spec.qtypes[n as usize % self.spec.qtypes.len()]]
        };
        let flow = match self.flows.iter().position(|f| f.keep) {
            Some(i) => i,
            None => {
                let socket = self.open(0)?;
                let port = socket.local_addr().map(|a| a.port()).unwrap_or(0);
                self.flows.push(Flow {
                    socket,
                    port,
                    waiting: Vec::new(),
                    keep: false,
                });
                self.flows.len() - 1
            }
        };
        let mut messages = Vec::new();
        for qtype in &qtypes {
            messages.push((*qtype, encode(name, *qtype)?));
        }
        let socket = &self.flows[flow].socket;
        // Latency counts from just before the send: on veths, send(2) itself carries the query
        // through the node to the server's socket.
        let sent = Instant::now();
        let results: Vec<io::Result<()>> = match (&self.helper, messages.as_slice()) {
            (Some(helper), [(_, (_, first)), (_, (_, second))]) => helper
                .send_pair(socket, first, second.clone())
                .into_iter()
                .collect(),
            _ => messages
                .iter()
                .map(|(_, (_, bytes))| socket.send(bytes).map(drop))
                .collect(),
        };
        for ((qtype, (id, _)), result) in messages.into_iter().zip(results) {
            let outcome = match result {
                Ok(()) => {
                    self.flows[flow].waiting.push(self.queries.len());
                    Outcome::TimedOut
                }
                Err(e) => Outcome::SendFailed {
                    error: e.to_string(),
                },
            };
            self.queries.push(SentQuery {
                id,
                name: name.clone(),
                qtype,
                source_port: self.flows[flow].port,
                sent_at: sent - self.start,
                outcome,
            });
            self.sent_instants.push(sent);
        }
        Ok(())
    }

    fn earliest_deadline(&self) -> Option<Instant> {
        self.flows
            .iter()
            .flat_map(|f| f.waiting.iter())
            .map(|&q| self.sent_instants[q] + self.spec.timeout)
            .min()
    }

    /// Gives up on queries past their timeout (their outcome stays `TimedOut`) and closes the
    /// sockets nobody waits on.
    fn expire(&mut self, now: Instant) {
        let (sent, timeout) = (&self.sent_instants, self.spec.timeout);
        for flow in &mut self.flows {
            flow.waiting.retain(|&q| now < sent[q] + timeout);
        }
        self.flows.retain(|f| f.keep || !f.waiting.is_empty());
    }

    fn wait(&mut self, timeout: Duration) -> Result<(), Error> {
        let ready: Vec<bool> = {
            let mut fds: Vec<PollFd> = self
                .flows
                .iter()
                .map(|f| PollFd::new(f.socket.as_fd(), PollFlags::POLLIN))
                .collect();
            let ms = u16::try_from(timeout.as_millis().max(1)).unwrap_or(u16::MAX);
            match poll(&mut fds, PollTimeout::from(ms)) {
                Ok(_) | Err(nix::errno::Errno::EINTR) => {}
                Err(source) => {
                    return Err(Error::Poll {
                        netns: self.netns.to_owned(),
                        source,
                    });
                }
            }
            fds.iter()
                .map(|fd| fd.revents().is_some_and(|r| !r.is_empty()))
                .collect()
        };
        for (i, is_ready) in ready.into_iter().enumerate() {
            if is_ready {
                self.drain(i);
            }
        }
        Ok(())
    }

    fn drain(&mut self, flow: usize) {
        let mut buf = [0u8; MAX_ANSWER];
        loop {
            match self.flows[flow].socket.recv(&mut buf) {
                Ok(len) => {
                    let now = Instant::now();
                    self.answer(flow, &buf[..len], now);
                }
                Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => {
                    // An ICMP error for this flow: it belongs to the oldest query waiting on it.
                    if !self.flows[flow].waiting.is_empty() {
                        let q = self.flows[flow].waiting.remove(0);
                        self.queries[q].outcome = Outcome::Refused;
                    }
                }
                Err(_) => return,
            }
        }
    }

    fn answer(&mut self, flow: usize, bytes: &[u8], now: Instant) {
        let Ok(msg) = Message::from_vec(bytes) else {
            self.bad_answers += 1;
            return;
        };
        let question = msg.queries.first();
        let position = self.flows[flow].waiting.iter().position(|&q| {
            let rec = &self.queries[q];
            msg.metadata.message_type == MessageType::Response
                && rec.id == msg.metadata.id
                && question.is_some_and(|qq| {
                    qq.query_type() == rec.qtype && fqdn(&rec.name).is_ok_and(|n| n == *qq.name())
                })
        });
        let Some(position) = position else {
            self.bad_answers += 1;
            return;
        };
        let q = self.flows[flow].waiting.remove(position);
        let addresses = msg
            .answers
            .iter()
            .filter_map(|r| match &r.data {
                RData::A(a) => Some(IpAddr::V4(a.0)),
                RData::AAAA(a) => Some(IpAddr::V6(a.0)),
                _ => None,
            })
            .collect();
        self.queries[q].outcome = Outcome::Answered {
            latency: now - self.sent_instants[q],
            rcode: msg.metadata.response_code,
            addresses,
        };
    }
}

/// Parses a query type name (`A`, `AAAA`, `TXT`, ...).
pub fn parse_qtype(s: &str) -> Result<RecordType, String> {
    RecordType::from_str(&s.to_ascii_uppercase())
        .map_err(|e| format!("unknown query type {s:?}: {e}"))
}

/// The server address of `IP[:PORT]` (port 53 when absent).
pub fn server_addr(ip: IpAddr, port: Option<u16>) -> SocketAddr {
    SocketAddr::new(ip, port.unwrap_or(53))
}

pub mod tcp;
#[cfg(test)]
mod tests;
