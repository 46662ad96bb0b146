//! TC programs on the pod links: which interfaces of the links' namespace get them, the clsact
//! qdiscs kernels before 6.6 need for them, and what a killed tracer left there before 6.6.

use std::path::PathBuf;

use aya::programs::{SchedClassifier, TcAttachType, tc::SchedClassifierLinkId};

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
    /// (index, name, aya's link id) of each link the program attached to.
    pub(super) links: Vec<(u32, String, SchedClassifierLinkId)>,
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
    let tcx = crate::kernel::features::has_tcx();
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
            if !tcx {
                remove_orphans(&name);
            }
            if add_clsact(&name, tcx) {
                added.push(name.clone());
            }
            match tc.attach(&name, kind) {
                Ok(id) => ok.push((index, name, id)),
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

/// The prefix of the tracer's TC programs' names (`device_tc_ingress`, `device_tc_egress`), as
/// the filters aya adds carry them (`bpf_name`).
const PROGRAM_PREFIX: &str = "device_tc_";

/// One TC filter of `tc -j filter show`: a header line per priority has no options.
#[derive(serde::Deserialize)]
struct Filter {
    pref: u32,
    kind: String,
    options: Option<FilterOptions>,
}

#[derive(serde::Deserialize)]
struct FilterOptions {
    handle: Option<String>,
    bpf_name: Option<String>,
    prog: Option<FilterProgram>,
}

#[derive(serde::Deserialize)]
struct FilterProgram {
    id: u32,
}

/// Before TCX a TC program hangs on its link as a netlink filter that outlives a killed tracer
/// (and so does the clsact qdisc it added): removes the filters of the tracer's programs on link
/// `name` that no process holds (a running tracer holds its own), and the clsact qdisc when
/// nothing else is left on it. Best effort, with iproute2's `tc` (aya 0.14 lists no filters).
fn remove_orphans(name: &str) {
    let show = |dir: &str| -> Vec<Filter> {
        std::process::Command::new("tc")
            .args(["-j", "filter", "show", "dev", name, dir])
            .output()
            .ok()
            .and_then(|o| serde_json::from_slice(&o.stdout).ok())
            .unwrap_or_default()
    };
    let held = crate::process::held_bpf_programs();
    let mut removed = 0;
    for dir in ["ingress", "egress"] {
        for f in show(dir) {
            let Some(FilterOptions {
                handle: Some(handle),
                bpf_name: Some(program),
                prog: Some(FilterProgram { id }),
            }) = f.options
            else {
                continue;
            };
            if f.kind != "bpf" || !program.starts_with(PROGRAM_PREFIX) || held.contains(&id) {
                continue;
            }
            let pref = f.pref.to_string();
            let args = ["filter", "del", "dev", name, dir, "pref", &pref];
            let deleted = std::process::Command::new("tc")
                .args(args)
                .args(["handle", &handle, "bpf"])
                .status();
            if deleted.is_ok_and(|s| s.success()) {
                removed += 1;
            }
        }
    }
    if removed == 0 {
        return;
    }
    let bare = show("ingress").is_empty() && show("egress").is_empty();
    if bare {
        let _ = std::process::Command::new("tc")
            .args(["qdisc", "del", "dev", name, "clsact"])
            .status();
    }
    log::warn!(
        "removed {removed} TC filter(s){} a killed tracer left on {name}",
        if bare { " and the clsact qdisc" } else { "" }
    );
}

/// Before TCX, adds the clsact qdisc link `name` needs; true when this call added it. An existing
/// clsact (another tool's, or this session's other direction) is used as it is and left in place.
fn add_clsact(name: &str, tcx: bool) -> bool {
    !tcx && aya::programs::tc::qdisc_add_clsact(name).is_ok()
}

/// What `attach_link` did for one program on one new link.
pub(super) struct AttachedOne {
    /// aya's link id, or why the attach failed.
    pub(super) id: Result<SchedClassifierLinkId, String>,
    /// This call added the link's clsact qdisc.
    pub(super) clsact_added: bool,
}

/// Attaches a TC program to one link of the links' namespace that appeared after the start, as
/// [`attach_links`] does to each it lists (clsact qdisc first before 6.6).
pub(super) fn attach_link(
    tc: &mut SchedClassifier,
    kind: TcAttachType,
    name: &str,
    netns_path: Option<&PathBuf>,
) -> Result<AttachedOne, Error> {
    let tcx = crate::kernel::features::has_tcx();
    let mut work = move || {
        let clsact_added = add_clsact(name, tcx);
        let id = tc
            .attach(name, kind)
            .map_err(|e| format!("failed on {name}: {}", err_text(&e)));
        AttachedOne { id, clsact_added }
    };
    Ok(match netns_path {
        Some(p) => netns::run_in(p, work)?,
        None => work(),
    })
}

impl super::Session {
    /// Attaches the TC programs to a pod link that appeared after the start (as at the start:
    /// clsact qdisc first before 6.6, recorded for cleanup) and counts it in `links_added`.
    /// Returns why a program failed to attach, if one did; `Ok(None)` also when no TC program is
    /// loaded (the plan skipped them) or the link is already attached.
    pub fn attach_link(&mut self, link: &Link) -> Result<Option<String>, Error> {
        if self.tc_programs.is_empty() || self.tc_links.contains_key(&link.index) {
            return Ok(None);
        }
        let mut ids = Vec::new();
        let mut failed = Vec::new();
        for (program, kind) in self.tc_programs.clone() {
            let tc: &mut SchedClassifier = self
                .ebpf
                .program_mut(program)
                .and_then(|p| p.try_into().ok())
                .ok_or(Error::Missing {
                    kind: "TC program",
                    name: program,
                })?;
            let one = attach_link(tc, kind, &link.name, self.clsact.netns.as_ref())?;
            if one.clsact_added {
                self.clsact.links.push(link.name.clone());
            }
            match one.id {
                Ok(id) => ids.push((program, id)),
                Err(e) => failed.push(format!("{program}: {e}")),
            }
        }
        if !ids.is_empty() {
            self.tc_links.insert(link.index, ids);
            self.link_names.insert(link.index, link.name.clone());
            self.links_added += 1;
        }
        Ok((!failed.is_empty()).then(|| failed.join("; ")))
    }

    /// Lets go of a pod link that went away: its TC programs went with it (the kernel removes a
    /// device's filters and TCX links), so aya's handles are dropped without detaching, and its
    /// clsact qdisc is no longer this session's to delete. Counts it in `links_removed`; false
    /// (and no count) for a link the programs were not on.
    pub fn forget_link(&mut self, index: u32, name: &str) -> bool {
        let Some(ids) = self.tc_links.remove(&index) else {
            return false;
        };
        for (program, id) in ids {
            let tc: Option<&mut SchedClassifier> = self
                .ebpf
                .program_mut(program)
                .and_then(|p| p.try_into().ok());
            if let Some(link) = tc.and_then(|tc| tc.take_link(id).ok()) {
                // A TCX link's fd is closed; a netlink filter's handle (which would detach by
                // interface index, maybe another interface's by now) is dropped as it is.
                drop(aya::programs::links::FdLink::try_from(link));
            }
        }
        self.clsact.links.retain(|l| l != name);
        self.links_removed += 1;
        true
    }
}
