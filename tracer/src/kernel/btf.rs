//! The running kernel's BTF: vmlinux's, and that of the netfilter modules the deep tier reads
//! (on most production kernels `nf_tables`, `ip_tables`, `nf_nat` and `nf_conntrack` are modules,
//! whose functions and structs are only in `/sys/kernel/btf/<module>`, split BTF on top of
//! vmlinux's, once they are loaded).

use std::collections::HashMap;

use btf_rs::{Backend, Btf, Type};
use tracer_common::config::{Config, KernelOffsets};

/// Where the kernel exposes its own BTF.
pub const VMLINUX: &str = "/sys/kernel/btf/vmlinux";
/// Where loaded modules expose theirs.
pub const BTF_DIR: &str = "/sys/kernel/btf";
/// Modules whose functions and structs the deep tier uses, when they are modules.
pub const NETFILTER_MODULES: &[&str] = &[
    "x_tables",
    "ip_tables",
    "nf_tables",
    "nf_conntrack",
    "nf_nat",
];

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(
        "this kernel has no BTF ({VMLINUX}: {source}): tracing needs it (CONFIG_DEBUG_INFO_BTF=y, in \
         every major distribution's kernel since about 2021); `tracer inspect` and `tracer probe \
         --no-trace` work without it"
    )]
    Read { source: btf_rs::Error },
    #[error("kernel BTF: a {what} deeper than {MAX_DEPTH} types (a loop?)")]
    TooDeep { what: &'static str },
    #[error("kernel BTF has no {kind} named {name}")]
    Missing { kind: &'static str, name: String },
    #[error("kernel BTF: {what}: {source}")]
    Parse { what: String, source: btf_rs::Error },
}

/// The kernel's type information: vmlinux, then each loaded netfilter module.
pub struct KernelBtf {
    vmlinux: Btf,
    modules: Vec<(String, Btf)>,
}

/// The longest chain of types followed (typedefs and qualifiers, nested anonymous members): the
/// kernel's own limit (`MAX_RESOLVE_DEPTH`). BTF that loops (a typedef of itself) ends there.
const MAX_DEPTH: usize = 32;

fn parse<T>(what: impl FnOnce() -> String, r: btf_rs::Result<T>) -> Result<T, Error> {
    r.map_err(|source| Error::Parse {
        what: what(),
        source,
    })
}

/// Follows typedefs and qualifiers to the underlying type.
fn resolve(btf: &Btf, mut t: Type) -> Result<Type, Error> {
    for _ in 0..MAX_DEPTH {
        t = match t {
            Type::Typedef(ref x) => parse(|| "typedef".into(), btf.resolve_chained_type(x))?,
            Type::Const(ref x) | Type::Volatile(ref x) | Type::Restrict(ref x) => {
                parse(|| "qualifier".into(), btf.resolve_chained_type(x))?
            }
            Type::TypeTag(ref x) => parse(|| "type tag".into(), btf.resolve_chained_type(x))?,
            other => return Ok(other),
        }
    }
    Err(Error::TooDeep {
        what: "typedef and qualifier chain",
    })
}

/// Byte offset of `field` in `s`, looking through anonymous structs and unions.
fn field_in(btf: &Btf, s: &btf_rs::Struct, field: &str) -> Result<Option<(u32, Type)>, Error> {
    field_at(btf, s, field, 0)
}

/// `field_in`, `depth` anonymous members down.
fn field_at(
    btf: &Btf,
    s: &btf_rs::Struct,
    field: &str,
    depth: usize,
) -> Result<Option<(u32, Type)>, Error> {
    if depth >= MAX_DEPTH {
        return Err(Error::TooDeep {
            what: "nesting of anonymous members",
        });
    }
    for m in &s.members {
        let name = btf.resolve_name(m).unwrap_or_default();
        let ty = parse(|| format!("member {field}"), btf.resolve_chained_type(m))?;
        if name == field {
            return Ok(Some((m.bit_offset() / 8, ty)));
        }
        if name.is_empty()
            && let Type::Struct(inner) | Type::Union(inner) = resolve(btf, ty)?
            && let Some((off, t)) = field_at(btf, &inner, field, depth + 1)?
        {
            return Ok(Some((m.bit_offset() / 8 + off, t)));
        }
    }
    Ok(None)
}

/// The parameters of a function prototype, resolved.
fn params(btf: &Btf, proto: &Type, what: &str) -> Result<Vec<Type>, Error> {
    let Type::FuncProto(proto) = proto else {
        return Err(Error::Missing {
            kind: "function prototype",
            name: what.to_owned(),
        });
    };
    proto
        .parameters
        .iter()
        .map(|p| resolve(btf, parse(|| what.to_owned(), btf.resolve_chained_type(p))?))
        .collect()
}

/// Whether `t` is a pointer to `struct <name>`.
fn points_to(btf: &Btf, t: &Type, name: &str) -> Result<bool, Error> {
    let Type::Ptr(ptr) = t else {
        return Ok(false);
    };
    let pointee = resolve(
        btf,
        parse(|| name.to_owned(), btf.resolve_chained_type(ptr))?,
    )?;
    Ok(matches!(&pointee, Type::Struct(s) if btf.resolve_name(s).unwrap_or_default() == name))
}

/// Checks that the sections a BTF header announces lie inside `bytes`: btf-rs allocates what
/// the header says before it reads (the fuzz target found 34 MB asked for by 1269 bytes).
fn check_header(bytes: &[u8]) -> Result<(), String> {
    let word = |at: usize| -> Option<u64> {
        let b: [u8; 4] = bytes.get(at..at + 4)?.try_into().ok()?;
        // The magic (0xeB9F) says the byte order.
        Some(u64::from(if bytes.starts_with(&[0x9f, 0xeb]) {
            u32::from_le_bytes(b)
        } else {
            u32::from_be_bytes(b)
        }))
    };
    let (Some(hdr_len), Some(type_off), Some(type_len), Some(str_off), Some(str_len)) =
        (word(4), word(8), word(12), word(16), word(20))
    else {
        return Err(format!("{} bytes hold no BTF header", bytes.len()));
    };
    let len = bytes.len() as u64;
    let inside = |off: u64, n: u64| hdr_len + off + n <= len;
    if hdr_len < 24 || !inside(type_off, type_len) || !inside(str_off, str_len) {
        return Err(format!(
            "BTF header announces sections past its {len} bytes (header {hdr_len}, types {type_off}+{type_len}, strings {str_off}+{str_len})"
        ));
    }
    Ok(())
}

impl KernelBtf {
    /// Maps vmlinux's BTF and parses what is asked for on demand (a full parse costs about 0.4 s
    /// and 20 MB); where the file cannot be mapped, parses it whole. Adds the BTF of every
    /// loaded netfilter module (one that cannot be read is left out: its probes are then skipped
    /// for want of their function).
    pub fn load() -> Result<Self, Error> {
        let vmlinux = match Btf::from_file_with_backend(VMLINUX, Backend::Mmap) {
            Ok(btf) => btf,
            Err(_) => {
                let bytes = std::fs::read(VMLINUX).map_err(|e| Error::Read {
                    source: btf_rs::Error::from(e),
                })?;
                return Self::from_bytes(&bytes).map(Self::with_modules);
            }
        };
        Ok(Self::with_modules(Self {
            vmlinux,
            modules: Vec::new(),
        }))
    }

    /// vmlinux's BTF from its bytes, whole, without modules: `load` where the file cannot be
    /// mapped, and the fuzz target (`tests/fuzz.rs`, `btf`) for BTF that lies.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, Error> {
        check_header(bytes).map_err(|what| Error::Read {
            source: btf_rs::Error::Format(what),
        })?;
        let vmlinux = Btf::from_bytes(bytes).map_err(|source| Error::Read { source })?;
        Ok(Self {
            vmlinux,
            modules: Vec::new(),
        })
    }

    /// Adds the loaded netfilter modules' BTF (split on vmlinux's).
    fn with_modules(self) -> Self {
        let vmlinux = self.vmlinux;
        let modules = NETFILTER_MODULES
            .iter()
            .filter_map(|m| {
                let btf = Btf::from_split_file(format!("{BTF_DIR}/{m}"), &vmlinux).ok()?;
                Some(((*m).to_owned(), btf))
            })
            .collect();
        Self { vmlinux, modules }
    }

    /// vmlinux, then the modules, with the module's name.
    fn all(&self) -> impl Iterator<Item = (Option<&str>, &Btf)> {
        std::iter::once((None, &self.vmlinux))
            .chain(self.modules.iter().map(|(m, b)| (Some(m.as_str()), b)))
    }

    fn function_in(&self, name: &str) -> Option<(Option<&str>, &Btf, btf_rs::Func)> {
        self.all().find_map(|(m, btf)| {
            btf.resolve_types_by_name(name)
                .unwrap_or_default()
                .into_iter()
                .find_map(|t| match t {
                    Type::Func(f) => Some((m, btf, f)),
                    _ => None,
                })
        })
    }

    /// Where a kernel function is: `Some(None)` in vmlinux, `Some(Some(module))` in a loaded
    /// module, `None` nowhere this BTF knows.
    pub fn function_module(&self, name: &str) -> Option<Option<&str>> {
        self.function_in(name).map(|(m, _, _)| m)
    }

    /// Whether the kernel has a function of this name (a kprobe or fexit target).
    pub fn has_function(&self, name: &str) -> bool {
        self.function_in(name).is_some()
    }

    /// The arguments of tracepoint `name` (its `btf_trace_<name>` prototype, less the leading
    /// context pointer), or `None` when this kernel has no such tracepoint.
    pub fn tracepoint_args(&self, name: &str) -> Result<Option<Vec<String>>, Error> {
        let typedef = format!("btf_trace_{name}");
        let Some(t) = self
            .vmlinux
            .resolve_types_by_name(&typedef)
            .unwrap_or_default()
            .into_iter()
            .find(|t| matches!(t, Type::Typedef(_)))
        else {
            return Ok(None);
        };
        let btf = &self.vmlinux;
        let Type::Ptr(ptr) = resolve(btf, t)? else {
            return Err(Error::Missing {
                kind: "tracepoint prototype",
                name: typedef,
            });
        };
        let proto = resolve(
            btf,
            parse(|| typedef.clone(), btf.resolve_chained_type(&ptr))?,
        )?;
        let args = params(btf, &proto, &typedef)?;
        Ok(Some(
            args.iter()
                .skip(1)
                .map(|a| describe(btf, a))
                .collect::<Vec<_>>(),
        ))
    }

    fn named_struct(&self, name: &str) -> Result<(&Btf, btf_rs::Struct), Error> {
        self.all()
            .find_map(|(_, btf)| {
                btf.resolve_types_by_name(name)
                    .unwrap_or_default()
                    .into_iter()
                    .find_map(|t| match t {
                        Type::Struct(s) if !s.members.is_empty() => Some((btf, s)),
                        _ => None,
                    })
            })
            .ok_or_else(|| Error::Missing {
                kind: "struct",
                name: name.to_owned(),
            })
    }

    /// Byte offset of a field path inside a struct, e.g. `("net_device", &["nd_net", "net"])`.
    pub fn offset(&self, strukt: &str, path: &[&str]) -> Result<u32, Error> {
        let (btf, mut s) = self.named_struct(strukt)?;
        let mut total = 0;
        for (i, field) in path.iter().enumerate() {
            let (off, ty) = field_in(btf, &s, field)?.ok_or_else(|| Error::Missing {
                kind: "field",
                name: format!("{strukt}.{}", path[..=i].join(".")),
            })?;
            total += off;
            if i + 1 < path.len() {
                s = match resolve(btf, ty)? {
                    Type::Struct(x) | Type::Union(x) => x,
                    _ => {
                        return Err(Error::Missing {
                            kind: "struct field",
                            name: format!("{strukt}.{field}"),
                        });
                    }
                };
            }
        }
        Ok(total)
    }

    /// Index of the first `struct sk_buff *` parameter of a kernel function, if it has one.
    pub fn skb_param(&self, func: &str) -> Result<Option<u32>, Error> {
        let Some((_, btf, f)) = self.function_in(func) else {
            return Err(Error::Missing {
                kind: "function",
                name: func.to_owned(),
            });
        };
        let proto = parse(|| func.to_owned(), btf.resolve_chained_type(&f))?;
        for (i, p) in params(btf, &proto, func)?.iter().enumerate() {
            if points_to(btf, p, "sk_buff")? {
                return Ok(Some(i as u32));
            }
        }
        Ok(None)
    }

    /// The offsets the eBPF programs need. The kprobe/fentry-tier ones (netfilter internals) are
    /// `KernelOffsets::MISSING` when this kernel lacks the struct (its module not loaded): those
    /// programs are then skipped.
    pub fn offsets(&self) -> Result<KernelOffsets, Error> {
        let optional = |s: &str, p: &[&str]| self.offset(s, p).unwrap_or(KernelOffsets::MISSING);
        Ok(KernelOffsets {
            skb_head: self.offset("sk_buff", &["head"])?,
            skb_network_header: self.offset("sk_buff", &["network_header"])?,
            skb_dev: self.offset("sk_buff", &["dev"])?,
            skb_sk: self.offset("sk_buff", &["sk"])?,
            dev_ifindex: self.offset("net_device", &["ifindex"])?,
            dev_net: self.offset("net_device", &["nd_net", "net"])?,
            sk_net: self.offset("sock", &["__sk_common", "skc_net", "net"])?,
            net_inum: self.offset("net", &["ns", "inum"])?,
            xt_table_name: optional("xt_table", &["name"]),
            nft_chain_table: optional("nft_chain", &["table"]),
            nft_chain_name: optional("nft_chain", &["name"]),
            nft_table_name: optional("nft_table", &["name"]),
            nft_pktinfo_skb: optional("nft_pktinfo", &["skb"]),
            ipt_skb_arg: self.ipt_skb_arg(),
            hook_state_hook: optional("nf_hook_state", &["hook"]),
            sk_rmem_alloc: self.offset("sock", &["sk_backlog", "rmem_alloc"])?,
            sk_rcvbuf: self.offset("sock", &["sk_rcvbuf"])?,
            sk_drops: optional("sock", &["sk_drops"]),
            sk_drop_counters: optional("sock", &["sk_drop_counters"]),
            numa_drops0: optional("numa_drop_counters", &["drops0"]),
            numa_drops1: optional("numa_drop_counters", &["drops1"]),
        })
    }

    /// Where `ipt_do_table` takes its skb: from its prototype in BTF; where BTF does not have it
    /// (5.10: no module BTF), from the release, the one fact left: 5.16 moved the skb from the
    /// first argument to the second.
    fn ipt_skb_arg(&self) -> u32 {
        if let Ok(Some(i)) = self.skb_param("ipt_do_table") {
            return i;
        }
        let before_5_16 = aya::util::KernelVersion::current()
            .is_ok_and(|v| v < aya::util::KernelVersion::new(5, 16, 0));
        u32::from(!before_5_16)
    }

    /// `enum skb_drop_reason` as value -> name without the `SKB_DROP_REASON_` prefix; empty on
    /// kernels before 5.17, which have no drop reasons (drops are then placed by location).
    pub fn drop_reasons(&self) -> HashMap<u32, String> {
        let types = self
            .vmlinux
            .resolve_types_by_name("skb_drop_reason")
            .unwrap_or_default();
        let Some(Type::Enum(e)) = types.into_iter().find(|t| matches!(t, Type::Enum(_))) else {
            return HashMap::new();
        };
        e.members
            .iter()
            .filter_map(|m| {
                let name = self.vmlinux.resolve_name(m).ok()?;
                let short = name
                    .strip_prefix("SKB_DROP_REASON_")
                    .unwrap_or(&name)
                    .to_owned();
                Some((m.val(), short))
            })
            .collect()
    }
}

