//! Level-triggered reconciliation: desired state from the leases, actual
//! state read back from the kernel, converge (add missing, remove what no
//! lease wants, fix what differs). Every trigger (lease snapshot change,
//! periodic resync, netlink notification) recomputes from full state.
//!
//! CONTRACT used by main.rs (do not change without updating main.rs):
//!
//! ```ignore
//! pub async fn run(
//!     backend: std::sync::Arc<dyn crate::backend::Backend>,
//!     own: crate::lease::Lease,
//!     network: ipnet::Ipv4Net,
//!     leases: tokio::sync::watch::Receiver<std::sync::Arc<crate::lease::LeaseSnapshot>>,
//!     resync: std::time::Duration,
//! ) -> Result<(), ReconcileError>
//! ```
//! It runs until `leases` is closed. `own` is filtered out of the
//! snapshot; expired leases are ignored.

use ipnet::Ipv4Net;
use std::collections::BTreeSet;
use std::net::Ipv4Addr;

/// A route to a peer's subnet.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct RouteSpec {
    pub dst: Ipv4Net,
    pub gateway: Ipv4Addr,
    pub oif: u32,
    pub onlink: bool,
}

/// A permanent ARP entry on a device (vxlan: peer's subnet address -> VTEP MAC).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct NeighSpec {
    pub ifindex: u32,
    pub ip: Ipv4Addr,
    pub mac: [u8; 6],
}

/// A permanent bridge FDB entry with NTF_SELF (VTEP MAC -> peer public IP).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct FdbSpec {
    pub ifindex: u32,
    pub mac: [u8; 6],
    pub dst: Ipv4Addr,
}

/// What the peers need in the kernel, computed purely from the leases.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Desired {
    pub routes: BTreeSet<RouteSpec>,
    pub neighbours: BTreeSet<NeighSpec>,
    pub fdb: BTreeSet<FdbSpec>,
    /// Peers that cannot be served, with the reason (logged, exported).
    pub problems: Vec<String>,
}
