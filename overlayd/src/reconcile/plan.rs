//! The pure diff: desired vs actual -> the operations that converge them.
//!
//! Neighbour and FDB "set" operations are create-or-replace in the
//! kernel, and a route felt already holds in a slot is replaced in place,
//! so an object that exists with other attributes is fixed without a
//! delete and an add (no window without a route). A route slot held by a route felt
//! does not own is never written: that is reported instead. Objects no
//! lease wants are deleted only when `prune` is set (the lease snapshot is
//! authoritative).

use crate::spec::{Actual, Desired, FdbSpec, NeighSpec, Op, RouteSpec};

/// Computes the operations, ordered so traffic never meets a half-built
/// peer: stale routes go first (nothing is routed to a neighbour about to
/// vanish), then neighbours and FDB entries, and routes are set last (the
/// kernel would otherwise ARP for the gateway before its entry exists).
/// Also returns the wanted routes that cannot be installed, and why.
pub fn plan(desired: &Desired, actual: &Actual, prune: bool) -> (Vec<Op>, Vec<String>) {
    let mut ops = Vec::new();
    let stale: Vec<RouteSpec> = stale_routes(desired, actual).collect();
    if prune {
        ops.extend(stale.iter().cloned().map(Op::DelRoute));
        ops.extend(stale_neighbours(desired, actual).map(Op::DelNeigh));
    }
    ops.extend(missing(&desired.neighbours, &actual.neighbours).map(Op::SetNeigh));
    if prune {
        ops.extend(stale_fdb(desired, actual).map(Op::DelFdb));
    }
    ops.extend(missing(&desired.fdb, &actual.fdb).map(Op::SetFdb));
    let mut problems = Vec::new();
    for r in missing(&desired.routes, &actual.routes) {
        if let Some(what) = actual.foreign.get(&r.slot()) {
            problems.push(format!(
                "route to {} not installed: its slot holds a {what} that felt does not own",
                r.dst
            ));
            continue;
        }
        // The sole route of ours in the slot survives pruning (see
        // stale_routes) and is replaced in place; otherwise the slot is
        // empty (or emptied by the deletes above) and the route is created.
        let ours_in_slot = actual.routes.iter().any(|a| a.slot() == r.slot())
            && !(prune && stale.iter().any(|s| s.slot() == r.slot()));
        ops.push(if ours_in_slot {
            Op::SetRoute(r)
        } else {
            Op::AddRoute(r)
        });
    }
    (ops, problems)
}

fn missing<'a, T: Ord + Clone>(
    want: &'a std::collections::BTreeSet<T>,
    have: &'a std::collections::BTreeSet<T>,
) -> impl Iterator<Item = T> + 'a {
    want.difference(have).cloned()
}

/// Actual routes no lease wants, except one that the replace of a wanted
/// route overwrites in place: the kernel replaces the first route with the
/// same destination and metric, so only a sole such route is covered.
fn stale_routes<'a>(
    desired: &'a Desired,
    actual: &'a Actual,
) -> impl Iterator<Item = RouteSpec> + 'a {
    actual
        .routes
        .difference(&desired.routes)
        .filter(move |a| {
            let wanted = desired.routes.iter().any(|d| d.slot() == a.slot());
            let same_slot = actual
                .routes
                .iter()
                .filter(|o| o.slot() == a.slot())
                .count();
            !(wanted && same_slot == 1)
        })
        .cloned()
}

/// Neighbours are keyed by (device, IP): a wanted one with another MAC is
/// replaced in place.
fn stale_neighbours<'a>(
    desired: &'a Desired,
    actual: &'a Actual,
) -> impl Iterator<Item = NeighSpec> + 'a {
    actual
        .neighbours
        .difference(&desired.neighbours)
        .filter(move |a| {
            !desired
                .neighbours
                .iter()
                .any(|d| d.ifindex == a.ifindex && d.ip == a.ip)
        })
        .cloned()
}

