//! The reference datapath, built by hand with ip(8) on the cluster's own
//! underlay bridge: two node namespaces, each with a `cni0` bridge and one
//! pod on a veth pair (the MTU felt's nodes use: 1450 under vxlan, 1500
//! with host-gw), plus flannel's vxlan device with a permanent neighbour,
//! FDB entry and onlink route per peer, or plain routes via the peer for
//! host-gw. What felt programs should be exactly as fast as this.

use crate::error::Result;
use crate::objects::{make_vtep, VtepSpec};
use crate::peers::{fmt_mac, mac_for};
use felt_cluster::{Backend, Cluster, Netns};
use ipnet::Ipv4Net;
use std::net::Ipv4Addr;

/// One hand-built node and its pod.
pub struct RefNode {
    // Pod first: it goes before its node on drop.
    pub pod: Netns,
    pub node: Netns,
    /// The node's underlay address.
    pub ip: Ipv4Addr,
    pub subnet: Ipv4Net,
    pub pod_ip: Ipv4Addr,
    pub vtep_mac: [u8; 6],
}

/// Why `--backends udp` is refused.
pub const UDP_HAS_ITS_OWN_BENCH: &str =
    "udp has no hand-built reference; run scripts/bench-udp.sh (udp against the kernel's vxlan)";

/// The underlay octets of the reference nodes (felt's nodes use .11 up).
const FIRST_OCTET: u8 = 21;

/// The MTU felt's nodes give cni0 and the pods' veths for `backend`.
pub fn pod_mtu(backend: Backend) -> u32 {
    match backend {
        Backend::Vxlan => 1450,
        Backend::HostGw => 1500,
        // The underlay's 1500 less the outer IPv4 and UDP headers.
        Backend::Udp => 1472,
    }
}

/// Two reference nodes with a pod each, routed to each other.
pub fn build(cluster: &Cluster, backend: Backend) -> Result<Vec<RefNode>> {
    let mut nodes = Vec::new();
    for k in 0..2u8 {
        nodes.push(build_node(cluster, backend, k)?);
    }
    for (i, at) in nodes.iter().enumerate() {
        for (j, peer) in nodes.iter().enumerate() {
            if i != j {
                route_to(at, peer, backend)?;
            }
        }
    }
    Ok(nodes)
}

fn build_node(cluster: &Cluster, backend: Backend, k: u8) -> Result<RefNode> {
    let octet = FIRST_OCTET + k;
    let node = cluster.attach_host(&format!("ref{k}"), octet)?;
    let pod = Netns::create(&cluster.naming().name(&format!("ref{k}p")))?;
    let subnet = Ipv4Net::new(Ipv4Addr::new(10, 250, k + 1, 0), 24)
        .map_err(|e| crate::error::BenchError::Setup(e.to_string()))?;
    let gw = Ipv4Addr::new(10, 250, k + 1, 1);
    let pod_ip = Ipv4Addr::new(10, 250, k + 1, 2);
    let mtu = pod_mtu(backend).to_string();
    node.ip(&["link", "add", "cni0", "mtu", &mtu, "type", "bridge"])?;
    node.ip(&["addr", "add", &format!("{gw}/24"), "dev", "cni0"])?;
    node.ip(&["link", "set", "cni0", "up"])?;
    node.ip(&[
        "link",
        "add",
        "veth0",
        "mtu",
        &mtu,
        "type",
        "veth",
        "peer",
        "name",
        "eth0",
        "mtu",
        &mtu,
        "netns",
        pod.name(),
    ])?;
    node.ip(&["link", "set", "veth0", "master", "cni0"])?;
    node.ip(&[
        "link",
        "set",
        "veth0",
        "type",
        "bridge_slave",
        "hairpin",
        "on",
    ])?;
    node.ip(&["link", "set", "veth0", "up"])?;
    pod.ip(&["addr", "add", &format!("{pod_ip}/24"), "dev", "eth0"])?;
    pod.ip(&["link", "set", "eth0", "up"])?;
    pod.ip(&["route", "add", "default", "via", &gw.to_string()])?;
    let ip = felt_cluster::underlay_ip(octet);
    let vtep_mac = mac_for(0xaa, u32::from(k));
    if backend == Backend::Vxlan {
        make_vtep(
            &node,
            &VtepSpec {
                local: ip,
                mtu: pod_mtu(backend),
                mac: vtep_mac,
                addr: Some(subnet.network()),
            },
        )?;
    }
    Ok(RefNode {
        pod,
        node,
        ip,
        subnet,
        pod_ip,
        vtep_mac,
    })
}

fn route_to(at: &RefNode, peer: &RefNode, backend: Backend) -> Result<()> {
    let dst = peer.subnet.to_string();
    match backend {
        Backend::HostGw => {
            at.node.ip(&[
                "route",
                "replace",
                &dst,
                "via",
                &peer.ip.to_string(),
                "dev",
                "eth0",
            ])?;
        }
        Backend::Vxlan => {
            let peer = felt_cluster::Peer {
                subnet: peer.subnet,
                public_ip: peer.ip,
                vtep_mac: Some(fmt_mac(&peer.vtep_mac)),
            };
            felt_cluster::kernel::add_vxlan_peer_by_hand(&at.node, &peer)?;
        }
        // udp has no kernel datapath to build by hand; its ladder
        // (scripts/bench-udp.sh) measures it against the kernel's vxlan.
        Backend::Udp => {
            return Err(crate::error::BenchError::Setup(
                UDP_HAS_ITS_OWN_BENCH.into(),
            ))
        }
    }
    Ok(())
}
