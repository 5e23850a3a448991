//! Which leases are peers this backend serves (pure).

use crate::lease::{Lease, LeaseSnapshot};
use std::time::SystemTime;

/// The peers out of a full snapshot: our own lease left out, expired
/// leases ignored, leases of another backend type ignored with a problem
/// (their data is meaningless to us, and flannel ignores them too).
pub fn select_peers<'a>(
    snapshot: &'a LeaseSnapshot,
    own: &Lease,
    backend_type: &str,
    now: SystemTime,
) -> (Vec<&'a Lease>, Vec<String>) {
    let mut peers = Vec::new();
    let mut problems = Vec::new();
    for lease in snapshot.values() {
        if lease.subnet == own.subnet {
            continue;
        }
        if lease.expiration.is_some_and(|t| t <= now) {
            continue;
        }
        if lease.attrs.backend_type != backend_type {
            problems.push(format!(
                "peer {} ({}) uses backend {:?}, this node {backend_type:?}; not routed",
                lease.subnet, lease.attrs.public_ip, lease.attrs.backend_type
            ));
            continue;
        }
        peers.push(lease);
    }
    (peers, problems)
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
    use std::time::Duration;

    fn lease(subnet: &str, ip: &str, kind: &str, expiration: Option<SystemTime>) -> Lease {
        Lease {
            expiration,
            ..test_lease(subnet, ip, kind)
        }
    }

    #[test]
    fn selection_table() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        let own = lease(
            "10.244.1.0/24",
            "192.168.1.1",
            "vxlan",
            Some(now + Duration::from_secs(60)),
        );
        let live = lease(
            "10.244.2.0/24",
            "192.168.1.2",
            "vxlan",
            Some(now + Duration::from_secs(60)),
        );
        let reserved = lease("10.244.3.0/24", "192.168.1.3", "vxlan", None);
        let expired = lease(
            "10.244.4.0/24",
            "192.168.1.4",
            "vxlan",
            Some(now - Duration::from_secs(1)),
        );
        let hostgw = lease("10.244.5.0/24", "192.168.1.5", "host-gw", None);
        let snap: LeaseSnapshot = [&own, &live, &reserved, &expired, &hostgw]
            .into_iter()
            .map(|l| (l.subnet, l.clone()))
            .collect();
        let (peers, problems) = select_peers(&snap, &own, "vxlan", now);
        let subnets: Vec<String> = peers.iter().map(|l| l.subnet.to_string()).collect();
        assert_eq!(subnets, vec!["10.244.2.0/24", "10.244.3.0/24"]);
        assert_eq!(problems.len(), 1);
        assert!(problems[0].contains("10.244.5.0/24"));
        assert!(authoritative(&snap, &own));
        assert!(!authoritative(&LeaseSnapshot::new(), &own));
        let other_node_holds_ours = lease("10.244.1.0/24", "192.168.1.9", "vxlan", None);
        let snap: LeaseSnapshot = [(own.subnet, other_node_holds_ours)].into_iter().collect();
        assert!(!authoritative(&snap, &own));
    }
}
