//! `tracer vm run|prepare|list`.

use std::{
    fs,
    io::Write as _,
    path::Path,
    time::{Duration, Instant},
};

use crate::{
    cli::{VmAction, VmArgs},
    vm::{self, ALIASES, Error, KernelSpec, RunOptions},
};

/// Runs the command; returns the process exit status (the guest command's, for `run`).
pub fn run(args: VmArgs) -> Result<i32, Error> {
    match args.action {
        VmAction::Prepare { kernel } => {
            let t = Instant::now();
            let k = vm::prepare(&spec(&kernel))?;
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
            let cached = vm::cached();
            println!("cached in {}:", vm::cache_dir().join("kernels").display());
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
            let kernel = vm::prepare(&spec(&a.kernel))?;
            let prepared = t.elapsed();
            let opts = RunOptions {
                timeout: Duration::from_secs(a.timeout),
                cpus: a.cpus,
                memory_mib: a.memory,
                env: a.env,
                workdir: a.workdir,
                lockdown: a.lockdown,
            };
            let guest = vm::run(&kernel, &a.command, &opts)?;
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
