//! What the overlay programmed into a node's kernel, read with
//! `ip -j` / `bridge -j`, and checks of it against flannel's datapath.

use crate::error::Result;
use crate::netns::Netns;
use ipnet::Ipv4Net;
use serde_json::Value;
use std::net::Ipv4Addr;

/// flannel's VXLAN device for VNI 1.
pub const VTEP: &str = "flannel.1";

/// A node's overlay-related kernel state. Each list is a set: sorted by
/// its canonical JSON text, so two states compare equal whatever order the
/// kernel dumped them in (the neighbour and FDB hash tables are shared by
/// every namespace and re-hashed as other tests add entries).
#[derive(Debug, Clone, PartialEq)]
pub struct KernelState {
    /// Main-table routes.
    pub routes: Vec<Value>,
    /// The VXLAN device (ifindex, address, mtu, flags), if present.
    pub vtep: Option<Value>,
    /// Neighbour entries on the VXLAN device.
    pub neigh: Vec<Value>,
    /// FDB entries on the VXLAN device.
    pub fdb: Vec<Value>,
}

/// Reads the state from namespace `ns`.
pub fn snapshot(ns: &Netns) -> Result<KernelState> {
    let routes = ns.ip_json(&["route", "show"])?;
    let links = ns.ip_json(&["-d", "link", "show"])?;
    let vtep = links
        .iter()
        .find(|l| l["ifname"] == VTEP)
        .map(stable_link_fields);
    let (neigh, fdb) = if vtep.is_some() {
        (ns.ip_json(&["neigh", "show", "dev", VTEP])?, ns.fdb(VTEP)?)
    } else {
        (Vec::new(), Vec::new())
    };
    Ok(KernelState {
        routes: as_set(routes),
        vtep,
        neigh: as_set(neigh),
        fdb: as_set(fdb),
    })
}

/// The list in canonical order, duplicates removed (serde_json's maps
/// keep keys sorted, so equal objects print equal).
fn as_set(items: Vec<Value>) -> Vec<Value> {
    let mut keyed: Vec<(String, Value)> = items.into_iter().map(|v| (v.to_string(), v)).collect();
    keyed.sort_by(|a, b| a.0.cmp(&b.0));
    keyed.dedup_by(|a, b| a.0 == b.0);
    keyed.into_iter().map(|(_, v)| v).collect()
}

/// The fields of a link that only change when the device is recreated or
/// reconfigured (not counters or operstate noise).
fn stable_link_fields(link: &Value) -> Value {
    serde_json::json!({
        "ifindex": link["ifindex"],
        "address": link["address"],
        "mtu": link["mtu"],
        "flags": link["flags"],
        "vxlan": link["linkinfo"]["info_data"],
    })
}

/// What one node publishes to the others.
#[derive(Debug, Clone, PartialEq)]
pub struct Peer {
    pub subnet: Ipv4Net,
    pub public_ip: Ipv4Addr,
    /// The peer's VTEP MAC (vxlan only).
    pub vtep_mac: Option<String>,
}

impl KernelState {
    pub fn vtep_mac(&self) -> Option<String> {
        self.vtep
            .as_ref()
            .and_then(|v| v["address"].as_str())
            .map(str::to_string)
    }

    pub fn route_to(&self, subnet: Ipv4Net) -> Option<&Value> {
        let dst = subnet.to_string();
        self.routes.iter().find(|r| r["dst"] == dst.as_str())
    }

    pub fn neigh_for(&self, addr: Ipv4Addr) -> Option<&Value> {
        let dst = addr.to_string();
        self.neigh.iter().find(|n| n["dst"] == dst.as_str())
    }

    pub fn fdb_for(&self, mac: &str) -> Option<&Value> {
        self.fdb.iter().find(|f| f["mac"] == mac)
    }

