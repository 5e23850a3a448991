//! The etcd v3 lease store, in flannel's layout: config at
//! `<prefix>/config`, one key per lease at `<prefix>/subnets/<subnet key>`
//! holding the lease JSON and bound to a 24 h etcd lease (a key without
//! one is a reservation).
//!
//! Unlike flannel, renewal re-puts only while the key is still ours (a
//! compare on its revision), and a lease deleted under us is re-created
//! on the same subnet instead of shutting the daemon down (#904, #1240).
//! Listing and watching cost one request per page or event batch, never
//! one per lease (flannel asks etcd for every lease's TTL, which is why it
//! stalls with thousands of nodes).

use super::alloc::{self, Plan, Pool};
use super::keys;
use super::{Lease, LeaseError, LeaseRequest, LeaseSnapshot, LeaseStore, Term};
use crate::metrics::Metrics;
use async_trait::async_trait;
use etcd_client::{
    Certificate, Client, Compare, CompareOp, ConnectOptions, EventType, GetOptions, Identity,
    KeyValue, PutOptions, TlsOptions, Txn, TxnOp, WatchOptions,
};
use futures::FutureExt;
use ipnet::Ipv4Net;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};
use tokio::sync::watch;

/// flannel's lease lifetime.
pub const SUBNET_TTL: Duration = Duration::from_secs(24 * 60 * 60);
/// How many times acquire retries after losing a creation race.
const RACE_RETRIES: usize = 10;
/// Watch reconnects: quick, so a node that joins right after an etcd
/// outage is routed at once; jittered, so thousands of nodes do not
/// reconnect in lockstep.
const BACKOFF_MIN: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(1);
/// Keys per page when listing: bounded response size (gRPC's default
/// 4 MiB message limit would refuse one response with ~30,000 leases).
const PAGE: i64 = 2000;

/// How to reach etcd (flags --etcd-*).
#[derive(Debug, Clone, Default)]
pub struct EtcdOptions {
    pub endpoints: Vec<String>,
    pub prefix: String,
    pub username: Option<String>,
    pub password: Option<String>,
    pub tls: EtcdTls,
}

/// TLS files (flags --etcd-cafile, --etcd-certfile, --etcd-keyfile).
/// Unlike flanneld, a CA alone is enough for a server-verified connection;
/// a client certificate needs both its certificate and key; without a CA
/// file the system's roots verify the server.
#[derive(Debug, Clone, Default)]
pub struct EtcdTls {
    pub ca_file: Option<PathBuf>,
    pub cert_file: Option<PathBuf>,
    pub key_file: Option<PathBuf>,
}

impl EtcdTls {
    fn is_set(&self) -> bool {
        self.ca_file.is_some() || self.cert_file.is_some() || self.key_file.is_some()
    }

    /// The client TLS settings; `Config` errors name the flag.
    fn options(&self) -> Result<TlsOptions, LeaseError> {
        let read = |flag: &str, path: &Path| {
            std::fs::read(path)
                .map_err(|e| LeaseError::Config(format!("{flag} {}: {e}", path.display())))
        };
        let mut tls = TlsOptions::new();
        tls = match &self.ca_file {
            Some(ca) => tls.ca_certificate(Certificate::from_pem(read("--etcd-cafile", ca)?)),
            None => tls.with_native_roots(),
        };
        match (&self.cert_file, &self.key_file) {
            (Some(cert), Some(key)) => {
                let cert = read("--etcd-certfile", cert)?;
                tls = tls.identity(Identity::from_pem(cert, read("--etcd-keyfile", key)?));
            }
            (None, None) => {}
            _ => {
                return Err(LeaseError::Config(
                    "--etcd-certfile and --etcd-keyfile must be given together".into(),
                ))
            }
        }
        Ok(tls)
    }
}

/// Per-key bookkeeping the codec does not carry.
#[derive(Debug, Clone, Copy, PartialEq)]
struct KeyMeta {
    lease_id: i64,
    mod_revision: i64,
}

