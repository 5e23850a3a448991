//! 3 nodes x 2 pods: every pod reaches every pod (ping and TCP) and every
//! other node's underlay address, over vxlan and over host-gw.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code: failing loudly is the point

mod common;

use common::{assert_pods_ping, cluster};
use felt_cluster::tcp::{tcp_roundtrip, EchoServer};
use felt_cluster::{Backend, Cluster, VTEP};

fn assert_tcp_mesh(c: &Cluster) {
    let servers: Vec<EchoServer> = c
        .pods
        .iter()
        .map(|p| EchoServer::start(&p.ns, p.ip).unwrap())
        .collect();
    let mut failed = Vec::new();
    for from in &c.pods {
        for (to, server) in c.pods.iter().zip(&servers) {
            let payload = format!("{} -> {}", from.name, to.name);
            match tcp_roundtrip(&from.ns, server.addr, payload.as_bytes()) {
                Ok(got) if got == payload.as_bytes() => {}
                other => failed.push(format!("{payload} ({}): {other:?}", server.addr)),
            }
        }
    }
    assert!(failed.is_empty(), "TCP failed:\n{}", failed.join("\n"));
}

/// Pods reach the underlay address of every node other than their own
/// (what a pod does to talk to a kubelet or a NodePort).
fn assert_pods_reach_other_nodes(c: &Cluster) {
    let mut failed = Vec::new();
    for pod in &c.pods {
        for (i, node) in c.nodes.iter().enumerate() {
            if i == pod.node {
                continue;
            }
            match c.ping(&pod.ns, node.ip) {
                Ok(p) if p.ok => {}
                other => failed.push(format!(
                    "{} -> {} ({}): {other:?}",
                    pod.name, node.name, node.ip
                )),
            }
        }
    }
    assert!(
        failed.is_empty(),
        "pod -> node pings failed:\n{}",
        failed.join("\n")
    );
}

/// Each node holds a distinct /24 of 10.244.0.0/16 and its pods' addresses
/// come from it.
fn assert_distinct_subnets(c: &Cluster) {
    let subnets: Vec<_> = c.nodes.iter().map(|n| n.subnet().unwrap()).collect();
    for (i, s) in subnets.iter().enumerate() {
        assert_eq!(s.prefix_len(), 24, "{s}");
        assert!("10.244.0.0/16"
            .parse::<ipnet::Ipv4Net>()
            .unwrap()
            .contains(s));
        assert!(
            !subnets[..i].contains(s),
            "subnet {s} leased twice: {subnets:?}"
        );
    }
    for p in &c.pods {
        assert!(
            subnets[p.node].contains(&p.ip),
            "{} has {} outside {}",
            p.name,
            p.ip,
            subnets[p.node]
        );
    }
}

/// Pods get the overlay's MTU (subnet.env's FLANNEL_MTU) and a full-size
/// packet with DF set crosses to another node without fragmentation.
fn assert_mtu(c: &Cluster, mtu: u64) {
    for p in &c.pods {
        let link = p.ns.ip_json(&["link", "show", "eth0"]).unwrap();
        assert_eq!(link[0]["mtu"], mtu, "{} eth0: {}", p.name, link[0]);
    }
    let from = &c.pods[0];
    let to = c.pods.iter().find(|p| p.node != from.node).unwrap();
    let payload = (mtu - 28).to_string();
    let fits = [
        "ping", "-n", "-c", "1", "-W", "2", "-M", "do", "-s", &payload,
    ];
    let mut argv = fits.to_vec();
    let dst = to.ip.to_string();
    argv.push(&dst);
    from.ns
        .exec(&argv)
        .unwrap_or_else(|e| panic!("{mtu}-byte packet {} -> {}: {e}", from.name, to.name));
}

fn full_mesh(backend: Backend) {
    let c = cluster(backend, 3, 2);
    assert_eq!(c.pods.len(), 6);
    assert_distinct_subnets(&c);
    assert_pods_ping(&c);
    assert_tcp_mesh(&c);
    assert_pods_reach_other_nodes(&c);
    // vxlan: MTU = underlay 1500 - 50; udp: 1500 - 28, as flannel.
    let mtu = match backend {
        Backend::Vxlan => 1450,
        Backend::HostGw => 1500,
        Backend::Udp => 1472,
    };
    assert_mtu(&c, mtu);
    for n in &c.nodes {
        let state = n.kernel().unwrap();
        match backend {
            // vxlan: MTU = underlay 1500 - 50, as flannel.
            Backend::Vxlan => {
                let vtep = state
                    .vtep
                    .unwrap_or_else(|| panic!("no {VTEP} on {}", n.name));
                assert_eq!(vtep["mtu"], 1450, "{}: {vtep}", n.name);
                assert_eq!(n.subnet_env().unwrap().mtu, 1450);
            }
            // host-gw makes no VXLAN device.
            Backend::HostGw => {
                assert!(state.vtep.is_none(), "{}: unexpected {VTEP}", n.name);
                assert_eq!(n.subnet_env().unwrap().mtu, 1500);
            }
            // udp: flannel0 with the subnet's network address /32, the MTU,
            // and one route for the whole network to it.
            Backend::Udp => {
                assert!(state.vtep.is_none(), "{}: unexpected {VTEP}", n.name);
                assert_eq!(n.subnet_env().unwrap().mtu, 1472);
                let link = n.ns.ip_json(&["link", "show", "flannel0"]).unwrap();
                assert_eq!(link[0]["mtu"], 1472, "{}: {link:?}", n.name);
                let addr =
                    n.ns.ip(&["-4", "-o", "addr", "show", "dev", "flannel0"])
                        .unwrap();
                let want = format!("{}/32", n.subnet().unwrap().network());
                assert!(addr.contains(&want), "{}: {addr}", n.name);
                assert!(
                    state.udp_problems(felt_cluster::NETWORK).is_empty(),
                    "{}",
                    n.name
                );
            }
        }
    }
}

#[test]
fn vxlan_full_mesh_ping_tcp_and_nodes() {
    full_mesh(Backend::Vxlan);
}

#[test]
fn host_gw_full_mesh_ping_tcp_and_nodes() {
    full_mesh(Backend::HostGw);
}

#[test]
fn udp_full_mesh_ping_tcp_and_nodes() {
    full_mesh(Backend::Udp);
}

/// Eight nodes starting at the same moment race for subnets (each picks
/// at random among the first free ones; etcd's create-if-absent must
/// settle collisions): all get distinct subnets and one full mesh.
#[test]
fn vxlan_eight_nodes_starting_at_once() {
    let c = cluster(Backend::Vxlan, 8, 1);
    assert_distinct_subnets(&c);
    let leases = c
        .etcd()
        .get_prefix(&format!("{}/subnets/", felt_cluster::ETCD_PREFIX))
        .unwrap();
    assert_eq!(leases.len(), 8, "{leases:?}");
    assert_pods_ping(&c);
}
