//! Links and addresses: read a link's attributes back, create the VXLAN
//! device, change what the kernel allows to change in place.

use super::{errno, Kernel, KernelError};
use futures::TryStreamExt;
use ipnet::Ipv4Net;
use netlink_packet_route::address::{AddressAttribute, AddressMessage};
use netlink_packet_route::link::{
    InfoData, InfoKind, InfoVxlan, LinkAttribute, LinkFlags, LinkInfo, LinkMessage,
};
use netlink_packet_route::AddressFamily;
use rtnetlink::{LinkUnspec, LinkVxlan};
use std::net::{IpAddr, Ipv4Addr};

/// The VXLAN attributes felt sets (and compares) on its device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VxlanParams {
    pub vni: u32,
    /// UDP destination port, host order.
    pub port: u16,
    pub local: Ipv4Addr,
    /// ifindex of the underlay (external) interface.
    pub dev: u32,
    pub learning: bool,
    pub gbp: bool,
}

/// A link as the kernel reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LinkState {
    pub index: u32,
    pub name: String,
    pub kind: Option<InfoKind>,
    pub mtu: u32,
    pub mac: Option<[u8; 6]>,
    pub up: bool,
    /// Set when the link is a VXLAN device.
    pub vxlan: Option<VxlanParams>,
}

impl Kernel {
    /// The link called `name`, or `None` when there is none.
    pub async fn link_by_name(&self, name: &str) -> Result<Option<LinkState>, KernelError> {
        let req = self.handle().link().get().match_name(name.to_string());
        first_link(req.execute(), &format!("link {name}")).await
    }

    /// Creates a VXLAN device (down) with exactly these attributes.
    pub async fn create_vxlan(
        &self,
        name: &str,
        params: &VxlanParams,
        mtu: u32,
        mac: [u8; 6],
    ) -> Result<(), KernelError> {
        let mut builder = LinkVxlan::new(name, params.vni)
            .dev(params.dev)
            .local(params.local)
            .port(params.port)
            .learning(params.learning)
            .mtu(mtu)
            .address(mac.to_vec());
        if params.gbp {
            builder = builder.gbp();
        }
        self.handle()
            .link()
            .add(builder.build())
            .execute()
            .await
            .map_err(|e| KernelError::netlink(format!("create vxlan device {name}"), e))
    }

    pub async fn delete_link(&self, index: u32) -> Result<(), KernelError> {
        self.handle()
            .link()
            .del(index)
            .execute()
            .await
            .map_err(|e| KernelError::netlink(format!("delete link #{index}"), e))
    }

    pub async fn set_mtu(&self, index: u32, mtu: u32) -> Result<(), KernelError> {
        let msg = LinkUnspec::new_with_index(index).mtu(mtu).build();
        self.set_link(msg, format!("set mtu {mtu} on link #{index}"))
            .await
    }

    pub async fn set_mac(&self, index: u32, mac: [u8; 6]) -> Result<(), KernelError> {
        let msg = LinkUnspec::new_with_index(index)
            .address(mac.to_vec())
            .build();
        self.set_link(msg, format!("set mac {} on link #{index}", fmt_mac(&mac)))
            .await
    }

    pub async fn set_up(&self, index: u32) -> Result<(), KernelError> {
        let msg = LinkUnspec::new_with_index(index).up().build();
        self.set_link(msg, format!("set link #{index} up")).await
    }

    /// Changes VXLAN learning in place (the kernel supports it through
    /// changelink, so no need to recreate the device and drop traffic).
    pub async fn set_vxlan_learning(&self, index: u32, learning: bool) -> Result<(), KernelError> {
        let mut msg = LinkMessage::default();
        msg.header.index = index;
        msg.attributes.push(LinkAttribute::LinkInfo(vec![
            LinkInfo::Kind(InfoKind::Vxlan),
            LinkInfo::Data(InfoData::Vxlan(vec![InfoVxlan::Learning(learning)])),
        ]));
        self.handle()
            .link()
            .change(msg)
            .execute()
            .await
            .map_err(|e| {
                KernelError::netlink(format!("set learning={learning} on link #{index}"), e)
            })
    }

    async fn set_link(&self, msg: LinkMessage, what: String) -> Result<(), KernelError> {
        self.handle()
            .link()
            .set(msg)
            .execute()
            .await
            .map_err(|e| KernelError::netlink(what, e))
    }

    /// The IPv4 addresses (with prefix) on a link.
    pub async fn ipv4_addrs(&self, index: u32) -> Result<Vec<Ipv4Net>, KernelError> {
        Ok(self
            .ipv4_addr_messages(index)
            .await?
            .iter()
            .filter_map(addr_of)
            .collect())
    }

    /// The networks directly connected through a link (its addresses'
    /// prefixes), where a gateway can be reached without another hop.
    pub async fn connected_networks(&self, index: u32) -> Result<Vec<Ipv4Net>, KernelError> {
        Ok(self
            .ipv4_addrs(index)
            .await?
            .iter()
            .map(Ipv4Net::trunc)
            .collect())
    }

    /// Every IPv4 network this namespace is connected to, on any link, as
    /// (ifindex, prefix); loopback's 127.0.0.0/8 included.
    pub async fn all_connected_networks(&self) -> Result<Vec<(u32, Ipv4Net)>, KernelError> {
        let all: Vec<AddressMessage> = self
            .handle()
            .address()
            .get()
            .execute()
            .try_collect()
            .await
            .map_err(|e| KernelError::netlink("list addresses", e))?;
        Ok(all
            .iter()
            .filter(|m| m.header.family == AddressFamily::Inet)
            .filter_map(|m| addr_of(m).map(|a| (m.header.index, a.trunc())))
            .collect())
    }