/// One listing: the snapshot, the revision it was read at, per-key
/// metadata, and the subnets of keys whose value is malformed (still
/// taken: a subnet whose key exists is never handed out).
struct Listing {
    snap: LeaseSnapshot,
    revision: i64,
    meta: BTreeMap<Ipv4Net, KeyMeta>,
    malformed_subnets: Vec<Ipv4Net>,
}

pub struct EtcdStore {
    client: Client,
    prefix: String,
    ttl: Duration,
    metrics: Arc<Metrics>,
}

impl EtcdStore {
    /// Connects. Without a user name the connection is lazy (an
    /// unreachable etcd shows up on the first call); with one, etcd is
    /// asked for a token at once. Bad TLS files are `Config` errors.
    pub async fn connect(opts: &EtcdOptions) -> Result<Self, LeaseError> {
        let mut co = ConnectOptions::new()
            // Per request (until response headers; watch streams are not
            // cut): a stalled call fails fast and the caller retries.
            .with_connect_timeout(Duration::from_secs(3))
            .with_timeout(Duration::from_secs(5))
            .with_keep_alive(Duration::from_secs(10), Duration::from_secs(5));
        if let Some(user) = &opts.username {
            co = co.with_user(user.clone(), opts.password.clone().unwrap_or_default());
        }
        let https = opts.endpoints.iter().any(|e| e.starts_with("https://"));
        if opts.tls.is_set() || https {
            if let Some(e) = opts.endpoints.iter().find(|e| !e.starts_with("https://")) {
                return Err(LeaseError::Config(format!(
                    "--etcd-endpoints {e}: with TLS (https:// endpoints or TLS files) every endpoint must be https://"
                )));
            }
            co = co.with_tls(opts.tls.options()?);
        }
        let client = Client::connect(&opts.endpoints, Some(co))
            .await
            .map_err(|e| LeaseError::Store(format!("etcd connect: {e}")))?;
        // path.Join in flannel drops trailing slashes.
        let prefix = opts.prefix.trim_end_matches('/').to_string();
        Ok(EtcdStore {
            client,
            prefix,
            ttl: SUBNET_TTL,
            metrics: Arc::new(Metrics::new()),
        })
    }

    /// The etcd lease TTL (felt's --subnet-lease-ttl; flannel's is 24 h).
    pub fn with_ttl(mut self, ttl: Duration) -> Self {
        self.ttl = ttl;
        self
    }

    /// Counts requests and errors into `metrics`.
    pub fn with_metrics(mut self, metrics: Arc<Metrics>) -> Self {
        self.metrics = metrics;
        self
    }

    /// Counts the request and maps its error to a `Store` error.
    fn count<T>(
        &self,
        op: &'static str,
        r: Result<T, etcd_client::Error>,
    ) -> Result<T, LeaseError> {
        self.metrics.store_request(op);
        r.map_err(|e| {
            self.metrics.store_error(op);
            LeaseError::Store(format!("etcd {op}: {e}"))
        })
    }

    fn subnets_prefix(&self) -> String {
        format!("{}/subnets/", self.prefix)
    }

    fn key(&self, lease: &Lease) -> String {
        format!(
            "{}{}",
            self.subnets_prefix(),
            keys::subnet_key(lease.subnet, lease.ipv6_subnet)
        )
    }

    /// Every lease under the prefix and the revision it was read at.
    pub async fn snapshot(&self) -> Result<(LeaseSnapshot, i64), LeaseError> {
        let l = self.list().await?;
        Ok((l.snap, l.revision))
    }

