//! Peer objects felt owns: routes, ARP neighbours and VXLAN FDB entries.
//! `dump_owned` reads back only what the backend's [`Scope`] says is
//! felt's; `apply` performs one planned operation.

use super::{Kernel, KernelError};
use crate::reconcile::plan::Op;
use crate::reconcile::{Actual, FdbSpec, NeighSpec, RouteSpec, Scope};
use futures::TryStreamExt;
use ipnet::Ipv4Net;
use netlink_packet_route::neighbour::{
    NeighbourAddress, NeighbourAttribute, NeighbourFlags, NeighbourMessage, NeighbourState,
};
use netlink_packet_route::route::{
    RouteAddress, RouteAttribute, RouteFlags, RouteHeader, RouteMessage, RouteProtocol, RouteScope,
    RouteType,
};
use netlink_packet_route::AddressFamily;
use rtnetlink::RouteMessageBuilder;
use std::net::{IpAddr, Ipv4Addr};

/// What the dump needs besides the scope.
#[derive(Debug, Clone, Copy)]
pub struct Bounds {
    /// The whole overlay network (FLANNEL_NETWORK).
    pub network: Ipv4Net,
    /// This node's subnet: never touched (cni0's connected route lives there).
    pub own: Ipv4Net,
}

impl Kernel {
    /// Every felt-owned route, neighbour and FDB entry that exists now.
    pub async fn dump_owned(&self, scope: &Scope, bounds: Bounds) -> Result<Actual, KernelError> {
        let mut actual = Actual::default();
        let req = self
            .handle()
            .route()
            .get(RouteMessageBuilder::<Ipv4Addr>::new().build());
        let routes: Vec<RouteMessage> = req
            .execute()
            .try_collect()
            .await
            .map_err(|e| KernelError::netlink("dump IPv4 routes", e))?;
        actual.routes = routes
            .iter()
            .filter_map(|m| owned_route(m, scope, bounds))
            .collect();
        if let Some(dev) = scope.device {
            for msg in self.dump_neigh(AddressFamily::Inet).await? {
                actual.neighbours.extend(owned_neigh(&msg, dev));
            }
            for msg in self.dump_neigh(AddressFamily::Bridge).await? {
                actual.fdb.extend(owned_fdb(&msg, dev));
            }
        }
        Ok(actual)
    }

    async fn dump_neigh(
        &self,
        family: AddressFamily,
    ) -> Result<Vec<NeighbourMessage>, KernelError> {
        self.handle()
            .neighbours()
            .get()
            .set_address_family(family)
            .execute()
            .try_collect()
            .await
            .map_err(|e| KernelError::netlink(format!("dump {family:?} neighbours"), e))
    }

    /// Performs one operation. Deleting what is already gone succeeds.
    pub async fn apply(&self, op: &Op) -> Result<(), KernelError> {
        let result = match op {
            Op::SetRoute(r) => {
                let req = self.handle().route().add(route_message(r, false)).replace();
                req.execute()
                    .await
                    .map_err(|e| KernelError::netlink(describe(op), e))
            }
            Op::DelRoute(r) => {
                let req = self.handle().route().del(route_message(r, true));
                req.execute()
                    .await
                    .map_err(|e| KernelError::netlink(describe(op), e))
            }
            Op::SetNeigh(n) => {
                let req = self.handle().neighbours().add(n.ifindex, IpAddr::V4(n.ip));
                let req = req
                    .link_layer_address(&n.mac)
                    .state(NeighbourState::Permanent)
                    .kind(RouteType::Unicast)
                    .replace();
                req.execute()
                    .await
                    .map_err(|e| KernelError::netlink(describe(op), e))
            }
            Op::SetFdb(f) => {
                let req = self.handle().neighbours().add_bridge(f.ifindex, &f.mac);
                let req = req
                    .destination(IpAddr::V4(f.dst))
                    .flags(NeighbourFlags::Own)
                    .state(NeighbourState::Permanent)
                    .replace();
                req.execute()
                    .await
                    .map_err(|e| KernelError::netlink(describe(op), e))
            }
            Op::DelNeigh(n) => self.del_neigh(neigh_message(n), op).await,
            Op::DelFdb(f) => self.del_neigh(fdb_message(f), op).await,
        };
        match result {
            Err(e) if e.is_not_found() && is_delete(op) => Ok(()),
            other => other,
        }
    }

    async fn del_neigh(&self, msg: NeighbourMessage, op: &Op) -> Result<(), KernelError> {
        self.handle()
            .neighbours()
            .del(msg)
            .execute()
            .await
            .map_err(|e| KernelError::netlink(describe(op), e))
    }
}

fn is_delete(op: &Op) -> bool {
    matches!(op, Op::DelRoute(_) | Op::DelNeigh(_) | Op::DelFdb(_))
}

