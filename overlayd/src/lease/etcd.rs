//! The etcd v3 lease store, in flannel's layout: config at
//! `<prefix>/config`, one key per lease at `<prefix>/subnets/<subnet key>`
//! holding the lease JSON and bound to a 24 h etcd lease (a key without
//! one is a reservation).
//!
//! Unlike flannel, renewal re-puts only while the key is still ours (a
//! compare on its revision), and a lease deleted under us is re-created
//! on the same subnet instead of shutting the daemon down (#904, #1240).

use super::alloc::{self, Plan, Pool};
use super::keys;
use super::{Lease, LeaseError, LeaseRequest, LeaseSnapshot, LeaseStore};
use async_trait::async_trait;
use etcd_client::{
    Certificate, Client, Compare, CompareOp, ConnectOptions, EventType, GetOptions, Identity,
    KeyValue, PutOptions, TlsOptions, Txn, TxnOp, WatchOptions,
};
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
const BACKOFF_MIN: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(5);

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
/// a client certificate needs both its certificate and key.
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
        if let Some(ca) = &self.ca_file {
            tls = tls.ca_certificate(Certificate::from_pem(read("--etcd-cafile", ca)?));
        }
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

pub struct EtcdStore {
    client: Client,
    prefix: String,
    ttl: Duration,
}

