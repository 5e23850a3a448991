//! Subnet leases: the shared vocabulary and the `LeaseStore` seam.
//!
//! A store (etcd now, the Kubernetes API later) acquires and renews this
//! node's lease and publishes *full snapshots* of every lease in the
//! network. It never publishes single events: the reconciler always
//! recomputes from the whole set, so a lost event cannot lose state.

pub mod alloc;
pub mod etcd;
pub mod keys;

use async_trait::async_trait;
use ipnet::{Ipv4Net, Ipv6Net};
use std::collections::BTreeMap;
use std::net::{Ipv4Addr, Ipv6Addr};
use std::sync::Arc;
use std::time::SystemTime;
use tokio::sync::watch;

/// What a node publishes about itself, in flannel's JSON shape
/// (`{"PublicIP":..,"PublicIPv6":..,"BackendType":..,"BackendData":..}`).
/// The exact field names and null/omitted rules live in the codec.
#[derive(Debug, Clone, PartialEq)]
pub struct LeaseAttrs {
    pub public_ip: Ipv4Addr,
    pub public_ipv6: Option<Ipv6Addr>,
    pub backend_type: String,
    /// Backend-specific, e.g. `{"VNI":1,"VtepMAC":"c6:d2:32:6f:8f:44"}`.
    pub backend_data: serde_json::Value,
    pub backend_v6_data: Option<serde_json::Value>,
}

/// One node's subnet lease.
#[derive(Debug, Clone, PartialEq)]
pub struct Lease {
    pub subnet: Ipv4Net,
    pub ipv6_subnet: Option<Ipv6Net>,
    pub attrs: LeaseAttrs,
    /// `None` for a reservation (an etcd key without TTL): never expires,
    /// never handed to anyone else.
    pub expiration: Option<SystemTime>,
}

/// Every lease in the network, ours included, keyed by IPv4 subnet.
pub type LeaseSnapshot = BTreeMap<Ipv4Net, Lease>;

/// A reservation-style lease (no expiry, no BackendData) for unit tests.
#[cfg(test)]
pub(crate) fn test_lease(subnet: &str, public_ip: &str, backend_type: &str) -> Lease {
    Lease {
        subnet: subnet.parse().unwrap(),
        ipv6_subnet: None,
        attrs: LeaseAttrs {
            public_ip: public_ip.parse().unwrap(),
            public_ipv6: None,
            backend_type: backend_type.into(),
            backend_data: serde_json::Value::Null,
            backend_v6_data: None,
        },
        expiration: None,
    }
}

/// What this node asks for when it acquires its lease.
#[derive(Debug, Clone)]
pub struct LeaseRequest {
    pub attrs: LeaseAttrs,
    /// The subnet from the previous subnet.env, reused if still free.
    pub previous_subnet: Option<Ipv4Net>,
}

#[derive(Debug, thiserror::Error)]
pub enum LeaseError {
    #[error("network configuration: {0}")]
    Config(String),
    #[error("no free subnet left in {network} (subnets /{subnet_len} between {min} and {max} are all leased or reserved)")]
    NetworkFull {
        network: Ipv4Net,
        subnet_len: u8,
        min: Ipv4Addr,
        max: Ipv4Addr,
    },
    /// Our lease is gone or now belongs to another node.
    #[error("lease for {0} was lost")]
    Lost(Ipv4Net),
    #[error("lease store: {0}")]
    Store(String),
}

/// A source of leases. Every implementation provides every method.
#[async_trait]
pub trait LeaseStore: Send + Sync {
    /// The raw net-conf.json text (etcd: `<prefix>/config`; kube: the file
    /// given by --net-config-path).
    async fn network_config(&self) -> Result<String, LeaseError>;

    /// Reuses this node's lease (same PublicIP), else the previous subnet
    /// if free, else allocates a fresh one. Never hands out a subnet that
    /// another node holds.
    async fn acquire(&self, req: &LeaseRequest) -> Result<Lease, LeaseError>;

    /// Extends the lease; `Lost` when it no longer belongs to us.
    async fn renew(&self, lease: &Lease) -> Result<Lease, LeaseError>;

    /// Publishes a full snapshot into `tx` at start and after every change,
    /// forever: on a broken watch or compaction it re-lists and publishes
    /// the new whole set, reconnecting with backoff. Returns only when
    /// every receiver is gone.
    async fn watch_leases(&self, tx: watch::Sender<Arc<LeaseSnapshot>>) -> Result<(), LeaseError>;
}
