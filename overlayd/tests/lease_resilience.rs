//! The etcd lease store when things go wrong or get stricter: the renewal
//! loop, etcd restarts, idle watches, TLS. Each test starts its own etcd
//! on free loopback ports in the test's namespace.

// Test helpers outside #[test] fns fail loudly by design.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod etcd_util;
mod lease_util;

use etcd_util::Etcd;
use lease_util::*;
use overlayd::lease::etcd::{EtcdOptions, EtcdStore, EtcdTls};
use overlayd::lease::{LeaseError, LeaseSnapshot, LeaseStore};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;

/// Waits (up to 30 s) until the etcd lease bound to `key` is no longer
/// `old`. Returns the new lease's granted TTL and, when a poll saw `old`
/// first (so the renewal happened after it), its remaining TTL plus the
/// time since that poll: the TTL it had when renewed, whatever the
/// polling lag on a loaded machine.
async fn renewal_after(etcd: &Etcd, key: &str, old: i64) -> (Option<i64>, i64) {
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let mut saw_old: Option<std::time::Instant> = None;
    loop {
        let before_read = std::time::Instant::now();
        let (id, ttl, granted) = key_ttl(etcd, key).await;
        if id != old {
            let lag = saw_old.map(|t| t.elapsed().as_secs_f64().ceil() as i64);
            return (lag.map(|l| ttl + l), granted);
        }
        saw_old = Some(before_read);
        assert!(
            std::time::Instant::now() < deadline,
            "{key}: not renewed within 30 s"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn renew_loop_renews_before_expiry_and_ends_only_when_subnet_is_taken() {
    let etcd = with_config(VXLAN16);
    let s: Arc<EtcdStore> = Arc::new(store(&etcd).await.with_ttl(Duration::from_secs(10)));
    let lease = s
        .acquire(&req([10, 0, 0, 1], "aa:aa:aa:aa:aa:01", None))
        .await
        .unwrap();
    let key = format!("{PREFIX}/subnets/{}-24", lease.subnet.network());
    let (id1, _, _) = key_ttl(&etcd, &key).await;
    let (tx, rx) = watch::channel(Arc::new(LeaseSnapshot::new()));
    let w = {
        let s = s.clone();
        tokio::spawn(async move { s.watch_leases(tx).await })
    };
    // TTL 10 s, margin 8 s: a renewal every ~2 s, each with a new etcd lease.
    let r = tokio::spawn(overlayd::daemon::renew_loop(
        s.clone(),
        lease.clone(),
        Duration::from_secs(8),
        rx,
        overlayd::daemon::Shared::new(),
    ));
    let (ttl, granted) = renewal_after(&etcd, &key, id1).await;
    assert_eq!(granted, 10);
    if let Some(ttl) = ttl {
        assert!(ttl >= 9, "TTL {ttl} when renewed, of 10");
    }
    // Another node overwrites our key: the loop reports Lost at once.
    etcd.put(&key, r#"{"PublicIP":"10.0.0.99","PublicIPv6":null}"#);
    let ended = tokio::time::timeout(PATIENCE, r).await.unwrap().unwrap();
    assert!(
        matches!(ended, Err(LeaseError::Lost(sn)) if sn == lease.subnet),
        "{ended:?}"
    );
    assert!(etcd.get(&key).unwrap().contains("10.0.0.99"));
    w.abort();
}

#[tokio::test(flavor = "multi_thread")]
async fn watch_and_renewal_recover_after_etcd_restarts() {
    let mut etcd = with_config(VXLAN16);
    let s: Arc<EtcdStore> = Arc::new(store(&etcd).await.with_ttl(Duration::from_secs(10)));
    let lease = s
        .acquire(&req([10, 0, 0, 1], "aa:aa:aa:aa:aa:01", None))
        .await
        .unwrap();
    let key = format!("{PREFIX}/subnets/{}-24", lease.subnet.network());
    let (tx, mut rx) = watch::channel(Arc::new(LeaseSnapshot::new()));
    let w = {
        let s = s.clone();
        tokio::spawn(async move { s.watch_leases(tx).await })
    };
    until(&mut rx, "our lease", |m| m.contains_key(&lease.subnet)).await;
    let margin = Duration::from_secs(8);
    let r = tokio::spawn(overlayd::daemon::renew_loop(
        s.clone(),
        lease.clone(),
        margin,
        rx.clone(),
        overlayd::daemon::Shared::new(),
    ));

    // etcd down across a renewal point (renewal due ~2 s after acquire).
    etcd.kill();
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(!r.is_finished(), "renewal gave up while etcd was down");
    etcd.resume();
    // Renewal retries with backoff (1, 2, 4, 8 s ...) and succeeds on the
    // same subnet ...
    let (id0, _, _) = key_ttl(&etcd, &key).await;
    renewal_after(&etcd, &key, id0).await;
    // ... and the watch reconnected: it sees a change made after the restart.
    etcd.put(
        &format!("{PREFIX}/subnets/10.5.99.0-24"),
        r#"{"PublicIP":"10.0.0.99"}"#,
    );
    until(&mut rx, "a lease added after the restart", |m| {
        has(m, "10.5.99.0/24")
    })
    .await;
    assert!(rx.borrow().contains_key(&lease.subnet));
    r.abort();
    w.abort();
}

#[tokio::test(flavor = "multi_thread")]
async fn tls_with_client_certificate() {
    let dir = std::env::temp_dir().join(format!("felt-etcd-tls-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    etcd_util::make_certs(&dir);
    let etcd = Etcd::start_tls(&dir);
    etcd.put(&format!("{PREFIX}/config"), VXLAN16);
    let tls = |cert: bool| EtcdTls {
        ca_file: Some(dir.join("ca.crt")),
        cert_file: cert.then(|| dir.join("client.crt")),
        key_file: cert.then(|| dir.join("client.key")),
    };
    let opts = |tls| EtcdOptions {
        endpoints: vec![etcd.endpoint.clone()],
        prefix: PREFIX.into(),
        tls,
        ..Default::default()
    };
    let s = EtcdStore::connect(&opts(tls(true))).await.unwrap();
    let lease = s
        .acquire(&req([10, 0, 0, 1], "aa:aa:aa:aa:aa:01", None))
        .await
        .unwrap();
    let key = format!("{PREFIX}/subnets/{}-24", lease.subnet.network());
    assert!(etcd.get(&key).unwrap().contains("10.0.0.1"));
    // etcd demands a client certificate: without one, nothing is read.
    let anon = EtcdStore::connect(&opts(tls(false))).await.unwrap();
    assert!(anon.network_config().await.is_err());
    // Setup mistakes are config errors naming the flag.
    let mut half = tls(true);
    half.key_file = None;
    let err = EtcdStore::connect(&opts(half)).await.err().unwrap();
    assert!(
        err.to_string()
            .contains("--etcd-certfile and --etcd-keyfile"),
        "{err}"
    );
    let mut missing = tls(false);
    missing.ca_file = Some(dir.join("nope.crt"));
    let err = EtcdStore::connect(&opts(missing)).await.err().unwrap();
    assert!(err.to_string().contains("--etcd-cafile"), "{err}");
    let mut http = opts(tls(true));
    http.endpoints = vec![etcd.endpoint.replace("https", "http")];
    let err = EtcdStore::connect(&http).await.err().unwrap();
    assert!(err.to_string().contains("must be https://"), "{err}");
    drop(etcd);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn a_quiet_watch_outlives_the_request_timeout() {
    let etcd = with_config(VXLAN16);
    etcd.put(
        &format!("{PREFIX}/subnets/10.5.1.0-24"),
        r#"{"PublicIP":"10.0.0.1"}"#,
    );
    let s = Arc::new(store(&etcd).await);
    let (tx, mut rx) = watch::channel(Arc::new(LeaseSnapshot::new()));
    let w = {
        let s = s.clone();
        tokio::spawn(async move { s.watch_leases(tx).await })
    };
    until(&mut rx, "the first listing", |m| has(m, "10.5.1.0/24")).await;
    rx.borrow_and_update();
    // Longer than the 5 s per-request timeout, without any event: a cut
    // stream would re-list, and every listing publishes a snapshot.
    tokio::time::sleep(Duration::from_secs(7)).await;
    assert!(!rx.has_changed().unwrap(), "the idle watch was re-listed");
    let t = std::time::Instant::now();
    etcd.put(
        &format!("{PREFIX}/subnets/10.5.4.0-24"),
        r#"{"PublicIP":"10.0.0.4"}"#,
    );
    until(&mut rx, "the new lease", |m| has(m, "10.5.4.0/24")).await;
    println!("put -> snapshot after an idle watch: {:?}", t.elapsed());
    // A dead stream would be noticed by keepalive only after >= 15 s
    // (10 s ping + 5 s timeout); a live one delivers at once. The bound
    // sits between, with room for a loaded machine's etcdctl start.
    assert!(t.elapsed() < Duration::from_secs(8), "{:?}", t.elapsed());
    w.abort();
}

#[tokio::test(flavor = "multi_thread")]
async fn username_and_password_authentication() {
    let etcd = with_config(VXLAN16);
    etcd.etcdctl_ok(&["user", "add", "root:rootpw"]);
    etcd.etcdctl_ok(&["user", "add", "felt:s3cret"]);
    etcd.etcdctl_ok(&["role", "add", "flannel"]);
    etcd.etcdctl_ok(&[
        "role",
        "grant-permission",
        "flannel",
        "--prefix=true",
        "readwrite",
        PREFIX,
    ]);
    etcd.etcdctl_ok(&["user", "grant-role", "felt", "flannel"]);
    etcd.etcdctl_ok(&["auth", "enable"]);
    let opts = |user: &str, pw: &str| EtcdOptions {
        endpoints: vec![etcd.endpoint.clone()],
        prefix: PREFIX.into(),
        username: Some(user.into()),
        password: Some(pw.into()),
        ..Default::default()
    };
    let s = EtcdStore::connect(&opts("felt", "s3cret")).await.unwrap();
    let lease = s
        .acquire(&req([10, 0, 0, 1], "aa:aa:aa:aa:aa:01", None))
        .await
        .unwrap();
    s.renew(&lease).await.unwrap();
    let key = format!("{PREFIX}/subnets/{}-24", lease.subnet.network());
    let got = etcd.etcdctl_ok(&["--user=root:rootpw", "get", &key, "--print-value-only"]);
    assert!(got.contains("\"PublicIP\":\"10.0.0.1\""), "{got}");
    // A wrong password is refused at connect time.
    assert!(EtcdStore::connect(&opts("felt", "wrong")).await.is_err());
    // Without credentials nothing can be read.
    let anon = EtcdOptions {
        username: None,
        password: None,
        ..opts("", "")
    };
    let anon = EtcdStore::connect(&anon).await.unwrap();
    assert!(anon.network_config().await.is_err());
}