    /// Every key under the prefix, read in pages at one revision, so the
    /// result is one consistent snapshot however many pages it takes.
    async fn list(&self) -> Result<Listing, LeaseError> {
        let prefix = self.subnets_prefix();
        let end = prefix_end(prefix.as_bytes());
        let mut out = Listing {
            snap: LeaseSnapshot::new(),
            revision: 0,
            meta: BTreeMap::new(),
            malformed_subnets: Vec::new(),
        };
        let mut from = prefix.clone().into_bytes();
        loop {
            let mut opts = GetOptions::new().with_range(end.clone()).with_limit(PAGE);
            if out.revision != 0 {
                opts = opts.with_revision(out.revision);
            }
            let resp = self.count(
                "range",
                self.client.clone().get(from.clone(), Some(opts)).await,
            )?;
            if out.revision == 0 {
                out.revision = resp.header().map(|h| h.revision()).unwrap_or(0);
            }
            for kv in resp.kvs() {
                self.fold(&mut out, kv);
            }
            match resp.kvs().last() {
                Some(last) if resp.more() => {
                    from = last.key().to_vec();
                    from.push(0);
                }
                _ => return Ok(out),
            }
        }
    }

    /// Adds one listed key to a listing.
    fn fold(&self, out: &mut Listing, kv: &KeyValue) {
        let key = String::from_utf8_lossy(kv.key()).into_owned();
        match decode(kv) {
            Decoded::NotALease => {}
            Decoded::Malformed(subnet, why) => {
                out.malformed_subnets.push(subnet);
                out.snap.malformed.insert(key, why);
            }
            Decoded::Lease(lease) => {
                out.meta.insert(
                    lease.subnet,
                    KeyMeta {
                        lease_id: kv.lease(),
                        mod_revision: kv.mod_revision(),
                    },
                );
                out.snap.insert(lease);
            }
        }
    }

    /// Grants a fresh etcd lease; returns its id and the expiry time.
    async fn grant(&self) -> Result<(i64, SystemTime), LeaseError> {
        let ttl = self.ttl.as_secs() as i64;
        let resp = self.count(
            "lease_grant",
            self.client.clone().lease_grant(ttl, None).await,
        )?;
        Ok((
            resp.id(),
            SystemTime::now() + Duration::from_secs(resp.ttl().max(0) as u64),
        ))
    }

    async fn revoke(&self, id: i64) {
        if id == 0 {
            return;
        }
        // Only hygiene: an unrevoked lease without keys expires by itself.
        if let Err(e) = self.count("lease_revoke", self.client.clone().lease_revoke(id).await) {
            tracing::debug!(lease_id = id, error = %e, "could not revoke etcd lease");
        }
    }

    /// Writes `lease` if `cmp` holds. A reservation is rewritten without an
    /// etcd lease (it stays a reservation). Returns the stored lease, or
    /// `None` when the compare failed (someone else changed the key).
    async fn put_if(&self, lease: &Lease, cmp: Compare) -> Result<Option<Lease>, LeaseError> {
        let key = self.key(lease);
        let value = keys::encode_attrs(&lease.attrs);
        let (opts, lease_id, term) = if lease.term.is_reservation() {
            (None, 0, Term::Reservation)
        } else {
            let (id, exp) = self.grant().await?;
            (
                Some(PutOptions::new().with_lease(id)),
                id,
                Term::Expiring(Some(exp)),
            )
        };
        let txn = Txn::new()
            .when(vec![cmp])
            .and_then(vec![TxnOp::put(key.clone(), value, opts)]);
        let ok = match self.count("txn", self.client.clone().txn(txn).await) {
            Ok(resp) => resp.succeeded(),
            Err(e) => {
                self.revoke(lease_id).await;
                return Err(e);
            }
        };
        if !ok {
            self.revoke(lease_id).await;
            return Ok(None);
        }
        Ok(Some(Lease {
            term,
            ..lease.clone()
        }))
    }

    /// Creates the key only if it does not exist (flannel: version == 0).
    async fn create(&self, lease: &Lease) -> Result<Option<Lease>, LeaseError> {
        let cmp = Compare::version(self.key(lease), CompareOp::Equal, 0);
        self.put_if(lease, cmp).await
    }

