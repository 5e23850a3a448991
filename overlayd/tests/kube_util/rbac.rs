//! RBAC on the test API server: ClusterRoles bound to the test users, and
//! a wait until the authorizer applies them (its caches fill from watches,
//! so a fresh binding takes a moment to count).
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use k8s_openapi::api::authorization::v1::SubjectAccessReview;
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding};
use kube::api::{Api, PostParams};
use kube::Client;
use serde_json::json;
use std::time::Duration;

/// One rule: a verb on a core-group resource ("nodes/status" = the
/// subresource).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rule {
    pub resource: &'static str,
    pub verb: &'static str,
}

/// What felt's Kubernetes lease store needs, and nothing more (the same as
/// kube-flannel.yml's ClusterRole): pods get only resolves the node name
/// from POD_NAME/POD_NAMESPACE.
pub const FELT_RULES: &[Rule] = &[
    Rule {
        resource: "pods",
        verb: "get",
    },
    Rule {
        resource: "nodes",
        verb: "get",
    },
    Rule {
        resource: "nodes",
        verb: "list",
    },
    Rule {
        resource: "nodes",
        verb: "watch",
    },
    Rule {
        resource: "nodes/status",
        verb: "patch",
    },
];

/// ClusterRole `name` with `rules`, bound to `user`.
pub async fn grant(admin: &Client, name: &str, user: &str, rules: &[Rule]) {
    let rules: Vec<_> = rules
        .iter()
        .map(|r| json!({"apiGroups": [""], "resources": [r.resource], "verbs": [r.verb]}))
        .collect();
    let role: ClusterRole = serde_json::from_value(json!({
        "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole",
        "metadata": {"name": name}, "rules": rules,
    }))
    .unwrap();
    Api::<ClusterRole>::all(admin.clone())
        .create(&PostParams::default(), &role)
        .await
        .unwrap();
    let binding: ClusterRoleBinding = serde_json::from_value(json!({
        "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding",
        "metadata": {"name": name},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": name},
        "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": user}],
    }))
    .unwrap();
    Api::<ClusterRoleBinding>::all(admin.clone())
        .create(&PostParams::default(), &binding)
        .await
        .unwrap();
}

/// Whether the authorizer allows `user` to `rule` now.
pub async fn allowed(admin: &Client, user: &str, rule: Rule) -> bool {
    let (resource, sub) = rule
        .resource
        .split_once('/')
        .map_or((rule.resource, ""), |(r, s)| (r, s));
    let review: SubjectAccessReview = serde_json::from_value(json!({
        "apiVersion": "authorization.k8s.io/v1", "kind": "SubjectAccessReview",
        "spec": {"user": user, "resourceAttributes": {
            "group": "", "resource": resource, "subresource": sub, "verb": rule.verb}},
    }))
    .unwrap();
    let r = Api::<SubjectAccessReview>::all(admin.clone())
        .create(&PostParams::default(), &review)
        .await
        .unwrap();
    r.status.is_some_and(|s| s.allowed)
}

/// Waits until every rule in `rules` is in force for `user`.
pub async fn until_allowed(admin: &Client, user: &str, rules: &[Rule]) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    for &rule in rules {
        while !allowed(admin, user, rule).await {
            assert!(
                tokio::time::Instant::now() < deadline,
                "{user} never got {rule:?}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}
