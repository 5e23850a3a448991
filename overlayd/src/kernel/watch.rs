//! Kernel change notifications (links, neighbours, IPv4 routes), used only
//! as a hint to reconcile early: a route or neighbour deleted by hand is
//! restored within a moment instead of at the next periodic resync. A
//! missed notification costs nothing but latency, because every round
//! recomputes from full state.

use super::{Kernel, KernelError};
use crate::reconcile::Scope;
use futures::channel::mpsc::UnboundedReceiver;
use futures::StreamExt;
use netlink_packet_core::{NetlinkMessage, NetlinkPayload};
use netlink_packet_route::link::LinkMessage;
use netlink_packet_route::neighbour::NeighbourMessage;
use netlink_packet_route::route::{RouteAttribute, RouteMessage};
use netlink_packet_route::RouteNetlinkMessage;
use rtnetlink::sys::SocketAddr;
use rtnetlink::MulticastGroup;

type Messages = UnboundedReceiver<(NetlinkMessage<RouteNetlinkMessage>, SocketAddr)>;

/// A subscription to the rtnetlink multicast groups felt cares about.
pub struct Changes {
    rx: Messages,
}

impl Kernel {
    /// Subscribes in the current network namespace.
    pub fn subscribe_changes() -> Result<Changes, KernelError> {
        let groups = [
            MulticastGroup::Link,
            MulticastGroup::Neigh,
            MulticastGroup::Ipv4Route,
        ];
        let (conn, _handle, rx) =
            rtnetlink::new_multicast_connection(&groups).map_err(KernelError::Connect)?;
        tokio::spawn(conn);
        Ok(Changes { rx })
    }
}

impl Changes {
    /// The next notification; `None` once the socket is gone (e.g. after
    /// an overrun), after which only the periodic resync remains.
    pub async fn next(&mut self) -> Option<RouteNetlinkMessage> {
        loop {
            let (msg, _) = self.rx.next().await?;
            if let NetlinkPayload::InnerMessage(inner) = msg.payload {
                return Some(inner);
            }
        }
    }
}

/// Whether a notification concerns an object in the backend's scope.
pub fn relevant(msg: &RouteNetlinkMessage, scope: &Scope) -> bool {
    match msg {
        RouteNetlinkMessage::NewLink(l) | RouteNetlinkMessage::DelLink(l) => {
            link_in_scope(l, scope)
        }
        RouteNetlinkMessage::NewRoute(r) | RouteNetlinkMessage::DelRoute(r) => {
            route_in_scope(r, scope)
        }
        RouteNetlinkMessage::NewNeighbour(n) | RouteNetlinkMessage::DelNeighbour(n) => {
            neigh_in_scope(n, scope)
        }
        _ => false,
    }
}

fn link_in_scope(l: &LinkMessage, scope: &Scope) -> bool {
    l.header.index == scope.ext_index || Some(l.header.index) == scope.device
}

fn route_in_scope(r: &RouteMessage, scope: &Scope) -> bool {
    r.attributes.iter().any(|a| match a {
        RouteAttribute::Oif(i) => *i == scope.ext_index || Some(*i) == scope.device,
        _ => false,
    })
}

fn neigh_in_scope(n: &NeighbourMessage, scope: &Scope) -> bool {
    Some(n.header.ifindex) == scope.device
}

impl Changes {
    /// Discards what is queued (a burst already covered by the coming round).
    pub fn drain(&mut self) {
        while self.rx.try_recv().is_ok() {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use netlink_packet_route::neighbour::NeighbourMessage;

    const SCOPE: Scope = Scope {
        ext_index: 2,
        device: Some(7),
        ext_gateway_routes: false,
    };

    fn route(oif: u32) -> RouteNetlinkMessage {
        let mut r = RouteMessage::default();
        r.attributes.push(RouteAttribute::Oif(oif));
        RouteNetlinkMessage::DelRoute(r)
    }

    fn neigh(ifindex: u32) -> RouteNetlinkMessage {
        let mut n = NeighbourMessage::default();
        n.header.ifindex = ifindex;
        RouteNetlinkMessage::DelNeighbour(n)
    }

    fn link(index: u32) -> RouteNetlinkMessage {
        let mut l = LinkMessage::default();
        l.header.index = index;
        RouteNetlinkMessage::DelLink(l)
    }

    #[test]
    fn only_the_backends_interfaces_trigger() {
        let cases = [
            ("route via device", route(7), true),
            ("route via ext", route(2), true),
            ("route elsewhere", route(9), false),
            ("neighbour on device", neigh(7), true),
            ("ARP churn on ext", neigh(2), false),
            ("device deleted", link(7), true),
            ("other link", link(9), false),
        ];
        for (name, msg, want) in cases {
            assert_eq!(relevant(&msg, &SCOPE), want, "case: {name}");
        }
    }
}
