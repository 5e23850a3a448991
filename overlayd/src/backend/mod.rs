//! Backends: how traffic reaches the other nodes' subnets.
//!
//! A backend turns leases into the kernel objects it needs. It creates its
//! own device (`prepare`), and says *what* each peer needs
//! (`peer_objects`, pure); only the reconciler (`crate::reconcile`) writes
//! peer state to the kernel.

pub mod hostgw;
pub mod udp;
pub mod vxlan;

use crate::config::{BackendConfig, NetworkConfig};
use crate::kernel::KernelError;
use crate::lease::Lease;
use crate::metrics::Metrics;
use crate::spec::{Desired, ObjectKind, PeerObjects, RouteSpec, Scope};
use async_trait::async_trait;
use ipnet::Ipv4Net;
use std::net::Ipv4Addr;
use std::sync::Arc;

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
    #[error(transparent)]
    Kernel(#[from] KernelError),
    /// A method was called before `prepare` succeeded.
    #[error("backend used before prepare()")]
    NotPrepared,
}

/// The backend named in net-conf.json's `Backend.Type`.
pub fn build(cfg: &NetworkConfig, metrics: Arc<Metrics>) -> Result<Box<dyn Backend>, BackendError> {
    match &cfg.backend {
        BackendConfig::Vxlan(v) => Ok(Box::new(vxlan::VxlanBackend::new(v.clone())?)),
        BackendConfig::HostGw => Ok(Box::new(hostgw::HostGwBackend::new())),
        BackendConfig::Udp(u) => {
            let network = cfg.network.ok_or_else(|| {
                BackendError::Config("the udp backend needs an IPv4 Network".into())
            })?;
            Ok(Box::new(udp::UdpBackend::new(
                u.clone(),
                network,
                cfg.subnet_len,
                metrics,
            )))
        }
    }
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

    /// Called by the reconciler at the start of every round: re-verifies
    /// the device and own address (recreates a device deleted by hand,
    /// fixes MTU/MAC in place). Cheap when nothing differs. Returns what it
    /// had to create or change (none when everything was right).
    async fn ensure(&self, own: &Lease) -> Result<Vec<ObjectKind>, BackendError>;

    /// The kernel objects this backend owns (what the reconciler may
    /// delete). Reflects the device's current ifindex.
    fn scope(&self) -> Scope;

    /// Pure: the routes/neighbours/FDB entries one peer needs, or why it
    /// cannot be served (host-gw: not directly connected). `connected` are
    /// the networks directly connected on the external interface (for
    /// host-gw and DirectRouting). The peer has passed the reconciler's
    /// checks (inside the network, aligned, a usable public IP).
    fn peer_objects(&self, peer: &Lease, connected: &[Ipv4Net]) -> Result<PeerObjects, String>;

    /// Pure: what the backend needs whatever the peers (udp: one route for
    /// the whole network to its TUN). None by default.
    fn base_objects(&self, _own: &Lease) -> PeerObjects {
        PeerObjects::default()
    }

    /// The peers now served, for a backend that forwards in userspace
    /// (udp's peer table). Called after each pass that changed them.
    fn set_peers(&self, _peers: &[&Lease]) {}

    /// Pure: everything `peers` need, in order, each peer's objects added
    /// unless they clash with an earlier peer's (see `Desired::try_add`).
    fn desired(&self, own: &Lease, peers: &[&Lease], connected: &[Ipv4Net]) -> Desired {
        let mut desired = Desired::default();
        desired.add(&self.base_objects(own));
        for peer in peers {
            let added = self
                .peer_objects(peer, connected)
                .and_then(|objects| desired.try_add(&objects));
            if let Err(problem) = added {
                desired.problems.push(format!(
                    "peer {} ({}): {problem}",
                    peer.subnet, peer.attrs.public_ip
                ));
            }
        }
        desired
    }
}

/// Why a peer gets nothing when it claims this node's public IP.
fn own_ip_problem(ext: &ExternalInterface, peer: &Lease) -> Result<(), String> {
    let ip = peer.attrs.public_ip;
    if ip == ext.public_ip || ip == ext.iface_addr {
        return Err(format!("PublicIP {ip} is this node's own; ignored"));
    }
    Ok(())
}

/// The route to a peer's subnet via its public IP on the external
/// interface (host-gw, vxlan DirectRouting), if that IP is on a network
/// directly connected there.
fn direct_route(ext: &ExternalInterface, peer: &Lease, connected: &[Ipv4Net]) -> Option<RouteSpec> {
    let ip = peer.attrs.public_ip;
    connected
        .iter()
        .any(|n| n.contains(&ip))
        .then_some(RouteSpec {
            dst: peer.subnet,
            gateway: Some(ip),
            oif: ext.index,
            onlink: false,
            metric: 0,
        })
}

/// Writes a sysctl under /proc/sys (of this process's network namespace)
/// if it differs; `Ok(false)` when it already held `value` or does not
/// exist (IPv6 disabled).
pub(crate) fn set_sysctl(path: &str, value: &str) -> Result<bool, BackendError> {
    let full = format!("/proc/sys/{path}");
    match std::fs::read_to_string(&full) {
        Ok(cur) if cur.trim() == value => Ok(false),
        Ok(_) => match std::fs::write(&full, value) {
            Ok(()) => Ok(true),
            // A container without privileges sees /proc/sys read-only:
            // the setting is hardening, not needed for traffic.
            Err(e)
                if matches!(
                    e.raw_os_error(),
                    Some(libc::EROFS | libc::EACCES | libc::EPERM)
                ) =>
            {
                tracing::warn!(path = %full, error = %e, "cannot set {value}; continuing without");
                Ok(false)
            }
            Err(e) => Err(BackendError::Config(format!("cannot write {full}: {e}"))),
        },
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(BackendError::Config(format!("cannot read {full}: {e}"))),
    }
}
