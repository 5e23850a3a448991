//! The startup sequence and the steady state.
//!
//! health endpoint -> store -> net-conf.json -> external interface ->
//! backend device -> lease watch -> lease (waiting while the network is
//! full) -> own address on the device -> subnet.env -> reconcile + renew.
//! Everything that can be refused (flags, config, interface) is checked
//! before the first kernel write or store write.

use crate::backend::{self, BackendError, ExternalInterface, Prepared};
use crate::cli::Flags;
use crate::config::{self, ConfigError, NetworkConfig};
use crate::firewall::{self, Firewall, FirewallError, Mode, RuleSet};
use crate::health::readiness::{Condition, Readiness};
use crate::health::{self, Endpoints, HealthError};
use crate::iface::{self, IfaceError, Selector};
use crate::lease::etcd::{EtcdOptions, EtcdStore, EtcdTls};
use crate::lease::kube::{KubeOptions, KubeStore};
use crate::lease::{Lease, LeaseAttrs, LeaseError, LeaseRequest, LeaseSnapshot, LeaseStore};
use crate::metrics::Metrics;
use crate::reconcile::{self, ReconcileError, Reconciler};
use felt_common::subnet_env::{SubnetEnv, SubnetEnvError};
use ipnet::Ipv4Net;
use std::net::Ipv4Addr;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::sync::watch;

const RETRY_MIN: Duration = Duration::from_secs(1);
const RETRY_MAX: Duration = Duration::from_secs(60);
/// Cap while waiting for etcd or the config at start: both usually appear
/// within seconds (etcd starting beside us), so keep polling briskly.
const WAIT_MAX: Duration = Duration::from_secs(5);
/// Cap of renewal retries once renewal is overdue: the lease is at stake.
const OVERDUE_RETRY_MAX: Duration = Duration::from_secs(5);

