//! `tracer vm run|prepare|list`.

use std::{
    fs,
    io::Write as _,
    path::Path,
    time::{Duration, Instant},
};

use nix::sys::signal::{self, SaFlags, SigAction, SigHandler, SigSet, Signal};

use super::{ALIASES, Error, KernelSpec, RunOptions};
use crate::cli::{VmAction, VmArgs};

/// Runs the command; returns the process exit status (the guest command's, for `run`).
pub fn run(args: VmArgs) -> Result<i32, Error> {
    match args.action {
        VmAction::Prepare { kernel } => {
            let t = Instant::now();
            let k = super::prepare(&spec(&kernel))?;
            println!("release  {}", k.release);
            println!("vmlinuz  {}", k.vmlinuz.display());
            println!("modules  {}", k.modules.display());
            println!("prepared in {:.1}s", t.elapsed().as_secs_f64());
            Ok(0)
        }
        VmAction::List => {
            println!("aliases:");
            for (alias, package, suite) in ALIASES {
                println!("  {alias:<6} {package} ({suite})");
            }
            let cached = super::cached();
            println!(
                "cached in {}:",
                super::cache_dir().join("kernels").display()
            );
            if cached.is_empty() {
                println!("  (none)");
            }
            for (name, k) in cached {
                println!("  {name}  release {}", k.release);
            }
            Ok(0)
        }
        VmAction::Run(a) => {
            let t = Instant::now();
            let kernel = super::prepare(&spec(&a.kernel))?;
            let prepared = t.elapsed();
            let opts = RunOptions {
                timeout: Duration::from_secs(a.timeout),
                cpus: a.cpus,
                memory_mib: a.memory,
                env: a.env,
                workdir: a.workdir,
            };
            on_interrupt_stop_guests();
            let guest = super::run(&kernel, &a.command, &opts)?;
            log::debug!("vm: console:\n{}", guest.console);
            print!("{}", guest.stdout);
            eprint!("{}", guest.stderr);
            let _ = std::io::stdout().flush();
            if let Some(out) = &a.out {
                copy_dir(guest.out_dir(), out)?;
            }
            log::info!(
                "vm: kernel {} exit status {}: prepare {:.1}s, boot to command {:.1}s, guest wall {:.1}s{}",
                kernel.release,
                guest.status,
                prepared.as_secs_f64(),
                guest.boot_time.as_secs_f64(),
                guest.wall_time.as_secs_f64(),
                if guest.boots > 1 {
                    " (boot retried)"
                } else {
                    ""
                }
            );
            Ok(guest.status)
        }
    }
}

fn spec(s: &str) -> KernelSpec {
    match s.parse() {
        Ok(spec) => spec,
        Err(never) => match never {},
    }
}

extern "C" fn stop_guests(_: libc::c_int) {
    super::interrupt();
}

/// Ctrl-C or SIGTERM stop the guest (its guard kills qemu, temp dirs are removed) instead of
/// killing this process outright.
fn on_interrupt_stop_guests() {
    let action = SigAction::new(
        SigHandler::Handler(stop_guests),
        SaFlags::empty(),
        SigSet::empty(),
    );
    for sig in [Signal::SIGINT, Signal::SIGTERM] {
        // SAFETY: the handler only stores to an atomic.
        let _ = unsafe { signal::sigaction(sig, &action) };
    }
}

/// Copies the tree `from` into `to` (created).
fn copy_dir(from: &Path, to: &Path) -> Result<(), Error> {
    fs::create_dir_all(to).map_err(Error::io("create", to))?;
    for e in fs::read_dir(from)
        .map_err(Error::io("read", from))?
        .flatten()
    {
        let (src, dst) = (e.path(), to.join(e.file_name()));
        if src.is_dir() {
            copy_dir(&src, &dst)?;
        } else {
            fs::copy(&src, &dst).map_err(Error::io("copy", &src))?;
        }
    }
    Ok(())
}
