//! Subnet leases: the shared vocabulary and the `LeaseStore` seam.
//!
//! A store (etcd, or the Kubernetes API) acquires and renews this node's
//! lease and publishes *full snapshots* of every lease in the network. It
//! never publishes single events: a lost event cannot lose state, and the
//! reconciler finds what changed by comparing snapshots (cheaply: leases
//! are shared between snapshots).

pub mod alloc;
pub mod etcd;
pub mod keys;
pub mod kube;

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
    pub backend_data: BackendData,
    pub backend_v6_data: Option<serde_json::Value>,
}

/// A lease's BackendData, kept as compact JSON text: a parsed map costs
/// about 750 bytes per lease, the text about 40, and a node holds every
/// peer's (65,000 in the largest clusters). Canonical (keys sorted, as
/// serde_json writes a map), so equal data compares equal.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct BackendData(Option<Box<str>>);

impl BackendData {
    /// No BackendData (JSON null or absent).
    pub const NULL: BackendData = BackendData(None);

    pub fn is_null(&self) -> bool {
        self.0.is_none()
    }

    /// The data parsed, for a backend to read its fields.
    pub fn to_value(&self) -> serde_json::Value {
        self.0
            .as_deref()
            .and_then(|s| serde_json::from_str(s).ok())
            .unwrap_or(serde_json::Value::Null)
    }

    /// The JSON text (`null` when there is none).
    pub fn as_json(&self) -> &str {
        self.0.as_deref().unwrap_or("null")
    }
}

impl From<serde_json::Value> for BackendData {
    fn from(v: serde_json::Value) -> Self {
        (&v).into()
    }
}

impl From<&serde_json::Value> for BackendData {
    fn from(v: &serde_json::Value) -> Self {
        if v.is_null() {
            BackendData::NULL
        } else {
            BackendData(Some(v.to_string().into_boxed_str()))
        }
    }
}

impl std::fmt::Display for BackendData {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_json())
    }
}

/// How long a lease lives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Term {
    /// A key without an etcd lease: an operator's reservation. It never
    /// expires and is never handed to anyone else.
    Reservation,
    /// Bound to an etcd lease (or, in Kubernetes mode, to the Node). The
    /// expiry is known for our own lease (from the grant); for peers read
    /// from a listing it is not asked for: etcd deletes a key when its
    /// lease runs out, so a listed key is live. (Asking would cost one
    /// request per peer, flannel's reason for stalling at scale.)
    Expiring(Option<SystemTime>),
}

impl Term {
    pub fn is_reservation(self) -> bool {
        self == Term::Reservation
    }

    /// The expiry time, when known.
    pub fn expires(self) -> Option<SystemTime> {
        match self {
            Term::Expiring(t) => t,
            Term::Reservation => None,
        }
    }
}

/// One node's subnet lease.
#[derive(Debug, Clone, PartialEq)]
pub struct Lease {
    pub subnet: Ipv4Net,
    pub ipv6_subnet: Option<Ipv6Net>,
    pub attrs: LeaseAttrs,
    pub term: Term,
}

/// Every lease in the network, ours included, keyed by IPv4 subnet; what a
/// store publishes. Leases are shared (`Arc`) between consecutive
/// snapshots, so a consumer finds what changed by pointer comparison
/// instead of comparing every lease field by field.
#[derive(Debug, Clone, Default)]
pub struct LeaseSnapshot {
    leases: BTreeMap<Ipv4Net, Arc<Lease>>,
    /// Keys the store holds that are not valid leases (a value that is not
    /// flannel's lease JSON), with the reason: they are skipped, and say so.
    pub malformed: BTreeMap<String, String>,
    /// Bumped each time the store had to list everything afresh (start, a
    /// lost or compacted watch): a consumer that keeps its own state runs
    /// a full pass then.
    pub listing: u64,
}

impl LeaseSnapshot {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn insert(&mut self, lease: Lease) {
        self.leases.insert(lease.subnet, Arc::new(lease));
    }

    /// Inserts a lease the caller already shares (a store that rebuilds
    /// snapshots keeps unchanged leases pointer-equal this way).
    pub fn insert_shared(&mut self, lease: Arc<Lease>) {
        self.leases.insert(lease.subnet, lease);
    }

    /// Keeps `lease` (shared) unless an equal one is already there, so an
    /// unchanged re-put does not look like a change to consumers.
    pub fn upsert(&mut self, lease: Lease) {
        match self.leases.get(&lease.subnet) {
            Some(cur) if **cur == lease => {}
            _ => self.insert(lease),
        }
    }

    pub fn remove(&mut self, subnet: &Ipv4Net) -> Option<Arc<Lease>> {
        self.leases.remove(subnet)
    }

    pub fn get(&self, subnet: &Ipv4Net) -> Option<&Lease> {
        self.leases.get(subnet).map(|l| l.as_ref())
    }

    pub fn contains_key(&self, subnet: &Ipv4Net) -> bool {
        self.leases.contains_key(subnet)
    }

    pub fn len(&self) -> usize {
        self.leases.len()
    }

    pub fn is_empty(&self) -> bool {
        self.leases.is_empty()
    }

    pub fn keys(&self) -> impl Iterator<Item = &Ipv4Net> {
        self.leases.keys()
    }

    pub fn values(&self) -> impl Iterator<Item = &Lease> {
        self.leases.values().map(|l| l.as_ref())
    }

    pub fn shared(&self) -> &BTreeMap<Ipv4Net, Arc<Lease>> {
        &self.leases
    }

    /// Subnets whose lease differs between `self` (older) and `newer`:
    /// added, removed or changed, in subnet order.
    pub fn changed_since(&self, newer: &LeaseSnapshot) -> Vec<Ipv4Net> {
        use std::cmp::Ordering;
        let (mut a, mut b) = (
            self.leases.iter().peekable(),
            newer.leases.iter().peekable(),
        );
        let mut out = Vec::new();
        loop {
            match (a.peek(), b.peek()) {
                (None, None) => return out,
                (Some((k, _)), None) => {
                    out.push(**k);
                    a.next();
                }
                (None, Some((k, _))) => {
                    out.push(**k);
                    b.next();
                }
                (Some((ka, la)), Some((kb, lb))) => match ka.cmp(kb) {
                    Ordering::Less => {
                        out.push(**ka);
                        a.next();
                    }
                    Ordering::Greater => {
                        out.push(**kb);
                        b.next();
                    }
                    Ordering::Equal => {
                        if !Arc::ptr_eq(la, lb) && la != lb {
                            out.push(**ka);
                        }
                        a.next();
                        b.next();
                    }
                },
            }
        }
    }
}

impl FromIterator<Lease> for LeaseSnapshot {
    fn from_iter<I: IntoIterator<Item = Lease>>(iter: I) -> Self {
        let mut s = LeaseSnapshot::new();
        for l in iter {
            s.insert(l);
        }
        s
    }
}

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
            backend_data: BackendData::NULL,
            backend_v6_data: None,
        },
        term: Term::Reservation,
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

    /// Tells the store that routes to the peers are in place (kube: the
    /// Node condition NetworkUnavailable=False). etcd has nothing to record.
    async fn mark_ready(&self, lease: &Lease) -> Result<(), LeaseError>;
}
