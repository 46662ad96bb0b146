//! The network interfaces of a namespace and their kinds, as far as DNS cares: one `RTM_GETLINK`
//! dump over `NETLINK_ROUTE`, no `ip` binary. Below both `node` (inspect's facts) and `probes`
//! (which interfaces get the TC programs).
//!
//! A netlink socket belongs to the network namespace of the thread that opened it: [`list`]
//! answers for the calling thread's namespace (run it inside [`crate::netns::run_in`] for another),
//! and a [`Changes`] subscription opened there keeps reporting that namespace's veths coming and
//! going, whichever thread reads it.

use std::{collections::HashSet, io};

use netlink_packet_core::{
    DecodeError, NLM_F_DUMP, NLM_F_DUMP_INTR, NLM_F_REQUEST, NetlinkHeader, NetlinkMessage,
    NetlinkPayload,
};
use netlink_packet_route::{
    RouteNetlinkMessage,
    link::{InfoKind, LinkAttribute, LinkExtentMask, LinkFlags, LinkInfo, LinkMessage, State},
};
use netlink_sys::{Socket, SocketAddr, protocols::NETLINK_ROUTE};
use serde::Serialize;

/// What failed listing the interfaces.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("failed to open a NETLINK_ROUTE socket: {source}")]
    Socket { source: io::Error },
    #[error("failed to send the RTM_GETLINK dump request: {source}")]
    Send { source: io::Error },
    #[error("failed to receive the RTM_GETLINK dump: {source}")]
    Recv { source: io::Error },
    #[error("failed to decode a message of the RTM_GETLINK dump: {source}")]
    Decode { source: DecodeError },
    #[error("the kernel refused the RTM_GETLINK dump: {source}")]
    Refused { source: io::Error },
    #[error("the RTM_GETLINK dump was interrupted by interface changes {attempts} times in a row")]
    Interrupted { attempts: u32 },
    #[error("failed to subscribe to link notifications (RTNLGRP_LINK): {source}")]
    Subscribe { source: io::Error },
}

/// An interface's kind, as far as DNS cares.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum LinkKind {
    /// A Linux bridge (a bridge CNI's `cni0`).
    Bridge,
    /// A veth (a pod's link).
    Veth,
    /// kube-proxy's IPVS dummy interface.
    KubeIpvs,
    /// Anything else.
    Other,
}

/// The name kube-proxy's IPVS mode gives its dummy interface.
const KUBE_IPVS: &str = "kube-ipvs0";

impl LinkKind {
    /// The kind of interface `name` whose `IFLA_INFO_KIND` is `info_kind` (`None`: the link has no
    /// `IFLA_LINKINFO`, as a physical NIC). `kube-ipvs0` is kube-proxy's whatever its driver (a
    /// dummy where the kernel has one).
    fn of(name: &str, info_kind: Option<&InfoKind>) -> LinkKind {
        if name == KUBE_IPVS {
            return LinkKind::KubeIpvs;
        }
        match info_kind {
            Some(InfoKind::Veth) => LinkKind::Veth,
            Some(InfoKind::Bridge) => LinkKind::Bridge,
            _ => LinkKind::Other,
        }
    }
}

/// One interface other than loopback.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Link {
    /// Name (`IFLA_IFNAME`).
    pub name: String,
    /// Interface index in its namespace.
    pub index: u32,
    /// Kind, from `IFLA_INFO_KIND` (and the name, for `kube-ipvs0`).
    pub kind: LinkKind,
    /// Operationally up: `IF_OPER_UP`, or `IF_OPER_UNKNOWN` (drivers without carrier reporting,
    /// such as dummy) with `IFF_UP` and `IFF_LOWER_UP` set.
    pub up: bool,
    /// A veth's other end; `None` for other kinds, or when the other end is gone.
    pub peer: Option<Peer>,
}

/// The other end of a veth.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Peer {
    /// Its interface index, in its own namespace (`IFLA_LINK`).
    pub index: u32,
    /// The id this namespace gives the peer's namespace (`IFLA_LINK_NETNSID`); `None` when both
    /// ends are in this namespace.
    pub netns_id: Option<i32>,
}

