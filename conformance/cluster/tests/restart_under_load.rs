//! overlayd restarted (SIGTERM as in a rollout, SIGKILL as in a crash) on
//! a node while pods on two nodes talk through it: a TCP stream never
//! stalls for a second, a 10 ms ping loses nothing, and the kernel reports
//! no change to anything of the overlay's on either node, its masquerade
//! rules included.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code: failing loudly is the point

mod common;

use common::{
    cluster_with, monitor_node, overlay_changes, start_pinger, stop_pinger, wait_ready, CONVERGE,
};
use felt_cluster::stream::TcpStreamRun;
use felt_cluster::Backend;
use felt_common::kernel_monitor::NftMonitor;
use nix::sys::signal::Signal;
use std::time::{Duration, SystemTime};

fn restart_under_load(backend: Backend, signal: Signal) {
    let mut c = cluster_with(backend, 2, 1, &["--ip-masq"]);
    wait_ready(&c, 0);
    // The masquerade/forward rules (iptables-nft: nftables underneath)
    // must not be rewritten, let alone flushed, by the restart.
    let nft_log = c.dir().join("nft-monitor-node1.log");
    let rules = NftMonitor::start(c.nodes[0].ns.name(), &nft_log);
    let monitors = [monitor_node(&c, 0, "load"), monitor_node(&c, 1, "load")];
    let stream = TcpStreamRun::start(&c.pods[0].ns, &c.pods[1].ns, c.pods[1].ip).unwrap();
    let pinger = start_pinger(&c, 0, 1, "load", "0.01");
    std::thread::sleep(Duration::from_millis(500));
    let since = SystemTime::now();
    let how = c.node_mut(0).unwrap().stop_overlayd(signal).unwrap();
    std::thread::sleep(Duration::from_millis(300));
    c.start_overlayd(0, &[]).unwrap();
    c.node_mut(0)
        .unwrap()
        .wait_subnet_env(since, CONVERGE)
        .unwrap();
    let ready = wait_ready(&c, 0);
    // Let the restarted daemon run a while: a late full pass that wrongly
    // rewrote something would show up below.
    std::thread::sleep(Duration::from_millis(1500));
    let (sent, got) = stop_pinger(pinger);
    let report = stream.finish().unwrap();
    eprintln!(
        "{} {signal}: overlayd {how}, ready again after {ready:?}; stream {} bytes in {:?}, \
         longest gap {:?}; ping {got}/{sent}",
        backend.name(),
        report.bytes,
        report.elapsed,
        report.longest_gap
    );
    assert!(sent > 100, "only {sent} pings sent");
    assert_eq!(sent, got, "pings lost during the restart");
    assert!(
        report.longest_gap < Duration::from_secs(1),
        "the TCP stream stalled for {:?}",
        report.longest_gap
    );
    let rule_changes = rules.changes();
    assert!(
        rule_changes.is_empty(),
        "the restart changed the rules: {rule_changes:#?}"
    );
    for (i, m) in monitors.iter().enumerate() {
        let changes = overlay_changes(m.events());
        assert!(
            changes.is_empty(),
            "node{}: overlay changes during the restart: {changes:#?}",
            i + 1
        );
    }
}

#[test]
fn vxlan_sigterm_restart_under_load() {
    restart_under_load(Backend::Vxlan, Signal::SIGTERM);
}

#[test]
fn vxlan_sigkill_restart_under_load() {
    restart_under_load(Backend::Vxlan, Signal::SIGKILL);
}

#[test]
fn host_gw_sigterm_restart_under_load() {
    restart_under_load(Backend::HostGw, Signal::SIGTERM);
}

#[test]
fn host_gw_sigkill_restart_under_load() {
    restart_under_load(Backend::HostGw, Signal::SIGKILL);
}