/// FDB entries are (device, MAC, remote); a replace rewrites the MAC's
/// first remote, so a sole entry for a wanted MAC is fixed in place.
fn stale_fdb<'a>(desired: &'a Desired, actual: &'a Actual) -> impl Iterator<Item = FdbSpec> + 'a {
    actual
        .fdb
        .difference(&desired.fdb)
        .filter(move |a| {
            let wanted = desired
                .fdb
                .iter()
                .any(|d| d.ifindex == a.ifindex && d.mac == a.mac);
            let remotes = actual
                .fdb
                .iter()
                .filter(|o| o.ifindex == a.ifindex && o.mac == a.mac)
                .count();
            !(wanted && remotes == 1)
        })
        .cloned()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv4Addr;

    const DEV: u32 = 7;
    const EXT: u32 = 2;
    const MAC_B: [u8; 6] = [0x0a, 0, 0, 0, 0, 2];
    const MAC_C: [u8; 6] = [0x0a, 0, 0, 0, 0, 3];

    fn ip(s: &str) -> Ipv4Addr {
        s.parse().unwrap()
    }

    fn route(dst: &str, gw: &str, oif: u32) -> RouteSpec {
        RouteSpec {
            dst: dst.parse().unwrap(),
            gateway: Some(ip(gw)),
            oif,
            onlink: oif == DEV,
            metric: 0,
        }
    }

    fn neigh(addr: &str, mac: [u8; 6]) -> NeighSpec {
        NeighSpec {
            ifindex: DEV,
            ip: ip(addr),
            mac,
        }
    }

    fn fdb(mac: [u8; 6], dst: &str) -> FdbSpec {
        FdbSpec {
            ifindex: DEV,
            mac,
            dst: ip(dst),
        }
    }

    /// Peer B (10.244.2.0/24 at 192.168.1.2) through vxlan.
    fn peer_b() -> (RouteSpec, NeighSpec, FdbSpec) {
        (
            route("10.244.2.0/24", "10.244.2.0", DEV),
            neigh("10.244.2.0", MAC_B),
            fdb(MAC_B, "192.168.1.2"),
        )
    }

    fn state(r: Vec<RouteSpec>, n: Vec<NeighSpec>, f: Vec<FdbSpec>) -> (Desired, Actual) {
        let d = Desired {
            routes: r.into_iter().collect(),
            neighbours: n.into_iter().collect(),
            fdb: f.into_iter().collect(),
            problems: vec![],
        };
        let a = Actual {
            routes: d.routes.clone(),
            neighbours: d.neighbours.clone(),
            fdb: d.fdb.clone(),
            ..Actual::default()
        };
        (d, a)
    }

    #[test]
    fn table() {
        let (r, n, f) = peer_b();
        let stale_r = route("10.244.9.0/24", "10.244.9.0", DEV);
        let stale_n = neigh("10.244.9.0", MAC_C);
        let stale_f = fdb(MAC_C, "192.168.1.9");
        let empty = Desired::default();
        let nothing = Actual::default();
        let (want_b, have_b) = state(vec![r.clone()], vec![n.clone()], vec![f.clone()]);
        let (_, have_stale) = state(
            vec![stale_r.clone()],
            vec![stale_n.clone()],
            vec![stale_f.clone()],
        );

        // (name, desired, actual, prune, expected ops in order)
        let cases: Vec<(&str, &Desired, &Actual, bool, Vec<Op>)> = vec![
            ("nothing to do", &empty, &nothing, true, vec![]),
            (
                "new peer: neighbour, fdb, then route",
                &want_b,
                &nothing,
                true,
                vec![
                    Op::SetNeigh(n.clone()),
                    Op::SetFdb(f.clone()),
                    Op::AddRoute(r.clone()),
                ],
            ),
            ("already right: untouched", &want_b, &have_b, true, vec![]),
            (
                "gone peer: route first, then neighbour and fdb",
                &empty,
                &have_stale,
                true,
                vec![
                    Op::DelRoute(stale_r.clone()),
                    Op::DelNeigh(stale_n.clone()),
                    Op::DelFdb(stale_f.clone()),
                ],
            ),
            (
                "not authoritative: nothing deleted",
                &empty,
                &have_stale,
                false,
                vec![],
            ),
        ];
        for (name, d, a, prune, expected) in cases {
            assert_eq!(plan(d, a, prune).0, expected, "case: {name}");
        }
    }

    #[test]
    fn differing_objects_are_replaced_in_place() {
        let (r, n, f) = peer_b();
        let (want, _) = state(vec![r.clone()], vec![n.clone()], vec![f.clone()]);
        // Same destination via the external interface (DirectRouting was on),
        // old MAC on the neighbour, old public IP in the FDB entry.
        let (_, have) = state(
            vec![route("10.244.2.0/24", "192.168.1.2", EXT)],
            vec![neigh("10.244.2.0", MAC_C)],
            vec![fdb(MAC_B, "192.168.1.99")],
        );
        let ops = plan(&want, &have, true).0;
        assert_eq!(ops, vec![Op::SetNeigh(n), Op::SetFdb(f), Op::SetRoute(r)]);
    }

    #[test]
    fn other_metric_is_not_overwritten_so_it_is_deleted() {
        let (r, _, _) = peer_b();
        let mut other = r.clone();
        other.metric = 100;
        let (want, _) = state(vec![r.clone()], vec![], vec![]);
        let (_, have) = state(vec![other.clone()], vec![], vec![]);
        assert_eq!(
            plan(&want, &have, true).0,
            vec![Op::DelRoute(other), Op::AddRoute(r)]
        );
    }

    #[test]
    fn duplicate_routes_for_one_slot_are_reduced_to_the_wanted_one() {
        let (r, _, _) = peer_b();
        let dup = route("10.244.2.0/24", "192.168.1.2", EXT);
        let (want, _) = state(vec![r.clone()], vec![], vec![]);
        let (_, have) = state(vec![r.clone(), dup.clone()], vec![], vec![]);
        assert_eq!(plan(&want, &have, true).0, vec![Op::DelRoute(dup)]);
    }

    #[test]
    fn extra_fdb_remotes_for_a_wanted_mac_are_deleted() {
        let (_, _, f) = peer_b();
        let extra = fdb(MAC_B, "192.168.1.50");
        let (want, _) = state(vec![], vec![], vec![f.clone()]);
        let (_, have) = state(vec![], vec![], vec![f.clone(), extra.clone()]);
        assert_eq!(plan(&want, &have, true).0, vec![Op::DelFdb(extra)]);
        // Two wrong remotes: both go, then the wanted one is set.
        let wrong = fdb(MAC_B, "192.168.1.51");
        let (_, have) = state(
            vec![],
            vec![],
            vec![wrong.clone(), fdb(MAC_B, "192.168.1.50")],
        );
        let ops = plan(&want, &have, true).0;
        assert_eq!(ops.len(), 3);
        assert_eq!(ops.last(), Some(&Op::SetFdb(f)));
    }

    #[test]
    fn not_authoritative_still_fixes_in_place() {
        let (r, n, f) = peer_b();
        let (want, _) = state(vec![r.clone()], vec![n.clone()], vec![f.clone()]);
        let (_, have) = state(
            vec![route("10.244.2.0/24", "192.168.1.2", EXT)],
            vec![neigh("10.244.2.0", MAC_C)],
            vec![],
        );
        assert_eq!(
            plan(&want, &have, false).0,
            vec![Op::SetNeigh(n), Op::SetFdb(f), Op::SetRoute(r)]
        );
    }

    #[test]
    fn a_slot_held_by_a_foreign_route_is_never_written() {
        let (r, _, _) = peer_b();
        let (want, _) = state(vec![r.clone()], vec![], vec![]);
        let mut have = Actual::default();
        have.foreign.insert(
            r.slot(),
            "Unicast route 10.244.2.0/24 dev #2 proto Kernel".into(),
        );
        let (ops, problems) = plan(&want, &have, true);
        assert!(ops.is_empty(), "{ops:?}");
        assert_eq!(problems.len(), 1);
        assert!(problems[0].contains("felt does not own"), "{problems:?}");
    }
}
