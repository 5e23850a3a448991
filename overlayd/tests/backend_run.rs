//! The reconcile loop (`reconcile::run`) on a real kernel: triggers
//! (snapshots, kernel notifications), repairs of hand-made damage, and
//! never pruning on the channel's seed.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod backend_util;

use backend_util::*;
use overlayd::backend::vxlan::VxlanBackend;
use overlayd::backend::Backend;
use std::sync::Arc;
use std::time::Duration;

#[test]
fn run_never_prunes_on_the_channel_seed_only_on_listings() {
    let node = Arc::new(single_node("rcseed", "192.168.50.1/24"));
    let (o, b, c) = (own(&node, "vxlan"), peer_b(), peer_c());
    // State from a previous run: B (still leased) and C (lease gone).
    vxlan_rounds(&node, vec![snapshot(&[&o, &b, &c])]);
    // B's route is damaged while the daemon is down: its repair below is
    // the proof that rounds on the seed ran (a fixed sleep would pass
    // vacuously when the machine is too slow to run any round).
    node.ns.exec_ok(&["ip", "route", "del", "10.244.2.0/24"]);
    // The daemon seeds the channel before the store's first listing
    // arrives; the seed holds our own lease, so it looks complete, yet
    // it lacks C.
    let (tx, rx) = tokio::sync::watch::channel(snapshot(&[&o, &b]));
    let shared = node.clone();
    block_in(&node.ns, move || async move {
        let mut be = VxlanBackend::new(vxlan_cfg()).unwrap();
        be.prepare(&shared.ext).await.unwrap();
        be.configure_own(&o).await.unwrap();
        let backend: Arc<dyn Backend> = Arc::from(Box::new(be) as Box<dyn Backend>);
        let net = NETWORK.parse().unwrap();
        let resync = Duration::from_millis(100);
        let task = tokio::spawn(overlayd::reconcile::run(
            reconciler(backend, o.clone(), net),
            rx,
            resync,
        ));
        let n = shared.clone();
        tokio::task::spawn_blocking(move || {
            let repaired = wait_until(PATIENCE, || route_to(&n.ns, "10.244.2.0/24").is_some());
            assert!(repaired.is_some(), "no round ran on the seed");
            // More rounds on the seed (resync every 100 ms) must not prune either.
            let pruned = wait_until(Duration::from_millis(500), || {
                route_to(&n.ns, "10.244.3.0/24").is_none()
            });
            assert!(pruned.is_none(), "the seed pruned C");
        })
        .await
        .unwrap();
        tx.send(snapshot(&[&o, &b])).unwrap();
        let n = shared.clone();
        let pruned = tokio::task::spawn_blocking(move || {
            wait_until(PATIENCE, || route_to(&n.ns, "10.244.3.0/24").is_none())
        });
        assert!(pruned.await.unwrap().is_some(), "listing did not prune C");
        drop(tx);
        task.await.unwrap().unwrap();
    });
    assert_peer_programmed(&node, "10.244.2.0", MAC_B, "192.168.50.2");
    assert_eq!(neighbours(&node.ns, "flannel.1").len(), 1);
}

type Check = Box<dyn Fn(&Node) -> bool + Send>;

