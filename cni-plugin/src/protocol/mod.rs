//! The CNI wire protocol: environment, config on stdin, results on stdout.

pub mod config;
pub mod env;
pub mod result;
pub mod version;
