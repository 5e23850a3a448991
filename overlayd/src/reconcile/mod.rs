//! Level-triggered reconciliation: desired state from the leases, actual
//! state read back from the kernel, converge (add missing, remove what no
//! lease wants, fix what differs).
//!
//! Two kinds of pass:
//! - **full**: re-verify the device, read back every object felt owns and
//!   plan against the whole desired state. Runs at start, every
//!   `resync`, after the store re-listed (a lost watch), when the kernel
//!   reports drift, and to retry failed operations. Nothing can be lost:
//!   it recomputes from scratch.
//! - **incremental**: for a new lease snapshot, only the peers whose lease
//!   changed are re-evaluated and only their objects written, so the cost
//!   of one change does not grow with the cluster.
//!
//! Only snapshots *sent* by the store may delete anything: the channel's
//! initial value (a seed holding our own lease) and any snapshot lacking
//! our own lease add and fix but never prune, so a restart never tears
//! down peers that the store simply has not listed yet.

pub mod desired;
pub mod plan;

use crate::backend::Backend;
use crate::health::readiness::{Condition, Readiness};
use crate::kernel::objects::{describe, foreign_slot, owned_route, Bounds as KernelBounds};
use crate::kernel::watch::{is_drift, Changes};
use crate::kernel::{Kernel, KernelError};
use crate::lease::{Lease, LeaseSnapshot};
use crate::metrics::{BackendLabel, Metrics, PassLabel};
use crate::spec::{Desired, ObjectKind, Op, PeerObjects};
use desired::{Bounds, Skip};
use ipnet::Ipv4Net;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::watch;

/// First retry of failed operations; doubles up to the resync interval.
const RETRY_MIN: Duration = Duration::from_secs(1);

#[derive(Debug, thiserror::Error)]
pub enum ReconcileError {
    #[error("reconciler cannot reach the kernel: {0}")]
    Kernel(#[from] KernelError),
}

/// What one pass did, for logs, metrics and tests.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RoundReport {
    pub applied: usize,
    pub failed: usize,
    /// Whether objects no lease wants could be deleted this pass.
    pub pruned: bool,
    /// Leases not routed, and other peer problems, one line each.
    pub problems: Vec<String>,
}

/// The verdict on one peer lease.
#[derive(Debug, Clone)]
enum Verdict {
    Served(PeerObjects),
    Skipped(Skip),
}

/// One node's reconciler: owns its netlink socket and what it last decided.
pub struct Reconciler {
    backend: Arc<dyn Backend>,
    own: Lease,
    network: Ipv4Net,
    subnet_len: u8,
    kernel: Kernel,
    metrics: Arc<Metrics>,
    readiness: Option<Arc<Readiness>>,
    /// The snapshot the last pass was computed from.
    seen: Option<Arc<LeaseSnapshot>>,
    peers: BTreeMap<Ipv4Net, Verdict>,
    /// The union of the served peers' objects and the backend's own.
    desired: Desired,
    /// Networks on the external interface / on any interface, read at
    /// each full pass (an address change is drift, so it triggers one).
    ext_networks: Vec<Ipv4Net>,
    connected: Vec<Ipv4Net>,
    /// Route slots inside the network held by routes felt does not own:
    /// from each full pass's dump, kept current by route notifications,
    /// so an incremental pass never writes a peer it would have to undo.
    foreign: BTreeMap<(Ipv4Net, u32), String>,
    /// The peers last handed to the backend (udp's userspace table).
    handed_over: Vec<(Ipv4Net, std::net::Ipv4Addr)>,
    /// Whether the last pass could prune: an incremental pass only builds
    /// on a kernel state that holds nothing stale.
    settled: bool,
    /// The problem last logged per subnet, so each is logged on change.
    logged: BTreeMap<Ipv4Net, String>,
    /// Fired once routes to every listed peer are in place: the first pass
    /// on an authoritative listing with no failure.
    converged: Option<tokio::sync::oneshot::Sender<()>>,
}

impl Reconciler {
    /// Opens the netlink socket in the current network namespace.
    pub fn new(
        backend: Arc<dyn Backend>,
        own: Lease,
        network: Ipv4Net,
        subnet_len: u8,
        metrics: Arc<Metrics>,
    ) -> Result<Self, ReconcileError> {
        Ok(Reconciler {
            backend,
            own,
            network,
            subnet_len,
            kernel: Kernel::connect()?,
            metrics,
            readiness: None,
            seen: None,
            peers: BTreeMap::new(),
            desired: Desired::default(),
            ext_networks: Vec::new(),
            connected: Vec::new(),
            foreign: BTreeMap::new(),
            settled: false,
            handed_over: Vec::new(),
            logged: BTreeMap::new(),
            converged: None,
        })
    }

