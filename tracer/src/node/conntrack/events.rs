//! The NEW/DESTROY event stream of a namespace's conntrack table.

use std::{
    io,
    os::fd::{AsFd, AsRawFd, BorrowedFd, RawFd},
};

use netlink_packet_core::NetlinkPayload;
use netlink_sys::Socket;
use serde::Serialize;

use super::{
    Entry, Error, entry_of,
    netlink::{Ctnetlink, IPCTNL_MSG_CT_DELETE, IPCTNL_MSG_CT_NEW, RECV_LEN, split},
};

// include/uapi/linux/netfilter/nfnetlink.h
const NFNLGRP_CONNTRACK_NEW: u32 = 1;
const NFNLGRP_CONNTRACK_DESTROY: u32 = 3;

/// What kind of change an [`Event`] reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum EventKind {
    /// An entry was confirmed (inserted into the table): NAT is already decided.
    New,
    /// An entry was removed (expired, deleted or flushed).
    Destroy,
}

/// One conntrack event.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Event {
    /// New or destroy.
    pub kind: EventKind,
    /// The entry; for a DNATed DNS query `orig.dst` is the Service IP and `reply.src` the endpoint.
    pub entry: Entry,
}

/// A subscription to the NEW and DESTROY events of the namespace it was opened in.
pub struct Events {
    socket: Socket,
    buf: Vec<u8>,
    lost: u64,
}

impl Events {
    /// Subscribes in the calling thread's namespace (open it inside [`crate::netns::run_in`] for
    /// another one; the subscription may then be moved to and read from any thread).
    pub fn subscribe() -> Result<Events, Error> {
        let socket = Ctnetlink::socket()?;
        for group in [NFNLGRP_CONNTRACK_NEW, NFNLGRP_CONNTRACK_DESTROY] {
            socket
                .add_membership(group)
                .map_err(|source| Error::Socket { source })?;
        }
        Ok(Events {
            socket,
            buf: vec![0; RECV_LEN],
            lost: 0,
        })
    }

    /// Makes [`Events::recv`] return at once when nothing is pending (for polling the fd).
    pub fn set_nonblocking(&self, nonblocking: bool) -> Result<(), Error> {
        self.socket
            .set_non_blocking(nonblocking)
            .map_err(|source| Error::Socket { source })
    }

    /// Waits for the next datagram (unless non-blocking) and returns the events in it. Returns an
    /// empty list when non-blocking and nothing is pending, or when the receive buffer overran: the
    /// kernel then dropped events, and [`Events::lost`] counts the overrun.
    pub fn recv(&mut self) -> Result<Vec<Event>, Error> {
        const WHAT: &str = "an event subscription";
        let n = match self.socket.recv(&mut &mut self.buf[..], 0) {
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(Vec::new()),
            Err(e) if e.raw_os_error() == Some(libc::ENOBUFS) => {
                self.lost += 1;
                return Ok(Vec::new());
            }
            Err(source) => return Err(Error::Recv { what: WHAT, source }),
        };
        let mut events = Vec::new();
        for msg in split(&self.buf[..n.min(self.buf.len())]) {
            let msg = msg.map_err(|source| Error::Decode { what: WHAT, source })?;
            let kind = match msg.header.message_type & 0xff {
                t if t == IPCTNL_MSG_CT_NEW as u16 => EventKind::New,
                t if t == IPCTNL_MSG_CT_DELETE as u16 => EventKind::Destroy,
                _ => continue,
            };
            if let NetlinkPayload::InnerMessage(inner) = &msg.payload
                && let Some(entry) = entry_of(inner)
            {
                events.push(Event { kind, entry });
            }
        }
        Ok(events)
    }

    /// How many times the receive buffer overran and the kernel dropped events.
    pub fn lost(&self) -> u64 {
        self.lost
    }
}

impl AsRawFd for Events {
    fn as_raw_fd(&self) -> RawFd {
        self.socket.as_raw_fd()
    }
}

impl AsFd for Events {
    fn as_fd(&self) -> BorrowedFd<'_> {
        // SAFETY: the fd is owned by `self.socket` and lives as long as `self`.
        unsafe { BorrowedFd::borrow_raw(self.socket.as_raw_fd()) }
    }
}
