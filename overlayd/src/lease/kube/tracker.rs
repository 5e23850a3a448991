//! Watch events -> lease snapshots. The tracker keeps one small view per
//! flannel-managed Node (never the Node itself) and says when a new
//! snapshot is due: after a (re)listing completes, and when a Node's
//! derived lease changed. Kubelet heartbeats and other Node writes that
//! leave the lease as it was publish nothing.

use super::node::NodeView;
use crate::lease::LeaseSnapshot;
use std::collections::btree_map::Entry;
use std::collections::BTreeMap;

#[derive(Debug, Default)]
pub struct Tracker {
    /// Managed Nodes by name; `Ignored` ones are not kept.
    nodes: BTreeMap<String, NodeView>,
    /// A listing in progress (Init .. InitDone): built aside and swapped
    /// in whole, so the published set stays as it was until the listing
    /// is complete (no routes dropped while relisting), and Nodes that
    /// vanished while the watch was lost disappear with the swap.
    pending: Option<BTreeMap<String, NodeView>>,
    listings: u64,
    /// A change not published yet.
    dirty: bool,
}

impl Tracker {
    pub fn new() -> Self {
        Self::default()
    }

    /// How many listings completed (the snapshot's `listing`).
    pub fn listings(&self) -> u64 {
        self.listings
    }

    /// A listing starts.
    pub fn init(&mut self) {
        self.pending = Some(BTreeMap::new());
    }

    /// A listed Node (between `init` and `init_done`).
    pub fn init_apply(&mut self, name: String, view: NodeView) {
        let pending = self.pending.get_or_insert_with(BTreeMap::new);
        if view != NodeView::Ignored {
            pending.insert(name, view);
        }
    }

    /// The listing is complete: it replaces the known set, and a snapshot
    /// is due even if nothing changed (`listing` moves on, so consumers
    /// run a full pass).
    pub fn init_done(&mut self) {
        self.nodes = self.pending.take().unwrap_or_default();
        self.listings += 1;
        self.dirty = true;
    }

    /// A Node added or modified on the watch.
    pub fn apply(&mut self, name: String, view: NodeView) {
        match (self.nodes.entry(name), view) {
            (Entry::Vacant(_), NodeView::Ignored) => {}
            (Entry::Occupied(e), NodeView::Ignored) => {
                e.remove();
                self.dirty = true;
            }
            (Entry::Occupied(mut e), v) => {
                if *e.get() != v {
                    e.insert(v);
                    self.dirty = true;
                }
            }
            (Entry::Vacant(e), v) => {
                e.insert(v);
                self.dirty = true;
            }
        }
    }

    /// A Node deleted on the watch.
    pub fn delete(&mut self, name: &str) {
        if self.nodes.remove(name).is_some() {
            self.dirty = true;
        }
    }

    /// The snapshot to publish, if one is due (at least one listing done
    /// and something changed since the last one).
    pub fn take_snapshot(&mut self) -> Option<LeaseSnapshot> {
        if !self.dirty || self.listings == 0 {
            return None;
        }
        self.dirty = false;
        Some(self.snapshot())
    }

    /// Every lease, keyed by subnet. Two Nodes claiming one subnet (the
    /// API allows it, e.g. hand-set podCIDRs) cannot both be routed: the
    /// first by name keeps it and the other is reported as malformed.
    pub fn snapshot(&self) -> LeaseSnapshot {
        let mut snap = LeaseSnapshot::new();
        for (name, view) in &self.nodes {
            match view {
                NodeView::Ignored => {}
                NodeView::Malformed(why) => {
                    snap.malformed.insert(name.clone(), why.clone());
                }
                NodeView::Lease(l) if snap.contains_key(&l.subnet) => {
                    let why = format!(
                        "pod CIDR {} is also claimed by node {}",
                        l.subnet,
                        self.first_claim(l.subnet)
                    );
                    snap.malformed.insert(name.clone(), why);
                }
                NodeView::Lease(l) => snap.insert_shared(l.clone()),
            }
        }
        snap.listing = self.listings;
        snap
    }

    /// Whether a change waits to be published.
    pub fn is_dirty(&self) -> bool {
        self.dirty && self.listings > 0
    }

