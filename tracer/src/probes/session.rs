//! Loading, attaching and reading the eBPF programs. Dropping a `Session` detaches every program
//! (aya owns each link), so no exit path leaves a hook behind.

use std::{
    collections::HashMap,
    path::PathBuf,
    time::{Duration, Instant},
};

use aya::{
    Btf, Ebpf, EbpfLoader,
    maps::{Array, HashMap as BpfHashMap, MapData, MapError, PerCpuArray, RingBuf},
    programs::{BtfTracePoint, FExit, KProbe, ProgramError, SchedClassifier, TcAttachType},
};
use aya_obj::btf::BtfKind;
use tracer_common::{
    config::{Config, KernelOffsets},
    counter,
    event::Event,
    flow::{SLOTS, Slot},
};

use super::{
    module_fexit::{self, ModuleFexit},
    plan::{Fate, Outcome, Plan, Tier},
    table::{Hook, Need, PROBES, Probe, Stage},
};
use crate::{
    kernel::{btf::KernelBtf, features::Features},
    links::{self, Link, LinkKind},
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

/// Counters summed over CPUs.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Counters {
    /// Queries seen leaving a client.
    pub queries: u64,
    /// Queries seen reaching an endpoint after DNAT.
    pub at_endpoint: u64,
    /// Answers seen leaving an endpoint.
    pub from_endpoint: u64,
    /// Answers delivered to the asking client.
    pub answered: u64,
    /// Answers slower than the threshold.
    pub slow: u64,
    /// DNS packets dropped.
    pub drops: u64,
    /// ICMP errors about DNS packets.
    pub icmp: u64,
    /// Pending queries pushed out of the slot table by newer ones.
    pub evicted: u64,
    /// Endpoint packets or answers with no matching query.
    pub unmatched: u64,
    /// DNS-port packets that did not parse.
    pub parse_errors: u64,
    /// Records lost to a full ring buffer.
    pub lost_events: u64,
    /// Socket-side drops.
    pub socket_drops: u64,
    /// Netfilter/NAT/conntrack-confirm events (kprobe/fentry tier).
    pub deep_events: u64,
}

/// Loaded programs and their maps.
pub struct Session {
    /// Owns every program and link: dropping it detaches them.
    _ebpf: Ebpf,
    /// The clsact qdiscs this session added (kernels before 6.6): removed after the programs.
    _clsact: Clsact,
    /// fexit programs on module functions, loaded outside aya: dropping them detaches them.
    _module_fexits: Vec<ModuleFexit>,
    events: RingBuf<MapData>,
    counters: PerCpuArray<MapData, u64>,
    latency: PerCpuArray<MapData, u64>,
    slots: Array<MapData, Slot>,
    pending: Array<MapData, [u8; SLOTS as usize]>,
    /// What was attached, verified or skipped, and why.
    pub plan: Plan,
    /// `enum skb_drop_reason` names of this kernel.
    pub drop_reasons: HashMap<u32, String>,
    /// Interface names of the pod links' namespace, by index.
    pub link_names: HashMap<u32, String>,
    /// How long loading and attaching took.
    pub attach_time: Duration,
    /// Records whose size was not an `Event`'s (never expected; counted, not guessed at).
    pub malformed_records: u64,
}

/// An error and its causes on one line; a verifier log (many lines) is cut to its first line and
/// logged whole at debug level (`RUST_LOG=debug`).
fn err_text(e: &ProgramError) -> String {
    let mut s = e.to_string();
    let mut src = std::error::Error::source(e);
    while let Some(inner) = src {
        s.push_str(": ");
        s.push_str(&inner.to_string());
        src = inner.source();
    }
    match s.split_once('\n') {
        Some((first, _)) => {
            log::debug!("{s}");
            format!("{} (verifier log: RUST_LOG=debug)", first.trim_end())
        }
        None => s,
    }
}

fn is_eperm(e: &ProgramError) -> bool {
    let mut src: Option<&dyn std::error::Error> = Some(e);
    while let Some(inner) = src {
        if let Some(io) = inner.downcast_ref::<std::io::Error>() {
            return io.raw_os_error() == Some(nix::libc::EPERM);
        }
        src = inner.source();
    }
    false
}

