//! Nodes in the test API server: created, changed and read back the way a
//! kubelet, kube-controller-manager or an operator would.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use k8s_openapi::api::core::v1::Node;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use kube::Client;
use serde_json::{json, Value};

pub const PREFIX: &str = "flannel.alpha.coreos.com/";

/// The annotations a flannel vxlan node carries (flannel's exact JSON).
pub fn flannel_vxlan(public_ip: &str, mac: &str) -> Vec<(String, String)> {
    [
        ("kube-subnet-manager", "true".to_string()),
        ("backend-type", "vxlan".to_string()),
        ("backend-data", format!(r#"{{"VNI":1,"VtepMAC":"{mac}"}}"#)),
        ("public-ip", public_ip.to_string()),
    ]
    .into_iter()
    .map(|(k, v)| (format!("{PREFIX}{k}"), v))
    .collect()
}

/// A Node named `name`, with `pod_cidr` (none = unassigned) and
/// `annotations`, as the kubelet registers it (plus flannel's keys).
pub fn node_json(name: &str, pod_cidr: Option<&str>, annotations: &[(String, String)]) -> Value {
    let ann: serde_json::Map<String, Value> = annotations
        .iter()
        .map(|(k, v)| (k.clone(), Value::String(v.clone())))
        .collect();
    let mut spec = json!({});
    if let Some(c) = pod_cidr {
        spec = json!({"podCIDR": c, "podCIDRs": [c]});
    }
    json!({
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {"name": name, "annotations": ann, "labels": {"kubernetes.io/hostname": name}},
        "spec": spec,
    })
}

pub async fn create(c: &Client, name: &str, pod_cidr: Option<&str>, ann: &[(String, String)]) {
    let api: Api<Node> = Api::all(c.clone());
    let node: Node = serde_json::from_value(node_json(name, pod_cidr, ann)).unwrap();
    api.create(&PostParams::default(), &node)
        .await
        .unwrap_or_else(|e| panic!("create node {name}: {e}"));
}

pub async fn delete(c: &Client, name: &str) {
    let api: Api<Node> = Api::all(c.clone());
    api.delete(name, &DeleteParams::default())
        .await
        .unwrap_or_else(|e| panic!("delete node {name}: {e}"));
}

/// Assigns a pod CIDR, as kube-controller-manager's IPAM does (the API
/// allows this once, from empty).
pub async fn assign_pod_cidr(c: &Client, name: &str, cidr: &str) {
    let api: Api<Node> = Api::all(c.clone());
    let body = json!({"spec": {"podCIDR": cidr, "podCIDRs": [cidr]}});
    api.patch(name, &PatchParams::default(), &Patch::Merge(body))
        .await
        .unwrap_or_else(|e| panic!("assign pod CIDR to {name}: {e}"));
}

/// Sets (Some) or removes (None) annotations, as `kubectl annotate` does.
pub async fn annotate(c: &Client, name: &str, changes: &[(String, Option<String>)]) {
    let api: Api<Node> = Api::all(c.clone());
    let map: serde_json::Map<String, Value> = changes
        .iter()
        .map(|(k, v)| (k.clone(), v.clone().map_or(Value::Null, Value::String)))
        .collect();
    let body = json!({"metadata": {"annotations": map}});
    api.patch(name, &PatchParams::default(), &Patch::Merge(body))
        .await
        .unwrap_or_else(|e| panic!("annotate {name}: {e}"));
}

/// The kubelet's status write: Ready=True and another condition, as a
/// strategic merge patch on nodes/status.
pub async fn kubelet_ready(c: &Client, name: &str) {
    let api: Api<Node> = Api::all(c.clone());
    let now = "2026-01-01T00:00:00Z";
    let cond = |t: &str, s: &str, r: &str| {
        json!({"type": t, "status": s, "reason": r, "message": format!("kubelet says {r}"),
               "lastHeartbeatTime": now, "lastTransitionTime": now})
    };
    let body = json!({"status": {"conditions": [
        cond("Ready", "True", "KubeletReady"),
        cond("MemoryPressure", "False", "KubeletHasSufficientMemory"),
    ]}});
    api.patch_status(name, &PatchParams::default(), &Patch::Strategic(body))
        .await
        .unwrap_or_else(|e| panic!("kubelet status of {name}: {e}"));
}

/// The Node as the API server serves it, as raw JSON (what kubectl
/// get -o json shows), to compare bytes, not decoded types.
pub async fn raw(c: &Client, name: &str) -> Value {
    let req = http::Request::get(format!("/api/v1/nodes/{name}"))
        .body(Vec::new())
        .unwrap();
    let text = c.request_text(req).await.unwrap();
    serde_json::from_str(&text).unwrap()
}

/// The Node's annotations under flannel's prefix, raw strings.
pub async fn flannel_annotations(c: &Client, name: &str) -> Vec<(String, String)> {
    let n = raw(c, name).await;
    let mut out: Vec<(String, String)> = n["metadata"]["annotations"]
        .as_object()
        .map(|m| {
            m.iter()
                .filter(|(k, _)| k.starts_with(PREFIX))
                .map(|(k, v)| (k.clone(), v.as_str().unwrap().to_string()))
                .collect()
        })
        .unwrap_or_default();
    out.sort();
    out
}

/// The Node's conditions by type.
pub async fn conditions(c: &Client, name: &str) -> std::collections::BTreeMap<String, Value> {
    let n = raw(c, name).await;
    n["status"]["conditions"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|c| (c["type"].as_str().unwrap().to_string(), c.clone()))
        .collect()
}
