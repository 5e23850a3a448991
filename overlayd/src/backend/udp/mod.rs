//! The udp backend's userspace datapath: flannel's wire format (one raw
//! inner IPv4 packet per UDP datagram, port 8285) between the TUN
//! `flannel0` and the underlay, made fast with multiqueue TUN, batched
//! syscalls, TUN TSO/GRO through virtio headers and UDP GSO/GRO.
//!
//! [`UdpBackend`] is the `Backend` around it. [`Engine::start`] runs it; [`Engine::set_peers`] swaps the peer table
//! under traffic; [`Engine::stats`] reads the counters. The device's
//! address, MTU, up state and route are configured by the caller.

mod backend;
mod engine;
mod gro;
mod offload;
mod outbox;
mod peers;
mod rx;
mod socket;
mod stats;
mod tun;
mod tx;
pub mod wire;
mod worker;

pub use backend::{UdpBackend, DEVICE};
pub use engine::{default_queues, ladder, Active, Engine, EngineConfig, Features};
pub use peers::PeerRejected;
pub use stats::{DropReason, Histogram, StatsSnapshot, BUCKET_LOW};
pub use tun::remove_persistent;

use std::net::SocketAddrV4;

#[derive(Debug, thiserror::Error)]
pub enum UdpError {
    #[error("udp backend configuration: {0}")]
    BadConfig(String),
    #[error("TUN {name}: {what}: {source}")]
    Tun {
        name: String,
        what: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("UDP socket {local}: {what}: {source}")]
    Socket {
        local: SocketAddrV4,
        what: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("udp datapath threads: {source}")]
    Thread {
        #[source]
        source: std::io::Error,
    },
}
