mod backend;
mod config;
mod lease;
mod reconcile;
fn main() {}
