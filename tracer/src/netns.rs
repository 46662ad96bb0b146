//! Running code inside another network namespace.
//!
//! `setns(2)` changes the namespace of the calling thread only, so each call runs its closure on a
//! fresh thread that enters the namespace and exits afterwards: the caller's threads (and the tokio
//! runtime's) never leave the tracer's own namespace, where tracefs and the BPF links live.

use std::{
    fs::File,
    os::unix::fs::MetadataExt as _,
    path::{Path, PathBuf},
};

use nix::sched::{CloneFlags, setns};

/// Where `ip netns` keeps named namespaces.
pub const NETNS_DIR: &str = "/run/netns";

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("failed to open network namespace {path}: {source}")]
    Open {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("failed to enter network namespace {path}: {source}")]
    Enter { path: PathBuf, source: nix::Error },
    #[error("the thread running in network namespace {path} panicked")]
    Panicked { path: PathBuf },
}

/// The path of a named namespace (`ip netns add NAME`).
pub fn named(name: &str) -> PathBuf {
    Path::new(NETNS_DIR).join(name)
}

/// What a command printed for people is prefixed with to run in `netns` (`None`: ours):
/// `ip netns exec NAME ` for a named namespace, `nsenter --net=PATH ` for any other.
pub fn exec_prefix(netns: Option<&Path>) -> String {
    match netns {
        None => String::new(),
        Some(p) => match (p.parent(), p.file_name()) {
            (Some(dir), Some(name)) if dir == Path::new(NETNS_DIR) => {
                format!("ip netns exec {} ", name.to_string_lossy())
            }
            _ => format!("nsenter --net={} ", p.display()),
        },
    }
}

/// The namespace's inode number: the id the kernel reports as `net->ns.inum`.
pub fn inode(path: &Path) -> Result<u32, Error> {
    let meta = std::fs::metadata(path).map_err(|source| Error::Open {
        path: path.to_owned(),
        source,
    })?;
    // Namespace inode numbers are 32-bit in the kernel (`unsigned int inum`).
    Ok(meta.ino() as u32)
}

/// Runs `f` on a new (scoped) thread that has entered the namespace at `path`, so `f` may borrow
/// from the caller (the loader attaches programs it owns from inside a pod's namespace).
pub fn run_in<T, F>(path: &Path, f: F) -> Result<T, Error>
where
    T: Send,
    F: FnOnce() -> T + Send,
{
    let file = File::open(path).map_err(|source| Error::Open {
        path: path.to_owned(),
        source,
    })?;
    std::thread::scope(|scope| {
        let handle = scope.spawn(move || -> Result<T, Error> {
            setns(&file, CloneFlags::CLONE_NEWNET).map_err(|source| Error::Enter {
                path: path.to_owned(),
                source,
            })?;
            Ok(f())
        });
        handle.join().map_err(|_| Error::Panicked {
            path: path.to_owned(),
        })?
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_command_runs_in_the_namespace_it_was_read_from() {
        assert_eq!(exec_prefix(None), "");
        assert_eq!(
            exec_prefix(Some(&named("tl-node"))),
            "ip netns exec tl-node "
        );
        assert_eq!(
            exec_prefix(Some(Path::new("/proc/4242/ns/net"))),
            "nsenter --net=/proc/4242/ns/net "
        );
    }
}
