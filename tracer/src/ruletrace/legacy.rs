//! The xtables (legacy) side: `iptables-legacy -t raw -I PREROUTING|OUTPUT … -j TRACE` rules
//! (marked with the comment `tracer-ruletrace`) on DNS packets, and the trace read over
//! nfnetlink_log: the namespace's IPv4 logger bound to nfnetlink_log, group 0 bound to this
//! socket. IPv4 only (ip6tables-legacy is not traced).
//!
//! Adding a legacy raw rule registers the legacy raw table in the namespace (it then shows in
//! `/proc/net/ip_tables_names`, which backend detection reads, and stays there after the rules
//! are deleted): use this side only on nodes whose kube-proxy rules are in legacy iptables, where
//! that table's presence says nothing new. Drop deletes the rules and gives the IPv4 logger back
//! to the one bound before (`/proc/sys/net/netfilter/nf_log/2`). That logger's name is kept in
//! the rules' comment (`tracer-ruletrace;logger=NAME`), so the start after a killed run, which
//! finds the logger still bound to nfnetlink_log, gives back the one bound before the killed run.

use std::{
    io,
    os::fd::{AsFd, AsRawFd, BorrowedFd},
    time::{Duration, Instant},
};

use netlink_packet_core::NetlinkMessage;
use netlink_packet_netfilter::{
    NetfilterMessage, NetfilterProtoFamily,
    nflog::{ConfigCmd, ConfigMode, ConfigNla, config_request},
};
use netlink_sys::{Socket, protocols::NETLINK_NETFILTER};

use super::{
    Collector, Counters, Error, Options, PacketPath, REREAD_MIN,
    message::TraceType,
    monotonic_ns,
    nflog::{self, LegacyBook, LogMessage, Received},
    rules::save_comment,
    table::{Netns, command},
    wait_for,
};

/// The comment on tracer's legacy TRACE rules (followed by `;logger=NAME`).
pub const LEGACY_COMMENT: &str = "tracer-ruletrace";
/// The legacy IPv4 tables of the calling thread's namespace (`/proc/net` is the main thread's).
const IP_TABLES_NAMES: &str = "/proc/thread-self/net/ip_tables_names";
/// The namespace's IPv4 logger (`NONE`, `nf_log_ipv4`, `nfnetlink_log`).
const NF_LOG_IPV4: &str = "/proc/sys/net/netfilter/nf_log/2";
/// Bytes of each traced packet copied: the IPv4 header with options and the ports.
const COPY_RANGE: u32 = 128;
/// A config request's ack must come within this.
const ACK_TIMEOUT: Duration = Duration::from_secs(2);

/// A running legacy rule trace in one network namespace. Dropping it deletes its rules and gives
/// the IPv4 logger back.
pub struct LegacyTrace {
    netns: Netns,
    socket: Socket,
    buf: Vec<u8>,
    seq: u32,
    book: LegacyBook,
    book_read: Instant,
    paths: Collector,
    logger_before: Option<String>,
    removed_leftover: bool,
}

impl LegacyTrace {
    /// Starts tracing DNS packets through legacy iptables in the calling thread's namespace:
    /// binds nfnetlink_log group 0, removes TRACE rules a killed run left (with a log line),
    /// inserts its own and reads `iptables-legacy-save`. Binding the group fails with EPERM
    /// while another listener (ulogd, another trace) holds it in this namespace.
    pub fn start(options: Options) -> Result<LegacyTrace, Error> {
        let netns = Netns::current()?;
        let err = |source| Error::Socket { source };
        let mut socket = Socket::new(NETLINK_NETFILTER).map_err(err)?;
        socket.bind_auto().map_err(err)?;
        super::socket::large_receive_buffer(&socket)?;
        socket.set_non_blocking(true).map_err(err)?;
        // A killed run's rules name the logger bound before it; it is still ours now.
        let leftover = legacy_rules()?;
        let logger_before = leftover
            .iter()
            .find_map(|rule| Some(save_comment(rule)?.split_once(";logger=")?.1.to_owned()))
            .or_else(|| {
                let now = std::fs::read_to_string(NF_LOG_IPV4).ok()?;
                Some(now.trim().to_owned())
            });
        let mut trace = LegacyTrace {
            netns,
            socket,
            buf: vec![0; 64 << 10],
            seq: 0,
            book: LegacyBook::default(),
            book_read: Instant::now(),
            paths: Collector::new(options),
            logger_before,
            removed_leftover: false,
        };
        // From here on, the trace's Drop undoes whatever was done.
        let family = NetfilterProtoFamily::IPv4;
        trace.configure(
            "bind nfnetlink_log to IPv4",
            family,
            vec![ConfigNla::Cmd(ConfigCmd::PfBind)],
        )?;
        trace.configure(
            "bind nflog group 0",
            NetfilterProtoFamily::Unspec,
            vec![
                ConfigNla::Cmd(ConfigCmd::Bind),
                ConfigNla::Mode(ConfigMode::new_packet(COPY_RANGE)),
                ConfigNla::QThresh(1),
            ],
        )?;
        trace.removed_leftover = !delete_rules()?.is_empty();
        if trace.removed_leftover {
            log::warn!("removed legacy TRACE rules ({LEGACY_COMMENT}) left by a killed run");
        }
        let logger = trace.logger_before.as_deref().unwrap_or("NONE");
        add_rules(&trace.paths.options, logger)?;
        trace.book = read_book()?;
        Ok(trace)
    }

