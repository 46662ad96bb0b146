//! `cargo xtask fuzz`: the long run of tests/fuzz.rs, the stable-toolchain fuzzer of the tracer's
//! parsers of untrusted bytes (DNS questions, iptables-save and nft JSON, ctnetlink and rtnetlink
//! datagrams, ring-buffer records, reports). The short run is part of `cargo test`; this runs the
//! same test with a budget per target and prints each target's executions.

use anyhow::Context as _;

/// What to run: one target or all, and for how long each.
pub struct Options {
    /// One target (`dns`, `iptables_save`, `nft_json`, `ctnetlink`, `rtnetlink`, `ring_buffer`,
    /// `report`), or every one.
    pub target: Option<String>,
    /// Mutations per target.
    pub runs: Option<u64>,
    /// Seconds per target (wins over `runs`).
    pub seconds: Option<u64>,
    /// The mutator's seed (a run is reproducible from it).
    pub seed: Option<u64>,
}

/// Builds and runs tests/fuzz.rs with the budget; fails (naming the saved input) on a crash.
pub fn run(o: &Options) -> anyhow::Result<()> {
    let mut cmd = crate::cargo();
    cmd.args(["test", "--release", "-p", "tracer", "--test", "fuzz", "--"])
        .args(["--nocapture", "--test-threads=1", "every_target"]);
    if let Some(t) = &o.target {
        cmd.env("TRACER_FUZZ_TARGET", t);
    }
    match (o.seconds, o.runs) {
        (Some(s), _) => cmd.env("TRACER_FUZZ_SECONDS", s.to_string()),
        (None, Some(r)) => cmd.env("TRACER_FUZZ_RUNS", r.to_string()),
        (None, None) => cmd.env("TRACER_FUZZ_SECONDS", "60"),
    };
    if let Some(s) = o.seed {
        cmd.env("TRACER_FUZZ_SEED", s.to_string());
    }
    crate::sh(&mut cmd).context("fuzz: a target crashed or allocated past its bound (the input is under target/fuzz-crashes/)")
}
