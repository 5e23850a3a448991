//! Our own Node: acquire (wait for it and its pod CIDR, check the CIDR,
//! then annotate), renew (annotations still there, same pod CIDR) and the
//! NetworkUnavailable condition. Reads are GETs of the one Node (nodes
//! get); writes are strategic merge patches on nodes/NAME/status without
//! a resourceVersion (nodes/status patch).

use super::annotations::{self, changed};
use super::node::{our_annotations, pod_cidr_v4};
use super::{api_error, Held, KubeError, KubeStore};
use crate::health::readiness::Condition;
use crate::lease::{Lease, LeaseAttrs, LeaseError, LeaseRequest, Term};
use ipnet::Ipv4Net;
use k8s_openapi::api::core::v1::Node;
use kube::api::{Patch, PatchParams};
use std::time::Duration;

/// Longest pause between two looks at a Node we wait for; the watch wakes
/// the wait at once when the Node changes, this only covers a watch that
/// is not running or failing.
const WAIT_MAX: Duration = Duration::from_secs(30);
/// Tries of the condition patch (flannel tries once and only logs).
const CONDITION_TRIES: u32 = 6;

/// What acquire found on one look at our Node.
enum Look {
    Ready(Box<Node>, Ipv4Net),
    /// Not there yet: the reason, naming what to fix.
    Waiting(String),
}

impl KubeStore {
    pub(super) async fn acquire_own(&self, req: &LeaseRequest) -> Result<Lease, LeaseError> {
        let text = crate::lease::LeaseStore::network_config(self).await?;
        let cfg = crate::config::parse(&text).map_err(|e| LeaseError::Config(e.to_string()))?;
        let network = cfg.network.ok_or_else(|| {
            LeaseError::Config("net-conf.json has no IPv4 Network (felt routes IPv4 only)".into())
        })?;
        let (node, subnet) = self.wait_for_pod_cidr(network).await?;
        let attrs = self.publish(&node, &req.attrs).await?;
        tracing::info!(node = %self.node_name, %subnet, public_ip = %attrs.public_ip, "node lease");
        if let Ok(mut h) = self.held.lock() {
            *h = Some(Held {
                req: req.clone(),
                subnet,
            });
        }
        Ok(node_lease(subnet, attrs))
    }

    /// Waits (unlike flanneld, which exits) until our Node exists and has a
    /// pod CIDR inside `network`, saying what to fix meanwhile in the log
    /// and on /readyz. A CIDR outside the network, or unusable pod CIDRs,
    /// are `Config` errors: no wait fixes them.
    async fn wait_for_pod_cidr(&self, network: Ipv4Net) -> Result<(Node, Ipv4Net), LeaseError> {
        let mut delay = Duration::from_secs(1);
        let mut woken = self.own_changed.subscribe();
        loop {
            woken.borrow_and_update();
            let why = match self.look(network).await? {
                Look::Ready(node, subnet) => return Ok((*node, subnet)),
                Look::Waiting(why) => why,
            };
            tracing::warn!(node = %self.node_name, "waiting: {why}");
            if let Some(r) = &self.readiness {
                r.not(Condition::Lease, why);
            }
            tokio::select! {
                _ = woken.changed() => {}
                _ = tokio::time::sleep(delay) => delay = (delay * 2).min(WAIT_MAX),
            }
        }
    }

    async fn look(&self, network: Ipv4Net) -> Result<Look, LeaseError> {
        let Some(node) = self.get_own().await? else {
            return Ok(Look::Waiting(format!(
                "node {} does not exist yet (the kubelet registers it; is the node name right?)",
                self.node_name
            )));
        };
        let bad = |why: String| KubeError::PodCidr {
            node: self.node_name.clone(),
            why,
        };
        let Some(subnet) = pod_cidr_v4(&node).map_err(bad)? else {
            return Ok(Look::Waiting(format!(
                "pod CIDR not assigned to node {}: start kube-controller-manager with \
                 --allocate-node-cidrs and --cluster-cidr (kubeadm init --pod-network-cidr), \
                 or set the Node's spec.podCIDR",
                self.node_name
            )));
        };
        // Checked before any annotation is written (flannel annotates
        // first, so a misconfigured node looks like a valid peer).
        if !network.contains(&subnet) {
            return Err(bad(format!(
                "pod CIDR {subnet} lies outside Network {network} of {}: make \
                 kube-controller-manager's --cluster-cidr match net-conf.json",
                self.net_config_path.display()
            ))
            .into());
        }
        Ok(Look::Ready(Box::new(node), subnet))
    }

