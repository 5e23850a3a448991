//! Choosing the external interface, as flanneld does: each --iface (a name
//! or one of the interface's IPv4 addresses) in order, then each
//! --iface-regex (matched against names and addresses), then
//! --iface-can-reach (`ip route get`); with no flag, the interface of the
//! IPv4 default route. Only reads from the kernel, in the network
//! namespace the daemon runs in.

use crate::backend::ExternalInterface;
use futures::TryStreamExt;
use netlink_packet_route::link::LinkAttribute;
use netlink_packet_route::route::{RouteAddress, RouteAttribute, RouteHeader, RouteType};
use regex::Regex;
use rtnetlink::{Handle, RouteMessageBuilder};
use std::net::Ipv4Addr;

#[derive(Debug, thiserror::Error)]
pub enum IfaceError {
    #[error("cannot read interfaces from the kernel: {0}")]
    Netlink(String),
    #[error("--iface-regex {0:?}: {1}")]
    BadRegex(String, String),
    #[error("no interface matches {0} (checked in this order)")]
    NoMatch(String),
    #[error("no IPv4 default route to pick the external interface from; pass --iface")]
    NoDefaultRoute,
    #[error("interface {0} has no IPv4 address")]
    NoAddress(String),
}

/// One link as read from the kernel.
#[derive(Debug, Clone, PartialEq)]
pub struct Link {
    pub index: u32,
    pub name: String,
    pub mtu: u32,
    /// IPv4 addresses in kernel order (the first is the primary).
    pub addrs: Vec<Ipv4Addr>,
}

/// What the flags ask for.
#[derive(Debug, Clone, Default)]
pub struct Selector {
    pub ifaces: Vec<String>,
    pub regexes: Vec<String>,
    /// --iface-can-reach: the interface the kernel routes this address to.
    pub can_reach: Option<Ipv4Addr>,
    pub public_ip: Option<Ipv4Addr>,
}

impl Selector {
    fn describe(&self) -> String {
        let mut all: Vec<String> = self.ifaces.iter().map(|i| format!("--iface {i}")).collect();
        all.extend(self.regexes.iter().map(|r| format!("--iface-regex {r}")));
        all.extend(self.can_reach.map(|ip| format!("--iface-can-reach {ip}")));
        all.join(", ")
    }

    fn any_given(&self) -> bool {
        !self.ifaces.is_empty() || !self.regexes.is_empty() || self.can_reach.is_some()
    }
}

/// A route the interface is taken from: its output interface and, when
/// the kernel says, the source address it would use.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RouteChoice {
    pub oif: u32,
    pub src: Option<Ipv4Addr>,
}

/// Reads the links and picks the external interface.
pub async fn find(sel: &Selector) -> Result<ExternalInterface, IfaceError> {
    let regexes = sel
        .regexes
        .iter()
        .map(|r| Regex::new(r).map_err(|e| IfaceError::BadRegex(r.clone(), e.to_string())))
        .collect::<Result<Vec<_>, _>>()?;
    let (conn, handle, _) =
        rtnetlink::new_connection().map_err(|e| IfaceError::Netlink(e.to_string()))?;
    let driver = tokio::spawn(conn);
    let result = async {
        let links = dump_links(&handle).await?;
        // Routes are only asked for when --iface/--iface-regex found nothing.
        let route = match (by_flags(&links, sel, &regexes), sel.can_reach) {
            (Some(_), _) => None,
            (None, Some(ip)) => route_to(&handle, ip).await?,
            (None, None) if !sel.any_given() => default_route(&handle).await?,
            (None, None) => None,
        };
        choose(&links, sel, &regexes, route)
    }
    .await;
    driver.abort();
    result
}

/// Pure selection over the dumped links: --iface, then --iface-regex,
/// then `route` (from --iface-can-reach, or the default route when no
/// flag was given).
pub fn choose(
    links: &[Link],
    sel: &Selector,
    regexes: &[Regex],
    route: Option<RouteChoice>,
) -> Result<ExternalInterface, IfaceError> {
    let no_match = || {
        if sel.any_given() {
            IfaceError::NoMatch(sel.describe())
        } else {
            IfaceError::NoDefaultRoute
        }
    };
    let (link, addr) = match by_flags(links, sel, regexes) {
        Some(hit) => hit,
        None => {
            let r = route.ok_or_else(no_match)?;
            let link = links
                .iter()
                .find(|l| l.index == r.oif)
                .ok_or_else(no_match)?;
            (link, r.src.filter(|s| link.addrs.contains(s)))
        }
    };
    let iface_addr = addr
        .or_else(|| link.addrs.first().copied())
        .ok_or_else(|| IfaceError::NoAddress(link.name.clone()))?;
    Ok(ExternalInterface {
        name: link.name.clone(),
        index: link.index,
        iface_addr,
        public_ip: sel.public_ip.unwrap_or(iface_addr),
        mtu: link.mtu,
    })
}

