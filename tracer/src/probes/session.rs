//! Loading, attaching and reading the eBPF programs. Dropping a `Session` detaches every program
//! (aya owns each link), so no exit path leaves a hook behind.
//!
//! # Layout
//! - this file: the session itself: loads the object with the configuration, hands it to the
//!   planner, keeps what must live as long as the programs.
//! - `planner`: every program's fate on this kernel (load, attach or skip, with the reason).
//! - `tc`: which links of the pod links' namespace get the TC programs (at the start, and as they
//!   come and go); their clsact qdiscs.
//! - `maps`: reading the ring buffer, the counters, the latency histogram and the slot table.
mod maps;
mod planner;
mod tc;

use std::{
    collections::HashMap,
    path::PathBuf,
    time::{Duration, Instant},
};

use aya::{
    Btf, Ebpf, EbpfLoader,
    maps::{HashMap as BpfHashMap, MapError},
    programs::TcAttachType,
};
use tracer_common::config::Config;

pub use self::maps::Counters;
use self::{
    maps::Maps,
    planner::{Planned, Planner, TcLinks},
    tc::Clsact,
};
use super::{
    module_fexit::{self, ModuleFexit},
    plan::{Plan, Tier},
};
use crate::{
    kernel::{btf::KernelBtf, features::Features},
    netns,
};

/// The eBPF object, built by build.rs.
static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/tracer"));

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Btf(#[from] crate::kernel::btf::Error),
    #[error("failed to load the eBPF object: {source} (are you root, with bpffs and BTF?)")]
    Load { source: aya::EbpfError },
    #[error("the eBPF object has no {kind} {name}")]
    Missing {
        kind: &'static str,
        name: &'static str,
    },
    #[error("failed to use map {name}: {source}")]
    Map {
        name: &'static str,
        source: MapError,
    },
    #[error("failed to attach TC programs in the pod links' namespace: {0}")]
    Netns(#[from] netns::Error),
    #[error("failed to write output: {source}")]
    Output { source: std::io::Error },
    #[error("--hooks {wanted} cannot be honoured on this kernel (it gets the {got} tier): {why}")]
    TierUnavailable {
        wanted: Tier,
        got: Tier,
        why: String,
    },
    #[error(transparent)]
    ModuleFexit(#[from] module_fexit::Error),
}

/// What to load and where.
#[derive(Debug, Clone, Default)]
pub struct Options {
    /// Filters and switches (the kernel offsets are filled in here).
    pub config: Config,
    /// The deep tier wanted; `None` picks the best this kernel allows.
    pub tier: Option<Tier>,
    /// The namespace holding the pod links (node side); `None`: the tracer's own.
    pub links_netns: Option<PathBuf>,
    /// Namespaces to trace (inode numbers); empty: all.
    pub netns_filter: Vec<u32>,
    /// False: load every program to let the verifier check it, attach none.
    pub attach: bool,
}

/// Loaded programs and their maps.
pub struct Session {
    /// Owns every program and link: dropping it detaches them.
    ebpf: Ebpf,
    /// The clsact qdiscs this session added (kernels before 6.6): removed after the programs.
    clsact: Clsact,
    /// The TC programs loaded to be attached, and how: each new pod link gets them.
    tc_programs: Vec<(&'static str, TcAttachType)>,
    /// aya's link ids of the TC programs, by interface index (to let go of a link that went).
    tc_links: TcLinks,
    /// fexit programs on module functions, loaded outside aya: dropping them detaches them.
    _module_fexits: Vec<ModuleFexit>,
    maps: Maps,
    /// What was attached, verified or skipped, and why.
    pub plan: Plan,
    /// `enum skb_drop_reason` names of this kernel.
    pub drop_reasons: HashMap<u32, String>,
    /// Interface names of the pod links' namespace, by index.
    pub link_names: HashMap<u32, String>,
    /// How long loading and attaching took.
    pub attach_time: Duration,
    /// Records whose size was not an `Event`'s, or that the reader refused (an unknown kind or
    /// constant): never expected; counted, not guessed at.
    pub malformed_records: u64,
    /// Pod links that appeared after the start and got the TC programs.
    pub links_added: u64,
    /// Pod links with TC programs that went away.
    pub links_removed: u64,
}

impl Session {
    /// Loads the object, then loads and attaches each program as this kernel and `opts` allow.
    pub fn start(mut opts: Options) -> Result<Self, Error> {
        let started = Instant::now();
        let kbtf = KernelBtf::load()?;
        opts.config.offsets = kbtf.offsets()?;
        let drop_reasons = kbtf.drop_reasons();
        opts.config.not_drops = crate::kernel::btf::not_drops(&drop_reasons);
        let tracepoints = planner::tracepoint_args(&kbtf)?;
        let features = Features::detect();
        let btf = Btf::from_sys_fs().map_err(|e| Error::Load {
            source: aya::EbpfError::BtfError(e),
        })?;
        let mut ebpf = EbpfLoader::new()
            .btf(Some(&btf))
            .override_global("CONFIG", &opts.config, true)
            .load(OBJECT)
            .map_err(|source| Error::Load { source })?;
        if !opts.netns_filter.is_empty() {
            fill_netns_filter(&mut ebpf, &opts.netns_filter)?;
        }
        let mut planner = Planner::new(&opts, &btf, &kbtf, tracepoints, features.kprobes, &ebpf)?;
        drop(kbtf);
        let outcomes = planner.run(&mut ebpf)?;
        let Planned {
            link_names,
            clsact,
            tc_programs,
            tc_links,
            module_fexits,
        } = planner.finish();
        let clsact = Clsact {
            netns: opts.links_netns.clone(),
            links: clsact,
        };
        drop(btf);
        let plan = Plan::from_outcomes(outcomes);
        if let Some(wanted @ (Tier::Fentry | Tier::Kprobe)) = opts.tier.filter(|_| opts.attach)
            && plan.tier != wanted
        {
            return Err(Error::TierUnavailable {
                wanted,
                got: plan.tier,
                why: plan.why_not(wanted),
            });
        }
        // Parsing the kernel's BTF (aya, for tp_btf and fexit) leaves about 16 MB of freed heap
        // that glibc keeps; give it back so the steady footprint is the tracer's own.
        // SAFETY: malloc_trim has no preconditions.
        unsafe { nix::libc::malloc_trim(0) };
        Ok(Self {
            maps: Maps::take(&mut ebpf)?,
            ebpf,
            _module_fexits: module_fexits,
            clsact,
            tc_programs,
            tc_links,
            plan,
            drop_reasons,
            link_names,
            attach_time: started.elapsed(),
            malformed_records: 0,
            links_added: 0,
            links_removed: 0,
        })
    }
}

/// Restricts tracing to the namespaces whose inode numbers are in `namespaces`.
fn fill_netns_filter(ebpf: &mut Ebpf, namespaces: &[u32]) -> Result<(), Error> {
    let mut filter: BpfHashMap<_, u32, u8> =
        BpfHashMap::try_from(ebpf.map_mut("NETNS_FILTER").ok_or(Error::Missing {
            kind: "map",
            name: "NETNS_FILTER",
        })?)
        .map_err(|source| Error::Map {
            name: "NETNS_FILTER",
            source,
        })?;
    for ns in namespaces {
        filter.insert(ns, 1, 0).map_err(|source| Error::Map {
            name: "NETNS_FILTER",
            source,
        })?;
    }
    Ok(())
}
