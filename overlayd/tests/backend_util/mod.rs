//! Helpers for the backend tests: a "node" is a throwaway network
//! namespace with an underlay interface; backend code runs on a thread
//! that entered the namespace (netlink sockets bind to the namespace of
//! the thread that opens them).
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use felt_common::netns::{open_netns, NetnsGuard};
use felt_common::testutil::TestNetns;
use overlayd::backend::vxlan::VxlanBackend;
use overlayd::backend::{Backend, ExternalInterface};
use overlayd::config::VxlanConfig;
use overlayd::lease::{Lease, LeaseAttrs, LeaseSnapshot, Term};
use overlayd::metrics::Metrics;
use overlayd::reconcile::{Reconciler, RoundReport};
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

pub const NETWORK: &str = "10.244.0.0/16";

/// A namespace standing in for one node.
pub struct Node {
    pub ns: TestNetns,
    pub ext: ExternalInterface,
}

/// Runs `f` to completion on a fresh thread inside `ns`, with a tokio
/// runtime whose threads are created inside the namespace too.
pub fn block_in<T, F, Fut>(ns: &TestNetns, f: F) -> T
where
    T: Send + 'static,
    F: FnOnce() -> Fut + Send + 'static,
    Fut: Future<Output = T>,
{
    let path = ns.path();
    let worker = std::thread::spawn(move || {
        let file = open_netns(&path).unwrap();
        let _guard = NetnsGuard::enter(&file, &path).unwrap();
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let out = rt.block_on(f());
        // Stop the runtime (and its workers) before leaving the namespace.
        rt.shutdown_timeout(Duration::from_secs(2));
        out
    });
    match worker.join() {
        Ok(v) => v,
        Err(panic) => std::panic::resume_unwind(panic),
    }
}

/// A node whose external interface `e0` (one end of a veth pair whose
/// other end `e1` stays in the same namespace) has `addr`.
pub fn single_node(tag: &str, addr: &str) -> Node {
    let ns = TestNetns::new(tag);
    ns.exec_ok(&[
        "ip", "link", "add", "e0", "type", "veth", "peer", "name", "e1",
    ]);
    ns.exec_ok(&["ip", "addr", "add", addr, "dev", "e0"]);
    ns.exec_ok(&["ip", "link", "set", "e0", "up"]);
    ns.exec_ok(&["ip", "link", "set", "e1", "up"]);
    let ext = ext_iface(&ns, "e0", addr);
    Node { ns, ext }
}

/// Two nodes joined by a veth underlay: `ua` in A, `ub` in B.
pub fn two_nodes(tag: &str, addr_a: &str, addr_b: &str) -> (Node, Node) {
    let a = TestNetns::new(&format!("{tag}a"));
    let b = TestNetns::new(&format!("{tag}b"));
    a.exec_ok(&[
        "ip", "link", "add", "ua", "type", "veth", "peer", "name", "ub", "netns", &b.name,
    ]);
    for (ns, dev, addr) in [(&a, "ua", addr_a), (&b, "ub", addr_b)] {
        ns.exec_ok(&["ip", "addr", "add", addr, "dev", dev]);
        ns.exec_ok(&["ip", "link", "set", dev, "up"]);
    }
    let ext_a = ext_iface(&a, "ua", addr_a);
    let ext_b = ext_iface(&b, "ub", addr_b);
    (Node { ns: a, ext: ext_a }, Node { ns: b, ext: ext_b })
}

fn ext_iface(ns: &TestNetns, name: &str, addr: &str) -> ExternalInterface {
    let ip = addr.split('/').next().unwrap().parse().unwrap();
    let link = link_json(ns, name);
    ExternalInterface {
        name: name.into(),
        index: link["ifindex"].as_u64().unwrap() as u32,
        iface_addr: ip,
        public_ip: ip,
        mtu: link["mtu"].as_u64().unwrap() as u32,
    }
}

/// `ip -d -j link show <name>` as JSON (the object, not the array).
pub fn link_json(ns: &TestNetns, name: &str) -> serde_json::Value {
    let out = ns.exec_ok(&["ip", "-d", "-j", "link", "show", name]);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    v[0].clone()
}

pub fn ifindex(ns: &TestNetns, name: &str) -> u32 {
    link_json(ns, name)["ifindex"].as_u64().unwrap() as u32
}

/// Parses the JSON output of `argv` run inside `ns`.
pub fn json(ns: &TestNetns, argv: &[&str]) -> Vec<serde_json::Value> {
    let out = ns.exec_ok(argv);
    if out.trim().is_empty() {
        return Vec::new();
    }
    serde_json::from_str(&out).unwrap()
}

pub fn routes(ns: &TestNetns) -> Vec<serde_json::Value> {
    json(ns, &["ip", "-j", "-4", "route", "show", "table", "main"])
}

/// The main-table route to `dst` (e.g. "10.244.2.0/24"), if any.
pub fn route_to(ns: &TestNetns, dst: &str) -> Option<serde_json::Value> {
    routes(ns).into_iter().find(|r| r["dst"] == dst)
}

pub fn neighbours(ns: &TestNetns, dev: &str) -> Vec<serde_json::Value> {
    json(ns, &["ip", "-j", "-4", "neigh", "show", "dev", dev])
}

pub fn fdb(ns: &TestNetns, dev: &str) -> Vec<serde_json::Value> {
    json(ns, &["bridge", "-j", "fdb", "show", "dev", dev])
}

pub fn vxlan_cfg() -> VxlanConfig {
    VxlanConfig {
        vni: 1,
        port: 0,
        mtu: None,
        gbp: false,
        learning: false,
        direct_routing: false,
    }
}

