//! The Kubernetes lease store (--kube-subnet-mgr), compatible with
//! flannel's kube subnet manager: the subnet is the Node's pod CIDR, and
//! each node publishes itself in flannel's annotations on its Node.
//!
//! - One watch of all Nodes feeds the snapshot (`watch`); only Nodes
//!   annotated `kube-subnet-manager: "true"` are peers.
//! - Our own Node is read with plain GETs and written with strategic merge
//!   patches on nodes/NAME/status (`own`).
//!
//! RBAC: nodes get/list/watch, nodes/status patch, and pods get when the
//! node name comes from POD_NAME/POD_NAMESPACE.

pub mod annotations;
pub mod client;
pub mod node;
mod own;
pub mod tracker;
mod watch;

pub use client::NodeIdentity;

use crate::health::readiness::Readiness;
use crate::lease::{Lease, LeaseError, LeaseRequest, LeaseSnapshot, LeaseStore};
use crate::metrics::Metrics;
use annotations::Annotations;
use async_trait::async_trait;
use k8s_openapi::api::core::v1::Node;
use kube::Api;
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

/// How to reach the API and which Node is ours (flags --kube-*,
/// --net-config-path, --set-node-network-unavailable).
#[derive(Debug, Clone)]
pub struct KubeOptions {
    pub api_url: Option<String>,
    pub kubeconfig: Option<PathBuf>,
    pub annotation_prefix: String,
    pub net_config_path: PathBuf,
    /// `None` = from the environment ([`NodeIdentity::from_env`]).
    pub node: Option<NodeIdentity>,
    pub set_node_network_unavailable: bool,
}

