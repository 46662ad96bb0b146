//! The `NFNLGRP_NFTRACE` subscription: a non-blocking `NETLINK_NETFILTER` socket in the calling
//! thread's namespace, with a large receive buffer; a full buffer (`ENOBUFS`) is reported so the
//! caller can count what was lost.

use std::{
    io,
    os::fd::{AsFd, AsRawFd, BorrowedFd},
};

use netlink_sys::{Socket, protocols::NETLINK_NETFILTER};

use super::{Error, message::NFNLGRP_NFTRACE};

/// Receive buffer (`SO_RCVBUFFORCE`, we are root): about 8k trace messages.
const RCVBUF: libc::c_int = 8 << 20;
/// One receive: the kernel sends each trace message in a datagram of its own, well under 1 KiB.
const RECV_LEN: usize = 64 << 10;

/// What one receive gave.
pub(crate) enum Received<'a> {
    /// One datagram.
    Datagram(&'a [u8]),
    /// Nothing waiting.
    Empty,
    /// The receive buffer overflowed: messages were lost.
    Lost,
}

pub(crate) struct TraceSocket {
    socket: Socket,
    buf: Vec<u8>,
}

impl TraceSocket {
    /// A socket subscribed to trace messages, non-blocking.
    pub(crate) fn open() -> Result<TraceSocket, Error> {
        let err = |source| Error::Socket { source };
        let mut socket = Socket::new(NETLINK_NETFILTER).map_err(err)?;
        socket.bind_auto().map_err(err)?;
        large_receive_buffer(&socket)?;
        socket.add_membership(NFNLGRP_NFTRACE).map_err(err)?;
        socket.set_non_blocking(true).map_err(err)?;
        Ok(TraceSocket {
            socket,
            buf: vec![0; RECV_LEN],
        })
    }

    /// The next datagram, if one is waiting.
    pub(crate) fn recv(&mut self) -> Result<Received<'_>, Error> {
        loop {
            match self.socket.recv(&mut &mut self.buf[..], 0) {
                Ok(n) => return Ok(Received::Datagram(&self.buf[..n.min(self.buf.len())])),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(Received::Empty),
                Err(e) if e.raw_os_error() == Some(libc::ENOBUFS) => return Ok(Received::Lost),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(source) => return Err(Error::Recv { source }),
            }
        }
    }
}

/// Gives `socket` a receive buffer of [`RCVBUF`] (`SO_RCVBUFFORCE`: we are root), so that a
/// burst of DNS packets is not lost while the tracer polls.
pub(crate) fn large_receive_buffer(socket: &Socket) -> Result<(), Error> {
    let value = RCVBUF;
    // SAFETY: a valid fd, and a pointer to a c_int with its size.
    let rc = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVBUFFORCE,
            (&value as *const libc::c_int).cast(),
            size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc < 0 {
        return Err(Error::Socket {
            source: io::Error::last_os_error(),
        });
    }
    Ok(())
}

impl AsFd for TraceSocket {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.socket.as_fd()
    }
}
