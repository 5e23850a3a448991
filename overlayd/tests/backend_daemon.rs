//! The datapath through the real daemon: two nodes (namespaces) joined by
//! a veth underlay, etcd on node A's underlay address, one overlayd per
//! node. Pods' addresses reach each other over VXLAN; a daemon restart
//! deletes nothing in the kernel (no flap); a node whose lease vanishes
//! is unrouted.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod backend_util;

use backend_util::*;
use felt_common::kernel_monitor::{Event, KernelMonitor, Kind};
use felt_common::testutil::ChildGuard;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

const ETCD: &str = "http://192.168.80.1:2379";

/// A scratch directory removed on drop.
struct Scratch(PathBuf);

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn logged(mut cmd: Command, log: &Path, what: &str) -> ChildGuard {
    let out = File::create(log).unwrap();
    cmd.stdout(out.try_clone().unwrap()).stderr(out);
    ChildGuard::spawn(cmd, what)
}

fn etcdctl(node: &Node, args: &[&str]) -> std::process::Output {
    let mut argv = vec!["etcdctl", "--endpoints", ETCD];
    argv.extend_from_slice(args);
    node.ns.exec(&argv)
}

fn start_etcd(a: &Node, dir: &Path) -> ChildGuard {
    let peer = "http://127.0.0.1:2380";
    let mut cmd = a.ns.command("etcd");
    let data = dir.join("etcd");
    cmd.args(["--name", "t", "--data-dir", data.to_str().unwrap()]);
    cmd.args([
        "--listen-client-urls",
        ETCD,
        "--advertise-client-urls",
        ETCD,
    ]);
    cmd.args([
        "--listen-peer-urls",
        peer,
        "--initial-advertise-peer-urls",
        peer,
    ]);
    cmd.args([
        "--initial-cluster",
        &format!("t={peer}"),
        "--log-level",
        "error",
    ]);
    let guard = logged(cmd, &dir.join("etcd.log"), "etcd");
    let config = r#"{"Network":"10.244.0.0/16","Backend":{"Type":"vxlan"}}"#;
    let ok = wait_until(Duration::from_secs(20), || {
        etcdctl(a, &["put", "/coreos.com/network/config", config])
            .status
            .success()
    });
    assert!(ok.is_some(), "etcd did not come up");
    guard
}

fn start_overlayd(node: &Node, dir: &Path, name: &str, log: &str) -> ChildGuard {
    let mut cmd = node.ns.command(env!("CARGO_BIN_EXE_overlayd"));
    let subnet_file = dir.join(format!("subnet-{name}.env"));
    cmd.args(["--etcd-endpoints", ETCD, "--iface", &node.ext.name]);
    cmd.args([
        "--subnet-file",
        subnet_file.to_str().unwrap(),
        "--resync-interval",
        "2s",
    ]);
    cmd.env("RUST_LOG", "overlayd=debug");
    logged(cmd, &dir.join(log), "overlayd")
}

/// FLANNEL_SUBNET from the node's subnet.env, once it exists.
fn flannel_subnet(dir: &Path, name: &str) -> String {
    let path = dir.join(format!("subnet-{name}.env"));
    let mut subnet = None;
    wait_until(Duration::from_secs(20), || {
        let text = std::fs::read_to_string(&path).unwrap_or_default();
        subnet = text
            .lines()
            .find_map(|l| l.strip_prefix("FLANNEL_SUBNET="))
            .map(str::to_string);
        subnet.is_some()
    });
    subnet.unwrap_or_else(|| panic!("{} never written", path.display()))
}

fn pod_side(node: &Node, addr: &str) {
    node.ns
        .exec_ok(&["ip", "link", "add", "cni0", "type", "bridge"]);
    node.ns.exec_ok(&["ip", "addr", "add", addr, "dev", "cni0"]);
    node.ns.exec_ok(&["ip", "link", "set", "cni0", "up"]);
}

