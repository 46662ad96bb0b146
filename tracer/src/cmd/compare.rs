//! `tracer compare`.

use crate::{
    cli::{CompareArgs, OutputFormat},
    report::{
        compare::{Comparison, Error, Thresholds, compare},
        document::Document,
    },
};

/// Prints the comparison and returns it (`main` turns a regression into the exit code).
pub fn run(args: CompareArgs) -> Result<Comparison, Error> {
    let t = Thresholds {
        max_loss_increase: args.max_loss_increase,
        max_p99_increase_percent: args.max_p99_increase_percent,
        min_p99_increase_ms: args.min_p99_increase_ms,
        max_drop_increase: args.max_drop_increase,
        max_conntrack_drop_increase: args.max_conntrack_drop_increase,
    };
    t.check()?;
    let before = Document::read(&args.before)?;
    let after = Document::read(&args.after)?;
    let c = compare(&args.before, &before, &args.after, &after, &t);
    match args.output {
        OutputFormat::Text => print!("{}", c.text()),
        OutputFormat::Json => println!(
            "{}",
            serde_json::to_string_pretty(&c).map_err(|source| Error::Json { source })?
        ),
    }
    Ok(c)
}