/// A short human description of an operation, for logs and errors.
pub fn describe(op: &Op) -> String {
    use crate::kernel::link::fmt_mac;
    match op {
        Op::SetRoute(r) => format!(
            "set route {} via {} dev #{}{}",
            r.dst,
            r.gateway,
            r.oif,
            onlink(r)
        ),
        Op::DelRoute(r) => format!(
            "delete route {} via {} dev #{}{}",
            r.dst,
            r.gateway,
            r.oif,
            onlink(r)
        ),
        Op::SetNeigh(n) => format!(
            "set neighbour {} lladdr {} dev #{}",
            n.ip,
            fmt_mac(&n.mac),
            n.ifindex
        ),
        Op::DelNeigh(n) => format!(
            "delete neighbour {} lladdr {} dev #{}",
            n.ip,
            fmt_mac(&n.mac),
            n.ifindex
        ),
        Op::SetFdb(f) => format!(
            "set fdb {} dst {} dev #{}",
            fmt_mac(&f.mac),
            f.dst,
            f.ifindex
        ),
        Op::DelFdb(f) => format!(
            "delete fdb {} dst {} dev #{}",
            fmt_mac(&f.mac),
            f.dst,
            f.ifindex
        ),
    }
}

fn onlink(r: &RouteSpec) -> &'static str {
    if r.onlink {
        " onlink"
    } else {
        ""
    }
}

fn route_message(r: &RouteSpec, for_delete: bool) -> RouteMessage {
    let mut b = RouteMessageBuilder::<Ipv4Addr>::new()
        .destination_prefix(r.dst.network(), r.dst.prefix_len())
        .gateway(r.gateway)
        .output_interface(r.oif);
    if r.onlink {
        b = b.onlink();
    }
    if r.metric != 0 {
        b = b.priority(r.metric);
    }
    b = if for_delete {
        // Wildcards: delete whatever protocol/scope installed it (flannel
        // used proto boot, an admin may have used static).
        b.protocol(RouteProtocol::Unspec).scope(RouteScope::NoWhere)
    } else {
        // flannel's routes are proto boot; keep it so a migrated node's
        // routes compare equal and stay untouched.
        b.protocol(RouteProtocol::Boot)
    };
    b.build()
}

fn neigh_message(n: &NeighSpec) -> NeighbourMessage {
    let mut msg = NeighbourMessage::default();
    msg.header.family = AddressFamily::Inet;
    msg.header.ifindex = n.ifindex;
    msg.attributes
        .push(NeighbourAttribute::Destination(NeighbourAddress::Inet(
            n.ip,
        )));
    msg
}

fn fdb_message(f: &FdbSpec) -> NeighbourMessage {
    let mut msg = NeighbourMessage::default();
    msg.header.family = AddressFamily::Bridge;
    msg.header.ifindex = f.ifindex;
    msg.header.flags = NeighbourFlags::Own;
    msg.attributes
        .push(NeighbourAttribute::LinkLayerAddress(f.mac.to_vec()));
    msg.attributes
        .push(NeighbourAttribute::Destination(NeighbourAddress::Inet(
            f.dst,
        )));
    msg
}

/// The route as a [`RouteSpec`] if felt owns it: main table, unicast,
/// a single next hop, destination inside the network but not in our own
/// subnet, out through the backend's device or (when in scope) through a
/// gateway on the external interface.
pub fn owned_route(msg: &RouteMessage, scope: &Scope, bounds: Bounds) -> Option<RouteSpec> {
    let h = &msg.header;
    if h.address_family != AddressFamily::Inet || h.kind != RouteType::Unicast {
        return None;
    }
    let mut dst = None;
    let mut gateway = None;
    let mut oif = None;
    let mut metric = 0;
    let mut table = u32::from(h.table);
    for attr in &msg.attributes {
        match attr {
            RouteAttribute::Destination(RouteAddress::Inet(a)) => dst = Some(*a),
            RouteAttribute::Gateway(RouteAddress::Inet(a)) => gateway = Some(*a),
            RouteAttribute::Oif(i) => oif = Some(*i),
            RouteAttribute::Priority(p) => metric = *p,
            RouteAttribute::Table(t) => table = *t,
            RouteAttribute::MultiPath(_) => return None,
            _ => {}
        }
    }
    if table != u32::from(RouteHeader::RT_TABLE_MAIN) {
        return None;
    }
    let dst = Ipv4Net::new(dst?, h.destination_prefix_length).ok()?;
    if !bounds.network.contains(&dst) || bounds.own.contains(&dst) {
        return None;
    }
    let oif = oif?;
    let via_device = scope.device == Some(oif) && gateway.is_some();
    let via_ext = scope.ext_gateway_routes && oif == scope.ext_index && gateway.is_some();
    if !(via_device || via_ext) {
        return None;
    }
    Some(RouteSpec {
        dst,
        gateway: gateway?,
        oif,
        onlink: h.flags.contains(RouteFlags::Onlink),
        metric,
    })
}

