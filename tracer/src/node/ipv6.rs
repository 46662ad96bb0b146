//! The IPv6 DNS Service of a dual-stack or IPv6 node: kube-proxy writes its IPv6 rules with
//! `ip6tables` (same chains, same comments), so the IPv4 reader applied to `ip6tables-save`
//! finds the Service and its endpoints.

use std::path::Path;

use super::{
    backend::{self, Backend},
    inspect::{DnsInBackend, Error, in_netns},
    kubeproxy,
};

/// The IPv6 DNS Service in each backend's `ip6tables` save of the calling thread's namespace, nft
/// first. A save tool that fails or prints what cannot be parsed is left out with a warning (as
/// for IPv4): a node without IPv6 tables holds no IPv6 Service.
pub fn dns6_by_backend(warnings: &mut Vec<String>) -> Result<Vec<DnsInBackend>, backend::Error> {
    let mut out = Vec::new();
    for (program, backend) in [
        ("ip6tables-nft-save", Backend::Nft),
        ("ip6tables-legacy-save", Backend::Legacy),
    ] {
        let save = match backend::read_save(program, warnings) {
            Ok(save) => save,
            Err(e @ (backend::Error::Failed { .. } | backend::Error::Parse { .. })) => {
                warnings.push(e.to_string());
                None
            }
            Err(source) => return Err(source),
        };
        if let Some(service) = save.as_ref().and_then(kubeproxy::dns_service) {
            out.push(DnsInBackend { backend, service });
        }
    }
    Ok(out)
}

/// The IPv6 DNS Service in `netns` (`None`: ours), from `ip6tables-nft-save`, else
/// `ip6tables-legacy-save`; `None` when neither holds one.
pub fn dns_service6(netns: Option<&Path>) -> Result<Option<kubeproxy::DnsService>, Error> {
    in_netns(netns, || {
        let found = dns6_by_backend(&mut Vec::new()).map_err(|source| Error::Backend { source })?;
        Ok(found.into_iter().next().map(|d| d.service))
    })?
}
