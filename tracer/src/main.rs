use anyhow::Context as _;
use clap::Parser as _;
use tracer::{
    cli::{Cli, Command},
    report::doctor::Health,
};

/// `tracer validate`: a scenario failed its checks (errors exit with 1).
const EXIT_SCENARIO_FAILED: i32 = 2;
/// `tracer compare`: a figure regressed past its threshold (errors exit with 1).
const EXIT_REGRESSION: i32 = 3;
/// `tracer doctor`: DNS works but the node has a problem, or a few queries were lost.
const EXIT_DEGRADED: i32 = 6;
/// `tracer doctor`: DNS queries are failing (10 % or more lost).
const EXIT_BROKEN: i32 = 7;

fn main() -> anyhow::Result<()> {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info")).init();
    let cli = Cli::parse();
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
        Command::Doctor(args) => {
            match tracer::cmd::doctor::run(args).context("doctor")? {
                Health::Healthy => {}
                Health::Degraded => std::process::exit(EXIT_DEGRADED),
                Health::Broken => std::process::exit(EXIT_BROKEN),
            }
            Ok(())
        }
        Command::Completions(args) => tracer::cmd::manual::completions(args).context("completions"),
        Command::Man => tracer::cmd::manual::man().context("man"),
        Command::Vm(args) => {
            let status = tracer::cmd::vm::run(args).context("vm")?;
            std::process::exit(status);
        }
    }
}
