//! Level-triggered reconciliation on a real kernel: add what peers need,
//! prune what no lease wants (also state left from before a restart),
//! leave alone what is not felt's, repair what is changed by hand.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod backend_util;

use backend_util::*;
use felt_common::kernel_monitor::KernelMonitor;
use overlayd::backend::vxlan::VxlanBackend;
use overlayd::backend::Backend;
use overlayd::lease::{Lease, LeaseSnapshot};
use std::sync::Arc;

#[test]
fn peers_get_neighbour_fdb_route_and_second_round_is_a_no_op() {
    let node = single_node("rcadd", "192.168.50.1/24");
    let (o, b, c) = (own(&node, "vxlan"), peer_b(), peer_c());
    let snap = snapshot(&[&o, &b, &c]);
    let reports = vxlan_rounds(&node, vec![snap.clone(), snap]);
    assert_eq!(reports[0].applied, 6, "{:?}", reports[0]);
    assert_eq!(reports[0].failed, 0);
    assert_eq!(
        reports[1].applied, 0,
        "already right must be untouched: {:?}",
        reports[1]
    );
    assert_peer_programmed(&node, "10.244.2.0", MAC_B, "192.168.50.2");
    assert_peer_programmed(&node, "10.244.3.0", MAC_C, "192.168.50.3");
    assert!(
        route_to(&node.ns, "10.244.1.0/24").is_none(),
        "no route for our own subnet"
    );
}

#[test]
fn daemon_restart_changes_nothing_in_the_kernel() {
    let node = single_node("rcrestart", "192.168.50.1/24");
    let (o, b, c) = (own(&node, "vxlan"), peer_b(), peer_c());
    let snap = snapshot(&[&o, &b, &c]);
    vxlan_rounds(&node, vec![snap.clone()]);
    let index = ifindex(&node.ns, "flannel.1");
    let log = std::env::temp_dir().join(format!("{}-monitor.log", node.ns.name));
    let monitor = KernelMonitor::start(&node.ns.name, &log);
    // A new process: new backend, new reconciler, same leases.
    let reports = vxlan_rounds(&node, vec![snap]);
    let changes: Vec<_> = monitor
        .events()
        .into_iter()
        .filter(|e| !e.is_ipv6_link_local())
        .collect();
    drop(monitor);
    let _ = std::fs::remove_file(&log);
    assert!(changes.is_empty(), "the kernel saw changes: {changes:#?}");
    assert_eq!(reports[0].applied, 0, "{:?}", reports[0]);
    assert_eq!(ifindex(&node.ns, "flannel.1"), index);
    assert_peer_programmed(&node, "10.244.2.0", MAC_B, "192.168.50.2");
}

#[test]
fn hundreds_of_peers_converge_and_the_next_round_writes_nothing() {
    let node = single_node("rcscale", "192.168.50.1/24");
    let o = own(&node, "vxlan");
    let peers: Vec<Lease> = (2..=251u32)
        .map(|i| {
            let subnet = format!("10.244.{i}.0/24");
            let ip = format!("192.168.{}.{}", 51 + i / 200, i % 200 + 2);
            lease(
                &subnet,
                &ip,
                "vxlan",
                vxlan_data(&format!("0a:00:00:00:{:02x}:{:02x}", i / 256, i % 256)),
            )
        })
        .collect();
    let mut all: Vec<&Lease> = peers.iter().collect();
    all.push(&o);
    let snap = snapshot(&all);
    let ext = node.ext.clone();
    let (reports, first, second) = block_in(&node.ns, move || async move {
        let mut rec = vxlan_reconciler(&ext, o).await;
        let t = std::time::Instant::now();
        let r1 = rec.round(&snap, true).await;
        let first = t.elapsed();
        let t = std::time::Instant::now();
        let r2 = rec.round(&snap, true).await;
        (vec![r1, r2], first, t.elapsed())
    });
    assert_eq!(reports[0].applied, 750, "{:?}", reports[0].failed);
    assert_eq!(reports[1].applied, 0);
    assert_eq!(neighbours(&node.ns, "flannel.1").len(), 250);
    assert_eq!(fdb(&node.ns, "flannel.1").len(), 250);
    eprintln!(
        "250 peers: first round {} ms (750 ops), no-op round {} ms",
        first.as_millis(),
        second.as_millis()
    );
}

