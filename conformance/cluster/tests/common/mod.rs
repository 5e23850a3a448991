//! Shared by the cluster tests: cluster set-up and the assertions every
//! test repeats.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use felt_cluster::process::Daemon;
use felt_cluster::{Backend, Cluster, Naming, VTEP};
use felt_common::kernel_monitor::{Event, KernelMonitor, Kind};
use nix::sys::signal::Signal;
use std::time::{Duration, SystemTime};

/// How long a cluster may take to route between its nodes.
pub const CONVERGE: Duration = Duration::from_secs(10);

/// Root is needed for network namespaces; fail clearly otherwise.
pub fn require_root() {
    assert!(
        nix::unistd::geteuid().is_root(),
        "the cluster tests create network namespaces and must run as root"
    );
}

/// A cluster with `nodes` running nodes and `pods` pods on each, routes
/// converged.
pub fn cluster(backend: Backend, nodes: usize, pods: usize) -> Cluster {
    cluster_with(backend, nodes, pods, &[])
}

/// [`cluster`] with `flags` for every overlayd.
pub fn cluster_with(backend: Backend, nodes: usize, pods: usize, flags: &[&str]) -> Cluster {
    require_root();
    let mut c = Cluster::start(Naming::test(), backend, None).unwrap();
    c.set_overlayd_flags(flags);
    let idx = c.add_running_nodes(nodes).unwrap();
    for &n in &idx {
        for _ in 0..pods {
            c.add_pod(n).unwrap();
        }
    }
    c.wait_mesh(&idx, CONVERGE).unwrap();
    c
}

/// Every pod reaches every other pod with one ping.
pub fn assert_pods_ping(c: &Cluster) {
    let matrix = c.ping_matrix(2);
    let mut failed = Vec::new();
    for (i, row) in matrix.iter().enumerate() {
        for (j, res) in row.iter().enumerate() {
            let ok = matches!(res, Ok(p) if p.ok);
            if !ok {
                failed.push(format!(
                    "{} ({}) -> {} ({}): {res:?}",
                    c.pods[i].name, c.pods[i].ip, c.pods[j].name, c.pods[j].ip
                ));
            }
        }
    }
    assert!(failed.is_empty(), "pings failed:\n{}", failed.join("\n"));
}

/// Kernel change events that concern the overlay: every link, address and
/// route event, and neighbour/FDB events on the VTEP. Left out are the
/// kernel's own reactions: ARP on eth0 and cni0 and the bridge learning
/// pod MACs (traffic), and IPv6 link-local addresses finishing duplicate
/// address detection a second or two after a link came up.
pub fn overlay_changes(events: Vec<Event>) -> Vec<Event> {
    events
        .into_iter()
        .filter(|e| e.kind != Kind::Neigh || e.dev() == Some(VTEP))
        .filter(|e| !e.is_ipv6_link_local())
        .collect()
}

/// Adds a node, starts its overlayd and waits for the full mesh; returns
/// the node and how long after its subnet.env was written the last route
/// between it and every other node was announced by the kernels (an `ip
/// monitor` in each node, started before the join). Polling the mesh and
/// pinging spawn processes, which on a loaded machine take longer than
/// felt does; the monitors' stamps time felt alone.
pub fn join_timed(c: &mut Cluster) -> (usize, Duration) {
    let others: Vec<usize> = (0..c.nodes.len()).collect();
    let new = c.add_node().unwrap();
    let monitors: Vec<_> = others
        .iter()
        .chain([&new])
        .map(|&i| (i, monitor_node(c, i, "join")))
        .collect();
    c.start_overlayd(new, &[]).unwrap();
    c.node_mut(new)
        .unwrap()
        .wait_subnet_env(SystemTime::UNIX_EPOCH, CONVERGE)
        .unwrap();
    let mut all = others.clone();
    all.push(new);
    c.wait_mesh(&all, CONVERGE).unwrap();
    let written = std::fs::metadata(c.nodes[new].subnet_file())
        .unwrap()
        .modified()
        .unwrap();
    let subnet = |i: usize| c.nodes[i].subnet().unwrap().to_string();
    let mut last = written;
    for (at, monitor) in &monitors {
        let events = monitor.events();
        let peers = if *at == new {
            others.clone()
        } else {
            vec![new]
        };
        for peer in peers {
            let dst = subnet(peer);
            let added = events
                .iter()
                .filter(|e| e.kind == Kind::Route && !e.deleted)
                .filter(|e| e.subject() == Some(dst.as_str()))
                .filter_map(|e| e.at)
                .next_back()
                .unwrap_or_else(|| panic!("node{}: no route to {dst} announced", at + 1));
            last = last.max(added);
        }
    }
    (new, last.duration_since(written).unwrap_or_default())
}

/// A kernel monitor in node `i`'s namespace, logging into the cluster dir.
pub fn monitor_node(c: &Cluster, i: usize, tag: &str) -> KernelMonitor {
    let node = &c.nodes[i];
    let log = c.dir().join(format!("monitor-{}-{tag}.log", node.name));
    KernelMonitor::start(node.ns.name(), &log)
}

/// `ping -i <interval>` from pod `from` to pod `to` in the background.
pub fn start_pinger(c: &Cluster, from: usize, to: usize, tag: &str, interval: &str) -> Daemon {
    let mut cmd = c.pods[from].ns.command("ping");
    cmd.args(["-n", "-i", interval, &c.pods[to].ip.to_string()]);
    Daemon::spawn(cmd, "ping", &c.dir().join(format!("ping-{tag}.log"))).unwrap()
}

/// Stops a pinger; returns (transmitted, received).
pub fn stop_pinger(pinger: Daemon) -> (u32, u32) {
    let log = pinger.log_path().to_path_buf();
    pinger.stop(Signal::SIGINT, Duration::from_secs(2)).unwrap();
    let text = felt_cluster::process::read_log(&log);
    // "123 packets transmitted, 123 received, 0% packet loss, time 2460ms"
    let line = text
        .lines()
        .find(|l| l.contains("packets transmitted"))
        .unwrap_or_else(|| panic!("no ping summary in {text}"));
    let nums: Vec<u32> = line
        .split(|ch: char| !ch.is_ascii_digit())
        .filter_map(|s| s.parse().ok())
        .collect();
    (nums[0], nums[1])
}

/// Waits until node `i` answers 200 on /readyz; how long that took.
pub fn wait_ready(c: &Cluster, i: usize) -> Duration {
    let node = &c.nodes[i];
    let mut last = String::new();
    felt_cluster::wait::wait_for("/readyz 200", CONVERGE, || {
        let (ok, body) = node.readyz().unwrap_or((false, "no answer".into()));
        last = body;
        Ok(ok)
    })
    .unwrap_or_else(|e| panic!("{}: {e}: {last}", node.name))
}
