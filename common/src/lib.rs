//! Code shared by the `felt` CNI plugin and `overlayd`.
//!
//! Kept deliberately small (ipnet, nix, thiserror only) so the CNI binary
//! stays fast to start.

#[cfg(feature = "testutil")]
pub mod kernel_monitor;
pub mod netns;
pub mod subnet_env;
#[cfg(feature = "testutil")]
pub mod testutil;
