//! The IPv6 DNS Service of a dual-stack or IPv6 node: kube-proxy writes its IPv6 rules with
//! `ip6tables` (same chains, same comments), so the IPv4 reader applied to `ip6tables-save`
//! finds the Service and its endpoints.

use std::path::Path;

use super::{
    DnsService, backend,
    inspect::{Error, in_netns},
    kubeproxy,
};

/// The IPv6 DNS Service in `netns` (`None`: ours), from `ip6tables-nft-save`, else
/// `ip6tables-legacy-save`; `None` when neither holds one.
pub fn dns_service6(netns: Option<&Path>) -> Result<Option<DnsService>, Error> {
    in_netns(netns, || {
        let mut warnings = Vec::new();
        for program in ["ip6tables-nft-save", "ip6tables-legacy-save"] {
            let save = match backend::read_save(program, &mut warnings) {
                Ok(save) => save,
                // A tool that fails (no such table, no module) holds no Service.
                Err(backend::Error::Failed { .. } | backend::Error::Parse { .. }) => None,
                Err(source) => return Err(Error::Backend { source }),
            };
            if let Some(svc) = save.as_ref().and_then(kubeproxy::dns_service) {
                return Ok(Some(svc));
            }
        }
        Ok(None)
    })?
}
