//! felt's Kubernetes lease store on the test API server: options, a
//! running watch, and waits on what it publishes.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use super::KubeApi;
use overlayd::health::readiness::Readiness;
use overlayd::lease::kube::{KubeOptions, KubeStore, NodeIdentity};
use overlayd::lease::{LeaseSnapshot, LeaseStore};
use overlayd::metrics::Metrics;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;

pub const VXLAN16: &str = r#"{"Network":"10.5.0.0/16","Backend":{"Type":"vxlan"}}"#;

/// How long a wait for what normally takes milliseconds may last (CI runs
/// on 2 loaded cores); a relist after an API server restart waits out the
/// watcher's backoff too.
pub const PATIENCE: Duration = Duration::from_secs(60);

/// Options for node `node` with `token`'s kubeconfig and net-conf.json
/// `netconf` written beside it.
pub fn options(api: &KubeApi, node: NodeIdentity, token: &str, netconf: &str) -> KubeOptions {
    let path = api.dir.join("net-conf.json");
    std::fs::write(&path, netconf).unwrap();
    KubeOptions {
        api_url: None,
        kubeconfig: Some(api.kubeconfig(token)),
        annotation_prefix: "flannel.alpha.coreos.com".into(),
        net_config_path: path,
        node: Some(node),
        set_node_network_unavailable: true,
    }
}

/// A store for node `name` (admin token, VXLAN16) that reports on
/// `readiness`.
pub async fn store(api: &KubeApi, name: &str) -> (Arc<KubeStore>, Arc<Readiness>) {
    let readiness = Arc::new(Readiness::new());
    let (s, _) = connect(api, name).await;
    (Arc::new(s.with_readiness(readiness.clone())), readiness)
}

/// A store for node `name` (admin token, VXLAN16) counting into the
/// returned metrics.
pub async fn store_metered(api: &KubeApi, name: &str) -> (Arc<KubeStore>, Arc<Metrics>) {
    let (s, metrics) = connect(api, name).await;
    (Arc::new(s), metrics)
}

/// A store for node `name` (admin token, VXLAN16), to configure further.
pub async fn connect(api: &KubeApi, name: &str) -> (KubeStore, Arc<Metrics>) {
    let opts = options(
        api,
        NodeIdentity::Node(name.into()),
        super::ADMIN_TOKEN,
        VXLAN16,
    );
    let metrics = Arc::new(Metrics::new());
    let s = KubeStore::connect(&opts, metrics.clone()).await.unwrap();
    (s, metrics)
}

/// How many requests of kind `op` the store made.
pub fn requests(metrics: &Metrics, op: &str) -> u64 {
    metrics
        .store_requests
        .get_or_create(&overlayd::metrics::OpLabel { op: op.into() })
        .get()
}

/// Runs the store's watch; the receiver sees every snapshot it publishes.
pub fn watch(store: &Arc<KubeStore>) -> watch::Receiver<Arc<LeaseSnapshot>> {
    let (tx, rx) = watch::channel(Arc::new(LeaseSnapshot::new()));
    let s = store.clone();
    tokio::spawn(async move { s.watch_leases(tx).await });
    rx
}

/// Waits (up to [`PATIENCE`]) until the snapshot satisfies `pred`;
/// returns it.
pub async fn until(
    rx: &mut watch::Receiver<Arc<LeaseSnapshot>>,
    what: &str,
    pred: impl Fn(&LeaseSnapshot) -> bool,
) -> Arc<LeaseSnapshot> {
    let got = match tokio::time::timeout(PATIENCE, rx.wait_for(|s| pred(s))).await {
        Ok(Ok(s)) => Some(s.clone()),
        _ => None,
    };
    match got {
        Some(s) => s,
        None => {
            let s = rx.borrow();
            panic!(
                "snapshot never showed {what}; last (listing {}): {:?}, malformed {:?}",
                s.listing,
                s.keys().collect::<Vec<_>>(),
                s.malformed
            )
        }
    }
}

/// Waits until /readyz's lease line (from `readiness`) contains `text`.
pub async fn until_readiness(readiness: &Readiness, text: &str) {
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        let (_, body) = readiness.report();
        if body.contains(text) {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "readiness never said {text:?}; it says:\n{body}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
