//! Backends: how traffic reaches the other nodes' subnets.
//!
//! A backend turns leases into the kernel objects it needs. It creates its
//! own device (`prepare`), and says *what* the peers need (`desired`, pure);
//! only the reconciler (`crate::reconcile`) writes peer state to the kernel.

use crate::lease::Lease;
use crate::reconcile::Desired;
use async_trait::async_trait;
use std::net::Ipv4Addr;

/// The node's external interface, chosen by --iface / --iface-regex /
/// default route, with --public-ip applied.
#[derive(Debug, Clone, PartialEq)]
pub struct ExternalInterface {
    pub name: String,
    pub index: u32,
    /// The interface's own IPv4 address.
    pub iface_addr: Ipv4Addr,
    /// The address peers reach us at (--public-ip, else `iface_addr`).
    pub public_ip: Ipv4Addr,
    pub mtu: u32,
}

/// What a backend publishes in the lease, and the MTU pods must use.
#[derive(Debug, Clone, PartialEq)]
pub struct Prepared {
    pub backend_data: serde_json::Value,
    pub mtu: u32,
}

#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    #[error("backend configuration: {0}")]
    Config(String),
    #[error("kernel: {0}")]
    Kernel(String),
}

#[async_trait]
pub trait Backend: Send + Sync {
    /// flannel's BackendType string: "vxlan", "host-gw", "udp".
    fn backend_type(&self) -> &'static str;

    /// Creates or verifies this node's device, before the lease exists.
    /// A device that is already right is left untouched (pods keep their
    /// traffic across restarts); one that differs is fixed in place.
    async fn prepare(&mut self, ext: &ExternalInterface) -> Result<Prepared, BackendError>;

    /// Once the lease is held: this node's own addresses (vxlan: the
    /// subnet's network address /32 on the VTEP).
    async fn configure_own(&mut self, own: &Lease) -> Result<(), BackendError>;

    /// Pure: the routes/neighbours/FDB entries the peers need. Peers that
    /// cannot be served (host-gw: not directly connected) are reported in
    /// `Desired::problems`, never silently dropped.
    fn desired(&self, own: &Lease, peers: &[&Lease]) -> Desired;
}
