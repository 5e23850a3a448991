//! The vxlan backend, flannel's datapath: one VTEP `flannel.<VNI>` per
//! node; per peer a permanent ARP entry (peer subnet address -> peer VTEP
//! MAC), a permanent FDB entry (VTEP MAC -> peer public IP) and a route
//! to the peer subnet via its subnet address, onlink, on the VTEP.
//!
//! Where felt differs from flannel, on purpose:
//! - the VTEP MAC is derived from (public IP, VNI), so it survives
//!   restarts and reboots and peers' entries stay valid (flannel #1795);
//! - MTU, MAC and learning are fixed in place on an existing device
//!   (flannel #1775); only VNI/port/local/dev/GBP changes recreate it;
//! - the device is re-verified by every full reconcile pass, which a
//!   deleted or changed device triggers at once (deleted -> recreated).

use super::{
    direct_route, own_ip_problem, set_sysctl, Backend, BackendError, ExternalInterface, Prepared,
};
use crate::config::VxlanConfig;
use crate::kernel::link::{fmt_mac, parse_mac, LinkState, VxlanParams};
use crate::kernel::{Kernel, KernelError};
use crate::lease::Lease;
use crate::spec::{FdbSpec, NeighSpec, ObjectKind, PeerObjects, RouteSpec, Scope};
use async_trait::async_trait;
use ipnet::Ipv4Net;
use netlink_packet_route::link::InfoKind;
use std::net::Ipv4Addr;
use std::sync::atomic::{AtomicU32, Ordering};

/// VXLAN + outer UDP/IPv4 + inner Ethernet header bytes.
const ENCAP_OVERHEAD: u32 = 50;
/// What the kernel uses when no port is given (Linux's historic VXLAN port).
const DEFAULT_PORT: u16 = 8472;
const MAX_VNI: u32 = (1 << 24) - 1;

/// The device as it must be.
#[derive(Debug, Clone)]
struct DeviceSpec {
    name: String,
    params: VxlanParams,
    mtu: u32,
    mac: [u8; 6],
}

pub struct VxlanBackend {
    cfg: VxlanConfig,
    /// All three are set by `prepare`.
    kernel: Option<Kernel>,
    ext: Option<ExternalInterface>,
    spec: Option<DeviceSpec>,
    /// The device's current ifindex, 0 while it does not exist.
    ifindex: AtomicU32,
}

impl VxlanBackend {
    pub fn new(cfg: VxlanConfig) -> Result<Self, BackendError> {
        if cfg.vni == 0 || cfg.vni > MAX_VNI {
            return Err(BackendError::Config(format!(
                "Backend.VNI must be between 1 and {MAX_VNI}, got {}",
                cfg.vni
            )));
        }
        Ok(VxlanBackend {
            cfg,
            kernel: None,
            ext: None,
            spec: None,
            ifindex: AtomicU32::new(0),
        })
    }

    /// The device name, `flannel.<VNI>` as flannel names it.
    pub fn device_name(&self) -> String {
        format!("flannel.{}", self.cfg.vni)
    }

    fn device_spec(&self, ext: &ExternalInterface) -> Result<DeviceSpec, BackendError> {
        let mtu = match self.cfg.mtu {
            Some(m) => m,
            None => ext.mtu.checked_sub(ENCAP_OVERHEAD).ok_or_else(|| {
                BackendError::Config(format!(
                    "{} has MTU {}, too small for VXLAN",
                    ext.name, ext.mtu
                ))
            })?,
        };
        if mtu < 68 {
            return Err(BackendError::Config(format!(
                "VXLAN MTU {mtu} is below IPv4's minimum of 68"
            )));
        }
        Ok(DeviceSpec {
            name: self.device_name(),
            params: VxlanParams {
                vni: self.cfg.vni,
                port: if self.cfg.port == 0 {
                    DEFAULT_PORT
                } else {
                    self.cfg.port
                },
                // flannel binds the VTEP to the interface address: a
                // --public-ip behind NAT is not an address of this host.
                local: ext.iface_addr,
                dev: ext.index,
                learning: self.cfg.learning,
                gbp: self.cfg.gbp,
            },
            mtu,
            mac: vtep_mac(ext.public_ip, self.cfg.vni),
        })
    }
}

/// A stable VTEP MAC for (public IP, VNI): FNV-1a 64 of a versioned
/// label, the address and the VNI; locally administered, unicast. The
/// format is part of felt's compatibility promise: changing it changes
/// every node's MAC on upgrade.
pub fn vtep_mac(public_ip: Ipv4Addr, vni: u32) -> [u8; 6] {
    const OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
    const PRIME: u64 = 0x0000_0100_0000_01b3;
    let mut hash = OFFSET;
    let (octets, vni) = (public_ip.octets(), vni.to_be_bytes());
    let input = b"felt-vtep-mac/v1"
        .iter()
        .chain(octets.iter())
        .chain(vni.iter());
    for byte in input {
        hash ^= u64::from(*byte);
        hash = hash.wrapping_mul(PRIME);
    }
    let b = hash.to_be_bytes();
    [(b[0] | 0x02) & 0xfe, b[1], b[2], b[3], b[4], b[5]]
}