fn ping_ok(from: &Node, src: &str, dst: &str) -> bool {
    let out = from
        .ns
        .exec(&["ping", "-c", "1", "-W", "1", "-I", src, dst]);
    out.status.success()
}

fn sigterm_and_wait(mut guard: ChildGuard) {
    kill(Pid::from_raw(guard.pid() as i32), Signal::SIGTERM).unwrap();
    let status = guard.child.wait().unwrap();
    assert!(status.success(), "overlayd exited with {status} on SIGTERM");
}

fn host(cidr: &str) -> &str {
    cidr.split('/').next().unwrap()
}

#[test]
fn two_daemons_route_pods_restart_without_flap_and_unroute_a_gone_node() {
    let dir = Scratch(std::env::temp_dir().join(format!("felt-bkd-{}", std::process::id())));
    std::fs::create_dir_all(&dir.0).unwrap();
    let (a, b) = two_nodes("bkd", "192.168.80.1/24", "192.168.80.2/24");
    let _etcd = start_etcd(&a, &dir.0);
    let da = start_overlayd(&a, &dir.0, "a", "a1.log");
    let db = start_overlayd(&b, &dir.0, "b", "b1.log");
    let (sa, sb) = (flannel_subnet(&dir.0, "a"), flannel_subnet(&dir.0, "b"));
    pod_side(&a, &sa);
    pod_side(&b, &sb);
    let t = wait_until(PATIENCE, || ping_ok(&a, host(&sa), host(&sb)));
    let t = t.unwrap_or_else(|| panic!("no path {sa} -> {sb}"));
    eprintln!(
        "daemons up: first ping across VXLAN after {} ms",
        t.as_millis()
    );

    // Restart A under a kernel monitor: the kernel must report no change
    // to anything of the overlay's (the VTEP, its neighbours and FDB, the
    // pod-network routes). ARP on other devices is traffic, not a change.
    let monitor = KernelMonitor::start(&a.ns.name, &dir.0.join("monitor.log"));
    sigterm_and_wait(da);
    let da = start_overlayd(&a, &dir.0, "a", "a2.log");
    // Only a round on a real listing may delete: wait for one, so the
    // check below covers the whole restart, not just its first round.
    let restarted = wait_until(PATIENCE, || {
        let log = std::fs::read_to_string(dir.0.join("a2.log")).unwrap_or_default();
        log.lines()
            .any(|l| l.contains("full pass") && l.contains("prune=true"))
    });
    assert!(
        restarted.is_some(),
        "restarted daemon did not reconcile a listing"
    );
    assert!(
        wait_until(PATIENCE, || ping_ok(&a, host(&sa), host(&sb))).is_some(),
        "path lost across restart"
    );
    let changes: Vec<Event> = monitor
        .events()
        .into_iter()
        .filter(|e| e.kind != Kind::Neigh || e.dev() == Some("flannel.1"))
        .filter(|e| !e.is_ipv6_link_local())
        .collect();
    drop(monitor);
    assert!(
        changes.is_empty(),
        "the restart changed kernel state: {changes:#?}"
    );

    // B goes away for good: its lease key is deleted; A unroutes it.
    drop(db);
    let b_net = sb.parse::<ipnet::Ipv4Net>().unwrap().trunc().to_string();
    let b_key = format!("/coreos.com/network/subnets/{}", b_net.replace('/', "-"));
    let deleted = String::from_utf8(etcdctl(&a, &["del", &b_key]).stdout).unwrap();
    assert_eq!(deleted.trim(), "1", "lease key {b_key} not found");
    let gone = wait_until(PATIENCE, || route_to(&a.ns, &b_net).is_none());
    let gone = gone.unwrap_or_else(|| panic!("route to {b_net} kept after its lease was deleted"));
    eprintln!(
        "lease deleted -> route removed after {} ms",
        gone.as_millis()
    );
    assert!(neighbours(&a.ns, "flannel.1").is_empty());
    drop(da);
}
