//! Built-in IPAM, compatible with host-local's policy and disk format.

pub mod allocator;
pub mod owners;
pub mod range;
pub mod store;
