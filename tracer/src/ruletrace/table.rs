//! tracer's own nf_tables table, `inet tracer_rules`: two base chains at priority -350 (before
//! raw, conntrack and every kube-proxy chain) that only set `meta nftrace` on DNS packets. Both
//! chains accept with no other statement, so no packet's fate changes. Applied and removed with
//! `nft -f -`, each in one transaction; and the namespace a [`RuleTrace`](super::RuleTrace)
//! started in, so that dropping it on another thread never touches another namespace's ruleset.

use std::{
    fs::File,
    io::Write as _,
    os::unix::fs::MetadataExt as _,
    process::{Command, Output, Stdio},
};

use nix::sched::{CloneFlags, setns};

use super::Error;

/// The name of tracer's table (family `inet`).
pub const TABLE: &str = "tracer_rules";
/// The priority of its chains: before raw (-300), conntrack (-200) and every filter/nat chain.
pub const PRIORITY: i32 = -350;
/// The comment on each of its rules.
pub const COMMENT: &str = "tracer ruletrace: nftrace for DNS";

/// The nft script that creates the table (deleting one a killed run left, when `leftover`): nftrace
/// for packets to `ports`, and from them with `replies`.
pub(crate) fn script(ports: &[u16], replies: bool, leftover: bool) -> String {
    let ports = ports
        .iter()
        .map(u16::to_string)
        .collect::<Vec<_>>()
        .join(", ");
    let mut rules = String::new();
    for proto in ["udp", "tcp"] {
        for dir in ["dport", "sport"]
            .into_iter()
            .take(if replies { 2 } else { 1 })
        {
            rules.push_str(&format!(
                "\t\t{proto} {dir} {{ {ports} }} meta nftrace set 1 comment \"{COMMENT}\"\n"
            ));
        }
    }
    let mut out = String::new();
    if leftover {
        out.push_str(&format!("delete table inet {TABLE}\n"));
    }
    out.push_str(&format!("table inet {TABLE} {{\n"));
    // Whose it is: a later run deletes it only once this process is gone.
    out.push_str(&format!(
        "\tcomment \"tracer {}\"\n",
        crate::process::owner_tag()
    ));
    for (chain, hook) in [("prerouting", "prerouting"), ("output", "output")] {
        out.push_str(&format!(
            "\tchain {chain} {{\n\t\ttype filter hook {hook} priority {PRIORITY}; policy accept;\n{rules}\t}}\n"
        ));
    }
    out.push_str("}\n");
    out
}

/// Runs `program args` (with `stdin` fed in) in the calling thread's namespace; a non-zero exit
/// is an error carrying stderr.
pub(crate) fn command(
    program: &'static str,
    args: &[&str],
    stdin: Option<&str>,
) -> Result<Output, Error> {
    let spawn = |source| Error::Spawn { program, source };
    let mut child = Command::new(program)
        .args(args)
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(spawn)?;
    if let (Some(text), Some(mut pipe)) = (stdin, child.stdin.take()) {
        pipe.write_all(text.as_bytes()).map_err(spawn)?;
    }
    let out = child.wait_with_output().map_err(spawn)?;
    if !out.status.success() {
        return Err(Error::Command {
            command: format!("{program} {}", args.join(" ")),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
        });
    }
    Ok(out)
}

/// Whether the calling thread's namespace has tracer's table.
pub(crate) fn exists() -> Result<bool, Error> {
    Ok(listing()?.is_some())
}

/// `nft list table inet tracer_rules` in the calling thread's namespace, if the table is there.
fn listing() -> Result<Option<String>, Error> {
    match command("nft", &["list", "table", "inet", TABLE], None) {
        Ok(out) => Ok(Some(String::from_utf8_lossy(&out.stdout).into_owned())),
        Err(Error::Command { .. }) => Ok(None),
        Err(e) => Err(e),
    }
}

/// Creates the table, first deleting one a killed run left (returns whether there was one). A
/// table whose owner (its comment's pid and start time) still runs is another tracer's: that is
/// an error, and its table is left alone.
pub(crate) fn create(ports: &[u16], replies: bool) -> Result<bool, Error> {
    let leftover = match listing()? {
        None => false,
        Some(text) => match crate::process::find_owner(&text) {
            Some((pid, start)) if crate::process::owner_alive(pid, start) => {
                return Err(Error::Busy { pid });
            }
            _ => true,
        },
    };
    if leftover {
        log::warn!("removing table inet {TABLE} left by a killed run before creating it anew");
    }
    command("nft", &["-f", "-"], Some(&script(ports, replies, leftover)))?;
    Ok(leftover)
}

/// Deletes the table.
pub(crate) fn delete() -> Result<(), Error> {
    command("nft", &["delete", "table", "inet", TABLE], None).map(drop)
}

/// The network namespace a trace started in.
pub(crate) struct Netns {
    file: File,
    inode: u64,
}

/// The calling thread's namespace file (`/proc/thread-self/ns/net`).
const THREAD_NETNS: &str = "/proc/thread-self/ns/net";

impl Netns {
    /// The calling thread's namespace.
    pub(crate) fn current() -> Result<Netns, Error> {
        let file = File::open(THREAD_NETNS).map_err(|source| Error::Netns { source })?;
        let inode = file
            .metadata()
            .map_err(|source| Error::Netns { source })?
            .ino();
        Ok(Netns { file, inode })
    }

    /// Runs `f` in this namespace: on the calling thread when it is there, else on a scoped
    /// thread that enters it first.
    pub(crate) fn run<T: Send>(
        &self,
        f: impl FnOnce() -> Result<T, Error> + Send,
    ) -> Result<T, Error> {
        let here = std::fs::metadata(THREAD_NETNS)
            .map_err(|source| Error::Netns { source })?
            .ino();
        if here == self.inode {
            return f();
        }
        std::thread::scope(|scope| {
            scope
                .spawn(|| {
                    setns(&self.file, CloneFlags::CLONE_NEWNET)
                        .map_err(|source| Error::Enter { source })?;
                    f()
                })
                .join()
                .unwrap_or(Err(Error::Panicked))
        })
    }
}
