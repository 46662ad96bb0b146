//! `tracer inspect`.

use super::{Error, lab_info};
use crate::{
    cli::{InspectArgs, OutputFormat},
    kernel::features::Features,
    netns, node, probes,
    report::document,
};

/// Inspects the namespace the arguments name and prints the report.
pub fn run(args: InspectArgs) -> Result<(), Error> {
    let netns = if args.lab {
        Some(netns::named(&lab_info(&args.prefix)?.node_netns))
    } else {
        args.netns.as_deref().map(netns::named)
    };
    // The load test runs here, outside the inspected namespace: loading attaches nothing.
    let tier = if args.tier {
        Some(probes::detect_tier(&Features::detect()).map_err(|source| Error::Tier { source })?)
    } else {
        None
    };
    let report = node::inspect_with_tier(netns.as_deref(), tier)?;
    match args.out.format {
        OutputFormat::Text => print!("{}", report.render_text()),
        OutputFormat::Json => println!("{}", report.render_json()?),
    }
    if let Some(path) = &args.out.report {
        document::write_inspect_report(path, &report)?;
    }
    Ok(())
}