    /// The first Node (by name) whose lease has `subnet`; only asked on
    /// a collision, which is rare.
    fn first_claim(&self, subnet: ipnet::Ipv4Net) -> &str {
        self.nodes
            .iter()
            .find(|(_, v)| matches!(v, NodeView::Lease(l) if l.subnet == subnet))
            .map_or("?", |(n, _)| n.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lease::{test_lease, Lease, Term};
    use std::sync::Arc;

    fn lease(subnet: &str, ip: &str) -> NodeView {
        NodeView::Lease(Arc::new(Lease {
            term: Term::Expiring(None),
            ..test_lease(subnet, ip, "vxlan")
        }))
    }

    fn listed(t: &mut Tracker, nodes: &[(&str, NodeView)]) {
        t.init();
        for (n, v) in nodes {
            t.init_apply(n.to_string(), v.clone());
        }
        t.init_done();
    }

    #[test]
    fn nothing_before_the_first_listing_then_a_full_snapshot() {
        let mut t = Tracker::new();
        t.init();
        t.init_apply("a".into(), lease("10.5.1.0/24", "10.0.0.1"));
        assert!(t.take_snapshot().is_none());
        t.init_done();
        let s = t.take_snapshot().unwrap();
        assert_eq!((s.len(), s.listing), (1, 1));
        assert!(t.take_snapshot().is_none(), "nothing changed since");
    }

    #[test]
    fn unchanged_leases_publish_nothing_and_share_their_arc() {
        let mut t = Tracker::new();
        listed(&mut t, &[("a", lease("10.5.1.0/24", "10.0.0.1"))]);
        let first = t.take_snapshot().unwrap();
        t.apply("a".into(), lease("10.5.1.0/24", "10.0.0.1"));
        t.apply("x".into(), NodeView::Ignored);
        t.delete("x");
        assert!(t.take_snapshot().is_none());
        t.apply("b".into(), lease("10.5.2.0/24", "10.0.0.2"));
        let second = t.take_snapshot().unwrap();
        assert_eq!(
            first.changed_since(&second),
            vec!["10.5.2.0/24".parse().unwrap()]
        );
    }

    #[test]
    fn changes_unannotation_and_deletes() {
        let mut t = Tracker::new();
        listed(
            &mut t,
            &[
                ("a", lease("10.5.1.0/24", "10.0.0.1")),
                ("b", lease("10.5.2.0/24", "10.0.0.2")),
            ],
        );
        t.take_snapshot();
        t.apply("a".into(), lease("10.5.1.0/24", "10.0.0.9"));
        let s = t.take_snapshot().unwrap();
        let a = s.get(&"10.5.1.0/24".parse().unwrap()).unwrap();
        assert_eq!(a.attrs.public_ip.to_string(), "10.0.0.9");
        t.apply("a".into(), NodeView::Ignored);
        t.delete("b");
        let s = t.take_snapshot().unwrap();
        assert!(s.is_empty());
        assert_eq!(s.listing, 1);
    }

    #[test]
    fn relist_keeps_the_old_set_until_done_and_drops_vanished_nodes() {
        let mut t = Tracker::new();
        listed(
            &mut t,
            &[
                ("a", lease("10.5.1.0/24", "10.0.0.1")),
                ("gone", lease("10.5.2.0/24", "10.0.0.2")),
            ],
        );
        t.take_snapshot();
        t.init();
        t.init_apply("a".into(), lease("10.5.1.0/24", "10.0.0.1"));
        assert!(
            t.take_snapshot().is_none(),
            "no partial listing is published"
        );
        assert_eq!(t.snapshot().len(), 2);
        t.init_done();
        let s = t.take_snapshot().unwrap();
        assert_eq!((s.len(), s.listing), (1, 2));
    }

    #[test]
    fn malformed_nodes_and_subnet_collisions_are_reported() {
        let mut t = Tracker::new();
        listed(
            &mut t,
            &[
                ("a", lease("10.5.1.0/24", "10.0.0.1")),
                ("b", lease("10.5.1.0/24", "10.0.0.2")),
                ("c", NodeView::Malformed("bad public-ip".into())),
            ],
        );
        let s = t.take_snapshot().unwrap();
        assert_eq!(s.len(), 1);
        let kept = s.get(&"10.5.1.0/24".parse().unwrap()).unwrap();
        assert_eq!(kept.attrs.public_ip.to_string(), "10.0.0.1");
        assert!(s.malformed["b"].contains("claimed by node a"));
        assert_eq!(s.malformed["c"], "bad public-ip");
    }
}
