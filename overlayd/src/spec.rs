//! The vocabulary of kernel objects felt programs for its peers, shared by
//! the backends (which say what they need), the kernel layer (which reads
//! and writes them) and the reconciler (which diffs the two). It imports
//! nothing of overlayd, so the arrows run one way: backend, kernel and
//! reconcile depend on this module, never the other way round.

use ipnet::Ipv4Net;
use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;

/// A route to a peer's subnet (main table, unicast).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct RouteSpec {
    pub dst: Ipv4Net,
    /// `None`: a device route (udp: the whole network to the TUN).
    pub gateway: Option<Ipv4Addr>,
    pub oif: u32,
    pub onlink: bool,
    /// Route priority; felt installs 0. Read back so a same-destination
    /// route with another metric is seen as a different object.
    pub metric: u32,
}

impl RouteSpec {
    /// The kernel's key for NLM_F_REPLACE: one route per (dst, metric) in
    /// the main table (felt sets no TOS).
    pub fn slot(&self) -> (Ipv4Net, u32) {
        (self.dst, self.metric)
    }
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

/// The kernel objects one peer needs.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PeerObjects {
    pub routes: Vec<RouteSpec>,
    pub neighbours: Vec<NeighSpec>,
    pub fdb: Vec<FdbSpec>,
}

impl PeerObjects {
    pub fn is_empty(&self) -> bool {
        self.routes.is_empty() && self.neighbours.is_empty() && self.fdb.is_empty()
    }
}

/// What every peer needs in the kernel, computed purely from the leases:
/// the union of the peers' objects, plus objects the backend needs for
/// itself (udp: one device route for the whole network).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Desired {
    pub routes: BTreeSet<RouteSpec>,
    pub neighbours: BTreeSet<NeighSpec>,
    pub fdb: BTreeSet<FdbSpec>,
    /// Peers that cannot be served, with the reason (logged, exported).
    pub problems: Vec<String>,
}

impl Desired {
    pub fn add(&mut self, objects: &PeerObjects) {
        self.routes.extend(objects.routes.iter().cloned());
        self.neighbours.extend(objects.neighbours.iter().cloned());
        self.fdb.extend(objects.fdb.iter().cloned());
    }

    /// Adds one peer's objects unless they clash with what is already
    /// wanted: a VTEP MAC can have one remote, so a second peer claiming
    /// a MAC in use for another address is refused (whoever holds it keeps
    /// it: a new lease cannot take over an existing node's traffic).
    pub fn try_add(&mut self, objects: &PeerObjects) -> Result<(), String> {
        for f in &objects.fdb {
            let from = FdbSpec {
                dst: Ipv4Addr::UNSPECIFIED,
                ..f.clone()
            };
            let to = FdbSpec {
                dst: Ipv4Addr::BROADCAST,
                ..f.clone()
            };
            if let Some(held) = self.fdb.range(from..=to).find(|h| h.dst != f.dst) {
                return Err(format!(
                    "VtepMAC {} is already used by {}",
                    fmt_mac(&f.mac),
                    held.dst
                ));
            }
        }
        self.add(objects);
        Ok(())
    }

    pub fn remove(&mut self, objects: &PeerObjects) {
        for r in &objects.routes {
            self.routes.remove(r);
        }
        for n in &objects.neighbours {
            self.neighbours.remove(n);
        }
        for f in &objects.fdb {
            self.fdb.remove(f);
        }
    }
}

/// The felt-owned objects the kernel has now (see [`Scope`]), and the
/// route slots held by routes felt does not own.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Actual {
    pub routes: BTreeSet<RouteSpec>,
    pub neighbours: BTreeSet<NeighSpec>,
    pub fdb: BTreeSet<FdbSpec>,
    /// Main-table routes felt does not own, by slot (with a description):
    /// a replace there would overwrite someone else's route (the kernel's
    /// connected route, another daemon's), so felt never writes there.
    pub foreign: BTreeMap<(Ipv4Net, u32), String>,
}

/// Which kernel objects a backend owns, so the reconciler removes only
/// what is felt's: never the own subnet, never routes outside the
/// network, never another interface's objects.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Scope {
    /// The external (underlay) interface.
    pub ext_index: u32,
    /// The backend's device (vxlan VTEP, udp TUN): routes inside the
    /// network through it, and all its permanent neighbours and FDB
    /// entries, are felt's.
    pub device: Option<u32>,
    /// Routes inside the network via a gateway on the external interface
    /// are felt's (host-gw, vxlan with or without DirectRouting: a vxlan
    /// node may have had DirectRouting on before).
    pub ext_gateway_routes: bool,
}

/// What kind of object an operation touches, for metrics and logs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum ObjectKind {
    Route,
    Neighbour,
    Fdb,
    Device,
    Address,
}

impl ObjectKind {
    pub fn name(self) -> &'static str {
        match self {
            ObjectKind::Route => "route",
            ObjectKind::Neighbour => "neighbour",
            ObjectKind::Fdb => "fdb",
            ObjectKind::Device => "device",
            ObjectKind::Address => "address",
        }
    }
}

/// One kernel write. The order of a plan matters (see reconcile::plan).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    DelRoute(RouteSpec),
    DelNeigh(NeighSpec),
    SetNeigh(NeighSpec),
    DelFdb(FdbSpec),
    SetFdb(FdbSpec),
    /// Creates a route in a slot felt does not hold (NLM_F_EXCL): if
    /// someone else's route is there, the kernel refuses and nothing of
    /// theirs is overwritten.
    AddRoute(RouteSpec),
    /// Replaces felt's own route in its slot in place (NLM_F_REPLACE): no
    /// window without a route.
    SetRoute(RouteSpec),
}

impl Op {
    pub fn kind(&self) -> ObjectKind {
        match self {
            Op::DelRoute(_) | Op::AddRoute(_) | Op::SetRoute(_) => ObjectKind::Route,
            Op::DelNeigh(_) | Op::SetNeigh(_) => ObjectKind::Neighbour,
            Op::DelFdb(_) | Op::SetFdb(_) => ObjectKind::Fdb,
        }
    }

    pub fn is_delete(&self) -> bool {
        matches!(self, Op::DelRoute(_) | Op::DelNeigh(_) | Op::DelFdb(_))
    }
}

/// `aa:bb:cc:dd:ee:ff`, as Go's net.HardwareAddr prints it.
pub fn fmt_mac(mac: &[u8; 6]) -> String {
    mac.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}
