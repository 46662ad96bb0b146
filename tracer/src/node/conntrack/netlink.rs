//! The ctnetlink transport: a `NETLINK_NETFILTER` socket, request serialization, and the one
//! receive loop that matches answers to requests. It knows nothing of what a request asks:
//! [`super`] reads the table through it, the lab's `conntrack` module writes with it.
//!
//! A netlink socket belongs to the network namespace of the thread that opened it.

use std::{io, os::fd::AsRawFd};

use netlink_packet_core::{
    DecodeError, NLM_F_ACK, NLM_F_DUMP, NLM_F_REQUEST, NetlinkHeader, NetlinkMessage,
    NetlinkPayload,
};
use netlink_packet_netfilter::{
    NetfilterHeader, NetfilterMessage, NetfilterProtoFamily,
    conntrack::{ConntrackAttribute, ConntrackMessage},
};
use netlink_sys::{Socket, SocketAddr, protocols::NETLINK_NETFILTER};

use super::Error;

// include/uapi/linux/netfilter/nfnetlink_conntrack.h
pub(crate) const IPCTNL_MSG_CT_NEW: u8 = 0;
pub(crate) const IPCTNL_MSG_CT_GET: u8 = 1;
pub(crate) const IPCTNL_MSG_CT_DELETE: u8 = 2;
pub(crate) const IPCTNL_MSG_CT_GET_STATS_CPU: u8 = 4;
pub(crate) const IPCTNL_MSG_CT_GET_STATS: u8 = 5;
/// NETLINK_CAP_ACK (include/uapi/linux/netlink.h): error acks without the request echoed back.
const NETLINK_CAP_ACK: libc::c_int = 10;

/// Receive buffer of the ctnetlink sockets (set with `SO_RCVBUFFORCE`, we are root).
const RCVBUF: usize = 8 << 20;
/// Size of one receive call: dumps and event bursts come as multi-message datagrams.
pub(crate) const RECV_LEN: usize = 256 << 10;

/// One ctnetlink request: `IPCTNL_MSG_CT_*` type, `NLM_F_*` flags beyond `NLM_F_REQUEST`, and the
/// attributes (ignored for types other than NEW, GET and DELETE).
pub(crate) struct Request {
    pub message_type: u8,
    pub flags: u16,
    pub attributes: Vec<ConntrackAttribute>,
}

/// What came back for a request.
pub(crate) enum Answer {
    /// A data message (a dump's entry, a statistics message).
    Reply(NetfilterMessage),
    /// The request's ack: `None` when it succeeded, else the errno the kernel refused it with.
    Ack(Option<i32>),
}

/// A ctnetlink socket with its sequence counter and receive buffer.
pub(crate) struct Ctnetlink {
    socket: Socket,
    seq: u32,
    buf: Vec<u8>,
}

impl Ctnetlink {
    /// A bound and connected socket with a large receive buffer and capped acks (event
    /// subscriptions use it bare).
    pub(crate) fn socket() -> Result<Socket, Error> {
        let err = |source| Error::Socket { source };
        let mut socket = Socket::new(NETLINK_NETFILTER).map_err(err)?;
        socket.bind_auto().map_err(err)?;
        socket.connect(&SocketAddr::new(0, 0)).map_err(err)?;
        set_sockopt(
            &socket,
            libc::SOL_SOCKET,
            libc::SO_RCVBUFFORCE,
            RCVBUF as libc::c_int,
        )
        .map_err(err)?;
        set_sockopt(&socket, libc::SOL_NETLINK, NETLINK_CAP_ACK, 1).map_err(err)?;
        Ok(socket)
    }

    /// Opens a socket in the calling thread's namespace.
    pub(crate) fn open() -> Result<Ctnetlink, Error> {
        Ok(Ctnetlink {
            socket: Self::socket()?,
            seq: 0,
            buf: vec![0; RECV_LEN],
        })
    }