pub fn lease(subnet: &str, public_ip: &str, kind: &str, data: serde_json::Value) -> Lease {
    Lease {
        subnet: subnet.parse().unwrap(),
        ipv6_subnet: None,
        attrs: LeaseAttrs {
            public_ip: public_ip.parse().unwrap(),
            public_ipv6: None,
            backend_type: kind.into(),
            backend_data: data.into(),
            backend_v6_data: None,
        },
        term: Term::Reservation,
    }
}

pub fn vxlan_data(mac: &str) -> serde_json::Value {
    serde_json::json!({"VNI": 1, "VtepMAC": mac})
}

pub fn snapshot(leases: &[&Lease]) -> Arc<LeaseSnapshot> {
    Arc::new(leases.iter().map(|l| (*l).clone()).collect())
}

/// How long tests wait for something that normally takes milliseconds:
/// generous, because CI runs them on 2 loaded cores next to other
/// suites; a condition that never holds still fails the test.
pub const PATIENCE: Duration = Duration::from_secs(20);

/// Polls `check` every 20 ms until it holds; the time it took, or `None`
/// after `timeout`.
pub fn wait_until(timeout: Duration, mut check: impl FnMut() -> bool) -> Option<Duration> {
    let start = Instant::now();
    while start.elapsed() < timeout {
        if check() {
            return Some(start.elapsed());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    None
}

// ---- vxlan peers used by the reconcile tests ----

pub const MAC_B: &str = "0a:00:00:00:00:02";
pub const MAC_C: &str = "0a:00:00:00:00:03";
pub const STALE_MAC: &str = "0a:00:00:00:00:09";

pub fn own(node: &Node, kind: &str) -> Lease {
    lease(
        "10.244.1.0/24",
        &node.ext.public_ip.to_string(),
        kind,
        serde_json::Value::Null,
    )
}

pub fn peer_b() -> Lease {
    lease("10.244.2.0/24", "192.168.50.2", "vxlan", vxlan_data(MAC_B))
}

pub fn peer_c() -> Lease {
    lease("10.244.3.0/24", "192.168.50.3", "vxlan", vxlan_data(MAC_C))
}

/// Prepares a vxlan backend and runs one round per snapshot.
pub fn vxlan_rounds(node: &Node, snapshots: Vec<Arc<LeaseSnapshot>>) -> Vec<RoundReport> {
    let ext = node.ext.clone();
    let own = own(node, "vxlan");
    block_in(&node.ns, move || async move {
        let mut rec = vxlan_reconciler(&ext, own).await;
        let mut reports = Vec::new();
        for s in snapshots {
            reports.push(rec.round(&s, true).await);
        }
        reports
    })
}

/// Prepares a vxlan backend, runs a full pass on `first`, then one
/// incremental pass per later snapshot (each a new listing of the same
/// watch), and finally a full pass on the last snapshot: its report shows
/// what the incremental passes left undone (nothing, when they were right).
pub fn vxlan_incremental(
    node: &Node,
    first: Arc<LeaseSnapshot>,
    rest: Vec<Arc<LeaseSnapshot>>,
) -> (Vec<RoundReport>, RoundReport) {
    let ext = node.ext.clone();
    let own = own(node, "vxlan");
    block_in(&node.ns, move || async move {
        let mut rec = vxlan_reconciler(&ext, own).await;
        rec.round(&first, true).await;
        let mut reports = Vec::new();
        let mut last = first;
        for s in rest {
            reports.push(rec.incremental(&s).await);
            last = s;
        }
        let check = rec.round(&last, true).await;
        (reports, check)
    })
}

pub fn assert_peer_programmed(node: &Node, subnet_addr: &str, mac: &str, public_ip: &str) {
    let neigh = neighbours(&node.ns, "flannel.1");
    let n = neigh
        .iter()
        .find(|n| n["dst"] == subnet_addr)
        .unwrap_or_else(|| panic!("{neigh:?}"));
    assert_eq!(n["lladdr"], mac);
    assert_eq!(n["state"][0], "PERMANENT");
    let fdb = fdb(&node.ns, "flannel.1");
    let f = fdb
        .iter()
        .find(|f| f["mac"] == mac)
        .unwrap_or_else(|| panic!("{fdb:?}"));
    assert_eq!(f["dst"], public_ip);
    assert_eq!(f["state"], "permanent");
    assert!(
        f["flags"].as_array().unwrap().iter().any(|x| x == "self"),
        "{f}"
    );
    let r = route_to(&node.ns, &format!("{subnet_addr}/24")).unwrap();
    assert_eq!(r["gateway"], subnet_addr);
    assert_eq!(r["dev"], "flannel.1");
    assert!(
        r["flags"].as_array().unwrap().iter().any(|x| x == "onlink"),
        "{r}"
    );
}

/// A reconciler for the test network (/24 subnets) with its own metrics.
pub fn reconciler(backend: Arc<dyn Backend>, own: Lease, network: ipnet::Ipv4Net) -> Reconciler {
    Reconciler::new(backend, own, network, 24, Arc::new(Metrics::new())).unwrap()
}

/// A reconciler over a vxlan backend prepared on `ext` with lease `own`
/// (call it inside the node's namespace).
pub async fn vxlan_reconciler(ext: &ExternalInterface, own: Lease) -> Reconciler {
    let mut b = VxlanBackend::new(vxlan_cfg()).unwrap();
    b.prepare(ext).await.unwrap();
    b.configure_own(&own).await.unwrap();
    let backend: Arc<dyn Backend> = Arc::from(Box::new(b) as Box<dyn Backend>);
    reconciler(backend, own, NETWORK.parse().unwrap())
}