/// The first link matching --iface, then --iface-regex; the address is
/// the one that matched, if an address did.
fn by_flags<'a>(
    links: &'a [Link],
    sel: &Selector,
    regexes: &[Regex],
) -> Option<(&'a Link, Option<Ipv4Addr>)> {
    for want in &sel.ifaces {
        let hit = match want.parse::<Ipv4Addr>() {
            Ok(ip) => links
                .iter()
                .find(|l| l.addrs.contains(&ip))
                .map(|l| (l, Some(ip))),
            Err(_) => links.iter().find(|l| &l.name == want).map(|l| (l, None)),
        };
        if hit.is_some() {
            return hit;
        }
        tracing::info!(iface = %want, "no interface matches --iface");
    }
    for re in regexes {
        for l in links {
            if let Some(ip) = l.addrs.iter().find(|a| re.is_match(&a.to_string())) {
                return Some((l, Some(*ip)));
            }
            if re.is_match(&l.name) {
                return Some((l, None));
            }
        }
        tracing::info!(regex = %re, "no interface matches --iface-regex");
    }
    None
}

async fn dump_links(handle: &Handle) -> Result<Vec<Link>, IfaceError> {
    let err = |e: rtnetlink::Error| IfaceError::Netlink(e.to_string());
    let mut links = Vec::new();
    let mut stream = handle.link().get().execute();
    while let Some(msg) = stream.try_next().await.map_err(err)? {
        let mut link = Link {
            index: msg.header.index,
            name: String::new(),
            mtu: 0,
            addrs: Vec::new(),
        };
        for attr in &msg.attributes {
            match attr {
                LinkAttribute::IfName(n) => link.name = n.clone(),
                LinkAttribute::Mtu(m) => link.mtu = *m,
                _ => {}
            }
        }
        links.push(link);
    }
    let mut stream = handle.address().get().execute();
    while let Some(msg) = stream.try_next().await.map_err(err)? {
        let addr = crate::kernel::link::addr_of(&msg).map(|net| net.addr());
        if let (Some(ip), Some(link)) =
            (addr, links.iter_mut().find(|l| l.index == msg.header.index))
        {
            link.addrs.push(ip);
        }
    }
    Ok(links)
}

/// The main table's IPv4 default route with the lowest metric.
async fn default_route(handle: &Handle) -> Result<Option<RouteChoice>, IfaceError> {
    let msg = RouteMessageBuilder::<Ipv4Addr>::new().build();
    let mut stream = handle.route().get(msg).execute();
    let mut best: Option<(u32, RouteChoice)> = None;
    while let Some(r) = stream
        .try_next()
        .await
        .map_err(|e| IfaceError::Netlink(e.to_string()))?
    {
        let table = r.attributes.iter().find_map(|a| match a {
            RouteAttribute::Table(t) => Some(*t),
            _ => None,
        });
        let main =
            table.unwrap_or(u32::from(r.header.table)) == u32::from(RouteHeader::RT_TABLE_MAIN);
        if !main || r.header.destination_prefix_length != 0 || r.header.kind != RouteType::Unicast {
            continue;
        }
        let metric = r.attributes.iter().find_map(|a| match a {
            RouteAttribute::Priority(p) => Some(*p),
            _ => None,
        });
        if let Some(choice) = route_choice(&r.attributes) {
            let metric = metric.unwrap_or(0);
            if best.is_none_or(|(m, _)| metric < m) {
                best = Some((metric, choice));
            }
        }
    }
    Ok(best.map(|(_, c)| c))
}

/// `ip route get <ip>`: where the kernel would send traffic for `ip`.
async fn route_to(handle: &Handle, ip: Ipv4Addr) -> Result<Option<RouteChoice>, IfaceError> {
    let msg = RouteMessageBuilder::<Ipv4Addr>::new()
        .destination_prefix(ip, 32)
        .build();
    let mut stream = handle.route().get(msg).execute();
    match stream.try_next().await {
        Ok(Some(r)) => Ok(route_choice(&r.attributes)),
        Ok(None) => Ok(None),
        Err(e) => {
            tracing::info!(%ip, error = %e, "--iface-can-reach: no route");
            Ok(None)
        }
    }
}