#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    #[error("{0}")]
    Unsupported(String),
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Lease(#[from] LeaseError),
    #[error("external interface: {0}")]
    Iface(#[from] IfaceError),
    #[error("backend: {0}")]
    Backend(#[from] BackendError),
    #[error(transparent)]
    SubnetFile(#[from] SubnetEnvError),
    #[error(transparent)]
    Reconcile(#[from] ReconcileError),
    #[error(transparent)]
    Health(#[from] HealthError),
    #[error("masquerade/forward rules: {0}")]
    Firewall(#[from] FirewallError),
    #[error("{0} stopped unexpectedly")]
    TaskEnded(&'static str),
}

/// What the parts of a running daemon share.
#[derive(Clone)]
pub struct Shared {
    pub metrics: Arc<Metrics>,
    pub readiness: Arc<Readiness>,
}

impl Shared {
    pub fn new() -> Self {
        Shared {
            metrics: Arc::new(Metrics::new()),
            readiness: Arc::new(Readiness::new()),
        }
    }
}

impl Default for Shared {
    fn default() -> Self {
        Self::new()
    }
}

/// Runs the daemon until a task fails; the caller races it against
/// SIGTERM/SIGINT. Nothing is torn down on exit: pods keep their network
/// across a restart.
pub async fn run(flags: Flags) -> Result<(), DaemonError> {
    let shared = Shared::new();
    // First, so /healthz answers and /readyz says what is awaited while
    // the rest starts (or waits for etcd).
    let _health = match flags.healthz_addr() {
        Some(addr) => Some(
            health::serve(
                addr,
                Endpoints {
                    readiness: shared.readiness.clone(),
                    metrics: shared.metrics.clone(),
                },
            )
            .await?,
        ),
        None => None,
    };
    let (store, public_ip): (Arc<dyn LeaseStore>, _) = if flags.kube_subnet_mgr {
        let kube = connect_kube(&flags, &shared).await?;
        // flannel's node-public-ip annotation wins over --public-ip, and
        // is read before the interface is chosen.
        let ip = with_backoff(
            "cannot read this node",
            WAIT_MAX,
            |_| false,
            || kube.node_public_ip(),
        )
        .await?;
        (Arc::new(kube), ip.or(flags.public_ip))
    } else {
        let etcd = connect(&etcd_options(&flags), &shared, &flags).await?;
        (etcd, flags.public_ip)
    };
    let cfg = load_config(store.as_ref()).await?;
    start(flags, store, cfg, shared, public_ip).await
}

/// The Kubernetes lease store: bad flags or environment are fatal, an
/// unreachable API server is waited for.
async fn connect_kube(flags: &Flags, shared: &Shared) -> Result<KubeStore, DaemonError> {
    let opts = KubeOptions::from_flags(flags);
    let fatal = |e: &LeaseError| matches!(e, LeaseError::Config(_));
    let store = with_backoff("cannot reach the Kubernetes API", WAIT_MAX, fatal, || {
        KubeStore::connect(&opts, shared.metrics.clone())
    })
    .await?;
    tracing::info!(node = store.node_name(), "Kubernetes subnet manager");
    Ok(store.with_readiness(shared.readiness.clone()))
}

/// From a store and its config to the steady state.
async fn start(
    flags: Flags,
    store: Arc<dyn LeaseStore>,
    cfg: NetworkConfig,
    shared: Shared,
    public_ip: Option<Ipv4Addr>,
) -> Result<(), DaemonError> {
    if cfg.enable_ipv6 || !cfg.enable_ipv4 {
        return Err(DaemonError::Unsupported(
            "net-conf.json: EnableIPv6 / IPv6-only networks are not supported by felt yet (IPv4 only)".into(),
        ));
    }
    let network = cfg
        .network
        .ok_or_else(|| DaemonError::Unsupported("no IPv4 Network".into()))?;
    let ext = iface::find(&Selector {
        ifaces: flags.iface.clone(),
        regexes: flags.iface_regex.clone(),
        can_reach: flags.iface_can_reach,
        public_ip,
    })
    .await?;
    tracing::info!(iface = %ext.name, addr = %ext.iface_addr, public_ip = %ext.public_ip, mtu = ext.mtu, "using external interface");
    let mut backend = backend::build(&cfg, shared.metrics.clone())?;
    let prepared = backend.prepare(&ext).await?;
    // The lease watch starts before the lease is held: a node waiting for
    // a free subnet wakes when one is freed, and the reconciler's first
    // listing is ready by the time it starts.
    let (tx, rx) = watch::channel(Arc::new(LeaseSnapshot::new()));
    let watcher = {
        let store = store.clone();
        tokio::spawn(async move { store.watch_leases(tx).await })
    };
    let req = lease_request(&flags.subnet_file, &ext, backend.backend_type(), &prepared);
    let lease = acquire(store.as_ref(), &req, &shared, rx.clone()).await?;
    tracing::info!(subnet = %lease.subnet, "lease acquired");
    lease_held(&shared, &lease);
    backend.configure_own(&lease).await?;
    let rules = RuleSet {
        network,
        pod_subnet: lease.subnet,
        masquerade: flags.ip_masq,
        forward: flags.iptables_forward_rules,
    };
    let mode = Mode::from_enable_nftables(cfg.enable_nftables);
    let firewall = start_firewall(&rules, mode, &shared).await?;
    write_subnet_file(
        &flags.subnet_file,
        &cfg,
        &lease,
        prepared.mtu,
        flags.ip_masq,
    )?;
    shared.readiness.ok(
        Condition::SubnetFile,
        flags.subnet_file.display().to_string(),
    );
    tracing::info!(path = %flags.subnet_file.display(), "wrote subnet file");
    let mut rec = Reconciler::new(
        Arc::from(backend),
        lease.clone(),
        network,
        cfg.subnet_len,
        shared.metrics.clone(),
    )?
    .with_readiness(shared.readiness.clone());
    let converged = rec.on_converged();
    let _ready = tokio::spawn(mark_ready_when(converged, store.clone(), lease.clone()));
    let renewer = tokio::spawn(renew_loop(
        store,
        lease,
        flags.renew_margin(),
        rx.clone(),
        shared.clone(),
    ));
    let _rules = firewall.map(|fw| {
        let every = Duration::from_secs(flags.iptables_resync);
        tokio::spawn(firewall::keep(
            fw,
            rules,
            every,
            shared.metrics.clone(),
            shared.readiness.clone(),
        ))
    });
    tokio::select! {
        r = reconcile::run(rec, rx, flags.resync_interval) => {
            r?;
            Err(DaemonError::TaskEnded("reconciler"))
        }
        r = watcher => match r {
            Ok(Err(e)) => Err(e.into()),
            _ => Err(DaemonError::TaskEnded("lease watch")),
        },
        r = renewer => match r {
            Ok(Err(e)) => Err(e.into()),
            _ => Err(DaemonError::TaskEnded("lease renewal")),
        },
    }
}

/// Installs the masquerade/forward rules once (before subnet.env, so the
/// first pod's traffic is masqueraded) and returns the backend to keep
/// them with. Missing tools are fatal when rules are wanted; when none are,
/// felt still removes its own (and flannel's) if it can.
async fn start_firewall(
    rules: &RuleSet,
    mode: Mode,
    shared: &Shared,
) -> Result<Option<Arc<dyn Firewall>>, DaemonError> {
    let wanted = rules.masquerade || rules.forward;
    let fw: Arc<dyn Firewall> = match firewall::build(mode) {
        Ok(fw) => Arc::from(fw),
        Err(FirewallError::MissingBinary { .. }) if !wanted => {
            shared.readiness.ok(Condition::Rules, "none wanted");
            return Ok(None);
        }
        Err(e) => return Err(e.into()),
    };
    firewall::apply_once(fw.as_ref(), rules, &shared.metrics, &shared.readiness).await;
    Ok(Some(fw))
}

/// Once the peers are routed, tells the store (kube: the Node condition
/// NetworkUnavailable=False), retrying until it takes.
async fn mark_ready_when(
    converged: tokio::sync::oneshot::Receiver<()>,
    store: Arc<dyn LeaseStore>,
    lease: Lease,
) {
    if converged.await.is_err() {
        return;
    }
    let mut delay = RETRY_MIN;
    while let Err(e) = store.mark_ready(&lease).await {
        tracing::warn!(error = %e, retry_in = ?delay, "cannot mark the node's network ready");
        tokio::time::sleep(delay).await;
        delay = (delay * 2).min(RETRY_MAX);
    }
}

fn etcd_options(flags: &Flags) -> EtcdOptions {
    EtcdOptions {
        endpoints: flags.etcd_endpoint_list(),
        prefix: flags.etcd_prefix.clone(),
        username: flags.etcd_username.clone(),
        password: flags.etcd_password.clone(),
        tls: EtcdTls {
            ca_file: flags.etcd_cafile.clone(),
            cert_file: flags.etcd_certfile.clone(),
            key_file: flags.etcd_keyfile.clone(),
        },
    }
}

/// Connects to etcd, waiting for it; bad TLS settings are fatal.
async fn connect(
    opts: &EtcdOptions,
    shared: &Shared,
    flags: &Flags,
) -> Result<Arc<dyn LeaseStore>, DaemonError> {
    if flags.subnet_lease_ttl <= flags.renew_margin() {
        return Err(DaemonError::Unsupported(format!(
            "--subnet-lease-ttl {:?} must be longer than --subnet-lease-renew-margin ({} min)",
            flags.subnet_lease_ttl, flags.subnet_lease_renew_margin
        )));
    }
    let fatal = |e: &LeaseError| matches!(e, LeaseError::Config(_));
    let store = with_backoff("cannot connect to etcd", WAIT_MAX, fatal, || {
        EtcdStore::connect(opts)
    })
    .await?;
    Ok(Arc::new(
        store
            .with_ttl(flags.subnet_lease_ttl)
            .with_metrics(shared.metrics.clone()),
    ))
}

/// Reads and validates net-conf.json from the store. An unreachable etcd
/// or a missing config is waited for (flanneld does the same); an invalid
/// config is fatal.
pub async fn load_config(store: &dyn LeaseStore) -> Result<NetworkConfig, DaemonError> {
    let text = with_backoff(
        "cannot read the network config",
        WAIT_MAX,
        |_| false,
        || store.network_config(),
    )
    .await?;
    let cfg = config::parse(&text)?;
    tracing::info!(?cfg, "network config");
    Ok(cfg)
}

fn lease_request(
    subnet_file: &Path,
    ext: &ExternalInterface,
    kind: &str,
    prepared: &Prepared,
) -> LeaseRequest {
    // The previous run's subnet, reused if still free: pods keep addresses.
    let previous_subnet = SubnetEnv::read(subnet_file).ok().and_then(|env| env.subnet);
    if let Some(p) = previous_subnet {
        tracing::info!(previous = %p, "found the previous subnet in the subnet file");
    }
    LeaseRequest {
        attrs: LeaseAttrs {
            public_ip: ext.public_ip,
            public_ipv6: None,
            backend_type: kind.to_string(),
            backend_data: (&prepared.backend_data).into(),
            backend_v6_data: None,
        },
        previous_subnet,
    }
}

/// Acquires, retrying store failures with backoff. A full network is
/// waited out (flannel exits): the wait ends early when the lease
/// snapshot shows a lease gone, so a freed subnet is taken at once. Only a
/// bad config is fatal.
async fn acquire(
    store: &dyn LeaseStore,
    req: &LeaseRequest,
    shared: &Shared,
    mut leases: watch::Receiver<Arc<LeaseSnapshot>>,
) -> Result<Lease, DaemonError> {
    let mut delay = RETRY_MIN;
    loop {
        let err = match store.acquire(req).await {
            Ok(lease) => return Ok(lease),
            Err(e @ LeaseError::Config(_)) => return Err(e.into()),
            Err(e) => e,
        };
        let full = matches!(err, LeaseError::NetworkFull { .. });
        let why = if full {
            format!("{err}; waiting for a lease to be freed")
        } else {
            format!("cannot acquire a lease: {err}")
        };
        shared.readiness.not(Condition::Lease, why.clone());
        tracing::warn!(error = %err, retry_in = ?delay, "{}", if full { "network full" } else { "cannot acquire a lease" });
        let held = leases.borrow().len();
        let freed = async {
            while leases.changed().await.is_ok() {
                if leases.borrow().len() < held {
                    return;
                }
            }
            std::future::pending::<()>().await
        };
        tokio::select! {
            _ = tokio::time::sleep(delay) => delay = (delay * 2).min(RETRY_MAX),
            _ = freed => {
                // Spread the nodes that all saw the same lease go.
                let spread = Duration::from_millis(rand::random_range(0..300));
                tokio::time::sleep(spread).await;
            }
        }
    }
}

/// Runs `op` until it succeeds, sleeping between failures (doubling from
/// RETRY_MIN up to `cap`); errors `fatal` accepts end the wait at once,
/// since no amount of waiting fixes them.
async fn with_backoff<T, F, Fut>(
    what: &str,
    cap: Duration,
    fatal: impl Fn(&LeaseError) -> bool,
    mut op: F,
) -> Result<T, DaemonError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, LeaseError>>,
{
    let mut delay = RETRY_MIN;
    loop {
        match op().await {
            Ok(v) => return Ok(v),
            Err(e) if fatal(&e) => return Err(e.into()),
            Err(e) => {
                tracing::warn!(error = %e, retry_in = ?delay, "{what}");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(cap);
            }
        }
    }
}

/// subnet.env in flannel's form: FLANNEL_SUBNET is the subnet's first host
/// address with the subnet's prefix (10.244.1.1/24).
pub fn write_subnet_file(
    path: &Path,
    cfg: &NetworkConfig,
    lease: &Lease,
    mtu: u32,
    ipmasq: bool,
) -> Result<(), SubnetEnvError> {
    let first = Ipv4Addr::from(u32::from(lease.subnet.network()).wrapping_add(1));
    let env = SubnetEnv {
        network: cfg.network,
        subnet: Ipv4Net::new(first, lease.subnet.prefix_len()).ok(),
        ipv6_network: None,
        ipv6_subnet: None,
        mtu,
        ipmasq,
    };
    env.write_atomic(path)
}

/// Records a held lease in readiness and metrics.
fn lease_held(shared: &Shared, lease: &Lease) {
    let expiry = lease.term.expires();
    let unix = expiry
        .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
        .map(|d| d.as_secs_f64());
    shared.metrics.set_lease(&lease.subnet.to_string(), unix);
    shared
        .readiness
        .ok(Condition::Lease, lease.subnet.to_string());
}

/// Keeps the lease: renews `margin` before expiry, and at once when a
/// snapshot shows our key gone or changed. A deleted key is re-created on
/// the same subnet; only a subnet now held by another node ends the loop
/// (`Lost`). Store failures retry with backoff; once renewal is overdue
/// the node reports not ready (the lease may run out) until it succeeds.
pub async fn renew_loop(
    store: Arc<dyn LeaseStore>,
    mut lease: Lease,
    margin: Duration,
    mut leases: watch::Receiver<Arc<LeaseSnapshot>>,
    shared: Shared,
) -> Result<(), LeaseError> {
    let mut retry: Option<Duration> = None;
    let mut failing_since: Option<SystemTime> = None;
    let mut last_try: Option<std::time::Instant> = None;
    loop {
        let wait = retry.unwrap_or_else(|| until_renewal(&lease, margin));
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            changed = leases.changed() => {
                if changed.is_err() {
                    return Ok(());
                }
                let snap = leases.borrow_and_update().clone();
                let intact = snap.get(&lease.subnet).is_some_and(|l| l.attrs == lease.attrs);
                // While renewal is failing, a snapshot means the store
                // answers again: retry at once (at most once a second).
                let store_back = retry.is_some()
                    && last_try.is_some_and(|t: std::time::Instant| t.elapsed() >= RETRY_MIN);
                if !store_back && (intact || retry.is_some()) {
                    continue;
                }
                if !intact {
                    tracing::warn!(subnet = %lease.subnet, "our lease changed or vanished in the store; renewing now");
                }
            }
        }
        last_try = Some(std::time::Instant::now());
        match store.renew(&lease).await {
            Ok(l) => {
                let left = l
                    .term
                    .expires()
                    .and_then(|e| e.duration_since(SystemTime::now()).ok());
                tracing::info!(subnet = %l.subnet, expires_in_s = left.map(|d| d.as_secs()), "lease renewed");
                lease = l;
                lease_held(&shared, &lease);
                retry = None;
                failing_since = None;
            }
            Err(e @ LeaseError::Lost(_)) => return Err(e),
            Err(e) => {
                let since = *failing_since.get_or_insert_with(SystemTime::now);
                let overdue = until_renewal(&lease, margin).is_zero();
                let cap = if overdue {
                    OVERDUE_RETRY_MAX
                } else {
                    RETRY_MAX
                };
                let next = retry.map_or(RETRY_MIN, |d| (d * 2).min(cap));
                if overdue {
                    shared
                        .readiness
                        .not(Condition::Lease, overdue_reason(&lease, since, &e));
                }
                tracing::warn!(error = %e, retry_in = ?next, "lease renewal failed");
                retry = Some(next);
            }
        }
    }
}

fn overdue_reason(lease: &Lease, since: SystemTime, e: &LeaseError) -> String {
    let failing = SystemTime::now().duration_since(since).unwrap_or_default();
    let left = lease
        .term
        .expires()
        .and_then(|t| t.duration_since(SystemTime::now()).ok())
        .map_or("has expired".to_string(), |d| {
            format!("expires in {}s", d.as_secs())
        });
    format!(
        "renewal of {} is overdue: the store has failed for {}s ({e}); the lease {left}",
        lease.subnet,
        failing.as_secs()
    )
}

/// Time until the renewal point; reservations (and leases whose expiry is
/// unknown) never need one: a year is "never" for a sleep that the
/// snapshot watch can interrupt.
fn until_renewal(lease: &Lease, margin: Duration) -> Duration {
    match lease.term.expires() {
        None => Duration::from_secs(365 * 24 * 3600),
        Some(exp) => exp
            .checked_sub(margin)
            .and_then(|t| t.duration_since(SystemTime::now()).ok())
            .unwrap_or(Duration::ZERO),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lease::Term;

    fn lease(exp: Option<SystemTime>) -> Lease {
        Lease {
            term: exp.map_or(Term::Reservation, |t| Term::Expiring(Some(t))),
            ..crate::lease::test_lease("10.244.3.0/24", "10.0.0.1", "vxlan")
        }
    }

    #[test]
    fn renewal_time_is_expiry_minus_margin() {
        let l = lease(Some(SystemTime::now() + Duration::from_secs(3600)));
        let wait = until_renewal(&l, Duration::from_secs(600));
        assert!(
            wait <= Duration::from_secs(3000) && wait > Duration::from_secs(2990),
            "{wait:?}"
        );
        assert_eq!(until_renewal(&l, Duration::from_secs(7200)), Duration::ZERO);
        assert!(until_renewal(&lease(None), Duration::from_secs(60)) > Duration::from_secs(86400));
    }

    #[test]
    fn subnet_file_uses_first_host_address() {
        let dir = std::env::temp_dir().join(format!("felt-lease-subnetenv-{}", std::process::id()));
        let path = dir.join("subnet.env");
        let cfg =
            config::parse(r#"{"Network":"10.244.0.0/16","Backend":{"Type":"vxlan"}}"#).unwrap();
        write_subnet_file(&path, &cfg, &lease(None), 1450, true).unwrap();
        assert_eq!(
            std::fs::read_to_string(&path).unwrap(),
            "FLANNEL_NETWORK=10.244.0.0/16\nFLANNEL_SUBNET=10.244.3.1/24\nFLANNEL_MTU=1450\nFLANNEL_IPMASQ=true\n"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
