//! Addresses and routes over the netlink [`Socket`], written once for both
//! IP families.

use super::netlink::Socket;
use crate::error::Result;
use ipnet::IpNet;
use netlink_packet_core::{NLM_F_CREATE, NLM_F_EXCL};
use netlink_packet_route::address::{AddressAttribute, AddressHeaderFlags, AddressMessage};
use netlink_packet_route::route::{
    RouteAddress, RouteAttribute, RouteHeader, RouteMessage, RouteProtocol, RouteScope, RouteType,
};
use netlink_packet_route::{AddressFamily, RouteNetlinkMessage};
use std::net::IpAddr;

fn family(ip: &IpAddr) -> AddressFamily {
    match ip {
        IpAddr::V4(_) => AddressFamily::Inet,
        IpAddr::V6(_) => AddressFamily::Inet6,
    }
}

fn addr_message(index: u32, net: &IpNet) -> AddressMessage {
    let mut msg = AddressMessage::default();
    msg.header.family = family(&net.addr());
    msg.header.prefix_len = net.prefix_len();
    msg.header.index = index;
    msg.attributes.push(AddressAttribute::Local(net.addr()));
    msg.attributes.push(AddressAttribute::Address(net.addr()));
    if net.addr().is_ipv6() {
        // Addresses come from IPAM and are unique by construction; DAD
        // would keep them tentative (unusable) for about a second.
        msg.header.flags = AddressHeaderFlags::Nodad;
    }
    msg
}

/// Addresses (with prefix length) configured on link `index`.
pub fn list_addrs(sock: &mut Socket, index: u32) -> Result<Vec<IpNet>> {
    let mut req = AddressMessage::default();
    req.header.index = index;
    let replies = sock.dump(RouteNetlinkMessage::GetAddress(req), "dump addresses")?;
    let mut out = Vec::new();
    for reply in replies {
        let RouteNetlinkMessage::NewAddress(msg) = reply else {
            continue;
        };
        // Without strict checking the kernel ignores the filter.
        if msg.header.index != index {
            continue;
        }
        let ip = msg.attributes.iter().find_map(|a| match a {
            AddressAttribute::Local(ip) => Some(*ip),
            _ => None,
        });
        let ip = ip.or_else(|| {
            msg.attributes.iter().find_map(|a| match a {
                AddressAttribute::Address(ip) => Some(*ip),
                _ => None,
            })
        });
        if let Some(net) = ip.and_then(|ip| IpNet::new(ip, msg.header.prefix_len).ok()) {
            out.push(net);
        }
    }
    Ok(out)
}

/// Adds `net` (address/prefix) to link `index`; `Exists` when present.
pub fn add_addr(sock: &mut Socket, index: u32, net: &IpNet, what: &str) -> Result<()> {
    let msg = addr_message(index, net);
    sock.ack(
        RouteNetlinkMessage::NewAddress(msg),
        NLM_F_CREATE | NLM_F_EXCL,
        what,
    )
}

pub fn del_addr(sock: &mut Socket, index: u32, net: &IpNet, what: &str) -> Result<()> {
    let msg = addr_message(index, net);
    sock.ack(RouteNetlinkMessage::DelAddress(msg), 0, what)
}

/// A route as felt configures and checks it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    pub dst: IpNet,
    pub gw: Option<IpAddr>,
}

fn route_message(route: &Route, oif: Option<u32>) -> RouteMessage {
    let mut msg = RouteMessage::default();
    msg.header.address_family = family(&route.dst.addr());
    msg.header.destination_prefix_length = route.dst.prefix_len();
    msg.header.table = RouteHeader::RT_TABLE_MAIN;
    msg.header.protocol = RouteProtocol::Boot;
    msg.header.kind = RouteType::Unicast;
    msg.header.scope = if route.gw.is_some() {
        RouteScope::Universe
    } else {
        RouteScope::Link
    };
    msg.attributes
        .push(RouteAttribute::Destination(RouteAddress::from(
            route.dst.network(),
        )));
    if let Some(gw) = route.gw {
        msg.attributes
            .push(RouteAttribute::Gateway(RouteAddress::from(gw)));
    }
    if let Some(oif) = oif {
        msg.attributes.push(RouteAttribute::Oif(oif));
    }
    msg
}

pub fn add_route(sock: &mut Socket, route: &Route, oif: Option<u32>) -> Result<()> {
    let what = match route.gw {
        Some(gw) => format!("add route {} via {gw}", route.dst),
        None => format!("add route {}", route.dst),
    };
    let msg = route_message(route, oif);
    sock.ack(
        RouteNetlinkMessage::NewRoute(msg),
        NLM_F_CREATE | NLM_F_EXCL,
        &what,
    )
}

/// Routes of the main table (both families), for CHECK.
pub fn list_routes(sock: &mut Socket) -> Result<Vec<Route>> {
    let mut out = Vec::new();
    for fam in [AddressFamily::Inet, AddressFamily::Inet6] {
        let mut req = RouteMessage::default();
        req.header.address_family = fam;
        let replies = sock.dump(RouteNetlinkMessage::GetRoute(req), "dump routes")?;
        for reply in replies {
            let RouteNetlinkMessage::NewRoute(msg) = reply else {
                continue;
            };
            if msg.header.table != RouteHeader::RT_TABLE_MAIN {
                continue;
            }
            if let Some(route) = parse_route(&msg) {
                out.push(route);
            }
        }
    }
    Ok(out)
}

fn route_ip(addr: &RouteAddress) -> Option<IpAddr> {
    match addr {
        RouteAddress::Inet(a) => Some(IpAddr::V4(*a)),
        RouteAddress::Inet6(a) => Some(IpAddr::V6(*a)),
        _ => None,
    }
}

fn parse_route(msg: &RouteMessage) -> Option<Route> {
    let mut dst = None;
    let mut gw = None;
    for attr in &msg.attributes {
        match attr {
            RouteAttribute::Destination(a) => dst = route_ip(a),
            RouteAttribute::Gateway(a) => gw = route_ip(a),
            _ => {}
        }
    }
    let dst = match (dst, msg.header.address_family) {
        (Some(ip), _) => ip,
        (None, AddressFamily::Inet6) => IpAddr::V6(std::net::Ipv6Addr::UNSPECIFIED),
        (None, _) => IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED),
    };
    let dst = IpNet::new(dst, msg.header.destination_prefix_length).ok()?;
    Some(Route { dst, gw })
}
