//! DNS over TCP: a few lookups sent at once, each on a connection of its own (as a stub resolver
//! retries a truncated UDP answer), each given the whole timeout for its connect and answer.

use std::{
    io::{self, Read as _, Write as _},
    net::{SocketAddr, TcpStream},
    time::{Duration, Instant},
};

use hickory_proto::op::{Message, MessageType};

use super::{Error, RecordType, encode};
use crate::netns;

/// What the TCP lookups got.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TcpResult {
    /// Lookups sent (connections tried).
    pub sent: u32,
    /// Answered: a response with the query's id came back on its connection.
    pub answered: u32,
}

/// Sends `count` A lookups for `name` to `server` over TCP from network namespace `netns` (the
/// caller's when `None`), all at once, and waits at most `timeout` for each.
pub fn queries(
    netns: Option<&str>,
    server: SocketAddr,
    name: &str,
    count: u32,
    timeout: Duration,
) -> Result<TcpResult, Error> {
    let messages = (0..count)
        .map(|_| encode(name, RecordType::A))
        .collect::<Result<Vec<_>, _>>()?;
    let send_all = move || {
        // Threads started here share this thread's network namespace.
        let answered = std::thread::scope(|s| {
            let lookups: Vec<_> = messages
                .iter()
                .map(|(id, bytes)| s.spawn(move || lookup(server, *id, bytes, timeout)))
                .collect();
            lookups
                .into_iter()
                .filter_map(|l| l.join().ok())
                .filter(|answered| matches!(answered, Ok(true)))
                .count()
        });
        TcpResult {
            sent: count,
            answered: answered as u32,
        }
    };
    match netns {
        Some(name) => netns::run_in(&netns::named(name), send_all).map_err(|source| Error::Netns {
            netns: name.to_owned(),
            source,
        }),
        None => std::thread::spawn(send_all)
            .join()
            .map_err(|_| Error::Panicked),
    }
}

/// One lookup on a connection of its own: whether its answer came back within `timeout`.
fn lookup(server: SocketAddr, id: u16, query: &[u8], timeout: Duration) -> io::Result<bool> {
    let until = Instant::now() + timeout;
    let mut stream = TcpStream::connect_timeout(&server, timeout)?;
    let left = || {
        until
            .checked_duration_since(Instant::now())
            .filter(|d| !d.is_zero())
            .ok_or_else(|| io::Error::from(io::ErrorKind::TimedOut))
    };
    stream.set_write_timeout(Some(left()?))?;
    let len = u16::try_from(query.len()).map_err(io::Error::other)?;
    let mut framed = len.to_be_bytes().to_vec();
    framed.extend_from_slice(query);
    stream.write_all(&framed)?;
    stream.set_read_timeout(Some(left()?))?;
    let mut len = [0u8; 2];
    stream.read_exact(&mut len)?;
    let mut answer = vec![0u8; usize::from(u16::from_be_bytes(len))];
    stream.read_exact(&mut answer)?;
    Ok(Message::from_vec(&answer)
        .is_ok_and(|m| m.metadata.message_type == MessageType::Response && m.metadata.id == id))
}
