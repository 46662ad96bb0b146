//! The node's network: namespaces, the bridge, the pods' veths and addresses, the sysctls, and
//! the commands (`ip`, `iptables-*-restore`, `nft`) that set them up inside the node.

use std::{
    io::Write as _,
    net::Ipv4Addr,
    path::Path,
    process::{Command, Stdio},
};

use super::Error;
use crate::netns;

/// The bridge's address: the pods' default gateway.
pub const GATEWAY: Ipv4Addr = Ipv4Addr::new(10, 244, 0, 1);
/// The pod subnet's prefix length.
pub const POD_PREFIX_LEN: u8 = 24;
/// The DNS pods' addresses.
pub const DNS_IPS: [Ipv4Addr; 2] = [Ipv4Addr::new(10, 244, 0, 10), Ipv4Addr::new(10, 244, 0, 11)];
/// The first client pod's address; client `i` has `.20 + i`.
pub const FIRST_CLIENT: u8 = 20;
/// The node's own uplink address, on an `ifb` device (this kernel has no `dummy` driver): a
/// NOARP sink that discards what it is given, so traffic routed "out" of the node (a Service IP
/// with no DNAT, say) is forwarded like on a real node and then ends there, never leaving the lab.
const UPLINK: &str = "198.51.100.2/24";
const UPLINK_GATEWAY: &str = "198.51.100.1";

/// The node namespace's name.
pub fn node_netns(prefix: &str) -> String {
    format!("{prefix}-node")
}

/// A pod namespace's name (`{prefix}-dns0`, `{prefix}-client0`).
pub fn pod_netns(prefix: &str, pod: &str) -> String {
    format!("{prefix}-{pod}")
}

/// The bridge in the node namespace.
pub fn bridge(prefix: &str) -> String {
    format!("{prefix}br0")
}

/// The node side of a DNS pod's veth.
pub fn dns_host_ifname(prefix: &str, pod: u8) -> String {
    format!("{prefix}d{pod}")
}

/// The node side of a client pod's veth.
pub fn client_host_ifname(prefix: &str, client: u8) -> String {
    format!("{prefix}c{client}")
}

/// Whether `name` is one of the lab's namespaces for `prefix`.
pub fn is_lab_netns(prefix: &str, name: &str) -> bool {
    let Some(rest) = name.strip_prefix(prefix).and_then(|r| r.strip_prefix('-')) else {
        return false;
    };
    let numbered = |stem: &str| {
        rest.strip_prefix(stem)
            .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
    };
    let added = rest
        .strip_prefix("pod-")
        .is_some_and(super::pods::valid_name);
    rest == "node" || numbered("dns") || numbered("client") || added
}

/// Runs a command to completion, failing with its stderr.
pub fn run(program: &str, args: &[&str]) -> Result<String, Error> {
    run_with_input(program, args, None)
}

