//! Which rule decided a DNS packet's fate, from netfilter's own tracing: tracer's table
//! `inet tracer_rules` sets `meta nftrace` on DNS packets (UDP and TCP, either port) at
//! prerouting and output, before any other chain; the kernel then reports every rule verdict
//! and base-chain policy those packets meet in any nf_tables table (iptables-nft's included) as
//! `NFT_MSG_TRACE` messages, which this module reads and assembles into one path per packet.
//!
//! Everything happens in the network namespace of the thread that calls [`RuleTrace::start`];
//! cleanup goes back to that namespace whichever thread drops the trace. Packet fates never
//! change: tracer's chains accept with no statement but `meta nftrace set 1`. Two traces in one
//! namespace share the table name: the second replaces the first's table, and the first's drop
//! removes it.
//!
//! The kernel never says a packet is done, and its trace id is a hash of the skb: a path is
//! complete at a drop, after [`Options::idle`] without a message, or at a flush; a packet that
//! comes back through loopback carries a new id (a second path); two packets of one flow whose
//! ids collide within the idle time share a path (not seen in the tests' bursts).
//!
//! Rules in legacy iptables (`iptables-legacy`) are not nf_tables rules: [`LegacyTrace`] traces
//! them with xtables' TRACE target over nfnetlink_log instead, with the same paths (see its
//! module for what that costs the node).
//!
//! # Layout
//! - `legacy`: the xtables side: raw-table TRACE rules, the nfnetlink_log subscription.
//! - `message`: `NFT_MSG_TRACE` parsing (bounded NLA iteration), verdicts, families, 5-tuples.
//! - `nflog`: nfnetlink_log TRACE messages, and `iptables-legacy-save` rules (verdicts from targets).
//! - `path`: messages -> one [`PacketPath`] per trace id, completed by a drop, idleness or flush.
//! - `rules`: rule handles -> rule text and comment (`nft -j list ruleset`, `iptables-nft-save`).
//! - `socket`: the non-blocking `NFNLGRP_NFTRACE` subscription.
//! - `table`: tracer's own table (create, delete, leftovers) and the namespace it lives in.

mod legacy;
mod message;
mod nflog;
mod path;
mod rules;
mod socket;
mod table;

#[cfg(test)]
mod tests;

use std::{
    io,
    os::fd::{AsFd, AsRawFd, BorrowedFd, RawFd},
    time::{Duration, Instant},
};

pub use legacy::{LEGACY_COMMENT, LegacyTrace};
pub use message::{Family, Tuple, Verdict};
pub use path::{MAX_STEPS, PacketPath, PathEnd, RuleVerdict};
pub use rules::RuleRef;
pub use table::{COMMENT, PRIORITY, TABLE};

use message::TraceMessage;
use path::Assembler;
use rules::RuleBook;
use socket::{Received, TraceSocket};
use table::Netns;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("failed to open the nftrace netlink socket: {source}")]
    Socket { source: io::Error },
    #[error("failed to {what}: {source}")]
    Nflog {
        what: &'static str,
        source: io::Error,
    },
    #[error("failed to receive trace messages: {source}")]
    Recv { source: io::Error },
    #[error("failed to wait for trace messages: {source}")]
    Wait { source: nix::Error },
    #[error("failed to run {program}: {source}")]
    Spawn {
        program: &'static str,
        source: io::Error,
    },
    #[error("`{command}` failed: {stderr}")]
    Command { command: String, stderr: String },
    #[error("failed to parse `nft -j list ruleset`: {source}")]
    Ruleset { source: serde_json::Error },
    #[error("failed to open the calling thread's network namespace: {source}")]
    Netns { source: io::Error },
    #[error("failed to enter the trace's network namespace: {source}")]
    Enter { source: nix::Error },
    #[error("the thread running in the trace's network namespace panicked")]
    Panicked,
    #[error(
        "another tracer (pid {pid}) is tracing rules in this namespace (table inet tracer_rules): one --rules trace per namespace"
    )]
    Busy { pid: u32 },
}

/// The most datagrams one read takes off a trace socket. A loaded node can trace packets faster
/// than a starved tracer reads them: an unbounded drain never returned, so the trace never saw
/// its stop request (a lifecycle cycle hung past 60 s under load). The rest waits for the next
/// poll, and what overflows the socket is counted as lost.
pub(crate) const READ_BUDGET: usize = 1024;
/// At the end (`flush`), at most this many budgets are read: what a stopping trace still finds
/// waiting, without letting a flood keep it from stopping.
const FLUSH_ROUNDS: usize = 16;

/// What to trace and how paths complete.
#[derive(Debug, Clone)]
pub struct Options {
    /// Ports whose packets are traced (as destination, UDP and TCP).
    pub ports: Vec<u16>,
    /// Whether packets from those ports (answers) are traced too. Each traced packet costs the
    /// kernel a message per rule verdict, so a caller that only needs the queries' paths says no.
    pub replies: bool,
    /// A packet without a new message for this long is complete.
    pub idle: Duration,
    /// At most this many packets are open at once; beyond, the one idle longest is handed out.
    pub max_open: usize,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            ports: vec![53],
            replies: true,
            idle: Duration::from_millis(200),
            max_open: 4096,
        }
    }
}