impl Session {
    /// Loads the object, then loads and attaches each program as this kernel and `opts` allow.
    pub fn start(mut opts: Options) -> Result<Self, Error> {
        let started = Instant::now();
        let kbtf = KernelBtf::load()?;
        opts.config.offsets = kbtf.offsets()?;
        let drop_reasons = kbtf.drop_reasons();
        opts.config.not_drops = crate::kernel::btf::not_drops(&drop_reasons);
        let mut tracepoints = HashMap::new();
        for p in PROBES.iter().filter(|p| p.hook == Hook::Tracepoint) {
            tracepoints.insert(p.targets[0], kbtf.tracepoint_args(p.targets[0])?);
        }
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
            let mut filter: BpfHashMap<_, u32, u8> =
                BpfHashMap::try_from(ebpf.map_mut("NETNS_FILTER").ok_or(Error::Missing {
                    kind: "map",
                    name: "NETNS_FILTER",
                })?)
                .map_err(|source| Error::Map {
                    name: "NETNS_FILTER",
                    source,
                })?;
            for ns in &opts.netns_filter {
                filter.insert(ns, 1, 0).map_err(|source| Error::Map {
                    name: "NETNS_FILTER",
                    source,
                })?;
            }
        }

        // Function targets from BTF (vmlinux and module) and kallsyms (kprobes need no BTF).
        let targets: Vec<&'static str> = PROBES
            .iter()
            .filter(|p| matches!(p.hook, Hook::Fexit | Hook::Kprobe | Hook::Kretprobe))
            .flat_map(|p| p.targets.iter().copied())
            .collect();
        let mut functions = crate::kernel::symbols::functions(&targets).unwrap_or_default();
        functions.extend(targets.iter().filter(|f| kbtf.has_function(f)));
        let mut plan = Planner {
            functions,
            opts: &opts,
            btf: &btf,
            tracepoints,
            kprobes: features.kprobes,
            fexit_stages: Vec::new(),
            link_names: HashMap::new(),
            clsact: Vec::new(),
            modules: module_fexit::Loader::new(OBJECT, ebpf.maps())?.global("CONFIG", &opts.config),
            module_fexits: Vec::new(),
        };
        drop(kbtf);
        let mut outcomes = Vec::new();
        for probe in PROBES {
            let prog = ebpf.program_mut(probe.program).ok_or(Error::Missing {
                kind: "program",
                name: probe.program,
            })?;
            let wrong_type = || Error::Missing {
                kind: "program of its hook type",
                name: probe.program,
            };
            let fate = match probe.hook {
                Hook::TcIngress | Hook::TcEgress => {
                    plan.tc(probe, prog.try_into().map_err(|_| wrong_type())?)?
                }
                Hook::Tracepoint => {
                    plan.tracepoint(probe, prog.try_into().map_err(|_| wrong_type())?)
                }
                Hook::Fexit => plan.fexit(probe, prog.try_into().map_err(|_| wrong_type())?),
                Hook::Kprobe | Hook::Kretprobe => {
                    plan.kprobe(probe, prog.try_into().map_err(|_| wrong_type())?)
                }
            };
            outcomes.push(Outcome::new(probe, fate));
        }
        let link_names = plan.link_names;
        let clsact = Clsact {
            netns: opts.links_netns.clone(),
            links: plan.clsact,
        };
        let module_fexits = plan.module_fexits;
        drop(plan.modules);
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
            events: RingBuf::try_from(take_map(&mut ebpf, "EVENTS")?).map_err(|source| {
                Error::Map {
                    name: "EVENTS",
                    source,
                }
            })?,
            counters: PerCpuArray::try_from(take_map(&mut ebpf, "COUNTERS")?).map_err(
                |source| Error::Map {
                    name: "COUNTERS",
                    source,
                },
            )?,
            latency: PerCpuArray::try_from(take_map(&mut ebpf, "LATENCY")?).map_err(|source| {
                Error::Map {
                    name: "LATENCY",
                    source,
                }
            })?,
            pending: Array::try_from(take_map(&mut ebpf, "PENDING")?).map_err(|source| {
                Error::Map {
                    name: "PENDING",
                    source,
                }
            })?,
            slots: Array::try_from(take_map(&mut ebpf, "QUERY_SLOTS")?).map_err(|source| {
                Error::Map {
                    name: "QUERY_SLOTS",
                    source,
                }
            })?,
            _ebpf: ebpf,
            _module_fexits: module_fexits,
            _clsact: clsact,
            plan,
            drop_reasons,
            link_names,
            attach_time: started.elapsed(),
            malformed_records: 0,
        })
    }

    /// Hands every record waiting in the ring buffer to `f`; returns how many.
    pub fn drain(&mut self, mut f: impl FnMut(Event)) -> usize {
        let mut n = 0;
        while let Some(item) = self.events.next() {
            if item.len() < std::mem::size_of::<Event>() {
                self.malformed_records += 1;
                continue;
            }
            // SAFETY: the kernel wrote an `Event` (same #[repr(C)] type); read unaligned.
            let e = unsafe { std::ptr::read_unaligned(item.as_ptr() as *const Event) };
            f(e);
            n += 1;
        }
        n
    }

    /// The per-CPU counters, summed.
    pub fn counters(&self) -> Result<Counters, Error> {
        let get = |i: u32| -> Result<u64, Error> {
            Ok(self
                .counters
                .get(&i, 0)
                .map_err(|source| Error::Map {
                    name: "COUNTERS",
                    source,
                })?
                .iter()
                .sum())
        };
        Ok(Counters {
            queries: get(counter::QUERIES)?,
            at_endpoint: get(counter::AT_ENDPOINT)?,
            from_endpoint: get(counter::FROM_ENDPOINT)?,
            answered: get(counter::ANSWERED)?,
            slow: get(counter::SLOW)?,
            drops: get(counter::DROPS)?,
            icmp: get(counter::ICMP)?,
            evicted: get(counter::EVICTED)?,
            unmatched: get(counter::UNMATCHED)?,
            parse_errors: get(counter::PARSE_ERRORS)?,
            lost_events: get(counter::LOST_EVENTS)?,
            socket_drops: get(counter::SOCKET_DROPS)?,
            deep_events: get(counter::DEEP_EVENTS)?,
        })
    }

    /// The latency histogram (log2 microsecond buckets), summed over CPUs.
    pub fn latency_histogram(&self) -> Result<Vec<u64>, Error> {
        (0..counter::LATENCY_BUCKETS)
            .map(|i| {
                Ok(self
                    .latency
                    .get(&i, 0)
                    .map_err(|source| Error::Map {
                        name: "LATENCY",
                        source,
                    })?
                    .iter()
                    .sum())
            })
            .collect()
    }

    /// Every slot holding a query still waiting for its answer: the kernel's pending index says
    /// which to read (one lookup, then one per query in flight, not one per slot).
    pub fn pending(&self) -> Result<Vec<Slot>, Error> {
        let marks = self.pending.get(&0, 0).map_err(|source| Error::Map {
            name: "PENDING",
            source,
        })?;
        let mut out = Vec::new();
        for i in (0..SLOTS).filter(|i| marks[*i as usize] != 0) {
            let s = self.slots.get(&i, 0).map_err(|source| Error::Map {
                name: "QUERY_SLOTS",
                source,
            })?;
            if s.state == tracer_common::flow::state::PENDING {
                out.push(s);
            }
        }
        Ok(out)
    }
}

