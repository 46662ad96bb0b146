use anyhow::Context as _;
use clap::Parser as _;
use tracer::{
    cli::{Cli, Command},
    report::doctor::Health,
};

/// Any error: one line on stderr, `error: <command>: <what failed>: <why>`.
const EXIT_ERROR: i32 = 1;
// 2 is clap's own, for bad usage (an unknown flag, a malformed or out-of-range value).
/// `tracer compare`: a figure regressed past its threshold.
const EXIT_REGRESSION: i32 = 3;
/// `tracer validate`: a scenario failed its checks.
const EXIT_SCENARIO_FAILED: i32 = 4;
/// Not root, or without the capabilities the command needs, or a kernel lockdown that forbids it.
const EXIT_PRIVILEGES: i32 = 5;
/// `tracer doctor`: DNS works but the node has a problem, or a few queries were lost.
const EXIT_DEGRADED: i32 = 6;
/// `tracer doctor`: DNS queries are failing (10 % or more lost).
const EXIT_BROKEN: i32 = 7;
/// `lab up`, `validate`, `doctor` or `vm run` stopped by SIGINT or SIGTERM (128 + SIGINT, as a
/// shell reports it), after removing what they made.
const EXIT_INTERRUPTED: i32 = 130;

/// The commands that make something a signal must not leave behind (programs attached, a lab,
/// a guest): SIGINT and SIGTERM ask them to stop and clean up. The others (read-only, or done
/// in an instant) keep the default: the signal ends them.
fn stops_on_signals(command: &Command) -> bool {
    match command {
        Command::Trace(_) | Command::Probe(_) | Command::Doctor(_) | Command::Validate(_) => true,
        Command::Lab(args) => matches!(args.action, tracer::cli::LabAction::Up { .. }),
        Command::Vm(args) => matches!(args.action, tracer::cli::VmAction::Run(_)),
        _ => false,
    }
}
/// `tracer fleet`: a node differs from the rest.
const EXIT_ODD_NODE: i32 = 8;

fn main() {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info")).init();
    let cli = Cli::parse();
    if stops_on_signals(&cli.command) {
        // Before anything else: a SIGINT or SIGTERM while loading and attaching stops the
        // command after it, with everything removed (trace and probe print their summary).
        if let Err(e) = tracer::process::stop_on_signals() {
            eprintln!("error: {}", one_line(&e.into()));
            std::process::exit(EXIT_ERROR);
        }
    }
    let name = std::env::args().nth(1).unwrap_or_default();
    if let Err(e) = tracer::cmd::privileges::check(&name, &cli.command) {
        eprintln!("error: {e}");
        std::process::exit(EXIT_PRIVILEGES);
    }
    let code = run(cli.command).unwrap_or_else(|e| {
        eprintln!("error: {}", one_line(&e));
        if tracer::process::stop_requested() {
            EXIT_INTERRUPTED
        } else {
            EXIT_ERROR
        }
    });
    std::process::exit(code);
}

/// Runs the command; returns the exit code of a result that is not an error.
fn run(command: Command) -> anyhow::Result<i32> {
    match command {
        Command::Lab(args) => tracer::cmd::lab::run(args).context("lab")?,
        Command::Trace(args) => tracer::cmd::trace::run(args).context("trace")?,
        Command::Hooks(args) => tracer::cmd::hooks::run(args).context("hooks")?,
        Command::Inspect(args) => tracer::cmd::inspect::run(args).context("inspect")?,
        Command::Probe(args) => tracer::cmd::probe::run(args).context("probe")?,
        Command::Compare(args) => {
            let c = tracer::cmd::compare::run(args).context("compare")?;
            if c.regressions > 0 {
                eprintln!(
                    "compare: {} regression(s): {}",
                    c.regressions,
                    c.regressed().join(", ")
                );
                return Ok(EXIT_REGRESSION);
            }
        }
        Command::Fleet(args) => {
            let f = tracer::cmd::fleet::run(args).context("fleet")?;
            if !f.agrees {
                eprintln!(
                    "fleet: {} of {} nodes odd out: {}",
                    f.odd_nodes().len(),
                    f.rows.len(),
                    f.odd_nodes().join(", ")
                );
                return Ok(EXIT_ODD_NODE);
            }
        }
        Command::Validate(args) => {
            if !tracer::cmd::validate::run(args).context("validate")? {
                eprintln!("validate: a scenario failed on this kernel (see the FAIL lines)");
                return Ok(EXIT_SCENARIO_FAILED);
            }
        }
        Command::Doctor(args) => {
            return Ok(match tracer::cmd::doctor::run(args).context("doctor")? {
                Health::Healthy => 0,
                Health::Degraded => EXIT_DEGRADED,
                Health::Broken => EXIT_BROKEN,
            });
        }
        Command::Completions(args) => {
            tracer::cmd::manual::completions(args).context("completions")?
        }
        Command::Man => tracer::cmd::manual::man().context("man")?,
        Command::Vm(args) => return tracer::cmd::vm::run(args).context("vm"),
    }
    Ok(0)
}

/// The error and its causes on one line, `a: b: c`, leaving out a cause whose text the message
/// before it already holds (the modules' messages name their source).
fn one_line(e: &anyhow::Error) -> String {
    let mut line = String::new();
    let mut previous = String::new();
    for cause in e.chain() {
        let text = cause.to_string();
        if !previous.contains(&text) {
            if !line.is_empty() {
                line.push_str(": ");
            }
            line.push_str(&text);
        }
        previous = text;
    }
    line
}