/// NUD_PERMANENT as a bit: iproute2's `bridge fdb add ... permanent`
/// sets NUD_PERMANENT|NUD_NOARP, flannel only NUD_PERMANENT.
const NUD_PERMANENT: u16 = 0x80;

fn permanent_on(msg: &NeighbourMessage, dev: u32) -> bool {
    msg.header.ifindex == dev && u16::from(msg.header.state) & NUD_PERMANENT != 0
}

fn lladdr(msg: &NeighbourMessage) -> Option<[u8; 6]> {
    msg.attributes.iter().find_map(|a| match a {
        NeighbourAttribute::LinkLayerAddress(l) => <[u8; 6]>::try_from(l.as_slice()).ok(),
        _ => None,
    })
}

fn dst_v4(msg: &NeighbourMessage) -> Option<Ipv4Addr> {
    msg.attributes.iter().find_map(|a| match a {
        NeighbourAttribute::Destination(NeighbourAddress::Inet(ip)) => Some(*ip),
        // AF_BRIDGE (FDB) messages carry NDA_DST as raw bytes: the
        // parser only knows the family of the message, not of the remote.
        NeighbourAttribute::Destination(NeighbourAddress::Other(raw)) => {
            <[u8; 4]>::try_from(raw.as_slice()).ok().map(Ipv4Addr::from)
        }
        _ => None,
    })
}

/// Permanent ARP entries on the device are felt's; dynamic ones (the
/// kernel resolving something) are the kernel's business.
fn owned_neigh(msg: &NeighbourMessage, dev: u32) -> Option<NeighSpec> {
    if !permanent_on(msg, dev) {
        return None;
    }
    Some(NeighSpec {
        ifindex: dev,
        ip: dst_v4(msg)?,
        mac: lladdr(msg)?,
    })
}

/// Permanent unicast FDB entries with an IPv4 remote; learned entries
/// (Learning=true) are left to the kernel's ageing.
fn owned_fdb(msg: &NeighbourMessage, dev: u32) -> Option<FdbSpec> {
    if !permanent_on(msg, dev) {
        return None;
    }
    Some(FdbSpec {
        ifindex: dev,
        mac: lladdr(msg)?,
        dst: dst_v4(msg)?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const DEV: u32 = 7;
    const EXT: u32 = 2;
    const CNI0: u32 = 5;

    fn msg(dst: &str, gw: Option<&str>, oif: u32) -> RouteMessage {
        let net: Ipv4Net = dst.parse().unwrap();
        let mut b = RouteMessageBuilder::<Ipv4Addr>::new()
            .destination_prefix(net.network(), net.prefix_len())
            .output_interface(oif);
        if let Some(gw) = gw {
            b = b.gateway(gw.parse().unwrap());
        }
        b.build()
    }

    fn bounds() -> Bounds {
        Bounds {
            network: "10.244.0.0/16".parse().unwrap(),
            own: "10.244.1.0/24".parse().unwrap(),
        }
    }

    #[test]
    fn ownership_table() {
        let vx = Scope {
            ext_index: EXT,
            device: Some(DEV),
            ext_gateway_routes: false,
        };
        let hostgw = Scope {
            ext_index: EXT,
            device: None,
            ext_gateway_routes: true,
        };
        let cases = [
            (
                "peer via device",
                msg("10.244.2.0/24", Some("10.244.2.0"), DEV),
                vx,
                true,
            ),
            (
                "own subnet (cni0)",
                msg("10.244.1.0/24", None, CNI0),
                vx,
                false,
            ),
            (
                "own subnet via device",
                msg("10.244.1.0/24", Some("10.244.1.0"), DEV),
                vx,
                false,
            ),
            (
                "outside network",
                msg("10.96.0.0/16", Some("10.244.2.0"), DEV),
                vx,
                false,
            ),
            (
                "via ext, vxlan w/o direct routing",
                msg("10.244.2.0/24", Some("192.168.1.2"), EXT),
                vx,
                false,
            ),
            (
                "via ext, host-gw",
                msg("10.244.2.0/24", Some("192.168.1.2"), EXT),
                hostgw,
                true,
            ),
            (
                "ext connected route",
                msg("10.244.3.0/24", None, EXT),
                hostgw,
                false,
            ),
            (
                "other interface",
                msg("10.244.4.0/24", Some("172.16.0.1"), 9),
                hostgw,
                false,
            ),
        ];
        for (name, m, scope, owned) in cases {
            assert_eq!(
                owned_route(&m, &scope, bounds()).is_some(),
                owned,
                "case: {name}"
            );
        }
    }

    #[test]
    fn other_tables_are_not_owned() {
        let scope = Scope {
            ext_index: EXT,
            device: Some(DEV),
            ext_gateway_routes: false,
        };
        let mut m = msg("10.244.2.0/24", Some("10.244.2.0"), DEV);
        m.header.table = 100;
        assert!(owned_route(&m, &scope, bounds()).is_none());
    }
}