fn take_map(ebpf: &mut Ebpf, name: &'static str) -> Result<aya::maps::Map, Error> {
    ebpf.take_map(name)
        .ok_or(Error::Missing { kind: "map", name })
}

/// Decides and carries out each program's fate on this kernel.
struct Planner<'a> {
    /// Kernel functions (probe targets) this kernel has.
    functions: Vec<&'static str>,
    opts: &'a Options,
    btf: &'a Btf,
    /// Each tracepoint's arguments (`None`: this kernel has no such tracepoint).
    tracepoints: HashMap<&'static str, Option<Vec<String>>>,
    kprobes: bool,
    /// Stages an fexit program covers: their kprobes stay unattached.
    fexit_stages: Vec<Stage>,
    /// Interface names of the links TC attached to.
    link_names: HashMap<u32, String>,
    /// Links this session added a clsact qdisc to.
    clsact: Vec<String>,
    /// Loads fexit programs on functions in modules (aya 0.14 only targets vmlinux).
    modules: module_fexit::Loader,
    /// Those loaded.
    module_fexits: Vec<ModuleFexit>,
}

const LOADED: &str = "loaded, not attached";

impl Planner<'_> {
    fn target(&self, probe: &Probe) -> Option<&'static str> {
        probe
            .targets
            .iter()
            .find(|t| self.functions.contains(*t))
            .copied()
    }

    /// Why this kernel cannot run the program, if it cannot: one line.
    fn unmet(&self, probe: &Probe) -> Option<String> {
        let o = &self.opts.config.offsets;
        let have = |v: &[u32]| v.iter().all(|v| *v != KernelOffsets::MISSING);
        match probe.needs {
            Need::Nothing => None,
            Need::NftStructs => (!have(&[
                o.nft_chain_table,
                o.nft_chain_name,
                o.nft_pktinfo_skb,
                o.nft_table_name,
            ]))
            .then(|| "no nf_tables structs in BTF (nf_tables not loaded)".to_owned()),
            Need::XtStructs => (!have(&[o.xt_table_name, o.hook_state_hook]))
                .then(|| "no xtables structs in BTF (x_tables not loaded)".to_owned()),
            Need::Args { min, max, layout } => {
                let name = probe.targets[0];
                match self.tracepoints.get(name) {
                    Some(Some(args)) if (min..=max).contains(&args.len()) => None,
                    Some(Some(args)) => Some(format!(
                        "tracepoint {name} has {} arguments here ({}), this program reads {}: {layout}",
                        args.len(),
                        args.join(", "),
                        if min == max {
                            format!("{min}")
                        } else {
                            format!("at least {min}")
                        },
                    )),
                    _ => Some(format!("this kernel has no tracepoint {name}")),
                }
            }
        }
    }

    fn tc(&mut self, probe: &Probe, tc: &mut SchedClassifier) -> Result<Fate, Error> {
        if let Err(e) = tc.load() {
            return Ok(Fate::Skipped {
                reason: format!("load refused: {}", err_text(&e)),
            });
        }
        if !self.opts.attach {
            return Ok(Fate::Verified {
                reason: LOADED.into(),
            });
        }
        let kind = if probe.hook == Hook::TcIngress {
            TcAttachType::Ingress
        } else {
            TcAttachType::Egress
        };
        let Attached {
            links: names,
            note: failures,
            clsact_added: added,
        } = attach_links(tc, kind, self.opts.links_netns.as_ref())?;
        self.clsact.extend(added);
        self.link_names.extend(names.iter().cloned());
        let mut attached: Vec<String> = names.into_iter().map(|(_, n)| n).collect();
        attached.sort();
        Ok(if attached.is_empty() {
            Fate::Skipped {
                reason: format!("no pod links to attach to{failures}"),
            }
        } else {
            Fate::Attached {
                to: format!("{} links: {}{failures}", attached.len(), attached.join(" ")),
            }
        })
    }

    fn tracepoint(&mut self, probe: &Probe, tp: &mut BtfTracePoint) -> Fate {
        let name = probe.targets[0];
        if let Some(reason) = self.unmet(probe) {
            return Fate::Skipped { reason };
        }
        if self.tracepoints.get(name).is_none_or(Option::is_none) {
            return Fate::Skipped {
                reason: format!("this kernel has no tracepoint {name}"),
            };
        }
        if let Err(e) = tp.load(name, self.btf) {
            return Fate::Skipped {
                reason: format!("tracepoint {name} refused: {}", err_text(&e)),
            };
        }
        if !self.opts.attach {
            return Fate::Verified {
                reason: LOADED.into(),
            };
        }
        match tp.attach() {
            Ok(_) => Fate::Attached {
                to: format!("tracepoint {name}"),
            },
            Err(e) => Fate::Skipped {
                reason: format!("attach to {name} failed: {}", err_text(&e)),
            },
        }
    }

    fn fexit(&mut self, probe: &Probe, fx: &mut FExit) -> Fate {
        // aya loads fexit on vmlinux functions; one in a module takes the module_fexit path.
        let in_vmlinux = self
            .target(probe)
            .filter(|f| self.btf.id_by_type_name_kind(f, BtfKind::Func).is_ok());
        let module = match in_vmlinux {
            Some(_) => None,
            None => self.modules.locate(probe.targets),
        };
        let Some(f) = in_vmlinux
            .or(module.as_ref().map(|m| m.function))
            .or(self.target(probe))
        else {
            return Fate::Skipped {
                reason: format!("no kernel function among {:?}", probe.targets),
            };
        };
        if let (true, Some(tier @ (Tier::Kprobe | Tier::Tracepoint))) =
            (self.opts.attach, self.opts.tier)
        {
            return Fate::Skipped {
                reason: format!("--hooks {tier}"),
            };
        }
        if let Some(reason) = self.unmet(probe) {
            return Fate::Skipped { reason };
        }
        if let Some(m) = module {
            return self.module_fexit(probe, &m);
        }
        match fx.load(f, self.btf) {
            Err(e) if is_eperm(&e) => {
                return Fate::Skipped {
                    reason: format!(
                        "fexit on {f} refused at load (EPERM): this kernel has no ftrace function hooks"
                    ),
                };
            }
            Err(e) => {
                return Fate::Skipped {
                    reason: format!("fexit on {f} refused at load: {}", err_text(&e)),
                };
            }
            Ok(()) => {}
        }
        if !self.opts.attach {
            return Fate::Verified {
                reason: LOADED.into(),
            };
        }
        match fx.attach() {
            Ok(_) => {
                self.fexit_stages.push(probe.stage);
                Fate::Attached { to: f.to_owned() }
            }
            Err(e) => Fate::Skipped {
                reason: format!("fexit on {f} failed to attach: {}", err_text(&e)),
            },
        }
    }

    /// An fexit program on a module function, loaded by `module_fexit`.
    fn module_fexit(&mut self, probe: &Probe, m: &module_fexit::ModuleFunction) -> Fate {
        let mut fx = match self.modules.load(probe.program, m, Some(self.btf)) {
            Ok(fx) => fx,
            Err(e) if e.is_eperm() => {
                return Fate::Skipped {
                    reason: format!(
                        "fexit on {m} refused at load (EPERM): this kernel has no ftrace function hooks"
                    ),
                };
            }
            Err(e) => {
                if let Some(log) = e.verifier_log() {
                    log::debug!("verifier log of {} on {m}:\n{log}", probe.program);
                }
                return Fate::Skipped {
                    reason: e.to_string(),
                };
            }
        };
        let fate = if !self.opts.attach {
            Fate::Verified {
                reason: LOADED.into(),
            }
        } else if let Err(e) = fx.attach() {
            return Fate::Skipped {
                reason: e.to_string(),
            };
        } else {
            self.fexit_stages.push(probe.stage);
            Fate::Attached { to: m.to_string() }
        };
        self.module_fexits.push(fx);
        fate
    }

    fn kprobe(&mut self, probe: &Probe, kp: &mut KProbe) -> Fate {
        let Some(f) = self.target(probe) else {
            return Fate::Skipped {
                reason: format!("no kernel function among {:?}", probe.targets),
            };
        };
        if let Some(reason) = self.unmet(probe) {
            return Fate::Skipped { reason };
        }
        let unused = if self.fexit_stages.contains(&probe.stage) {
            Some("fexit covers this stage")
        } else if self.opts.tier == Some(Tier::Tracepoint) {
            Some("--hooks tracepoint")
        } else if self.opts.tier == Some(Tier::Fentry) {
            Some("--hooks fentry")
        } else if !self.kprobes {
            Some("this kernel has no kprobes (/sys/bus/event_source/devices/kprobe is missing)")
        } else {
            None
        };
        // When tracing, a program that will not attach is not loaded either (its verification
        // costs about 40 ms); `tracer hooks` verifies every one.
        if let (true, Some(why)) = (self.opts.attach, unused) {
            return Fate::Skipped {
                reason: format!("not loaded: {why}; `tracer hooks` load-verifies it"),
            };
        }
        if let Err(e) = kp.load() {
            return Fate::Skipped {
                reason: format!("refused at load: {}", err_text(&e)),
            };
        }
        if !self.opts.attach {
            return Fate::Verified {
                reason: format!(
                    "{LOADED}{}",
                    unused.map(|w| format!(": {w}")).unwrap_or_default()
                ),
            };
        }
        match kp.attach(f, 0) {
            Ok(_) => Fate::Attached { to: f.to_owned() },
            Err(e) => Fate::Verified {
                reason: format!("not attached to {f}: {}", err_text(&e)),
            },
        }
    }
}

/// The clsact qdiscs a session added (TC before 6.6 hangs its programs there; from 6.6 aya uses
/// TCX links, which need none). Dropped after the programs, it deletes them.
struct Clsact {
    netns: Option<PathBuf>,
    links: Vec<String>,
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
struct Attached {
    /// (index, name) of each link the program attached to.
    links: Vec<(u32, String)>,
    /// A note on failures, empty when none.
    note: String,
    /// Links this call added a clsact qdisc to.
    clsact_added: Vec<String>,
}

/// Attaches a TC program to the pod links in the links' namespace: its veths (a bridge's own
/// device and the uplink would see the same packets again, at a cost per packet). Where it has no
/// veth (another CNI), to every interface but loopback. Before 6.6 (no TCX) each link needs a
/// clsact qdisc first.
fn attach_links(
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
