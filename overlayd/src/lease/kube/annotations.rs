//! flannel's Node annotations: their names under `--kube-annotation-prefix`,
//! the values felt publishes, and the patch bodies, byte for byte as
//! flanneld writes them (pkg/subnet/kube: annotations.go, kube.go).

use super::KubeError;
use crate::lease::LeaseAttrs;
use serde_json::{json, Map, Value};
use std::collections::BTreeMap;
use std::net::Ipv4Addr;

/// The annotation names under one prefix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Annotations {
    /// The normalised prefix, ending in "/" or "-".
    prefix: String,
}

/// The condition felt sets once routes are in place (flannel's values).
pub const CONDITION_TYPE: &str = "NetworkUnavailable";
pub const CONDITION_REASON: &str = "FlannelIsUp";
pub const CONDITION_MESSAGE: &str = "Flannel is running on this node";

impl Annotations {
    /// flannel's rules: at most one "/"; none means "/" is appended; a
    /// prefix then ending in neither "/" nor "-" gets "-"; the result must
    /// look like `fqdn/[a-z0-9_-]*-`.
    pub fn new(prefix: &str) -> Result<Self, KubeError> {
        let bad = |why: &str| KubeError::Prefix {
            prefix: prefix.to_string(),
            why: why.to_string(),
        };
        let slashes = prefix.matches('/').count();
        if slashes > 1 {
            return Err(bad("it may contain at most one slash"));
        }
        let mut p = prefix.to_string();
        if slashes == 0 {
            p.push('/');
        }
        if !p.ends_with('/') && !p.ends_with('-') {
            p.push('-');
        }
        let shape = regex::Regex::new(r"(?:[a-z0-9_-]+\.)+[a-z0-9_-]+/(?:[a-z0-9_-]+-)?$")
            .map_err(|e| bad(&e.to_string()))?;
        if !shape.is_match(&p) {
            return Err(bad("it must look like fqdn/[0-9a-z-_]*"));
        }
        Ok(Annotations { prefix: p })
    }

    /// The full name of annotation `key` (e.g. "backend-data").
    pub fn name(&self, key: &str) -> String {
        format!("{}{key}", self.prefix)
    }

    /// Whether `name` is one of ours (kept when trimming watched Nodes).
    pub fn owns(&self, name: &str) -> bool {
        name.starts_with(&self.prefix)
    }

    pub fn subnet_manager(&self) -> String {
        self.name("kube-subnet-manager")
    }
    pub fn backend_type(&self) -> String {
        self.name("backend-type")
    }
    pub fn backend_data(&self) -> String {
        self.name("backend-data")
    }
    pub fn public_ip(&self) -> String {
        self.name("public-ip")
    }
    pub fn public_ip_overwrite(&self) -> String {
        self.name("public-ip-overwrite")
    }
    pub fn node_public_ip(&self) -> String {
        self.name("node-public-ip")
    }

    /// The public IP to publish: `public-ip-overwrite` when an operator
    /// set it, else the detected one. A garbage overwrite is refused
    /// (flannel would publish it, and every peer would then skip us).
    pub fn effective_public_ip(
        &self,
        current: &BTreeMap<String, String>,
        detected: Ipv4Addr,
    ) -> Result<Ipv4Addr, KubeError> {
        let key = self.public_ip_overwrite();
        match current
            .get(&key)
            .map(|s| s.trim())
            .filter(|s| !s.is_empty())
        {
            None => Ok(detected),
            Some(v) => v.parse().map_err(|_| KubeError::BadAnnotation {
                annotation: key,
                value: v.to_string(),
                why: "not an IPv4 address".into(),
            }),
        }
    }

    /// The annotations felt publishes for `attrs` (public IP already
    /// resolved), as flanneld writes them: backend-data is the backend's
    /// JSON (`{"VNI":1,"VtepMAC":"..."}`; `null` for host-gw), left out only
    /// for vxlan without data, as flannel does.
    pub fn desired(&self, attrs: &LeaseAttrs) -> BTreeMap<String, String> {
        let mut out = BTreeMap::new();
        out.insert(self.backend_type(), attrs.backend_type.clone());
        let skip_data = attrs.backend_type == "vxlan" && attrs.backend_data.is_null();
        if !skip_data {
            out.insert(self.backend_data(), attrs.backend_data.to_string());
            out.insert(self.public_ip(), attrs.public_ip.to_string());
        }
        out.insert(self.subnet_manager(), "true".into());
        out
    }
}

/// The entries of `want` that `current` lacks or holds differently: what
/// one patch must carry (flannel too writes only on a difference, which
/// keeps the API load flat across restarts).
pub fn changed(
    current: &BTreeMap<String, String>,
    want: &BTreeMap<String, String>,
) -> BTreeMap<String, String> {
    want.iter()
        .filter(|(k, v)| current.get(*k) != Some(*v))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect()
}

