//! Code shared by the `felt` CNI plugin and `overlayd`.
//!
//! Kept deliberately small (ipnet, nix, thiserror only) so the CNI binary
//! stays fast to start.

pub mod netns;
pub mod subnet_env;
#[cfg(feature = "testutil")]
pub mod testutil;
