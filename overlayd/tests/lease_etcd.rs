//! The etcd lease store against a real etcd (Debian's etcd-server), in
//! flannel's key layout: allocation, races, reuse, reservations, renewal,
//! watching. Each test starts its own etcd on free loopback ports in the
//! test's namespace; nothing touches the network.

// Test helpers outside #[test] fns fail loudly by design.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod etcd_util;
mod lease_util;

use etcd_client::Client;
use etcd_util::Etcd;
use lease_util::*;
use overlayd::lease::{Lease, LeaseError, LeaseSnapshot, LeaseStore, Term};
use std::collections::BTreeSet;
use std::net::Ipv4Addr;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;

#[tokio::test(flavor = "multi_thread")]
async fn acquire_writes_flannel_key_json_and_24h_ttl() {
    let etcd = with_config(VXLAN16);
    let s = store(&etcd).await;
    let lease = s
        .acquire(&req([192, 168, 64, 3], "c6:d2:32:6f:8f:44", None))
        .await
        .unwrap();
    assert_eq!(lease.subnet.prefix_len(), 24);
    assert!(net("10.5.0.0/16").contains(&lease.subnet) && lease.subnet != net("10.5.0.0/24"));
    let key = format!("{PREFIX}/subnets/{}-24", lease.subnet.network());
    assert_eq!(etcd.keys(&format!("{PREFIX}/subnets")), [key.as_str()]);
    assert_eq!(
        etcd.get(&key).unwrap(),
        r#"{"PublicIP":"192.168.64.3","PublicIPv6":null,"BackendType":"vxlan","BackendData":{"VNI":1,"VtepMAC":"c6:d2:32:6f:8f:44"}}"#
    );
    let (_, ttl, granted) = key_ttl(&etcd, &key).await;
    assert_eq!(granted, 86400);
    assert!(ttl > 86300, "remaining TTL {ttl}");
    let exp = lease
        .term
        .expires()
        .unwrap()
        .duration_since(std::time::SystemTime::now())
        .unwrap();
    assert!(exp > Duration::from_secs(86300), "{exp:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn twenty_racing_nodes_get_twenty_distinct_subnets() {
    let etcd = with_config(VXLAN16);
    let mut stores = Vec::new();
    for _ in 0..20 {
        stores.push(store(&etcd).await); // one client per node
    }
    // All start at once, so several pick the same free subnet.
    let gate = Arc::new(tokio::sync::Barrier::new(20));
    let started = std::time::Instant::now();
    let mut tasks = Vec::new();
    for (i, s) in stores.into_iter().enumerate() {
        let gate = gate.clone();
        tasks.push(tokio::spawn(async move {
            gate.wait().await;
            let ip = [192, 168, 1, 10 + i as u8];
            s.acquire(&req(ip, "aa:aa:aa:aa:aa:aa", None)).await
        }));
    }
    let mut subnets = BTreeSet::new();
    for t in tasks {
        subnets.insert(t.await.unwrap().unwrap().subnet);
    }
    println!("20 concurrent acquires took {:?}", started.elapsed());
    assert_eq!(subnets.len(), 20, "{subnets:?}");
    let keys = etcd.keys(&format!("{PREFIX}/subnets/"));
    assert_eq!(keys.len(), 20, "{keys:?}");
    // Each key names a different node.
    let ips: BTreeSet<String> = keys
        .iter()
        .map(|k| etcd.get(k).unwrap())
        .map(|v| serde_json::from_str::<serde_json::Value>(&v).unwrap()["PublicIP"].to_string())
        .collect();
    assert_eq!(ips.len(), 20);
}

#[tokio::test(flavor = "multi_thread")]
async fn restart_reuses_lease_by_public_ip_and_updates_attrs() {
    let etcd = with_config(VXLAN16);
    let s = store(&etcd).await;
    let first = s
        .acquire(&req([10, 0, 0, 1], "aa:aa:aa:aa:aa:01", None))
        .await
        .unwrap();
    let key = format!("{PREFIX}/subnets/{}-24", first.subnet.network());
    let (old_id, _, _) = key_ttl(&etcd, &key).await;
    // A restart with another (previous) subnet.env still gets the same lease.
    let again = s
        .acquire(&req(
            [10, 0, 0, 1],
            "aa:aa:aa:aa:aa:02",
            Some("10.5.200.1/24"),
        ))
        .await
        .unwrap();
    assert_eq!(again.subnet, first.subnet);
    assert!(etcd.get(&key).unwrap().contains("aa:aa:aa:aa:aa:02"));
    let (new_id, ttl, _) = key_ttl(&etcd, &key).await;
    assert_ne!(new_id, old_id);
    assert!(ttl > 86300);
    assert_eq!(etcd.keys(&format!("{PREFIX}/subnets/")).len(), 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn previous_subnet_env_subnet_is_reused_when_free() {
    let etcd = with_config(VXLAN16);
    let s = store(&etcd).await;
    let l = s
        .acquire(&req(
            [10, 0, 0, 1],
            "aa:aa:aa:aa:aa:01",
            Some("10.5.77.1/24"),
        ))
        .await
        .unwrap();
    assert_eq!(l.subnet, net("10.5.77.0/24"));
    // Another node whose previous subnet is now taken gets a different one.
    let other = s
        .acquire(&req(
            [10, 0, 0, 2],
            "aa:aa:aa:aa:aa:02",
            Some("10.5.77.1/24"),
        ))
        .await
        .unwrap();
    assert_ne!(other.subnet, net("10.5.77.0/24"));
    // Outside SubnetMin..SubnetMax (the first subnet): ignored.
    let third = s
        .acquire(&req(
            [10, 0, 0, 3],
            "aa:aa:aa:aa:aa:03",
            Some("10.5.0.1/24"),
        ))
        .await
        .unwrap();
    assert_ne!(third.subnet, net("10.5.0.0/24"));
}

#[tokio::test(flavor = "multi_thread")]
async fn reservations_are_honoured_and_network_full_is_clear() {
    // /28 split in /30s: subnets .4 .8 .12 can be leased (.0 is skipped).
    let etcd =
        with_config(r#"{"Network":"10.9.0.0/28","SubnetLen":30,"Backend":{"Type":"host-gw"}}"#);
    let reserved_other = format!("{PREFIX}/subnets/10.9.0.4-30");
    let reserved_mine = format!("{PREFIX}/subnets/10.9.0.12-30");
    etcd.put(
        &reserved_other,
        r#"{"PublicIP":"10.1.1.1","PublicIPv6":null,"BackendType":"host-gw"}"#,
    );
    etcd.put(
        &reserved_mine,
        r#"{"PublicIP":"10.1.1.2","PublicIPv6":null,"BackendType":"host-gw"}"#,
    );
    let s = store(&etcd).await;
    let mut host_gw = req([10, 1, 1, 2], "", None);
    host_gw.attrs.backend_type = "host-gw".into();
    host_gw.attrs.backend_data = overlayd::lease::BackendData::NULL;
    // Our reservation is used and stays a reservation (no TTL).
    let mine = s.acquire(&host_gw).await.unwrap();
    assert_eq!(
        (mine.subnet, mine.term),
        (net("10.9.0.12/30"), Term::Reservation)
    );
    assert_eq!(key_ttl(&etcd, &reserved_mine).await.0, 0);
    // Someone else's previous subnet is reserved: never handed out.
    let third = s
        .acquire(&req(
            [10, 1, 1, 3],
            "aa:aa:aa:aa:aa:03",
            Some("10.9.0.5/30"),
        ))
        .await
        .unwrap();
    assert_eq!(third.subnet, net("10.9.0.8/30"));
    let err = s
        .acquire(&req([10, 1, 1, 4], "aa:aa:aa:aa:aa:04", None))
        .await
        .unwrap_err();
    assert!(matches!(err, LeaseError::NetworkFull { .. }), "{err}");
    assert!(
        err.to_string()
            .contains("no free subnet left in 10.9.0.0/28"),
        "{err}"
    );
    assert_eq!(
        etcd.get(&reserved_other).unwrap(),
        r#"{"PublicIP":"10.1.1.1","PublicIPv6":null,"BackendType":"host-gw"}"#
    );
    assert_eq!(key_ttl(&etcd, &reserved_other).await.0, 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn renew_extends_ttl_recreates_deleted_key_and_detects_theft() {
    let etcd = with_config(VXLAN16);
    let s = store(&etcd).await.with_ttl(Duration::from_secs(30));
    let lease = s
        .acquire(&req([10, 0, 0, 1], "aa:aa:aa:aa:aa:01", None))
        .await
        .unwrap();
    let key = format!("{PREFIX}/subnets/{}-24", lease.subnet.network());
    let (id1, _, granted) = key_ttl(&etcd, &key).await;
    assert_eq!(granted, 30);
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let (_, before, _) = key_ttl(&etcd, &key).await;
    assert!(before <= 28, "{before}");
    let t = std::time::Instant::now();
    let renewed = s.renew(&lease).await.unwrap();
    let (id2, after, _) = key_ttl(&etcd, &key).await;
    // A fresh 30 s TTL, less only the time renew + read took (etcd
    // rounds down): on a loaded machine that can be seconds.
    let floor = 29 - t.elapsed().as_secs() as i64;
    assert!(
        after >= floor,
        "TTL after renew {after}, expected >= {floor}"
    );
    assert_ne!(id1, id2);
    assert!(renewed.term.expires() > lease.term.expires());
    // The old etcd lease was revoked, not left to linger.
    let mut c = Client::connect([etcd.endpoint.as_str()], None)
        .await
        .unwrap();
    assert_eq!(c.lease_time_to_live(id1, None).await.unwrap().ttl(), -1);

    // Deleted under us (#904/#1240): renew re-creates the same subnet.
    etcd.etcdctl_ok(&["del", &key]);
    let back = s.renew(&renewed).await.unwrap();
    assert_eq!(back.subnet, lease.subnet);
    assert!(etcd
        .get(&key)
        .unwrap()
        .contains("\"PublicIP\":\"10.0.0.1\""));

    // Taken by another node: Lost, and the other node's key is untouched.
    let theirs = r#"{"PublicIP":"10.0.0.99","PublicIPv6":null,"BackendType":"vxlan"}"#;
    etcd.put(&key, theirs);
    let err = s.renew(&back).await.unwrap_err();
    assert!(
        matches!(err, LeaseError::Lost(sn) if sn == lease.subnet),
        "{err}"
    );
    assert_eq!(etcd.get(&key).unwrap(), theirs);
}

#[tokio::test(flavor = "multi_thread")]
async fn watch_publishes_snapshot_then_adds_and_deletes() {
    let etcd = with_config(VXLAN16);
    etcd.put(&format!("{PREFIX}/subnets/10.5.1.0-24"), r#"{"PublicIP":"10.0.0.1","PublicIPv6":null,"BackendType":"vxlan","BackendData":{"VNI":1,"VtepMAC":"aa:aa:aa:aa:aa:01"}}"#);
    etcd.put(&format!("{PREFIX}/subnets/garbage"), "x");
    let s = Arc::new(store(&etcd).await);
    let (tx, mut rx) = watch::channel(Arc::new(LeaseSnapshot::new()));
    let w = {
        let s = s.clone();
        tokio::spawn(async move { s.watch_leases(tx).await })
    };
    until(&mut rx, "the existing lease", |m| {
        has(m, "10.5.1.0/24") && m.len() == 1
    })
    .await;
    let l: Lease = rx.borrow().get(&net("10.5.1.0/24")).cloned().unwrap();
    assert_eq!(l.attrs.public_ip, Ipv4Addr::new(10, 0, 0, 1));
    assert_eq!(
        l.term,
        Term::Reservation,
        "a key without TTL is a reservation"
    );

    let t = std::time::Instant::now();
    let mine = s
        .acquire(&req(
            [10, 0, 0, 2],
            "aa:aa:aa:aa:aa:02",
            Some("10.5.2.1/24"),
        ))
        .await
        .unwrap();
    println!("acquire took {:?}", t.elapsed());
    until(&mut rx, "the new lease", |m| {
        has(m, "10.5.2.0/24") && m.len() == 2
    })
    .await;
    println!("acquire + watch delivery took {:?}", t.elapsed());
    assert!(!rx.borrow().get(&mine.subnet).unwrap().term.is_reservation());
    etcd.etcdctl_ok(&["del", &format!("{PREFIX}/subnets/10.5.1.0-24")]);
    until(&mut rx, "the deletion", |m| {
        !has(m, "10.5.1.0/24") && m.len() == 1
    })
    .await;
    drop(rx);
    // With every receiver gone the watch ends by itself.
    etcd.put(
        &format!("{PREFIX}/subnets/10.5.3.0-24"),
        r#"{"PublicIP":"10.0.0.3"}"#,
    );
    let ended = tokio::time::timeout(PATIENCE, w).await;
    assert!(matches!(ended, Ok(Ok(Ok(())))), "{ended:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn watch_relists_after_compaction() {
    let etcd = with_config(VXLAN16);
    let a = format!("{PREFIX}/subnets/10.5.1.0-24");
    etcd.put(&a, r#"{"PublicIP":"10.0.0.1"}"#);
    let s = Arc::new(store(&etcd).await);
    // A snapshot that then goes stale: A deleted, B added, history compacted.
    let (stale, rev) = s.snapshot().await.unwrap();
    assert!(has(&stale, "10.5.1.0/24"));
    etcd.etcdctl_ok(&["del", &a]);
    etcd.put(
        &format!("{PREFIX}/subnets/10.5.2.0-24"),
        r#"{"PublicIP":"10.0.0.2"}"#,
    );
    let mut c = Client::connect([etcd.endpoint.as_str()], None)
        .await
        .unwrap();
    let now = c.get("x", None).await.unwrap().header().unwrap().revision();
    c.compact(now, None).await.unwrap();
    assert!(now > rev + 1);

    let (tx, mut rx) = watch::channel(Arc::new(LeaseSnapshot::new()));
    let s2 = s.clone();
    let w = tokio::spawn(async move { s2.watch_leases_from(tx, Some((stale, rev))).await });
    // Resuming at a compacted revision must end in a fresh, full listing.
    until(&mut rx, "the re-listed state", |m| {
        has(m, "10.5.2.0/24") && !has(m, "10.5.1.0/24")
    })
    .await;
    // And the new watch keeps following changes.
    etcd.put(
        &format!("{PREFIX}/subnets/10.5.3.0-24"),
        r#"{"PublicIP":"10.0.0.3"}"#,
    );
    until(&mut rx, "a change after the re-list", |m| {
        has(m, "10.5.3.0/24") && m.len() == 2
    })
    .await;
    drop(rx);
    w.abort();
}

#[tokio::test(flavor = "multi_thread")]
async fn config_errors_surface_from_acquire_and_nothing_is_written() {
    let etcd = with_config(r#"{"Network":"10.5.0.0/16","SubnetLen":31}"#);
    let s = store(&etcd).await;
    let err = s
        .acquire(&req([10, 0, 0, 1], "aa:aa:aa:aa:aa:01", None))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("SubnetLen"), "{err}");
    assert!(etcd.keys(&format!("{PREFIX}/subnets")).is_empty());
    let missing = Etcd::start();
    let err = store(&missing).await.network_config().await.unwrap_err();
    assert!(
        err.to_string().contains("/coreos.com/network/config"),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn our_lease_that_no_longer_fits_the_config_is_replaced() {
    let etcd = with_config(r#"{"Network":"10.5.0.0/16","SubnetLen":25}"#);
    let s = store(&etcd).await;
    let old = s
        .acquire(&req([10, 0, 0, 1], "aa:aa:aa:aa:aa:01", None))
        .await
        .unwrap();
    assert_eq!(old.subnet.prefix_len(), 25);
    // The operator changes SubnetLen: the /25 of ours is deleted, a /24 made.
    etcd.put(&format!("{PREFIX}/config"), VXLAN16);
    let new = s
        .acquire(&req([10, 0, 0, 1], "aa:aa:aa:aa:aa:01", None))
        .await
        .unwrap();
    assert_eq!(new.subnet.prefix_len(), 24);
    let keys = etcd.keys(&format!("{PREFIX}/subnets/"));
    assert_eq!(
        keys,
        [format!("{PREFIX}/subnets/{}-24", new.subnet.network())]
    );
}