    /// Rewrites an existing key unless it changed since `meta` was read;
    /// then frees the etcd lease it was bound to.
    async fn replace(&self, lease: &Lease, meta: KeyMeta) -> Result<Option<Lease>, LeaseError> {
        let cmp = Compare::mod_revision(self.key(lease), CompareOp::Equal, meta.mod_revision);
        let stored = self.put_if(lease, cmp).await?;
        if stored.is_some() {
            self.revoke(meta.lease_id).await;
        }
        Ok(stored)
    }

    /// Deletes the key of `lease` (its full key, dual-stack form included).
    async fn delete(&self, lease: &Lease) -> Result<(), LeaseError> {
        self.count(
            "delete",
            self.client.clone().delete(self.key(lease), None).await,
        )?;
        Ok(())
    }

    /// One attempt of acquire; `None` = lost a race, try again.
    async fn try_acquire(
        &self,
        pool: &Pool,
        req: &LeaseRequest,
    ) -> Result<Option<Lease>, LeaseError> {
        let listing = self.list().await?;
        let leases: Vec<Lease> = listing.snap.values().cloned().collect();
        let plan = alloc::plan(
            pool,
            &leases,
            &listing.malformed_subnets,
            req.attrs.public_ip,
            req.previous_subnet,
            |n| rand::random_range(0..n),
        )?;
        match plan {
            Plan::Reuse(old) => {
                let Some(m) = listing.meta.get(&old.subnet).copied() else {
                    return Ok(None);
                };
                tracing::info!(subnet = %old.subnet, reservation = old.term.is_reservation(), "reusing lease held by our public IP");
                let new = Lease {
                    attrs: req.attrs.clone(),
                    ..old
                };
                self.replace(&new, m).await
            }
            Plan::Create { subnet, stale } => {
                if let Some(old) = stale.and_then(|s| listing.snap.get(&s)) {
                    tracing::info!(subnet = %old.subnet, "deleting our old lease: it no longer fits the network config");
                    self.delete(old).await?;
                }
                let new = Lease {
                    subnet,
                    ipv6_subnet: None,
                    attrs: req.attrs.clone(),
                    term: Term::Expiring(None),
                };
                let got = self.create(&new).await?;
                if got.is_some() {
                    tracing::info!(%subnet, "allocated new lease");
                }
                Ok(got)
            }
        }
    }

    /// Reads the current key of `lease`: `None` if absent or malformed.
    async fn read(&self, lease: &Lease) -> Result<Option<(Lease, KeyMeta)>, LeaseError> {
        let resp = self.count(
            "range",
            self.client.clone().get(self.key(lease), None).await,
        )?;
        let Some(kv) = resp.kvs().first() else {
            return Ok(None);
        };
        let meta = KeyMeta {
            lease_id: kv.lease(),
            mod_revision: kv.mod_revision(),
        };
        match decode(kv) {
            Decoded::Lease(l) => Ok(Some((l, meta))),
            _ => Ok(None),
        }
    }
}

/// What a key under `<prefix>/subnets/` holds.
enum Decoded {
    /// The key is not a subnet key (flannel skips such keys too).
    NotALease,
    /// A subnet key whose value is not a lease, with the reason.
    Malformed(Ipv4Net, String),
    Lease(Lease),
}

/// One key -> lease, without asking etcd anything (see [`Term`]).
fn decode(kv: &KeyValue) -> Decoded {
    let key = String::from_utf8_lossy(kv.key());
    let Some((subnet, ipv6_subnet)) = keys::parse_subnet_key(&key) else {
        tracing::warn!(%key, "ignoring key that is not a subnet lease");
        return Decoded::NotALease;
    };
    let attrs = match keys::decode_attrs(kv.value()) {
        Ok(a) => a,
        Err(e) => {
            tracing::warn!(%key, error = %e, "ignoring malformed lease");
            return Decoded::Malformed(subnet, e);
        }
    };
    let term = match kv.lease() {
        0 => Term::Reservation,
        _ => Term::Expiring(None),
    };
    Decoded::Lease(Lease {
        subnet,
        ipv6_subnet,
        attrs,
        term,
    })
}

