//! fexit programs on functions that live in kernel modules (`nft_do_chain` in nf_tables,
//! `ipt_do_table` in ip_tables, `nf_nat_manip_pkt` in nf_nat, `__nf_conntrack_confirm` in
//! nf_conntrack on distribution kernels).
//!
//! The kernel takes such a program only with `attach_btf_obj_fd` (the module's BTF object) and
//! `attach_btf_id` (the function's id in the module's split BTF). aya 0.14's `FExit::load` only
//! ever targets vmlinux, so this module loads those programs itself: it parses the same eBPF object
//! with aya-obj (aya's own parser), points its map references at the maps aya already created for
//! the session (so records land in the same ring buffer and the programs read the same CONFIG),
//! and calls BPF_PROG_LOAD and BPF_RAW_TRACEPOINT_OPEN. A [`ModuleFexit`] owns the program and its
//! link: dropping it detaches and unloads.

use std::{
    collections::{HashMap, HashSet},
    ffi::CString,
    fmt, io,
    os::fd::{AsFd as _, AsRawFd as _, FromRawFd as _, OwnedFd},
    path::Path,
};

use aya_obj::generated::{
    bpf_attach_type::BPF_TRACE_FEXIT, bpf_attr, bpf_btf_info, bpf_cmd,
    bpf_prog_type::BPF_PROG_TYPE_TRACING,
};

/// Where the kernel exposes module BTF (one file per loaded module, split on top of vmlinux).
const SYSFS_BTF: &str = "/sys/kernel/btf";
/// How many verifier log lines an error message quotes.
const LOG_TAIL: usize = 3;
/// The verifier log buffer, allocated only to explain a refused load.
const LOG_SIZE: usize = 16 << 20;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(
        "this kernel has no BTF for module {module} ({SYSFS_BTF}/{module} is missing: module BTF needs 5.11+ with CONFIG_DEBUG_INFO_BTF_MODULES)"
    )]
    NoModuleBtf { module: String },
    #[error("failed to parse BTF of module {module}: {detail}")]
    ModuleBtf { module: String, detail: String },
    #[error("BTF of module {module} has no function {function}")]
    NoFunction { function: String, module: String },
    #[error("failed to find BTF of module {module} in the kernel")]
    KernelBtfObject { module: String },
    #[error("failed to {call} while looking for BTF of module {module}: {source}")]
    BtfObjects {
        call: &'static str,
        module: String,
        source: io::Error,
    },
    #[error("failed to share map {map} with programs on module functions: {source}")]
    DupMap { map: String, source: io::Error },
    #[error("failed to prepare the eBPF object for programs on module functions: {detail}")]
    Object { detail: String },
    #[error("the eBPF object has no {kind} {name}")]
    Missing { kind: &'static str, name: String },
    #[error("fexit on {target} refused at load: {source}{}", tail(.log))]
    Load {
        target: ModuleFunction,
        source: io::Error,
        /// The verifier's whole log (the message quotes its last lines).
        log: String,
    },
    #[error("fexit on {target} failed to attach: {source}")]
    Attach {
        target: ModuleFunction,
        source: io::Error,
    },
}

impl Error {
    /// The verifier's whole log of a refused load.
    pub fn verifier_log(&self) -> Option<&str> {
        match self {
            Self::Load { log, .. } => Some(log),
            _ => None,
        }
    }

    /// The kernel refused the load with EPERM (kernels without ftrace function hooks do).
    pub fn is_eperm(&self) -> bool {
        matches!(self, Self::Load { source, .. } if source.raw_os_error() == Some(libc::EPERM))
    }
}

fn tail(log: &str) -> String {
    let lines: Vec<&str> = log.lines().filter(|l| !l.trim().is_empty()).collect();
    if lines.is_empty() {
        return String::new();
    }
    format!(
        " (verifier: {})",
        lines[lines.len().saturating_sub(LOG_TAIL)..].join(" / ")
    )
}

fn chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut src = e.source();
    while let Some(inner) = src {
        s.push_str(": ");
        s.push_str(&inner.to_string());
        src = inner.source();
    }
    s
}

