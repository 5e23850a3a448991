//! A namespace rig for the udp datapath, shared by its tests and the
//! benchmark (`examples/udp-bench.rs`).
//!
//! A "lan" namespace holds a bridge (the underlay). Node i gets a netns
//! with `eth0` = 192.168.77.i/24 on that bridge, subnet 10.244.i.0/24,
//! and a pod netns behind it (`eth0` 10.244.i.2, default via
//! 10.244.i.1 on the node's `pod0`), as a CNI bridge would give. Traffic
//! runs pod to pod, so the node forwards it like a real node does, and
//! TCP segments reach flannel0 as TSO frames from the pod's veth.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use felt_common::netns::{open_netns, NetnsGuard};
use felt_common::testutil::{ChildGuard, TestNetns};
use ipnet::Ipv4Net;
use overlayd::backend::udp::{Engine, EngineConfig, Features, StatsSnapshot};
use std::net::{Ipv4Addr, SocketAddrV4};
use std::process::Stdio;
use std::time::{Duration, Instant};

pub const NETWORK: &str = "10.244.0.0/16";
pub const PORT: u16 = 8285;
pub const UNDERLAY_MTU: u32 = 1500;
pub const TUN_MTU: u32 = UNDERLAY_MTU - 28;

pub struct Node {
    pub idx: u8,
    pub pod: TestNetns,
    pub ns: TestNetns,
}

impl Node {
    pub fn underlay_ip(&self) -> Ipv4Addr {
        Ipv4Addr::new(192, 168, 77, self.idx)
    }
    pub fn subnet(&self) -> Ipv4Net {
        format!("10.244.{}.0/24", self.idx).parse().unwrap()
    }
    pub fn pod_ip(&self) -> Ipv4Addr {
        Ipv4Addr::new(10, 244, self.idx, 2)
    }
}

pub struct Rig {
    pub nodes: Vec<Node>,
    pub lan: TestNetns,
}

/// Runs `f` on a thread inside `ns` (sockets and TUN devices belong to
/// the namespace of the thread that creates them).
pub fn in_netns<T: Send + 'static>(ns: &TestNetns, f: impl FnOnce() -> T + Send + 'static) -> T {
    let path = ns.path();
    std::thread::spawn(move || {
        let file = open_netns(&path).unwrap();
        let _guard = NetnsGuard::enter(&file, &path).unwrap();
        f()
    })
    .join()
    .unwrap_or_else(|p| std::panic::resume_unwind(p))
}

impl Rig {
    /// `n` nodes with pods whose MTU is `pod_mtu`.
    pub fn new(tag: &str, n: u8, pod_mtu: u32) -> Rig {
        let lan = TestNetns::new(&format!("{tag}-lan"));
        lan.exec_ok(&["ip", "link", "add", "br0", "type", "bridge"]);
        lan.exec_ok(&["ip", "link", "set", "br0", "up"]);
        let nodes = (1..=n).map(|i| Self::node(tag, &lan, i, pod_mtu)).collect();
        Rig { nodes, lan }
    }

    /// Plugs `ns` into the bridge as `eth0` with `addr` (e.g. "192.168.77.9/24").
    pub fn attach(lan: &TestNetns, ns: &TestNetns, port: &str, addr: &str) {
        lan.exec_ok(&[
            "ip", "link", "add", port, "type", "veth", "peer", "name", "eth0", "netns", &ns.name,
        ]);
        lan.exec_ok(&["ip", "link", "set", port, "master", "br0", "up"]);
        ns.exec_ok(&["ip", "addr", "add", addr, "dev", "eth0"]);
        ns.exec_ok(&["ip", "link", "set", "eth0", "up"]);
    }

    fn node(tag: &str, lan: &TestNetns, i: u8, pod_mtu: u32) -> Node {
        let ns = TestNetns::new(&format!("{tag}-n{i}"));
        let pod = TestNetns::new(&format!("{tag}-p{i}"));
        Self::attach(lan, &ns, &format!("n{i}"), &format!("192.168.77.{i}/24"));
        ns.exec_ok(&["sysctl", "-qw", "net.ipv4.ip_forward=1"]);
        ns.exec_ok(&[
            "ip", "link", "add", "pod0", "type", "veth", "peer", "name", "eth0", "netns", &pod.name,
        ]);
        let mtu = pod_mtu.to_string();
        ns.exec_ok(&["ip", "link", "set", "pod0", "mtu", &mtu, "up"]);
        ns.exec_ok(&[
            "ip",
            "addr",
            "add",
            &format!("10.244.{i}.1/24"),
            "dev",
            "pod0",
        ]);
        pod.exec_ok(&["ip", "link", "set", "eth0", "mtu", &mtu, "up"]);
        pod.exec_ok(&[
            "ip",
            "addr",
            "add",
            &format!("10.244.{i}.2/24"),
            "dev",
            "eth0",
        ]);
        pod.exec_ok(&[
            "ip",
            "route",
            "add",
            "default",
            "via",
            &format!("10.244.{i}.1"),
        ]);
        Node { idx: i, pod, ns }
    }

    /// GRO on every veth of the rig (receive side NAPI), so the underlay
    /// coalesces what crosses it; applied equally to vxlan and udp runs.
    pub fn set_veth_gro(&self, on: bool) {
        let v = if on { "on" } else { "off" };
        for n in &self.nodes {
            for (ns, dev) in [(&n.ns, "eth0"), (&n.ns, "pod0"), (&n.pod, "eth0")] {
                ns.exec_ok(&["ethtool", "-K", dev, "gro", v]);
            }
            self.lan
                .exec_ok(&["ethtool", "-K", &format!("n{}", n.idx), "gro", v]);
        }
    }
}