/// The end of etcd's range for a prefix: the prefix with its last byte
/// incremented (trailing 0xff bytes dropped).
fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    vec![0]
}

#[async_trait]
impl LeaseStore for EtcdStore {
    async fn network_config(&self) -> Result<String, LeaseError> {
        let key = format!("{}/config", self.prefix);
        let resp = self.count("range", self.client.clone().get(key.clone(), None).await)?;
        let kv = resp.kvs().first().ok_or_else(|| {
            LeaseError::Store(format!(
                "network config not found at {key} (create it with the etcd v3 API)"
            ))
        })?;
        Ok(String::from_utf8_lossy(kv.value()).into_owned())
    }

    async fn acquire(&self, req: &LeaseRequest) -> Result<Lease, LeaseError> {
        // Like flannel, read the config afresh: the allocation range is
        // whatever etcd says now.
        let text = self.network_config().await?;
        let cfg = crate::config::parse(&text).map_err(|e| LeaseError::Config(e.to_string()))?;
        let pool = Pool::from_config(&cfg)?;
        for _ in 0..RACE_RETRIES {
            if let Some(lease) = self.try_acquire(&pool, req).await? {
                return Ok(lease);
            }
        }
        Err(LeaseError::Store(format!(
            "gave up after {RACE_RETRIES} lost races for a subnet in {}",
            pool.network
        )))
    }

    async fn renew(&self, lease: &Lease) -> Result<Lease, LeaseError> {
        for _ in 0..RACE_RETRIES {
            let stored = match self.read(lease).await? {
                None => {
                    tracing::warn!(subnet = %lease.subnet, "our lease key is gone; re-creating it on the same subnet");
                    let want = Lease {
                        term: Term::Expiring(None),
                        ..lease.clone()
                    };
                    self.create(&want).await?
                }
                Some((cur, _)) if cur.attrs.public_ip != lease.attrs.public_ip => {
                    return Err(LeaseError::Lost(lease.subnet));
                }
                // A reservation does not expire: keep it as it is, but
                // publish our current attributes.
                Some((cur, meta)) => {
                    let want = Lease {
                        term: cur.term,
                        ..lease.clone()
                    };
                    if cur.term.is_reservation() && cur.attrs == lease.attrs {
                        return Ok(want);
                    }
                    self.replace(&want, meta).await?
                }
            };
            if let Some(l) = stored {
                return Ok(l);
            }
        }
        Err(LeaseError::Store(format!(
            "lease {} kept changing under us",
            lease.subnet
        )))
    }

    async fn watch_leases(&self, tx: watch::Sender<Arc<LeaseSnapshot>>) -> Result<(), LeaseError> {
        self.watch_leases_from(tx, None).await
    }

    async fn mark_ready(&self, _lease: &Lease) -> Result<(), LeaseError> {
        Ok(())
    }
}

impl EtcdStore {
    /// `watch_leases`, resuming from a snapshot taken at `revision` instead
    /// of listing first (if that revision is compacted away, it re-lists).
    pub async fn watch_leases_from(
        &self,
        tx: watch::Sender<Arc<LeaseSnapshot>>,
        mut resume: Option<(LeaseSnapshot, i64)>,
    ) -> Result<(), LeaseError> {
        let mut backoff = BACKOFF_MIN;
        let mut listings = 0u64;
        loop {
            let outcome = tokio::select! {
                r = self.watch_once(&tx, resume.take(), &mut listings) => r,
                _ = tx.closed() => return Ok(()),
            };
            match outcome {
                Ok(WatchEnd::Closed) => return Ok(()),
                Ok(WatchEnd::Relist) => backoff = BACKOFF_MIN,
                Err(e) => {
                    let wait = jitter(backoff);
                    tracing::warn!(error = %e, retry_in = ?wait, "lease watch failed; re-listing");
                    tokio::time::sleep(wait).await;
                    backoff = (backoff * 2).min(BACKOFF_MAX);
                }
            }
        }
    }
}