    /// Makes `want` the only IPv4 address on the link: a stale address
    /// (e.g. of a previous subnet) would answer for a peer's range.
    /// Returns whether anything had to change.
    pub async fn ensure_only_ipv4_addr(
        &self,
        index: u32,
        want: Ipv4Net,
    ) -> Result<bool, KernelError> {
        let mut present = false;
        let mut changed = false;
        for msg in self.ipv4_addr_messages(index).await? {
            match addr_of(&msg) {
                Some(have) if have == want => present = true,
                Some(have) => {
                    changed = true;
                    tracing::info!(link = index, addr = %have, "removing stale address");
                    self.handle()
                        .address()
                        .del(msg)
                        .execute()
                        .await
                        .map_err(|e| {
                            KernelError::netlink(
                                format!("delete address {have} from link #{index}"),
                                e,
                            )
                        })?;
                }
                None => {}
            }
        }
        if present {
            return Ok(changed);
        }
        tracing::info!(link = index, addr = %want, "adding address");
        let add = self
            .handle()
            .address()
            .add(index, IpAddr::V4(want.addr()), want.prefix_len());
        match add.execute().await {
            Ok(()) => Ok(true),
            Err(e) if errno(&e) == Some(libc::EEXIST) => Ok(changed),
            Err(e) => Err(KernelError::netlink(
                format!("add address {want} to link #{index}"),
                e,
            )),
        }
    }

    async fn ipv4_addr_messages(&self, index: u32) -> Result<Vec<AddressMessage>, KernelError> {
        let stream = self
            .handle()
            .address()
            .get()
            .set_link_index_filter(index)
            .execute();
        let all: Vec<AddressMessage> = stream
            .try_collect()
            .await
            .map_err(|e| KernelError::netlink(format!("list addresses of link #{index}"), e))?;
        // The filter is applied by rtnetlink after the dump; keep the check
        // explicit so a kernel-side change cannot widen what we touch.
        Ok(all
            .into_iter()
            .filter(|m| m.header.index == index && m.header.family == AddressFamily::Inet)
            .collect())
    }
}

pub fn addr_of(msg: &AddressMessage) -> Option<Ipv4Net> {
    // IFA_LOCAL is the interface's own address; IFA_ADDRESS is the peer
    // on point-to-point links, so prefer LOCAL when both are present.
    let local = msg.attributes.iter().find_map(|a| match a {
        AddressAttribute::Local(IpAddr::V4(ip)) => Some(*ip),
        _ => None,
    });
    let addr = local.or_else(|| {
        msg.attributes.iter().find_map(|a| match a {
            AddressAttribute::Address(IpAddr::V4(ip)) => Some(*ip),
            _ => None,
        })
    })?;
    Ipv4Net::new(addr, msg.header.prefix_len).ok()
}

async fn first_link(
    stream: impl futures::Stream<Item = Result<LinkMessage, rtnetlink::Error>>,
    what: &str,
) -> Result<Option<LinkState>, KernelError> {
    futures::pin_mut!(stream);
    match stream.try_next().await {
        Ok(Some(msg)) => Ok(Some(parse_link(&msg))),
        Ok(None) => Ok(None),
        Err(e) => match KernelError::netlink(what, e) {
            KernelError::NotFound { .. } => Ok(None),
            other => Err(other),
        },
    }
}

fn parse_link(msg: &LinkMessage) -> LinkState {
    let mut state = LinkState {
        index: msg.header.index,
        name: String::new(),
        kind: None,
        mtu: 0,
        mac: None,
        up: msg.header.flags.contains(LinkFlags::Up),
        vxlan: None,
    };
    for attr in &msg.attributes {
        match attr {
            LinkAttribute::IfName(n) => state.name = n.clone(),
            LinkAttribute::Mtu(m) => state.mtu = *m,
            LinkAttribute::Address(a) => state.mac = <[u8; 6]>::try_from(a.as_slice()).ok(),
            LinkAttribute::LinkInfo(infos) => {
                for info in infos {
                    match info {
                        LinkInfo::Kind(k) => state.kind = Some(k.clone()),
                        LinkInfo::Data(InfoData::Vxlan(v)) => state.vxlan = Some(parse_vxlan(v)),
                        _ => {}
                    }
                }
            }
            _ => {}
        }
    }
    state
}

fn parse_vxlan(attrs: &[InfoVxlan]) -> VxlanParams {
    let mut p = VxlanParams {
        vni: 0,
        port: 0,
        local: Ipv4Addr::UNSPECIFIED,
        dev: 0,
        learning: false,
        gbp: false,
    };
    for a in attrs {
        match a {
            InfoVxlan::Id(v) => p.vni = *v,
            InfoVxlan::Port(v) => p.port = *v,
            InfoVxlan::Local(v) => p.local = *v,
            InfoVxlan::Link(v) => p.dev = *v,
            InfoVxlan::Learning(v) => p.learning = *v,
            InfoVxlan::Gbp => p.gbp = true,
            _ => {}
        }
    }
    p
}

pub use crate::spec::fmt_mac;

/// Parses `aa:bb:cc:dd:ee:ff` (case-insensitive).
pub fn parse_mac(s: &str) -> Option<[u8; 6]> {
    let mut out = [0u8; 6];
    let mut parts = s.split(':');
    for byte in out.iter_mut() {
        let p = parts.next()?;
        if p.len() != 2 {
            return None;
        }
        *byte = u8::from_str_radix(p, 16).ok()?;
    }
    parts.next().is_none().then_some(out)
}
