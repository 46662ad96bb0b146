//! The probes: which exist (`table`), which this kernel gets (`plan`), and loading, attaching and
//! reading them (`session`).
//!
//! # Layout
//! - `table`: one row per eBPF program: stage, hook kind, candidate kernel symbols.
//! - `module_fexit`: fexit programs on functions in kernel modules (nf_tables, nf_nat, ...), which
//!   aya 0.14 cannot load: the module's BTF object and split-BTF id, our own BPF_PROG_LOAD, the
//!   session's maps shared.
//! - `plan`: the hook tier (fentry, kprobe, tracepoint) and every program's fate, with reasons.
//! - `run_hooks`: the `tracer hooks` command (verify every program, report the tier).
//! - `session`: loads the object with the configuration, attaches what the plan says, drains the
//!   ring buffer, reads counters and the slot table; dropping it detaches everything.
pub mod module_fexit;
pub mod plan;
pub mod session;
pub mod table;

use std::io::Write as _;

use crate::{
    cli::{HooksArgs, OutputFormat},
    kernel::features::Features,
};

/// The tier tracing gets on this kernel and why, found by loading every program (attaching none):
/// whether fexit programs load is only known by trying.
pub fn detect_tier(features: &Features) -> Result<(plan::Tier, String), session::Error> {
    let session = session::Session::start(session::Options::default())?;
    let tier = session.plan.would_get(features.kprobes);
    let why = |h: table::Hook| {
        session
            .plan
            .outcomes
            .iter()
            .find(|o| o.hook == h)
            .map(|o| match &o.fate {
                plan::Fate::Skipped { reason } | plan::Fate::Verified { reason } => reason.clone(),
                plan::Fate::Attached { to } => to.clone(),
            })
    };
    let reason = match tier {
        plan::Tier::Fentry => "fexit programs load".to_owned(),
        plan::Tier::Kprobe => format!(
            "kprobe programs load; {}",
            why(table::Hook::Fexit).unwrap_or_default()
        ),
        plan::Tier::Tracepoint => format!(
            "{}; {}",
            why(table::Hook::Fexit).unwrap_or_default(),
            if features.kprobes {
                "kprobe programs refused"
            } else {
                "no kprobe PMU"
            }
        ),
    };
    Ok((tier, reason))
}

/// `tracer hooks`: loads every program (the verifier checks each), attaches none, and says which
/// tier tracing would get on this kernel and why each program would or would not attach.
pub fn run_hooks(args: HooksArgs) -> Result<(), session::Error> {
    let features = Features::detect();
    let session = session::Session::start(session::Options::default())?;
    let tier = session.plan.would_get(features.kprobes);
    let mut out = std::io::stdout().lock();
    let written = match args.output {
        OutputFormat::Json => writeln!(
            out,
            "{}",
            serde_json::json!({"kernel": features, "tier": tier, "programs": session.plan.outcomes})
        ),
        OutputFormat::Text => write!(
            out,
            "kernel {} (BTF {}, kprobes {}): tracing would get the {tier} tier\n{}",
            features.release,
            if features.btf { "yes" } else { "no" },
            if features.kprobes { "yes" } else { "no" },
            session.plan
        ),
    };
    written.map_err(|source| session::Error::Output { source })
}