fn route_choice(attrs: &[RouteAttribute]) -> Option<RouteChoice> {
    let mut choice = RouteChoice { oif: 0, src: None };
    for a in attrs {
        match a {
            RouteAttribute::Oif(i) => choice.oif = *i,
            RouteAttribute::PrefSource(RouteAddress::Inet(ip)) => choice.src = Some(*ip),
            _ => {}
        }
    }
    (choice.oif != 0).then_some(choice)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn links() -> Vec<Link> {
        vec![
            Link {
                index: 1,
                name: "lo".into(),
                mtu: 65536,
                addrs: vec![Ipv4Addr::LOCALHOST],
            },
            Link {
                index: 2,
                name: "eth0".into(),
                mtu: 1500,
                addrs: vec!["10.0.0.2".parse().unwrap()],
            },
            Link {
                index: 3,
                name: "ens5".into(),
                mtu: 9001,
                addrs: vec![
                    "192.168.1.5".parse().unwrap(),
                    "192.168.2.5".parse().unwrap(),
                ],
            },
            Link {
                index: 4,
                name: "dummy0".into(),
                mtu: 1500,
                addrs: vec![],
            },
        ]
    }

    fn sel(ifaces: &[&str], regexes: &[&str]) -> Selector {
        Selector {
            ifaces: ifaces.iter().map(|s| s.to_string()).collect(),
            regexes: regexes.iter().map(|s| s.to_string()).collect(),
            can_reach: None,
            public_ip: None,
        }
    }

    fn pick(s: &Selector, oif: Option<u32>) -> Result<ExternalInterface, IfaceError> {
        let res: Vec<Regex> = s.regexes.iter().map(|r| Regex::new(r).unwrap()).collect();
        let route = oif.map(|oif| RouteChoice { oif, src: None });
        choose(&links(), s, &res, route)
    }

    #[test]
    fn iface_by_name_by_address_and_in_order() {
        let e = pick(&sel(&["ens5"], &[]), None).unwrap();
        assert_eq!((e.name.as_str(), e.index, e.mtu), ("ens5", 3, 9001));
        assert_eq!(e.iface_addr, "192.168.1.5".parse::<Ipv4Addr>().unwrap());
        let e = pick(&sel(&["192.168.2.5"], &[]), None).unwrap();
        assert_eq!(
            (e.name.as_str(), e.iface_addr),
            ("ens5", "192.168.2.5".parse().unwrap())
        );
        let e = pick(&sel(&["nope", "eth0"], &["^ens"]), None).unwrap();
        assert_eq!(e.name, "eth0");
    }

    #[test]
    fn regex_after_iface_matches_names_and_addresses() {
        assert_eq!(pick(&sel(&["nope"], &["^en"]), None).unwrap().name, "ens5");
        let e = pick(&sel(&[], &[r"^192\.168\.2\."]), None).unwrap();
        assert_eq!(e.iface_addr, "192.168.2.5".parse::<Ipv4Addr>().unwrap());
    }

    #[test]
    fn default_route_and_public_ip_override() {
        let mut s = sel(&[], &[]);
        s.public_ip = Some("203.0.113.9".parse().unwrap());
        let e = pick(&s, Some(2)).unwrap();
        assert_eq!(e.name, "eth0");
        assert_eq!(e.iface_addr, "10.0.0.2".parse::<Ipv4Addr>().unwrap());
        assert_eq!(e.public_ip, "203.0.113.9".parse::<Ipv4Addr>().unwrap());
    }

    #[test]
    fn can_reach_route_is_used_after_flags_with_its_source_address() {
        let mut s = sel(&["nope"], &[]);
        s.can_reach = Some("192.168.2.77".parse().unwrap());
        let res: Vec<Regex> = Vec::new();
        let src = Some("192.168.2.5".parse().unwrap());
        let e = choose(&links(), &s, &res, Some(RouteChoice { oif: 3, src })).unwrap();
        assert_eq!(
            (e.name.as_str(), e.iface_addr),
            ("ens5", "192.168.2.5".parse().unwrap())
        );
        // --iface still wins when it matches.
        let s2 = Selector {
            ifaces: vec!["eth0".into()],
            ..s.clone()
        };
        assert_eq!(
            choose(&links(), &s2, &res, Some(RouteChoice { oif: 3, src }))
                .unwrap()
                .name,
            "eth0"
        );
        let err = choose(&links(), &s, &res, None).unwrap_err();
        assert!(
            err.to_string()
                .contains("--iface nope, --iface-can-reach 192.168.2.77"),
            "{err}"
        );
    }

    #[test]
    fn clear_errors() {
        let err = pick(&sel(&["eth9"], &["^wl"]), None).unwrap_err();
        assert!(
            err.to_string().contains("--iface eth9, --iface-regex ^wl"),
            "{err}"
        );
        assert!(
            matches!(pick(&sel(&["dummy0"], &[]), None), Err(IfaceError::NoAddress(n)) if n == "dummy0")
        );
        assert!(matches!(
            pick(&sel(&[], &[]), Some(99)),
            Err(IfaceError::NoDefaultRoute)
        ));
    }
}
