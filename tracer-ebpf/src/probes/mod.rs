//! One file per pipeline stage, in the order a query meets them.
pub mod conntrack;
pub mod device;
pub mod drop;
pub mod nat;
pub mod netfilter;
pub mod socket;
pub mod stash;
