//! Leases are untrusted input: anyone who can write the etcd prefix can
//! write anything there. Garbage must be skipped with a warning and a
//! metric, never crash the daemon or disturb other peers, and no lease may
//! make a node route its own underlay, the whole network, a default route
//! or a slot held by someone else's route into the overlay. A node's own
//! lease deleted by hand is re-acquired on the same subnet.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code: failing loudly is the point

mod common;

use common::{assert_pods_ping, cluster, monitor_node, overlay_changes, wait_ready, CONVERGE};
use felt_cluster::{lease_key, Backend, Cluster, ETCD_PREFIX};
use std::time::Duration;

/// A lease value as flannel writes it, for `public_ip`.
fn lease_json(c: &Cluster, public_ip: &str) -> String {
    match c.backend() {
        Backend::Vxlan => format!(
            r#"{{"PublicIP":"{public_ip}","PublicIPv6":null,"BackendType":"vxlan","BackendData":{{"VNI":1,"VtepMAC":"0a:00:00:00:77:01"}}}}"#
        ),
        Backend::HostGw | Backend::Udp => format!(
            r#"{{"PublicIP":"{public_ip}","PublicIPv6":null,"BackendType":"{}"}}"#,
            c.backend().name()
        ),
    }
}

fn subnet_key(sn: &str) -> String {
    lease_key(ETCD_PREFIX, sn.parse().unwrap())
}

/// Waits until node `i` exports `sample` = `value`.
fn wait_metric(c: &Cluster, i: usize, sample: &str, value: f64) {
    let mut last = 0.0;
    felt_cluster::wait::wait_for(sample, CONVERGE, || {
        last = c.nodes[i].metric(sample)?;
        Ok(last == value)
    })
    .unwrap_or_else(|e| panic!("node{}: {e}: {sample} is {last}, want {value}", i + 1));
}

/// Every IPv4 route of the node, in every table, as a set of lines.
fn all_routes(c: &Cluster, i: usize) -> std::collections::BTreeSet<String> {
    let ns = &c.nodes[i].ns;
    let table = ns.ip(&["-4", "route", "show", "table", "all"]).unwrap();
    table.lines().map(String::from).collect()
}

fn garbage_is_skipped(backend: Backend) {
    let mut c = cluster(backend, 2, 1);
    let monitors = [
        monitor_node(&c, 0, "garbage"),
        monitor_node(&c, 1, "garbage"),
    ];
    let bad = [
        ("10.244.201.0/24", "{not json".to_string()),
        (
            "10.244.202.0/24",
            r#"{"PublicIP":5,"BackendType":"vxlan"}"#.to_string(),
        ),
        (
            "10.244.203.0/24",
            r#"{"PublicIP":"192.168.100.50","BackendType":7}"#.to_string(),
        ),
        ("10.244.204.0/24", lease_json(&c, "0.0.0.0")),
    ];
    for (sn, value) in &bad {
        c.etcd().put(&subnet_key(sn), value).unwrap();
    }
    for i in 0..2 {
        wait_metric(&c, i, "felt_leases_skipped{reason=\"malformed\"}", 3.0);
        wait_metric(&c, i, "felt_leases_skipped{reason=\"public-ip\"}", 1.0);
        assert!(c.nodes[i].readyz().unwrap().0, "node{} not ready", i + 1);
    }
    let log = c.nodes[0].overlayd_log();
    for (sn, _) in &bad {
        let key = subnet_key(sn);
        let named = log
            .lines()
            .any(|l| l.contains("WARN") && (l.contains(&key) || l.contains(sn)));
        assert!(named, "no warning names {key}:\n{log}");
    }
    // Nothing changed in either kernel, and the real peers stay routed.
    for (i, m) in monitors.iter().enumerate() {
        let changes = overlay_changes(m.events());
        assert!(changes.is_empty(), "node{}: {changes:#?}", i + 1);
    }
    c.wait_mesh(&[0, 1], Duration::from_secs(1)).unwrap();
    assert_pods_ping(&c);
    for i in 0..2 {
        assert!(
            c.node_mut(i).unwrap().overlayd_running(),
            "node{} overlayd died",
            i + 1
        );
    }
}

