//! The tracer of an earlier commit, built beside this one, so that the bench runs both in the
//! same rounds: how much the per-query cost grew since then is a ratio taken in one run on one
//! machine, not two benches taken on two days under different loads.

use std::{
    path::{Path, PathBuf},
    process::{Command, Stdio},
};

use anyhow::{Context as _, bail};

/// The full bench's default baseline: the last commit measured (bench/RESULTS.md, 2026-11-25)
/// before IPv6, DNS over TCP, NodeLocal DNSCache and IPVS came in (issue 13: the IPv4 UDP query
/// may not cost more than 10 % more than it did there).
pub const REFERENCE: &str = "e073dc2";

/// The revision to build: the one asked for (`none`: no baseline), else `REFERENCE` when
/// `default`.
pub fn chosen(asked: Option<&str>, default: bool) -> Option<&str> {
    match asked {
        Some("none") => None,
        Some(rev) => Some(rev),
        None => default.then_some(REFERENCE),
    }
}

/// A built baseline.
#[derive(Debug, Clone)]
pub struct Baseline {
    /// The commit, abbreviated as given.
    pub rev: String,
    /// Its tracer binary.
    pub tracer: PathBuf,
}

/// Builds `rev`'s tracer (once: kept under `target/bench/baseline/<commit>` for later benches)
/// from `git archive`, with its own cargo target directory shared by every baseline.
pub fn build(root: &Path, target: &Path, rev: &str) -> anyhow::Result<Baseline> {
    let out = Command::new("git")
        .arg("-C")
        .arg(root)
        .args(["rev-parse", "--verify", &format!("{rev}^{{commit}}")])
        .output()
        .context("failed to run git rev-parse")?;
    if !out.status.success() {
        bail!("--baseline {rev}: not a commit of this repository");
    }
    let commit = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    let dir = target.join("bench/baseline");
    let kept = dir.join(&commit).join("tracer");
    if kept.exists() {
        println!("bench: baseline {rev}: {} (built before)", kept.display());
        return Ok(Baseline {
            rev: rev.to_owned(),
            tracer: kept,
        });
    }
    let src = dir.join(format!("{commit}.src"));
    if src.exists() {
        std::fs::remove_dir_all(&src)
            .with_context(|| format!("failed to remove {}", src.display()))?;
    }
    std::fs::create_dir_all(&src).with_context(|| format!("failed to create {}", src.display()))?;
    println!(
        "bench: baseline {rev}: building its tracer in {}",
        src.display()
    );
    // `git archive | tar -x`, piped here: no shell sees the revision.
    let mut git = Command::new("git")
        .arg("-C")
        .arg(root)
        .args(["archive", &commit])
        .stdout(Stdio::piped())
        .spawn()
        .context("failed to run git archive")?;
    let tar = Command::new("tar")
        .arg("-x")
        .arg("-C")
        .arg(&src)
        .stdin(
            git.stdout
                .take()
                .context("git archive's stdout not piped")?,
        )
        .status()
        .context("failed to run tar")?;
    if !git.wait()?.success() || !tar.success() {
        bail!("failed to unpack {commit} into {}", src.display());
    }
    let build_target = dir.join("target");
    crate::sh(
        crate::cargo()
            .args(["build", "--release", "-p", "tracer"])
            .current_dir(&src)
            .env("CARGO_TARGET_DIR", &build_target),
    )?;
    std::fs::create_dir_all(dir.join(&commit))?;
    std::fs::copy(build_target.join("release/tracer"), &kept)
        .with_context(|| format!("failed to copy the baseline's tracer to {}", kept.display()))?;
    std::fs::remove_dir_all(&src).with_context(|| format!("failed to remove {}", src.display()))?;
    Ok(Baseline {
        rev: rev.to_owned(),
        tracer: kept,
    })
}