    /// Writes the annotations of `attrs` that `node` lacks or holds
    /// differently, in one patch; returns the attributes as published
    /// (public-ip-overwrite applied).
    async fn publish(&self, node: &Node, requested: &LeaseAttrs) -> Result<LeaseAttrs, LeaseError> {
        let current = our_annotations(&self.ann, node);
        let public_ip = self
            .ann
            .effective_public_ip(&current, requested.public_ip)?;
        let attrs = LeaseAttrs {
            public_ip,
            ..requested.clone()
        };
        let diff = changed(&current, &self.ann.desired(&attrs));
        if diff.is_empty() {
            return Ok(attrs);
        }
        tracing::info!(node = %self.node_name, keys = ?diff.keys().collect::<Vec<_>>(), "annotating node");
        self.patch("patch_annotations", annotations::annotation_patch(&diff))
            .await?;
        Ok(attrs)
    }

    /// PATCH nodes/NAME/status, strategic merge.
    async fn patch(&self, op: &'static str, body: serde_json::Value) -> Result<(), KubeError> {
        self.metrics.store_request(op);
        let r = self
            .nodes
            .patch_status(
                &self.node_name,
                &PatchParams::default(),
                &Patch::Strategic(body),
            )
            .await;
        r.map(|_| ()).map_err(|e| {
            self.metrics.store_error(op);
            api_error(&format!("patch node {} status", self.node_name), &e)
        })
    }

    /// Nothing expires in Kubernetes mode: renewal checks that our Node
    /// still has the lease's pod CIDR (a Node deleted and re-created gets
    /// a new one: `Lost`) and puts back annotations someone removed.
    pub(super) async fn renew_own(&self, lease: &Lease) -> Result<Lease, LeaseError> {
        let requested = self
            .held
            .lock()
            .ok()
            .and_then(|h| h.clone())
            .filter(|h| h.subnet == lease.subnet)
            .map_or_else(|| lease.attrs.clone(), |h| h.req.attrs);
        let node = self.get_own().await?.ok_or_else(|| {
            LeaseError::Store(format!(
                "node {} is gone (deleted?); waiting for it to come back",
                self.node_name
            ))
        })?;
        match pod_cidr_v4(&node) {
            Ok(Some(s)) if s == lease.subnet => {}
            Ok(Some(other)) => {
                tracing::warn!(node = %self.node_name, held = %lease.subnet, now = %other,
                    "our Node has another pod CIDR now (deleted and re-created): lease lost");
                return Err(LeaseError::Lost(lease.subnet));
            }
            Ok(None) => {
                return Err(LeaseError::Store(format!(
                    "node {} has no pod CIDR (re-created?); waiting for one",
                    self.node_name
                )))
            }
            Err(why) => return Err(LeaseError::Store(format!("node {}: {why}", self.node_name))),
        }
        let attrs = self.publish(&node, &requested).await?;
        Ok(node_lease(lease.subnet, attrs))
    }

    /// NetworkUnavailable=False, reason FlannelIsUp, both times now: one
    /// strategic merge patch (conditions merge by type; the kubelet's stay).
    /// Retried with backoff, unlike flannel.
    pub(super) async fn patch_condition(&self) -> Result<(), LeaseError> {
        let mut delay = Duration::from_secs(1);
        let mut attempt = 1;
        loop {
            let body = annotations::condition_patch(&now_rfc3339());
            match self.patch("patch_condition", body).await {
                Ok(()) => {
                    tracing::info!(node = %self.node_name, "set NetworkUnavailable=False");
                    return Ok(());
                }
                Err(e) if attempt >= CONDITION_TRIES => return Err(e.into()),
                Err(e) => {
                    tracing::warn!(error = %e, retry_in = ?delay, "cannot set the NetworkUnavailable condition");
                    tokio::time::sleep(delay).await;
                    delay *= 2;
                    attempt += 1;
                }
            }
        }
    }
}

fn node_lease(subnet: Ipv4Net, attrs: LeaseAttrs) -> Lease {
    Lease {
        subnet,
        ipv6_subnet: None,
        attrs,
        term: Term::Expiring(None),
    }
}

/// Now in RFC 3339 with whole seconds, as Go's metav1.Time marshals.
fn now_rfc3339() -> String {
    let now = k8s_openapi::jiff::Timestamp::now();
    k8s_openapi::jiff::Timestamp::from_second(now.as_second())
        .unwrap_or(now)
        .to_string()
}
