//! The veth pair: host end on the bridge in the node netns, container end
//! created directly inside the pod netns (its fd passed as IFLA_NET_NS_FD),
//! so it never appears, even briefly, in the node netns.

use super::netlink::Socket;
use crate::error::Result;
use netlink_packet_core::{NLM_F_CREATE, NLM_F_EXCL};
use netlink_packet_route::link::{
    AfSpecInet, AfSpecUnspec, InetDevConf, InfoBridgePort, InfoData, InfoKind, InfoPortData,
    InfoVeth, LinkAttribute, LinkFlags, LinkInfo, LinkMessage,
};
use netlink_packet_route::RouteNetlinkMessage;
use std::os::fd::RawFd;
use std::time::{Duration, Instant};

pub struct Pair<'a> {
    pub host_name: &'a str,
    pub host_mac: &'a [u8],
    pub peer_name: &'a str,
    pub peer_mac: Option<&'a [u8]>,
    pub peer_netns: RawFd,
    pub bridge_index: u32,
    pub mtu: u32,
}

/// `veth%08x`, like the reference bridge plugin.
pub fn random_host_name() -> String {
    format!("veth{:08x}", u32::from_ne_bytes(super::random_bytes::<4>()))
}

/// Creates the pair in one request: host end up and enslaved to the bridge,
/// peer named `peer_name` in the pod netns (left down until addressed).
pub fn create_pair(sock: &mut Socket, pair: &Pair) -> Result<()> {
    let mut peer = LinkMessage::default();
    peer.attributes
        .push(LinkAttribute::IfName(pair.peer_name.to_string()));
    peer.attributes.push(LinkAttribute::Mtu(pair.mtu));
    peer.attributes
        .push(LinkAttribute::NetNsFd(pair.peer_netns));
    if let Some(mac) = pair.peer_mac {
        peer.attributes.push(LinkAttribute::Address(mac.to_vec()));
    }
    let mut msg = LinkMessage::default();
    msg.header.flags = LinkFlags::Up;
    msg.header.change_mask = LinkFlags::Up;
    msg.attributes
        .push(LinkAttribute::IfName(pair.host_name.to_string()));
    msg.attributes.push(LinkAttribute::Mtu(pair.mtu));
    // Choosing the host MAC ourselves saves a lookup for the result.
    msg.attributes
        .push(LinkAttribute::Address(pair.host_mac.to_vec()));
    msg.attributes
        .push(LinkAttribute::Controller(pair.bridge_index));
    msg.attributes.push(LinkAttribute::LinkInfo(vec![
        LinkInfo::Kind(InfoKind::Veth),
        LinkInfo::Data(InfoData::Veth(InfoVeth::Peer(peer))),
    ]));
    let what = format!("create veth {} (peer {})", pair.host_name, pair.peer_name);
    sock.ack(
        RouteNetlinkMessage::NewLink(msg),
        NLM_F_CREATE | NLM_F_EXCL,
        &what,
    )
}

/// Sets IFLA_BRPORT_MODE (hairpin) on a bridge port, so a pod can reach
/// itself through a Service IP.
pub fn set_hairpin(sock: &mut Socket, host_name: &str, on: bool) -> Result<()> {
    let mut msg = LinkMessage::default();
    msg.attributes
        .push(LinkAttribute::IfName(host_name.to_string()));
    msg.attributes
        .push(LinkAttribute::LinkInfo(vec![LinkInfo::PortData(
            InfoPortData::BridgePort(vec![InfoBridgePort::HairpinMode(on)]),
        )]));
    let what = format!("set hairpin mode on {host_name}");
    sock.ack(RouteNetlinkMessage::NewLink(msg), 0, &what)
}

/// Sets the container end up and `arp_notify=1` in one RTM_SETLINK
/// (IFLA_AF_SPEC/AF_INET devconf): no netns switch and no /proc/sys file
/// round trips. arp_notify makes the pod announce its MAC when the link
/// comes up, so neighbours that cached a reused IP's old MAC update.
pub fn set_up_with_arp_notify(sock: &mut Socket, index: u32, what: &str) -> Result<()> {
    let mut conf = InetDevConf::default();
    conf.arp_notify = 1;
    let mut msg = LinkMessage::default();
    msg.header.index = index;
    msg.header.flags = LinkFlags::Up;
    msg.header.change_mask = LinkFlags::Up;
    msg.attributes
        .push(LinkAttribute::AfSpecUnspec(vec![AfSpecUnspec::Inet(vec![
            AfSpecInet::DevConfRequest(conf),
        ])]));
    sock.ack(RouteNetlinkMessage::SetLink(msg), 0, what)
}

/// Names of the links one new pod's first packet crosses.
pub struct Path<'a> {
    pub bridge: &'a str,
    pub host_veth: &'a str,
    pub pod_if: &'a str,
}

/// Waits (bounded, polling netlink, 50 µs naps) until the pod's first
/// packet can get through: the pod end and the bridge activated by the
/// kernel's linkwatch (their qdisc is `noop`, dropping everything, until
/// then) and the host end's bridge port forwarding. Operstate alone is not
/// enough: linkwatch sets it before it activates the device, and the
/// bridge's own carrier (first port on a fresh bridge) is one more
/// linkwatch round. Returns false when `bound` expires first.
pub fn wait_ready(
    host: &mut Socket,
    pod: &mut Socket,
    path: &Path,
    bound: Duration,
) -> Result<bool> {
    let start = Instant::now();
    let (mut pod_ok, mut port_ok, mut bridge_ok) = (false, false, false);
    loop {
        pod_ok = pod_ok || pod.get_link(path.pod_if)?.is_some_and(|l| l.activated());
        port_ok = port_ok
            || host
                .get_link(path.host_veth)?
                .is_some_and(|l| l.activated() && l.port_forwarding == Some(true));
        bridge_ok =
            bridge_ok || (port_ok && host.get_link(path.bridge)?.is_some_and(|l| l.activated()));
        if pod_ok && port_ok && bridge_ok {
            return Ok(true);
        }
        if start.elapsed() >= bound {
            return Ok(false);
        }
        std::thread::sleep(Duration::from_micros(50));
    }
}

/// Deletes a link by name (both ends go for a veth); absent is fine.
pub fn delete_by_name(sock: &mut Socket, name: &str) -> Result<bool> {
    let mut msg = LinkMessage::default();
    msg.attributes.push(LinkAttribute::IfName(name.to_string()));
    match sock.ack(
        RouteNetlinkMessage::DelLink(msg),
        0,
        &format!("delete link {name}"),
    ) {
        Ok(()) => Ok(true),
        Err(e) if e.is_not_found() => Ok(false),
        Err(e) => Err(e),
    }
}