    /// Returns a receiver that fires once the peers are routed (see
    /// `converged`); the daemon tells the store then (kube:
    /// NetworkUnavailable=False).
    pub fn on_converged(&mut self) -> tokio::sync::oneshot::Receiver<()> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.converged = Some(tx);
        rx
    }

    /// Reports the backend device's state as a readiness condition.
    pub fn with_readiness(mut self, readiness: Arc<Readiness>) -> Self {
        self.readiness = Some(readiness);
        self
    }

    fn kernel_bounds(&self) -> KernelBounds {
        KernelBounds {
            network: self.network,
            own: self.own.subnet,
        }
    }

    fn bounds(&self) -> Bounds {
        Bounds {
            network: self.network,
            subnet_len: self.subnet_len,
            own: self.own.clone(),
            backend_type: self.backend.backend_type(),
            connected: self.connected.clone(),
        }
    }

    /// Takes in a kernel notification: keeps the foreign route slots
    /// current, and says whether it shows drift from what is wanted.
    pub fn observe(&mut self, msg: &netlink_packet_route::RouteNetlinkMessage) -> bool {
        use netlink_packet_route::RouteNetlinkMessage as M;
        let scope = self.backend.scope();
        let bounds = self.kernel_bounds();
        if let M::NewRoute(r) | M::DelRoute(r) = msg {
            if owned_route(r, &scope, bounds).is_none() {
                if let Some((slot, what)) = foreign_slot(r, bounds) {
                    match msg {
                        M::NewRoute(_) => self.foreign.insert(slot, what),
                        _ => self.foreign.remove(&slot),
                    };
                }
            }
        }
        is_drift(msg, &scope, bounds, &self.desired)
    }

    /// A full pass (see the module doc). `listed`: the snapshot came from
    /// the store (not the seed), so objects no lease wants may be deleted.
    pub async fn round(&mut self, snapshot: &Arc<LeaseSnapshot>, listed: bool) -> RoundReport {
        let started = Instant::now();
        let mut report = RoundReport::default();
        self.ensure_device(&mut report).await;
        self.read_connected(&mut report).await;
        let scope = self.backend.scope();
        let have = match self.kernel.dump_owned(&scope, self.kernel_bounds()).await {
            Ok(a) => a,
            Err(e) => {
                tracing::warn!(error = %e, "cannot read kernel state; retrying");
                report.failed += 1;
                self.finish(snapshot, &mut report, "full", started);
                return report;
            }
        };
        self.foreign = have.foreign.clone();
        // Peers served before are evaluated first: a MAC clash is won by
        // whoever already held the MAC, never by a newcomer.
        let first: std::collections::BTreeSet<Ipv4Net> = self
            .peers
            .iter()
            .filter(|(sn, v)| matches!(v, Verdict::Served(_)) && snapshot.contains_key(sn))
            .map(|(sn, _)| *sn)
            .collect();
        let mut order: Vec<Ipv4Net> = first.iter().copied().collect();
        order.extend(snapshot.keys().filter(|sn| !first.contains(sn)));
        self.peers.clear();
        self.desired = Desired::default();
        self.desired.add(&self.backend.base_objects(&self.own));
        let bounds = self.bounds();
        for sn in order {
            if let Some(lease) = snapshot.get(&sn) {
                self.evaluate(lease, &bounds);
            }
        }
        report.pruned = listed && desired::authoritative(snapshot, &self.own);
        let (ops, problems) = plan::plan(&self.desired, &have, report.pruned);
        report.problems.extend(problems);
        tracing::debug!(
            leases = snapshot.len(),
            routes = self.desired.routes.len(),
            actual_routes = have.routes.len(),
            ops = ops.len(),
            prune = report.pruned,
            "full pass"
        );
        self.apply(ops, &mut report).await;
        self.finish(snapshot, &mut report, "full", started);
        report
    }

    /// An incremental pass for a new snapshot from the store. Falls back
    /// to a full pass when there is nothing to diff against, the store
    /// re-listed, or the snapshot is not authoritative.
    pub async fn incremental(&mut self, snapshot: &Arc<LeaseSnapshot>) -> RoundReport {
        let Some(seen) = self.seen.clone() else {
            return self.round(snapshot, true).await;
        };
        if !self.settled
            || seen.listing != snapshot.listing
            || !desired::authoritative(snapshot, &self.own)
        {
            return self.round(snapshot, true).await;
        }
        let started = Instant::now();
        let mut report = RoundReport {
            pruned: true,
            ..RoundReport::default()
        };
        let bounds = self.bounds();
        let (mut removed, mut added) = (PeerObjects::default(), PeerObjects::default());
        for sn in seen.changed_since(snapshot) {
            if let Some(Verdict::Served(objects)) = self.peers.remove(&sn) {
                self.desired.remove(&objects);
                extend(&mut removed, objects);
            }
            if let Some(lease) = snapshot.get(&sn) {
                if let Some(Verdict::Served(objects)) = self.evaluate(lease, &bounds) {
                    extend(&mut added, objects.clone());
                }
            }
        }
        let ops = self.delta(&removed, &added);
        self.apply(ops, &mut report).await;
        self.finish(snapshot, &mut report, "incremental", started);
        report
    }

    /// The operations from the objects of changed peers: what is no longer
    /// wanted goes, what is new comes; an unchanged object is left alone.
    fn delta(&self, removed: &PeerObjects, added: &PeerObjects) -> Vec<Op> {
        let mut ops = Vec::new();
        let want = &self.desired;
        let gone = |r| !want.routes.contains(r);
        ops.extend(
            removed
                .routes
                .iter()
                .filter(|r| gone(r))
                .cloned()
                .map(Op::DelRoute),
        );
        let gone_n = |n| !want.neighbours.contains(n);
        ops.extend(
            removed
                .neighbours
                .iter()
                .filter(|n| gone_n(n))
                .cloned()
                .map(Op::DelNeigh),
        );
        ops.extend(
            added
                .neighbours
                .iter()
                .filter(|n| !removed.neighbours.contains(n))
                .cloned()
                .map(Op::SetNeigh),
        );
        let gone_f = |f| !want.fdb.contains(f);
        ops.extend(
            removed
                .fdb
                .iter()
                .filter(|f| gone_f(f))
                .cloned()
                .map(Op::DelFdb),
        );
        ops.extend(
            added
                .fdb
                .iter()
                .filter(|f| !removed.fdb.contains(f))
                .cloned()
                .map(Op::SetFdb),
        );
        for r in added.routes.iter().filter(|r| !removed.routes.contains(r)) {
            // A slot felt held a moment ago is replaced in place; a new
            // one is created exclusively, so nobody else's route is lost.
            let held = removed.routes.iter().any(|o| o.slot() == r.slot());
            ops.push(if held {
                Op::SetRoute(r.clone())
            } else {
                Op::AddRoute(r.clone())
            });
        }
        // Deletes of routes whose slot, or neighbours whose address, is set
        // again above are redundant (the replace overwrites them in place)
        // and would open a window without them.
        ops.retain(|op| match op {
            Op::DelRoute(r) => !added.routes.iter().any(|a| a.slot() == r.slot()),
            Op::DelNeigh(n) => !added
                .neighbours
                .iter()
                .any(|a| a.ifindex == n.ifindex && a.ip == n.ip),
            _ => true,
        });
        ops
    }

    /// Judges one lease and records the verdict (served peers' objects go
    /// into `desired`). Our own lease gets none.
    fn evaluate(&mut self, lease: &Lease, bounds: &Bounds) -> Option<&Verdict> {
        let verdict = match desired::check(lease, bounds) {
            Ok(false) => return None,
            Err(skip) => Verdict::Skipped(skip),
            Ok(true) => match self
                .backend
                .peer_objects(lease, &self.ext_networks)
                .map_err(|m| Skip::new("backend-data", m))
                .and_then(|o| self.check_slots(lease, o))
                .and_then(|o| {
                    self.desired
                        .try_add(&o)
                        .map(|()| o)
                        .map_err(|m| Skip::new("conflict", m))
                }) {
                Ok(objects) => Verdict::Served(objects),
                Err(skip) => Verdict::Skipped(skip),
            },
        };
        self.peers.insert(lease.subnet, verdict);
        self.peers.get(&lease.subnet)
    }

    /// A peer whose route slot holds a route felt does not own gets
    /// nothing (never replace someone else's route).
    fn check_slots(&self, lease: &Lease, o: PeerObjects) -> Result<PeerObjects, Skip> {
        match o.routes.iter().find_map(|r| self.foreign.get(&r.slot())) {
            None => Ok(o),
            Some(what) => Err(Skip::new(
                "route-slot-taken",
                format!(
                    "the route slot for {} holds a {what} that felt does not own; not replaced",
                    lease.subnet
                ),
            )),
        }
    }

    async fn ensure_device(&mut self, report: &mut RoundReport) {
        match self.backend.ensure(&self.own).await {
            Ok(fixed) => {
                for kind in fixed {
                    tracing::info!(kind = kind.name(), "repaired the backend device");
                    self.metrics.correction(kind);
                    report.applied += 1;
                }
                if let Some(r) = &self.readiness {
                    r.ok(Condition::Backend, self.backend.backend_type());
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot ensure the backend device; retrying");
                self.metrics.failure(ObjectKind::Device);
                report.failed += 1;
                if let Some(r) = &self.readiness {
                    r.not(Condition::Backend, e.to_string());
                }
            }
        }
    }

    async fn read_connected(&mut self, report: &mut RoundReport) {
        let ext = self.backend.scope().ext_index;
        match self.kernel.all_connected_networks().await {
            Ok(all) => {
                let own = self.own.subnet;
                self.ext_networks = all
                    .iter()
                    .filter(|(i, _)| *i == ext)
                    .map(|(_, n)| *n)
                    .collect();
                self.connected = all
                    .into_iter()
                    .map(|(_, n)| n)
                    .filter(|n| !own.contains(&n.network()))
                    .collect();
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot read this node's networks");
                report.failed += 1;
            }
        }
    }

    async fn apply(&mut self, ops: Vec<Op>, report: &mut RoundReport) {
        // A few changes are worth a line each; a first pass over thousands
        // of peers is one summary line (each op still at debug).
        let each_at_info = ops.len() <= LOG_EACH_OP_UP_TO;
        let total = ops.len();
        let applied_before = report.applied;
        for (op, result) in self.kernel.apply_all(ops).await {
            match result {
                Ok(()) => {
                    if each_at_info {
                        tracing::info!(op = %describe(&op), "reconciled");
                    } else {
                        tracing::debug!(op = %describe(&op), "reconciled");
                    }
                    self.metrics.correction(op.kind());
                    report.applied += 1;
                }
                Err(e) => {
                    tracing::warn!(op = %describe(&op), error = %e, "operation failed; retrying");
                    self.metrics.failure(op.kind());
                    report.failed += 1;
                }
            }
        }
        if !each_at_info {
            let applied = report.applied - applied_before;
            tracing::info!(
                applied,
                failed = total - applied,
                "reconciled a batch of kernel objects"
            );
        }
    }

    /// Bookkeeping after a pass: problems, metrics, the backend's peer
    /// table, and the snapshot it was computed from.
    fn finish(
        &mut self,
        snapshot: &Arc<LeaseSnapshot>,
        report: &mut RoundReport,
        pass: &str,
        started: Instant,
    ) {
        let mut served = Vec::new();
        let mut skips: Vec<(Ipv4Net, Skip)> = Vec::new();
        for (sn, v) in &self.peers {
            match v {
                Verdict::Served(_) => served.push(*sn),
                Verdict::Skipped(s) => skips.push((*sn, s.clone())),
            }
        }
        for (sn, s) in &skips {
            report.problems.push(format!("peer {sn}: {}", s.message));
        }
        self.log_problems(&skips);
        self.metrics.set_skipped(&desired::skip_counts(
            skips.iter().map(|(_, s)| s),
            snapshot,
        ));
        self.metrics
            .peers
            .get_or_create(&BackendLabel {
                backend: self.backend.backend_type().into(),
            })
            .set(served.len() as i64);
        let leases: Vec<&Lease> = served.iter().filter_map(|sn| snapshot.get(sn)).collect();
        let peers: Vec<(Ipv4Net, std::net::Ipv4Addr)> = leases
            .iter()
            .map(|l| (l.subnet, l.attrs.public_ip))
            .collect();
        if peers != self.handed_over {
            self.backend.set_peers(&leases);
            self.handed_over = peers;
        }
        let label = PassLabel { pass: pass.into() };
        self.metrics.reconcile_runs.get_or_create(&label).inc();
        self.metrics
            .reconcile_duration
            .get_or_create(&label)
            .observe(started.elapsed().as_secs_f64());
        self.seen = Some(snapshot.clone());
        self.settled = report.pruned;
        if report.pruned && report.failed == 0 {
            if let Some(tx) = self.converged.take() {
                let _ = tx.send(());
            }
        }
    }

    fn log_problems(&mut self, skips: &[(Ipv4Net, Skip)]) {
        for (sn, s) in skips {
            if self.logged.get(sn) != Some(&s.message) {
                tracing::warn!(peer = %sn, reason = s.reason, problem = %s.message, "lease not routed");
            }
        }
        self.logged = skips
            .iter()
            .map(|(sn, s)| (*sn, s.message.clone()))
            .collect();
    }
}

