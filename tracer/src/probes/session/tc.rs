//! TC programs on the pod links: which interfaces of the links' namespace get them, and the
//! clsact qdiscs kernels before 6.6 need for them.

use std::path::PathBuf;

use aya::programs::{SchedClassifier, TcAttachType};

use super::{Error, planner::err_text};
use crate::{
    links::{self, Link, LinkKind},
    netns,
};

/// The clsact qdiscs a session added (TC before 6.6 hangs its programs there; from 6.6 aya uses
/// TCX links, which need none). Dropped after the programs, it deletes them.
pub(super) struct Clsact {
    /// The links' namespace; `None`: the tracer's own.
    pub(super) netns: Option<PathBuf>,
    /// Links this session added a clsact qdisc to.
    pub(super) links: Vec<String>,
}

impl Drop for Clsact {
    fn drop(&mut self) {
        if self.links.is_empty() {
            return;
        }
        let links = std::mem::take(&mut self.links);
        let work = move || {
            for link in &links {
                // iproute2's tc: aya 0.14 can add a clsact qdisc but not delete one.
                let deleted = std::process::Command::new("tc")
                    .args(["qdisc", "del", "dev", link, "clsact"])
                    .stderr(std::process::Stdio::null())
                    .status();
                if !deleted.is_ok_and(|s| s.success()) {
                    log::warn!("failed to delete the clsact qdisc the tracer added on {link}");
                }
            }
        };
        let result = match &self.netns {
            Some(p) => netns::run_in(p, work),
            None => {
                work();
                Ok(())
            }
        };
        if let Err(e) = result {
            log::warn!("failed to delete the tracer's clsact qdiscs: {e}");
        }
    }
}

/// What `attach_links` did.
pub(super) struct Attached {
    /// (index, name) of each link the program attached to.
    pub(super) links: Vec<(u32, String)>,
    /// A note on failures, empty when none.
    pub(super) note: String,
    /// Links this call added a clsact qdisc to.
    pub(super) clsact_added: Vec<String>,
}

/// Attaches a TC program to the pod links in the links' namespace: its veths (a bridge's own
/// device and the uplink would see the same packets again, at a cost per packet). Where it has no
/// veth (another CNI), to every interface but loopback. Before 6.6 (no TCX) each link needs a
/// clsact qdisc first.
pub(super) fn attach_links(
    tc: &mut SchedClassifier,
    kind: TcAttachType,
    netns_path: Option<&PathBuf>,
) -> Result<Attached, Error> {
    let tcx = aya::util::KernelVersion::current()
        .is_ok_and(|v| v >= aya::util::KernelVersion::new(6, 6, 0));
    let mut work = move || {
        let mut ok = Vec::new();
        let mut failed = Vec::new();
        let mut added = Vec::new();
        // The netlink socket is opened in this thread's namespace.
        let all = match links::list() {
            Ok(all) => all,
            Err(e) => {
                return Attached {
                    links: ok,
                    note: format!(" (could not list interfaces: {e})"),
                    clsact_added: added,
                };
            }
        };
        let mut targets: Vec<Link> = all
            .iter()
            .filter(|l| l.kind == LinkKind::Veth)
            .cloned()
            .collect();
        if targets.is_empty() {
            failed.push("no veth found: attached to every interface".to_owned());
            targets = all;
        }
        for Link { name, index, .. } in targets {
            // An existing clsact (another tool's, or this session's other direction) is used
            // as it is and left in place.
            if !tcx && aya::programs::tc::qdisc_add_clsact(&name).is_ok() {
                added.push(name.clone());
            }
            match tc.attach(&name, kind) {
                Ok(_) => ok.push((index, name)),
                Err(e) => failed.push(format!("failed on {name}: {}", err_text(&e))),
            }
        }
        let note = if failed.is_empty() {
            String::new()
        } else {
            format!(" ({})", failed.join("; "))
        };
        Attached {
            links: ok,
            note,
            clsact_added: added,
        }
    };
    Ok(match netns_path {
        Some(p) => netns::run_in(p, work)?,
        None => work(),
    })
}