/// `d` ± 20 %.
fn jitter(d: Duration) -> Duration {
    d.mul_f64(rand::random_range(0.8..1.2))
}

enum WatchEnd {
    /// Every receiver is gone.
    Closed,
    /// The watch was compacted or cancelled: list again.
    Relist,
}

impl EtcdStore {
    /// List (unless resuming), publish, then follow the watch from the next
    /// revision, publishing the whole set after each burst of events.
    async fn watch_once(
        &self,
        tx: &watch::Sender<Arc<LeaseSnapshot>>,
        resume: Option<(LeaseSnapshot, i64)>,
        listings: &mut u64,
    ) -> Result<WatchEnd, LeaseError> {
        let (mut snap, revision) = match resume {
            Some(r) => r,
            None => {
                let l = self.list().await?;
                (l.snap, l.revision)
            }
        };
        *listings += 1;
        if *listings > 1 {
            self.metrics.watch_reconnects.inc();
        }
        snap.listing = *listings;
        publish(tx, &snap);
        let opts = WatchOptions::new()
            .with_prefix()
            .with_start_revision(revision + 1);
        let watch = self
            .client
            .clone()
            .watch(self.subnets_prefix(), Some(opts))
            .await;
        let mut stream = self.count("watch", watch)?;
        loop {
            let msg = stream.message().await;
            let mut next = Some(msg);
            // The watch's "created" response and progress notifications
            // carry no events: nothing to publish for them.
            let mut events = 0;
            // Fold in every response already received before publishing:
            // a burst of writes costs one snapshot, not one per batch,
            // while the first change of a quiet period goes out at once.
            while let Some(msg) = next.take() {
                let Some(resp) = self.count("watch stream", msg)? else {
                    return Err(LeaseError::Store("etcd closed the watch stream".into()));
                };
                if resp.compact_revision() != 0 || resp.canceled() {
                    tracing::warn!(
                        compact_revision = resp.compact_revision(),
                        reason = resp.cancel_reason(),
                        "lease watch cancelled (compaction?); re-listing"
                    );
                    return Ok(WatchEnd::Relist);
                }
                events += resp.events().len();
                apply_events(&mut snap, resp.events());
                next = stream.message().now_or_never();
            }
            if events == 0 {
                continue;
            }
            publish(tx, &snap);
            if tx.is_closed() {
                return Ok(WatchEnd::Closed);
            }
        }
    }
}

/// Folds one batch of watch events into the snapshot. Keys that are not
/// leases are skipped, as in a listing; a malformed value replaces the
/// lease (the key no longer holds one) and is recorded as such.
fn apply_events(snap: &mut LeaseSnapshot, events: &[etcd_client::Event]) {
    for ev in events {
        let Some(kv) = ev.kv() else { continue };
        let key = String::from_utf8_lossy(kv.key()).into_owned();
        let Some((subnet, _)) = keys::parse_subnet_key(&key) else {
            continue;
        };
        snap.malformed.remove(&key);
        if ev.event_type() == EventType::Delete {
            snap.remove(&subnet);
            continue;
        }
        match decode(kv) {
            Decoded::Lease(lease) => snap.upsert(lease),
            Decoded::Malformed(_, why) => {
                snap.remove(&subnet);
                snap.malformed.insert(key, why);
            }
            Decoded::NotALease => {}
        }
    }
}

fn publish(tx: &watch::Sender<Arc<LeaseSnapshot>>, snap: &LeaseSnapshot) {
    tracing::debug!(leases = snap.len(), "publishing lease snapshot");
    tx.send_replace(Arc::new(snap.clone()));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefix_end_increments_the_last_byte() {
        assert_eq!(prefix_end(b"/a/subnets/"), b"/a/subnets0".to_vec());
        assert_eq!(prefix_end(b"a\xff"), b"b".to_vec());
        assert_eq!(prefix_end(b"\xff"), vec![0]);
    }
}
