//! The Kubernetes lease store under RBAC (real v1.20.2 API server with
//! --authorization-mode=RBAC): with exactly [`FELT_RULES`] everything
//! works; without any one of them the store fails, and its error names the
//! verb and the resource the API refused.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod etcd_util;
mod kube_util;
mod lease_util;

use k8s_openapi::api::core::v1::{Pod, ServiceAccount};
use kube::api::{Api, PostParams};
use kube::Client;
use kube_util::nodes::{self, flannel_vxlan};
use kube_util::rbac::{self, Rule, FELT_RULES};
use kube_util::store::{options, watch, PATIENCE, VXLAN16};
use kube_util::{ApiOptions, KubeApi};
use lease_util::req;
use overlayd::lease::kube::{KubeStore, NodeIdentity};
use overlayd::lease::{LeaseSnapshot, LeaseStore};
use overlayd::metrics::Metrics;
use serde::Deserialize;
use serde_json::json;
use std::sync::Arc;

/// Everything the daemon does with the API, as user `i` on node
/// `self-<i>` identified by its Pod: resolve the node name, acquire, see
/// the own lease listed and a new peer arrive on the watch, set the
/// condition, renew. The first failure's message, if any.
async fn scenario(api: &KubeApi, admin: &Client, i: usize) -> Result<(), String> {
    scenario_as(api, admin, i, true).await
}

/// [`scenario`], the node named through its Pod (`by_pod`: POD_NAME and
/// POD_NAMESPACE, as kube-flannel.yml does) or straight (NODE_NAME, as
/// deploy/'s DaemonSet does).
async fn scenario_as(api: &KubeApi, admin: &Client, i: usize, by_pod: bool) -> Result<(), String> {
    let me = format!("self-{i}");
    nodes::create(admin, &me, Some(&format!("10.5.{}.0/24", 10 + i)), &[]).await;
    let pod = format!("felt-{i}");
    create_pod(admin, &pod, &me).await;
    let (token, _) = kube_util::user(i);
    let identity = if by_pod {
        NodeIdentity::Pod {
            namespace: "kube-system".into(),
            name: pod,
        }
    } else {
        NodeIdentity::Node(me.clone())
    };
    let opts = options(api, identity, &token, VXLAN16);
    let store = KubeStore::connect(&opts, Arc::new(Metrics::new()))
        .await
        .map_err(|e| e.to_string())?;
    assert_eq!(store.node_name(), me);
    let store = Arc::new(store);
    let lease = store
        .acquire(&req([10, 0, 1, i as u8], "aa:aa:aa:aa:aa:01", None))
        .await
        .map_err(|e| e.to_string())?;
    let mut rx = watch(&store);
    let mut errors = store.watch_errors();
    let mine = lease.subnet;
    seen_or_error(&mut rx, &mut errors, |s| s.contains_key(&mine)).await?;
    // Only the watch (not the listing) can show a Node created now.
    let peer = format!("peer-{i}");
    let peer_net: ipnet::Ipv4Net = format!("10.5.{}.0/24", 100 + i).parse().unwrap();
    nodes::create(
        admin,
        &peer,
        Some(&peer_net.to_string()),
        &flannel_vxlan("10.0.2.1", "aa:aa:aa:aa:aa:02"),
    )
    .await;
    seen_or_error(&mut rx, &mut errors, |s| s.contains_key(&peer_net)).await?;
    store.mark_ready(&lease).await.map_err(|e| e.to_string())?;
    store.renew(&lease).await.map_err(|e| e.to_string())?;
    Ok(())
}

/// Waits for a snapshot satisfying `pred`, or for the watch to report an
/// error (returned).
async fn seen_or_error(
    rx: &mut tokio::sync::watch::Receiver<Arc<LeaseSnapshot>>,
    errors: &mut tokio::sync::watch::Receiver<Option<String>>,
    pred: impl Fn(&LeaseSnapshot) -> bool,
) -> Result<(), String> {
    let outcome = tokio::time::timeout(PATIENCE, async {
        tokio::select! {
            r = rx.wait_for(|s| pred(s)) => { r.unwrap(); Ok(()) }
            e = errors.wait_for(|e| e.is_some()) => Err(e.unwrap().clone().unwrap()),
        }
    })
    .await;
    outcome.unwrap_or_else(|_| panic!("neither the snapshot nor a watch error came"))
}

/// The Pod a DaemonSet would run on `node` (no token mounted: the test
/// API server runs no token controller).
async fn create_pod(admin: &Client, name: &str, node: &str) {
    let pod: Pod = serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "namespace": "kube-system"},
        "spec": {"nodeName": node, "serviceAccountName": "felt",
                 "automountServiceAccountToken": false,
                 "containers": [{"name": "felt", "image": "felt:test"}]},
    }))
    .unwrap();
    Api::<Pod>::namespaced(admin.clone(), "kube-system")
        .create(&PostParams::default(), &pod)
        .await
        .unwrap_or_else(|e| panic!("create pod {name}: {e}"));
}