/// Up to this many operations in one apply are logged one line each.
const LOG_EACH_OP_UP_TO: usize = 32;

fn extend(into: &mut PeerObjects, from: PeerObjects) {
    into.routes.extend(from.routes);
    into.neighbours.extend(from.neighbours);
    into.fdb.extend(from.fdb);
}

/// The reconcile loop: passes on every trigger until `leases` closes.
pub async fn run(
    mut rec: Reconciler,
    mut leases: watch::Receiver<Arc<LeaseSnapshot>>,
    resync: Duration,
) -> Result<(), ReconcileError> {
    let mut changes = subscribe();
    // The channel's initial value is a seed, not a listing: only a value
    // the store sent may prune.
    let mut listed = leases.has_changed().unwrap_or(false);
    let mut snapshot = leases.borrow_and_update().clone();
    let mut report = rec.round(&snapshot, listed).await;
    let mut retry = RETRY_MIN;
    let mut next_full = Instant::now() + resync;
    loop {
        if listed && !report.pruned {
            tracing::warn!(
                "lease snapshot lacks our own lease; stale state is kept until it has it"
            );
        }
        // Failed operations are retried by a full pass soon, backing off.
        if report.failed > 0 {
            next_full = next_full.min(Instant::now() + retry);
            retry = (retry * 2).min(resync);
        } else {
            retry = RETRY_MIN;
        }
        let trigger = tokio::select! {
            changed = leases.changed() => {
                if changed.is_err() {
                    tracing::info!("lease watch closed; reconciler stops (datapath stays up)");
                    return Ok(());
                }
                listed = true;
                snapshot = leases.borrow_and_update().clone();
                Trigger::Snapshot
            }
            _ = tokio::time::sleep_until(next_full.into()) => Trigger::Full,
            msg = next_notification(&mut changes) => match msg {
                Some(msg) => Trigger::Kernel(msg),
                None => {
                    tracing::warn!("kernel change notifications lost; subscribing again");
                    changes = subscribe();
                    Trigger::Full
                }
            },
        };
        let full = match trigger {
            Trigger::Snapshot => !listed,
            Trigger::Full => true,
            Trigger::Kernel(msg) => {
                // Every queued notification is taken in (the foreign slots
                // stay current); drift in any of them means a full pass,
                // at once (leading edge; what comes during it, after it).
                let mut drift = rec.observe(&msg);
                if let Some(c) = changes.as_mut() {
                    while let Some(Some(m)) = c.try_next() {
                        drift |= rec.observe(&m);
                    }
                }
                if !drift {
                    continue;
                }
                true
            }
        };
        report = if full {
            next_full = Instant::now() + resync;
            rec.round(&snapshot, listed).await
        } else {
            rec.incremental(&snapshot).await
        };
    }
}

enum Trigger {
    Snapshot,
    Full,
    Kernel(netlink_packet_route::RouteNetlinkMessage),
}

fn subscribe() -> Option<Changes> {
    match Kernel::subscribe_changes() {
        Ok(c) => Some(c),
        Err(e) => {
            tracing::warn!(error = %e, "no kernel change notifications; relying on the periodic resync");
            None
        }
    }
}

/// The next kernel notification; `None` when the subscription was lost
/// (an overrun): the caller subscribes again and runs a full pass, which
/// makes up for what was missed. Never returns when notifications are
/// unavailable.
async fn next_notification(
    changes: &mut Option<Changes>,
) -> Option<netlink_packet_route::RouteNetlinkMessage> {
    match changes.as_mut() {
        Some(c) => c.next().await,
        None => std::future::pending().await,
    }
}
