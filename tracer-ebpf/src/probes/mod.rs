//! One file per pipeline stage, in the order a query meets them.
pub mod device;
pub mod netfilter;
pub mod nat;
pub mod conntrack;
pub mod drop;
pub mod socket;
pub mod stash;
