//! deploy/ offline: every manifest and overlay renders with kubectl 1.20's
//! kustomize, parses, validates against the v1.20 OpenAPI schema, names
//! the image build.sh makes, and carries exactly the RBAC felt needs.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use felt_deploy::repo::{self, image_ref, NAMESPACE};
use felt_deploy::{tools, variants, Manifest};
use serde_json::{json, Value};
use std::collections::BTreeSet;
use std::process::Command;

#[test]
fn every_overlay_directory_is_a_tested_variant() {
    let on_disk: BTreeSet<String> = std::fs::read_dir(repo::deploy_dir().join("overlays"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    let listed: BTreeSet<String> = variants()
        .iter()
        .filter(|v| v.name != "deploy")
        .map(|v| v.name.to_string())
        .collect();
    assert_eq!(
        on_disk, listed,
        "deploy/overlays and felt_deploy::variants() differ"
    );
}

#[test]
fn felt_yaml_and_kustomize_render_the_same_objects() {
    let file = Manifest::read(&repo::deploy_dir().join("felt.yaml")).unwrap();
    let rendered = tools::kustomize(&repo::deploy_dir()).unwrap();
    // kustomize reorders keys and drops comments: compare values, as sets
    let set = |m: &Manifest| -> BTreeSet<String> { m.docs.iter().map(Value::to_string).collect() };
    assert_eq!(set(&file), set(&rendered));
    let kinds: Vec<&str> = file
        .docs
        .iter()
        .map(|d| d["kind"].as_str().unwrap())
        .collect();
    assert_eq!(
        kinds,
        [
            "Namespace",
            "ServiceAccount",
            "ClusterRole",
            "ClusterRoleBinding",
            "ConfigMap",
            "DaemonSet"
        ]
    );
}

#[test]
fn every_variant_renders_into_felts_objects() {
    for v in variants() {
        let m = tools::kustomize(&v.dir).unwrap_or_else(|e| panic!("{}: {e}", v.name));
        for (kind, ns, _) in m.identities() {
            let cluster_scoped =
                ["Namespace", "ClusterRole", "ClusterRoleBinding"].contains(&kind.as_str());
            assert_eq!(
                ns.is_empty(),
                cluster_scoped,
                "{}: {kind} namespace {ns:?}",
                v.name
            );
            assert!(
                cluster_scoped || ns == NAMESPACE,
                "{}: {kind} in {ns}",
                v.name
            );
        }
        let ds = m.daemonset().unwrap();
        assert_eq!(
            ds["spec"]["template"]["spec"]["hostNetwork"], true,
            "{}",
            v.name
        );
        for (image, policy) in m.images().unwrap() {
            assert_eq!(
                (image.as_str(), policy.as_str()),
                (image_ref().as_str(), "IfNotPresent"),
                "{}",
                v.name
            );
        }
    }
}

/// kubernetes-validate --strict (unknown fields are errors) of `yaml`
/// against the schema of Kubernetes `k8s`: whether it passed, and what it said.
fn validate(yaml: &str, tag: &str, k8s: &str) -> (bool, String) {
    let file = std::env::temp_dir().join(format!(
        "felt-deploy-validate-{tag}-{}.yaml",
        std::process::id()
    ));
    std::fs::write(&file, yaml).unwrap();
    let out = Command::new(tools::validator().unwrap())
        .args(["--strict", "-k", k8s])
        .arg(&file)
        .output()
        .unwrap();
    std::fs::remove_file(&file).unwrap();
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), said)
}

/// Against the schemas of 1.20, what the test servers run, and of 1.28,
/// the validator's newest.
#[test]
fn every_variant_validates_against_the_openapi_schema() {
    for v in variants() {
        let yaml = tools::render(&v.dir).unwrap();
        for k8s in ["1.20.0", "1.28.0"] {
            let (ok, said) = validate(&yaml, v.name, k8s);
            assert!(ok, "{} against {k8s}: {said}", v.name);
        }
    }
}

/// The schema check is not a formality: a misspelt field fails it.
#[test]
fn the_schema_check_rejects_an_unknown_field() {
    let yaml = std::fs::read_to_string(repo::deploy_dir().join("felt.yaml"))
        .unwrap()
        .replace(
            "hostNetwork: true",
            "hostNetwork: true\n      hostNetworking: true",
        );
    let (ok, said) = validate(&yaml, "bad", "1.20.0");
    assert!(!ok, "a bogus field passed: {said}");
    assert!(said.contains("hostNetworking"), "{said}");
}

/// nodes get/list/watch and nodes/status patch, nothing else: no pods get,
/// since NODE_NAME comes from the downward API.
#[test]
fn cluster_role_is_exactly_what_felt_needs() {
    let text = std::fs::read_to_string(repo::deploy_dir().join("felt.yaml")).unwrap();
    let begin = text
        .find("# ==== ClusterRole felt: BEGIN")
        .expect("BEGIN marker");
    let end = text
        .find("# ==== ClusterRole felt: END ====")
        .expect("END marker");
    let delimited = Manifest::parse("the delimited ClusterRole", &text[begin..end]).unwrap();
    assert_eq!(
        delimited.identities(),
        [("ClusterRole".into(), String::new(), "felt".into())]
    );
    let role = &delimited.docs[0];
    assert_eq!(
        role["rules"],
        json!([
            {"apiGroups": [""], "resources": ["nodes"], "verbs": ["get", "list", "watch"]},
            {"apiGroups": [""], "resources": ["nodes/status"], "verbs": ["patch"]}
        ])
    );
    for v in variants() {
        let m = tools::kustomize(&v.dir).unwrap();
        assert_eq!(m.get("ClusterRole", "felt").unwrap(), role, "{}", v.name);
        let binding = m.get("ClusterRoleBinding", "felt").unwrap();
        assert_eq!(binding["roleRef"]["name"], "felt");
        assert_eq!(
            binding["subjects"],
            json!([{"kind": "ServiceAccount", "name": "felt", "namespace": NAMESPACE}])
        );
        let spec = &m.daemonset().unwrap()["spec"]["template"]["spec"];
        assert_eq!(spec["serviceAccountName"], "felt");
        let env = &m.container("overlayd").unwrap()["env"];
        let node_name = env
            .as_array()
            .unwrap()
            .iter()
            .find(|e| e["name"] == "NODE_NAME");
        assert_eq!(
            node_name.map(|e| &e["valueFrom"]["fieldRef"]["fieldPath"]),
            Some(&json!("spec.nodeName")),
            "{}: NODE_NAME is what makes pods get unnecessary",
            v.name
        );
    }
}

/// The kind cluster's pod subnet is the base's Network.
#[test]
fn kind_pod_subnet_matches_net_conf() {
    // not a Kubernetes object (no metadata): plain YAML
    let text =
        std::fs::read_to_string(repo::root().join("conformance/kind/kind-config.yaml")).unwrap();
    let cfg: Value = serde_yaml::from_str(&text).unwrap();
    let base = tools::kustomize(&repo::deploy_dir()).unwrap();
    let net: Value = serde_json::from_str(&base.config_data("net-conf.json").unwrap()).unwrap();
    assert_eq!(cfg["networking"]["podSubnet"], net["Network"]);
    assert_eq!(cfg["networking"]["disableDefaultCNI"], true);
    assert_eq!(cfg["nodes"].as_array().unwrap().len(), 3);
}