/// What a trace read, counted: nothing is dropped silently.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Counters {
    /// Trace messages read.
    pub messages: u64,
    /// Messages that could not be parsed (each skipped).
    pub malformed: u64,
    /// Receive-buffer overflows (`ENOBUFS`): each lost one or more messages.
    pub lost: u64,
    /// Messages about tracer's own chains (read, not steps).
    pub own: u64,
    /// Paths handed out.
    pub paths: u64,
    /// Paths handed out early because too many packets were open.
    pub evicted: u64,
    /// Steps naming a rule handle that was not in the ruleset, even after re-reading it.
    pub unknown_rules: u64,
    /// Times the ruleset was read again for a handle not known.
    pub rereads: u64,
}

/// What both sides keep while reading: the paths being put together, the counts, the options.
pub(crate) struct Collector {
    pub(crate) assembler: Assembler,
    pub(crate) counters: Counters,
    pub(crate) options: Options,
}

impl Collector {
    pub(crate) fn new(options: Options) -> Collector {
        Collector {
            assembler: Assembler::new(options.max_open),
            counters: Counters::default(),
            options,
        }
    }

    /// The paths completed by a final verdict or idle for `Options::idle`, oldest first.
    pub(crate) fn completed(&mut self) -> Vec<PacketPath> {
        let idle = u64::try_from(self.options.idle.as_nanos()).unwrap_or(u64::MAX);
        self.assembler.expire(monotonic_ns(), idle);
        self.take()
    }

    /// Every path, complete or not.
    pub(crate) fn all(&mut self) -> Vec<PacketPath> {
        self.assembler.flush();
        self.take()
    }

    fn take(&mut self) -> Vec<PacketPath> {
        let paths = self.assembler.take();
        self.counters.paths += paths.len() as u64;
        paths
    }

    /// What was read so far.
    pub(crate) fn counters(&self) -> Counters {
        Counters {
            evicted: self.assembler.evicted,
            ..self.counters
        }
    }
}

/// The ruleset is read again for an unknown handle at most this often.
pub(crate) const REREAD_MIN: Duration = Duration::from_secs(1);

/// A running rule trace in one network namespace. Dropping it deletes tracer's table.
pub struct RuleTrace {
    netns: Netns,
    socket: TraceSocket,
    book: RuleBook,
    book_read: Instant,
    paths: Collector,
    removed_leftover: bool,
}

impl RuleTrace {
    /// Starts tracing DNS packets in the calling thread's namespace: subscribes to trace
    /// messages, creates tracer's table (removing one a killed run left, with a log line) and
    /// reads the ruleset's rules.
    pub fn start(options: Options) -> Result<RuleTrace, Error> {
        let netns = Netns::current()?;
        // Subscribed before the table exists: no packet's first messages are missed.
        let socket = TraceSocket::open()?;
        let removed_leftover = table::create(&options.ports, options.replies)?;
        let book = match RuleBook::read() {
            Ok(book) => book,
            Err(e) => {
                if let Err(d) = table::delete() {
                    log::warn!("failed to delete table inet {TABLE}: {d}");
                }
                return Err(e);
            }
        };
        log::debug!(
            "rule trace started: table inet {TABLE}, ports {:?}, {} rules known",
            options.ports,
            book.len()
        );
        Ok(RuleTrace {
            netns,
            socket,
            book,
            book_read: Instant::now(),
            paths: Collector::new(options),
            removed_leftover,
        })
    }

    /// Whether `start` removed a table a killed run had left.
    pub fn removed_leftover(&self) -> bool {
        self.removed_leftover
    }

    /// What was read so far.
    pub fn counters(&self) -> Counters {
        self.paths.counters()
    }

    /// Packets seen whose paths are not complete yet.
    pub fn open_paths(&self) -> usize {
        self.paths.assembler.open()
    }

    /// Reads every waiting message without blocking and returns the paths completed (by a drop,
    /// or idle for [`Options::idle`]), oldest first.
    pub fn poll(&mut self) -> Result<Vec<PacketPath>, Error> {
        self.read()?;
        Ok(self.paths.completed())
    }

    /// Like [`poll`](Self::poll), but waits up to `timeout` for at least one completed path.
    pub fn wait(&mut self, timeout: Duration) -> Result<Vec<PacketPath>, Error> {
        let (fd, idle) = (self.socket.as_fd().as_raw_fd(), self.paths.options.idle);
        wait_for(fd, idle, timeout, || self.poll())
    }

    /// Reads every waiting message and hands out every path, complete or not.
    pub fn flush(&mut self) -> Result<Vec<PacketPath>, Error> {
        for _ in 0..FLUSH_ROUNDS {
            if self.read()? < READ_BUDGET {
                break;
            }
        }
        Ok(self.paths.all())
    }

