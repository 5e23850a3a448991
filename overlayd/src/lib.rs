//! overlayd as a library: the binary (`main.rs`) only parses flags and
//! wires these modules together; integration tests drive them directly.

pub mod backend;
pub mod cli;
pub mod config;
pub mod daemon;
pub mod iface;
pub mod kernel;
pub mod lease;
pub mod reconcile;
