//! This process: SIGINT and SIGTERM turned into a stop request from `main` on (so a signal that
//! comes while the programs load and attach is not lost, and is not fatal either), and the owner
//! tag it writes on what it leaves in the kernel outside its own file descriptors (pid and start
//! time), so that a later run can tell a killed run's leftovers from a live tracer's; the BPF
//! programs processes hold, which tells a killed run's TC filters from a live tracer's.

use std::sync::atomic::{AtomicI32, Ordering};

/// What failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("failed to install the {signal} handler: {source}")]
    Handler {
        signal: &'static str,
        source: nix::errno::Errno,
    },
}

/// The signal that asked to stop (0: none yet).
static STOP: AtomicI32 = AtomicI32::new(0);

extern "C" fn request_stop(signal: libc::c_int) {
    STOP.store(signal, Ordering::SeqCst);
}

/// From now on SIGINT and SIGTERM only ask the running command to stop (see [`stop_requested`]),
/// an inherited "ignore" (a shell's background job ignores SIGINT) included. Call it first thing.
pub fn stop_on_signals() -> Result<(), Error> {
    use nix::sys::signal::{self, SaFlags, SigAction, SigHandler, SigSet, Signal};

    let action = SigAction::new(
        SigHandler::Handler(request_stop),
        SaFlags::SA_RESTART,
        SigSet::empty(),
    );
    for (sig, name) in [(Signal::SIGINT, "SIGINT"), (Signal::SIGTERM, "SIGTERM")] {
        // SAFETY: the handler only stores to an atomic.
        unsafe { signal::sigaction(sig, &action) }.map_err(|source| Error::Handler {
            signal: name,
            source,
        })?;
    }
    Ok(())
}

/// Whether SIGINT or SIGTERM came since [`stop_on_signals`].
pub fn stop_requested() -> bool {
    stop_signal().is_some()
}

/// The signal that asked to stop, named (`SIGINT`, `SIGTERM`), if one came.
pub fn stop_signal() -> Option<&'static str> {
    match STOP.load(Ordering::SeqCst) {
        0 => None,
        libc::SIGINT => Some("SIGINT"),
        _ => Some("SIGTERM"),
    }
}

/// The owner tag of this process, `pid=N start=T` (T: its start time in clock ticks since boot,
/// which a later process reusing the pid does not share).
pub fn owner_tag() -> String {
    let pid = std::process::id();
    format!("pid={pid} start={}", start_time(pid).unwrap_or(0))
}

/// The owner tag in `text` (as [`owner_tag`] writes it, anywhere in the text), if there is one.
pub fn find_owner(text: &str) -> Option<(u32, u64)> {
    let at = text.find("pid=")?;
    let mut words = text[at..].split_whitespace();
    let pid = words.next()?.strip_prefix("pid=")?.parse().ok()?;
    let start = words
        .next()?
        .trim_end_matches(|c: char| !c.is_ascii_digit())
        .strip_prefix("start=")?
        .parse()
        .ok()?;
    Some((pid, start))
}

/// Whether the process an owner tag names is still running (same pid, same start time).
pub fn owner_alive(pid: u32, start: u64) -> bool {
    start_time(pid) == Some(start)
}

/// Process `pid`'s start time (field 22 of `/proc/PID/stat`), if it runs.
fn start_time(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) is in parentheses and may hold spaces: count after its end.
    let rest = &stat[stat.rfind(')')? + 1..];
    rest.split_whitespace().nth(19)?.parse().ok()
}

/// The BPF programs some process holds a file descriptor of (`prog_id:` in
/// `/proc/PID/fdinfo/FD`; a link's fd names its program too). A running tracer holds its own; a
/// program attached without an fd (a netlink TC filter, before 6.6) that no process holds was
/// left by a killed one.
pub fn held_bpf_programs() -> std::collections::HashSet<u32> {
    let mut held = std::collections::HashSet::new();
    let procs = std::fs::read_dir("/proc").into_iter().flatten().flatten();
    for fd in procs.flat_map(|p| {
        std::fs::read_dir(p.path().join("fdinfo"))
            .into_iter()
            .flatten()
            .flatten()
    }) {
        let Ok(info) = std::fs::read_to_string(fd.path()) else {
            continue;
        };
        held.extend(
            info.lines()
                .filter_map(|l| l.strip_prefix("prog_id:")?.trim().parse::<u32>().ok()),
        );
    }
    held
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_process_is_alive_by_its_own_tag_and_a_reused_pid_is_not() {
        let (pid, start) = find_owner(&owner_tag()).expect("own tag parses");
        assert_eq!(pid, std::process::id());
        assert!(start > 0);
        assert!(owner_alive(pid, start));
        assert!(!owner_alive(pid, start + 1));
    }

    #[test]
    fn the_tag_is_found_inside_a_comment() {
        assert_eq!(
            find_owner("tracer ruletrace pid=42 start=7\""),
            Some((42, 7))
        );
        assert_eq!(find_owner("tracer ruletrace"), None);
        assert_eq!(find_owner("pid=x start=1"), None);
    }
}
