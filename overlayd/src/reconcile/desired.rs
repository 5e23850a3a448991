//! Which leases are peers this node routes to (pure). Leases come from
//! anyone who can write the etcd prefix or a Node's annotations, so each
//! is checked before it can become a kernel object: only a subnet strictly
//! inside the network, aligned to SubnetLen, not ours and not overlapping
//! a network this node is connected to, with a public IP that can be a
//! unicast next hop, is ever programmed. Everything else is skipped with a
//! reason (logged, and counted in `felt_leases_skipped{reason}`).

use crate::lease::{Lease, LeaseSnapshot};
use ipnet::Ipv4Net;
use std::collections::BTreeMap;

/// What this node knows that decides whether a lease may be routed.
#[derive(Debug, Clone)]
pub struct Bounds {
    pub network: Ipv4Net,
    pub subnet_len: u8,
    pub own: Lease,
    pub backend_type: &'static str,
    /// Every network connected to this node (all interfaces' address
    /// prefixes, the own pod subnet left out): a lease overlapping one
    /// would take over the node's own traffic (its underlay, etcd).
    pub connected: Vec<Ipv4Net>,
}

/// Why a lease is not routed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Skip {
    /// Metric label: outside-network, misaligned, own-subnet,
    /// connected-network, public-ip, backend-type, backend-data, conflict.
    pub reason: &'static str,
    pub message: String,
}

impl Skip {
    pub fn new(reason: &'static str, message: impl Into<String>) -> Self {
        Skip {
            reason,
            message: message.into(),
        }
    }
}

/// The checks that need nothing from the backend. `Ok(false)`: the lease
/// is our own (not a peer, not a problem).
pub fn check(lease: &Lease, b: &Bounds) -> Result<bool, Skip> {
    let sn = lease.subnet;
    if sn == b.own.subnet {
        return Ok(false);
    }
    if !b.network.contains(&sn) || sn.prefix_len() <= b.network.prefix_len() {
        return Err(Skip::new(
            "outside-network",
            format!(
                "subnet {sn} is not strictly inside the network {}",
                b.network
            ),
        ));
    }
    if sn.prefix_len() != b.subnet_len || sn.trunc() != sn {
        return Err(Skip::new(
            "misaligned",
            format!(
                "subnet {sn} is not a /{} subnet of the network",
                b.subnet_len
            ),
        ));
    }
    if overlaps(sn, b.own.subnet) {
        return Err(Skip::new(
            "own-subnet",
            format!("subnet {sn} overlaps this node's own {}", b.own.subnet),
        ));
    }
    if let Some(c) = b.connected.iter().find(|c| overlaps(sn, **c)) {
        return Err(Skip::new(
            "connected-network",
            format!("subnet {sn} overlaps {c}, a network this node is connected to"),
        ));
    }
    let ip = lease.attrs.public_ip;
    if ip.is_unspecified()
        || ip.is_loopback()
        || ip.is_multicast()
        || ip.is_broadcast()
        || b.network.contains(&ip)
    {
        return Err(Skip::new(
            "public-ip",
            format!("PublicIP {ip} cannot be a next hop (unspecified, loopback, multicast, broadcast or inside the pod network)"),
        ));
    }
    if lease.attrs.backend_type != b.backend_type {
        return Err(Skip::new(
            "backend-type",
            format!(
                "uses backend {:?}, this node {:?}",
                lease.attrs.backend_type, b.backend_type
            ),
        ));
    }
    Ok(true)
}

fn overlaps(a: Ipv4Net, b: Ipv4Net) -> bool {
    a.contains(&b.network()) || b.contains(&a.network())
}

/// Counts skips by reason, with the store's malformed keys, for the gauge.
pub fn skip_counts<'a>(
    skips: impl Iterator<Item = &'a Skip>,
    snapshot: &LeaseSnapshot,
) -> BTreeMap<&'static str, i64> {
    let mut counts = BTreeMap::new();
    for s in skips {
        *counts.entry(s.reason).or_insert(0) += 1;
    }
    if !snapshot.malformed.is_empty() {
        counts.insert("malformed", snapshot.malformed.len() as i64);
    }
    counts
}

