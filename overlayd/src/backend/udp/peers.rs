//! The peer table: leased subnet -> the public IPv4 of the node holding
//! it, plus the set of those IPs (who may send to us).
//!
//! Every subnet has the Network's SubnetLen, so a lookup masks the
//! destination and probes a hash map: O(1), unlike flannel's linear list.
//! The table is immutable once built; `set_peers` publishes a new one and
//! bumps a generation counter. Workers compare the generation once per
//! batch (one atomic load) and take the lock only when it changed, so the
//! hot path never locks.

use ipnet::Ipv4Net;
use std::collections::{HashMap, HashSet};
use std::hash::{BuildHasherDefault, Hasher};
use std::net::Ipv4Addr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

/// Multiplicative hash for u32 keys: the map is probed per packet, and
/// the keys (our own cluster's subnets) are not attacker-chosen.
#[derive(Default)]
pub struct U32Hasher(u64);

impl Hasher for U32Hasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 = (self.0 ^ u64::from(*b)).wrapping_mul(0x100_0000_01b3);
        }
    }
    fn write_u32(&mut self, v: u32) {
        self.0 = (u64::from(v) ^ self.0).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    }
}

type FastMap<K, V> = HashMap<K, V, BuildHasherDefault<U32Hasher>>;
type FastSet<K> = HashSet<K, BuildHasherDefault<U32Hasher>>;

/// A lease the table refused, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerRejected {
    pub subnet: Ipv4Net,
    pub reason: &'static str,
}

/// Where the engine's addresses live: the Network, our subnet, SubnetLen.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Topology {
    pub network: Ipv4Net,
    pub own_subnet: Ipv4Net,
    pub subnet_len: u8,
}

impl Topology {
    pub fn subnet_mask(&self) -> u32 {
        mask(self.subnet_len)
    }
    /// (network address, mask) of our own subnet, as u32s.
    pub fn own(&self) -> (u32, u32) {
        (
            u32::from(self.own_subnet.network()),
            mask(self.own_subnet.prefix_len()),
        )
    }
    pub fn net(&self) -> (u32, u32) {
        (
            u32::from(self.network.network()),
            mask(self.network.prefix_len()),
        )
    }
}

fn mask(len: u8) -> u32 {
    u32::MAX.checked_shl(32 - u32::from(len)).unwrap_or(0)
}

/// An immutable snapshot of the peers.
#[derive(Debug, Default)]
pub struct PeerTable {
    subnet_mask: u32,
    routes: FastMap<u32, u32>,
    senders: FastSet<u32>,
}

impl PeerTable {
    /// Builds the table; leases that cannot be routed (wrong length, not
    /// in the Network, our own subnet) are left out and reported.
    pub fn build(
        topo: &Topology,
        peers: impl IntoIterator<Item = (Ipv4Net, Ipv4Addr)>,
    ) -> (PeerTable, Vec<PeerRejected>) {
        let mut table = PeerTable {
            subnet_mask: topo.subnet_mask(),
            ..PeerTable::default()
        };
        let mut rejected = Vec::new();
        for (subnet, ip) in peers {
            let reason = if subnet.prefix_len() != topo.subnet_len {
                Some("prefix length is not the Network's SubnetLen")
            } else if !topo.network.contains(&subnet) {
                Some("not inside the Network")
            } else if subnet.trunc() == topo.own_subnet.trunc() {
                Some("our own subnet")
            } else {
                None
            };
            match reason {
                Some(reason) => rejected.push(PeerRejected { subnet, reason }),
                None => {
                    table
                        .routes
                        .insert(u32::from(subnet.network()), u32::from(ip));
                    table.senders.insert(u32::from(ip));
                }
            }
        }
        (table, rejected)
    }

    /// The public IP leasing the subnet that holds `dst`.
    pub fn route(&self, dst: u32) -> Option<u32> {
        self.routes.get(&(dst & self.subnet_mask)).copied()
    }

