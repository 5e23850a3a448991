//! One Node -> what felt makes of it: a peer lease, a reason to skip it,
//! or nothing (not a flannel node). Pure functions, so the watch keeps
//! only these small views, never the Node objects.

use super::annotations::Annotations;
use crate::lease::{BackendData, Lease, LeaseAttrs, Term};
use ipnet::{IpNet, Ipv4Net};
use k8s_openapi::api::core::v1::Node;
use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::sync::Arc;

/// What one Node contributes to the lease snapshot.
#[derive(Debug, Clone, PartialEq)]
pub enum NodeView {
    /// Not annotated `kube-subnet-manager: "true"`: not ours to route.
    Ignored,
    /// Annotated, but not a usable lease; the reason says why.
    Malformed(String),
    Lease(Arc<Lease>),
}

/// The IPv4 pod CIDR of a Node: spec.podCIDRs when set (at most two, one
/// per family, in either order: flannel#1629), else spec.podCIDR.
/// `Ok(None)` when none is assigned yet.
pub fn pod_cidr_v4(node: &Node) -> Result<Option<Ipv4Net>, String> {
    let spec = node.spec.as_ref();
    let list: Vec<&str> = match spec.and_then(|s| s.pod_cidrs.as_ref()) {
        Some(l) if !l.is_empty() => l.iter().map(String::as_str).collect(),
        _ => spec
            .and_then(|s| s.pod_cidr.as_deref())
            .filter(|s| !s.is_empty())
            .into_iter()
            .collect(),
    };
    if list.is_empty() {
        return Ok(None);
    }
    if list.len() > 2 {
        return Err(format!(
            "spec.podCIDRs has {} entries ({}); at most one IPv4 and one IPv6 are allowed",
            list.len(),
            list.join(", ")
        ));
    }
    let mut v4 = None;
    for s in &list {
        match s.parse::<IpNet>() {
            Ok(IpNet::V4(n)) => v4 = Some(n.trunc()),
            Ok(IpNet::V6(_)) => {}
            Err(_) => return Err(format!("pod CIDR {s:?} is not a CIDR")),
        }
    }
    match v4 {
        Some(n) => Ok(Some(n)),
        None => Err(format!(
            "no IPv4 pod CIDR in {} (felt routes IPv4 only for now)",
            list.join(", ")
        )),
    }
}

/// The Node's annotations under our prefix.
pub fn our_annotations(ann: &Annotations, node: &Node) -> BTreeMap<String, String> {
    node.metadata
        .annotations
        .iter()
        .flatten()
        .filter(|(k, _)| ann.owns(k))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect()
}

/// Derives the view of one Node, following flannel's nodeToLease: the
/// subnet from the pod CIDR, PublicIP from `public-ip`, BackendType and
/// BackendData from their annotations. A Node lease never expires by
/// itself: it lives as long as the Node ([`Term::Expiring`] without a time).
pub fn derive(ann: &Annotations, node: &Node) -> NodeView {
    let a = node.metadata.annotations.as_ref();
    let get = |k: String| a.and_then(|m| m.get(&k)).map(String::as_str);
    if get(ann.subnet_manager()) != Some("true") {
        return NodeView::Ignored;
    }
    match lease_of(ann, node, &get) {
        Ok(l) => NodeView::Lease(Arc::new(l)),
        Err(why) => NodeView::Malformed(why),
    }
}

fn lease_of<'a>(
    ann: &Annotations,
    node: &Node,
    get: &impl Fn(String) -> Option<&'a str>,
) -> Result<Lease, String> {
    let subnet = pod_cidr_v4(node)?.ok_or("no pod CIDR assigned (spec.podCIDR is empty)")?;
    let ip_key = ann.public_ip();
    let public_ip: Ipv4Addr = match get(ip_key.clone()) {
        None => return Err(format!("annotation {ip_key} is missing")),
        Some(s) => s
            .parse()
            .map_err(|_| format!("annotation {ip_key}={s:?} is not an IPv4 address"))?,
    };
    let data_key = ann.backend_data();
    let backend_data = match get(data_key.clone()).map(str::trim) {
        None | Some("") => BackendData::NULL,
        Some(s) => serde_json::from_str::<serde_json::Value>(s)
            .map_err(|e| format!("annotation {data_key} is not JSON ({e}): {s:?}"))?
            .into(),
    };
    Ok(Lease {
        subnet,
        ipv6_subnet: None,
        attrs: LeaseAttrs {
            public_ip,
            public_ipv6: None,
            backend_type: get(ann.backend_type()).unwrap_or_default().to_string(),
            backend_data,
            backend_v6_data: None,
        },
        term: Term::Expiring(None),
    })
}

