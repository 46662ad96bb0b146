//! One guest run: a private directory (the writable share, the console log), qemu, the timeout.
//!
//! The share holds `cmd.sh` (argv and env, quoted), and after the run `stdout`, `stderr`, `status`
//! and `out/` (the guest's `$TRACER_VM_OUT`). qemu is owned by a guard that kills it on every exit
//! path; it also gets SIGKILL from the kernel when this process dies (PR_SET_PDEATHSIG), and sits in
//! its own process group so a terminal's Ctrl-C reaches only us (`main` makes it a stop request,
//! `process::stop_requested`, which stops the run).

use std::{
    fs,
    io::Read as _,
    os::unix::process::CommandExt as _,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::atomic::{AtomicU32, Ordering},
    time::{Duration, Instant},
};

use super::{Error, GuestRun, Kernel, OUT_ENV, RunOptions, fetch, initramfs};

/// Where the share is mounted in the guest (stage 2 mounts it there).
const GUEST_SHARE: &str = "/run/tracer-vm";
/// The kernel command line. `panic=-1` reboots at once on a panic, and `-no-reboot` turns that
/// reboot into qemu's exit, so a panic or a dying init ends the run instead of hanging it.
const CMDLINE: &str = "console=ttyS0 panic=-1 quiet rdinit=/init";
/// How many lines of the console an error carries.
const CONSOLE_TAIL: usize = 25;

/// Boots `kernel` and runs `argv` in it as root, in this machine's root filesystem (read-only
/// underneath, writable in memory), with module autoloading, bpffs, tracefs and debugfs mounted.
/// A boot that fails before the command starts (panic or oops on the console) is retried once.
pub fn run(kernel: &Kernel, argv: &[String], opts: &RunOptions) -> Result<GuestRun, Error> {
    if argv.is_empty() {
        return Err(Error::EmptyCommand);
    }
    let qemu = fetch::tool("qemu-system-x86_64", "qemu-system-x86")?;
    // The guest's modprobe is this machine's (module autoloading); the base system has none.
    fetch::tool("modprobe", "kmod")?;
    let script = script(argv, opts)?;
    let initrd = initramfs::image(kernel)?;
    remove_stale_dirs();

    let start = Instant::now();
    let deadline = start + opts.timeout;
    let mut boots = 0;
    loop {
        boots += 1;
        let share = ShareDir::new()?;
        share.write("share/cmd.sh", &script)?;
        let guest = boot(&qemu, kernel, &initrd, &share, opts, deadline)?;
        let console = clean_console(&share.read("console.log"));
        if let Some(status) = share.status() {
            return Ok(GuestRun {
                status,
                stdout: share.read("share/stdout"),
                stderr: share.read("share/stderr"),
                boot_time: guest.started.unwrap_or(guest.exited) - start,
                wall_time: guest.exited - start,
                console,
                boots,
                share,
            });
        }
        let console_tail = excerpt(&console);
        if guest.timed_out {
            return Err(Error::Timeout {
                release: kernel.release.clone(),
                timeout: opts.timeout,
                console_tail,
            });
        }
        if guest.interrupted {
            return Err(Error::Interrupted {
                release: kernel.release.clone(),
            });
        }
        let failed_boot = !console.contains(initramfs::STARTED)
            && ["Kernel panic", "Oops", "BUG:"]
                .iter()
                .any(|p| console.contains(p));
        if failed_boot && boots == 1 {
            log::warn!(
                "vm: kernel {} failed to boot, retrying once: {}",
                kernel.release,
                console_tail
                    .lines()
                    .rev()
                    .find(|l| l.contains("panic") || l.contains("Oops"))
                    .unwrap_or("")
            );
            continue;
        }
        let qemu_log = share.read("qemu.log");
        return Err(Error::GuestFailed {
            release: kernel.release.clone(),
            reason: if failed_boot {
                "kernel panic or oops before the command started, twice".into()
            } else if console.contains(initramfs::STARTED) {
                "the guest stopped while the command ran".into()
            } else if !qemu_log.trim().is_empty() {
                format!("qemu: {}", fetch::tail(&qemu_log, 3))
            } else {
                "the guest stopped before the command started".into()
            },
            console_tail,
        });
    }
}

