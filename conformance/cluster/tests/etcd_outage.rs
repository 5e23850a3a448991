//! etcd stopped for longer than 30 s and started again, pods talking all
//! along. Leases are short here (75 s, renewed with a 1 min margin, so a
//! renewal falls due every 15 s) so the outage outlasts a renewal point:
//! /readyz must say so (503, naming the overdue renewal) and only then,
//! and be 200 again once the lease is renewed. Traffic is unaffected, the
//! lease keeps its subnet, and a node joining afterwards is routed to
//! within a second.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code: failing loudly is the point

mod common;

use common::{cluster_with, start_pinger, stop_pinger, wait_ready, CONVERGE};
use felt_cluster::stream::TcpStreamRun;
use felt_cluster::{Backend, Cluster, ETCD_PREFIX};
use std::time::{Duration, Instant};

const OUTAGE: Duration = Duration::from_secs(35);

/// What /readyz said on each node during the outage: (ready, body) samples.
fn watch_readiness(c: &Cluster, for_: Duration) -> Vec<Vec<(bool, String)>> {
    let mut seen = vec![Vec::new(); c.nodes.len()];
    let start = Instant::now();
    while start.elapsed() < for_ {
        for (i, n) in c.nodes.iter().enumerate() {
            seen[i].push(n.readyz().unwrap());
        }
        std::thread::sleep(Duration::from_millis(250));
    }
    seen
}

#[test]
fn etcd_outage_keeps_traffic_tells_the_truth_and_renews_the_same_subnet() {
    let flags = ["--subnet-lease-ttl=75s", "--subnet-lease-renew-margin=1"];
    let mut c = cluster_with(Backend::Vxlan, 2, 1, &flags);
    for i in 0..2 {
        wait_ready(&c, i);
    }
    let keys: Vec<String> = c
        .nodes
        .iter()
        .map(|n| n.lease_key(ETCD_PREFIX).unwrap())
        .collect();
    let values: Vec<String> = keys
        .iter()
        .map(|k| c.etcd().get(k).unwrap().unwrap().value)
        .collect();
    let reconnects_before: Vec<f64> = c
        .nodes
        .iter()
        .map(|n| n.metric("felt_store_watch_reconnects_total").unwrap())
        .collect();
    let stream = TcpStreamRun::start(&c.pods[0].ns, &c.pods[1].ns, c.pods[1].ip).unwrap();
    let pinger = start_pinger(&c, 0, 1, "outage", "0.01");

    c.etcd_mut().stop().unwrap();
    let during = watch_readiness(&c, OUTAGE);
    c.etcd_mut().restart().unwrap();
    let back = Instant::now();
    for i in 0..2 {
        wait_ready(&c, i);
    }
    let renewed_after = back.elapsed();

    for (i, samples) in during.iter().enumerate() {
        let not_ready: Vec<&String> = samples
            .iter()
            .filter(|(ok, _)| !ok)
            .map(|(_, b)| b)
            .collect();
        assert!(
            !not_ready.is_empty(),
            "node{}: /readyz stayed 200 although the renewal was overdue",
            i + 1
        );
        for body in &not_ready {
            assert!(
                body.contains("[-] lease: renewal of") && body.contains("overdue"),
                "node{}: 503 for another reason: {body}",
                i + 1
            );
        }
        assert!(
            samples[0].0,
            "node{}: not ready right after etcd stopped: {}",
            i + 1,
            samples[0].1
        );
    }
    // Same subnet, same lease value: renewed, not re-acquired.
    for (i, (k, v)) in keys.iter().zip(&values).enumerate() {
        assert_eq!(&c.nodes[i].lease_key(ETCD_PREFIX).unwrap(), k);
        assert_eq!(
            &c.etcd().get(k).unwrap().unwrap().value,
            v,
            "node{} lease changed",
            i + 1
        );
    }
    let (sent, got) = stop_pinger(pinger);
    let report = stream.finish().unwrap();
    assert_eq!(sent, got, "pings lost during the etcd outage");
    assert!(
        report.longest_gap < Duration::from_secs(1),
        "stream stalled {:?}",
        report.longest_gap
    );

    // Every node's watch is back (a fresh listing since the outage)...
    for (i, n) in c.nodes.iter().enumerate() {
        felt_cluster::wait::wait_for("the lease watch to reconnect", CONVERGE, || {
            Ok(n.metric("felt_store_watch_reconnects_total")? > reconnects_before[i])
        })
        .unwrap();
    }
    // ... so a node joining now is routed to at once.
    let (_, routed) = common::join_timed(&mut c);
    assert!(
        routed < Duration::from_secs(1),
        "joiner routed {routed:?} after its subnet.env"
    );
    eprintln!(
        "outage {OUTAGE:?}: ping {got}/{sent}, longest stream gap {:?}, ready again {renewed_after:?} \
         after etcd came back; joiner routed {routed:?} after its subnet.env",
        report.longest_gap
    );
}