/// Why an existing device cannot be adopted, if it cannot. These are the
/// attributes the kernel refuses to change on a live VXLAN device.
fn incompatible(
    kind: Option<&InfoKind>,
    have: Option<&VxlanParams>,
    want: &VxlanParams,
) -> Option<String> {
    let (Some(InfoKind::Vxlan), Some(have)) = (kind, have) else {
        return Some(format!("link kind {kind:?} is not vxlan"));
    };
    let diffs = [
        (
            have.vni != want.vni,
            format!("vni {} vs {}", have.vni, want.vni),
        ),
        (
            have.port != want.port,
            format!("port {} vs {}", have.port, want.port),
        ),
        (
            have.local != want.local,
            format!("local {} vs {}", have.local, want.local),
        ),
        (
            have.dev != want.dev,
            format!("dev #{} vs #{}", have.dev, want.dev),
        ),
        (
            have.gbp != want.gbp,
            format!("gbp {} vs {}", have.gbp, want.gbp),
        ),
    ];
    let reasons: Vec<String> = diffs
        .into_iter()
        .filter(|(d, _)| *d)
        .map(|(_, r)| r)
        .collect();
    (!reasons.is_empty()).then(|| reasons.join(", "))
}

/// Creates the device, adopts a compatible one (fixing MTU, MAC and
/// learning in place, so pods' traffic is undisturbed) or recreates an
/// incompatible one. Returns the device as it stands (its `up` state is
/// as read, so the caller needs no second lookup) and whether anything
/// had to be created or changed.
async fn ensure_device(
    kernel: &Kernel,
    spec: &DeviceSpec,
) -> Result<(LinkState, bool), BackendError> {
    if let Some(link) = kernel.link_by_name(&spec.name).await? {
        match incompatible(link.kind.as_ref(), link.vxlan.as_ref(), &spec.params) {
            None => {
                let fixed = fix_in_place(kernel, spec, &link).await?;
                return Ok((link, fixed));
            }
            Some(reason) => {
                tracing::warn!(device = %spec.name, %reason, "existing device is incompatible; recreating it");
                kernel.delete_link(link.index).await?;
            }
        }
    }
    tracing::info!(device = %spec.name, vni = spec.params.vni, port = spec.params.port,
        local = %spec.params.local, mtu = spec.mtu, mac = %fmt_mac(&spec.mac), "creating VXLAN device");
    kernel
        .create_vxlan(&spec.name, &spec.params, spec.mtu, spec.mac)
        .await?;
    match kernel.link_by_name(&spec.name).await? {
        Some(link) => Ok((link, true)),
        // Someone deleted it in between; the next round creates it again.
        None => Err(BackendError::Kernel(KernelError::Unexpected {
            what: format!("link {}", spec.name),
            detail: "gone right after creation".into(),
        })),
    }
}

async fn fix_in_place(
    kernel: &Kernel,
    spec: &DeviceSpec,
    link: &LinkState,
) -> Result<bool, BackendError> {
    let mut changed = false;
    if link.mtu != spec.mtu {
        changed = true;
        tracing::info!(device = %spec.name, from = link.mtu, to = spec.mtu, "changing MTU in place");
        kernel.set_mtu(link.index, spec.mtu).await?;
    }
    if link.mac != Some(spec.mac) {
        changed = true;
        tracing::info!(device = %spec.name, to = %fmt_mac(&spec.mac), "restoring the stable VTEP MAC");
        kernel.set_mac(link.index, spec.mac).await?;
    }
    if link.vxlan.as_ref().map(|v| v.learning) != Some(spec.params.learning) {
        changed = true;
        tracing::info!(device = %spec.name, learning = spec.params.learning, "changing learning in place");
        kernel
            .set_vxlan_learning(link.index, spec.params.learning)
            .await?;
    }
    Ok(changed)
}