    /// Whether `ip` is some peer's public IP.
    pub fn is_peer(&self, ip: u32) -> bool {
        self.senders.contains(&ip)
    }

    pub fn len(&self) -> usize {
        self.routes.len()
    }

    #[cfg(test)]
    pub fn is_empty(&self) -> bool {
        self.routes.is_empty()
    }
}

/// Where `set_peers` publishes tables.
#[derive(Debug, Default)]
pub struct PeerCell {
    generation: AtomicU64,
    current: Mutex<Arc<PeerTable>>,
}

impl PeerCell {
    pub fn publish(&self, table: PeerTable) {
        let mut cur = match self.current.lock() {
            Ok(g) => g,
            // A worker cannot panic while holding this lock (it only
            // clones an Arc), so poison carries no broken state.
            Err(poisoned) => poisoned.into_inner(),
        };
        *cur = Arc::new(table);
        self.generation.fetch_add(1, Ordering::Release);
    }

    fn load(&self) -> (u64, Arc<PeerTable>) {
        let cur = match self.current.lock() {
            Ok(g) => g,
            Err(poisoned) => poisoned.into_inner(),
        };
        (self.generation.load(Ordering::Acquire), cur.clone())
    }
}

/// A worker's view of the cell: refreshed once per batch.
pub struct PeerView {
    cell: Arc<PeerCell>,
    generation: u64,
    table: Arc<PeerTable>,
}

impl PeerView {
    pub fn new(cell: Arc<PeerCell>) -> Self {
        let (generation, table) = cell.load();
        PeerView {
            cell,
            generation,
            table,
        }
    }

    /// The current table; takes the lock only after a publish.
    pub fn get(&mut self) -> &PeerTable {
        if self.cell.generation.load(Ordering::Acquire) != self.generation {
            let (generation, table) = self.cell.load();
            self.generation = generation;
            self.table = table;
        }
        &self.table
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn topo() -> Topology {
        Topology {
            network: "10.244.0.0/16".parse().unwrap(),
            own_subnet: "10.244.1.0/24".parse().unwrap(),
            subnet_len: 24,
        }
    }

    #[test]
    fn lookup_masks_and_rejects_what_cannot_route() {
        let peers = [
            ("10.244.2.0/24", "192.168.9.2"),
            ("10.244.3.0/24", "192.168.9.3"),
            ("10.244.4.0/25", "192.168.9.4"),
            ("10.9.0.0/24", "192.168.9.5"),
            ("10.244.1.0/24", "192.168.9.1"),
        ]
        .map(|(s, ip)| (s.parse().unwrap(), ip.parse().unwrap()));
        let (t, rejected) = PeerTable::build(&topo(), peers);
        assert_eq!(t.len(), 2);
        let ip = |s: &str| u32::from(s.parse::<Ipv4Addr>().unwrap());
        assert_eq!(t.route(ip("10.244.2.77")), Some(ip("192.168.9.2")));
        assert_eq!(t.route(ip("10.244.3.255")), Some(ip("192.168.9.3")));
        assert_eq!(t.route(ip("10.244.4.1")), None);
        assert_eq!(t.route(ip("10.244.1.5")), None);
        assert!(t.is_peer(ip("192.168.9.3")));
        assert!(!t.is_peer(ip("192.168.9.4")));
        let reasons: Vec<_> = rejected.iter().map(|r| r.subnet.to_string()).collect();
        assert_eq!(reasons, ["10.244.4.0/25", "10.9.0.0/24", "10.244.1.0/24"]);
    }

    #[test]
    fn view_follows_publish() {
        let cell = Arc::new(PeerCell::default());
        let mut view = PeerView::new(cell.clone());
        assert!(view.get().is_empty());
        let peer = ("10.244.2.0/24".parse().unwrap(), Ipv4Addr::new(1, 2, 3, 4));
        cell.publish(PeerTable::build(&topo(), [peer]).0);
        assert_eq!(view.get().len(), 1);
        cell.publish(PeerTable::build(&topo(), []).0);
        assert!(view.get().is_empty());
    }
}
