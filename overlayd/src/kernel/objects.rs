//! Peer objects felt owns: routes, ARP neighbours and VXLAN FDB entries.
//! `dump_owned` reads back only what the backend's [`Scope`] says is
//! felt's (streaming the dumps: at 65,000 peers they are ~200,000
//! messages); `apply_all` performs a planned batch of operations with many
//! requests in flight, phase by phase.

use super::{Kernel, KernelError};
use crate::spec::{Actual, FdbSpec, NeighSpec, Op, RouteSpec, Scope};
use futures::{StreamExt, TryStreamExt};
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

/// Requests in flight at once: enough to hide the per-request round trip,
/// few enough that the acknowledgements never overrun the socket buffer.
const IN_FLIGHT: usize = 64;

/// What the dump needs besides the scope.
#[derive(Debug, Clone, Copy)]
pub struct Bounds {
    /// The whole overlay network (FLANNEL_NETWORK).
    pub network: Ipv4Net,
    /// This node's subnet: never touched (cni0's connected route lives there).
    pub own: Ipv4Net,
}

impl Kernel {
    /// Every felt-owned route, neighbour and FDB entry that exists now,
    /// and the slots of routes inside the network that felt does not own.
    pub async fn dump_owned(&self, scope: &Scope, bounds: Bounds) -> Result<Actual, KernelError> {
        let mut actual = Actual::default();
        let req = self
            .handle()
            .route()
            .get(RouteMessageBuilder::<Ipv4Addr>::new().build());
        let mut routes = req.execute();
        while let Some(m) = routes
            .try_next()
            .await
            .map_err(|e| KernelError::netlink("dump IPv4 routes", e))?
        {
            match owned_route(&m, scope, bounds) {
                Some(r) => {
                    actual.routes.insert(r);
                }
                None => {
                    if let Some((slot, what)) = foreign_slot(&m, bounds) {
                        actual.foreign.insert(slot, what);
                    }
                }
            }
        }
        if let Some(dev) = scope.device {
            let mut neigh = self.neigh_dump(AddressFamily::Inet);
            while let Some(m) = neigh
                .try_next()
                .await
                .map_err(|e| KernelError::netlink("dump neighbours", e))?
            {
                actual.neighbours.extend(owned_neigh(&m, dev));
            }
            let mut fdb = self.neigh_dump(AddressFamily::Bridge);
            while let Some(m) = fdb
                .try_next()
                .await
                .map_err(|e| KernelError::netlink("dump FDB", e))?
            {
                actual.fdb.extend(owned_fdb(&m, dev));
            }
        }
        Ok(actual)
    }

    fn neigh_dump(
        &self,
        family: AddressFamily,
    ) -> impl futures::Stream<Item = Result<NeighbourMessage, rtnetlink::Error>> {
        self.handle()
            .neighbours()
            .get()
            .set_address_family(family)
            .execute()
    }

    /// Applies a plan in its order, phase by phase (all route deletes, then
    /// neighbour deletes, neighbour sets, FDB deletes, FDB sets, routes
    /// last), each phase's requests in flight together. Returns every
    /// operation with its outcome, in no particular order within a phase.
    pub async fn apply_all(&self, ops: Vec<Op>) -> Vec<(Op, Result<(), KernelError>)> {
        let mut out = Vec::with_capacity(ops.len());
        let mut phase: Vec<Op> = Vec::new();
        for op in ops {
            if phase.last().is_some_and(|p| phase_of(p) != phase_of(&op)) {
                self.run_phase(std::mem::take(&mut phase), &mut out).await;
            }
            phase.push(op);
        }
        self.run_phase(phase, &mut out).await;
        out
    }

    async fn run_phase(&self, ops: Vec<Op>, out: &mut Vec<(Op, Result<(), KernelError>)>) {
        let done: Vec<_> = futures::stream::iter(ops)
            .map(|op| async move {
                let r = self.apply(&op).await;
                (op, r)
            })
            .buffer_unordered(IN_FLIGHT)
            .collect()
            .await;
        out.extend(done);
    }

    /// Performs one operation. Deleting what is already gone succeeds.
    pub async fn apply(&self, op: &Op) -> Result<(), KernelError> {
        let result = match op {
            Op::SetRoute(r) => {
                let req = self.handle().route().add(route_message(r, false)).replace();
                req.execute().await
            }
            // rtnetlink's add is NLM_F_CREATE|NLM_F_EXCL: never overwrites.
            Op::AddRoute(r) => {
                self.handle()
                    .route()
                    .add(route_message(r, false))
                    .execute()
                    .await
            }
            Op::DelRoute(r) => {
                self.handle()
                    .route()
                    .del(route_message(r, true))
                    .execute()
                    .await
            }
            Op::SetNeigh(n) => {
                let req = self.handle().neighbours().add(n.ifindex, IpAddr::V4(n.ip));
                req.link_layer_address(&n.mac)
                    .state(NeighbourState::Permanent)
                    .replace()
                    .execute()
                    .await
            }
            Op::SetFdb(f) => {
                let req = self.handle().neighbours().add_bridge(f.ifindex, &f.mac);
                req.destination(IpAddr::V4(f.dst))
                    .flags(NeighbourFlags::Own)
                    .state(NeighbourState::Permanent)
                    .replace()
                    .execute()
                    .await
            }
            Op::DelNeigh(n) => {
                self.handle()
                    .neighbours()
                    .del(neigh_message(n))
                    .execute()
                    .await
            }
            Op::DelFdb(f) => {
                self.handle()
                    .neighbours()
                    .del(fdb_message(f))
                    .execute()
                    .await
            }
        };
        match result.map_err(|e| KernelError::netlink(describe(op), e)) {
            Err(e) if e.is_not_found() && op.is_delete() => Ok(()),
            other => other,
        }
    }
}

