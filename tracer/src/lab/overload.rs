//! server-overload: the DNS server of one pod stops reading (SIGSTOP, as a server stuck in a
//! long GC pause or starved of CPU would), with its socket's receive buffer shrunk (as a small
//! `SO_RCVBUF` or `net.core.rmem_default` would leave it) so that a small burst fills the queue.
//! The kernel then refuses the next queries to that socket (`SOCKET_RCVBUFF`), and the ones in
//! the queue are never read. Cleared by restarting the server (its buffer back to the default).

use std::{
    os::fd::{AsFd, FromRawFd, OwnedFd, RawFd},
    path::{Path, PathBuf},
};

use nix::{
    sys::{
        signal::{Signal, kill},
        socket::{setsockopt, sockopt},
    },
    unistd::Pid,
};

use super::{Error, dns};

/// `SO_RCVBUF` the server's DNS socket is given: the kernel doubles it (8 KiB), room for about
/// ten queries.
pub const RCVBUF: usize = 4096;

fn io(path: PathBuf) -> impl FnOnce(std::io::Error) -> Error {
    move |source| Error::Io { path, source }
}

/// Shrinks the receive buffer of DNS pod `pod`'s server socket(s) and stops the server.
pub fn apply(state_dir: &Path, pod: u8) -> Result<(), Error> {
    let pid = dns::pid(state_dir, pod).ok_or_else(|| Error::Fault {
        what: format!("the DNS server of pod dns{pod} is not running"),
    })?;
    let inodes = udp_dns_sockets(pid)?;
    let mut shrunk = 0;
    let fd_dir = PathBuf::from(format!("/proc/{pid}/fd"));
    for entry in std::fs::read_dir(&fd_dir).map_err(io(fd_dir.clone()))? {
        let entry = entry.map_err(io(fd_dir.clone()))?;
        let Ok(link) = std::fs::read_link(entry.path()) else {
            continue;
        };
        let Some(inode) = link
            .to_str()
            .and_then(|l| l.strip_prefix("socket:["))
            .and_then(|l| l.strip_suffix(']'))
        else {
            continue;
        };
        if !inodes.iter().any(|i| i == inode) {
            continue;
        }
        let Some(fd) = entry.file_name().to_str().and_then(|n| n.parse().ok()) else {
            continue;
        };
        let sock = take_fd(pid, fd)?;
        setsockopt(&sock.as_fd(), sockopt::RcvBuf, &RCVBUF).map_err(|e| Error::Fault {
            what: format!("failed to shrink the receive buffer of dns{pod}'s socket: {e}"),
        })?;
        shrunk += 1;
    }
    if shrunk == 0 {
        return Err(Error::Fault {
            what: format!(
                "the DNS server of pod dns{pod} (pid {pid}) has no UDP socket on port 53"
            ),
        });
    }
    kill(Pid::from_raw(pid), Signal::SIGSTOP).map_err(|e| Error::Fault {
        what: format!("failed to stop the DNS server of pod dns{pod} (pid {pid}): {e}"),
    })
}

/// The socket inodes of UDP sockets bound to port 53 in `pid`'s namespace.
fn udp_dns_sockets(pid: i32) -> Result<Vec<String>, Error> {
    let path = PathBuf::from(format!("/proc/{pid}/net/udp"));
    let text = std::fs::read_to_string(&path).map_err(io(path))?;
    // `sl local_address rem_address st tx_queue:rx_queue tr:tm->when retrnsmt uid timeout inode`
    Ok(text
        .lines()
        .skip(1)
        .filter_map(|l| {
            let cols: Vec<&str> = l.split_whitespace().collect();
            let local = cols.get(1)?;
            local
                .ends_with(":0035")
                .then(|| cols.get(9).map(|s| (*s).to_owned()))?
        })
        .collect())
}

/// A duplicate of `pid`'s file descriptor `fd` (`pidfd_getfd`, Linux 5.6+).
fn take_fd(pid: i32, fd: RawFd) -> Result<OwnedFd, Error> {
    let fail = |what: &str| Error::Fault {
        what: format!(
            "failed to {what} of pid {pid}: {}",
            std::io::Error::last_os_error()
        ),
    };
    // SAFETY: plain syscalls; each result is checked before it is used as a descriptor.
    let pidfd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    if pidfd < 0 {
        return Err(fail("open a pidfd"));
    }
    // SAFETY: pidfd_open returned a new descriptor we own.
    let pidfd = unsafe { OwnedFd::from_raw_fd(pidfd as RawFd) };
    let dup = unsafe {
        libc::syscall(
            libc::SYS_pidfd_getfd,
            std::os::fd::AsRawFd::as_raw_fd(&pidfd),
            fd,
            0,
        )
    };
    if dup < 0 {
        return Err(fail(&format!("take descriptor {fd}")));
    }
    // SAFETY: pidfd_getfd returned a new descriptor we own.
    Ok(unsafe { OwnedFd::from_raw_fd(dup as RawFd) })
}

/// Lets the stopped server of DNS pod `pod` run again (it is then restarted by `clear`, which
/// gives its socket the default buffer back).
pub fn resume(state_dir: &Path, pod: u8) {
    if let Some(pid) = dns::pid(state_dir, pod) {
        let _ = kill(Pid::from_raw(pid), Signal::SIGCONT);
    }
}
