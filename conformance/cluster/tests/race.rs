//! 20 nodes start at once for a network with only 8 free subnets: exactly
//! 8 leases, no subnet twice; the other 12 say "network full" on /readyz
//! and in their log and wait with backoff (counted: their requests to
//! etcd), and the moment a lease is freed one of them takes it.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code: failing loudly is the point

mod common;

use felt_cluster::{Backend, Cluster, Naming, ETCD_PREFIX};
use nix::sys::signal::Signal;
use std::collections::BTreeSet;
use std::time::{Duration, Instant};

const NODES: usize = 20;
const FREE: usize = 8;
const NET_CONF: &str = r#"{"Network":"10.244.0.0/16","SubnetLen":24,"SubnetMin":"10.244.1.0","SubnetMax":"10.244.8.0","Backend":{"Type":"vxlan"}}"#;

/// Lease keys in etcd.
fn lease_keys(c: &Cluster) -> Vec<String> {
    let prefix = format!("{ETCD_PREFIX}/subnets/");
    c.etcd()
        .get_prefix(&prefix)
        .unwrap()
        .into_iter()
        .map(|kv| kv.key)
        .collect()
}

/// Nodes holding a lease (a subnet.env), and those waiting.
fn split(c: &Cluster) -> (Vec<usize>, Vec<usize>) {
    (0..c.nodes.len()).partition(|&i| c.nodes[i].subnet().is_ok())
}

fn range_requests(c: &Cluster, nodes: &[usize]) -> f64 {
    nodes
        .iter()
        .map(|&i| {
            c.nodes[i]
                .metric("felt_store_requests_total{op=\"range\"}")
                .unwrap()
        })
        .sum()
}

#[test]
fn twenty_nodes_race_for_eight_subnets() {
    common::require_root();
    let mut c = Cluster::start(Naming::test(), Backend::Vxlan, Some(NET_CONF)).unwrap();
    for _ in 0..NODES {
        c.add_node().unwrap();
    }
    for i in 0..NODES {
        c.start_overlayd(i, &[]).unwrap();
    }
    felt_cluster::wait::wait_for("8 nodes to hold a lease", common::CONVERGE, || {
        Ok(split(&c).0.len() == FREE)
    })
    .unwrap();
    // Every loser has failed at least once and shows why.
    let (winners, losers) = split(&c);
    for &i in &losers {
        felt_cluster::wait::wait_for("network full on /readyz", common::CONVERGE, || {
            let (ready, body) = c.nodes[i].readyz()?;
            Ok(!ready && body.contains("no free subnet left in 10.244.0.0/16"))
        })
        .unwrap();
        assert!(
            c.nodes[i].overlayd_log().contains("network full"),
            "node{}",
            i + 1
        );
    }
    let keys = lease_keys(&c);
    let subnets: BTreeSet<_> = winners
        .iter()
        .map(|&i| c.nodes[i].subnet().unwrap())
        .collect();
    assert_eq!(keys.len(), FREE, "{keys:?}");
    assert_eq!(subnets.len(), FREE, "a subnet was handed out twice");

    // Backoff, not a tight loop: the losers' requests over a window.
    let window = Duration::from_secs(10);
    let (mine0, etcd0) = (range_requests(&c, &losers), etcd_ranges(&c));
    std::thread::sleep(window);
    let (mine1, etcd1) = (range_requests(&c, &losers), etcd_ranges(&c));
    let per_loser = (mine1 - mine0) / losers.len() as f64;
    eprintln!(
        "{} losers: {per_loser:.1} range requests each in {window:?} (etcd saw {} in all)",
        losers.len(),
        etcd1 - etcd0
    );
    assert!(
        per_loser <= 8.0,
        "losers poll etcd: {per_loser} requests each in {window:?}"
    );
    assert_eq!(split(&c).0.len(), FREE);

    // A lease frees up: one waiting node takes it, at once.
    let gone = winners[0];
    let freed = c.nodes[gone].subnet().unwrap();
    c.node_mut(gone)
        .unwrap()
        .stop_overlayd(Signal::SIGKILL)
        .unwrap();
    let key = c.nodes[gone].lease_key(ETCD_PREFIX).unwrap();
    std::fs::remove_file(c.nodes[gone].subnet_file()).unwrap();
    let start = Instant::now();
    assert!(c.etcd().delete(&key).unwrap());
    felt_cluster::wait::wait_for(
        "a waiting node to take the freed subnet",
        common::CONVERGE,
        || {
            Ok(losers
                .iter()
                .any(|&i| c.nodes[i].subnet().is_ok_and(|s| s == freed)))
        },
    )
    .unwrap();
    let took = start.elapsed();
    let takers: Vec<usize> = losers
        .iter()
        .copied()
        .filter(|&i| c.nodes[i].subnet().is_ok())
        .collect();
    assert_eq!(takers.len(), 1, "{takers:?} all hold a lease");
    assert_eq!(lease_keys(&c).len(), FREE);
    eprintln!(
        "the freed {freed} was taken by node{} after {took:?}",
        takers[0] + 1
    );
}

/// etcd's own count of Range requests it served.
fn etcd_ranges(c: &Cluster) -> f64 {
    c.etcd()
        .metric_sum(&["grpc_server_handled_total", "grpc_method=\"Range\""])
        .unwrap()
}
