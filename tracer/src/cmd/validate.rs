//! `tracer validate`: the lab's scenarios on this kernel, or on one booted in a VM.

use std::{
    io::Write as _,
    time::{Duration, Instant},
};

use super::Error;
use crate::{
    cli::{OutputFormat, ValidateArgs},
    node::inspect,
    report::{
        document::{self, Document, NodeFacts},
        validation::line,
    },
    validate::validate,
    vm::{self, KernelSpec, RunOptions},
};

/// Runs `tracer validate`; returns whether every scenario passed.
pub fn run(args: ValidateArgs) -> Result<bool, Error> {
    if let Some(spec) = &args.kernel {
        return run_in_vm(spec, &args);
    }
    let json = args.out.format == OutputFormat::Json;
    if !json {
        println!(
            "validating this kernel with the lab's scenarios (labs named {}-*, brought down after each)",
            args.prefix
        );
    }
    let v = validate(
        &args.prefix,
        &args.backends,
        &args.scenarios,
        args.healthy_count,
        |r| {
            if !json {
                println!("{}", line(r));
            }
        },
    )?;
    let mut stdout = std::io::stdout().lock();
    if json {
        serde_json::to_writer_pretty(&mut stdout, &v)?;
        writeln!(stdout)?;
    } else {
        let failed = v.scenarios.iter().filter(|r| !r.passed).count();
        writeln!(
            stdout,
            "{} of {} scenarios passed on kernel {} with hook tier {} in {:.0} s",
            v.scenarios.len() - failed,
            v.scenarios.len(),
            nix::sys::utsname::uname()
                .map(|u| u.release().to_string_lossy().into_owned())
                .unwrap_or_default(),
            crate::report::validation::show_tier(v.tier),
            v.seconds
        )?;
    }
    if let Some(path) = &args.out.report {
        let mut doc = Document::new("validate")?;
        doc.tier = v.tier;
        doc.node = Some(NodeFacts::from_inspect(&inspect::inspect(None)?));
        doc.validate = Some(v.clone());
        doc.write(path)?;
        if !json {
            writeln!(stdout, "report written to {}", path.display())?;
        }
    }
    Ok(v.passed)
}

/// The accelerator `vm::run` uses (KVM does not work on this machine, see KERNEL.md).
const VM_ACCEL: &str = "tcg";

/// How often `validate --kernel` says the VM is still running.
const VM_HEARTBEAT: Duration = Duration::from_secs(60);

/// `validate --kernel SPEC`: boots SPEC in a VM, runs this tracer's `validate` there with the same
/// arguments, prints its output, and writes its report (marked as a VM run) to `--report` or
/// `validate-<release>.json`. Returns whether every scenario passed, as a local run does.
fn run_in_vm(spec: &str, args: &ValidateArgs) -> Result<bool, Error> {
    let vm_err = |source| Error::VmRun {
        spec: spec.to_owned(),
        source,
    };
    let kernel_spec: KernelSpec = match spec.parse() {
        Ok(k) => k,
        Err(never) => match never {},
    };
    let exe = std::env::current_exe().map_err(|source| Error::CurrentExe { source })?;
    // The guest sees this machine's `/` but mounts fresh tmpfs on /tmp and /run.
    if exe.starts_with("/tmp") || exe.starts_with("/run") {
        return Err(Error::ExeHidden { exe });
    }
    let started = Instant::now();
    let kernel = vm::prepare(&kernel_spec).map_err(vm_err)?;
    let argv = guest_argv(&exe, args);
    let opts = RunOptions {
        timeout: Duration::from_secs(args.vm_timeout),
        env: std::env::var("RUST_LOG")
            .map(|v| vec![("RUST_LOG".to_owned(), v)])
            .unwrap_or_default(),
        ..RunOptions::default()
    };
    eprintln!(
        "validate: booting kernel {} ({spec}) in a VM (qemu {VM_ACCEL}, {} vCPU, timeout {} s); the output comes when it ends",
        kernel.release, opts.cpus, args.vm_timeout
    );
    let (done, ticks) = std::sync::mpsc::channel::<()>();
    let release = kernel.release.clone();
    let heartbeat = std::thread::spawn(move || {
        while let Err(std::sync::mpsc::RecvTimeoutError::Timeout) = ticks.recv_timeout(VM_HEARTBEAT)
        {
            eprintln!(
                "validate: kernel {release} in the VM, {:.0} s so far",
                started.elapsed().as_secs_f64()
            );
        }
    });
    let guest = vm::run(&kernel, &argv, &opts);
    let _ = done.send(());
    let _ = heartbeat.join();
    let guest = guest.map_err(vm_err)?;
    print!("{}", guest.stdout);
    eprint!("{}", guest.stderr);
    std::io::stdout().flush()?;
    let guest_report = guest.out_dir().join("report.json");
    if !guest_report.exists() {
        return Err(Error::VmNoReport {
            release: kernel.release,
            status: guest.status,
            stderr_tail: guest
                .stderr
                .lines()
                .rev()
                .take(10)
                .collect::<Vec<_>>()
                .into_iter()
                .rev()
                .collect::<Vec<_>>()
                .join("\n"),
        });
    }
    let mut doc = Document::read(&guest_report)?;
    if doc.kernel != kernel.release {
        log::warn!(
            "the VM's report names kernel {}, but {} was booted",
            doc.kernel,
            kernel.release
        );
    }
    doc.vm = Some(document::VmRun {
        spec: spec.to_owned(),
        release: kernel.release.clone(),
        host_kernel: nix::sys::utsname::uname()
            .map(|u| u.release().to_string_lossy().into_owned())
            .unwrap_or_default(),
        accel: VM_ACCEL.to_owned(),
        cpus: opts.cpus,
        memory_mib: opts.memory_mib,
        boot_s: guest.boot_time.as_secs_f64(),
        wall_s: guest.wall_time.as_secs_f64(),
    });
    let path = args
        .out
        .report
        .clone()
        .unwrap_or_else(|| format!("validate-{}.json", kernel.release).into());
    doc.write(&path)?;
    eprintln!(
        "validate: kernel {} in the VM: exit status {}, boot {:.0} s, VM {:.0} s, {:.0} s in all; report written to {}",
        kernel.release,
        guest.status,
        guest.boot_time.as_secs_f64(),
        guest.wall_time.as_secs_f64(),
        started.elapsed().as_secs_f64(),
        path.display()
    );
    match guest.status {
        0 => Ok(true),
        4 => Ok(false),
        status => Err(Error::VmStatus {
            release: kernel.release,
            status,
        }),
    }
}

/// `validate` in the guest with this command's arguments, writing its report through the
/// guest's share; `exec "$0"` keeps the binary's path unexpanded.
fn guest_argv(exe: &std::path::Path, args: &ValidateArgs) -> Vec<String> {
    let mut argv: Vec<String> = vec![
        "sh".into(),
        "-c".into(),
        format!(
            "exec \"$0\" validate --report \"${}/report.json\" \"$@\"",
            vm::OUT_ENV
        ),
        exe.to_string_lossy().into_owned(),
        "--prefix".into(),
        args.prefix.clone(),
        "--healthy-count".into(),
        args.healthy_count.to_string(),
    ];
    for b in &args.backends {
        argv.extend(["--backend".into(), b.name().into()]);
    }
    for sc in &args.scenarios {
        argv.extend(["--scenario".into(), sc.clone()]);
    }
    if args.out.format == OutputFormat::Json {
        argv.extend(["--output".into(), "json".into()]);
    }
    argv
}