impl Link {
    /// The link an `RTM_NEWLINK` message describes; `None` for loopback (and for a message without
    /// a name, which the kernel never sends).
    pub fn from_message(message: LinkMessage) -> Option<Link> {
        let flags = message.header.flags;
        if flags.contains(LinkFlags::Loopback) {
            return None;
        }
        let (mut name, mut info_kind, mut oper, mut iflink, mut netns_id) =
            (None, None, State::Unknown, None, None);
        for attribute in message.attributes {
            match attribute {
                LinkAttribute::IfName(n) => name = Some(n),
                LinkAttribute::OperState(s) => oper = s,
                LinkAttribute::Link(index) => iflink = Some(index),
                LinkAttribute::LinkNetNsId(id) => netns_id = Some(id),
                LinkAttribute::LinkInfo(infos) => {
                    info_kind = infos.into_iter().find_map(|info| match info {
                        LinkInfo::Kind(kind) => Some(kind),
                        _ => None,
                    });
                }
                _ => {}
            }
        }
        let name = name?;
        let kind = LinkKind::of(&name, info_kind.as_ref());
        // IFLA_LINK is a veth's peer (0 once the peer is gone); for other kinds, a lower device.
        let peer = iflink
            .filter(|index| *index != 0 && info_kind == Some(InfoKind::Veth))
            .map(|index| Peer { index, netns_id });
        let up = oper == State::Up
            || (oper == State::Unknown && flags.contains(LinkFlags::Up | LinkFlags::LowerUp));
        Some(Link {
            name,
            index: message.header.index,
            kind,
            up,
            peer,
        })
    }
}

/// Size of one receive call. The kernel sizes a dump's datagrams to the reader's largest receive
/// buffer, capped at 32 KiB, unless a single link needs more.
const RECV_LEN: usize = 64 << 10;
/// Dumps interrupted by interface changes (`NLM_F_DUMP_INTR`) tried again before giving up.
const DUMP_ATTEMPTS: u32 = 3;
/// The sequence number of the one request a socket sends.
const SEQ: u32 = 1;

/// Every interface other than loopback in the calling thread's network namespace, in index order.
pub fn list() -> Result<Vec<Link>, Error> {
    for attempt in 1..=DUMP_ATTEMPTS {
        let dump = dump()?;
        if !dump.interrupted {
            return Ok(dump.links);
        }
        log::debug!("RTM_GETLINK dump {attempt} interrupted by interface changes");
    }
    Err(Error::Interrupted {
        attempts: DUMP_ATTEMPTS,
    })
}

/// One `RTM_GETLINK` dump on a fresh socket.
fn dump() -> Result<Dump, Error> {
    let err = |source| Error::Socket { source };
    let mut socket = Socket::new(NETLINK_ROUTE).map_err(err)?;
    socket.bind_auto().map_err(err)?;
    socket.connect(&SocketAddr::new(0, 0)).map_err(err)?;
    socket
        .send(&request(SEQ), 0)
        .map_err(|source| Error::Send { source })?;
    let mut buf = vec![0; RECV_LEN];
    let mut dump = Dump::default();
    while !dump.ended {
        let n = socket
            .recv(&mut &mut buf[..], 0)
            .map_err(|source| Error::Recv { source })?;
        dump.read(&buf[..n.min(buf.len())], SEQ)?;
    }
    Ok(dump)
}

/// The `RTM_GETLINK` dump request, asking the kernel to leave out the statistics.
fn request(seq: u32) -> Vec<u8> {
    let mut link = LinkMessage::default();
    link.attributes
        .push(LinkAttribute::ExtMask(vec![LinkExtentMask::SkipStats]));
    let mut header = NetlinkHeader::default();
    header.flags = NLM_F_REQUEST | NLM_F_DUMP;
    header.sequence_number = seq;
    let mut message = NetlinkMessage::new(
        header,
        NetlinkPayload::from(RouteNetlinkMessage::GetLink(link)),
    );
    message.finalize();
    let mut out = vec![0; message.buffer_len()];
    message.serialize(&mut out);
    out
}

/// A dump as read so far.
#[derive(Debug, Default)]
struct Dump {
    links: Vec<Link>,
    /// `NLMSG_DONE` (or an ack) arrived.
    ended: bool,
    /// The kernel flagged the dump inconsistent: interfaces changed while it ran.
    interrupted: bool,
}