#[test]
fn run_repairs_hand_made_damage_quickly_and_follows_new_snapshots() {
    let node = Arc::new(single_node("rcrun", "192.168.50.1/24"));
    let (o, b, c) = (own(&node, "vxlan"), peer_b(), peer_c());
    let (tx, rx) = tokio::sync::watch::channel(snapshot(&[&o, &b]));
    let shared = node.clone();
    let timings = block_in(&node.ns, move || async move {
        let mut be = VxlanBackend::new(vxlan_cfg()).unwrap();
        be.prepare(&shared.ext).await.unwrap();
        be.configure_own(&o).await.unwrap();
        let backend: Arc<dyn Backend> = Arc::from(Box::new(be) as Box<dyn Backend>);
        // A resync far beyond the test's patience: repairs come from
        // kernel notifications, not the timer.
        let resync = Duration::from_secs(3600);
        let net = NETWORK.parse().unwrap();
        let metrics = Arc::new(overlayd::metrics::Metrics::new());
        let rec =
            overlayd::reconcile::Reconciler::new(backend, o.clone(), net, 24, metrics.clone())
                .unwrap();
        let task = tokio::spawn(overlayd::reconcile::run(rec, rx, resync));
        let steps: Vec<(Vec<&'static str>, Check)> = vec![
            (
                vec![],
                Box::new(|n| route_to(&n.ns, "10.244.2.0/24").is_some()),
            ),
            (
                vec!["ip", "route", "del", "10.244.2.0/24"],
                Box::new(|n| route_to(&n.ns, "10.244.2.0/24").is_some()),
            ),
            (
                vec!["ip", "neigh", "del", "10.244.2.0", "dev", "flannel.1"],
                Box::new(|n| {
                    neighbours(&n.ns, "flannel.1")
                        .iter()
                        .any(|x| x["dst"] == "10.244.2.0")
                }),
            ),
            (
                vec![
                    "bridge",
                    "fdb",
                    "del",
                    MAC_B,
                    "dev",
                    "flannel.1",
                    "dst",
                    "192.168.50.2",
                    "self",
                ],
                Box::new(|n| fdb(&n.ns, "flannel.1").iter().any(|f| f["mac"] == MAC_B)),
            ),
            (
                vec!["ip", "link", "del", "flannel.1"],
                Box::new(|n| {
                    route_to(&n.ns, "10.244.2.0/24").is_some_and(|r| r["dev"] == "flannel.1")
                        && fdb(&n.ns, "flannel.1").iter().any(|f| f["mac"] == MAC_B)
                }),
            ),
        ];
        let mut timings = Vec::new();
        for (damage, check) in steps {
            let n = shared.clone();
            let t = tokio::task::spawn_blocking(move || {
                if !damage.is_empty() {
                    n.ns.exec_ok(&damage);
                }
                wait_until(PATIENCE, || check(&n))
            });
            timings.push(t.await.unwrap());
        }
        let runs = |pass: &str| {
            let sample = format!("felt_reconcile_runs_total{{pass=\"{pass}\"}}");
            overlayd_metric(&metrics, &sample)
        };
        // The first listing settles the state (a full pass: the seed
        // could not prune); the change after it is incremental.
        let before_listing = runs("full");
        tx.send(snapshot(&[&o, &b])).unwrap();
        let settled = async {
            while runs("full") <= before_listing {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        };
        tokio::time::timeout(PATIENCE, settled).await.unwrap();
        let full_before = runs("full");
        tx.send(snapshot(&[&o, &c])).unwrap();
        let n = shared.clone();
        let t = tokio::task::spawn_blocking(move || {
            wait_until(PATIENCE, || {
                route_to(&n.ns, "10.244.2.0/24").is_none()
                    && route_to(&n.ns, "10.244.3.0/24").is_some()
            })
        });
        timings.push(t.await.unwrap());
        // The echo of felt's own writes for the change costs no pass.
        tokio::time::sleep(Duration::from_millis(500)).await;
        assert_eq!(
            runs("full"),
            full_before,
            "felt's own writes triggered a full pass"
        );
        assert_eq!(runs("incremental"), 1.0);
        drop(tx);
        let stopped = tokio::time::timeout(PATIENCE, task).await;
        assert!(
            matches!(stopped, Ok(Ok(Ok(())))),
            "run must end when the lease watch closes: {stopped:?}"
        );
        timings
    });
    let names = [
        "initial",
        "route deleted",
        "neighbour deleted",
        "fdb deleted",
        "device deleted",
        "lease change",
    ];
    for (name, t) in names.iter().zip(&timings) {
        let t = t.unwrap_or_else(|| panic!("{name}: not repaired within {PATIENCE:?}"));
        eprintln!("repair latency, {name}: {} ms", t.as_millis());
    }
}

/// One sample of the metrics' exposition text (0 when absent).
fn overlayd_metric(m: &overlayd::metrics::Metrics, sample: &str) -> f64 {
    m.encode()
        .lines()
        .find_map(|l| l.strip_prefix(sample).map(|v| v.trim().parse().unwrap()))
        .unwrap_or(0.0)
}
