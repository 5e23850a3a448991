//! deploy/ against a real kube-apiserver v1.20.2 (RBAC on): every variant
//! passes `kubectl apply --dry-run=server` (admission, defaulting and
//! validation of the real server), the RBAC objects grant felt's service
//! account exactly its rules, and the migration patch applies to a
//! flannel-shaped DaemonSet.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use felt_deploy::apiserver::ApiServer;
use felt_deploy::repo::{self, NAMESPACE};
use felt_deploy::{tools, variants};

#[test]
fn server_side_dry_run_accepts_every_variant_and_rbac_is_exact() {
    felt_common::testutil::require_root();
    let api = ApiServer::start().unwrap();
    // A dry run creates nothing, so the namespaced objects need the
    // namespace for real first.
    api.kubectl(&["create", "namespace", NAMESPACE], None)
        .unwrap();
    for v in variants() {
        let out = api
            .kubectl(
                &["apply", "--dry-run=server", "-f", "-"],
                Some(&tools::render(&v.dir).unwrap()),
            )
            .unwrap_or_else(|e| panic!("{}: {e}", v.name));
        assert!(
            out.contains("daemonset.apps/felt created (server dry run)"),
            "{}: {out}",
            v.name
        );
    }
    let file = repo::deploy_dir().join("felt.yaml");
    api.kubectl(&["apply", "-f", &file.display().to_string()], None)
        .unwrap();
    let sa = format!("system:serviceaccount:{NAMESPACE}:felt");
    let can = |verb: &str, resource: &str| -> bool {
        // "nodes/status" means resource nodes, subresource status (on the
        // command line it would read as the node named "status")
        let (res, sub) = resource.split_once('/').unwrap_or((resource, ""));
        let sub = format!("--subresource={sub}");
        // `auth can-i` exits 1 for "no"
        match api.kubectl(&["auth", "can-i", "--as", &sa, verb, res, &sub], None) {
            Ok(out) => out.trim() == "yes",
            Err(e) => {
                assert!(e.to_string().contains("no"), "{e}");
                false
            }
        }
    };
    for (verb, resource) in [
        ("get", "nodes"),
        ("list", "nodes"),
        ("watch", "nodes"),
        ("patch", "nodes/status"),
    ] {
        assert!(can(verb, resource), "{sa} cannot {verb} {resource}");
    }
    for (verb, resource) in [
        ("get", "pods"),
        ("update", "nodes"),
        ("patch", "nodes"),
        ("delete", "nodes"),
        ("get", "nodes/status"),
        ("update", "nodes/status"),
        ("get", "secrets"),
        ("list", "configmaps"),
    ] {
        assert!(
            !can(verb, resource),
            "{sa} may {verb} {resource}: more than felt needs"
        );
    }
}

/// flannel-daemonset-patch.yaml keeps flannel off felt's nodes: applied to
/// a DaemonSet shaped like kube-flannel.yml's (name, namespace, affinity).
#[test]
fn migration_patch_applies_to_flannels_daemonset() {
    felt_common::testutil::require_root();
    let api = ApiServer::start().unwrap();
    api.kubectl(&["create", "namespace", "kube-flannel"], None)
        .unwrap();
    let flannel = r#"{"apiVersion":"apps/v1","kind":"DaemonSet",
      "metadata":{"name":"kube-flannel-ds","namespace":"kube-flannel"},
      "spec":{"selector":{"matchLabels":{"app":"flannel"}},"template":{
        "metadata":{"labels":{"app":"flannel"}},
        "spec":{"affinity":{"nodeAffinity":{"requiredDuringSchedulingIgnoredDuringExecution":{
          "nodeSelectorTerms":[{"matchExpressions":[{"key":"kubernetes.io/os","operator":"In","values":["linux"]}]}]}}},
          "hostNetwork":true,"containers":[{"name":"kube-flannel","image":"docker.io/flannel/flannel:v0.28.0"}]}}}}"#;
    api.kubectl(&["apply", "-f", "-"], Some(flannel)).unwrap();
    let patch = std::fs::read_to_string(
        repo::deploy_dir().join("overlays/migration/flannel-daemonset-patch.yaml"),
    )
    .unwrap();
    let out = api
        .kubectl(
            &[
                "-n",
                "kube-flannel",
                "patch",
                "daemonset",
                "kube-flannel-ds",
                "--type",
                "strategic",
                "-p",
                &patch,
                "-o",
                "json",
            ],
            None,
        )
        .unwrap();
    let ds: serde_json::Value = serde_json::from_str(&out).unwrap();
    let terms = &ds["spec"]["template"]["spec"]["affinity"]["nodeAffinity"]
        ["requiredDuringSchedulingIgnoredDuringExecution"]["nodeSelectorTerms"];
    assert_eq!(
        terms[0]["matchExpressions"][1],
        serde_json::json!({"key": "felt/enabled", "operator": "NotIn", "values": ["true"]})
    );
    assert_eq!(terms[0]["matchExpressions"][0]["key"], "kubernetes.io/os");
}