impl Dump {
    /// Reads one datagram of the answer to request `seq`.
    fn read(&mut self, datagram: &[u8], seq: u32) -> Result<(), Error> {
        for message in split(datagram) {
            let message = message.map_err(|source| Error::Decode { source })?;
            if message.header.sequence_number != seq {
                continue;
            }
            if message.header.flags & NLM_F_DUMP_INTR != 0 {
                self.interrupted = true;
            }
            match message.payload {
                NetlinkPayload::Done(_) => self.ended = true,
                NetlinkPayload::Error(e) => match e.code {
                    Some(code) => {
                        return Err(Error::Refused {
                            source: io::Error::from_raw_os_error(-code.get()),
                        });
                    }
                    None => self.ended = true,
                },
                NetlinkPayload::InnerMessage(RouteNetlinkMessage::NewLink(link)) => {
                    self.links.extend(Link::from_message(link));
                }
                _ => {}
            }
        }
        Ok(())
    }
}

/// A veth appearing in or leaving the subscribed namespace.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// A veth the subscription had not seen (the first `RTM_NEWLINK` for its index).
    Added(Link),
    /// A veth the subscription knew is gone (`RTM_DELLINK`).
    Removed {
        /// Its interface index.
        index: u32,
        /// Its name.
        name: String,
    },
}

/// The multicast group of link notifications (`RTNLGRP_LINK`).
const RTNLGRP_LINK: u32 = 1;

/// A non-blocking subscription to a namespace's link notifications (`RTNLGRP_LINK`), reduced to
/// veths appearing and going: the kernel sends an `RTM_NEWLINK` for every change of a link (up,
/// master, carrier), so the subscription remembers which veths it has reported.
pub struct Changes {
    socket: Socket,
    /// Indexes of the veths known: given at the start, then those reported added.
    known: HashSet<u32>,
    buf: Vec<u8>,
}

impl Changes {
    /// Subscribes in the calling thread's namespace. Veths whose indexes are in `known` are not
    /// reported added (the caller listed them); [`Changes::know`] adds to them later.
    pub fn subscribe(known: impl IntoIterator<Item = u32>) -> Result<Self, Error> {
        let err = |source| Error::Subscribe { source };
        let mut socket = Socket::new(NETLINK_ROUTE).map_err(err)?;
        socket.bind_auto().map_err(err)?;
        socket.add_membership(RTNLGRP_LINK).map_err(err)?;
        socket.set_non_blocking(true).map_err(err)?;
        Ok(Self {
            socket,
            known: known.into_iter().collect(),
            buf: vec![0; RECV_LEN],
        })
    }

    /// Marks veths as known (listed after subscribing): their notifications are not reported.
    pub fn know(&mut self, indexes: impl IntoIterator<Item = u32>) {
        self.known.extend(indexes);
    }

    /// The changes pending on the socket, oldest first; empty when none are.
    pub fn read(&mut self) -> Result<Vec<Change>, Error> {
        let mut out = Vec::new();
        loop {
            let n = match self.socket.recv(&mut &mut self.buf[..], 0) {
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(out),
                Err(source) => return Err(Error::Recv { source }),
            };
            let datagram = &self.buf[..n.min(self.buf.len())];
            let mut messages = Vec::new();
            for message in split(datagram) {
                let message = message.map_err(|source| Error::Decode { source })?;
                if let NetlinkPayload::InnerMessage(m) = message.payload {
                    messages.push(m);
                }
            }
            out.extend(messages.into_iter().filter_map(|m| self.change(m)));
        }
    }

    /// What one notification changes, if anything.
    fn change(&mut self, message: RouteNetlinkMessage) -> Option<Change> {
        match message {
            RouteNetlinkMessage::NewLink(m) => {
                let link = Link::from_message(m)?;
                (link.kind == LinkKind::Veth && self.known.insert(link.index))
                    .then_some(Change::Added(link))
            }
            RouteNetlinkMessage::DelLink(m) => {
                let link = Link::from_message(m)?;
                self.known.remove(&link.index).then_some(Change::Removed {
                    index: link.index,
                    name: link.name,
                })
            }
            _ => None,
        }
    }
}

/// The RouteNetlinkMessages in one datagram.
fn split(
    bytes: &[u8],
) -> impl Iterator<Item = Result<NetlinkMessage<RouteNetlinkMessage>, DecodeError>> + '_ {
    crate::netlink::split(bytes)
}

/// Links described by a JSON fixture, encoded as the kernel's `RTM_NEWLINK` messages and read back
/// through the dump's own parser.
#[cfg(test)]
pub(crate) mod fixture {
    use netlink_packet_core::{DoneMessage, NLM_F_MULTIPART};
    use netlink_packet_route::link::LinkLayerType;
    use serde::Deserialize;

