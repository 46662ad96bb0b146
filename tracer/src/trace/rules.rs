//! `trace --rules`: netfilter's own tracing of DNS packets (nftrace for nf_tables, TRACE for
//! legacy xtables), kept per client socket so that a failed query's record names the chains it
//! went through and the rule that decided its fate.

use std::{net::SocketAddr, path::Path};

use super::Error;
use crate::{
    flow::{recent::Recent, record::RulePath},
    netns,
    node::{Backend, RuleCounter},
    ruletrace::{self, Counters, LegacyTrace, Options, PacketPath, RuleTrace},
};

/// The legacy tables that exist in the calling thread's namespace.
const IP_TABLES_NAMES: &str = "/proc/thread-self/net/ip_tables_names";

/// Client sockets whose last query packet's path is kept.
const REMEMBERED: usize = 4096;

/// The rule traces of one trace, in the pod links' namespace.
pub struct RuleTraces {
    nft: RuleTrace,
    /// Only where the Service's rules are in the legacy backend and the legacy raw table exists
    /// already: a TRACE rule would register it, and it stays after the rule is gone.
    legacy: Option<LegacyTrace>,
    /// Why a side did not run.
    notes: Vec<String>,
    paths: Recent<SocketAddr, RulePath>,
}

impl RuleTraces {
    /// Starts tracing in `links` (or here); `counters` are the Service's rules in each backend.
    pub fn start(links: Option<&Path>, counters: &[RuleCounter]) -> Result<Self, Error> {
        let wanted = counters.iter().any(|c| c.backend == Backend::Legacy);
        // Only the queries' paths are kept: tracing answers would double the kernel's messages.
        let options = Options {
            replies: false,
            ..Options::default()
        };
        let start = move || -> Result<_, ruletrace::Error> {
            let nft = RuleTrace::start(options.clone())?;
            let raw = std::fs::read_to_string(IP_TABLES_NAMES)
                .is_ok_and(|names| names.lines().any(|t| t == "raw"));
            let legacy = match wanted && raw {
                true => Some(LegacyTrace::start(options)?),
                false => None,
            };
            Ok((nft, legacy, wanted && !raw))
        };
        let (nft, legacy, skipped) = match links {
            Some(p) => netns::run_in(p, start)??,
            None => start()?,
        };
        let notes = match skipped {
            true => vec![
                "the Service's rules are in legacy xtables, but its raw table does not exist: a TRACE rule would create it (and it would stay), so legacy rules are not traced".to_owned(),
            ],
            false => Vec::new(),
        };
        Ok(Self {
            nft,
            legacy,
            notes,
            paths: Recent::new(REMEMBERED),
        })
    }

    /// Reads the completed packet paths and keeps each query packet's (the client's side).
    pub fn poll(&mut self) -> Result<(), Error> {
        let mut paths = self.nft.poll()?;
        if let Some(l) = self.legacy.as_mut() {
            paths.extend(l.poll()?);
        }
        for p in &paths {
            self.keep(p);
        }
        Ok(())
    }

    fn keep(&mut self, p: &PacketPath) {
        let Some(t) = p.tuple else { return };
        let src = t.src;
        if t.dport != 53 || p.steps.is_empty() {
            return;
        }
        let client = SocketAddr::new(src, t.sport);
        let path = RulePath::from(p);
        // A drop decides the query's fate; a later copy's accept must not hide it.
        let dropped = |r: &RulePath| r.decided.as_ref().is_some_and(|d| d.verdict == "DROP");
        if self
            .paths
            .get(&client)
            .is_some_and(|old| dropped(old) && !dropped(&path))
        {
            return;
        }
        self.paths.insert(client, path);
    }

    /// Hands out every open path (the trace is ending: no message is coming to complete them).
    pub fn flush(&mut self) -> Result<(), Error> {
        let mut paths = self.nft.flush()?;
        if let Some(l) = self.legacy.as_mut() {
            paths.extend(l.flush()?);
        }
        for p in &paths {
            self.keep(p);
        }
        Ok(())
    }

    /// The path of the last query packet from `client`.
    pub fn path(&self, client: &SocketAddr) -> Option<RulePath> {
        self.paths.get(client).cloned()
    }

    /// Why a side of the trace did not run.
    pub fn notes(&self) -> &[String] {
        &self.notes
    }

    /// What each backend's trace read.
    pub fn counters(&self) -> (Counters, Option<Counters>) {
        (
            self.nft.counters(),
            self.legacy.as_ref().map(LegacyTrace::counters),
        )
    }
}
