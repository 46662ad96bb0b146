//! Names for the numbers in kernel records: network namespaces (by inode) and interfaces (by
//! index within a namespace). Namespaces are found in `/run/netns` (named ones: the lab's pods,
//! CNI's `cni-…`) and are resolved lazily, with the answers cached. The caches keep the last
//! [`REMEMBERED`] names each: a node's pods come and go, and a name forgotten while still in use
//! is only looked up again.

use std::{collections::HashMap, path::PathBuf};

use super::recent::Recent;
use crate::netns;

/// How many namespace names, and how many interface names, are cached.
const REMEMBERED: usize = 1024;

/// Resolves and caches names.
pub struct Names {
    netns: Recent<u32, (String, Option<PathBuf>)>,
    links: Recent<(u32, u32), String>,
}

impl Names {
    /// Starts with the interfaces already known in the pod links' namespace.
    pub fn new(links_netns: u32, links: &HashMap<u32, String>) -> Self {
        let mut n = Self {
            netns: Recent::new(REMEMBERED),
            links: Recent::new(REMEMBERED),
        };
        for (idx, l) in links {
            n.links.insert((links_netns, *idx), l.clone());
        }
        n
    }

    /// Learns the name of an interface that appeared in namespace `netns` (a new pod link), so
    /// records name it without listing the namespace again. A later interface with the same index
    /// takes its place.
    pub fn learn_link(&mut self, netns: u32, index: u32, name: &str) {
        self.links.insert((netns, index), name.to_owned());
    }

    fn scan_netns(&mut self) {
        let Ok(dir) = std::fs::read_dir(netns::NETNS_DIR) else {
            return;
        };
        for entry in dir.flatten() {
            let path = entry.path();
            if let Ok(inum) = netns::inode(&path)
                && !self.netns.contains(&inum)
            {
                let name = entry.file_name().to_string_lossy().into_owned();
                self.netns.insert(inum, (name, Some(path)));
            }
        }
    }

    /// The namespace's name, or `netns:<inode>`.
    pub fn netns(&mut self, inum: u32) -> String {
        if inum == 0 {
            return "?".to_owned();
        }
        if !self.netns.contains(&inum) {
            self.scan_netns();
        }
        match self.netns.get(&inum) {
            Some((name, _)) => name.clone(),
            None => {
                if let Ok(own) = std::fs::metadata("/proc/self/ns/net") {
                    use std::os::unix::fs::MetadataExt as _;
                    if own.ino() as u32 == inum {
                        self.netns.insert(inum, ("root".to_owned(), None));
                        return "root".to_owned();
                    }
                }
                format!("netns:{inum}")
            }
        }
    }

    /// The interface's name in that namespace, or `if<index>`.
    pub fn link(&mut self, inum: u32, ifindex: u32) -> String {
        if ifindex == 0 {
            return "-".to_owned();
        }
        if let Some(n) = self.links.get(&(inum, ifindex)) {
            return n.clone();
        }
        let _ = self.netns(inum);
        let list = || -> Vec<(u32, String)> {
            nix::net::if_::if_nameindex()
                .map(|l| {
                    l.iter()
                        .map(|i| (i.index(), i.name().to_string_lossy().into_owned()))
                        .collect()
                })
                .unwrap_or_default()
        };
        let listing = match self.netns.get(&inum) {
            Some((_, Some(path))) => netns::run_in(path, list).unwrap_or_default(),
            Some((_, None)) => list(),
            None => Vec::new(),
        };
        for (index, name) in listing {
            self.links.insert((inum, index), name);
        }
        self.links
            .get(&(inum, ifindex))
            .cloned()
            .unwrap_or_else(|| format!("if{ifindex}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_node_whose_pods_come_and_go_keeps_the_last_names() {
        // No namespace has this inode: a forgotten name cannot be found again.
        let (inum, last) = (u32::MAX, REMEMBERED as u32 + 1);
        let mut n = Names::new(inum, &HashMap::from([(1, "veth-first".to_owned())]));
        for index in 2..=last {
            n.learn_link(inum, index, &format!("veth{index}"));
        }
        assert_eq!(n.link(inum, last), format!("veth{last}"));
        assert_eq!(n.link(inum, 2), "veth2");
        assert_eq!(n.link(inum, 1), "if1");
    }
}
