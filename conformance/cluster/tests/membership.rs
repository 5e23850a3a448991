//! Nodes joining, leaving and restarting: what peers' kernels hold
//! afterwards, and whether pod traffic notices.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code: failing loudly is the point

mod common;

use common::{
    assert_pods_ping, cluster, monitor_node, overlay_changes, start_pinger, stop_pinger, CONVERGE,
};
use felt_cluster::{Backend, Cluster, KernelState, ETCD_PREFIX, VTEP};
use nix::sys::signal::Signal;
use std::time::{Duration, Instant, SystemTime};

/// A node joining: once its subnet.env appears, every node routes to it
/// (and it to every node) within a second, and its new pods are reachable
/// from all existing pods at the first ping. The second is timed from
/// the kernels' own announcements (`common::join_timed`).
fn join(backend: Backend) {
    let mut c = cluster(backend, 2, 2);
    let old_pods = c.pods.len();
    let (n, converged) = common::join_timed(&mut c);
    c.add_pod(n).unwrap();
    c.add_pod(n).unwrap();
    let mut failed = Vec::new();
    for new in &c.pods[old_pods..] {
        for old in &c.pods[..old_pods] {
            for (a, b) in [(old, new), (new, old)] {
                match a.ping(b.ip, 1) {
                    Ok(p) if p.ok => {}
                    other => failed.push(format!("{} -> {}: {other:?}", a.name, b.name)),
                }
            }
        }
    }
    eprintln!(
        "{}: every route to and from the new node announced {converged:?} after subnet.env",
        backend.name()
    );
    assert!(
        failed.is_empty(),
        "new node's pods unreachable:\n{}",
        failed.join("\n")
    );
    assert!(
        converged < Duration::from_secs(1),
        "routes took {converged:?} after subnet.env"
    );
}

#[test]
fn vxlan_node_join_reachable_within_a_second() {
    join(Backend::Vxlan);
}

#[test]
fn host_gw_node_join_reachable_within_a_second() {
    join(Backend::HostGw);
}

/// A node leaving (overlayd gone, its lease deleted from etcd): every peer
/// removes its route, neighbour and FDB entries; the rest keeps routing.
fn leave(backend: Backend) {
    let mut c = cluster(backend, 3, 1);
    let gone = c.peer(2).unwrap();
    let key = c.nodes[2].lease_key(ETCD_PREFIX).unwrap();
    c.node_mut(2)
        .unwrap()
        .stop_overlayd(Signal::SIGKILL)
        .unwrap();
    assert!(
        c.etcd().delete(&key).unwrap(),
        "lease {key} was not in etcd"
    );
    let start = Instant::now();
    for n in &c.nodes[..2] {
        let mut left = Vec::new();
        let res = n.wait_kernel("peer entries removed", CONVERGE, |s: &KernelState| {
            left = s.leftovers_of(&gone);
            left.is_empty()
        });
        assert!(res.is_ok(), "{}: still holds {left:?}", n.name);
    }
    eprintln!(
        "{}: peers cleaned up {:?} after the lease was deleted",
        backend.name(),
        start.elapsed()
    );
    // Their own mesh is intact.
    c.wait_mesh(&[0, 1], Duration::from_secs(1)).unwrap();
    let p0 = &c.pods[0];
    let p1 = &c.pods[1];
    assert!(p0.ping(p1.ip, 2).unwrap().ok, "{} -> {}", p0.name, p1.name);
    assert!(p1.ping(p0.ip, 2).unwrap().ok, "{} -> {}", p1.name, p0.name);
}

#[test]
fn vxlan_node_leave_removes_routes_neighbours_fdb() {
    leave(Backend::Vxlan);
}

#[test]
fn host_gw_node_leave_removes_routes() {
    leave(Backend::HostGw);
}

/// Every node's overlay kernel state.
fn snapshot_all(c: &Cluster) -> Vec<KernelState> {
    c.nodes.iter().map(|n| n.kernel().unwrap()).collect()
}

