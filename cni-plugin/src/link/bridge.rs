//! `ensure_*` for the node bridge and its gateway address.

use super::addr::{add_addr, del_addr, list_addrs};
use super::netlink::{Link, Socket};
use super::{random_mac, sysctl};
use crate::error::{Error, Result};
use ipnet::IpNet;
use netlink_packet_core::{NLM_F_CREATE, NLM_F_EXCL};
use netlink_packet_route::link::{InfoKind, LinkAttribute, LinkFlags, LinkInfo, LinkMessage};
use netlink_packet_route::RouteNetlinkMessage;

/// Returns the bridge `name`, creating it (up, MAC pinned, accept_ra=0)
/// when missing. Concurrent ADDs race here, so EEXIST means "someone else
/// created it" and is not an error.
pub fn ensure_bridge(sock: &mut Socket, name: &str, mtu: u32) -> Result<Link> {
    if let Some(link) = sock.get_link(name)? {
        return ready(sock, link);
    }
    let mut msg = LinkMessage::default();
    msg.header.flags = LinkFlags::Up;
    msg.header.change_mask = LinkFlags::Up;
    msg.attributes.push(LinkAttribute::IfName(name.to_string()));
    msg.attributes.push(LinkAttribute::Mtu(mtu));
    // An explicitly set MAC is never replaced by the lowest port's MAC;
    // a bridge MAC that changes as pods come and go stalls ARP for 30-100 s.
    msg.attributes.push(LinkAttribute::Address(random_mac()));
    msg.attributes
        .push(LinkAttribute::LinkInfo(vec![LinkInfo::Kind(
            InfoKind::Bridge,
        )]));
    let what = format!("create bridge {name}");
    match sock.ack(
        RouteNetlinkMessage::NewLink(msg),
        NLM_F_CREATE | NLM_F_EXCL,
        &what,
    ) {
        Ok(()) => {
            // A bridge only needs IPv4 here; router advertisements on it
            // would give the node addresses nobody asked for.
            sysctl::ensure_iface("net.ipv6.conf", name, "accept_ra", "0")?;
        }
        Err(e) if e.is_exists() => {}
        Err(e) => return Err(e),
    }
    let link = sock.get_link(name)?.ok_or_else(|| Error::NotFound {
        what: format!("bridge {name} after creating it"),
    })?;
    ready(sock, link)
}

/// Checks an existing link is a bridge, brings it up and pins its MAC if
/// nobody did (a bridge made by an older plugin may still follow its ports).
fn ready(sock: &mut Socket, link: Link) -> Result<Link> {
    if link.kind.as_deref() != Some("bridge") {
        return Err(Error::InvalidConfig(format!(
            "{} exists but is a {} device, not a bridge",
            link.name,
            link.kind.as_deref().unwrap_or("non-bridge")
        )));
    }
    if !link.up || !mac_pinned(&link.name) {
        // Setting the MAC to its current value is enough to pin it.
        let what = format!("set bridge {} up with a fixed MAC", link.name);
        sock.set_link_up(link.index, link.mac.as_deref(), &what)?;
    }
    Ok(link)
}

/// `addr_assign_type` 3 (NET_ADDR_SET) means the MAC was set explicitly.
/// Not exposed over netlink; sysfs shows the netns /sys was mounted for,
/// which is the node's in every normal setup. Unreadable counts as pinned:
/// re-pinning is harmless but costs a round trip on every ADD.
fn mac_pinned(name: &str) -> bool {
    match std::fs::read_to_string(format!("/sys/class/net/{name}/addr_assign_type")) {
        Ok(v) => v.trim() == "3",
        Err(_) => true,
    }
}

/// Makes sure the bridge carries `gateway` (gateway IP / subnet prefix).
/// An address of the same family from an old subnet (the node's podCIDR
/// changed: its Node was deleted and re-registered) is removed, unless
/// `in_use(old)` says pods still hold addresses in it: then it stays
/// beside the new one, so those pods keep their gateway while new pods
/// get the new subnet (flannel's bridge plugin fails every ADD here,
/// "cni0 already has an IP address different from ..."). A later ADD
/// removes it once no pod holds an address in it any more.
pub fn ensure_gateway(
    sock: &mut Socket,
    bridge: &Link,
    gateway: &IpNet,
    in_use: &dyn Fn(&IpNet) -> Result<bool>,
) -> Result<()> {
    let current = list_addrs(sock, bridge.index)?;
    let stale: Vec<IpNet> = current
        .iter()
        .filter(|a| a.addr().is_ipv4() == gateway.addr().is_ipv4() && !is_link_local(a))
        .filter(|a| a.trunc() != gateway.trunc())
        .copied()
        .collect();
    for old in &stale {
        if in_use(&old.trunc())? {
            // A warning on stderr: the runtime's log shows it.
            eprintln!(
                "felt: bridge {} keeps {old} of the old subnet {} beside {gateway}: pods still hold addresses in it",
                bridge.name,
                old.trunc()
            );
            continue;
        }
        let what = format!("remove stale address {old} from {}", bridge.name);
        match del_addr(sock, bridge.index, old, &what) {
            Err(e) if !e.is_not_found() => return Err(e),
            _ => {}
        }
    }
    if current.contains(gateway) {
        return Ok(());
    }
    let what = format!("add gateway {gateway} to {}", bridge.name);
    match add_addr(sock, bridge.index, gateway, &what) {
        Err(e) if !e.is_exists() => Err(e),
        _ => Ok(()),
    }
}

fn is_link_local(net: &IpNet) -> bool {
    match net {
        IpNet::V4(n) => n.addr().is_link_local(),
        IpNet::V6(n) => (n.addr().segments()[0] & 0xffc0) == 0xfe80,
    }
}