/// A kernel function and the module that holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModuleFunction {
    /// The function (a probe target).
    pub function: &'static str,
    /// The module, as `/proc/kallsyms` and `/sys/kernel/btf` name it.
    pub module: String,
}

impl fmt::Display for ModuleFunction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} [{}]", self.function, self.module)
    }
}

/// The module of each text symbol in `/proc/kallsyms` text (`addr t name\t[module]` lines);
/// symbols of the kernel image have none and are left out.
fn module_symbols(kallsyms: &str) -> HashMap<String, String> {
    kallsyms
        .lines()
        .filter_map(|line| {
            let mut f = line.split_whitespace();
            let (_, kind, name, module) = (f.next()?, f.next()?, f.next()?, f.next()?);
            let module = module.strip_prefix('[')?.strip_suffix(']')?;
            matches!(kind, "t" | "T").then(|| (name.to_owned(), module.to_owned()))
        })
        .collect()
}

/// The BTF type id of function `name` in a module's split BTF (ids continue after the base's).
fn func_id(split: &btf_rs::Btf, name: &str) -> Option<u32> {
    split
        .split()?
        .resolve_ids_by_name(name)
        .ok()?
        .into_iter()
        .find(|id| matches!(split.resolve_type_by_id(*id), Ok(btf_rs::Type::Func(_))))
}

fn sys_bpf(cmd: bpf_cmd, attr: &mut bpf_attr) -> io::Result<i64> {
    // SAFETY: `attr` is a valid, initialised bpf_attr of the size passed; the kernel reads and
    // writes only within it and the buffers its fields point to, which the callers keep alive.
    let r = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd as libc::c_int,
            attr as *mut bpf_attr,
            size_of::<bpf_attr>(),
        )
    };
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(r)
    }
}