#[test]
fn state_of_nodes_without_a_lease_is_removed_at_start_and_foreign_state_kept() {
    let node = single_node("rcstale", "192.168.50.1/24");
    // The device exists from a previous run, with state for a node whose
    // lease expired while the daemon was down (flannel #2554).
    let ext = node.ext.clone();
    block_in(&node.ns, move || async move {
        VxlanBackend::new(vxlan_cfg())
            .unwrap()
            .prepare(&ext)
            .await
            .unwrap();
    });
    let ns = &node.ns;
    ns.exec_ok(&["ip", "link", "set", "flannel.1", "up"]);
    ns.exec_ok(&[
        "ip",
        "neigh",
        "add",
        "10.244.9.0",
        "lladdr",
        STALE_MAC,
        "dev",
        "flannel.1",
        "nud",
        "permanent",
    ]);
    ns.exec_ok(&[
        "bridge",
        "fdb",
        "add",
        STALE_MAC,
        "dev",
        "flannel.1",
        "dst",
        "192.168.50.9",
        "self",
        "permanent",
    ]);
    ns.exec_ok(&[
        "ip",
        "route",
        "add",
        "10.244.9.0/24",
        "via",
        "10.244.9.0",
        "dev",
        "flannel.1",
        "onlink",
    ]);
    // A direct route left by a peer that vanished while DirectRouting was
    // on: felt's, though DirectRouting is off now.
    // Not felt's: our own subnet on cni0, a route outside the network, a
    // pod-network route through an unrelated interface (cni0).
    ns.exec_ok(&["ip", "link", "add", "cni0", "type", "bridge"]);
    ns.exec_ok(&["ip", "addr", "add", "10.244.1.1/24", "dev", "cni0"]);
    ns.exec_ok(&["ip", "link", "set", "cni0", "up"]);
    ns.exec_ok(&[
        "ip",
        "route",
        "add",
        "172.20.0.0/16",
        "via",
        "10.244.9.0",
        "dev",
        "flannel.1",
        "onlink",
    ]);
    ns.exec_ok(&[
        "ip",
        "route",
        "add",
        "10.244.200.0/24",
        "via",
        "192.168.50.77",
        "dev",
        "e0",
    ]);

    ns.exec_ok(&[
        "ip",
        "route",
        "add",
        "10.244.201.0/24",
        "via",
        "10.244.1.77",
        "dev",
        "cni0",
    ]);

    let (o, b) = (own(&node, "vxlan"), peer_b());
    let reports = vxlan_rounds(&node, vec![snapshot(&[&o, &b])]);
    assert!(reports[0].pruned);
    assert!(route_to(ns, "10.244.9.0/24").is_none(), "stale route kept");
    assert!(
        neighbours(ns, "flannel.1")
            .iter()
            .all(|n| n["dst"] != "10.244.9.0"),
        "stale neighbour kept"
    );
    assert!(
        fdb(ns, "flannel.1").iter().all(|f| f["mac"] != STALE_MAC),
        "stale fdb kept"
    );
    assert_peer_programmed(&node, "10.244.2.0", MAC_B, "192.168.50.2");
    assert_eq!(route_to(ns, "10.244.1.0/24").unwrap()["dev"], "cni0");
    assert!(
        route_to(ns, "172.20.0.0/16").is_some(),
        "route outside the network touched"
    );
    assert!(
        route_to(ns, "10.244.200.0/24").is_none(),
        "a direct route of a vanished peer was kept with DirectRouting off"
    );
    assert!(
        route_to(ns, "10.244.201.0/24").is_some(),
        "a pod-network route through another interface was touched"
    );
}

#[test]
fn snapshot_without_own_lease_never_prunes() {
    let node = single_node("rcauth", "192.168.50.1/24");
    let (o, b) = (own(&node, "vxlan"), peer_b());
    let full = snapshot(&[&o, &b]);
    let empty = Arc::new(LeaseSnapshot::new());
    let reports = vxlan_rounds(&node, vec![full, empty.clone()]);
    assert!(!reports[1].pruned);
    assert_eq!(reports[1].applied, 0);
    assert_peer_programmed(&node, "10.244.2.0", MAC_B, "192.168.50.2");
}

#[test]
fn changed_peer_is_fixed_in_place_and_removed_peer_pruned() {
    let node = single_node("rcchg", "192.168.50.1/24");
    let (o, b, c) = (own(&node, "vxlan"), peer_b(), peer_c());
    // Peer B rebooted with flannel: new MAC; peer C's lease is gone.
    let b2 = lease(
        "10.244.2.0/24",
        "192.168.50.22",
        "vxlan",
        vxlan_data("0a:00:00:00:00:22"),
    );
    let reports = vxlan_rounds(&node, vec![snapshot(&[&o, &b, &c]), snapshot(&[&o, &b2])]);
    assert_eq!(reports[1].failed, 0, "{:?}", reports[1]);
    assert_peer_programmed(&node, "10.244.2.0", "0a:00:00:00:00:22", "192.168.50.22");
    assert!(route_to(&node.ns, "10.244.3.0/24").is_none());
    assert_eq!(neighbours(&node.ns, "flannel.1").len(), 1);
    assert_eq!(
        fdb(&node.ns, "flannel.1").len(),
        1,
        "{:?}",
        fdb(&node.ns, "flannel.1")
    );
}

