//! Kernel change notifications (links, addresses, neighbours, IPv4
//! routes), used to repair drift at once instead of at the next periodic
//! resync. Each notification is judged against what felt wants
//! ([`is_drift`]): the echo of felt's own writes (an object appearing that
//! is wanted, or vanishing that is not) is not drift, so felt's changes
//! never cost an extra pass. The kernel sets no sender on VXLAN FDB
//! notifications, which is why echoes are recognised by content, not by
//! the requesting socket. A missed notification costs only latency: the
//! periodic full pass recomputes everything.

use super::objects::{foreign_slot, owned_route, Bounds};
use super::{Kernel, KernelError};
use crate::spec::{Desired, FdbSpec, NeighSpec, Scope};
use futures::channel::mpsc::UnboundedReceiver;
use futures::StreamExt;
use netlink_packet_core::{NetlinkMessage, NetlinkPayload};
use netlink_packet_route::neighbour::{NeighbourAddress, NeighbourAttribute, NeighbourMessage};
use netlink_packet_route::AddressFamily;
use netlink_packet_route::RouteNetlinkMessage;
use rtnetlink::sys::SocketAddr;
use rtnetlink::MulticastGroup;
use std::net::Ipv4Addr;
use std::os::fd::AsRawFd;

type Messages = UnboundedReceiver<(NetlinkMessage<RouteNetlinkMessage>, SocketAddr)>;

/// Receive buffer of the notification socket: felt's own writes at scale
/// (three objects per peer, 65,000 peers) echo back faster than a busy
/// reconciler reads them; an overrun would lose the subscription.
const RCVBUF: usize = 32 << 20;

/// A subscription to the rtnetlink multicast groups felt cares about.
pub struct Changes {
    rx: Messages,
}

impl Kernel {
    /// Subscribes in the current network namespace.
    pub fn subscribe_changes() -> Result<Changes, KernelError> {
        let groups = [
            MulticastGroup::Link,
            MulticastGroup::Ipv4Ifaddr,
            MulticastGroup::Neigh,
            MulticastGroup::Ipv4Route,
        ];
        let (mut conn, _handle, rx) =
            rtnetlink::new_multicast_connection(&groups).map_err(KernelError::Connect)?;
        let fd = conn.socket_mut().as_raw_fd();
        // FORCE needs CAP_NET_ADMIN, which overlayd has; fall back to what
        // rmem_max allows.
        if set_rcvbuf(fd, libc::SO_RCVBUFFORCE, RCVBUF).is_err() {
            let _ = set_rcvbuf(fd, libc::SO_RCVBUF, RCVBUF);
        }
        tokio::spawn(conn);
        Ok(Changes { rx })
    }
}

