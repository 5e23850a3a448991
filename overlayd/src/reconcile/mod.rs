//! Level-triggered reconciliation: desired state from the leases, actual
//! state read back from the kernel, converge (add missing, remove what no
//! lease wants, fix what differs). Every trigger (lease snapshot change,
//! periodic resync, netlink notification) recomputes from full state.
//!
//! CONTRACT used by main.rs (do not change without updating main.rs):
//!
//! ```ignore
//! pub async fn run(
//!     backend: std::sync::Arc<dyn crate::backend::Backend>,
//!     own: crate::lease::Lease,
//!     network: ipnet::Ipv4Net,
//!     leases: tokio::sync::watch::Receiver<std::sync::Arc<crate::lease::LeaseSnapshot>>,
//!     resync: std::time::Duration,
//! ) -> Result<(), ReconcileError>
//! ```
//! It runs until `leases` is closed. `own` is filtered out of the
//! snapshot; expired leases are ignored. Only snapshots *sent* on the
//! channel by the store may delete anything: the channel's initial value
//! (a seed, empty or our own lease alone) and any snapshot lacking `own`
//! add and fix but never prune, so a restart never tears down peers that
//! the store simply has not listed yet.
//!
//! Triggers: every new snapshot, every `resync`, and rtnetlink change
//! notifications about the backend's objects (debounced).

pub mod desired;
pub mod plan;

use crate::backend::Backend;
use crate::kernel::objects::{describe, Bounds};
use crate::kernel::watch::{relevant, Changes};
use crate::kernel::{Kernel, KernelError};
use crate::lease::{Lease, LeaseSnapshot};
use ipnet::Ipv4Net;
use std::collections::BTreeSet;
use std::net::Ipv4Addr;
use std::sync::Arc;
use std::time::{Duration, SystemTime};
use tokio::sync::watch;

/// Coalesces a burst of kernel notifications into one round.
const DEBOUNCE: Duration = Duration::from_millis(100);

#[derive(Debug, thiserror::Error)]
pub enum ReconcileError {
    #[error("reconciler cannot reach the kernel: {0}")]
    Kernel(#[from] KernelError),
}

/// A route to a peer's subnet (main table, unicast).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct RouteSpec {
    pub dst: Ipv4Net,
    pub gateway: Ipv4Addr,
    pub oif: u32,
    pub onlink: bool,
    /// Route priority; felt installs 0. Read back so a same-destination
    /// route with another metric is seen as a different object.
    pub metric: u32,
}

/// A permanent ARP entry on a device (vxlan: peer's subnet address -> VTEP MAC).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct NeighSpec {
    pub ifindex: u32,
    pub ip: Ipv4Addr,
    pub mac: [u8; 6],
}

/// A permanent bridge FDB entry with NTF_SELF (VTEP MAC -> peer public IP).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct FdbSpec {
    pub ifindex: u32,
    pub mac: [u8; 6],
    pub dst: Ipv4Addr,
}

/// What the peers need in the kernel, computed purely from the leases.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Desired {
    pub routes: BTreeSet<RouteSpec>,
    pub neighbours: BTreeSet<NeighSpec>,
    pub fdb: BTreeSet<FdbSpec>,
    /// Peers that cannot be served, with the reason (logged, exported).
    pub problems: Vec<String>,
}

/// The felt-owned objects the kernel has now (see [`Scope`]).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Actual {
    pub routes: BTreeSet<RouteSpec>,
    pub neighbours: BTreeSet<NeighSpec>,
    pub fdb: BTreeSet<FdbSpec>,
}

/// Which kernel objects a backend owns, so the reconciler removes only
/// what is felt's: never the own subnet, never routes outside the
/// network, never another interface's objects.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Scope {
    /// The external (underlay) interface.
    pub ext_index: u32,
    /// The backend's device (vxlan): routes inside the network through
    /// it, and all its permanent neighbours and FDB entries, are felt's.
    pub device: Option<u32>,
    /// Routes inside the network via a gateway on the external interface
    /// are felt's (host-gw, vxlan DirectRouting).
    pub ext_gateway_routes: bool,
}

/// What one round did, for logs, metrics and tests.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RoundReport {
    pub applied: usize,
    pub failed: usize,
    /// Whether objects no lease wants could be deleted this round.
    pub pruned: bool,
    pub problems: Vec<String>,
}

/// One node's reconciler: owns its netlink socket and the last problems
/// reported (so they are logged when they change, not every round).
pub struct Reconciler {
    backend: Arc<dyn Backend>,
    own: Lease,
    network: Ipv4Net,
    kernel: Kernel,
    last_problems: Vec<String>,
}

impl Reconciler {
    /// Opens the netlink socket in the current network namespace.
    pub fn new(
        backend: Arc<dyn Backend>,
        own: Lease,
        network: Ipv4Net,
    ) -> Result<Self, ReconcileError> {
        Ok(Reconciler {
            backend,
            own,
            network,
            kernel: Kernel::connect()?,
            last_problems: Vec::new(),
        })
    }