/// How one boot ended.
struct Boot {
    started: Option<Instant>,
    exited: Instant,
    timed_out: bool,
    interrupted: bool,
}

/// Runs qemu until it exits, the deadline passes or `interrupt` is called.
fn boot(
    qemu: &Path,
    kernel: &Kernel,
    initrd: &Path,
    share: &ShareDir,
    opts: &RunOptions,
    deadline: Instant,
) -> Result<Boot, Error> {
    let console_path = share.path("console.log");
    let qemu_log = share.path("qemu.log");
    let stderr = fs::File::create(&qemu_log).map_err(Error::io("create", &qemu_log))?;
    let virtfs = |path: &Path, tag: &str, ro: bool| {
        format!(
            "local,path={},mount_tag={tag},security_model=none{}",
            path.display(),
            if ro { ",readonly=on" } else { "" }
        )
    };
    let mut cmd = Command::new(qemu);
    // TCG always: /dev/kvm exists on this machine but a KVM guest hangs at "Booting from ROM"
    // (nested virtualisation does not work here), and telling that apart cheaply from a slow boot
    // is not possible. `-cpu max` gives the guest every feature TCG emulates.
    cmd.args(["-accel", "tcg", "-cpu", "max"])
        .args(["-smp", &opts.cpus.max(1).to_string()])
        .args(["-m", &opts.memory_mib.to_string()])
        .args([
            "-nographic",
            "-nodefaults",
            "-monitor",
            "none",
            "-no-reboot",
        ])
        .args(["-nic", "none"])
        .arg("-serial")
        .arg(format!("file:{}", console_path.display()))
        .arg("-kernel")
        .arg(&kernel.vmlinuz)
        .arg("-initrd")
        .arg(initrd)
        .arg("-append")
        .arg(match opts.lockdown {
            None => CMDLINE.to_owned(),
            Some(mode) => format!(
                "{CMDLINE} lockdown={}",
                clap::ValueEnum::to_possible_value(&mode)
                    .map_or_else(String::new, |v| v.get_name().to_owned())
            ),
        })
        .arg("-virtfs")
        // The host's `/` spans devices (/proc and /sys roots are both inode 1): without remapping,
        // 9p gives them one qid, the guest aliases the directories, and /proc mounts land on /sys.
        .arg(format!(
            "{},multidevs=remap",
            virtfs(Path::new("/"), "hostroot", true)
        ))
        .arg("-virtfs")
        .arg(virtfs(&kernel.modules, "kmods", true))
        .arg("-virtfs")
        .arg(virtfs(&share.path("share"), "share", false))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(stderr)
        .process_group(0);
    let parent = std::process::id() as i32;
    // SAFETY: prctl, getppid and _exit are async-signal-safe; nothing else runs between fork and exec.
    unsafe {
        cmd.pre_exec(move || {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
            if libc::getppid() != parent {
                libc::_exit(1);
            }
            Ok(())
        });
    }
    log::debug!("vm: {cmd:?}");
    let child = cmd.spawn().map_err(|e| Error::Command {
        command: qemu.display().to_string(),
        detail: e.to_string(),
    })?;
    let mut guard = QemuGuard(child);

    let mut started = None;
    loop {
        let done = guard.0.try_wait().map_err(|e| Error::Command {
            command: "wait for qemu".into(),
            detail: e.to_string(),
        })?;
        if started.is_none() && contains(&console_path, initramfs::STARTED) {
            started = Some(Instant::now());
        }
        let (timed_out, interrupted) =
            (Instant::now() >= deadline, crate::process::stop_requested());
        if done.is_some() || timed_out || interrupted {
            drop(guard);
            return Ok(Boot {
                started,
                exited: Instant::now(),
                timed_out: done.is_none() && timed_out,
                interrupted: done.is_none() && interrupted,
            });
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn contains(path: &Path, needle: &str) -> bool {
    let mut s = Vec::new();
    fs::File::open(path)
        .and_then(|mut f| f.read_to_end(&mut s))
        .is_ok()
        && s.windows(needle.len()).any(|w| w == needle.as_bytes())
}

/// The serial log without the terminal escapes and carriage returns SeaBIOS and the kernel write.
fn clean_console(raw: &str) -> String {
    let mut out = String::with_capacity(raw.len());
    let mut chars = raw.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\x1b' => {
                // ESC [ params final-byte, or ESC and one character.
                if chars.next_if_eq(&'[').is_some() {
                    while chars.next().is_some_and(|c| !c.is_ascii_alphabetic()) {}
                } else {
                    chars.next();
                }
            }
            '\r' => {}
            c => out.push(c),
        }
    }
    out
}

