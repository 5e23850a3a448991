//! overlayd as a library: the binary (`main.rs`) only parses flags and
//! wires these modules together; integration tests drive them directly.
//!
//! Layers, each depending only on those below it:
//! `spec` (the vocabulary of kernel objects) <- `kernel` (rtnetlink) and
//! `backend` (what peers need) <- `reconcile` (desired vs actual) <-
//! `daemon` (start-up, leases, the loops). `lease` (stores), `firewall`,
//! `health` and `metrics` stand beside them.

pub mod backend;
pub mod cli;
pub mod config;
pub mod daemon;
pub mod firewall;
pub mod health;
pub mod iface;
pub mod kernel;
pub mod lease;
pub mod log;
pub mod metrics;
pub mod reconcile;
pub mod spec;
