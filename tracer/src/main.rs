use anyhow::Context as _;
use clap::Parser as _;
use tracer::cli::{Cli, Command};

fn main() -> anyhow::Result<()> {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info")).init();
    let cli = Cli::parse();
    match cli.command {
        Command::Lab(args) => tracer::lab::run(args).context("lab"),
        Command::Trace(args) => tracer::trace::run(args).context("trace"),
        Command::Hooks(args) => tracer::probes::run_hooks(args).context("hooks"),
        Command::Inspect(args) => tracer::node::inspect::run(args).context("inspect"),
        Command::Probe(args) => tracer::measure::probe::run(args).context("probe"),
    }
}