    use super::*;

    /// One interface as `RTM_NEWLINK` reports it.
    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Row {
        index: u32,
        name: String,
        /// `IFLA_INFO_KIND`; absent: no `IFLA_LINKINFO`.
        info_kind: Option<String>,
        /// `IF_OPER_*` as a number (2 down, 6 up, 0 unknown).
        operstate: u8,
        /// `IFF_UP` and `IFF_LOWER_UP`.
        #[serde(default)]
        admin_up: bool,
        #[serde(default)]
        loopback: bool,
        /// `IFLA_LINK`.
        iflink: Option<u32>,
        /// `IFLA_LINK_NETNSID`.
        link_netnsid: Option<i32>,
    }

    fn message(row: Row, seq: u32) -> NetlinkMessage<RouteNetlinkMessage> {
        let mut link = LinkMessage::default();
        link.header.index = row.index;
        link.header.link_layer_type = if row.loopback {
            LinkLayerType::Loopback
        } else {
            LinkLayerType::Ether
        };
        if row.loopback {
            link.header.flags |= LinkFlags::Loopback;
        }
        if row.admin_up {
            link.header.flags |= LinkFlags::Up | LinkFlags::LowerUp;
        }
        let a = &mut link.attributes;
        a.push(LinkAttribute::IfName(row.name));
        a.push(LinkAttribute::OperState(State::from(row.operstate)));
        a.extend(row.iflink.map(LinkAttribute::Link));
        a.extend(row.link_netnsid.map(LinkAttribute::LinkNetNsId));
        if let Some(kind) = row.info_kind {
            a.push(LinkAttribute::LinkInfo(vec![LinkInfo::Kind(
                InfoKind::from(kind.as_str()),
            )]));
        }
        let mut header = NetlinkHeader::default();
        header.flags = NLM_F_MULTIPART;
        header.sequence_number = seq;
        NetlinkMessage::new(
            header,
            NetlinkPayload::from(RouteNetlinkMessage::NewLink(link)),
        )
    }

    /// The links of a JSON list of [`Row`]s: one datagram with a message per row and
    /// `NLMSG_DONE`, read as [`list`] reads the kernel's.
    pub(crate) fn links(json: &str) -> Vec<Link> {
        let rows: Vec<Row> = serde_json::from_str(json).expect("links fixture");
        let mut messages: Vec<_> = rows.into_iter().map(|row| message(row, SEQ)).collect();
        let mut done = NetlinkHeader::default();
        done.flags = NLM_F_MULTIPART;
        done.sequence_number = SEQ;
        messages.push(NetlinkMessage::new(
            done,
            NetlinkPayload::Done(DoneMessage::default()),
        ));
        let mut datagram = Vec::new();
        for mut m in messages {
            m.finalize();
            let start = datagram.len();
            datagram.resize(start + m.buffer_len(), 0);
            m.serialize(&mut datagram[start..]);
        }
        let mut dump = Dump::default();
        dump.read(&datagram, SEQ).expect("read the fixture's dump");
        assert!(dump.ended && !dump.interrupted);
        dump.links
    }
}

#[cfg(test)]
mod tests {
    use std::process::Command;

    use super::*;
    use crate::netns;

    const FIXTURE: &str = include_str!("../../tests/fixtures/inspect/modern/links.json");

    #[test]
    fn kinds_peers_and_states_from_a_dump() {
        let links = fixture::links(FIXTURE);
        let got: Vec<(&str, LinkKind)> = links.iter().map(|l| (l.name.as_str(), l.kind)).collect();
        assert_eq!(
            got,
            [
                ("cni0", LinkKind::Bridge),
                ("vpeer0", LinkKind::Veth),
                ("veth1a2b3c", LinkKind::Veth),
                ("kube-ipvs0", LinkKind::KubeIpvs),
                ("flannel.1", LinkKind::Other),
                ("eth0", LinkKind::Other),
                ("vethpod7", LinkKind::Veth),
            ]
        );
        let by_name = |name: &str| links.iter().find(|l| l.name == name).unwrap();
        assert_eq!(
            by_name("veth1a2b3c").peer,
            Some(Peer {
                index: 3,
                netns_id: None
            })
        );
        assert_eq!(
            by_name("vethpod7").peer,
            Some(Peer {
                index: 2,
                netns_id: Some(0)
            })
        );
        // flannel.1's IFLA_LINK is its lower device, not a peer.
        assert_eq!(by_name("flannel.1").peer, None);
        assert!(by_name("eth0").up && by_name("vethpod7").up && by_name("kube-ipvs0").up);
        assert!(!by_name("cni0").up && !by_name("vpeer0").up);
    }