/// What an error shows of the console: from a few lines before the first panic, oops or init
/// failure, and the last lines; else the last `CONSOLE_TAIL` lines.
fn excerpt(console: &str) -> String {
    let lines: Vec<&str> = console.lines().collect();
    let first = lines.iter().position(|l| {
        ["Kernel panic", "Oops", "BUG:", "tracer-vm: init failed"]
            .iter()
            .any(|p| l.contains(p))
    });
    match first {
        Some(i) if lines.len() > CONSOLE_TAIL => {
            let from = i.saturating_sub(3);
            let to = (i + 15).min(lines.len());
            let mut s = lines[from..to].join("\n");
            if to < lines.len() {
                let last = lines.len().saturating_sub(3).max(to);
                if last > to {
                    s += "\n  ...\n";
                } else {
                    s += "\n";
                }
                s += &lines[last..].join("\n");
            }
            s
        }
        _ => fetch::tail(console, CONSOLE_TAIL),
    }
}

/// Kills and reaps qemu when dropped.
struct QemuGuard(Child);

impl Drop for QemuGuard {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            let _ = self.0.kill();
        }
        let _ = self.0.wait();
    }
}

/// The shell script the guest runs: environment, working directory, then `exec argv`.
fn script(argv: &[String], opts: &RunOptions) -> Result<String, Error> {
    let mut env: Vec<(String, String)> = vec![
        (
            "PATH".into(),
            "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".into(),
        ),
        ("HOME".into(), "/root".into()),
        (OUT_ENV.into(), format!("{GUEST_SHARE}/out")),
    ];
    env.extend(opts.env.iter().cloned());
    let mut s = String::from("# written by tracer vm\n");
    for (name, value) in &env {
        let valid = !name.is_empty()
            && !name.starts_with(|c: char| c.is_ascii_digit())
            && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
        if !valid {
            return Err(Error::BadEnvName { name: name.clone() });
        }
        s += &format!("export {name}={}\n", quote(value));
    }
    let workdir = opts.workdir.as_deref().unwrap_or(Path::new("/"));
    s += &format!("cd {} || exit 127\n", quote(&workdir.to_string_lossy()));
    s += "exec";
    for a in argv {
        s += " ";
        s += &quote(a);
    }
    s += "\n";
    Ok(s)
}

/// `s` as one POSIX shell word.
fn quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

static SEQ: AtomicU32 = AtomicU32::new(0);
const DIR_PREFIX: &str = "tracer-vm-";

/// A private temp dir `tracer-vm-<pid>-<n>`: `share/` (the guest's writable share), the console log
/// and qemu's stderr. Removed when dropped; the next run removes those of dead processes.
#[derive(Debug)]
pub(super) struct ShareDir {
    root: PathBuf,
    out: PathBuf,
}

