//! One watch of every Node (kube-runtime's watcher): no per-node polling,
//! no field or label selector (Kubernetes cannot filter annotations).
//!
//! - Listings come in pages of 500 Nodes (a consistent read, through the
//!   API server from etcd), so at most one page of full Node objects is
//!   held at a time. kube 4.2 sends resourceVersion=0 (`any_semantic`,
//!   served from the watch cache like client-go's informer) only without
//!   a page size, and 1.20 answers such a list in one response of every
//!   Node (measured: 155 MB at 20,000 Nodes), so cached listings are an
//!   opt-in ([`KubeStore::with_cached_lists`]) that trades the store's
//!   peak memory for less etcd load when many nodes relist at once.
//! - Errors never end the watch: the watcher re-watches from the last
//!   resourceVersion, or relists after 410 Gone, with client-go's backoff
//!   (0.8 s .. 30 s, jittered).
//! - Each Node is trimmed and reduced to its lease view on arrival; see
//!   [`Tracker`] for when a snapshot is due. Snapshots go out at most
//!   every [`PUBLISH_GAP`] during bursts, at once otherwise.

use super::node::{derive, trim};
use super::tracker::Tracker;
use super::{api_error, KubeStore};
use crate::lease::LeaseSnapshot;
use futures::StreamExt;
use k8s_openapi::api::core::v1::Node;
use kube::runtime::watcher::{self, Event};
use kube::runtime::WatchStreamExt;
use kube::ResourceExt;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;
use tokio::time::Instant;

/// Least time between two snapshots while Nodes keep changing.
const PUBLISH_GAP: Duration = Duration::from_millis(100);

impl KubeStore {
    /// Publishes snapshots into `tx` until every receiver is gone.
    pub(super) async fn watch_nodes(&self, tx: watch::Sender<Arc<LeaseSnapshot>>) {
        let ann = self.ann.clone();
        let mut cfg = watcher::Config::default();
        if self.cached_lists {
            cfg = cfg.any_semantic();
            cfg.page_size = None;
        }
        let stream = watcher::watcher(self.nodes.clone(), cfg)
            .modify(move |n| trim(&ann, n))
            .default_backoff();
        let mut stream = std::pin::pin!(stream);
        let mut tracker = Tracker::new();
        let mut last = Instant::now() - PUBLISH_GAP;
        loop {
            let next = tokio::select! {
                n = stream.next() => n,
                _ = tx.closed() => return,
            };
            let Some(first) = next else { return };
            self.fold(&mut tracker, first);
            if !tracker.is_dirty() {
                continue;
            }
            // The first change after a quiet spell goes out at once; in a
            // burst (thousands of Nodes joining) changes are gathered for
            // PUBLISH_GAP, so a snapshot (O(nodes) to build and to diff)
            // is made a few times a second, not once per Node.
            let due = last + PUBLISH_GAP;
            loop {
                tokio::select! {
                    biased;
                    n = stream.next() => match n {
                        Some(ev) => self.fold(&mut tracker, ev),
                        None => return,
                    },
                    _ = tokio::time::sleep_until(due) => break,
                }
            }
            if let Some(snap) = tracker.take_snapshot() {
                tracing::debug!(
                    leases = snap.len(),
                    malformed = snap.malformed.len(),
                    listing = snap.listing,
                    "publishing lease snapshot"
                );
                tx.send_replace(Arc::new(snap));
                last = Instant::now();
            }
        }
    }

    fn fold(&self, t: &mut Tracker, ev: Result<Event<Node>, watcher::Error>) {
        let ev = match ev {
            Ok(ev) => ev,
            Err(e) => return self.watch_failed(&e),
        };
        match ev {
            Event::Init => {
                self.metrics.store_request("list_nodes");
                t.init();
            }
            Event::InitApply(n) => {
                self.own_seen(&n);
                t.init_apply(n.name_any(), derive(&self.ann, &n));
            }
            Event::InitDone => {
                t.init_done();
                if t.listings() > 1 {
                    self.metrics.watch_reconnects.inc();
                }
                tracing::info!(listing = t.listings(), "listed all Nodes");
                self.watch_ok();
            }
            Event::Apply(n) => {
                self.own_seen(&n);
                t.apply(n.name_any(), derive(&self.ann, &n));
                self.watch_ok();
            }
            Event::Delete(n) => {
                self.own_seen(&n);
                t.delete(&n.name_any());
                self.watch_ok();
            }
        }
    }

    /// Wakes a waiting acquire when our Node shows up or changes.
    fn own_seen(&self, n: &Node) {
        if n.metadata.name.as_deref() == Some(self.node_name.as_str()) {
            self.own_changed.send_modify(|v| *v = v.wrapping_add(1));
        }
    }

    fn watch_ok(&self) {
        self.watch_error.send_if_modified(|e| e.take().is_some());
        if let Some(r) = &self.readiness {
            r.note("kube-watch", None);
        }
    }

    fn watch_failed(&self, e: &watcher::Error) {
        let msg = match e {
            watcher::Error::InitialListFailed(e) => api_error("list nodes", e).to_string(),
            watcher::Error::WatchStartFailed(e) | watcher::Error::WatchFailed(e) => {
                api_error("watch nodes", e).to_string()
            }
            watcher::Error::WatchError(s) if s.code == 410 => {
                // Expected after a long disconnect or compaction: the
                // watcher relists; the current snapshot stays until then.
                tracing::info!(reason = %s.message, "Node watch expired (410 Gone); relisting");
                self.metrics.store_request("watch_expired");
                return;
            }
            watcher::Error::WatchError(s) => {
                format!("watch nodes: {} (HTTP {} {})", s.message, s.code, s.reason)
            }
            other => format!("watch nodes: {other}"),
        };
        self.metrics.store_error("watch_nodes");
        tracing::warn!(error = %msg, "Node watch failed; retrying with backoff");
        if let Some(r) = &self.readiness {
            r.note("kube-watch", Some(msg.clone()));
        }
        self.watch_error.send_replace(Some(msg));
    }
}
