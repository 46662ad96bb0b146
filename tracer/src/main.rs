use anyhow::Context as _;
use clap::Parser as _;
use tracer::cli::{Cli, Command};

/// `tracer validate`: a scenario failed its checks (errors exit with 1).
const EXIT_SCENARIO_FAILED: i32 = 2;
/// `tracer compare`: a figure regressed past its threshold (errors exit with 1).
const EXIT_REGRESSION: i32 = 3;
/// Not root, or without the capabilities the command needs, or a kernel lockdown that forbids it.
const EXIT_PRIVILEGES: i32 = 5;

fn main() -> anyhow::Result<()> {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info")).init();
    let cli = Cli::parse();
    if matches!(cli.command, Command::Trace(_) | Command::Probe(_)) {
        // Before anything else: a SIGINT or SIGTERM while loading and attaching stops the
        // command after it, with everything removed and the summary printed.
        tracer::process::stop_on_signals()?;
    }
    let name = std::env::args().nth(1).unwrap_or_default();
    if let Err(e) = tracer::cmd::privileges::check(&name, &cli.command) {
        eprintln!("error: {e}");
        std::process::exit(EXIT_PRIVILEGES);
    }
    match cli.command {
        Command::Lab(args) => tracer::cmd::lab::run(args).context("lab"),
        Command::Trace(args) => tracer::cmd::trace::run(args).context("trace"),
        Command::Hooks(args) => tracer::cmd::hooks::run(args).context("hooks"),
        Command::Inspect(args) => tracer::cmd::inspect::run(args).context("inspect"),
        Command::Probe(args) => tracer::cmd::probe::run(args).context("probe"),
        Command::Compare(args) => {
            let c = tracer::cmd::compare::run(args).context("compare")?;
            if c.regressions > 0 {
                eprintln!(
                    "compare: {} regression(s): {}",
                    c.regressions,
                    c.regressed().join(", ")
                );
                std::process::exit(EXIT_REGRESSION);
            }
            Ok(())
        }
        Command::Validate(args) => {
            if !tracer::cmd::validate::run(args).context("validate")? {
                eprintln!("validate: a scenario failed on this kernel (see the FAIL lines)");
                std::process::exit(EXIT_SCENARIO_FAILED);
            }
            Ok(())
        }
        Command::Vm(args) => {
            let status = tracer::cmd::vm::run(args).context("vm")?;
            std::process::exit(status);
        }
    }
}