    pub fn scope(&self) -> Scope {
        self.backend.scope()
    }

    /// Converges the kernel to the snapshot once. `listed`: the snapshot
    /// is a full listing from the store (not a seed), so objects no lease
    /// wants may be deleted. Errors are logged and counted; what failed is
    /// retried by the next round, which recomputes from full state.
    pub async fn round(&mut self, snapshot: &LeaseSnapshot, listed: bool) -> RoundReport {
        let mut report = RoundReport::default();
        if let Err(e) = self.backend.ensure(&self.own).await {
            tracing::warn!(error = %e, "cannot ensure the backend device; retrying next round");
            report.failed += 1;
        }
        let scope = self.backend.scope();
        let connected = match self.kernel.connected_networks(scope.ext_index).await {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(error = %e, "cannot read the external interface's networks");
                report.failed += 1;
                Vec::new()
            }
        };
        let (peers, mut problems) = desired::select_peers(
            snapshot,
            &self.own,
            self.backend.backend_type(),
            SystemTime::now(),
        );
        let want = self.backend.desired(&self.own, &peers, &connected);
        problems.extend(want.problems.iter().cloned());
        self.log_problems(&problems);
        report.problems = problems;
        let bounds = Bounds {
            network: self.network,
            own: self.own.subnet,
        };
        let have = match self.kernel.dump_owned(&scope, bounds).await {
            Ok(a) => a,
            Err(e) => {
                tracing::warn!(error = %e, "cannot read kernel state; retrying next round");
                report.failed += 1;
                return report;
            }
        };
        report.pruned = listed && desired::authoritative(snapshot, &self.own);
        tracing::debug!(
            leases = snapshot.len(),
            peers = peers.len(),
            routes = want.routes.len(),
            actual_routes = have.routes.len(),
            prune = report.pruned,
            "reconcile round"
        );
        for op in plan::plan(&want, &have, report.pruned) {
            match self.kernel.apply(&op).await {
                Ok(()) => {
                    tracing::info!(op = %describe(&op), "reconciled");
                    report.applied += 1;
                }
                Err(e) => {
                    tracing::warn!(op = %describe(&op), error = %e, "operation failed; retrying next round");
                    report.failed += 1;
                }
            }
        }
        report
    }

    fn log_problems(&mut self, problems: &[String]) {
        if problems != self.last_problems.as_slice() {
            for p in problems.iter().filter(|p| !self.last_problems.contains(p)) {
                tracing::warn!(problem = %p, "peer cannot be served");
            }
            self.last_problems = problems.to_vec();
        }
    }
}

/// The reconcile loop (see the module CONTRACT).
pub async fn run(
    backend: Arc<dyn Backend>,
    own: Lease,
    network: Ipv4Net,
    mut leases: watch::Receiver<Arc<LeaseSnapshot>>,
    resync: Duration,
) -> Result<(), ReconcileError> {
    let mut reconciler = Reconciler::new(backend, own, network)?;
    let mut changes = match Kernel::subscribe_changes() {
        Ok(c) => Some(c),
        Err(e) => {
            tracing::warn!(error = %e, "no kernel change notifications; relying on the periodic resync");
            None
        }
    };
    // The channel's initial value is a seed, not a listing: only a value
    // the store sent may prune, whether changed() woke us or the value
    // arrived while another trigger's round ran.
    let mut listed = false;
    loop {
        listed |= leases.has_changed().unwrap_or(false);
        let snapshot = leases.borrow_and_update().clone();
        let report = reconciler.round(&snapshot, listed).await;
        if listed && !report.pruned {
            tracing::warn!(
                "lease snapshot lacks our own lease; stale state is kept until it has it"
            );
        }
        let scope = reconciler.scope();
        tokio::select! {
            changed = leases.changed() => {
                if changed.is_err() {
                    tracing::info!("lease watch closed; reconciler stops (datapath stays up)");
                    return Ok(());
                }
                // changed() marked the new value seen: record it here.
                listed = true;
            }
            _ = tokio::time::sleep(resync) => {}
            _ = next_relevant(&mut changes, &scope) => {
                tokio::time::sleep(DEBOUNCE).await;
                if let Some(c) = changes.as_mut() {
                    c.drain();
                }
            }
        }
    }
}

/// Waits for a kernel notification about the backend's objects; never
/// returns when notifications are unavailable.
async fn next_relevant(changes: &mut Option<Changes>, scope: &Scope) {
    loop {
        let Some(c) = changes.as_mut() else {
            return std::future::pending().await;
        };
        match c.next().await {
            Some(msg) if relevant(&msg, scope) => return,
            Some(_) => {}
            None => {
                tracing::warn!("kernel change notifications lost; relying on the periodic resync");
                *changes = None;
            }
        }
    }
}