impl KubeOptions {
    /// From overlayd's flags; the node from the environment.
    pub fn from_flags(f: &crate::cli::Flags) -> Self {
        KubeOptions {
            api_url: f.kube_api_url.clone().filter(|u| !u.is_empty()),
            kubeconfig: f
                .kubeconfig_file
                .clone()
                .filter(|p| !p.as_os_str().is_empty()),
            annotation_prefix: f.kube_annotation_prefix.clone(),
            net_config_path: f.net_config_path.clone(),
            node: None,
            set_node_network_unavailable: f.set_node_network_unavailable,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum KubeError {
    #[error("--kube-annotation-prefix {prefix:?}: {why}")]
    Prefix { prefix: String, why: String },
    #[error("annotation {annotation}={value:?}: {why}")]
    BadAnnotation {
        annotation: String,
        value: String,
        why: String,
    },
    #[error("Kubernetes client: {0}")]
    Client(String),
    #[error("node name: {0}")]
    Identity(String),
    /// A request the API refused or that did not reach it. `detail` holds
    /// the API's own message, which for a 403 names the user, the verb
    /// and the resource.
    #[error("{op}: {detail}")]
    Api { op: String, detail: String },
    #[error("node {node}: {why}")]
    PodCidr { node: String, why: String },
    #[error("net-conf.json {path}: {why}")]
    NetConf { path: PathBuf, why: String },
}

impl From<KubeError> for LeaseError {
    fn from(e: KubeError) -> Self {
        match e {
            // Waiting fixes these: the API may come back, the ConfigMap may
            // be mounted late.
            KubeError::Api { .. } | KubeError::NetConf { .. } => LeaseError::Store(e.to_string()),
            _ => LeaseError::Config(e.to_string()),
        }
    }
}

/// `op` failed: keeps the API's message (and code) whole, so a missing
/// RBAC rule reads as "... cannot patch resource \"nodes/status\" ...".
pub(crate) fn api_error(op: &str, e: &kube::Error) -> KubeError {
    let detail = match e {
        kube::Error::Api(s) => format!("{} (HTTP {} {})", s.message, s.code, s.reason),
        other => other.to_string(),
    };
    KubeError::Api {
        op: op.to_string(),
        detail,
    }
}

/// What acquire asked for; renew publishes it again if it went missing.
#[derive(Debug, Clone)]
struct Held {
    req: LeaseRequest,
    subnet: ipnet::Ipv4Net,
}

pub struct KubeStore {
    nodes: Api<Node>,
    node_name: String,
    ann: Annotations,
    net_config_path: PathBuf,
    set_network_unavailable: bool,
    metrics: Arc<Metrics>,
    readiness: Option<Arc<Readiness>>,
    cached_lists: bool,
    held: Mutex<Option<Held>>,
    /// Bumped by the watch whenever our own Node changes, so a waiting
    /// acquire re-reads it at once instead of polling.
    own_changed: tokio::sync::watch::Sender<u64>,
    /// The watch's last error (`None` while it is healthy).
    watch_error: tokio::sync::watch::Sender<Option<String>>,
}

impl KubeStore {
    /// Builds the client, validates the prefix and resolves the node
    /// name (a GET of our Pod when only POD_NAME/POD_NAMESPACE are set).
    /// Errors: `Config` for bad flags or environment, `Store` when the
    /// API could not be asked.
    pub async fn connect(opts: &KubeOptions, metrics: Arc<Metrics>) -> Result<Self, LeaseError> {
        let ann = Annotations::new(&opts.annotation_prefix)?;
        let cfg = client::config(opts.api_url.as_deref(), opts.kubeconfig.as_deref()).await?;
        let client = client::client(cfg)?;
        let identity = match &opts.node {
            Some(i) => i.clone(),
            None => NodeIdentity::from_env()?,
        };
        metrics.store_request("get_pod");
        let node_name = identity.resolve(&client).await.inspect_err(|e| {
            if matches!(e, KubeError::Api { .. }) {
                metrics.store_error("get_pod");
            }
        })?;
        tracing::info!(node = %node_name, prefix = ?opts.annotation_prefix, "Kubernetes subnet manager");
        Ok(KubeStore {
            nodes: Api::all(client),
            node_name,
            ann,
            net_config_path: opts.net_config_path.clone(),
            set_network_unavailable: opts.set_node_network_unavailable,
            metrics,
            readiness: None,
            cached_lists: false,
            held: Mutex::new(None),
            own_changed: tokio::sync::watch::channel(0).0,
            watch_error: tokio::sync::watch::channel(None).0,
        })
    }

    /// Shows what acquire waits for (a missing Node or pod CIDR) on
    /// /readyz, as the lease condition.
    pub fn with_readiness(mut self, readiness: Arc<Readiness>) -> Self {
        self.readiness = Some(readiness);
        self
    }

    /// Lists Nodes with resourceVersion=0 from the API server's watch
    /// cache in one response (client-go's way) instead of consistent reads
    /// in pages of 500: less etcd load when thousands of nodes relist at
    /// once, but the store then holds the whole list (~8 KB per Node) at
    /// each listing. Off by default.
    pub fn with_cached_lists(mut self, on: bool) -> Self {
        self.cached_lists = on;
        self
    }

    /// Our Node's name.
    pub fn node_name(&self) -> &str {
        &self.node_name
    }

    /// The watch's health: `Some(error)` after a failed list or watch
    /// (a 403 names the missing rule), `None` once it works again.
    pub fn watch_errors(&self) -> tokio::sync::watch::Receiver<Option<String>> {
        self.watch_error.subscribe()
    }

    /// The `node-public-ip` annotation of our Node (flannel reads it
    /// before choosing the interface, and it replaces --public-ip).
    /// `Store` error while the Node does not exist yet.
    pub async fn node_public_ip(&self) -> Result<Option<Ipv4Addr>, LeaseError> {
        let node = self.get_own().await?.ok_or_else(|| self.no_node())?;
        let key = self.ann.node_public_ip();
        let current = node::our_annotations(&self.ann, &node);
        match current
            .get(&key)
            .map(|s| s.trim())
            .filter(|s| !s.is_empty())
        {
            None => Ok(None),
            Some(v) => v.parse().map(Some).map_err(|_| {
                KubeError::BadAnnotation {
                    annotation: key,
                    value: v.to_string(),
                    why: "not an IPv4 address".into(),
                }
                .into()
            }),
        }
    }

    /// The VTEP MAC our Node published before (backend-data's VtepMAC),
    /// so a restarted vxlan backend can keep it, as flannel does.
    pub async fn stored_vtep_mac(&self) -> Result<Option<String>, LeaseError> {
        let Some(node) = self.get_own().await? else {
            return Ok(None);
        };
        let current = node::our_annotations(&self.ann, &node);
        Ok(current
            .get(&self.ann.backend_data())
            .and_then(|s| serde_json::from_str::<serde_json::Value>(s).ok())
            .and_then(|v| v.get("VtepMAC")?.as_str().map(String::from)))
    }

    fn no_node(&self) -> LeaseError {
        LeaseError::Store(format!(
            "node {} not found (the kubelet registers it; is the node name right?)",
            self.node_name
        ))
    }

    /// GET of our Node; `None` when it does not exist.
    async fn get_own(&self) -> Result<Option<Node>, KubeError> {
        self.metrics.store_request("get_node");
        match self.nodes.get(&self.node_name).await {
            Ok(n) => Ok(Some(n)),
            Err(kube::Error::Api(s)) if s.is_not_found() => Ok(None),
            Err(e) => {
                self.metrics.store_error("get_node");
                Err(api_error(&format!("get node {}", self.node_name), &e))
            }
        }
    }
}

#[async_trait]
impl LeaseStore for KubeStore {
    async fn network_config(&self) -> Result<String, LeaseError> {
        tokio::fs::read_to_string(&self.net_config_path)
            .await
            .map_err(|e| {
                KubeError::NetConf {
                    path: self.net_config_path.clone(),
                    why: e.to_string(),
                }
                .into()
            })
    }

    async fn acquire(&self, req: &LeaseRequest) -> Result<Lease, LeaseError> {
        self.acquire_own(req).await
    }

    async fn renew(&self, lease: &Lease) -> Result<Lease, LeaseError> {
        self.renew_own(lease).await
    }

    async fn watch_leases(
        &self,
        tx: tokio::sync::watch::Sender<Arc<LeaseSnapshot>>,
    ) -> Result<(), LeaseError> {
        self.watch_nodes(tx).await;
        Ok(())
    }

    async fn mark_ready(&self, _lease: &Lease) -> Result<(), LeaseError> {
        if !self.set_network_unavailable {
            return Ok(());
        }
        self.patch_condition().await
    }
}
