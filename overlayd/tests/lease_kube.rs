//! The Kubernetes lease store against a real API server (upstream
//! v1.20.2 on Debian's etcd, in a namespace of the test's own): the Node
//! watch, acquire, renew and the patches, byte for byte as flannel.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod etcd_util;
mod kube_util;
mod lease_util;

use kube_util::nodes::{self, flannel_vxlan, PREFIX};
use kube_util::store::{store, until, until_readiness, watch};
use kube_util::{ApiOptions, KubeApi};
use lease_util::req;
use overlayd::lease::{keys, LeaseError, LeaseStore};
use std::sync::Arc;

fn net(s: &str) -> ipnet::Ipv4Net {
    s.parse().unwrap()
}

fn has(s: &overlayd::lease::LeaseSnapshot, sn: &str) -> bool {
    s.contains_key(&net(sn))
}

fn key(k: &str) -> String {
    format!("{PREFIX}{k}")
}

#[test]
fn peers_follow_nodes_added_changed_and_deleted() {
    let api = KubeApi::start(ApiOptions::default());
    api.block_on(async {
        let admin = api.admin().await;
        let (s, _) = store(&api, "self").await;
        let mut rx = watch(&s);
        until(&mut rx, "the first listing", |s| s.listing == 1).await;
        // Annotated by hand exactly as flannel does: a peer like any.
        nodes::create(&admin, "n1", Some("10.5.1.0/24"), &flannel_vxlan("192.168.64.3", "c6:d2:32:6f:8f:44")).await;
        nodes::create(&admin, "n2", Some("10.5.2.0/24"), &[]).await;
        let snap = until(&mut rx, "n1", |s| has(s, "10.5.1.0/24")).await;
        let flannel_lease = r#"{"PublicIP":"192.168.64.3","PublicIPv6":null,"BackendType":"vxlan","BackendData":{"VNI":1,"VtepMAC":"c6:d2:32:6f:8f:44"}}"#;
        let n1 = snap.get(&net("10.5.1.0/24")).unwrap();
        assert_eq!(n1.attrs, keys::decode_attrs(flannel_lease.as_bytes()).unwrap());
        assert!(!has(&snap, "10.5.2.0/24"), "n2 is not annotated kube-subnet-manager=true");

        // A kubelet status write changes no lease: n1's lease stays the
        // same shared object when the next real change is published.
        nodes::kubelet_ready(&admin, "n1").await;
        let ann2: Vec<_> = flannel_vxlan("192.168.64.4", "aa:bb:cc:dd:ee:02")
            .into_iter()
            .map(|(k, v)| (k, Some(v)))
            .collect();
        nodes::annotate(&admin, "n2", &ann2).await;
        let after = until(&mut rx, "n2 annotated", |s| has(s, "10.5.2.0/24")).await;
        assert_eq!(snap.changed_since(&after), vec![net("10.5.2.0/24")]);

        // Backend data and public IP changes are followed.
        nodes::annotate(&admin, "n1", &[(key("backend-data"), Some(r#"{"VNI":1,"VtepMAC":"c6:d2:32:6f:8f:99"}"#.into()))]).await;
        until(&mut rx, "n1's new VTEP MAC", |s| {
            s.get(&net("10.5.1.0/24")).is_some_and(|l| l.attrs.backend_data.to_value()["VtepMAC"] == "c6:d2:32:6f:8f:99")
        })
        .await;
        nodes::annotate(&admin, "n1", &[(key("public-ip"), Some("192.168.64.33".into()))]).await;
        until(&mut rx, "n1's new public IP", |s| {
            s.get(&net("10.5.1.0/24")).is_some_and(|l| l.attrs.public_ip.to_string() == "192.168.64.33")
        })
        .await;

        // A garbage public IP is skipped with its reason.
        let mut bad = flannel_vxlan("not-an-ip", "aa:bb:cc:dd:ee:03");
        bad.push(("example.com/other".into(), "kept out of felt's view".into()));
        nodes::create(&admin, "n3", Some("10.5.3.0/24"), &bad).await;
        let snap = until(&mut rx, "n3 malformed", |s| s.malformed.contains_key("n3")).await;
        assert!(snap.malformed["n3"].contains("not-an-ip"), "{:?}", snap.malformed);
        assert!(!has(&snap, "10.5.3.0/24"));

        // Unannotating and deleting remove peers.
        nodes::annotate(&admin, "n2", &[(key("kube-subnet-manager"), None)]).await;
        nodes::delete(&admin, "n1").await;
        let snap = until(&mut rx, "n1 and n2 gone", |s| s.is_empty()).await;
        assert_eq!(snap.listing, 1, "no relist happened");
    });
}

#[test]
fn acquire_waits_for_the_node_and_a_late_pod_cidr() {
    let api = KubeApi::start(ApiOptions::default());
    api.block_on(async {
        let admin = api.admin().await;
        let (s, readiness) = store(&api, "self").await;
        let _rx = watch(&s);
        let acquiring = {
            let s = s.clone();
            tokio::spawn(async move { s.acquire(&req([10, 0, 0, 1], "aa:aa:aa:aa:aa:01", None)).await })
        };
        until_readiness(&readiness, "node self does not exist yet").await;
        nodes::create(&admin, "self", None, &[]).await;
        until_readiness(&readiness, "pod CIDR not assigned to node self: start kube-controller-manager with --allocate-node-cidrs and --cluster-cidr").await;
        assert!(!acquiring.is_finished());
        assert_eq!(nodes::flannel_annotations(&admin, "self").await, vec![], "nothing written while waiting");
        nodes::assign_pod_cidr(&admin, "self", "10.5.9.0/24").await;
        let lease = acquiring.await.unwrap().unwrap();
        assert_eq!(lease.subnet, net("10.5.9.0/24"));
        assert_eq!(nodes::flannel_annotations(&admin, "self").await.len(), 4);
    });
}

#[test]
fn pod_cidr_outside_the_network_is_refused_before_annotating() {
    let api = KubeApi::start(ApiOptions::default());
    api.block_on(async {
        let admin = api.admin().await;
        nodes::create(&admin, "self", Some("10.99.0.0/24"), &[]).await;
        let (s, _) = store(&api, "self").await;
        let err = s
            .acquire(&req([10, 0, 0, 1], "aa:aa:aa:aa:aa:01", None))
            .await
            .unwrap_err();
        let msg = err.to_string();
        assert!(matches!(err, LeaseError::Config(_)), "{err:?}");
        assert!(
            msg.contains("10.99.0.0/24")
                && msg.contains("10.5.0.0/16")
                && msg.contains("--cluster-cidr"),
            "{msg}"
        );
        assert_eq!(nodes::flannel_annotations(&admin, "self").await, vec![]);
    });
}

#[test]
fn annotation_and_condition_patches_are_flannels_bytes() {
    let api = KubeApi::start(ApiOptions::default());
    api.block_on(async {
        let admin = api.admin().await;
        let foreign = vec![("example.com/keep".to_string(), "me".to_string())];
        nodes::create(&admin, "self", Some("10.5.4.0/24"), &foreign).await;
        nodes::kubelet_ready(&admin, "self").await;
        let (s, metrics) = kube_util::store::store_metered(&api, "self").await;
        let lease = s
            .acquire(&req([192, 168, 64, 3], "c6:d2:32:6f:8f:44", None))
            .await
            .unwrap();
        let mut want = flannel_vxlan("192.168.64.3", "c6:d2:32:6f:8f:44");
        want.sort();
        assert_eq!(nodes::flannel_annotations(&admin, "self").await, want);
        let raw = nodes::raw(&admin, "self").await;
        assert_eq!(raw["metadata"]["annotations"]["example.com/keep"], "me");
        assert_eq!(
            raw["metadata"]["annotations"][key("backend-data")]
                .as_str()
                .unwrap(),
            r#"{"VNI":1,"VtepMAC":"c6:d2:32:6f:8f:44"}"#
        );

        // A restart with the same attributes, and a renewal, send nothing.
        let patches =
            |m: &overlayd::metrics::Metrics| kube_util::store::requests(m, "patch_annotations");
        assert_eq!(patches(&metrics), 1);
        let rv = raw["metadata"]["resourceVersion"].clone();
        s.acquire(&req([192, 168, 64, 3], "c6:d2:32:6f:8f:44", None))
            .await
            .unwrap();
        s.renew(&lease).await.unwrap();
        assert_eq!(patches(&metrics), 1);
        assert_eq!(
            nodes::raw(&admin, "self").await["metadata"]["resourceVersion"],
            rv
        );

        s.mark_ready(&lease).await.unwrap();
        let conds = nodes::conditions(&admin, "self").await;
        let nu = &conds["NetworkUnavailable"];
        assert_eq!(
            (
                nu["status"].as_str(),
                nu["reason"].as_str(),
                nu["message"].as_str()
            ),
            (
                Some("False"),
                Some("FlannelIsUp"),
                Some("Flannel is running on this node")
            )
        );
        let t = nu["lastTransitionTime"].as_str().unwrap();
        assert_eq!(nu["lastHeartbeatTime"].as_str(), Some(t));
        assert!(
            t.len() == 20 && t.ends_with('Z'),
            "RFC 3339 in seconds: {t}"
        );
        // The kubelet's conditions are untouched.
        assert_eq!(conds["Ready"]["status"], "True");
        assert_eq!(conds["Ready"]["reason"], "KubeletReady");
        assert_eq!(
            conds["MemoryPressure"]["reason"],
            "KubeletHasSufficientMemory"
        );
        assert_eq!(conds.len(), 3, "{conds:?}");
    });
}

#[test]
fn overwrite_and_node_public_ip_annotations_are_honoured() {
    let api = KubeApi::start(ApiOptions::default());
    api.block_on(async {
        let admin = api.admin().await;
        let user = vec![
            (key("public-ip-overwrite"), "203.0.113.7".to_string()),
            (key("node-public-ip"), "198.51.100.5".to_string()),
        ];
        nodes::create(&admin, "self", Some("10.5.5.0/24"), &user).await;
        let (s, _) = store(&api, "self").await;
        assert_eq!(
            s.node_public_ip().await.unwrap(),
            Some("198.51.100.5".parse().unwrap())
        );
        assert_eq!(s.stored_vtep_mac().await.unwrap(), None);
        let mut rx = watch(&s);
        let lease = s
            .acquire(&req([10, 0, 0, 1], "aa:aa:aa:aa:aa:05", None))
            .await
            .unwrap();
        assert_eq!(lease.attrs.public_ip.to_string(), "203.0.113.7");
        let got = nodes::flannel_annotations(&admin, "self").await;
        assert!(
            got.contains(&(key("public-ip"), "203.0.113.7".into())),
            "{got:?}"
        );
        assert!(
            got.contains(&(key("node-public-ip"), "198.51.100.5".into())),
            "user keys kept: {got:?}"
        );
        assert_eq!(
            s.stored_vtep_mac().await.unwrap().as_deref(),
            Some("aa:aa:aa:aa:aa:05")
        );
        // Our own lease in the snapshot is exactly what acquire returned
        // (the daemon's renew loop compares the two).
        let snap = until(&mut rx, "our lease", |s| has(s, "10.5.5.0/24")).await;
        assert_eq!(snap.get(&lease.subnet).unwrap().attrs, lease.attrs);
    });
}

#[test]
fn renew_restores_removed_annotations() {
    let api = KubeApi::start(ApiOptions::default());
    api.block_on(async {
        let admin = api.admin().await;
        nodes::create(&admin, "self", Some("10.5.6.0/24"), &[]).await;
        let (s, _) = store(&api, "self").await;
        let lease = s
            .acquire(&req([10, 0, 0, 6], "aa:aa:aa:aa:aa:06", None))
            .await
            .unwrap();
        let want = nodes::flannel_annotations(&admin, "self").await;
        nodes::annotate(
            &admin,
            "self",
            &[
                (key("kube-subnet-manager"), None),
                (key("public-ip"), Some("1.2.3.4".into())),
            ],
        )
        .await;
        let renewed = s.renew(&lease).await.unwrap();
        assert_eq!(renewed, lease);
        assert_eq!(nodes::flannel_annotations(&admin, "self").await, want);
    });
}

#[test]
fn node_recreated_with_another_pod_cidr() {
    let api = KubeApi::start(ApiOptions::default());
    api.block_on(async {
        let admin = api.admin().await;
        nodes::create(&admin, "a", Some("10.5.1.0/24"), &[]).await;
        let (a, _) = store(&api, "a").await;
        let (b, _) = store(&api, "b").await;
        let mut seen_by_b = watch(&b);
        let lease = a
            .acquire(&req([10, 0, 0, 1], "aa:aa:aa:aa:aa:0a", None))
            .await
            .unwrap();
        until(&mut seen_by_b, "a's lease", |s| has(s, "10.5.1.0/24")).await;

        nodes::delete(&admin, "a").await;
        until(&mut seen_by_b, "a gone", |s| !has(s, "10.5.1.0/24")).await;
        let gone = a.renew(&lease).await.unwrap_err();
        assert!(
            matches!(gone, LeaseError::Store(ref m) if m.contains("node a is gone")),
            "{gone:?}"
        );

        // The kubelet registers it again; the controller-manager picks
        // another pod CIDR. Our lease is lost (the daemon exits and its
        // restart acquires the new one) and peers follow.
        nodes::create(&admin, "a", Some("10.5.7.0/24"), &[]).await;
        let lost = a.renew(&lease).await.unwrap_err();
        assert!(
            matches!(lost, LeaseError::Lost(s) if s == net("10.5.1.0/24")),
            "{lost:?}"
        );
        let again = a
            .acquire(&req([10, 0, 0, 1], "aa:aa:aa:aa:aa:0a", None))
            .await
            .unwrap();
        assert_eq!(again.subnet, net("10.5.7.0/24"));
        let snap = until(&mut seen_by_b, "a's new lease", |s| has(s, "10.5.7.0/24")).await;
        assert!(!has(&snap, "10.5.1.0/24"));
        assert_eq!(snap.get(&net("10.5.7.0/24")).unwrap().attrs, again.attrs);
    });
}

/// A 410 Gone, made reliably on 1.20: the API server's watch cache serves
/// watches from memory, so an etcd compaction alone expires nothing.
/// Instead the API server is stopped, a Node is deleted behind its back
/// (in etcd), and it is started again: its fresh watch cache begins at
/// etcd's current revision, so the store's re-watch from its last
/// resourceVersion is "too old" and answered with an in-stream 410.
#[test]
fn relist_after_410_drops_vanished_nodes_and_keeps_the_rest_meanwhile() {
    relist_after_410(false);
}

/// The same with listings from the watch cache (resourceVersion=0).
#[test]
fn relist_after_410_with_cached_lists() {
    relist_after_410(true);
}

fn relist_after_410(cached: bool) {
    let mut api = KubeApi::start(ApiOptions::default());
    let admin_kubeconfig = api.kubeconfig(kube_util::ADMIN_TOKEN);
    // The runtime lives across the restart; the restart runs on this
    // thread between two block_on calls.
    let rt = api.runtime();
    let (s, mut rx, recorder) = rt.block_on(async {
        let admin = kube_util::client_for(&admin_kubeconfig).await;
        for (i, n) in ["n1", "n2", "n3"].iter().enumerate() {
            let ip = format!("192.168.64.{}", i + 1);
            nodes::create(
                &admin,
                n,
                Some(&format!("10.5.{}.0/24", i + 1)),
                &flannel_vxlan(&ip, "aa:aa:aa:aa:aa:01"),
            )
            .await;
        }
        let (s, _) = kube_util::store::connect(&api, "self").await;
        let s = Arc::new(s.with_cached_lists(cached));
        let mut rx = watch(&s);
        until(&mut rx, "3 leases", |s| s.len() == 3).await;
        // Every snapshot published from here on, as the reconciler sees it.
        let recorder = record(rx.clone());
        (s, rx, recorder)
    });
    api.stop();
    api.etcdctl_ok(&["del", "/registry/minions/n3"]);
    assert_eq!(
        rx.borrow().len(),
        3,
        "the snapshot stays while the API is down"
    );
    api.resume();
    rt.block_on(async {
        let snap = until(&mut rx, "the relist", |s| s.listing == 2).await;
        assert_eq!(
            snap.keys().copied().collect::<Vec<_>>(),
            vec![net("10.5.1.0/24"), net("10.5.2.0/24")]
        );
        drop(s);
        let seen = recorder.stop().await;
        for (listing, leases) in &seen {
            let want = if *listing == 1 { 3 } else { 2 };
            assert_eq!(*leases, want, "a partial snapshot was published: {seen:?}");
        }
    });
}

/// Records (listing, lease count) of every snapshot a receiver observes.
struct Recorder {
    task: tokio::task::JoinHandle<Vec<(u64, usize)>>,
    stop: Arc<tokio::sync::Notify>,
}

fn record(mut rx: tokio::sync::watch::Receiver<Arc<overlayd::lease::LeaseSnapshot>>) -> Recorder {
    let stop = Arc::new(tokio::sync::Notify::new());
    let stopped = stop.clone();
    let task = tokio::spawn(async move {
        let mut seen = Vec::new();
        loop {
            tokio::select! {
                r = rx.changed() => if r.is_err() { return seen },
                _ = stopped.notified() => return seen,
            }
            let s = rx.borrow_and_update().clone();
            seen.push((s.listing, s.len()));
        }
    });
    Recorder { task, stop }
}

impl Recorder {
    async fn stop(self) -> Vec<(u64, usize)> {
        self.stop.notify_one();
        self.task.await.unwrap()
    }
}

#[test]
fn watch_never_stops_on_errors() {
    // Against an API server that is not there yet, the watch keeps
    // retrying and reports why; it lists once the server is up.
    let mut api = KubeApi::start(ApiOptions::default());
    api.stop();
    let rt = api.runtime();
    let (s, mut rx) = rt.block_on(async {
        let (s, _) = store(&api, "self").await;
        let rx = watch(&s);
        let mut errs = s.watch_errors();
        let e = tokio::time::timeout(kube_util::store::PATIENCE, errs.wait_for(|e| e.is_some()))
            .await
            .unwrap()
            .unwrap()
            .clone();
        assert!(e.unwrap().contains("list nodes"));
        (s, rx)
    });
    api.resume();
    rt.block_on(async {
        until(&mut rx, "the first listing", |s| s.listing == 1).await;
        assert_eq!(*s.watch_errors().borrow(), None);
    });
}
