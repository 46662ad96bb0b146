//! Kernel code addresses to symbols from `/proc/kallsyms`, read lazily: a drop location is resolved the first time
//! it is seen and cached, so the loader never holds the whole table (about 200k symbols).

use std::{
    collections::HashMap,
    fs::File,
    io::{BufRead as _, BufReader},
};

const KALLSYMS: &str = "/proc/kallsyms";

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("failed to read {KALLSYMS}: {source}")]
    Read { source: std::io::Error },
    #[error("{KALLSYMS} shows only zero addresses: run as root (kptr_restrict)")]
    Hidden,
}

/// Visits every line as (address, type, name).
fn each(mut f: impl FnMut(u64, char, &str)) -> Result<(), Error> {
    let file = File::open(KALLSYMS).map_err(|source| Error::Read { source })?;
    for line in BufReader::new(file).lines() {
        let line = line.map_err(|source| Error::Read { source })?;
        let mut parts = line.split_ascii_whitespace();
        let (Some(addr), Some(kind), Some(name)) = (parts.next(), parts.next(), parts.next())
        else {
            continue;
        };
        let (Ok(addr), Some(kind)) = (u64::from_str_radix(addr, 16), kind.chars().next()) else {
            continue;
        };
        f(addr, kind, name);
    }
    Ok(())
}

/// Resolves code addresses to `function+0xoffset`, caching each answer.
#[derive(Default)]
pub struct Symbolizer {
    cache: HashMap<u64, String>,
}

impl Symbolizer {
    /// The function containing `addr`, as `name+0xoff`.
    pub fn resolve(&mut self, addr: u64) -> Result<String, Error> {
        if let Some(s) = self.cache.get(&addr) {
            return Ok(s.clone());
        }
        let mut best: Option<(u64, String)> = None;
        let mut any_nonzero = false;
        each(|a, kind, name| {
            any_nonzero |= a != 0;
            if matches!(kind, 't' | 'T') && a <= addr && best.as_ref().is_none_or(|(b, _)| a > *b) {
                best = Some((a, name.to_owned()));
            }
        })?;
        if !any_nonzero {
            return Err(Error::Hidden);
        }
        let s = match best {
            Some((a, name)) => format!("{name}+{:#x}", addr - a),
            None => format!("{addr:#x}"),
        };
        self.cache.insert(addr, s.clone());
        Ok(s)
    }

    /// Makes `addr` resolve to `resolved` without reading kallsyms (tests run unprivileged,
    /// where kallsyms shows no addresses).
    #[cfg(test)]
    pub(crate) fn insert(&mut self, addr: u64, resolved: &str) {
        self.cache.insert(addr, resolved.to_owned());
    }
}

/// Which of `names` are kernel functions in `/proc/kallsyms` (vmlinux's and loaded modules'):
/// kprobe targets, found where BTF may not know them (5.10 has no module BTF).
pub fn functions<'a>(names: &[&'a str]) -> Result<Vec<&'a str>, Error> {
    let mut found = Vec::new();
    each(|_, kind, name| {
        if matches!(kind, 't' | 'T')
            && let Some(n) = names.iter().find(|n| **n == name)
            && !found.contains(n)
        {
            found.push(*n);
        }
    })?;
    Ok(found)
}

/// The function name of a `name+0xoff` location.
pub fn function(location: &str) -> &str {
    location.split('+').next().unwrap_or(location)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolves_a_known_function_and_finds_it() {
        let mut addr = 0;
        each(|a, kind, name| {
            if (name == "kfree_skb_reason" || (name == "sk_skb_reason_drop" && addr == 0))
                && matches!(kind, 't' | 'T')
            {
                addr = a;
            }
        })
        .unwrap();
        assert_ne!(addr, 0, "kallsyms lists the skb free function");
        let s = Symbolizer::default().resolve(addr + 4).unwrap();
        assert!(s.ends_with("+0x4"), "{s}");
        assert_eq!(function("nft_do_chain+0x3a"), "nft_do_chain");
        assert_eq!(
            functions(&["nf_hook_slow", "no_such_function_here"]).unwrap(),
            ["nf_hook_slow"]
        );
    }
}