pub fn engine_cfg(node: &Node, features: Features) -> EngineConfig {
    EngineConfig {
        tun_name: "flannel0".into(),
        local: SocketAddrV4::new(node.underlay_ip(), PORT),
        own_subnet: node.subnet(),
        network: NETWORK.parse().unwrap(),
        subnet_len: 24,
        mtu: TUN_MTU,
        features,
    }
}

/// Starts the engine in the node and configures flannel0 the way the
/// reconciler does (address = subnet network address /32, MTU, up, one
/// route for the Network, accept_local), unless already so (restart).
pub fn start_engine(node: &Node, features: Features) -> Engine {
    let cfg = engine_cfg(node, features);
    let engine = in_netns(&node.ns, move || Engine::start(cfg)).unwrap();
    configure_flannel0(node);
    engine
}

/// flannel0's address (subnet network address /32), MTU, up state, the
/// Network route and accept_local, as the reconciler sets them; a no-op
/// for what is already there (restart).
pub fn configure_flannel0(node: &Node) {
    let addr = format!("{}/32", node.subnet().network());
    let shown = node
        .ns
        .exec_ok(&["ip", "-4", "-o", "addr", "show", "dev", "flannel0"]);
    if !shown.contains(&addr) {
        node.ns
            .exec_ok(&["ip", "addr", "add", &addr, "dev", "flannel0"]);
    }
    node.ns.exec_ok(&[
        "ip",
        "link",
        "set",
        "flannel0",
        "mtu",
        &TUN_MTU.to_string(),
        "up",
    ]);
    node.ns
        .exec_ok(&["ip", "route", "replace", NETWORK, "dev", "flannel0"]);
    // The ICMP net-unreachable comes from flannel0's own address; without
    // accept_local the kernel drops it as a martian (so does flannel's).
    node.ns
        .exec_ok(&["sysctl", "-qw", "net.ipv4.conf.flannel0.accept_local=1"]);
}

/// Every engine gets every other node as a peer.
pub fn full_mesh(nodes: &[&Node], engines: &[&Engine]) {
    for (i, e) in engines.iter().enumerate() {
        let peers = nodes
            .iter()
            .enumerate()
            .filter(|(j, _)| *j != i)
            .map(|(_, n)| (n.subnet(), n.underlay_ip()));
        assert!(e.set_peers(peers).is_empty());
    }
}

/// ping from `from`'s pod; returns (success, output).
pub fn ping(from: &TestNetns, dst: &str, count: u32) -> (bool, String) {
    let out = from.exec(&[
        "ping",
        "-n",
        "-c",
        &count.to_string(),
        "-i",
        "0.2",
        "-W",
        "2",
        dst,
    ]);
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

/// An iperf3 server in `pod` (one test, then it exits), ready to accept.
pub fn iperf_server(pod: &TestNetns, bind: Ipv4Addr) -> ChildGuard {
    let mut cmd = pod.command("iperf3");
    cmd.args(["-s", "-1", "-B", &bind.to_string()])
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    let guard = ChildGuard::spawn(cmd, "iperf3 server");
    // Ready when the listening socket exists (ss reads kernel state).
    let deadline = Instant::now() + Duration::from_secs(10);
    while !pod
        .exec_ok(&["ss", "-Hltn", "sport", "= :5201"])
        .contains("5201")
    {
        assert!(
            Instant::now() < deadline,
            "iperf3 server did not start listening"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    guard
}

/// Result of one iperf3 run.
#[derive(Debug, Clone, Copy)]
pub struct Iperf {
    pub bits_per_second: f64,
    pub bytes: f64,
    pub retransmits: u64,
}

pub fn iperf_client_cmd(
    pod: &TestNetns,
    server: Ipv4Addr,
    streams: u32,
    secs: u32,
) -> std::process::Command {
    let mut cmd = pod.command("iperf3");
    cmd.args([
        "-c",
        &server.to_string(),
        "-J",
        "-P",
        &streams.to_string(),
        "-t",
        &secs.to_string(),
    ]);
    cmd
}

pub fn parse_iperf(stdout: &[u8]) -> Iperf {
    let v: serde_json::Value = serde_json::from_slice(stdout).unwrap_or_else(|e| {
        panic!("iperf3 JSON: {e}: {}", String::from_utf8_lossy(stdout));
    });
    let recv = &v["end"]["sum_received"];
    Iperf {
        bits_per_second: recv["bits_per_second"].as_f64().unwrap_or(0.0),
        bytes: recv["bytes"].as_f64().unwrap_or(0.0),
        retransmits: v["end"]["sum_sent"]["retransmits"].as_u64().unwrap_or(0),
    }
}

/// TCP from pod `a` to pod `b` for `secs` seconds with `streams` streams.
pub fn iperf(a: &Node, b: &Node, streams: u32, secs: u32) -> Iperf {
    let _server = iperf_server(&b.pod, b.pod_ip());
    let out = iperf_client_cmd(&a.pod, b.pod_ip(), streams, secs)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "iperf3 client: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    parse_iperf(&out.stdout)
}

/// Waits (bounded) until the engine's counters satisfy `done`.
pub fn wait_for(e: &Engine, what: &str, done: impl Fn(&StatsSnapshot) -> bool) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let s = e.stats();
        if done(&s) {
            return;
        }
        assert!(Instant::now() < deadline, "{what}: counters stuck at {s:?}");
        std::thread::sleep(Duration::from_millis(10));
    }
}