/// Shrinks a watched Node to what [`derive`] and the own-node checks
/// read: name, uid, resourceVersion, our annotations, the pod CIDRs.
/// Everything else (managedFields, labels, status with its image list,
/// taints, ...) is dropped at once, so a relist of thousands of Nodes
/// does not hold their full objects.
pub fn trim(ann: &Annotations, node: &mut Node) {
    let m = &mut node.metadata;
    m.managed_fields = None;
    m.labels = None;
    m.owner_references = None;
    m.finalizers = None;
    if let Some(a) = m.annotations.as_mut() {
        a.retain(|k, _| ann.owns(k));
    }
    node.status = None;
    if let Some(s) = node.spec.as_mut() {
        s.taints = None;
        s.config_source = None;
        s.provider_id = None;
        s.external_id = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::NodeSpec;
    use serde_json::json;

    fn ann() -> Annotations {
        Annotations::new("flannel.alpha.coreos.com").unwrap()
    }

    pub(crate) fn node(cidrs: &[&str], annotations: &[(&str, &str)]) -> Node {
        let mut n = Node::default();
        n.metadata.name = Some("n1".into());
        n.metadata.annotations = Some(
            annotations
                .iter()
                .map(|(k, v)| (format!("flannel.alpha.coreos.com/{k}"), v.to_string()))
                .collect(),
        );
        n.spec = Some(NodeSpec {
            pod_cidr: cidrs.first().map(|s| s.to_string()),
            pod_cidrs: Some(cidrs.iter().map(|s| s.to_string()).collect()),
            ..Default::default()
        });
        n
    }

    const FLANNEL: &[(&str, &str)] = &[
        ("kube-subnet-manager", "true"),
        ("backend-type", "vxlan"),
        ("backend-data", r#"{"VNI":1,"VtepMAC":"c6:d2:32:6f:8f:44"}"#),
        ("public-ip", "192.168.64.3"),
    ];

    #[test]
    fn flannel_annotated_node_is_a_lease() {
        let NodeView::Lease(l) = derive(&ann(), &node(&["10.244.1.0/24"], FLANNEL)) else {
            panic!("not a lease")
        };
        assert_eq!(l.subnet, "10.244.1.0/24".parse::<Ipv4Net>().unwrap());
        assert_eq!(l.attrs.public_ip, Ipv4Addr::new(192, 168, 64, 3));
        assert_eq!(l.attrs.backend_type, "vxlan");
        assert_eq!(
            l.attrs.backend_data,
            json!({"VNI":1,"VtepMAC":"c6:d2:32:6f:8f:44"}).into()
        );
        assert_eq!(l.term, Term::Expiring(None));
    }

    #[test]
    fn unmanaged_and_broken_nodes() {
        let a = ann();
        assert_eq!(
            derive(&a, &node(&["10.244.1.0/24"], &[])),
            NodeView::Ignored
        );
        let mut n = node(&["10.244.1.0/24"], FLANNEL);
        n.metadata.annotations = None; // flannel#818: no annotations map
        assert_eq!(derive(&a, &n), NodeView::Ignored);
        let mut bad_ip = FLANNEL.to_vec();
        bad_ip[3] = ("public-ip", "300.1.1.1");
        let NodeView::Malformed(why) = derive(&a, &node(&["10.244.1.0/24"], &bad_ip)) else {
            panic!()
        };
        assert!(
            why.contains("public-ip") && why.contains("300.1.1.1"),
            "{why}"
        );
        let mut bad_data = FLANNEL.to_vec();
        bad_data[2] = ("backend-data", "{nope");
        let NodeView::Malformed(why) = derive(&a, &node(&["10.244.1.0/24"], &bad_data)) else {
            panic!()
        };
        assert!(why.contains("backend-data"), "{why}");
        let NodeView::Malformed(why) = derive(&a, &node(&[], FLANNEL)) else {
            panic!()
        };
        assert!(why.contains("no pod CIDR"), "{why}");
    }

    #[test]
    fn pod_cidrs_ipv6_first_and_limits() {
        let v4 = |c: &[&str]| pod_cidr_v4(&node(c, &[]));
        let want: Ipv4Net = "10.244.1.0/24".parse().unwrap();
        assert_eq!(v4(&["fd00:1::/64", "10.244.1.0/24"]), Ok(Some(want)));
        assert_eq!(v4(&["10.244.1.0/24", "fd00:1::/64"]), Ok(Some(want)));
        assert_eq!(v4(&[]), Ok(None));
        assert!(v4(&["fd00:1::/64"]).unwrap_err().contains("IPv4"));
        assert!(v4(&["10.0.0.0/24", "fd00::/64", "10.1.0.0/24"]).is_err());
        assert!(v4(&["banana"]).is_err());
        // Only spec.podCIDR (clusters before dual-stack fields).
        let mut n = node(&[], &[]);
        n.spec.as_mut().unwrap().pod_cidr = Some("10.244.1.0/24".into());
        assert_eq!(pod_cidr_v4(&n), Ok(Some(want)));
    }

    #[test]
    fn trim_keeps_what_derive_reads() {
        let a = ann();
        let mut n = node(&["10.244.1.0/24"], FLANNEL);
        let before = derive(&a, &n);
        n.metadata
            .annotations
            .as_mut()
            .unwrap()
            .insert("node.alpha.kubernetes.io/ttl".into(), "0".into());
        n.status = Some(Default::default());
        trim(&a, &mut n);
        assert_eq!(n.metadata.annotations.as_ref().unwrap().len(), 4);
        assert!(n.status.is_none());
        assert_eq!(derive(&a, &n), before);
    }
}