impl ShareDir {
    fn new() -> Result<ShareDir, Error> {
        let root = std::env::temp_dir().join(format!(
            "{DIR_PREFIX}{}-{}",
            std::process::id(),
            SEQ.fetch_add(1, Ordering::SeqCst)
        ));
        let _ = fs::remove_dir_all(&root);
        let out = root.join("share/out");
        fs::create_dir_all(&out).map_err(Error::io("create", &out))?;
        Ok(ShareDir { root, out })
    }

    fn path(&self, rel: &str) -> PathBuf {
        self.root.join(rel)
    }

    fn write(&self, rel: &str, text: &str) -> Result<(), Error> {
        let p = self.path(rel);
        fs::write(&p, text).map_err(Error::io("write", &p))
    }

    fn read(&self, rel: &str) -> String {
        fs::read(self.path(rel))
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_default()
    }

    fn status(&self) -> Option<i32> {
        self.read("share/status").trim().parse().ok()
    }

    pub(super) fn out_dir(&self) -> &Path {
        &self.out
    }
}

impl Drop for ShareDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.root);
    }
}

/// Removes the temp dirs of runs whose process is gone (killed with SIGKILL, say).
fn remove_stale_dirs() {
    let Ok(entries) = fs::read_dir(std::env::temp_dir()) else {
        return;
    };
    for e in entries.flatten() {
        let name = e.file_name();
        let Some(pid) = name
            .to_str()
            .and_then(|n| n.strip_prefix(DIR_PREFIX))
            .and_then(|rest| rest.split('-').next())
            .and_then(|p| p.parse::<u32>().ok())
        else {
            continue;
        };
        if !Path::new(&format!("/proc/{pid}")).exists() {
            log::info!("vm: removing {} (left by a killed run)", e.path().display());
            let _ = fs::remove_dir_all(e.path());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quoting_survives_the_shell() {
        let nasty = ["it's", "$HOME", "a b", "`id`", "\"q\"", "", "x\ny", "\\"];
        let opts = RunOptions {
            env: vec![("V".into(), "a'b $c".into())],
            workdir: Some("/tmp/it's".into()),
            ..RunOptions::default()
        };
        let argv: Vec<String> = nasty.iter().map(|s| s.to_string()).collect();
        let s = script(&argv, &opts).unwrap();
        assert!(s.contains("export V='a'\\''b $c'\n"));
        assert!(s.contains("cd '/tmp/it'\\''s' || exit 127\n"));
        // Let a real shell split the exec line back into words.
        let exec_line = s
            .lines()
            .skip_while(|l| !l.starts_with("exec"))
            .collect::<Vec<_>>()
            .join("\n");
        let words = exec_line.replacen("exec", "printf '%s\\0'", 1);
        let out = Command::new("sh").arg("-c").arg(&words).output().unwrap();
        let got: Vec<&str> = std::str::from_utf8(&out.stdout)
            .unwrap()
            .split_terminator('\0')
            .collect();
        assert_eq!(got, nasty);
    }

    #[test]
    fn console_excerpt_starts_at_the_panic() {
        let raw = "\x1bc\x1b[?7l\x1b[2JSeaBIOS\r\nBooting from ROM...\n";
        assert_eq!(clean_console(raw), "SeaBIOS\nBooting from ROM...\n");
        let mut console = String::from("tracer-vm: init started\n");
        for i in 0..10 {
            console += &format!("early {i}\n");
        }
        console += "Kernel panic - not syncing: Attempted to kill init!\n";
        for i in 0..40 {
            console += &format!("trace {i}\n");
        }
        let e = excerpt(&console);
        assert!(e.starts_with("early 7\nearly 8\nearly 9\nKernel panic"));
        assert!(e.ends_with("trace 39"));
        assert!(!e.contains("trace 20"));
    }

    #[test]
    fn bad_env_names_are_refused() {
        let opts = RunOptions {
            env: vec![("A=B; rm".into(), "x".into())],
            ..RunOptions::default()
        };
        assert!(matches!(
            script(&["true".into()], &opts),
            Err(Error::BadEnvName { .. })
        ));
    }
}
