//! `tracer fleet`.

use crate::{
    cli::{FleetArgs, OutputFormat},
    report::fleet::{Error, Fleet, fleet, read_reports},
};

/// Prints the nodes side by side and returns them (`main` turns an odd node into the exit code).
pub fn run(args: FleetArgs) -> Result<Fleet, Error> {
    let reports = read_reports(&args.reports)?;
    let f = fleet(&reports);
    match args.output {
        OutputFormat::Text => print!("{}", f.text()),
        OutputFormat::Json => println!("{}", f.json()?),
    }
    Ok(f)
}