    /// Reads the socket until it is empty, or `READ_BUDGET` datagrams.
    fn read(&mut self) -> Result<usize, Error> {
        let mut batch = Vec::new();
        let mut datagrams = 0;
        for _ in 0..READ_BUDGET {
            datagrams += 1;
            let now = monotonic_ns();
            match self.socket.recv()? {
                Received::Empty => break,
                Received::Lost => self.paths.counters.lost += 1,
                Received::Datagram(bytes) => {
                    for msg in message::messages(bytes) {
                        match msg {
                            Ok(Some(msg)) => batch.push((msg, now)),
                            Ok(None) => {}
                            Err(e) => {
                                log::debug!("malformed trace message: {e}");
                                self.paths.counters.malformed += 1;
                            }
                        }
                    }
                }
            }
        }
        for (msg, now) in batch {
            self.handle(msg, now);
        }
        Ok(datagrams)
    }

    fn handle(&mut self, msg: TraceMessage, now: u64) {
        self.paths.counters.messages += 1;
        let own = msg.family == Family::Inet && msg.table == TABLE;
        if own {
            self.paths.counters.own += 1;
        }
        let rule = match msg.handle {
            Some(handle) if !own => Some(self.rule(msg.family, &msg.table, handle)),
            _ => None,
        };
        self.paths.assembler.push(msg, rule, own, now);
    }

    /// The rule with `handle`, reading the ruleset again (at most every [`REREAD_MIN`]) when it is
    /// not known: a rule added since the last read.
    fn rule(&mut self, family: Family, table: &str, handle: u64) -> RuleRef {
        if self.book.get(family, table, handle).is_none() && self.book_read.elapsed() >= REREAD_MIN
        {
            self.book_read = Instant::now();
            self.paths.counters.rereads += 1;
            match self.netns.run(RuleBook::read) {
                Ok(book) => self.book = book,
                Err(e) => log::warn!("failed to read the ruleset again: {e}"),
            }
        }
        self.book
            .get(family, table, handle)
            .cloned()
            .unwrap_or_else(|| {
                self.paths.counters.unknown_rules += 1;
                RuleRef {
                    handle,
                    text: String::new(),
                    comment: None,
                    number: None,
                }
            })
    }
}

impl AsFd for RuleTrace {
    /// The trace socket: readable when messages wait (for `AsyncFd` or `poll(2)`; call
    /// [`RuleTrace::poll`] then).
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.socket.as_fd()
    }
}

impl Drop for RuleTrace {
    fn drop(&mut self) {
        if let Err(e) = self.netns.run(table::delete) {
            log::warn!("failed to delete table inet {TABLE}: {e}");
        }
    }
}

/// What tracer's rule tracing left in the calling thread's namespace (after a killed run):
/// `nft table inet tracer_rules` when the table is there, and each legacy TRACE rule as
/// `iptables-legacy -t raw -A …` (looked for only when the legacy raw table exists).
pub fn leftovers() -> Result<Vec<String>, Error> {
    let mut left = Vec::new();
    if table::exists()? {
        left.push(format!("nft table inet {TABLE}"));
    }
    left.extend(
        legacy::legacy_rules()?
            .into_iter()
            .map(|rule| format!("iptables-legacy -t raw {rule}")),
    );
    Ok(left)
}

/// Calls `poll` until it returns paths or `timeout` passes, sleeping in `poll(2)` on `fd` (woken
/// by a message, or after half the idle time, when an open path may have gone idle).
fn wait_for(
    fd: RawFd,
    idle: Duration,
    timeout: Duration,
    mut poll: impl FnMut() -> Result<Vec<PacketPath>, Error>,
) -> Result<Vec<PacketPath>, Error> {
    let deadline = Instant::now() + timeout;
    loop {
        let paths = poll()?;
        let left = deadline.saturating_duration_since(Instant::now());
        if !paths.is_empty() || left.is_zero() {
            return Ok(paths);
        }
        let nap = left.min(idle / 2).max(Duration::from_millis(1));
        let ms = u16::try_from(nap.as_millis()).unwrap_or(u16::MAX);
        // SAFETY: the caller's socket outlives this call.
        let fd = unsafe { BorrowedFd::borrow_raw(fd) };
        let mut fds = [nix::poll::PollFd::new(fd, nix::poll::PollFlags::POLLIN)];
        match nix::poll::poll(&mut fds, ms) {
            Ok(_) | Err(nix::errno::Errno::EINTR) => {}
            Err(source) => return Err(Error::Wait { source }),
        }
    }
}

/// CLOCK_MONOTONIC nanoseconds (bpf_ktime_get_ns's clock; it cannot fail on Linux).
pub(crate) fn monotonic_ns() -> u64 {
    nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC)
        .map(|t| t.tv_sec() as u64 * 1_000_000_000 + t.tv_nsec() as u64)
        .unwrap_or(0)
}
