//! `tracer completions SHELL` and `tracer man`: generated from the clap definitions in `cli`.

use std::io::Write as _;

use clap::CommandFactory as _;

use super::Error;
use crate::cli::{Cli, CompletionsArgs};

/// Writes the completion script for the shell to stdout.
pub fn completions(args: CompletionsArgs) -> Result<(), Error> {
    let mut out = std::io::stdout().lock();
    clap_complete::generate(args.shell, &mut Cli::command(), "tracer", &mut out);
    Ok(out.flush()?)
}

/// Writes the man page (roff) to stdout: the command and, as sections, every subcommand.
pub fn man() -> Result<(), Error> {
    let mut out = std::io::stdout().lock();
    clap_mangen::Man::new(Cli::command()).render(&mut out)?;
    Ok(out.flush()?)
}
