//! The kernel objects of flannel's vxlan datapath, made by the bench
//! itself: the VTEP with ip(8), and per peer a permanent neighbour, a
//! permanent self FDB entry and an onlink route, over rtnetlink (the
//! reference the daemon is compared with).

use crate::error::{nl_err, parse_err, Result};
use crate::peers::{fmt_mac, Peer};
use felt_cluster::Netns;
use futures::{StreamExt, TryStreamExt};
use netlink_packet_route::neighbour::{NeighbourFlags, NeighbourMessage, NeighbourState};
use netlink_packet_route::route::RouteProtocol;
use netlink_packet_route::AddressFamily;
use rtnetlink::{Handle, RouteMessageBuilder};
use std::collections::HashSet;
use std::net::{IpAddr, Ipv4Addr};

/// flannel's VTEP for VNI 1.
pub const VTEP: &str = "flannel.1";
/// The kernel's historic VXLAN port, flannel's default.
pub const VXLAN_PORT: &str = "8472";

/// How to make a VTEP the way flannel does.
#[derive(Debug, Clone)]
pub struct VtepSpec {
    /// The underlay address (`local`), on `eth0` of the namespace.
    pub local: Ipv4Addr,
    pub mtu: u32,
    pub mac: [u8; 6],
    /// `<own subnet network address>/32`, flannel's address on the VTEP.
    pub addr: Option<Ipv4Addr>,
}

/// Creates flannel's VTEP in `ns` (VNI 1, local, dev eth0, port 8472,
/// learning off, the given MTU and MAC), up; returns its ifindex.
pub fn make_vtep(ns: &Netns, spec: &VtepSpec) -> Result<u32> {
    let (mtu, mac, local) = (
        spec.mtu.to_string(),
        fmt_mac(&spec.mac),
        spec.local.to_string(),
    );
    ns.ip(&[
        "link",
        "add",
        VTEP,
        "address",
        &mac,
        "mtu",
        &mtu,
        "type",
        "vxlan",
        "id",
        "1",
        "local",
        &local,
        "dev",
        "eth0",
        "dstport",
        VXLAN_PORT,
        "nolearning",
    ])?;
    if let Some(a) = spec.addr {
        ns.ip(&["addr", "add", &format!("{a}/32"), "dev", VTEP])?;
    }
    ns.ip(&["link", "set", VTEP, "up"])?;
    ifindex(ns, VTEP)
}

/// The ifindex of `dev` in `ns`.
pub fn ifindex(ns: &Netns, dev: &str) -> Result<u32> {
    let links = ns.ip_json(&["link", "show", dev])?;
    links
        .first()
        .and_then(|l| l["ifindex"].as_u64())
        .and_then(|i| u32::try_from(i).ok())
        .ok_or_else(|| parse_err(format!("ip link show {dev}"), "no ifindex"))
}

/// The three objects of one peer, one after another, route last (it must
/// not exist before its neighbour and FDB entry do), as flannel does.
pub async fn add_peer(h: &Handle, dev: u32, p: &Peer) -> Result<()> {
    add_neigh(h, dev, p).await?;
    add_fdb(h, dev, p).await?;
    add_route(h, dev, p).await
}

async fn add_neigh(h: &Handle, dev: u32, p: &Peer) -> Result<()> {
    h.neighbours()
        .add(dev, IpAddr::V4(p.gateway()))
        .link_layer_address(&p.mac)
        .state(NeighbourState::Permanent)
        .replace()
        .execute()
        .await
        .map_err(nl_err(format!("neighbour {}", p.gateway())))
}

async fn add_fdb(h: &Handle, dev: u32, p: &Peer) -> Result<()> {
    h.neighbours()
        .add_bridge(dev, &p.mac)
        .destination(IpAddr::V4(p.public_ip))
        .flags(NeighbourFlags::Own)
        .state(NeighbourState::Permanent)
        .replace()
        .execute()
        .await
        .map_err(nl_err(format!("fdb {}", fmt_mac(&p.mac))))
}

