//! The probes: which exist (`table`), which this kernel gets (`plan`), and loading, attaching and
//! reading them (`session`).
//!
//! # Layout
//! - `table`: one row per eBPF program: stage, hook kind, candidate kernel symbols.
//! - `module_fexit`: fexit programs on functions in kernel modules (nf_tables, nf_nat, ...), which
//!   aya 0.14 cannot load: the module's BTF object and split-BTF id, our own BPF_PROG_LOAD, the
//!   session's maps shared.
//! - `plan`: the hook tier (fentry, kprobe, tracepoint) and every program's fate, with reasons.
//! - `detect_tier`: the tier this kernel gives, by loading every program (attaching none).
//! - `session`: loads the object with the configuration, attaches what the plan says, drains the
//!   ring buffer, reads counters and the slot table; dropping it detaches everything.
pub mod module_fexit;
pub mod plan;
pub mod session;
pub mod table;

use crate::kernel::features::Features;

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
