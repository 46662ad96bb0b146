//! Each program's fate on this kernel: the planner walks the probe table, loads what this kernel
//! can run, attaches what the options ask for, and records every skip with its reason.

use std::collections::HashMap;

use aya::{
    Btf, Ebpf,
    programs::{
        BtfTracePoint, FExit, KProbe, ProgramError, SchedClassifier, TcAttachType,
        tc::SchedClassifierLinkId,
    },
};
use aya_obj::btf::BtfKind;
use tracer_common::config::KernelOffsets;

use super::{
    Error, OBJECT, Options,
    tc::{Attached, attach_links},
};
use crate::{
    kernel::btf::KernelBtf,
    probes::{
        module_fexit::{self, ModuleFexit},
        plan::{Fate, Outcome, Tier},
        table::{Hook, Need, PROBES, Probe, Stage},
    },
};

/// Each tracepoint probe's arguments on this kernel (`None`: it has no such tracepoint).
pub(super) fn tracepoint_args(
    kbtf: &KernelBtf,
) -> Result<HashMap<&'static str, Option<Vec<String>>>, Error> {
    let mut tracepoints = HashMap::new();
    for p in PROBES.iter().filter(|p| p.hook == Hook::Tracepoint) {
        tracepoints.insert(p.targets[0], kbtf.tracepoint_args(p.targets[0])?);
    }
    Ok(tracepoints)
}

/// An error and its causes on one line; a verifier log (many lines) is cut to its first line and
/// logged whole at debug level (`RUST_LOG=debug`).
pub(super) fn err_text(e: &ProgramError) -> String {
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

/// Decides and carries out each program's fate on this kernel.
pub(super) struct Planner<'a> {
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
    /// The TC programs loaded to be attached, and how.
    tc_programs: Vec<(&'static str, TcAttachType)>,
    /// aya's link ids of the TC programs, by interface index.
    tc_links: TcLinks,
    /// Loads fexit programs on functions in modules (aya 0.14 only targets vmlinux).
    modules: module_fexit::Loader,
    /// Those loaded.
    module_fexits: Vec<ModuleFexit>,
}

/// aya's link ids of the TC programs on each interface (by index): (program, link id).
pub(super) type TcLinks = HashMap<u32, Vec<(&'static str, SchedClassifierLinkId)>>;

/// What a session keeps of its planner.
pub(super) struct Planned {
    /// Interface names of the links TC attached to, by index.
    pub(super) link_names: HashMap<u32, String>,
    /// Links the session added a clsact qdisc to.
    pub(super) clsact: Vec<String>,
    /// The TC programs loaded to be attached (to links appearing later too), and how.
    pub(super) tc_programs: Vec<(&'static str, TcAttachType)>,
    /// aya's link ids of the TC programs, by interface index.
    pub(super) tc_links: TcLinks,
    /// fexit programs on module functions, loaded outside aya.
    pub(super) module_fexits: Vec<ModuleFexit>,
}

const LOADED: &str = "loaded, not attached";

impl<'a> Planner<'a> {
    /// A planner for the object loaded in `ebpf`: `tracepoints` from [`tracepoint_args`],
    /// `kprobes` whether this kernel has the kprobe PMU.
    pub(super) fn new(
        opts: &'a Options,
        btf: &'a Btf,
        kbtf: &KernelBtf,
        tracepoints: HashMap<&'static str, Option<Vec<String>>>,
        kprobes: bool,
        ebpf: &Ebpf,
    ) -> Result<Self, Error> {
        // Function targets from BTF (vmlinux and module) and kallsyms (kprobes need no BTF).
        let targets: Vec<&'static str> = PROBES
            .iter()
            .filter(|p| matches!(p.hook, Hook::Fexit | Hook::Kprobe | Hook::Kretprobe))
            .flat_map(|p| p.targets.iter().copied())
            .collect();
        let mut functions = crate::kernel::symbols::functions(&targets).unwrap_or_default();
        functions.extend(targets.iter().filter(|f| kbtf.has_function(f)));
        Ok(Planner {
            functions,
            opts,
            btf,
            tracepoints,
            kprobes,
            fexit_stages: Vec::new(),
            link_names: HashMap::new(),
            clsact: Vec::new(),
            tc_programs: Vec::new(),
            tc_links: HashMap::new(),
            modules: module_fexit::Loader::new(OBJECT, ebpf.maps())?.global("CONFIG", &opts.config),
            module_fexits: Vec::new(),
        })
    }

    /// Every program's fate, in table order: loaded, attached or skipped as this kernel and the
    /// options allow.
    pub(super) fn run(&mut self, ebpf: &mut Ebpf) -> Result<Vec<Outcome>, Error> {
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
                    self.tc(probe, prog.try_into().map_err(|_| wrong_type())?)?
                }
                Hook::Tracepoint => {
                    self.tracepoint(probe, prog.try_into().map_err(|_| wrong_type())?)
                }
                Hook::Fexit => self.fexit(probe, prog.try_into().map_err(|_| wrong_type())?),
                Hook::Kprobe | Hook::Kretprobe => {
                    self.kprobe(probe, prog.try_into().map_err(|_| wrong_type())?)
                }
            };
            outcomes.push(Outcome::new(probe, fate));
        }
        Ok(outcomes)
    }

    /// What the session keeps; the module loader is dropped.
    pub(super) fn finish(self) -> Planned {
        Planned {
            link_names: self.link_names,
            clsact: self.clsact,
            tc_programs: self.tc_programs,
            tc_links: self.tc_links,
            module_fexits: self.module_fexits,
        }
    }

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
        self.tc_programs.push((probe.program, kind));
        let mut attached = Vec::new();
        for (index, name, id) in names {
            self.link_names.insert(index, name.clone());
            let ids = self.tc_links.entry(index).or_default();
            ids.push((probe.program, id));
            attached.push(name);
        }
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