/// The values of `reasons` that are not drops (`SKB_NOT_DROPPED_YET`, `SKB_CONSUMED`: their
/// numbers moved between 5.17, 5.18-6.1 and later), `Config::NOT_A_REASON` where absent.
pub fn not_drops(reasons: &HashMap<u32, String>) -> [u32; 2] {
    let value = |name: &str| {
        reasons
            .iter()
            .find(|(_, n)| n.as_str() == name)
            .map_or(Config::NOT_A_REASON, |(v, _)| *v)
    };
    [value("SKB_NOT_DROPPED_YET"), value("SKB_CONSUMED")]
}

/// A short description of a parameter type, e.g. `struct sk_buff *` or `int`.
fn describe(btf: &Btf, t: &Type) -> String {
    match t {
        Type::Ptr(ptr) => match btf
            .resolve_chained_type(ptr)
            .ok()
            .and_then(|p| resolve(btf, p).ok())
        {
            Some(Type::Struct(s)) => {
                format!("struct {} *", btf.resolve_name(&s).unwrap_or_default())
            }
            _ => "pointer".to_owned(),
        },
        Type::Int(_) | Type::Enum(_) | Type::Enum64(_) => "integer".to_owned(),
        _ => "other".to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // These read the running kernel's BTF: the offsets must be found and plausible.
    #[test]
    fn offsets_and_drop_reasons_come_from_this_kernel() {
        let btf = KernelBtf::load().expect("this machine has BTF");
        let o = btf.offsets().unwrap();
        assert!(o.skb_head > 0 && o.skb_network_header > 0 && o.net_inum > 0);
        assert_ne!(o.skb_dev, o.skb_sk);
        let reasons = btf.drop_reasons();
        assert!(reasons.values().any(|n| n == "NETFILTER_DROP"));
        assert!(reasons.values().any(|n| n == "NO_SOCKET"));
        let [not_dropped, consumed] = not_drops(&reasons);
        assert_eq!(reasons[&not_dropped], "SKB_NOT_DROPPED_YET");
        assert_eq!(reasons[&consumed], "SKB_CONSUMED");
        assert!(btf.offset("sk_buff", &["no_such_field"]).is_err());
        assert!(btf.has_function("nf_hook_slow") && !btf.has_function("no_such_function_here"));
    }

    #[test]
    fn tracepoint_arguments_come_from_btf() {
        let btf = KernelBtf::load().expect("this machine has BTF");
        let args = btf
            .tracepoint_args("kfree_skb")
            .unwrap()
            .expect("kfree_skb");
        assert_eq!(args[0], "struct sk_buff *");
        assert!(
            args.len() >= 3,
            "this kernel's kfree_skb has a reason: {args:?}"
        );
        assert_eq!(btf.tracepoint_args("no_such_tracepoint").unwrap(), None);
    }
}