async fn add_route(h: &Handle, dev: u32, p: &Peer) -> Result<()> {
    let msg = RouteMessageBuilder::<Ipv4Addr>::new()
        .destination_prefix(p.subnet.network(), p.subnet.prefix_len())
        .gateway(p.gateway())
        .output_interface(dev)
        .onlink()
        .protocol(RouteProtocol::Boot)
        .build();
    h.route()
        .add(msg)
        .execute()
        .await
        .map_err(nl_err(format!("route {}", p.subnet)))
}

/// All peers' objects with `in_flight` requests outstanding: every
/// neighbour, then every FDB entry, then every route (routes last, as a
/// correct daemon must order them too).
pub async fn add_pipelined(h: &Handle, dev: u32, peers: &[Peer], in_flight: usize) -> Result<()> {
    let run = |kind: u8| {
        futures::stream::iter(peers)
            .map(move |p| async move {
                match kind {
                    0 => add_neigh(h, dev, p).await,
                    1 => add_fdb(h, dev, p).await,
                    _ => add_route(h, dev, p).await,
                }
            })
            .buffer_unordered(in_flight)
            .try_collect::<Vec<()>>()
    };
    for kind in 0..3 {
        run(kind).await?;
    }
    Ok(())
}

/// How many of `peers` have all three objects in the kernel (dumped).
pub async fn count_present(h: &Handle, dev: u32, peers: &[Peer]) -> Result<usize> {
    let mut routes = HashSet::new();
    let mut dump = h
        .route()
        .get(RouteMessageBuilder::<Ipv4Addr>::new().build())
        .execute();
    while let Some(m) = dump.try_next().await.map_err(nl_err("dump routes"))? {
        let oif = m.attributes.iter().find_map(|a| match a {
            netlink_packet_route::route::RouteAttribute::Oif(i) => Some(*i),
            _ => None,
        });
        let dst = m.attributes.iter().find_map(|a| match a {
            netlink_packet_route::route::RouteAttribute::Destination(
                netlink_packet_route::route::RouteAddress::Inet(d),
            ) => Some(*d),
            _ => None,
        });
        if let (Some(d), Some(dev_)) = (dst, oif) {
            if dev_ == dev {
                routes.insert((d, m.header.destination_prefix_length));
            }
        }
    }
    let neigh = permanent_on(h, AddressFamily::Inet, dev).await?;
    let fdb = permanent_on(h, AddressFamily::Bridge, dev).await?;
    Ok(peers
        .iter()
        .filter(|p| routes.contains(&(p.subnet.network(), p.subnet.prefix_len())))
        .filter(|p| neigh.contains(&(Some(p.gateway()), Some(p.mac))))
        .filter(|p| fdb.contains(&(Some(p.public_ip), Some(p.mac))))
        .count())
}

/// The NUD_PERMANENT bit (iproute2 adds NUD_NOARP to FDB entries).
const NUD_PERMANENT: u16 = 0x80;

/// (destination, lladdr) of the permanent entries on `dev`.
async fn permanent_on(
    h: &Handle,
    family: AddressFamily,
    dev: u32,
) -> Result<HashSet<(Option<Ipv4Addr>, Option<[u8; 6]>)>> {
    let mut out = HashSet::new();
    let mut dump = h.neighbours().get().set_address_family(family).execute();
    while let Some(m) = dump.try_next().await.map_err(nl_err("dump neighbours"))? {
        if m.header.ifindex == dev && u16::from(m.header.state) & NUD_PERMANENT != 0 {
            out.insert(neigh_fields(&m));
        }
    }
    Ok(out)
}

fn neigh_fields(m: &NeighbourMessage) -> (Option<Ipv4Addr>, Option<[u8; 6]>) {
    use netlink_packet_route::neighbour::{NeighbourAddress, NeighbourAttribute};
    let mut dst = None;
    let mut mac = None;
    for a in &m.attributes {
        match a {
            NeighbourAttribute::Destination(NeighbourAddress::Inet(ip)) => dst = Some(*ip),
            // AF_BRIDGE messages carry NDA_DST as raw bytes.
            NeighbourAttribute::Destination(NeighbourAddress::Other(raw)) => {
                dst = <[u8; 4]>::try_from(raw.as_slice()).ok().map(Ipv4Addr::from);
            }
            NeighbourAttribute::LinkLayerAddress(l) => mac = <[u8; 6]>::try_from(l.as_slice()).ok(),
            _ => {}
        }
    }
    (dst, mac)
}