/// Whether the snapshot can be trusted to list every lease: it must hold
/// our own lease (just acquired). An empty or partial snapshot published
/// before the first listing must never prune the kernel.
pub fn authoritative(snapshot: &LeaseSnapshot, own: &Lease) -> bool {
    snapshot
        .get(&own.subnet)
        .is_some_and(|l| l.attrs.public_ip == own.attrs.public_ip)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lease::test_lease;

    fn bounds() -> Bounds {
        Bounds {
            network: "10.93.0.0/16".parse().unwrap(),
            subnet_len: 24,
            own: test_lease("10.93.1.0/24", "192.168.217.10", "vxlan"),
            backend_type: "vxlan",
            connected: vec![
                "192.168.217.0/24".parse().unwrap(),
                "10.93.200.0/24".parse().unwrap(),
            ],
        }
    }

    #[test]
    fn only_aligned_subnets_strictly_inside_with_usable_ips_pass() {
        let b = bounds();
        let cases = [
            ("10.93.2.0/24", "192.168.217.11", "vxlan", Ok(true)),
            ("10.93.1.0/24", "192.168.217.10", "vxlan", Ok(false)),
            (
                "192.168.217.0/24",
                "192.168.217.11",
                "vxlan",
                Err("outside-network"),
            ),
            (
                "192.168.217.0/25",
                "192.168.217.11",
                "vxlan",
                Err("outside-network"),
            ),
            (
                "10.93.0.0/16",
                "192.168.217.11",
                "vxlan",
                Err("outside-network"),
            ),
            (
                "0.0.0.0/0",
                "192.168.217.11",
                "vxlan",
                Err("outside-network"),
            ),
            ("10.93.2.0/25", "192.168.217.11", "vxlan", Err("misaligned")),
            ("10.93.1.0/23", "192.168.217.11", "vxlan", Err("misaligned")),
            (
                "10.93.200.0/24",
                "192.168.217.11",
                "vxlan",
                Err("connected-network"),
            ),
            ("10.93.3.0/24", "0.0.0.0", "vxlan", Err("public-ip")),
            ("10.93.3.0/24", "127.0.0.1", "vxlan", Err("public-ip")),
            ("10.93.3.0/24", "224.0.0.1", "vxlan", Err("public-ip")),
            ("10.93.3.0/24", "10.93.9.9", "vxlan", Err("public-ip")),
            (
                "10.93.3.0/24",
                "192.168.217.12",
                "host-gw",
                Err("backend-type"),
            ),
        ];
        for (sn, ip, kind, want) in cases {
            let got = check(&test_lease(sn, ip, kind), &b).map_err(|s| s.reason);
            assert_eq!(got, want, "{sn} {ip} {kind}");
        }
        // Host bits set: 10.93.2.5/24 is not the subnet 10.93.2.0/24.
        let mut l = test_lease("10.93.2.0/24", "192.168.217.11", "vxlan");
        l.subnet = Ipv4Net::new("10.93.2.5".parse().unwrap(), 24).unwrap();
        assert_eq!(check(&l, &b).map_err(|s| s.reason), Err("misaligned"));
    }

    #[test]
    fn authority_needs_our_own_lease() {
        let own = test_lease("10.93.1.0/24", "192.168.217.10", "vxlan");
        let snap: LeaseSnapshot = [own.clone()].into_iter().collect();
        assert!(authoritative(&snap, &own));
        assert!(!authoritative(&LeaseSnapshot::new(), &own));
        let other = test_lease("10.93.1.0/24", "192.168.217.99", "vxlan");
        let snap: LeaseSnapshot = [other].into_iter().collect();
        assert!(!authoritative(&snap, &own));
    }
}