    /// Serializes one request into `out` (with `NLM_F_ACK` unless it is a dump, which ends with
    /// `NLMSG_DONE` instead).
    fn push(&mut self, out: &mut Vec<u8>, request: Request) {
        self.seq = self.seq.wrapping_add(1);
        let dump = request.flags & NLM_F_DUMP == NLM_F_DUMP;
        let mut header = NetlinkHeader::default();
        header.flags = NLM_F_REQUEST | request.flags | if dump { 0 } else { NLM_F_ACK };
        header.sequence_number = self.seq;
        // A table dump asks for every family (IPv4 and IPv6 entries); the rest name IPv4, the
        // family of the entries the lab creates and deletes.
        let family = if dump && request.message_type == IPCTNL_MSG_CT_GET {
            NetfilterProtoFamily::Unspec
        } else {
            NetfilterProtoFamily::IPv4
        };
        let attributes = request.attributes;
        let inner = match request.message_type {
            IPCTNL_MSG_CT_NEW => ConntrackMessage::New(attributes),
            IPCTNL_MSG_CT_GET => ConntrackMessage::Get(attributes),
            IPCTNL_MSG_CT_DELETE => ConntrackMessage::Delete(attributes),
            other => ConntrackMessage::Other {
                message_type: other,
                attributes: Vec::new(),
            },
        };
        let mut msg = NetlinkMessage::new(
            header,
            NetlinkPayload::from(NetfilterMessage::new(
                NetfilterHeader::new(family, 0, 0),
                inner,
            )),
        );
        msg.finalize();
        let start = out.len();
        out.resize(start + msg.buffer_len(), 0);
        msg.serialize(&mut out[start..]);
    }

    /// Sends `requests` in one `sendmsg` and receives until each has ended (with its ack, or
    /// `NLMSG_DONE` for a dump), handing every answer to `on_answer`. Returns how many requests
    /// were sent. The send buffer and the socket's receive buffer bound how many fit one call.
    pub(crate) fn exchange(
        &mut self,
        what: &'static str,
        requests: impl IntoIterator<Item = Request>,
        mut on_answer: impl FnMut(Answer) -> Result<(), Error>,
    ) -> Result<usize, Error> {
        let first = self.seq.wrapping_add(1);
        let mut out = Vec::new();
        let mut sent = 0usize;
        for request in requests {
            self.push(&mut out, request);
            sent += 1;
        }
        if sent == 0 {
            return Ok(0);
        }
        self.socket
            .send(&out, 0)
            .map_err(|source| Error::Send { what, source })?;
        let mut ended = 0usize;
        while ended < sent {
            let n = self
                .socket
                .recv(&mut &mut self.buf[..], 0)
                .map_err(|source| Error::Recv { what, source })?;
            for msg in split(&self.buf[..n.min(self.buf.len())]) {
                let msg = msg.map_err(|source| Error::Decode { what, source })?;
                if msg.header.sequence_number.wrapping_sub(first) as usize >= sent {
                    continue;
                }
                let answer = match msg.payload {
                    NetlinkPayload::Done(_) => Answer::Ack(None),
                    NetlinkPayload::Error(e) => Answer::Ack(e.code.map(|c| -c.get())),
                    NetlinkPayload::InnerMessage(inner) => Answer::Reply(inner),
                    _ => continue,
                };
                if matches!(answer, Answer::Ack(_)) {
                    ended += 1;
                }
                on_answer(answer)?;
            }
        }
        Ok(sent)
    }

    /// Sends one request and returns its data messages; a refusal is an error.
    pub(crate) fn request(
        &mut self,
        what: &'static str,
        request: Request,
    ) -> Result<Vec<NetfilterMessage>, Error> {
        let mut replies = Vec::new();
        self.exchange(what, [request], |answer| match answer {
            Answer::Reply(inner) => {
                replies.push(inner);
                Ok(())
            }
            Answer::Ack(None) => Ok(()),
            Answer::Ack(Some(errno)) => Err(refused(what, errno)),
        })?;
        Ok(replies)
    }
}

/// The error for a request the kernel refused with `errno`.
pub(crate) fn refused(what: &'static str, errno: i32) -> Error {
    Error::Refused {
        what,
        source: io::Error::from_raw_os_error(errno),
    }
}

fn set_sockopt(
    socket: &Socket,
    level: libc::c_int,
    name: libc::c_int,
    value: libc::c_int,
) -> io::Result<()> {
    // SAFETY: a valid fd, and a pointer to a c_int with its size.
    let rc = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            level,
            name,
            (&value as *const libc::c_int).cast(),
            size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// The NetfilterMessages in one datagram.
pub(crate) fn split(
    bytes: &[u8],
) -> impl Iterator<Item = Result<NetlinkMessage<NetfilterMessage>, DecodeError>> + '_ {
    crate::netlink::split(bytes)
}