/// `{"metadata":{"annotations":{...}}}`: a strategic merge patch (maps
/// merge key by key), without a resourceVersion so it cannot conflict.
pub fn annotation_patch(changes: &BTreeMap<String, String>) -> Value {
    let map: Map<String, Value> = changes
        .iter()
        .map(|(k, v)| (k.clone(), Value::String(v.clone())))
        .collect();
    json!({ "metadata": { "annotations": map } })
}

/// The NetworkUnavailable=False condition as one strategic merge patch:
/// conditions merge by `type`, so the kubelet's Ready and the others stay
/// (a JSON merge patch would replace the whole list). `now` is RFC 3339
/// in seconds, as Go's metav1.Time marshals.
pub fn condition_patch(now: &str) -> Value {
    json!({
        "status": {
            "conditions": [{
                "type": CONDITION_TYPE,
                "status": "False",
                "reason": CONDITION_REASON,
                "message": CONDITION_MESSAGE,
                "lastTransitionTime": now,
                "lastHeartbeatTime": now,
            }]
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ann() -> Annotations {
        Annotations::new("flannel.alpha.coreos.com").unwrap()
    }

    #[test]
    fn prefix_rules_follow_flannel() {
        assert_eq!(
            ann().backend_data(),
            "flannel.alpha.coreos.com/backend-data"
        );
        let a = Annotations::new("example.com/felt").unwrap();
        assert_eq!(a.public_ip(), "example.com/felt-public-ip");
        let a = Annotations::new("example.com/felt-").unwrap();
        assert_eq!(a.public_ip(), "example.com/felt-public-ip");
        assert!(Annotations::new("a.b/c/d").is_err());
        assert!(Annotations::new("NoDots").is_err());
        assert!(Annotations::new("bad.prefix/with space").is_err());
        assert!(ann().owns("flannel.alpha.coreos.com/public-ip"));
        assert!(!ann().owns("node.alpha.kubernetes.io/ttl"));
    }

    fn attrs(kind: &str, data: Value) -> LeaseAttrs {
        LeaseAttrs {
            public_ip: Ipv4Addr::new(192, 168, 64, 3),
            public_ipv6: None,
            backend_type: kind.into(),
            backend_data: data.into(),
            backend_v6_data: None,
        }
    }

    #[test]
    fn desired_values_are_flannels_bytes() {
        let want = ann().desired(&attrs(
            "vxlan",
            json!({"VtepMAC": "c6:d2:32:6f:8f:44", "VNI": 1}),
        ));
        let p = "flannel.alpha.coreos.com/";
        let get = |k: &str| want.get(&format!("{p}{k}")).unwrap().as_str();
        assert_eq!(
            get("backend-data"),
            r#"{"VNI":1,"VtepMAC":"c6:d2:32:6f:8f:44"}"#
        );
        assert_eq!(get("backend-type"), "vxlan");
        assert_eq!(get("public-ip"), "192.168.64.3");
        assert_eq!(get("kube-subnet-manager"), "true");
        assert_eq!(want.len(), 4);
        let hostgw = ann().desired(&attrs("host-gw", Value::Null));
        assert_eq!(hostgw.get(&format!("{p}backend-data")).unwrap(), "null");
        let bare = ann().desired(&attrs("vxlan", Value::Null));
        assert_eq!(bare.len(), 2, "{bare:?}");
    }

    #[test]
    fn only_differences_are_patched() {
        let want = ann().desired(&attrs("host-gw", Value::Null));
        let mut cur = want.clone();
        assert!(changed(&cur, &want).is_empty());
        cur.insert(ann().public_ip(), "10.0.0.9".into());
        cur.insert("other/key".into(), "x".into());
        let diff = changed(&cur, &want);
        assert_eq!(diff.len(), 1);
        assert_eq!(
            annotation_patch(&diff).to_string(),
            r#"{"metadata":{"annotations":{"flannel.alpha.coreos.com/public-ip":"192.168.64.3"}}}"#
        );
    }

    #[test]
    fn overwrite_wins_and_garbage_is_refused() {
        let a = ann();
        let detected = Ipv4Addr::new(10, 0, 0, 1);
        let mut cur = BTreeMap::new();
        assert_eq!(a.effective_public_ip(&cur, detected).unwrap(), detected);
        cur.insert(a.public_ip_overwrite(), "203.0.113.7".to_string());
        assert_eq!(
            a.effective_public_ip(&cur, detected).unwrap(),
            Ipv4Addr::new(203, 0, 113, 7)
        );
        cur.insert(a.public_ip_overwrite(), "nope".to_string());
        let e = a.effective_public_ip(&cur, detected).unwrap_err();
        assert!(e.to_string().contains("public-ip-overwrite"), "{e}");
    }

    #[test]
    fn condition_patch_has_flannels_fields() {
        assert_eq!(
            condition_patch("2026-01-02T03:04:05Z").to_string(),
            r#"{"status":{"conditions":[{"lastHeartbeatTime":"2026-01-02T03:04:05Z","lastTransitionTime":"2026-01-02T03:04:05Z","message":"Flannel is running on this node","reason":"FlannelIsUp","status":"False","type":"NetworkUnavailable"}]}}"#
        );
    }
}