/// Runs a command with `input` on its stdin.
pub fn run_with_input(program: &str, args: &[&str], input: Option<&str>) -> Result<String, Error> {
    let command = format!("{program} {}", args.join(" "));
    let mut child = Command::new(program)
        .args(args)
        .stdin(if input.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|source| Error::Spawn {
            command: command.clone(),
            source,
        })?;
    if let (Some(text), Some(mut stdin)) = (input, child.stdin.take()) {
        stdin
            .write_all(text.as_bytes())
            .map_err(|source| Error::Spawn {
                command: command.clone(),
                source,
            })?;
    }
    let out = child.wait_with_output().map_err(|source| Error::Spawn {
        command: command.clone(),
        source,
    })?;
    if !out.status.success() {
        return Err(Error::Command {
            command,
            status: out.status.to_string(),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Runs a command inside network namespace `ns` (the child is forked from a thread that entered
/// it, so no `ip netns exec` and no /sys remount).
pub fn run_in(
    ns: &str,
    program: &str,
    args: &[&str],
    input: Option<&str>,
) -> Result<String, Error> {
    netns::run_in(&netns::named(ns), || run_with_input(program, args, input)).map_err(|source| {
        Error::Netns {
            netns: ns.to_owned(),
            source,
        }
    })?
}

/// Writes a sysctl of namespace `ns` (`net/ipv4/ip_forward`).
pub fn sysctl(ns: &str, key: &str, value: &str) -> Result<(), Error> {
    let path = Path::new("/proc/sys").join(key);
    netns::run_in(&netns::named(ns), || std::fs::write(&path, value))
        .map_err(|source| Error::Netns {
            netns: ns.to_owned(),
            source,
        })?
        .map_err(|source| Error::Io { path, source })
}

/// Reads a sysctl of namespace `ns`, trimmed.
pub fn read_sysctl(ns: &str, key: &str) -> Result<String, Error> {
    let path = Path::new("/proc/sys").join(key);
    netns::run_in(&netns::named(ns), || std::fs::read_to_string(&path))
        .map_err(|source| Error::Netns {
            netns: ns.to_owned(),
            source,
        })?
        .map(|v| v.trim().to_owned())
        .map_err(|source| Error::Io { path, source })
}

/// The lab namespaces that exist for `prefix`.
pub fn existing_netns(prefix: &str) -> Result<Vec<String>, Error> {
    let dir = Path::new(netns::NETNS_DIR);
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(vec![]),
        Err(source) => {
            return Err(Error::Io {
                path: dir.to_owned(),
                source,
            });
        }
    };
    let mut names: Vec<String> = entries
        .filter_map(Result::ok)
        .filter_map(|e| e.file_name().into_string().ok())
        .filter(|name| is_lab_netns(prefix, name))
        .collect();
    names.sort();
    Ok(names)
}

/// Creates the node namespace: loopback, the bridge with the gateway address, a sink uplink
/// with the default route, forwarding and br_netfilter on.
pub fn create_node(prefix: &str) -> Result<(), Error> {
    let node = node_netns(prefix);
    let br = bridge(prefix);
    let uplink = format!("{prefix}eth0");
    run("ip", &["netns", "add", &node])?;
    let ip = |args: &[&str]| run("ip", &[&["-n", node.as_str()], args].concat());
    ip(&["link", "set", "lo", "up"])?;
    ip(&["link", "add", &br, "type", "bridge"])?;
    ip(&[
        "addr",
        "add",
        &format!("{GATEWAY}/{POD_PREFIX_LEN}"),
        "dev",
        &br,
    ])?;
    ip(&["link", "set", &br, "up"])?;
    ip(&["link", "add", &uplink, "type", "ifb"])?;
    ip(&["addr", "add", UPLINK, "dev", &uplink])?;
    ip(&["link", "set", &uplink, "up"])?;
    ip(&["route", "add", "default", "via", UPLINK_GATEWAY])?;
    sysctl(&node, "net/ipv4/ip_forward", "1")?;
    load_br_netfilter()?;
    sysctl(&node, "net/bridge/bridge-nf-call-iptables", "1")?;
    Ok(())
}

/// Loads br_netfilter where it is a module, as kubeadm's preflight asks of every node: nothing
/// autoloads it (its switches under /proc/sys/net/bridge appear only once it is loaded).
fn load_br_netfilter() -> Result<(), Error> {
    if Path::new("/proc/sys/net/bridge").exists() {
        return Ok(());
    }
    run("modprobe", &["br_netfilter"]).map(|_| ())
}

/// Creates a pod namespace joined to the bridge by a veth (`eth0` inside, `host_ifname` on the
/// node), with its address and default route.
pub fn create_pod(prefix: &str, pod: &str, host_ifname: &str, ip: Ipv4Addr) -> Result<(), Error> {
    let (node, ns) = (node_netns(prefix), pod_netns(prefix, pod));
    run("ip", &["netns", "add", &ns])?;
    run(
        "ip",
        &[
            "-n",
            &node,
            "link",
            "add",
            host_ifname,
            "type",
            "veth",
            "peer",
            "name",
            "eth0",
            "netns",
            &ns,
        ],
    )?;
    run(
        "ip",
        &[
            "-n",
            &node,
            "link",
            "set",
            host_ifname,
            "master",
            &bridge(prefix),
            "up",
        ],
    )?;
    run("ip", &["-n", &ns, "link", "set", "lo", "up"])?;
    run("ip", &["-n", &ns, "link", "set", "eth0", "up"])?;
    add_pod_address(&ns, ip)
}

/// Gives a pod its address and default route (again, after the stale-conntrack fault took them).
pub fn add_pod_address(ns: &str, ip: Ipv4Addr) -> Result<(), Error> {
    run(
        "ip",
        &[
            "-n",
            ns,
            "addr",
            "replace",
            &format!("{ip}/{POD_PREFIX_LEN}"),
            "dev",
            "eth0",
        ],
    )?;
    run(
        "ip",
        &[
            "-n",
            ns,
            "route",
            "replace",
            "default",
            "via",
            &GATEWAY.to_string(),
        ],
    )?;
    Ok(())
}

/// Takes a pod's address away (its default route goes with it).
pub fn remove_pod_address(ns: &str, ip: Ipv4Addr) -> Result<(), Error> {
    run(
        "ip",
        &[
            "-n",
            ns,
            "addr",
            "del",
            &format!("{ip}/{POD_PREFIX_LEN}"),
            "dev",
            "eth0",
        ],
    )
    .map(drop)
}

/// Sets a link in the node namespace up or down.
pub fn set_link(prefix: &str, ifname: &str, up: bool) -> Result<(), Error> {
    let state = if up { "up" } else { "down" };
    run(
        "ip",
        &["-n", &node_netns(prefix), "link", "set", ifname, state],
    )
    .map(drop)
}

/// Removes the node's neighbour (ARP) entry for `ip` on the bridge, if it has one.
pub fn forget_neighbour(prefix: &str, ip: Ipv4Addr) -> Result<(), Error> {
    run(
        "ip",
        &[
            "-n",
            &node_netns(prefix),
            "neigh",
            "flush",
            "to",
            &ip.to_string(),
            "dev",
            &bridge(prefix),
        ],
    )
    .map(drop)
}

/// Deletes a namespace (its interfaces, rules and conntrack entries go with it).
pub fn delete_netns(name: &str) -> Result<(), Error> {
    run("ip", &["netns", "del", name]).map(drop)
}

/// The processes inside namespace `name`.
pub fn netns_pids(name: &str) -> Result<Vec<i32>, Error> {
    Ok(run("ip", &["netns", "pids", name])?
        .split_whitespace()
        .filter_map(|p| p.parse().ok())
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_labs_own_namespaces_match() {
        assert!(is_lab_netns("trl", "trl-node"));
        assert!(is_lab_netns("trl", "trl-dns1"));
        assert!(is_lab_netns("trl", "trl-client12"));
        assert!(!is_lab_netns("trl", "trl-clientx"));
        assert!(!is_lab_netns("trl", "trl-client"));
        assert!(!is_lab_netns("tr", "trl-node"));
        assert!(!is_lab_netns("trl", "trl-node2"));
        assert!(!is_lab_netns("trl", "other"));
        assert!(is_lab_netns("trl", "trl-pod-late"));
        assert!(!is_lab_netns("trl", "trl-pod-"));
        assert!(!is_lab_netns("trl", "trl-pod-Late"));
    }
}
