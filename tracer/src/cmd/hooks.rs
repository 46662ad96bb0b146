//! `tracer hooks`.

use std::io::Write as _;

use crate::{
    cli::{HooksArgs, OutputFormat},
    kernel::features::Features,
    probes::session,
};

/// `tracer hooks`: loads every program (the verifier checks each), attaches none, and says which
/// tier tracing would get on this kernel and why each program would or would not attach.
pub fn run(args: HooksArgs) -> Result<(), session::Error> {
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