#[test]
fn vxlan_garbage_leases_are_skipped_and_counted() {
    garbage_is_skipped(Backend::Vxlan);
}

#[test]
fn host_gw_garbage_leases_are_skipped_and_counted() {
    garbage_is_skipped(Backend::HostGw);
}

/// Leases that would route the underlay (and so etcd), a more specific
/// part of it, the whole network, everything, or a slot held by a route
/// of someone else's: none changes a single route on the node.
fn takeover_attempts_change_nothing(backend: Backend) {
    let c = cluster(backend, 2, 1);
    // Someone else's route inside the network: a blackhole an operator set.
    for n in &c.nodes {
        n.ns.ip(&["route", "add", "blackhole", "10.244.250.0/24"])
            .unwrap();
    }
    let before = [all_routes(&c, 0), all_routes(&c, 1)];
    let monitors = [
        monitor_node(&c, 0, "takeover"),
        monitor_node(&c, 1, "takeover"),
    ];
    let attempts = [
        "192.168.100.0/24",
        "192.168.100.0/25",
        "10.244.0.0/16",
        "0.0.0.0/0",
        "10.244.250.0/24",
    ];
    let attacker = lease_json(&c, "192.168.100.99");
    for sn in attempts {
        c.etcd().put(&subnet_key(sn), &attacker).unwrap();
    }
    for node in 0..2 {
        for (reason, count) in [("outside-network", 4.0), ("route-slot-taken", 1.0)] {
            let sample = format!("felt_leases_skipped{{reason=\"{reason}\"}}");
            wait_metric(&c, node, &sample, count);
        }
    }
    // Give a wrong implementation every chance to act: two full passes.
    std::thread::sleep(Duration::from_millis(1500));
    for i in 0..2 {
        let after = all_routes(&c, i);
        assert_eq!(before[i], after, "node{}: routes changed", i + 1);
        let changes = overlay_changes(monitors[i].events());
        assert!(changes.is_empty(), "node{}: {changes:#?}", i + 1);
        // The underlay, and so etcd, stays reachable.
        let ping = c
            .ping(&c.nodes[i].ns, felt_cluster::cluster::UNDERLAY_GW)
            .unwrap();
        assert!(ping.ok, "node{}: underlay unreachable", i + 1);
        assert!(c.nodes[i].readyz().unwrap().0, "node{} not ready", i + 1);
    }
    // etcd answers the nodes: their leases can still be renewed.
    let key = c.nodes[0].lease_key(ETCD_PREFIX).unwrap();
    assert!(c.etcd().get(&key).unwrap().is_some());
    assert_pods_ping(&c);
}

#[test]
fn vxlan_takeover_leases_change_no_route() {
    takeover_attempts_change_nothing(Backend::Vxlan);
}

#[test]
fn host_gw_takeover_leases_change_no_route() {
    takeover_attempts_change_nothing(Backend::HostGw);
}

/// flannel exits when its lease vanishes; felt puts it back, same subnet.
#[test]
fn own_lease_deleted_by_hand_is_reacquired_on_the_same_subnet() {
    let c = cluster(Backend::Vxlan, 2, 1);
    let key = c.nodes[0].lease_key(ETCD_PREFIX).unwrap();
    let value = c.etcd().get(&key).unwrap().unwrap().value;
    assert!(c.etcd().delete(&key).unwrap());
    let back = felt_cluster::wait::wait_for("the lease to be re-created", CONVERGE, || {
        Ok(c.etcd().get(&key)?.is_some())
    })
    .unwrap();
    let kv = c.etcd().get(&key).unwrap().unwrap();
    assert_eq!(kv.value, value);
    assert_ne!(kv.lease, 0, "re-created without a TTL");
    assert_eq!(
        c.nodes[0].lease_key(ETCD_PREFIX).unwrap(),
        key,
        "subnet changed"
    );
    c.wait_mesh(&[0, 1], CONVERGE).unwrap();
    wait_ready(&c, 0);
    assert_pods_ping(&c);
    eprintln!("own lease re-created {back:?} after it was deleted");
}