async fn setup(api: &KubeApi) -> Client {
    let admin = api.admin().await;
    let sa: ServiceAccount = serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "ServiceAccount",
        "metadata": {"name": "felt", "namespace": "kube-system"},
    }))
    .unwrap();
    Api::<ServiceAccount>::namespaced(admin.clone(), "kube-system")
        .create(&PostParams::default(), &sa)
        .await
        .unwrap();
    admin
}

/// User `i` gets `rules`, in force before the scenario starts.
async fn grant(admin: &Client, i: usize, rules: &[Rule]) {
    let (_, user) = kube_util::user(i);
    rbac::grant(admin, &format!("felt-test-{i}"), &user, rules).await;
    rbac::until_allowed(admin, &user, rules).await;
}

#[test]
fn exactly_flannels_rules_are_enough() {
    let api = KubeApi::start(ApiOptions {
        rbac: true,
        tag: "krbac".into(),
    });
    api.block_on(async {
        let admin = setup(&api).await;
        grant(&admin, 0, FELT_RULES).await;
        scenario(&api, &admin, 0).await.unwrap();
        let conds = nodes::conditions(&admin, "self-0").await;
        assert_eq!(conds["NetworkUnavailable"]["reason"], "FlannelIsUp");
    });
}

#[test]
fn each_missing_rule_fails_naming_the_verb_and_resource() {
    let api = KubeApi::start(ApiOptions {
        rbac: true,
        tag: "krbac".into(),
    });
    api.block_on(async {
        let admin = setup(&api).await;
        for (i, missing) in FELT_RULES.iter().enumerate() {
            let rules: Vec<Rule> = FELT_RULES
                .iter()
                .copied()
                .filter(|r| r != missing)
                .collect();
            grant(&admin, i + 1, &rules).await;
            let err = scenario(&api, &admin, i + 1)
                .await
                .expect_err(&format!("worked without {missing:?}"));
            let phrase = format!("cannot {} resource \"{}\"", missing.verb, missing.resource);
            assert!(
                err.contains(&phrase),
                "without {missing:?} the error was: {err}"
            );
            assert!(err.contains("403"), "{err}");
            println!("without {} {}: {err}", missing.verb, missing.resource);
        }
    });
}

/// The rules of deploy/'s ClusterRole `felt`, read from the manifest
/// operators apply (so a rule added or dropped there is tested here).
fn deploy_rules() -> Vec<Rule> {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../deploy/base/felt.yaml");
    let text = std::fs::read_to_string(path).unwrap();
    let mut rules = Vec::new();
    for doc in serde_yaml::Deserializer::from_str(&text) {
        let v = serde_json::to_value(serde_yaml::Value::deserialize(doc).unwrap()).unwrap();
        if v["kind"] != "ClusterRole" {
            continue;
        }
        for r in v["rules"].as_array().unwrap() {
            assert_eq!(r["apiGroups"], json!([""]), "{r}");
            for res in r["resources"].as_array().unwrap() {
                for verb in r["verbs"].as_array().unwrap() {
                    rules.push(Rule {
                        resource: Box::leak(res.as_str().unwrap().to_string().into_boxed_str()),
                        verb: Box::leak(verb.as_str().unwrap().to_string().into_boxed_str()),
                    });
                }
            }
        }
    }
    assert!(!rules.is_empty(), "no ClusterRole in {path}");
    rules
}

/// deploy/'s ClusterRole, with the node named as its DaemonSet names it
/// (NODE_NAME): everything works; without any one of its rules it fails,
/// naming the verb and resource.
#[test]
fn deploys_cluster_role_is_exactly_enough() {
    let api = KubeApi::start(ApiOptions {
        rbac: true,
        tag: "krbacd".into(),
    });
    let rules = deploy_rules();
    api.block_on(async {
        let admin = setup(&api).await;
        grant(&admin, 0, &rules).await;
        scenario_as(&api, &admin, 0, false).await.unwrap();
        for (i, missing) in rules.iter().enumerate() {
            let fewer: Vec<Rule> = rules.iter().copied().filter(|r| r != missing).collect();
            grant(&admin, i + 1, &fewer).await;
            let err = scenario_as(&api, &admin, i + 1, false)
                .await
                .expect_err(&format!("worked without {missing:?}"));
            let phrase = format!("cannot {} resource \"{}\"", missing.verb, missing.resource);
            assert!(
                err.contains(&phrase),
                "without {missing:?} the error was: {err}"
            );
        }
    });
}
