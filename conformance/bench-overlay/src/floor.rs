//! The reference watcher for convergence: the bench itself watching the
//! lease prefix and, on each new lease, adding the peer's neighbour, FDB
//! entry and route with rtnetlink, in a scratch namespace. About the
//! least any daemon can do per join, so it is the floor felt (and
//! flanneld) are compared with.

use crate::error::{etcd_err, BenchError, Result};
use crate::ns::{block_on_in, rtnetlink_in};
use crate::objects::add_peer;
use crate::peers::{connect, parse_lease};
use etcd_client::{EventType, WatchOptions};
use std::path::PathBuf;
use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::Duration;

/// Where the watcher runs and what it programs.
pub struct Target {
    /// The namespace etcd is reached from.
    pub etcd_ns: PathBuf,
    pub endpoint: String,
    /// `<prefix>/subnets/`.
    pub watch_prefix: String,
    /// The scratch namespace and its VTEP's ifindex.
    pub kernel_ns: PathBuf,
    pub vtep: u32,
}

/// A running watcher; `stop` ends it and says how many peers it added
/// and how many writes failed.
pub struct FloorWatcher {
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<JoinHandle<Result<(usize, usize)>>>,
}

impl FloorWatcher {
    /// Starts watching; returns once the watch is established.
    pub fn start(target: Target) -> Result<Self> {
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel();
        let (ready_tx, ready_rx) = mpsc::channel();
        let thread = std::thread::spawn(move || {
            let etcd_ns = target.etcd_ns.clone();
            block_on_in(&etcd_ns, || watch(target, ready_tx, stop_rx))
        });
        match ready_rx.recv_timeout(Duration::from_secs(10)) {
            Ok(()) => Ok(FloorWatcher {
                stop: Some(stop_tx),
                thread: Some(thread),
            }),
            Err(_) => Err(match thread.join() {
                Ok(Err(e)) => e,
                _ => BenchError::Setup("the floor watcher did not start".into()),
            }),
        }
    }

    pub fn stop(mut self) -> Result<(usize, usize)> {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        match self.thread.take().map(JoinHandle::join) {
            Some(Ok(r)) => r,
            _ => Err(BenchError::Setup("the floor watcher panicked".into())),
        }
    }
}

impl Drop for FloorWatcher {
    fn drop(&mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

async fn watch(
    t: Target,
    ready: mpsc::Sender<()>,
    mut stop: tokio::sync::oneshot::Receiver<()>,
) -> Result<(usize, usize)> {
    let handle = rtnetlink_in(&t.kernel_ns)?;
    let mut client = connect(&t.endpoint).await?;
    let opts = WatchOptions::new().with_prefix();
    let mut stream = client
        .watch(t.watch_prefix.clone(), Some(opts))
        .await
        .map_err(etcd_err("watch"))?;
    let _ = ready.send(());
    let (mut added, mut failed) = (0, 0);
    loop {
        let resp = tokio::select! {
            _ = &mut stop => return Ok((added, failed)),
            m = stream.message() => m.map_err(etcd_err("watch stream"))?,
        };
        let Some(resp) = resp else {
            return Err(BenchError::Setup("etcd closed the floor's watch".into()));
        };
        for ev in resp.events() {
            let peer = ev
                .kv()
                .filter(|_| ev.event_type() == EventType::Put)
                .and_then(|kv| parse_lease(kv.key(), kv.value()));
            if let Some(p) = peer {
                // A re-put (a node renewing) finds its route in place.
                match add_peer(&handle, t.vtep, &p).await {
                    Ok(()) => added += 1,
                    Err(_) => failed += 1,
                }
            }
        }
    }
}