    #[test]
    fn lists_this_machines_links_without_loopback() {
        let links = list().expect("list this namespace's links");
        assert!(!links.is_empty(), "no link other than loopback");
        assert!(
            links.iter().all(|l| l.name != "lo" && l.index != 0),
            "{links:?}"
        );
        let mut indexes: Vec<u32> = links.iter().map(|l| l.index).collect();
        indexes.sort_unstable();
        indexes.dedup();
        assert_eq!(indexes.len(), links.len(), "{links:?}");
    }

    /// A named network namespace, deleted on drop.
    struct NetnsGuard(String);

    impl Drop for NetnsGuard {
        fn drop(&mut self) {
            let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
        }
    }

    fn ip(args: &[&str]) {
        let status = Command::new("ip").args(args).status().expect("run ip");
        assert!(status.success(), "ip {args:?}: {status}");
    }

    /// Scenario: a veth pair created in a fresh namespace is listed there, both ends as veths
    /// pointing at each other, and nothing of the tracer's own namespace shows up.
    #[test]
    fn both_ends_of_a_veth_pair_in_a_fresh_namespace() {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            eprintln!("skipped: creating a network namespace needs root");
            return;
        }
        let guard = NetnsGuard(format!("tracer-links-{}", std::process::id()));
        ip(&["netns", "add", &guard.0]);
        ip(&[
            "-n", &guard.0, "link", "add", "tla", "type", "veth", "peer", "name", "tlb",
        ]);
        ip(&["-n", &guard.0, "link", "set", "tla", "up"]);
        let links = netns::run_in(&netns::named(&guard.0), list)
            .expect("enter the test namespace")
            .expect("list the test namespace's links");
        let mut names: Vec<&str> = links.iter().map(|l| l.name.as_str()).collect();
        names.sort_unstable();
        assert_eq!(names, ["tla", "tlb"], "{links:?}");
        let by_name = |name: &str| links.iter().find(|l| l.name == name).unwrap();
        let (a, b) = (by_name("tla"), by_name("tlb"));
        assert!(
            a.kind == LinkKind::Veth && b.kind == LinkKind::Veth,
            "{links:?}"
        );
        assert_eq!(
            a.peer,
            Some(Peer {
                index: b.index,
                netns_id: None
            })
        );
        assert_eq!(
            b.peer,
            Some(Peer {
                index: a.index,
                netns_id: None
            })
        );
        // tla is up but its peer is down, so neither has a carrier.
        assert!(!a.up && !b.up, "{links:?}");
    }

    /// Scenario: a subscription opened inside a fresh namespace reports a veth pair created there
    /// once each (not again when a link goes up), and both ends going when the pair is deleted.
    #[test]
    fn a_subscription_sees_veths_come_and_go() {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            eprintln!("skipped: creating a network namespace needs root");
            return;
        }
        let guard = NetnsGuard(format!("tracer-chg-{}", std::process::id()));
        ip(&["netns", "add", &guard.0]);
        let mut changes = netns::run_in(&netns::named(&guard.0), || Changes::subscribe([]))
            .expect("enter the test namespace")
            .expect("subscribe");
        assert_eq!(changes.read().expect("read"), []);
        ip(&[
            "-n", &guard.0, "link", "add", "tca", "type", "veth", "peer", "name", "tcb",
        ]);
        ip(&["-n", &guard.0, "link", "set", "tca", "up"]);
        let mut added: Vec<String> = changes
            .read()
            .expect("read")
            .into_iter()
            .map(|c| match c {
                Change::Added(link) => link.name,
                other => panic!("unexpected {other:?}"),
            })
            .collect();
        added.sort();
        assert_eq!(added, ["tca", "tcb"]);
        ip(&["-n", &guard.0, "link", "del", "tca"]);
        let mut removed: Vec<String> = changes
            .read()
            .expect("read")
            .into_iter()
            .map(|c| match c {
                Change::Removed { name, .. } => name,
                other => panic!("unexpected {other:?}"),
            })
            .collect();
        removed.sort();
        assert_eq!(removed, ["tca", "tcb"]);
    }
}