/// Restarts overlayd on node3 with `signal`, pods pinging through it all
/// along; asserts nothing changed anywhere: the kernel reports no change
/// to the overlay's objects on any node, and the state read back is the
/// same set of objects.
fn restart_once(c: &mut Cluster, signal: Signal) {
    let before = snapshot_all(c);
    let monitors: Vec<_> = (0..c.nodes.len())
        .map(|i| monitor_node(c, i, &format!("restart-{signal}")))
        .collect();
    let subnet = c.nodes[2].subnet().unwrap();
    let key = c.nodes[2].lease_key(ETCD_PREFIX).unwrap();
    let lease_before = c.etcd().get(&key).unwrap().unwrap();
    let pingers = [
        start_pinger(c, 0, 2, "a", "0.02"),
        start_pinger(c, 2, 1, "b", "0.02"),
    ];
    std::thread::sleep(Duration::from_millis(300));
    let since = SystemTime::now();
    let how = c.node_mut(2).unwrap().stop_overlayd(signal).unwrap();
    std::thread::sleep(Duration::from_millis(300));
    c.start_overlayd(2, &[]).unwrap();
    let back = c
        .node_mut(2)
        .unwrap()
        .wait_subnet_env(since, CONVERGE)
        .unwrap();
    // Leave the daemon time to (wrongly) rewrite anything.
    std::thread::sleep(Duration::from_millis(1500));
    for (i, m) in monitors.iter().enumerate() {
        let changes = overlay_changes(m.events());
        assert!(
            changes.is_empty(),
            "node{}: the kernel reported overlay changes during the restart ({signal}): {changes:#?}",
            i + 1
        );
    }
    let after = snapshot_all(c);
    for (i, (b, a)) in before.iter().zip(&after).enumerate() {
        assert_eq!(
            b,
            a,
            "node{} kernel state changed across the restart ({signal})",
            i + 1
        );
    }
    assert_eq!(c.nodes[2].subnet().unwrap(), subnet, "subnet changed");
    let lease_after = c.etcd().get(&key).unwrap().unwrap();
    assert_eq!(lease_before.value, lease_after.value, "lease value changed");
    for (tag, p) in ["pod1.1 -> pod3.1", "pod3.1 -> pod2.1"].iter().zip(pingers) {
        let (sent, got) = stop_pinger(p);
        eprintln!("{signal}: overlayd {how}, back after {back:?}; {tag}: {got}/{sent} replies");
        assert!(sent > 50, "{tag}: only {sent} pings sent");
        assert_eq!(
            sent, got,
            "{tag}: pod traffic lost packets during the restart"
        );
    }
}

/// Restart (SIGTERM as in a rollout, then SIGKILL as in a crash): same
/// subnet, same VTEP MAC, not one kernel entry changed on any node, and
/// pod traffic through the node does not lose a packet.
#[test]
fn vxlan_node_restart_keeps_subnet_mac_and_traffic() {
    let mut c = cluster(Backend::Vxlan, 3, 1);
    restart_once(&mut c, Signal::SIGTERM);
    restart_once(&mut c, Signal::SIGKILL);
    assert_pods_ping(&c);
}

/// A reboot of node3 (daemon killed, flannel.1 and subnet.env gone): it
/// comes back with the same subnet (its lease names its PublicIP) and the
/// same VTEP MAC, so the other nodes' neighbour and FDB entries stay valid
/// and untouched (flannel #1795: a new MAC leaves peers with stale ones).
#[test]
fn vxlan_node_reboot_keeps_subnet_and_vtep_mac() {
    let mut c = cluster(Backend::Vxlan, 3, 1);
    let peers_before = snapshot_all(&c);
    let monitors = [monitor_node(&c, 0, "reboot"), monitor_node(&c, 1, "reboot")];
    let subnet = c.nodes[2].subnet().unwrap();
    let mac = c.peer(2).unwrap().vtep_mac.unwrap();
    c.node_mut(2)
        .unwrap()
        .stop_overlayd(Signal::SIGKILL)
        .unwrap();
    c.nodes[2].ns.ip(&["link", "del", VTEP]).unwrap();
    std::fs::remove_file(c.nodes[2].subnet_file()).unwrap();
    c.start_overlayd(2, &[]).unwrap();
    let node = c.node_mut(2).unwrap();
    node.wait_subnet_env(SystemTime::UNIX_EPOCH, CONVERGE)
        .unwrap();
    assert_eq!(
        c.nodes[2].subnet().unwrap(),
        subnet,
        "subnet changed after reboot"
    );
    c.wait_mesh(&[0, 1, 2], CONVERGE).unwrap();
    assert_eq!(
        c.peer(2).unwrap().vtep_mac.unwrap(),
        mac,
        "VTEP MAC changed after reboot"
    );
    let peers_after = snapshot_all(&c);
    for i in 0..2 {
        let changes = overlay_changes(monitors[i].events());
        assert!(
            changes.is_empty(),
            "node{}: the kernel reported overlay changes while node3 rebooted: {changes:#?}",
            i + 1
        );
        assert_eq!(peers_before[i], peers_after[i], "node{} changed", i + 1);
    }
    assert_pods_ping(&c);
}