fn set_rcvbuf(fd: std::os::fd::RawFd, opt: libc::c_int, size: usize) -> std::io::Result<()> {
    let v = libc::c_int::try_from(size).unwrap_or(libc::c_int::MAX);
    // SAFETY: fd is a live socket owned by the connection; the option
    // value is a c_int on the stack of the right size.
    let rc = unsafe {
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            opt,
            (&v as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

impl Changes {
    /// The next notification; `None` once the socket is gone (e.g. after
    /// an overrun): the caller subscribes again and runs a full pass.
    pub async fn next(&mut self) -> Option<RouteNetlinkMessage> {
        loop {
            let (msg, _) = self.rx.next().await?;
            if let NetlinkPayload::InnerMessage(inner) = msg.payload {
                return Some(inner);
            }
        }
    }

    /// The next notification if one is queued, without waiting:
    /// `Some(None)` when none is queued, `None` when the socket is gone.
    pub fn try_next(&mut self) -> Option<Option<RouteNetlinkMessage>> {
        use futures::channel::mpsc::TryRecvError;
        loop {
            match self.rx.try_recv() {
                Ok((msg, _)) => {
                    if let NetlinkPayload::InnerMessage(inner) = msg.payload {
                        return Some(Some(inner));
                    }
                }
                Err(TryRecvError::Empty) => return Some(None),
                Err(TryRecvError::Closed) => return None,
            }
        }
    }
}

/// Whether a notification shows the kernel disagreeing with `desired`
/// about an object in felt's scope (deleted or changed by someone else,
/// or a device/address change that needs a full pass).
pub fn is_drift(
    msg: &RouteNetlinkMessage,
    scope: &Scope,
    bounds: Bounds,
    desired: &Desired,
) -> bool {
    use RouteNetlinkMessage as M;
    match msg {
        M::NewLink(l) | M::DelLink(l) => {
            l.header.index == scope.ext_index || Some(l.header.index) == scope.device
        }
        M::NewAddress(a) | M::DelAddress(a) => {
            a.header.index == scope.ext_index || Some(a.header.index) == scope.device
        }
        M::NewRoute(r) | M::DelRoute(r) => {
            let added = matches!(msg, M::NewRoute(_));
            match owned_route(r, scope, bounds) {
                Some(spec) => added != desired.routes.contains(&spec),
                // Someone else's route where felt wants one (it may have
                // replaced felt's, which the kernel reports as a new route
                // only), or leaving a slot felt could not use before.
                None => foreign_slot(r, bounds).is_some_and(|((dst, metric), _)| {
                    desired
                        .routes
                        .iter()
                        .any(|d| d.dst == dst && d.metric == metric)
                }),
            }
        }
        M::NewNeighbour(n) | M::DelNeighbour(n) => {
            let added = matches!(msg, M::NewNeighbour(_));
            neigh_drift(n, added, scope, desired)
        }
        _ => false,
    }
}

/// NUD_PERMANENT: felt's neighbour and FDB entries are permanent; other
/// states are the kernel resolving addresses or learning MACs.
const NUD_PERMANENT: u16 = 0x80;

fn neigh_drift(n: &NeighbourMessage, added: bool, scope: &Scope, desired: &Desired) -> bool {
    let Some(dev) = scope.device else {
        return false;
    };
    if n.header.ifindex != dev {
        return false;
    }
    // A deleted entry is reported in the state it was put in on its way
    // out (FAILED), so only additions are told apart by permanence.
    let permanent = u16::from(n.header.state) & NUD_PERMANENT != 0;
    let mac = n.attributes.iter().find_map(|a| match a {
        NeighbourAttribute::LinkLayerAddress(l) => <[u8; 6]>::try_from(l.as_slice()).ok(),
        _ => None,
    });
    let ip = n.attributes.iter().find_map(|a| match a {
        NeighbourAttribute::Destination(NeighbourAddress::Inet(ip)) => Some(*ip),
        NeighbourAttribute::Destination(NeighbourAddress::Other(raw)) => {
            <[u8; 4]>::try_from(raw.as_slice()).ok().map(Into::into)
        }
        _ => None,
    });
    if n.header.family == AddressFamily::Bridge {
        let Some(mac) = mac else { return false };
        let lo = FdbSpec {
            ifindex: dev,
            mac,
            dst: Ipv4Addr::UNSPECIFIED,
        };
        let hi = FdbSpec {
            ifindex: dev,
            mac,
            dst: Ipv4Addr::BROADCAST,
        };
        let mut wanted = desired.fdb.range(lo..=hi).peekable();
        if wanted.peek().is_none() {
            return added && permanent;
        }
        // A MAC may have several remotes: what matters is the exact entry.
        // Felt's own removal of a peer's old remote (its public IP moved)
        // is no drift; losing a wanted one, or one turning dynamic, is.
        let exact = ip.is_some_and(|ip| wanted.any(|f| f.dst == ip));
        if added {
            !(permanent && exact)
        } else {
            exact || ip.is_none()
        }
    } else {
        let Some(ip) = ip else { return false };
        let lo = NeighSpec {
            ifindex: dev,
            ip,
            mac: [0; 6],
        };
        let hi = NeighSpec {
            ifindex: dev,
            ip,
            mac: [0xff; 6],
        };
        let mut wanted = desired.neighbours.range(lo..=hi).peekable();
        match wanted.peek() {
            Some(_) => !(added && permanent && mac.is_some_and(|m| wanted.any(|w| w.mac == m))),
            None => added && permanent,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::RouteSpec;
    use netlink_packet_route::link::LinkMessage;
    use netlink_packet_route::neighbour::NeighbourState;
    use netlink_packet_route::route::{RouteAddress, RouteAttribute, RouteMessage};

    const SCOPE: Scope = Scope {
        ext_index: 2,
        device: Some(7),
        ext_gateway_routes: false,
    };

    fn bounds() -> Bounds {
        Bounds {
            network: "10.244.0.0/16".parse().unwrap(),
            own: "10.244.1.0/24".parse().unwrap(),
        }
    }

    fn spec() -> RouteSpec {
        RouteSpec {
            dst: "10.244.2.0/24".parse().unwrap(),
            gateway: Some("10.244.2.0".parse().unwrap()),
            oif: 7,
            onlink: false,
            metric: 0,
        }
    }

    fn route(oif: u32, gw: &str) -> RouteMessage {
        let mut r = RouteMessage::default();
        r.header.address_family = AddressFamily::Inet;
        r.header.destination_prefix_length = 24;
        r.header.table = 254;
        r.header.kind = netlink_packet_route::route::RouteType::Unicast;
        r.attributes
            .push(RouteAttribute::Destination(RouteAddress::Inet(
                "10.244.2.0".parse().unwrap(),
            )));
        r.attributes
            .push(RouteAttribute::Gateway(RouteAddress::Inet(
                gw.parse().unwrap(),
            )));
        r.attributes.push(RouteAttribute::Oif(oif));
        r
    }

    fn neigh(mac: [u8; 6], permanent: bool) -> NeighbourMessage {
        let mut n = NeighbourMessage::default();
        n.header.family = AddressFamily::Inet;
        n.header.ifindex = 7;
        n.header.state = if permanent {
            NeighbourState::Permanent
        } else {
            NeighbourState::Reachable
        };
        n.attributes
            .push(NeighbourAttribute::Destination(NeighbourAddress::Inet(
                "10.244.2.0".parse().unwrap(),
            )));
        n.attributes
            .push(NeighbourAttribute::LinkLayerAddress(mac.to_vec()));
        n
    }

    fn fdb(dst: &str, permanent: bool) -> NeighbourMessage {
        let mut n = neigh([2, 0, 0, 0, 0, 2], permanent);
        n.header.family = AddressFamily::Bridge;
        n.attributes[0] =
            NeighbourAttribute::Destination(NeighbourAddress::Inet(dst.parse().unwrap()));
        n
    }

    #[test]
    fn fdb_drift_is_about_the_exact_remote() {
        let mut want = Desired::default();
        want.fdb.insert(FdbSpec {
            ifindex: 7,
            mac: [2, 0, 0, 0, 0, 2],
            dst: "192.168.1.2".parse().unwrap(),
        });
        use RouteNetlinkMessage as M;
        let cases = [
            (
                "our entry set (echo)",
                M::NewNeighbour(fdb("192.168.1.2", true)),
                false,
            ),
            (
                "our entry deleted",
                M::DelNeighbour(fdb("192.168.1.2", true)),
                true,
            ),
            (
                "our entry learned over",
                M::NewNeighbour(fdb("192.168.1.2", false)),
                true,
            ),
            (
                "old remote removed by us (peer moved)",
                M::DelNeighbour(fdb("192.168.1.9", true)),
                false,
            ),
            (
                "an extra remote added by someone",
                M::NewNeighbour(fdb("192.168.1.9", true)),
                true,
            ),
        ];
        for (name, msg, drift) in cases {
            assert_eq!(
                is_drift(&msg, &SCOPE, bounds(), &want),
                drift,
                "case: {name}"
            );
        }
    }

    #[test]
    fn echoes_are_not_drift_changes_by_others_are() {
        let mut want = Desired::default();
        want.routes.insert(spec());
        let mac = [2, 0, 0, 0, 0, 2];
        want.neighbours.insert(NeighSpec {
            ifindex: 7,
            ip: "10.244.2.0".parse().unwrap(),
            mac,
        });
        let mut other_ip = neigh([2, 0, 0, 0, 0, 9], false);
        other_ip.attributes[0] =
            NeighbourAttribute::Destination(NeighbourAddress::Inet("10.244.7.7".parse().unwrap()));
        let mut link = LinkMessage::default();
        link.header.index = 7;
        let mut other_link = LinkMessage::default();
        other_link.header.index = 9;
        use RouteNetlinkMessage as M;
        let cases = [
            (
                "our route added (echo)",
                M::NewRoute(route(7, "10.244.2.0")),
                false,
            ),
            (
                "our route deleted by hand",
                M::DelRoute(route(7, "10.244.2.0")),
                true,
            ),
            (
                "foreign route over our slot",
                M::NewRoute(route(9, "172.16.0.1")),
                true,
            ),
            (
                "unwanted route via the device",
                M::NewRoute(route(7, "10.244.2.9")),
                true,
            ),
            (
                "our delete of an unwanted route (echo)",
                M::DelRoute(route(7, "10.244.2.9")),
                false,
            ),
            (
                "our neighbour set (echo)",
                M::NewNeighbour(neigh(mac, true)),
                false,
            ),
            (
                "our neighbour deleted",
                M::DelNeighbour(neigh(mac, true)),
                true,
            ),
            (
                "our neighbour deleted, reported FAILED",
                M::DelNeighbour(neigh(mac, false)),
                true,
            ),
            (
                "our neighbour turned dynamic",
                M::NewNeighbour(neigh(mac, false)),
                true,
            ),
            (
                "neighbour with another MAC",
                M::NewNeighbour(neigh([2, 0, 0, 0, 0, 9], true)),
                true,
            ),
            (
                "kernel's own resolution elsewhere",
                M::NewNeighbour(other_ip),
                false,
            ),
            ("device changed", M::NewLink(link), true),
            ("other link", M::NewLink(other_link), false),
        ];
        for (name, msg, drift) in cases {
            assert_eq!(
                is_drift(&msg, &SCOPE, bounds(), &want),
                drift,
                "case: {name}"
            );
        }
    }
}