#[async_trait]
impl Backend for VxlanBackend {
    fn backend_type(&self) -> &'static str {
        "vxlan"
    }

    async fn prepare(&mut self, ext: &ExternalInterface) -> Result<Prepared, BackendError> {
        let spec = self.device_spec(ext)?;
        let kernel = Kernel::connect()?;
        let index = ensure_device(&kernel, &spec).await?.0.index;
        self.ifindex.store(index, Ordering::SeqCst);
        let prepared = Prepared {
            backend_data: serde_json::json!({"VNI": spec.params.vni, "VtepMAC": fmt_mac(&spec.mac)}),
            mtu: spec.mtu,
        };
        self.kernel = Some(kernel);
        self.ext = Some(ext.clone());
        self.spec = Some(spec);
        Ok(prepared)
    }

    async fn configure_own(&mut self, own: &Lease) -> Result<(), BackendError> {
        self.ensure(own).await.map(|_| ())
    }

    async fn ensure(&self, own: &Lease) -> Result<Vec<ObjectKind>, BackendError> {
        let (Some(kernel), Some(spec)) = (&self.kernel, &self.spec) else {
            return Err(BackendError::NotPrepared);
        };
        let link = ensure_device(kernel, spec).await;
        // Record what exists even when a later step fails, so the scope
        // (what may be pruned) follows the real device.
        self.ifindex
            .store(link.as_ref().map_or(0, |(l, _)| l.index), Ordering::SeqCst);
        let (link, mut changed) = link?;
        let index = link.index;
        // No router advertisements on the VTEP: nothing legitimate sends
        // them there, and an accepted one would add routes felt does not own.
        if set_sysctl(&format!("net/ipv6/conf/{}/accept_ra", spec.name), "0")? {
            changed = true;
        }
        let mut corrections = Vec::new();
        if changed {
            corrections.push(ObjectKind::Device);
        }
        // The subnet's network address as a /32: a source address for
        // host-to-pod traffic towards peers, without a broadcast route.
        let addr = Ipv4Net::new(own.subnet.network(), 32)
            .map_err(|e| BackendError::Config(format!("own subnet {}: {e}", own.subnet)))?;
        if kernel.ensure_only_ipv4_addr(index, addr).await? {
            corrections.push(ObjectKind::Address);
        }
        if !link.up {
            kernel.set_up(index).await?;
            if !changed {
                corrections.push(ObjectKind::Device);
            }
        }
        Ok(corrections)
    }

    fn scope(&self) -> Scope {
        let index = self.ifindex.load(Ordering::SeqCst);
        Scope {
            ext_index: self.ext.as_ref().map_or(0, |ext| ext.index),
            device: (index != 0).then_some(index),
            // Also without DirectRouting: a node that had it on before
            // leaves direct routes that no lease wants any more.
            ext_gateway_routes: true,
        }
    }

    fn peer_objects(&self, peer: &Lease, connected: &[Ipv4Net]) -> Result<PeerObjects, String> {
        let ext = self.ext.as_ref().ok_or("vxlan backend not prepared")?;
        own_ip_problem(ext, peer)?;
        if self.cfg.direct_routing {
            if let Some(route) = direct_route(ext, peer, connected) {
                return Ok(PeerObjects {
                    routes: vec![route],
                    ..PeerObjects::default()
                });
            }
        }
        let mac = self.peer_vtep_mac(peer)?;
        let dev = self.ifindex.load(Ordering::SeqCst);
        if dev == 0 {
            return Err(format!("device {} is missing", self.device_name()));
        }
        let gateway = peer.subnet.network();
        Ok(PeerObjects {
            neighbours: vec![NeighSpec {
                ifindex: dev,
                ip: gateway,
                mac,
            }],
            fdb: vec![FdbSpec {
                ifindex: dev,
                mac,
                dst: peer.attrs.public_ip,
            }],
            routes: vec![RouteSpec {
                dst: peer.subnet,
                gateway: Some(gateway),
                oif: dev,
                onlink: true,
                metric: 0,
            }],
        })
    }
}

/// The fields of a peer's vxlan BackendData felt reads, each of any JSON
/// type (a wrong type is judged by the reader, as with a parsed map).
#[derive(Default, serde::Deserialize)]
struct PeerData {
    #[serde(rename = "VtepMAC")]
    vtep_mac: Option<serde_json::Value>,
    #[serde(rename = "VNI")]
    vni: Option<serde_json::Value>,
}

impl VxlanBackend {
    /// The peer's VTEP MAC from its BackendData. It must be a unicast MAC:
    /// a multicast or zero one would flood or blackhole. A VNI other than
    /// ours is logged but still routed, as flannel (which never checks
    /// it) would.
    fn peer_vtep_mac(&self, peer: &Lease) -> Result<[u8; 6], String> {
        let data = &peer.attrs.backend_data;
        // Only the two fields, not a whole map: this runs for every peer
        // on every full pass.
        let fields: PeerData = serde_json::from_str(data.as_json()).unwrap_or_default();
        let mac = fields
            .vtep_mac
            .as_ref()
            .and_then(|v| v.as_str())
            .and_then(parse_mac)
            .filter(|m| m[0] & 1 == 0 && *m != [0; 6])
            .ok_or_else(|| format!("BackendData has no valid unicast VtepMAC: {data}"))?;
        if let Some(vni) = fields.vni.as_ref().and_then(|v| v.as_u64()) {
            if vni != u64::from(self.cfg.vni) {
                tracing::warn!(peer = %peer.subnet, vni, ours = self.cfg.vni,
                    "peer uses another VNI; its traffic will be dropped");
            }
        }
        Ok(mac)
    }
}

#[cfg(test)]
mod tests;