fn store_err(what: &str) -> impl FnOnce(etcd_client::Error) -> LeaseError + '_ {
    move |e| LeaseError::Store(format!("etcd {what}: {e}"))
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
        if opts.tls.is_set() {
            if let Some(e) = opts.endpoints.iter().find(|e| e.starts_with("http://")) {
                return Err(LeaseError::Config(format!(
                    "--etcd-endpoints {e}: TLS files are given, so every endpoint must be https://"
                )));
            }
            co = co.with_tls(opts.tls.options()?);
        }
        let client = Client::connect(&opts.endpoints, Some(co))
            .await
            .map_err(store_err("connect"))?;
        // path.Join in flannel drops trailing slashes.
        let prefix = opts.prefix.trim_end_matches('/').to_string();
        Ok(EtcdStore {
            client,
            prefix,
            ttl: SUBNET_TTL,
        })
    }

    /// Test hook: a shorter etcd lease TTL (renewal tests).
    pub fn with_ttl(mut self, ttl: Duration) -> Self {
        self.ttl = ttl;
        self
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
        let (snap, revision, _) = self.list().await?;
        Ok((snap, revision))
    }

    /// Every lease under the prefix, the revision of the read, and the
    /// per-key metadata. Keys that are not leases are skipped, as flannel does.
    async fn list(&self) -> Result<(LeaseSnapshot, i64, BTreeMap<Ipv4Net, KeyMeta>), LeaseError> {
        let resp = self
            .client
            .clone()
            .get(self.subnets_prefix(), Some(GetOptions::new().with_prefix()))
            .await
            .map_err(store_err("list subnets"))?;
        let revision = resp.header().map(|h| h.revision()).unwrap_or(0);
        let mut snap = LeaseSnapshot::new();
        let mut meta = BTreeMap::new();
        for kv in resp.kvs() {
            if let Some(lease) = self.decode(kv).await? {
                meta.insert(
                    lease.subnet,
                    KeyMeta {
                        lease_id: kv.lease(),
                        mod_revision: kv.mod_revision(),
                    },
                );
                snap.insert(lease.subnet, lease);
            }
        }
        Ok((snap, revision, meta))
    }

    /// One key -> lease; `None` (logged) for keys that are not leases or
    /// whose etcd lease is already gone.
    async fn decode(&self, kv: &KeyValue) -> Result<Option<Lease>, LeaseError> {
        let key = String::from_utf8_lossy(kv.key());
        let Some((subnet, ipv6_subnet)) = keys::parse_subnet_key(&key) else {
            tracing::warn!(%key, "ignoring key that is not a subnet lease");
            return Ok(None);
        };
        let attrs = match keys::decode_attrs(kv.value()) {
            Ok(a) => a,
            Err(e) => {
                tracing::warn!(%key, error = %e, "ignoring malformed lease");
                return Ok(None);
            }
        };
        let expiration = match kv.lease() {
            0 => None,
            id => {
                let ttl = self
                    .client
                    .clone()
                    .lease_time_to_live(id, None)
                    .await
                    .map_err(store_err("lease time-to-live"))?
                    .ttl();
                if ttl < 0 {
                    return Ok(None); // expired; etcd deletes the key
                }
                Some(SystemTime::now() + Duration::from_secs(ttl as u64))
            }
        };
        Ok(Some(Lease {
            subnet,
            ipv6_subnet,
            attrs,
            expiration,
        }))
    }

    /// Grants a fresh etcd lease; returns its id and the expiry time.
    async fn grant(&self) -> Result<(i64, SystemTime), LeaseError> {
        let resp = self
            .client
            .clone()
            .lease_grant(self.ttl.as_secs() as i64, None)
            .await
            .map_err(store_err("lease grant"))?;
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
        if let Err(e) = self.client.clone().lease_revoke(id).await {
            tracing::debug!(lease_id = id, error = %e, "could not revoke etcd lease");
        }
    }

    /// Writes `lease` if `cmp` holds. A reservation is rewritten without an
    /// etcd lease (it stays a reservation). Returns the stored lease, or
    /// `None` when the compare failed (someone else changed the key).
    async fn put_if(&self, lease: &Lease, cmp: Compare) -> Result<Option<Lease>, LeaseError> {
        let key = self.key(lease);
        let value = keys::encode_attrs(&lease.attrs);
        let (opts, lease_id, expiration) = if lease.expiration.is_some() {
            let (id, exp) = self.grant().await?;
            (Some(PutOptions::new().with_lease(id)), id, Some(exp))
        } else {
            (None, 0, None)
        };
        let txn = Txn::new()
            .when(vec![cmp])
            .and_then(vec![TxnOp::put(key.clone(), value, opts)]);
        let result = self.client.clone().txn(txn).await;
        let ok = match result {
            Ok(resp) => resp.succeeded(),
            Err(e) => {
                self.revoke(lease_id).await;
                return Err(store_err("transaction")(e));
            }
        };
        if !ok {
            self.revoke(lease_id).await;
            return Ok(None);
        }
        Ok(Some(Lease {
            expiration,
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
        self.client
            .clone()
            .delete(self.key(lease), None)
            .await
            .map_err(store_err("delete"))?;
        Ok(())
    }

    /// One attempt of acquire; `None` = lost a race, try again.
    async fn try_acquire(
        &self,
        pool: &Pool,
        req: &LeaseRequest,
    ) -> Result<Option<Lease>, LeaseError> {
        let (snap, _, meta) = self.list().await?;
        let leases: Vec<Lease> = snap.values().cloned().collect();
        let plan = alloc::plan(
            pool,
            &leases,
            req.attrs.public_ip,
            req.previous_subnet,
            |n| rand::random_range(0..n),
        )?;
        match plan {
            Plan::Reuse(old) => {
                let Some(m) = meta.get(&old.subnet).copied() else {
                    return Ok(None);
                };
                tracing::info!(subnet = %old.subnet, reservation = old.expiration.is_none(), "reusing lease held by our public IP");
                let new = Lease {
                    attrs: req.attrs.clone(),
                    ..old
                };
                self.replace(&new, m).await
            }
            Plan::Create { subnet, stale } => {
                if let Some(old) = stale.and_then(|s| snap.get(&s)) {
                    tracing::info!(subnet = %old.subnet, "deleting our old lease: it no longer fits the network config");
                    self.delete(old).await?;
                }
                let new = Lease {
                    subnet,
                    ipv6_subnet: None,
                    attrs: req.attrs.clone(),
                    expiration: Some(SystemTime::now()),
                };
                let got = self.create(&new).await?;
                if got.is_some() {
                    tracing::info!(%subnet, "allocated new lease");
                }
                Ok(got)
            }
        }
    }

    /// Reads the current key of `lease`: `None` if absent.
    async fn read(&self, lease: &Lease) -> Result<Option<(Lease, KeyMeta)>, LeaseError> {
        let resp = self
            .client
            .clone()
            .get(self.key(lease), None)
            .await
            .map_err(store_err("get"))?;
        let Some(kv) = resp.kvs().first() else {
            return Ok(None);
        };
        let meta = KeyMeta {
            lease_id: kv.lease(),
            mod_revision: kv.mod_revision(),
        };
        Ok(self.decode(kv).await?.map(|l| (l, meta)))
    }
}

#[async_trait]
impl LeaseStore for EtcdStore {
    async fn network_config(&self) -> Result<String, LeaseError> {
        let key = format!("{}/config", self.prefix);
        let resp = self
            .client
            .clone()
            .get(key.clone(), None)
            .await
            .map_err(store_err("get config"))?;
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
                        expiration: Some(SystemTime::now()),
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
                        expiration: cur.expiration,
                        ..lease.clone()
                    };
                    if cur.expiration.is_none() && cur.attrs == lease.attrs {
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
        loop {
            let outcome = tokio::select! {
                r = self.watch_once(&tx, resume.take()) => r,
                _ = tx.closed() => return Ok(()),
            };
            match outcome {
                Ok(WatchEnd::Closed) => return Ok(()),
                Ok(WatchEnd::Relist) => backoff = BACKOFF_MIN,
                Err(e) => {
                    tracing::warn!(error = %e, retry_in = ?backoff, "lease watch failed; re-listing");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(BACKOFF_MAX);
                }
            }
        }
    }
}

enum WatchEnd {
    /// Every receiver is gone.
    Closed,
    /// The watch was compacted or cancelled: list again.
    Relist,
}

impl EtcdStore {
    /// List (unless resuming), publish, then follow the watch from the next
    /// revision, publishing the whole set after every batch of events.
    async fn watch_once(
        &self,
        tx: &watch::Sender<Arc<LeaseSnapshot>>,
        resume: Option<(LeaseSnapshot, i64)>,
    ) -> Result<WatchEnd, LeaseError> {
        let (mut snap, revision) = match resume {
            Some(r) => r,
            None => {
                let (snap, revision, _) = self.list().await?;
                (snap, revision)
            }
        };
        publish(tx, &snap);
        let opts = WatchOptions::new()
            .with_prefix()
            .with_start_revision(revision + 1);
        let mut stream = self
            .client
            .clone()
            .watch(self.subnets_prefix(), Some(opts))
            .await
            .map_err(store_err("watch"))?;
        loop {
            let Some(resp) = stream.message().await.map_err(store_err("watch stream"))? else {
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
            if resp.events().is_empty() {
                continue;
            }
            self.apply_events(&mut snap, resp.events()).await?;
            publish(tx, &snap);
            if tx.is_closed() {
                return Ok(WatchEnd::Closed);
            }
        }
    }

    /// Folds one batch of watch events into the snapshot. Keys that are
    /// not leases are skipped, as in a listing.
    async fn apply_events(
        &self,
        snap: &mut LeaseSnapshot,
        events: &[etcd_client::Event],
    ) -> Result<(), LeaseError> {
        for ev in events {
            let Some(kv) = ev.kv() else { continue };
            let Some((subnet, _)) = keys::parse_subnet_key(&String::from_utf8_lossy(kv.key()))
            else {
                continue;
            };
            let lease = match ev.event_type() {
                EventType::Delete => None,
                EventType::Put => self.decode(kv).await?,
            };
            match lease {
                Some(lease) => snap.insert(subnet, lease),
                None => snap.remove(&subnet),
            };
        }
        Ok(())
    }
}

fn publish(tx: &watch::Sender<Arc<LeaseSnapshot>>, snap: &LeaseSnapshot) {
    tracing::debug!(leases = snap.len(), "publishing lease snapshot");
    tx.send_replace(Arc::new(snap.clone()));
}
