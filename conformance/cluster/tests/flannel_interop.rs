//! Mixed clusters during a migration: felt nodes and a flannel node read
//! each other's leases and route to each other; felt's lease JSON is
//! flannel's.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code: failing loudly is the point

mod common;

use common::{cluster, require_root, CONVERGE};
use felt_cluster::{
    lease_key, underlay_ip, Backend, Cluster, Naming, Netns, Peer, ETCD_PREFIX, VTEP,
};
use ipnet::Ipv4Net;
use serde_json::Value;
use std::net::Ipv4Addr;

const FLANNEL_SUBNET: &str = "10.244.200.0/24";
const FLANNEL_MAC: &str = "5a:e8:17:2b:9c:01";
const FLANNEL_OCTET: u8 = 50;

/// A node as flanneld (vxlan) sets it up: flannel.1 with a MAC, local =
/// public IP, learning off, MTU 1450, `<subnet>.0/32`; a pod on a veth
/// behind `<subnet>.1`; its lease in etcd in flannel's exact JSON with a
/// 24 h TTL.
fn flannel_node(c: &mut Cluster) -> (Netns, Ipv4Addr) {
    let h = c.add_host("fl", FLANNEL_OCTET).unwrap();
    let node = c.host(h).unwrap();
    let public = underlay_ip(FLANNEL_OCTET).to_string();
    node.ip(&[
        "link",
        "add",
        VTEP,
        "type",
        "vxlan",
        "id",
        "1",
        "local",
        &public,
        "dev",
        "eth0",
        "dstport",
        "8472",
        "nolearning",
    ])
    .unwrap();
    node.ip(&[
        "link",
        "set",
        VTEP,
        "address",
        FLANNEL_MAC,
        "mtu",
        "1450",
        "up",
    ])
    .unwrap();
    node.ip(&["addr", "add", "10.244.200.0/32", "dev", VTEP])
        .unwrap();
    // Its pod, behind a plain veth (no bridge needed for one pod).
    let pod = Netns::create(&c.naming().name("flpod")).unwrap();
    node.ip(&[
        "link",
        "add",
        "veth0",
        "type",
        "veth",
        "peer",
        "name",
        "eth0",
        "netns",
        pod.name(),
    ])
    .unwrap();
    node.ip(&["addr", "add", "10.244.200.1/24", "dev", "veth0"])
        .unwrap();
    node.ip(&["link", "set", "veth0", "up"]).unwrap();
    pod.ip(&["addr", "add", "10.244.200.2/24", "dev", "eth0"])
        .unwrap();
    pod.ip(&["link", "set", "eth0", "up"]).unwrap();
    pod.ip(&["route", "add", "default", "via", "10.244.200.1"])
        .unwrap();
    let lease = format!(
        r#"{{"PublicIP":"{public}","PublicIPv6":null,"BackendType":"vxlan","BackendData":{{"VNI":1,"VtepMAC":"{FLANNEL_MAC}"}}}}"#
    );
    let key = lease_key(ETCD_PREFIX, FLANNEL_SUBNET.parse().unwrap());
    c.etcd().put_with_ttl(&key, &lease, 86400).unwrap();
    (pod, "10.244.200.2".parse().unwrap())
}

/// What flanneld does on the flannel node for each felt lease it sees.
fn flannel_add_peer(node: &Netns, peer: &Peer) {
    felt_cluster::kernel::add_vxlan_peer_by_hand(node, peer).unwrap();
}

#[test]
fn felt_and_flannel_nodes_route_to_each_other() {
    require_root();
    let mut c = Cluster::start(Naming::test(), Backend::Vxlan, None).unwrap();
    // The flannel node was there first; felt must not take its subnet.
    let (flannel_pod, flannel_pod_ip) = flannel_node(&mut c);
    let nodes = c.add_running_nodes(2).unwrap();
    for &n in &nodes {
        c.add_pod(n).unwrap();
    }
    c.wait_mesh(&nodes, CONVERGE).unwrap();
    for &n in &nodes {
        assert_ne!(
            c.nodes[n].subnet().unwrap().to_string(),
            FLANNEL_SUBNET,
            "felt took flannel's subnet"
        );
    }
    let flannel = Peer {
        subnet: FLANNEL_SUBNET.parse().unwrap(),
        public_ip: underlay_ip(FLANNEL_OCTET),
        vtep_mac: Some(FLANNEL_MAC.into()),
    };
    for &n in &nodes {
        let mut problems = Vec::new();
        let res = c.nodes[n].wait_kernel("routes to the flannel node", CONVERGE, |s| {
            problems = s.vxlan_peer_problems(&flannel);
            problems.is_empty()
        });
        assert!(res.is_ok(), "{}: {problems:?}", c.nodes[n].name);
    }
    let fl = c.host(0).unwrap();
    for &n in &nodes {
        flannel_add_peer(fl, &c.peer(n).unwrap());
    }
    for pod in &c.pods {
        let there = pod.ping(flannel_pod_ip, 2).unwrap();
        assert!(there.ok, "{} -> flannel pod {flannel_pod_ip}", pod.name);
        let back = c.ping(&flannel_pod, pod.ip).unwrap();
        assert!(back.ok, "flannel pod -> {} {}", pod.name, pod.ip);
        // The flannel node's own VTEP address, as flannel nodes ping.
        assert!(pod.ping("10.244.200.0".parse().unwrap(), 2).unwrap().ok);
    }
}

