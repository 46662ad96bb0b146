//! The running kernel's BTF.

use std::collections::HashMap;

use btf_rs::{Backend, Btf, Type};
use tracer_common::config::KernelOffsets;

/// Where the kernel exposes its own BTF.
pub const VMLINUX: &str = "/sys/kernel/btf/vmlinux";

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(
        "failed to read kernel BTF from {VMLINUX}: {source} (a kernel without BTF is not supported)"
    )]
    Read { source: btf_rs::Error },
    #[error("kernel BTF has no {kind} named {name}")]
    Missing { kind: &'static str, name: String },
    #[error("kernel BTF: {what}: {source}")]
    Parse { what: String, source: btf_rs::Error },
}

/// The kernel's type information.
pub struct KernelBtf {
    btf: Btf,
}

impl KernelBtf {
    /// Maps `/sys/kernel/btf/vmlinux` and parses what is asked for on demand (a full parse costs
    /// about 0.4 s and 20 MB); where the file cannot be mapped, parses it whole.
    pub fn load() -> Result<Self, Error> {
        let btf = Btf::from_file_with_backend(VMLINUX, Backend::Mmap)
            .or_else(|_| Btf::from_file(VMLINUX))
            .map_err(|source| Error::Read { source })?;
        Ok(Self { btf })
    }

    /// Whether the kernel has a function of this name (a kprobe or fexit target).
    pub fn has_function(&self, name: &str) -> bool {
        self.btf
            .resolve_types_by_name(name)
            .unwrap_or_default()
            .iter()
            .any(|t| matches!(t, Type::Func(_)))
    }

    fn parse<T>(&self, what: impl FnOnce() -> String, r: btf_rs::Result<T>) -> Result<T, Error> {
        r.map_err(|source| Error::Parse {
            what: what(),
            source,
        })
    }

    fn named_struct(&self, name: &str) -> Result<btf_rs::Struct, Error> {
        let types = self.btf.resolve_types_by_name(name).unwrap_or_default();
        types
            .into_iter()
            .find_map(|t| match t {
                Type::Struct(s) if !s.members.is_empty() => Some(s),
                _ => None,
            })
            .ok_or_else(|| Error::Missing {
                kind: "struct",
                name: name.to_owned(),
            })
    }

    /// Follows typedefs and qualifiers to the underlying type.
    fn resolve(&self, mut t: Type) -> Result<Type, Error> {
        loop {
            t = match t {
                Type::Typedef(ref x) => {
                    self.parse(|| "typedef".into(), self.btf.resolve_chained_type(x))?
                }
                Type::Const(ref x) | Type::Volatile(ref x) | Type::Restrict(ref x) => {
                    self.parse(|| "qualifier".into(), self.btf.resolve_chained_type(x))?
                }
                Type::TypeTag(ref x) => {
                    self.parse(|| "type tag".into(), self.btf.resolve_chained_type(x))?
                }
                other => return Ok(other),
            }
        }
    }

    /// Byte offset of `field` in `s`, looking through anonymous structs and unions.
    fn field_in(&self, s: &btf_rs::Struct, field: &str) -> Result<Option<(u32, Type)>, Error> {
        for m in &s.members {
            let name = self.btf.resolve_name(m).unwrap_or_default();
            let ty = self.parse(
                || format!("member {field}"),
                self.btf.resolve_chained_type(m),
            )?;
            if name == field {
                return Ok(Some((m.bit_offset() / 8, ty)));
            }
            if name.is_empty()
                && let Type::Struct(inner) | Type::Union(inner) = self.resolve(ty)?
                && let Some((off, t)) = self.field_in(&inner, field)?
            {
                return Ok(Some((m.bit_offset() / 8 + off, t)));
            }
        }
        Ok(None)
    }

    /// Byte offset of a field path inside a struct, e.g. `("net_device", &["nd_net", "net"])`.
    pub fn offset(&self, strukt: &str, path: &[&str]) -> Result<u32, Error> {
        let mut s = self.named_struct(strukt)?;
        let mut total = 0;
        for (i, field) in path.iter().enumerate() {
            let (off, ty) = self.field_in(&s, field)?.ok_or_else(|| Error::Missing {
                kind: "field",
                name: format!("{strukt}.{}", path[..=i].join(".")),
            })?;
            total += off;
            if i + 1 < path.len() {
                s = match self.resolve(ty)? {
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
        let types = self.btf.resolve_types_by_name(func).unwrap_or_default();
        let Some(Type::Func(f)) = types.into_iter().find(|t| matches!(t, Type::Func(_))) else {
            return Err(Error::Missing {
                kind: "function",
                name: func.to_owned(),
            });
        };
        let Type::FuncProto(proto) =
            self.parse(|| func.to_owned(), self.btf.resolve_chained_type(&f))?
        else {
            return Err(Error::Missing {
                kind: "function prototype",
                name: func.to_owned(),
            });
        };
        for (i, p) in proto.parameters.iter().enumerate() {
            let ty = self.parse(|| func.to_owned(), self.btf.resolve_chained_type(p))?;
            if let Type::Ptr(ptr) = self.resolve(ty)? {
                let pointee = self.resolve(
                    self.parse(|| func.to_owned(), self.btf.resolve_chained_type(&ptr))?,
                )?;
                if let Type::Struct(s) = pointee
                    && self.btf.resolve_name(&s).unwrap_or_default() == "sk_buff"
                {
                    return Ok(Some(i as u32));
                }
            }
        }
        Ok(None)
    }

    /// The offsets the eBPF programs need. The kprobe/fentry-tier ones (netfilter internals) are
    /// `KernelOffsets::MISSING` when this kernel lacks the struct: those programs are then skipped.
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
            ipt_skb_arg: self.skb_param("ipt_do_table").ok().flatten().unwrap_or(1),
        })
    }

    /// `enum skb_drop_reason` as value -> name without the `SKB_DROP_REASON_` prefix.
    pub fn drop_reasons(&self) -> Result<HashMap<u32, String>, Error> {
        let types = self
            .btf
            .resolve_types_by_name("skb_drop_reason")
            .unwrap_or_default();
        let Some(Type::Enum(e)) = types.into_iter().find(|t| matches!(t, Type::Enum(_))) else {
            return Err(Error::Missing {
                kind: "enum",
                name: "skb_drop_reason".to_owned(),
            });
        };
        Ok(e.members
            .iter()
            .filter_map(|m| {
                let name = self.btf.resolve_name(m).ok()?;
                let short = name
                    .strip_prefix("SKB_DROP_REASON_")
                    .unwrap_or(&name)
                    .to_owned();
                Some((m.val(), short))
            })
            .collect())
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
        let reasons = btf.drop_reasons().unwrap();
        assert!(reasons.values().any(|n| n == "NETFILTER_DROP"));
        assert!(reasons.values().any(|n| n == "NO_SOCKET"));
        assert!(btf.offset("sk_buff", &["no_such_field"]).is_err());
        assert!(btf.has_function("nf_hook_slow") && !btf.has_function("no_such_function_here"));
    }
}