    /// Sends one nfnetlink_log config request and waits for its ack.
    fn configure(
        &mut self,
        what: &'static str,
        family: NetfilterProtoFamily,
        nlas: Vec<ConfigNla>,
    ) -> Result<(), Error> {
        self.seq = self.seq.wrapping_add(1);
        let mut msg: NetlinkMessage<NetfilterMessage> = config_request(family, 0, nlas);
        msg.header.sequence_number = self.seq;
        let mut out = vec![0; msg.buffer_len()];
        msg.serialize(&mut out);
        let failed = |source| Error::Nflog { what, source };
        self.socket.send(&out, 0).map_err(failed)?;
        let deadline = Instant::now() + ACK_TIMEOUT;
        while Instant::now() < deadline {
            let mut fds = [nix::poll::PollFd::new(
                self.socket.as_fd(),
                nix::poll::PollFlags::POLLIN,
            )];
            let _ = nix::poll::poll(&mut fds, 100u16);
            let n = match self.socket.recv(&mut &mut self.buf[..], 0) {
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                Err(source) => return Err(failed(source)),
            };
            for received in nflog::messages(&self.buf[..n.min(self.buf.len())]).flatten() {
                match received {
                    Received::Ack { seq, errno: 0 } if seq == self.seq => return Ok(()),
                    Received::Ack { seq, errno } if seq == self.seq => {
                        return Err(failed(io::Error::from_raw_os_error(errno)));
                    }
                    _ => {}
                }
            }
        }
        Err(failed(io::ErrorKind::TimedOut.into()))
    }

    /// Whether `start` removed rules a killed run had left.
    pub fn removed_leftover(&self) -> bool {
        self.removed_leftover
    }

    /// What was read so far.
    pub fn counters(&self) -> Counters {
        self.paths.counters()
    }

    /// See [`RuleTrace::poll`](super::RuleTrace::poll).
    pub fn poll(&mut self) -> Result<Vec<PacketPath>, Error> {
        self.read()?;
        Ok(self.paths.completed())
    }

    /// See [`RuleTrace::wait`](super::RuleTrace::wait).
    pub fn wait(&mut self, timeout: Duration) -> Result<Vec<PacketPath>, Error> {
        let idle = self.paths.options.idle;
        let fd = self.socket.as_raw_fd();
        wait_for(fd, idle, timeout, || self.poll())
    }

    /// See [`RuleTrace::flush`](super::RuleTrace::flush).
    pub fn flush(&mut self) -> Result<Vec<PacketPath>, Error> {
        for _ in 0..super::FLUSH_ROUNDS {
            if self.read()? < super::READ_BUDGET {
                break;
            }
        }
        Ok(self.paths.all())
    }

