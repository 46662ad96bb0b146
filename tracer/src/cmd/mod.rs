//! The commands: each turns its arguments into a domain call and renders the result.
//!
//! # Layout
//! - `compare`: two reports side by side, exit code 3 on a regression.
//! - `doctor`: the checks and a traced probe from a pod, one page: verdict, causes, checks.
//! - `fleet`: node reports side by side, exit code 8 when a node is odd out.
//! - `hooks`: every program loaded (none attached), the tier this kernel gives.
//! - `inspect`: the node's state without eBPF, as findings.
//! - `manual`: shell completions and the man page, from the clap definitions.
//! - `lab`: the simulated node up, down, its status and faults.
//! - `privileges`: what each command needs (capabilities, lockdown), checked first; exit code 5.
//! - `probe`: DNS queries at a fixed rate through the Service, optionally traced.
//! - `trace`: every DNS query followed until Ctrl-C or `--duration`.
//! - `validate`: the lab's scenarios on this kernel or one booted in a VM.
//! - `vm`: another kernel under qemu, one command run in it.
pub mod compare;
pub mod doctor;
pub mod fleet;
pub mod hooks;
pub mod inspect;
pub mod lab;
pub mod manual;
pub mod privileges;
pub mod probe;
pub mod trace;
pub mod validate;
pub mod vm;

/// What failed in a command (a lost query, a failed scenario or a regression is a result, not an
/// error: `main` turns those into exit codes).
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("failed to read the state of lab {prefix}: {source}")]
    Lab {
        prefix: String,
        source: crate::lab::Error,
    },
    #[error("lab {prefix} is not up: run `tracer lab up --prefix {prefix}` first")]
    NoLab { prefix: String },
    #[error(
        "no DNS Service to trace: no kube-dns Service in this node's rules; pass --service IP[:PORT], or --lab"
    )]
    NoService,
    #[error("{reason}")]
    Privileges { reason: String },
    #[error("invalid arguments: {reason}")]
    Usage { reason: &'static str },
    #[error("failed to load the eBPF programs to find the hook tier: {source}")]
    Tier {
        source: crate::probes::session::Error,
    },
    #[error(transparent)]
    Inspect(#[from] crate::node::inspect::Error),
    #[error(transparent)]
    Trace(#[from] crate::trace::Error),
    #[error(transparent)]
    Measure(#[from] crate::measure::Error),
    #[error(transparent)]
    Validate(#[from] crate::validate::Error),
    #[error(transparent)]
    Doctor(#[from] crate::doctor::Error),
    #[error(transparent)]
    Vm(#[from] crate::vm::Error),
    #[error(transparent)]
    Netns(#[from] crate::netns::Error),
    #[error(transparent)]
    Report(#[from] crate::report::document::Error),
    #[error("failed to write the output: {0}")]
    Output(#[from] std::io::Error),
    #[error("failed to encode the output as JSON: {0}")]
    Json(#[from] serde_json::Error),
    #[error("failed to run validate in a VM on kernel {spec}: {source}")]
    VmRun {
        spec: String,
        source: crate::vm::Error,
    },
    #[error("failed to find this tracer's binary to run in the VM: {source}")]
    CurrentExe { source: std::io::Error },
    #[error(
        "this tracer runs from {exe}, which the VM cannot see (its /tmp and /run are its own): run a copy from elsewhere, /var/tmp say"
    )]
    ExeHidden { exe: std::path::PathBuf },
    #[error(
        "validate in the VM on kernel {release} exited with status {status} and wrote no report{}",
        if stderr_tail.is_empty() { String::new() } else { format!("; its stderr ends:\n{stderr_tail}") }
    )]
    VmNoReport {
        release: String,
        status: i32,
        stderr_tail: String,
    },
    #[error(
        "validate in the VM on kernel {release} failed with exit status {status} (see its output above)"
    )]
    VmStatus { release: String, status: i32 },
}

/// The lab named `prefix`, which must be up.
fn lab_info(prefix: &str) -> Result<crate::lab::LabInfo, Error> {
    crate::lab::info(prefix)
        .map_err(|source| Error::Lab {
            prefix: prefix.to_owned(),
            source,
        })?
        .ok_or_else(|| Error::NoLab {
            prefix: prefix.to_owned(),
        })
}