#[test]
fn other_backend_types_are_reported_not_routed() {
    let node = single_node("rctype", "192.168.50.1/24");
    let o = own(&node, "vxlan");
    let hg = lease(
        "10.244.4.0/24",
        "192.168.50.4",
        "host-gw",
        serde_json::Value::Null,
    );
    let reports = vxlan_rounds(&node, vec![snapshot(&[&o, &hg])]);
    assert_eq!(reports[0].problems.len(), 1, "{:?}", reports[0].problems);
    assert!(route_to(&node.ns, "10.244.4.0/24").is_none());
}

#[test]
fn direct_routing_uses_the_underlay_for_connected_peers() {
    let node = single_node("rcdr", "192.168.50.1/24");
    let ext = node.ext.clone();
    let o = own(&node, "vxlan");
    let (near, far) = (
        peer_b(),
        lease("10.244.3.0/24", "172.16.0.3", "vxlan", vxlan_data(MAC_C)),
    );
    let snap = snapshot(&[&o, &near, &far]);
    let report = block_in(&node.ns, move || async move {
        let mut cfg = vxlan_cfg();
        cfg.direct_routing = true;
        let mut b = VxlanBackend::new(cfg).unwrap();
        b.prepare(&ext).await.unwrap();
        b.configure_own(&o).await.unwrap();
        let backend: Arc<dyn Backend> = Arc::from(Box::new(b) as Box<dyn Backend>);
        let mut rec = reconciler(backend, o, NETWORK.parse().unwrap());
        rec.round(&snap, true).await
    });
    assert_eq!(report.failed, 0, "{report:?}");
    let r = route_to(&node.ns, "10.244.2.0/24").unwrap();
    assert_eq!(
        (r["gateway"].as_str(), r["dev"].as_str()),
        (Some("192.168.50.2"), Some("e0"))
    );
    let r = route_to(&node.ns, "10.244.3.0/24").unwrap();
    assert_eq!(r["dev"], "flannel.1");
    assert_eq!(neighbours(&node.ns, "flannel.1").len(), 1);
}

/// The snapshot after `first` in the same watch: leases it shares with
/// `first` keep their identity, as a store's consecutive snapshots do.
fn next(first: &Arc<LeaseSnapshot>, change: impl FnOnce(&mut LeaseSnapshot)) -> Arc<LeaseSnapshot> {
    let mut s = (**first).clone();
    change(&mut s);
    Arc::new(s)
}

#[test]
fn incremental_passes_write_only_what_changed_and_leave_nothing_for_a_full_pass() {
    let node = single_node("rcinc", "192.168.50.1/24");
    let (o, b, c) = (own(&node, "vxlan"), peer_b(), peer_c());
    let first = snapshot(&[&o, &b]);
    let same = next(&first, |_| {});
    let add_c = next(&same, |s| s.insert(c.clone()));
    let moved_b = next(&add_c, |s| {
        s.insert(lease(
            "10.244.2.0/24",
            "192.168.50.22",
            "vxlan",
            vxlan_data("0a:00:00:00:00:22"),
        ))
    });
    let gone_c = next(&moved_b, |s| {
        s.remove(&c.subnet);
    });
    let (reports, check) = vxlan_incremental(&node, first, vec![same, add_c, moved_b, gone_c]);
    let applied: Vec<usize> = reports.iter().map(|r| r.applied).collect();
    // nothing; C's neighbour, FDB, route; B's neighbour replaced in place
    // with the new MAC, the old MAC's FDB entry gone and the new one set
    // (its route is unchanged); C's three gone.
    assert_eq!(applied, vec![0, 3, 3, 3], "{reports:?}");
    assert!(reports.iter().all(|r| r.failed == 0), "{reports:?}");
    assert_eq!(check.applied, 0, "a full pass found work left: {check:?}");
    assert_peer_programmed(&node, "10.244.2.0", "0a:00:00:00:00:22", "192.168.50.22");
    assert!(route_to(&node.ns, "10.244.3.0/24").is_none());
    assert_eq!(neighbours(&node.ns, "flannel.1").len(), 1);
    assert_eq!(fdb(&node.ns, "flannel.1").len(), 1);
}

#[test]
fn incremental_pass_refuses_a_newcomer_claiming_a_held_vtep_mac() {
    let node = single_node("rcmac", "192.168.50.1/24");
    let (o, b) = (own(&node, "vxlan"), peer_b());
    let first = snapshot(&[&o, &b]);
    // Same MAC as B, another address: would steal B's traffic.
    let thief = lease("10.244.9.0/24", "192.168.50.9", "vxlan", vxlan_data(MAC_B));
    let with_thief = next(&first, |s| s.insert(thief));
    let (reports, check) = vxlan_incremental(&node, first, vec![with_thief]);
    assert_eq!(reports[0].applied, 0, "{reports:?}");
    assert!(
        reports[0]
            .problems
            .iter()
            .any(|p| p.contains("10.244.9.0/24") && p.contains("already used")),
        "{reports:?}"
    );
    assert_eq!(check.applied, 0, "{check:?}");
    assert_peer_programmed(&node, "10.244.2.0", MAC_B, "192.168.50.2");
    assert!(route_to(&node.ns, "10.244.9.0/24").is_none());
}
