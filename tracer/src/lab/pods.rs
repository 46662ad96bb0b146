//! Client pods added to a running lab (`tracer lab pod add NAME`), as a pod scheduled on a node
//! appears: namespace `{prefix}-pod-{NAME}`, a veth to the bridge (`{prefix}p{NAME}` on the node),
//! an address from 10.244.0.220 up and the default route. The state file lists them; `lab down`
//! removes their namespaces (and with them the veths) like every other lab namespace, also after
//! a killed run.

use std::net::Ipv4Addr;

use super::{Error, Pod, State, topology, up_state, write_state};

/// Longest added pod name: `{prefix}p{NAME}` must fit an interface name (15 bytes).
const MAX_NAME: usize = 6;
/// Added pods' addresses: 10.244.0.220 to .254 (client pods end at .219).
const FIRST_OCTET: u8 = 220;
const LAST_OCTET: u8 = 254;

/// A pod added to the running lab, as the state file keeps it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub(super) struct AddedPod {
    /// Its name (`NAME`).
    pub(super) name: String,
    /// The last octet of its address.
    pub(super) octet: u8,
}

/// The namespace of added pod `name`.
pub(super) fn netns(prefix: &str, name: &str) -> String {
    topology::pod_netns(prefix, &format!("pod-{name}"))
}

/// The node side of added pod `name`'s veth.
fn host_ifname(prefix: &str, name: &str) -> String {
    format!("{prefix}p{name}")
}

/// Whether `name` can name an added pod: 1 to 6 lowercase letters and digits, starting with a
/// letter.
pub(super) fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= MAX_NAME
        && name.starts_with(|c: char| c.is_ascii_lowercase())
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
}

impl AddedPod {
    /// As the tracer and the tests see it.
    pub(super) fn pod(&self, prefix: &str) -> Pod {
        Pod {
            name: self.name.clone(),
            netns: netns(prefix, &self.name),
            ip: Ipv4Addr::new(10, 244, 0, self.octet),
            host_ifname: host_ifname(prefix, &self.name),
        }
    }
}

/// Adds client pod `name` to the running lab.
pub fn add(prefix: &str, name: &str) -> Result<Pod, Error> {
    let mut state = up_state(prefix)?;
    if !valid_name(name) {
        return Err(Error::PodName {
            name: name.to_owned(),
        });
    }
    if state.pods.iter().any(|p| p.name == name) {
        return Err(Error::PodExists {
            name: name.to_owned(),
        });
    }
    let octet = (FIRST_OCTET..=LAST_OCTET)
        .find(|o| state.pods.iter().all(|p| p.octet != *o))
        .ok_or(Error::PodsFull {
            most: LAST_OCTET - FIRST_OCTET + 1,
        })?;
    let added = AddedPod {
        name: name.to_owned(),
        octet,
    };
    let pod = added.pod(prefix);
    let created = topology::create_pod(prefix, &format!("pod-{name}"), &pod.host_ifname, pod.ip)
        .and_then(|()| super::family::setup_pod(&pod.netns, pod.ip, state.ip_family));
    if let Err(e) = created {
        let _ = remove_netns(&pod.netns);
        return Err(e);
    }
    state.pods.push(added);
    write_state(prefix, &state)?;
    Ok(pod)
}

/// Deletes added pod `name` (its namespace, and with it both ends of its veth).
pub fn del(prefix: &str, name: &str) -> Result<(), Error> {
    let mut state = up_state(prefix)?;
    let Some(at) = state.pods.iter().position(|p| p.name == name) else {
        return Err(Error::NoSuchAddedPod {
            name: name.to_owned(),
        });
    };
    remove_netns(&netns(prefix, name))?;
    state.pods.remove(at);
    write_state(prefix, &state)
}

/// Deletes a namespace if it exists.
fn remove_netns(ns: &str) -> Result<(), Error> {
    if crate::netns::named(ns).exists() {
        topology::delete_netns(ns)?;
    }
    Ok(())
}

/// The pods added to the lab in `state`, in the order they were added.
pub(super) fn of(prefix: &str, state: &State) -> Vec<Pod> {
    state.pods.iter().map(|p| p.pod(prefix)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn added_pod_names_fit_interface_names() {
        assert!(valid_name("late") && valid_name("p1") && valid_name("abcdef"));
        assert!(!valid_name("abcdefg") && !valid_name("") && !valid_name("1p"));
        assert!(!valid_name("a-b") && !valid_name("Late"));
        assert!(host_ifname("trt12345", "abcdef").len() <= 15);
        assert!(topology::is_lab_netns("tlv", &netns("tlv", "late")));
    }
}