/// A syscall that returns a new file descriptor.
fn sys_bpf_fd(cmd: bpf_cmd, attr: &mut bpf_attr) -> io::Result<OwnedFd> {
    let fd = sys_bpf(cmd, attr)?;
    // SAFETY: the command returned a new descriptor that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

fn zeroed_attr() -> bpf_attr {
    // SAFETY: bpf_attr is plain data; all zeroes is its documented "unset" state.
    unsafe { std::mem::zeroed() }
}

/// The kernel's BTF object of `module` (BPF_BTF_GET_NEXT_ID, BPF_BTF_GET_FD_BY_ID,
/// BPF_OBJ_GET_INFO_BY_FD until a kernel BTF has the module's name).
fn kernel_btf_object(module: &str) -> Result<OwnedFd, Error> {
    let err = |call, source| Error::BtfObjects {
        call,
        module: module.to_owned(),
        source,
    };
    let mut id = 0u32;
    loop {
        let mut attr = zeroed_attr();
        attr.__bindgen_anon_6.__bindgen_anon_1.start_id = id;
        match sys_bpf(bpf_cmd::BPF_BTF_GET_NEXT_ID, &mut attr) {
            Ok(_) => {}
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => {
                return Err(Error::KernelBtfObject {
                    module: module.to_owned(),
                });
            }
            Err(e) => return Err(err("list BTF objects (BPF_BTF_GET_NEXT_ID)", e)),
        }
        // SAFETY: the kernel filled next_id.
        id = unsafe { attr.__bindgen_anon_6.next_id };
        let mut attr = zeroed_attr();
        attr.__bindgen_anon_6.__bindgen_anon_1.btf_id = id;
        let fd = match sys_bpf_fd(bpf_cmd::BPF_BTF_GET_FD_BY_ID, &mut attr) {
            Ok(fd) => fd,
            // Freed since it was listed.
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => continue,
            Err(e) => return Err(err("open a BTF object (BPF_BTF_GET_FD_BY_ID)", e)),
        };
        // MODULE_NAME_LEN is 56.
        let mut name = [0u8; 64];
        // SAFETY: bpf_btf_info is plain data.
        let mut info: bpf_btf_info = unsafe { std::mem::zeroed() };
        info.name = name.as_mut_ptr() as u64;
        info.name_len = name.len() as u32;
        let mut attr = zeroed_attr();
        attr.info.bpf_fd = fd.as_raw_fd() as u32;
        attr.info.info = &raw mut info as u64;
        attr.info.info_len = size_of::<bpf_btf_info>() as u32;
        sys_bpf(bpf_cmd::BPF_OBJ_GET_INFO_BY_FD, &mut attr)
            .map_err(|e| err("read a BTF object's name (BPF_OBJ_GET_INFO_BY_FD)", e))?;
        let len = name.iter().position(|b| *b == 0).unwrap_or(name.len());
        if info.kernel_btf != 0 && &name[..len] == module.as_bytes() {
            return Ok(fd);
        }
    }
}

/// Loads fexit programs on module functions from the session's object, sharing its maps.
pub struct Loader {
    object: &'static [u8],
    /// Global data to patch in, as `EbpfLoader::override_global` got it.
    globals: Vec<(&'static str, Vec<u8>)>,
    /// Duplicates of the session's map descriptors, by the object's map names.
    maps: HashMap<String, OwnedFd>,
    /// Parsed and relocated on first use.
    relocated: Option<aya_obj::Object>,
    /// Text symbols of loaded modules, read from `/proc/kallsyms` on first use.
    module_symbols: Option<HashMap<String, String>>,
    /// `/sys/kernel/btf/vmlinux`, the base of every module's BTF, mapped on first use.
    vmlinux: Option<btf_rs::Btf>,
}

impl Loader {
    /// Takes the session's object and its maps (`aya::Ebpf::maps()`): their descriptors are
    /// duplicated, so the loader borrows nothing.
    pub fn new<'a>(
        object: &'static [u8],
        maps: impl Iterator<Item = (&'a str, &'a aya::maps::Map)>,
    ) -> Result<Self, Error> {
        let maps = maps
            .map(|(name, map)| {
                map_data(map)
                    .fd()
                    .as_fd()
                    .try_clone_to_owned()
                    .map(|fd| (name.to_owned(), fd))
                    .map_err(|source| Error::DupMap {
                        map: name.to_owned(),
                        source,
                    })
            })
            .collect::<Result<_, _>>()?;
        Ok(Self {
            object,
            globals: Vec::new(),
            maps,
            relocated: None,
            module_symbols: None,
            vmlinux: None,
        })
    }

    /// Sets a global variable, as `aya::EbpfLoader::override_global(name, value, true)` does.
    pub fn global<T: aya::Pod>(mut self, name: &'static str, value: &T) -> Self {
        // SAFETY: a Pod value is plain bytes without padding.
        let bytes =
            unsafe { std::slice::from_raw_parts((value as *const T).cast::<u8>(), size_of::<T>()) };
        self.globals.push((name, bytes.to_vec()));
        self
    }

    /// The first of `candidates` that a loaded module holds (per `/proc/kallsyms`).
    pub fn locate(&mut self, candidates: &[&'static str]) -> Option<ModuleFunction> {
        let symbols = self.module_symbols.get_or_insert_with(|| {
            std::fs::read_to_string("/proc/kallsyms")
                .map(|s| module_symbols(&s))
                .unwrap_or_default()
        });
        candidates.iter().find_map(|f| {
            symbols.get(*f).map(|m| ModuleFunction {
                function: f,
                module: m.clone(),
            })
        })
    }

    /// The object with its globals patched and its map references pointing at the session's maps.
    fn relocated(&mut self, btf: Option<&aya::Btf>) -> Result<&aya_obj::Object, Error> {
        if self.relocated.is_none() {
            let fail = |what: &str, e: &dyn std::error::Error| Error::Object {
                detail: format!("{what}: {}", chain(e)),
            };
            let mut obj = aya_obj::Object::parse(self.object).map_err(|e| fail("parse", &e))?;
            obj.patch_map_data(
                self.globals
                    .iter()
                    .map(|(n, v)| (*n, (v.as_slice(), true)))
                    .collect(),
            )
            .map_err(|e| fail("set globals", &e))?;
            if let Some(btf) = btf {
                obj.relocate_btf(btf)
                    .map_err(|e| fail("relocate against kernel BTF", &e))?;
            }
            let defs = std::mem::take(&mut obj.maps);
            let mut maps = Vec::new();
            for (name, def) in &defs {
                let fd = self.maps.get(name).ok_or_else(|| Error::Missing {
                    kind: "map created by the session named",
                    name: name.clone(),
                })?;
                maps.push((name.as_str(), fd.as_raw_fd(), def));
            }
            let text: HashSet<usize> = obj.functions.keys().map(|(section, _)| *section).collect();
            obj.relocate_maps(maps.into_iter(), &text)
                .map_err(|e| fail("point at the session's maps", &e))?;
            obj.relocate_calls(&text)
                .map_err(|e| fail("link function calls", &e))?;
            self.relocated = Some(obj);
        }
        Ok(self.relocated.as_ref().expect("relocated above"))
    }

    /// The id of `target` in its module's BTF, read from `/sys/kernel/btf/<module>`.
    fn btf_id(&mut self, target: &ModuleFunction) -> Result<u32, Error> {
        let path = Path::new(SYSFS_BTF).join(&target.module);
        if !path.exists() {
            return Err(Error::NoModuleBtf {
                module: target.module.clone(),
            });
        }
        let module_err = |e: btf_rs::Error| Error::ModuleBtf {
            module: target.module.clone(),
            detail: e.to_string(),
        };
        if self.vmlinux.is_none() {
            let base = Path::new(SYSFS_BTF).join("vmlinux");
            self.vmlinux = Some(
                btf_rs::Btf::from_file_with_backend(&base, btf_rs::Backend::Mmap)
                    .or_else(|_| btf_rs::Btf::from_file(&base))
                    .map_err(module_err)?,
            );
        }
        let base = self.vmlinux.as_ref().expect("mapped above");
        let split = btf_rs::Btf::from_split_file(&path, base).map_err(module_err)?;
        func_id(&split, target.function).ok_or_else(|| Error::NoFunction {
            function: target.function.to_owned(),
            module: target.module.clone(),
        })
    }

    /// Loads `program` (an fexit program of the object) on `target`; attaches nothing yet.
    pub fn load(
        &mut self,
        program: &str,
        target: &ModuleFunction,
        btf: Option<&aya::Btf>,
    ) -> Result<ModuleFexit, Error> {
        let attach_btf_id = self.btf_id(target)?;
        let module_btf = kernel_btf_object(&target.module)?;
        let obj = self.relocated(btf)?;
        let prog = obj.programs.get(program).ok_or_else(|| Error::Missing {
            kind: "program",
            name: program.to_owned(),
        })?;
        let insns = &obj
            .functions
            .get(&prog.function_key())
            .ok_or_else(|| Error::Missing {
                kind: "function of program",
                name: program.to_owned(),
            })?
            .instructions;
        // The kernel keeps 15 bytes of the name; only [A-Za-z0-9_.] are allowed.
        let name = CString::new(program.bytes().take(15).collect::<Vec<u8>>())
            .expect("a program name has no NUL");
        let load = |log: &mut [u8]| {
            let mut attr = zeroed_attr();
            // SAFETY: writing plain fields of the BPF_PROG_LOAD member of a zeroed union.
            let u = unsafe { &mut attr.__bindgen_anon_3 };
            u.prog_type = BPF_PROG_TYPE_TRACING as u32;
            u.expected_attach_type = BPF_TRACE_FEXIT as u32;
            u.insns = insns.as_ptr() as u64;
            u.insn_cnt = insns.len() as u32;
            u.license = prog.license.as_ptr() as u64;
            for (d, s) in u.prog_name.iter_mut().zip(name.as_bytes()) {
                *d = *s as libc::c_char;
            }
            u.attach_btf_id = attach_btf_id;
            u.__bindgen_anon_1.attach_btf_obj_fd = module_btf.as_raw_fd() as u32;
            if !log.is_empty() {
                u.log_level = 1;
                u.log_buf = log.as_mut_ptr() as u64;
                u.log_size = log.len() as u32;
            }
            sys_bpf_fd(bpf_cmd::BPF_PROG_LOAD, &mut attr)
        };
        let prog_fd = match load(&mut []) {
            Ok(fd) => fd,
            Err(first) => {
                // Load again with a log to say why.
                let mut log = vec![0u8; LOG_SIZE];
                let source = match load(&mut log) {
                    Ok(_) => first,
                    Err(e) if e.raw_os_error() == Some(libc::ENOSPC) => first,
                    Err(e) => e,
                };
                let len = log.iter().position(|b| *b == 0).unwrap_or(log.len());
                return Err(Error::Load {
                    target: target.clone(),
                    source,
                    log: String::from_utf8_lossy(&log[..len]).into_owned(),
                });
            }
        };
        Ok(ModuleFexit {
            target: target.clone(),
            link: None,
            prog: prog_fd,
        })
    }
}

/// The MapData behind every kind of map aya can create.
fn map_data(map: &aya::maps::Map) -> &aya::maps::MapData {
    use aya::maps::Map as M;
    match map {
        M::Array(d)
        | M::ArrayOfMaps(d)
        | M::BloomFilter(d)
        | M::CgroupArray(d)
        | M::CgroupStorage(d)
        | M::CgrpStorage(d)
        | M::CpuMap(d)
        | M::DevMap(d)
        | M::DevMapHash(d)
        | M::HashMap(d)
        | M::HashOfMaps(d)
        | M::InodeStorage(d)
        | M::LpmTrie(d)
        | M::LruHashMap(d)
        | M::PerCpuArray(d)
        | M::PerCpuCgroupStorage(d)
        | M::PerCpuHashMap(d)
        | M::PerCpuLruHashMap(d)
        | M::PerfEventArray(d)
        | M::ProgramArray(d)
        | M::Queue(d)
        | M::ReusePortSockArray(d)
        | M::RingBuf(d)
        | M::SockHash(d)
        | M::SockMap(d)
        | M::SkStorage(d)
        | M::Stack(d)
        | M::StackTraceMap(d)
        | M::Unsupported(d)
        | M::XskMap(d) => d,
    }
}

/// One fexit program loaded on a module function, and its link once attached. Dropping it
/// detaches (closes the link) and unloads (closes the program). While it lives, the kernel holds
/// a reference on the module, which then cannot be unloaded.
#[derive(Debug)]
pub struct ModuleFexit {
    target: ModuleFunction,
    link: Option<OwnedFd>,
    prog: OwnedFd,
}

impl ModuleFexit {
    /// The function it is loaded on.
    pub fn target(&self) -> &ModuleFunction {
        &self.target
    }

    /// Attaches it (BPF_RAW_TRACEPOINT_OPEN without a name: the target given at load).
    pub fn attach(&mut self) -> Result<(), Error> {
        if self.link.is_some() {
            return Ok(());
        }
        let mut attr = zeroed_attr();
        attr.raw_tracepoint.name = 0;
        attr.raw_tracepoint.prog_fd = self.prog.as_raw_fd() as u32;
        let link = sys_bpf_fd(bpf_cmd::BPF_RAW_TRACEPOINT_OPEN, &mut attr).map_err(|source| {
            Error::Attach {
                target: self.target.clone(),
                source,
            }
        })?;
        self.link = Some(link);
        Ok(())
    }
}

impl Drop for ModuleFexit {
    fn drop(&mut self) {
        // Detach before the program goes (the field order would do it too; this says so).
        drop(self.link.take());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kallsyms_modules() {
        let text = "ffffffff81000000 T _stext\n\
                    ffffffffc0a01230 t nft_do_chain\t[nf_tables]\n\
                    ffffffffc0a05000 d nft_chain_types\t[nf_tables]\n\
                    ffffffffc0b00010 T ipt_do_table\t[ip_tables]\n";
        let m = module_symbols(text);
        assert_eq!(m.get("nft_do_chain").map(String::as_str), Some("nf_tables"));
        assert_eq!(m.get("ipt_do_table").map(String::as_str), Some("ip_tables"));
        assert!(
            !m.contains_key("_stext"),
            "kernel image symbols have no module"
        );
        assert!(
            !m.contains_key("nft_chain_types"),
            "data symbols are not functions"
        );
    }

    #[test]
    fn verifier_tail() {
        assert_eq!(tail(""), "");
        assert_eq!(
            tail("0: r1 = 1\n1: exit\n\nR0 !read_ok\nprocessed 2 insns\n"),
            " (verifier: 1: exit / R0 !read_ok / processed 2 insns)"
        );
    }

    /// A BTF blob: header, `types` (already encoded) and `strings`.
    fn btf_blob(types: &[u32], strings: &[u8]) -> Vec<u8> {
        let mut b = Vec::new();
        b.extend_from_slice(&0xeb9f_u16.to_le_bytes());
        b.extend_from_slice(&[1, 0]); // version, flags
        b.extend_from_slice(&24u32.to_le_bytes()); // hdr_len
        let type_len = (types.len() * 4) as u32;
        for v in [0, type_len, type_len, strings.len() as u32] {
            b.extend_from_slice(&v.to_le_bytes()); // type_off, type_len, str_off, str_len
        }
        types
            .iter()
            .for_each(|t| b.extend_from_slice(&t.to_le_bytes()));
        b.extend_from_slice(strings);
        b
    }

    /// Split BTF: ids and string offsets continue after the base's, as in a module's BTF.
    #[test]
    fn func_id_in_split_btf() {
        const INT: u32 = 1 << 24;
        const PTR: u32 = 2 << 24;
        const FUNC: u32 = 12 << 24;
        const PROTO: u32 = 13 << 24;
        // Base: [1] int "int" (4 bytes, 32 bits), [2] pointer to [1].
        let base_strings = b"\0int\0";
        let base = btf_blob(&[1, INT, 4, 32, 0, PTR, 1], base_strings);
        let base = btf_rs::Btf::from_bytes(&base).expect("base BTF parses");
        // Split: [3] proto `int (int *)`, [4] func "modfn" of [3], [5] func "other".
        let s = base_strings.len() as u32;
        let split = btf_blob(
            &[0, PROTO | 1, 1, 0, 2, s + 1, FUNC, 3, s + 7, FUNC, 3],
            b"\0modfn\0other\0",
        );
        let split = btf_rs::Btf::from_split_bytes(&split, &base).expect("split BTF parses");
        assert_eq!(func_id(&split, "modfn"), Some(4));
        assert_eq!(func_id(&split, "other"), Some(5));
        assert_eq!(
            func_id(&split, "int"),
            None,
            "base types are not module functions"
        );
        assert_eq!(func_id(&split, "missing"), None);
    }

    /// The same on this machine's module BTF, where a module has any.
    #[test]
    fn func_id_in_module_btf() {
        let Ok(dir) = std::fs::read_dir(SYSFS_BTF) else {
            eprintln!("skipped: no {SYSFS_BTF} on this kernel");
            return;
        };
        let module = dir
            .filter_map(Result::ok)
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .find(|n| n != "vmlinux");
        let Some(module) = module else {
            eprintln!(
                "skipped: kernel {} has no module BTF (everything built in)",
                std::fs::read_to_string("/proc/sys/kernel/osrelease")
                    .unwrap_or_default()
                    .trim()
            );
            return;
        };
        let base = btf_rs::Btf::from_file(format!("{SYSFS_BTF}/vmlinux")).expect("vmlinux BTF");
        let split = btf_rs::Btf::from_split_file(format!("{SYSFS_BTF}/{module}"), &base)
            .expect("module BTF parses");
        // Some function of the module (per kallsyms) is found, with an id past vmlinux's.
        let kallsyms = std::fs::read_to_string("/proc/kallsyms").expect("kallsyms");
        let (f, id) = module_symbols(&kallsyms)
            .into_iter()
            .filter(|(_, m)| *m == module)
            .find_map(|(f, _)| func_id(&split, &f).map(|id| (f, id)))
            .expect("a function of the module in its BTF");
        assert!(
            base.resolve_type_by_id(id).is_err(),
            "{f} [{module}] has id {id}, which vmlinux's BTF has too"
        );
    }
}