    /// Everything wrong with this node's VXLAN entries for `peer` (flannel's
    /// datapath: onlink route via the subnet's network address, permanent
    /// neighbour to the VTEP MAC, permanent self FDB to the public IP).
    pub fn vxlan_peer_problems(&self, peer: &Peer) -> Vec<String> {
        let mut problems = Vec::new();
        let gw = peer.subnet.network();
        let mac = peer.vtep_mac.clone().unwrap_or_default();
        match self.route_to(peer.subnet) {
            None => problems.push(format!("no route to {}", peer.subnet)),
            Some(r) => {
                let onlink = has(&r["flags"], "onlink");
                if r["gateway"] != gw.to_string().as_str() || r["dev"] != VTEP || !onlink {
                    problems.push(format!("route to {} is {r}", peer.subnet));
                }
            }
        }
        match self.neigh_for(gw) {
            None => problems.push(format!("no neighbour {gw} on {VTEP}")),
            Some(n) => {
                if n["lladdr"] != mac.as_str() || !has(&n["state"], "PERMANENT") {
                    problems.push(format!("neighbour {gw} is {n}"));
                }
            }
        }
        match self.fdb_for(&mac) {
            None => problems.push(format!("no FDB entry for {mac}")),
            Some(f) => {
                let ok = f["dst"] == peer.public_ip.to_string().as_str()
                    && has(&f["flags"], "self")
                    && f["state"] == "permanent";
                if !ok {
                    problems.push(format!("FDB entry for {mac} is {f}"));
                }
            }
        }
        problems
    }

    /// Everything wrong with this node's host-gw route for `peer`.
    pub fn hostgw_peer_problems(&self, peer: &Peer, iface: &str) -> Vec<String> {
        match self.route_to(peer.subnet) {
            None => vec![format!("no route to {}", peer.subnet)],
            Some(r) if r["gateway"] == peer.public_ip.to_string().as_str() && r["dev"] == iface => {
                Vec::new()
            }
            Some(r) => vec![format!("route to {} is {r}", peer.subnet)],
        }
    }

    /// Everything wrong with the udp backend's one route (the network to
    /// flannel0).
    pub fn udp_problems(&self, network: &str) -> Vec<String> {
        match self.routes.iter().find(|r| r["dst"] == network) {
            Some(r) if r["dev"] == "flannel0" && r.get("gateway").is_none() => Vec::new(),
            Some(r) => vec![format!("route to {network} is {r}")],
            None => vec![format!("no route to {network}")],
        }
    }

    /// Every kernel entry still pointing at `peer` (after it left).
    pub fn leftovers_of(&self, peer: &Peer) -> Vec<String> {
        let mut left = Vec::new();
        if let Some(r) = self.route_to(peer.subnet) {
            left.push(format!("route {r}"));
        }
        let gw = peer.subnet.network().to_string();
        let ip = peer.public_ip.to_string();
        for n in &self.neigh {
            if n["dst"] == gw.as_str() {
                left.push(format!("neighbour {n}"));
            }
        }
        for f in &self.fdb {
            let mac_match = peer.vtep_mac.as_deref().is_some_and(|m| f["mac"] == m);
            if mac_match || f["dst"] == ip.as_str() {
                left.push(format!("fdb {f}"));
            }
        }
        left
    }
}

/// What flanneld programs on a node for one vxlan peer, made by hand with
/// ip(8) and bridge(8): a permanent neighbour (the peer subnet's network
/// address -> its VTEP MAC), a permanent self FDB entry (VTEP MAC -> its
/// public IP) and an onlink route via that address on [`VTEP`].
pub fn add_vxlan_peer_by_hand(ns: &Netns, peer: &Peer) -> Result<()> {
    let gw = peer.subnet.network().to_string();
    let mac = peer.vtep_mac.clone().unwrap_or_default();
    let dst = peer.subnet.to_string();
    let public = peer.public_ip.to_string();
    ns.ip(&[
        "neigh",
        "replace",
        &gw,
        "lladdr",
        &mac,
        "dev",
        VTEP,
        "nud",
        "permanent",
    ])?;
    ns.exec(&[
        "bridge",
        "fdb",
        "replace",
        &mac,
        "dev",
        VTEP,
        "dst",
        &public,
        "self",
        "permanent",
    ])?;
    ns.ip(&["route", "replace", &dst, "via", &gw, "dev", VTEP, "onlink"])?;
    Ok(())
}

/// Whether a JSON list (flags, state) contains `item`.
fn has(list: &Value, item: &str) -> bool {
    list.as_array().is_some_and(|l| l.iter().any(|v| v == item))
}