    fn read(&mut self) -> Result<usize, Error> {
        let mut batch = Vec::new();
        let mut datagrams = 0;
        for _ in 0..super::READ_BUDGET {
            datagrams += 1;
            let now = monotonic_ns();
            let n = match self.socket.recv(&mut &mut self.buf[..], 0) {
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.raw_os_error() == Some(libc::ENOBUFS) => {
                    self.paths.counters.lost += 1;
                    continue;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(source) => return Err(Error::Recv { source }),
            };
            for received in nflog::messages(&self.buf[..n.min(self.buf.len())]) {
                match received {
                    Ok(Received::Trace(msg)) => batch.push((msg, now)),
                    Ok(_) => {}
                    Err(e) => {
                        log::debug!("malformed nflog message: {e}");
                        self.paths.counters.malformed += 1;
                    }
                }
            }
        }
        for (msg, now) in batch {
            self.handle(msg, now);
        }
        Ok(datagrams)
    }

    fn handle(&mut self, msg: LogMessage, now: u64) {
        self.paths.counters.messages += 1;
        let unknown = |book: &LegacyBook, msg: &LogMessage| {
            msg.kind == TraceType::Rule && book.rule(&msg.table, &msg.chain, msg.number).is_none()
        };
        if unknown(&self.book, &msg) && self.book_read.elapsed() >= REREAD_MIN {
            self.book_read = Instant::now();
            self.paths.counters.rereads += 1;
            match self.netns.run(read_book) {
                Ok(book) => self.book = book,
                Err(e) => log::warn!("failed to read the legacy ruleset again: {e}"),
            }
        }
        if unknown(&self.book, &msg) {
            self.paths.counters.unknown_rules += 1;
        }
        let id = nflog::packet_id(&msg.payload);
        let (trace, rule) = self.book.translate(msg, id);
        let own = rule
            .as_ref()
            .and_then(|r| r.comment.as_deref())
            .is_some_and(|c| c.starts_with(LEGACY_COMMENT));
        if own {
            self.paths.counters.own += 1;
        }
        self.paths.assembler.push(trace, rule, own, now);
    }
}

impl AsFd for LegacyTrace {
    /// The nflog socket: readable when messages wait.
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.socket.as_fd()
    }
}

impl Drop for LegacyTrace {
    fn drop(&mut self) {
        let logger = self.logger_before.clone();
        let undo = move || {
            delete_rules()?;
            if let Some(before) = logger {
                let now = std::fs::read_to_string(NF_LOG_IPV4).unwrap_or_default();
                if now.trim() != before {
                    std::fs::write(NF_LOG_IPV4, &before)
                        .map_err(|source| Error::Netns { source })?;
                }
            }
            Ok(())
        };
        if let Err(e) = self.netns.run(undo) {
            log::warn!("failed to remove the legacy rule trace: {e}");
        }
    }
}

/// `iptables-legacy-save` of every legacy table the namespace has.
fn read_book() -> Result<LegacyBook, Error> {
    let out = command("iptables-legacy-save", &[], None)?;
    Ok(LegacyBook::parse(&String::from_utf8_lossy(&out.stdout)))
}

/// Whether the namespace has the legacy raw table (reading it would register it).
fn has_raw_table() -> bool {
    std::fs::read_to_string(IP_TABLES_NAMES).is_ok_and(|names| names.lines().any(|l| l == "raw"))
}

/// tracer's TRACE rules in the legacy raw table, as `-A CHAIN …` lines.
pub(crate) fn legacy_rules() -> Result<Vec<String>, Error> {
    if !has_raw_table() {
        return Ok(Vec::new());
    }
    let out = command("iptables-legacy-save", &["-t", "raw"], None)?;
    Ok(String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| {
            l.starts_with("-A ") && save_comment(l).is_some_and(|c| c.starts_with(LEGACY_COMMENT))
        })
        .map(str::to_owned)
        .collect())
}

/// Deletes tracer's TRACE rules; returns the ones deleted.
fn delete_rules() -> Result<Vec<String>, Error> {
    let rules = legacy_rules()?;
    for rule in &rules {
        let words = nflog::tokens(rule);
        let mut args = vec!["-t", "raw", "-D"];
        args.extend(words.iter().skip(1).map(String::as_str));
        command("iptables-legacy", &args, None)?;
    }
    Ok(rules)
}

/// Inserts a TRACE rule for each protocol and direction traced at the head of raw PREROUTING and
/// OUTPUT, its comment naming the IPv4 logger to give back.
fn add_rules(options: &Options, logger: &str) -> Result<(), Error> {
    let comment = format!("{LEGACY_COMMENT};logger={logger}");
    let ports = options
        .ports
        .iter()
        .map(u16::to_string)
        .collect::<Vec<_>>()
        .join(",");
    for chain in ["PREROUTING", "OUTPUT"] {
        for proto in ["udp", "tcp"] {
            let dirs = if options.replies { 2 } else { 1 };
            for dir in ["--dports", "--sports"].into_iter().take(dirs) {
                let args = [
                    "-t",
                    "raw",
                    "-I",
                    chain,
                    "-p",
                    proto,
                    "-m",
                    "multiport",
                    dir,
                    &ports,
                    "-m",
                    "comment",
                    "--comment",
                    &comment,
                    "-j",
                    "TRACE",
                ];
                command("iptables-legacy", &args, None)?;
            }
        }
    }
    Ok(())
}