/// The keys, types and order of flannel's LeaseAttrs JSON.
fn assert_flannel_lease_shape(c: &Cluster, n: usize, backend: Backend) {
    let node = &c.nodes[n];
    let key = node.lease_key(ETCD_PREFIX).unwrap();
    let kv = c
        .etcd()
        .get(&key)
        .unwrap()
        .unwrap_or_else(|| panic!("no lease {key}"));
    let v: Value = serde_json::from_str(&kv.value).unwrap();
    let obj = v
        .as_object()
        .unwrap_or_else(|| panic!("{key}: {}", kv.value));
    let keys: Vec<&str> = obj.keys().map(String::as_str).collect();
    assert_eq!(v["PublicIP"], node.ip.to_string().as_str(), "{}", kv.value);
    assert_eq!(v["PublicIPv6"], Value::Null, "{}", kv.value);
    assert_eq!(v["BackendType"], backend.name(), "{}", kv.value);
    match backend {
        Backend::Vxlan => {
            let mut sorted = keys.clone();
            sorted.sort_unstable();
            assert_eq!(
                sorted,
                ["BackendData", "BackendType", "PublicIP", "PublicIPv6"],
                "{}",
                kv.value
            );
            let data = v["BackendData"].as_object().unwrap();
            let mut dkeys: Vec<&str> = data.keys().map(String::as_str).collect();
            dkeys.sort_unstable();
            assert_eq!(dkeys, ["VNI", "VtepMAC"], "{}", kv.value);
            assert!(
                v["BackendData"]["VNI"].is_u64() && v["BackendData"]["VNI"] == 1,
                "{}",
                kv.value
            );
            let mac = node.kernel().unwrap().vtep_mac().unwrap();
            assert_eq!(v["BackendData"]["VtepMAC"], mac.as_str(), "{}", kv.value);
        }
        // flannel's BackendData is `omitempty`: host-gw and udp have none.
        Backend::HostGw | Backend::Udp => {
            let mut sorted = keys.clone();
            sorted.sort_unstable();
            assert_eq!(
                sorted,
                ["BackendType", "PublicIP", "PublicIPv6"],
                "{}",
                kv.value
            );
        }
    }
    // Go's encoding/json writes struct fields in declaration order, no
    // spaces; flannel's own reader does not care, but byte equality makes
    // diffs between flannel and felt nodes empty.
    let order = ["PublicIP", "PublicIPv6", "BackendType", "BackendData"];
    let pos: Vec<usize> = order
        .iter()
        .filter_map(|k| kv.value.find(&format!("\"{k}\"")))
        .collect();
    assert!(
        pos.windows(2).all(|w| w[0] < w[1]),
        "key order differs from flannel: {}",
        kv.value
    );
    assert!(
        !kv.value.contains(": ") && !kv.value.contains(", "),
        "not compact: {}",
        kv.value
    );
    // A 24 h etcd lease, not a reservation (no TTL).
    let (granted, left) = c
        .etcd()
        .lease_ttl(kv.lease)
        .unwrap()
        .unwrap_or_else(|| panic!("{key} has no TTL"));
    assert_eq!(granted, 86400, "{key}");
    assert!(left > 86000, "{key}: {left}s left");
    let subnet: Ipv4Net = node.subnet().unwrap();
    assert_eq!(key, lease_key(ETCD_PREFIX, subnet));
}

#[test]
fn vxlan_lease_json_is_flannels() {
    let c = cluster(Backend::Vxlan, 2, 0);
    assert_flannel_lease_shape(&c, 0, Backend::Vxlan);
    assert_flannel_lease_shape(&c, 1, Backend::Vxlan);
    let all = c
        .etcd()
        .get_prefix(&format!("{ETCD_PREFIX}/subnets/"))
        .unwrap();
    assert_eq!(all.len(), 2, "{all:?}");
}

#[test]
fn host_gw_lease_json_is_flannels() {
    let c = cluster(Backend::HostGw, 2, 0);
    assert_flannel_lease_shape(&c, 0, Backend::HostGw);
    assert_flannel_lease_shape(&c, 1, Backend::HostGw);
}
