//! Two "nodes" (namespaces) joined by a veth underlay, each with a
//! pod-side address on a bridge in its subnet; the backend code programs
//! both, and real packets cross: ping and an iperf3 run through VXLAN,
//! ping through host-gw.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod backend_util;

use backend_util::*;
use felt_common::testutil::ChildGuard;
use overlayd::backend::hostgw::HostGwBackend;
use overlayd::backend::vxlan::VxlanBackend;
use overlayd::backend::{Backend, Prepared};
use overlayd::lease::Lease;
use overlayd::reconcile::RoundReport;
use std::process::Stdio;
use std::sync::Arc;

#[derive(Clone, Copy)]
enum Kind {
    Vxlan,
    HostGw,
}

fn new_backend(kind: Kind) -> Box<dyn Backend> {
    match kind {
        Kind::Vxlan => Box::new(VxlanBackend::new(vxlan_cfg()).unwrap()),
        Kind::HostGw => Box::new(HostGwBackend::new()),
    }
}

fn prepare(node: &Node, kind: Kind) -> Prepared {
    let ext = node.ext.clone();
    block_in(&node.ns, move || async move {
        new_backend(kind).prepare(&ext).await.unwrap()
    })
}

/// What the daemon does on a node: prepare, configure own, one round.
fn converge(node: &Node, kind: Kind, own: Lease, peers: Vec<Lease>) -> RoundReport {
    let ext = node.ext.clone();
    block_in(&node.ns, move || async move {
        let mut b = new_backend(kind);
        b.prepare(&ext).await.unwrap();
        b.configure_own(&own).await.unwrap();
        let backend: Arc<dyn Backend> = Arc::from(b);
        let mut all: Vec<&Lease> = peers.iter().collect();
        all.push(&own);
        let snap = snapshot(&all);
        let mut rec = reconciler(backend, own, NETWORK.parse().unwrap());
        rec.round(&snap, true).await
    })
}

/// A pod-side address: `cni0` bridge with the subnet's first address.
fn pod_side(node: &Node, addr: &str) {
    node.ns
        .exec_ok(&["ip", "link", "add", "cni0", "type", "bridge"]);
    node.ns.exec_ok(&["ip", "addr", "add", addr, "dev", "cni0"]);
    node.ns.exec_ok(&["ip", "link", "set", "cni0", "up"]);
}

/// Sets up both nodes with `kind`; returns them ready for traffic.
fn cluster(tag: &str, kind: Kind) -> (Node, Node) {
    let (a, b) = two_nodes(tag, "192.168.60.1/24", "192.168.60.2/24");
    pod_side(&a, "10.244.1.1/24");
    pod_side(&b, "10.244.2.1/24");
    let type_name = match kind {
        Kind::Vxlan => "vxlan",
        Kind::HostGw => "host-gw",
    };
    let (pa, pb) = (prepare(&a, kind), prepare(&b, kind));
    let la = lease("10.244.1.0/24", "192.168.60.1", type_name, pa.backend_data);
    let lb = lease("10.244.2.0/24", "192.168.60.2", type_name, pb.backend_data);
    for (node, own, peer) in [(&a, &la, &lb), (&b, &lb, &la)] {
        let report = converge(node, kind, own.clone(), vec![peer.clone()]);
        assert_eq!(report.failed, 0, "{report:?}");
        assert!(report.problems.is_empty(), "{report:?}");
    }
    (a, b)
}

/// Pings B's pod-side address from A's and returns the average RTT (ms).
fn ping_across(a: &Node) -> f64 {
    let out = a.ns.exec_ok(&[
        "ping",
        "-c",
        "5",
        "-i",
        "0.2",
        // Per reply, generous for a loaded machine; a lost packet still fails.
        "-W",
        "5",
        "-I",
        "10.244.1.1",
        "10.244.2.1",
    ]);
    assert!(out.contains("5 received"), "{out}");
    let rtt = out.lines().find(|l| l.contains("min/avg/max")).unwrap();
    rtt.split('=')
        .nth(1)
        .unwrap()
        .trim()
        .split('/')
        .nth(1)
        .unwrap()
        .parse()
        .unwrap()
}

fn tx_packets(node: &Node, dev: &str) -> u64 {
    let v = json(&node.ns, &["ip", "-s", "-j", "link", "show", dev]);
    v[0]["stats64"]["tx"]["packets"].as_u64().unwrap()
}

#[test]
fn ping_and_iperf3_across_vxlan() {
    let (a, b) = cluster("tnvx", Kind::Vxlan);
    let before = tx_packets(&a, "flannel.1");
    let rtt = ping_across(&a);
    assert!(
        tx_packets(&a, "flannel.1") >= before + 5,
        "traffic did not go through flannel.1"
    );
    eprintln!("vxlan: ping 10.244.1.1 -> 10.244.2.1 avg rtt {rtt} ms");

    let mut server = b.ns.command("iperf3");
    server.args(["-s", "-1", "-B", "10.244.2.1", "-p", "5201"]);
    server.stdout(Stdio::null()).stderr(Stdio::null());
    let _server = ChildGuard::spawn(server, "iperf3 server");
    let mut result = None;
    wait_until(PATIENCE, || {
        let out = a.ns.exec(&[
            "iperf3",
            "-c",
            "10.244.2.1",
            "-B",
            "10.244.1.1",
            "-p",
            "5201",
            "-t",
            "2",
            "-J",
        ]);
        // iperf3 -J may exit 0 with {"error": ...} while the server starts.
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
        if out.status.success() && v.get("error").is_none() {
            result = Some(v);
        }
        result.is_some()
    });
    let result = result.expect("iperf3 never connected");
    let bps = result["end"]["sum_received"]["bits_per_second"]
        .as_f64()
        .unwrap_or_else(|| panic!("{result}"));
    eprintln!(
        "vxlan: iperf3 TCP 10.244.1.1 -> 10.244.2.1: {:.0} Mbit/s",
        bps / 1e6
    );
    assert!(bps > 0.0);
}

#[test]
fn ping_across_host_gw() {
    let (a, _b) = cluster("tnhg", Kind::HostGw);
    let r = route_to(&a.ns, "10.244.2.0/24").unwrap();
    assert_eq!(
        (r["gateway"].as_str(), r["dev"].as_str()),
        (Some("192.168.60.2"), Some("ua"))
    );
    let rtt = ping_across(&a);
    eprintln!("host-gw: ping 10.244.1.1 -> 10.244.2.1 avg rtt {rtt} ms");
}

#[test]
fn without_the_peer_route_there_is_no_path() {
    // The control: the same topology without felt's objects does not
    // route, so the ping tests above prove felt's datapath.
    let (a, b) = two_nodes("tnctl", "192.168.60.1/24", "192.168.60.2/24");
    pod_side(&a, "10.244.1.1/24");
    pod_side(&b, "10.244.2.1/24");
    let out = a.ns.exec(&[
        "ping",
        "-c",
        "1",
        "-W",
        "1",
        "-I",
        "10.244.1.1",
        "10.244.2.1",
    ]);
    assert!(!out.status.success());
}