/// Operations of one phase may run in any order among themselves.
fn phase_of(op: &Op) -> u8 {
    match op {
        Op::DelRoute(_) => 0,
        Op::DelNeigh(_) => 1,
        Op::SetNeigh(_) => 2,
        Op::DelFdb(_) => 3,
        Op::SetFdb(_) => 4,
        Op::AddRoute(_) | Op::SetRoute(_) => 5,
    }
}

/// A short human description of an operation, for logs and errors.
pub fn describe(op: &Op) -> String {
    use crate::spec::fmt_mac;
    match op {
        Op::SetRoute(r) => format!("set route {}", route_text(r)),
        Op::AddRoute(r) => format!("add route {}", route_text(r)),
        Op::DelRoute(r) => format!("delete route {}", route_text(r)),
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

/// `10.244.2.0/24 via 10.244.2.0 dev #3 onlink`, as ip(8) would say it.
pub fn route_text(r: &RouteSpec) -> String {
    let via = r.gateway.map(|g| format!(" via {g}")).unwrap_or_default();
    let onlink = if r.onlink { " onlink" } else { "" };
    let metric = if r.metric != 0 {
        format!(" metric {}", r.metric)
    } else {
        String::new()
    };
    format!("{}{via} dev #{}{onlink}{metric}", r.dst, r.oif)
}

fn route_message(r: &RouteSpec, for_delete: bool) -> RouteMessage {
    let mut b = RouteMessageBuilder::<Ipv4Addr>::new()
        .destination_prefix(r.dst.network(), r.dst.prefix_len())
        .output_interface(r.oif);
    match r.gateway {
        Some(gw) => b = b.gateway(gw),
        // A device route (udp: the network to the TUN) is scope link.
        None if !for_delete => b = b.scope(RouteScope::Link),
        None => {}
    }
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

/// The fields of an IPv4 route message felt looks at.
struct RouteView {
    dst: Ipv4Net,
    gateway: Option<Ipv4Addr>,
    oif: Option<u32>,
    metric: u32,
    main_table: bool,
    unicast: bool,
    multipath: bool,
}

fn view(msg: &RouteMessage) -> Option<RouteView> {
    let h = &msg.header;
    if h.address_family != AddressFamily::Inet {
        return None;
    }
    let (mut dst, mut gateway, mut oif, mut metric) = (None, None, None, 0);
    let mut table = u32::from(h.table);
    let mut multipath = false;
    for attr in &msg.attributes {
        match attr {
            RouteAttribute::Destination(RouteAddress::Inet(a)) => dst = Some(*a),
            RouteAttribute::Gateway(RouteAddress::Inet(a)) => gateway = Some(*a),
            RouteAttribute::Oif(i) => oif = Some(*i),
            RouteAttribute::Priority(p) => metric = *p,
            RouteAttribute::Table(t) => table = *t,
            RouteAttribute::MultiPath(_) => multipath = true,
            _ => {}
        }
    }
    let dst = dst.unwrap_or(Ipv4Addr::UNSPECIFIED);
    Some(RouteView {
        dst: Ipv4Net::new(dst, h.destination_prefix_length).ok()?,
        gateway,
        oif,
        metric,
        main_table: table == u32::from(RouteHeader::RT_TABLE_MAIN),
        unicast: h.kind == RouteType::Unicast,
        multipath,
    })
}

/// The route as a [`RouteSpec`] if felt owns it: main table, unicast,
/// a single next hop, destination inside the network but not in our own
/// subnet, out through the backend's device or (when in scope) through a
/// gateway on the external interface.
pub fn owned_route(msg: &RouteMessage, scope: &Scope, bounds: Bounds) -> Option<RouteSpec> {
    let v = view(msg)?;
    if !v.main_table || !v.unicast || v.multipath {
        return None;
    }
    if !bounds.network.contains(&v.dst) || bounds.own.contains(&v.dst) {
        return None;
    }
    let oif = v.oif?;
    let via_device = scope.device == Some(oif);
    let via_ext = scope.ext_gateway_routes && oif == scope.ext_index && v.gateway.is_some();
    if !(via_device || via_ext) {
        return None;
    }
    Some(RouteSpec {
        dst: v.dst,
        gateway: v.gateway,
        oif,
        onlink: msg.header.flags.contains(RouteFlags::Onlink),
        metric: v.metric,
    })
}

/// A main-table route felt does not own whose destination overlaps the
/// network: its slot and a description. Any type counts (a blackhole or
/// an admin's static route is as much someone else's as a connected one).
pub fn foreign_slot(msg: &RouteMessage, bounds: Bounds) -> Option<((Ipv4Net, u32), String)> {
    let v = view(msg)?;
    let overlaps = bounds.network.contains(&v.dst) || v.dst.contains(&bounds.network.network());
    if !v.main_table || !overlaps {
        return None;
    }
    let via = v.gateway.map(|g| format!(" via {g}")).unwrap_or_default();
    let dev = v.oif.map(|i| format!(" dev #{i}")).unwrap_or_default();
    let what = format!(
        "{:?} route {}{via}{dev} proto {:?}",
        msg.header.kind, v.dst, msg.header.protocol
    );
    Some(((v.dst, v.metric), what))
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
