//! Where flanneld leaves stale or missing state behind (flannel #2554,
//! #1244, deleted entries never replayed), overlayd recomputes from full
//! state: entries someone deleted come back, peers that left while the
//! daemon was down are cleaned up when it starts.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code: failing loudly is the point

mod common;

use common::{cluster, CONVERGE};
use felt_cluster::{Backend, Cluster, ETCD_PREFIX, VTEP};
use nix::sys::signal::Signal;
use std::time::{Duration, Instant, SystemTime};

/// The repair budget the issue sets for hand-made damage.
const REPAIR: Duration = Duration::from_secs(5);

/// node1's correction counter for `kind` (route, neighbour, fdb, device).
fn corrections(c: &Cluster, kind: &str) -> f64 {
    let sample = format!("felt_reconcile_corrections_total{{kind=\"{kind}\"}}");
    c.nodes[0].metric(&sample).unwrap()
}

/// Deletes one of node1's kernel entries for node2 behind overlayd's
/// back (the `del` fails unless it existed), then expects it back within
/// the budget, with the repair counted under `kind`.
fn repaired(c: &Cluster, kind: &str, del: &[&str]) {
    let peer = c.peer(1).unwrap();
    let before = corrections(c, kind);
    let ns = &c.nodes[0].ns;
    let start = Instant::now();
    let mut cmd = std::process::Command::new(del[0]);
    cmd.arg("-n").arg(ns.name()).args(&del[1..]);
    felt_cluster::process::run(&mut cmd).unwrap();
    let mut problems = Vec::new();
    let res = felt_cluster::wait::wait_for(&format!("the {kind} restored"), REPAIR, || {
        problems = c.peer_problems(0, &peer)?;
        Ok(problems.is_empty())
    });
    assert!(res.is_ok(), "node1 still lacks: {problems:?}");
    let took = start.elapsed();
    let mut after = corrections(c, kind);
    // The counter moves right after the write the kernel already shows.
    let counted = felt_cluster::wait::wait_for("the repair counted", REPAIR, || {
        after = corrections(c, kind);
        Ok(after > before)
    });
    assert!(
        counted.is_ok(),
        "{kind} repair not counted: {before} -> {after}"
    );
    eprintln!("{}: {kind} restored after {took:?}", c.backend().name());
}

fn entries_come_back(backend: Backend) {
    let c = cluster(backend, 3, 1);
    let peer = c.peer(1).unwrap();
    let dst = peer.subnet.to_string();
    repaired(&c, "route", &["ip", "route", "del", &dst]);
    if backend == Backend::Vxlan {
        let gw = peer.subnet.network().to_string();
        repaired(&c, "neighbour", &["ip", "neigh", "del", &gw, "dev", VTEP]);
        let mac = peer.vtep_mac.clone().unwrap();
        repaired(&c, "fdb", &["bridge", "fdb", "del", &mac, "dev", VTEP]);
    }
    let (a, b) = (&c.pods[0], &c.pods[1]);
    assert!(a.ping(b.ip, 2).unwrap().ok, "{} -> {}", a.name, b.name);
}

#[test]
fn vxlan_deleted_route_neighbour_fdb_come_back() {
    entries_come_back(Backend::Vxlan);
}

#[test]
fn host_gw_deleted_route_comes_back() {
    entries_come_back(Backend::HostGw);
}

/// node3 leaves while node1's overlayd is down: when node1's overlayd
/// starts again it removes node3's route, neighbour and FDB entries
/// (flannel keeps them forever, #2554).
fn stale_peer_cleaned_on_start(backend: Backend) {
    let mut c = cluster(backend, 3, 1);
    let gone = c.peer(2).unwrap();
    c.node_mut(0)
        .unwrap()
        .stop_overlayd(Signal::SIGTERM)
        .unwrap();
    c.node_mut(2)
        .unwrap()
        .stop_overlayd(Signal::SIGKILL)
        .unwrap();
    let key = c.nodes[2].lease_key(ETCD_PREFIX).unwrap();
    assert!(c.etcd().delete(&key).unwrap());
    let before = c.nodes[0].kernel().unwrap().leftovers_of(&gone);
    assert!(
        !before.is_empty(),
        "node1 had no entries for node3 to begin with"
    );
    let since = SystemTime::now();
    c.start_overlayd(0, &[]).unwrap();
    c.node_mut(0)
        .unwrap()
        .wait_subnet_env(since, CONVERGE)
        .unwrap();
    let mut left = Vec::new();
    let took = c.nodes[0].wait_kernel("stale peer removed", CONVERGE, |s| {
        left = s.leftovers_of(&gone);
        left.is_empty()
    });
    assert!(
        took.is_ok(),
        "node1 keeps entries of a departed node: {left:?}"
    );
    eprintln!(
        "{}: stale peer removed {:?} after restart",
        backend.name(),
        took.unwrap()
    );
    c.wait_mesh(&[0, 1], Duration::from_secs(2)).unwrap();
}

#[test]
fn vxlan_peer_that_left_during_downtime_is_cleaned_on_start() {
    stale_peer_cleaned_on_start(Backend::Vxlan);
}

#[test]
fn host_gw_peer_that_left_during_downtime_is_cleaned_on_start() {
    stale_peer_cleaned_on_start(Backend::HostGw);
}

/// Someone deletes flannel.1: overlayd recreates it with the same MAC and
/// re-programs every peer (flannel's reCreateVxlan does not).
#[test]
fn vxlan_deleted_device_is_recreated_with_peers() {
    let c = cluster(Backend::Vxlan, 3, 1);
    let mac = c.nodes[0].kernel().unwrap().vtep_mac().unwrap();
    let before = corrections(&c, "device");
    c.nodes[0].ns.ip(&["link", "del", VTEP]).unwrap();
    let start = Instant::now();
    c.nodes[0]
        .wait_kernel("flannel.1 back", REPAIR, |s| s.vtep.is_some())
        .unwrap();
    // wait_mesh reads node1's MAC from its new device: same MAC or not,
    // every peer must point at it.
    let res = c.wait_mesh(&[0, 1, 2], REPAIR);
    assert!(res.is_ok(), "{res:?}");
    eprintln!("vxlan: device and peers back after {:?}", start.elapsed());
    assert!(
        corrections(&c, "device") > before,
        "device repair not counted"
    );
    assert_eq!(c.nodes[0].kernel().unwrap().vtep_mac().unwrap(), mac);
    common::assert_pods_ping(&c);
}
