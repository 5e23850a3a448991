//! The API client, built in flanneld's order (client-go's
//! BuildConfigFromFlags), and the node's identity.

use super::{api_error, KubeError};
use k8s_openapi::api::core::v1::Pod;
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Api, Client, Config};
use std::path::Path;

/// Which Node is ours.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NodeIdentity {
    /// NODE_NAME.
    Node(String),
    /// POD_NAME + POD_NAMESPACE (what kube-flannel.yml sets through the
    /// downward API): the Pod's spec.nodeName, read once at start.
    Pod { namespace: String, name: String },
}

impl NodeIdentity {
    /// From the environment, as flanneld: NODE_NAME, else POD_NAME and
    /// POD_NAMESPACE.
    pub fn from_env() -> Result<Self, KubeError> {
        Self::from_vars(|k| std::env::var(k).ok())
    }

    fn from_vars(var: impl Fn(&str) -> Option<String>) -> Result<Self, KubeError> {
        let set = |k: &str| var(k).filter(|v| !v.is_empty());
        if let Some(n) = set("NODE_NAME") {
            return Ok(NodeIdentity::Node(n));
        }
        match (set("POD_NAME"), set("POD_NAMESPACE")) {
            (Some(name), Some(namespace)) => Ok(NodeIdentity::Pod { namespace, name }),
            _ => Err(KubeError::Identity(
                "set NODE_NAME, or POD_NAME and POD_NAMESPACE (the DaemonSet's downward API: \
                 fieldRef spec.nodeName, or metadata.name and metadata.namespace)"
                    .into(),
            )),
        }
    }

    /// The node name (asks the API for the Pod's spec.nodeName; needs
    /// RBAC pods get).
    pub async fn resolve(&self, client: &Client) -> Result<String, KubeError> {
        let (namespace, name) = match self {
            NodeIdentity::Node(n) => return Ok(n.clone()),
            NodeIdentity::Pod { namespace, name } => (namespace, name),
        };
        let pods: Api<Pod> = Api::namespaced(client.clone(), namespace);
        let pod = pods
            .get(name)
            .await
            .map_err(|e| api_error(&format!("get pod {namespace}/{name}"), &e))?;
        pod.spec
            .and_then(|s| s.node_name)
            .filter(|n| !n.is_empty())
            .ok_or_else(|| {
                KubeError::Identity(format!(
                    "pod {namespace}/{name} has no spec.nodeName (not scheduled yet?)"
                ))
            })
    }
}

/// The client config from --kubeconfig-file and --kube-api-url:
/// neither = in-cluster (the ServiceAccount token and CA); a kubeconfig
/// file, with the URL overriding its server; only a URL = that URL without
/// credentials (client-go does the same).
pub async fn config(api_url: Option<&str>, kubeconfig: Option<&Path>) -> Result<Config, KubeError> {
    let url = api_url
        .map(|u| {
            u.parse::<http::Uri>()
                .map_err(|e| KubeError::Client(format!("--kube-api-url {u:?}: {e}")))
        })
        .transpose()?;
    let mut cfg = match (kubeconfig, url.clone()) {
        (None, None) => Config::incluster().map_err(|e| {
            KubeError::Client(format!(
                "in-cluster config ({e}); outside a Pod give --kubeconfig-file or --kube-api-url"
            ))
        })?,
        (None, Some(u)) => Config::new(u),
        (Some(path), _) => {
            let bad = |e: &dyn std::fmt::Display| {
                KubeError::Client(format!("--kubeconfig-file {}: {e}", path.display()))
            };
            let kc = Kubeconfig::read_from(path).map_err(|e| bad(&e))?;
            Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default())
                .await
                .map_err(|e| bad(&e))?
        }
    };
    if let Some(u) = url {
        cfg.cluster_url = u;
    }
    Ok(cfg)
}

/// A client for `cfg`.
pub fn client(cfg: Config) -> Result<Client, KubeError> {
    Client::try_from(cfg).map_err(|e| KubeError::Client(format!("cannot build the client: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn from(vars: &[(&str, &str)]) -> Result<NodeIdentity, KubeError> {
        NodeIdentity::from_vars(|k| {
            vars.iter()
                .find(|(n, _)| *n == k)
                .map(|(_, v)| v.to_string())
        })
    }

    #[test]
    fn identity_follows_flanneld() {
        assert_eq!(
            from(&[("NODE_NAME", "n1"), ("POD_NAME", "p")]).unwrap(),
            NodeIdentity::Node("n1".into())
        );
        assert_eq!(
            from(&[("POD_NAME", "p"), ("POD_NAMESPACE", "kube-flannel")]).unwrap(),
            NodeIdentity::Pod {
                namespace: "kube-flannel".into(),
                name: "p".into()
            }
        );
        let e = from(&[("POD_NAME", "p"), ("NODE_NAME", "")]).unwrap_err();
        let msg = e.to_string();
        assert!(
            msg.contains("NODE_NAME") && msg.contains("POD_NAMESPACE"),
            "{msg}"
        );
    }
}
