//! The etcd overlays configure overlayd through FLANNELD_* variables (from
//! a ConfigMap and literal env); overlayd's parser must take each of them.
//! One test in its own binary: it sets the process environment.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use clap::Parser;
use felt_deploy::{tools, variants};
use overlayd::cli::{go_style_args, Flags};
use std::path::PathBuf;

#[test]
fn etcd_overlays_environment_parses_with_overlayds_flags() {
    let tls = variants()
        .into_iter()
        .find(|v| v.name == "etcd-tls")
        .unwrap();
    let m = tools::kustomize(&tls.dir).unwrap();
    let container = m.container("overlayd").unwrap();
    let from = &container["envFrom"][0]["configMapRef"]["name"];
    let cm = m.get("ConfigMap", from.as_str().unwrap()).unwrap();
    let mut vars: Vec<(String, String)> = cm["data"]
        .as_object()
        .unwrap()
        .iter()
        .map(|(k, v)| (k.clone(), v.as_str().unwrap().to_string()))
        .collect();
    for e in container["env"].as_array().unwrap() {
        if let Some(value) = e["value"].as_str() {
            vars.push((e["name"].as_str().unwrap().into(), value.into()));
        }
    }
    assert!(
        vars.iter().all(|(k, _)| k.starts_with("FLANNELD_")),
        "{vars:?}"
    );
    for (k, v) in &vars {
        std::env::set_var(k, v);
    }
    let argv = m.argv("overlayd").unwrap();
    let f = Flags::try_parse_from(go_style_args(argv)).unwrap();
    assert!(!f.kube_subnet_mgr);
    let get = |k: &str| {
        vars.iter()
            .find(|(n, _)| n == k)
            .map(|(_, v)| v.clone())
            .unwrap()
    };
    assert_eq!(f.etcd_endpoints, get("FLANNELD_ETCD_ENDPOINTS"));
    assert_eq!(f.etcd_prefix, get("FLANNELD_ETCD_PREFIX"));
    let files = [&f.etcd_cafile, &f.etcd_certfile, &f.etcd_keyfile];
    let mount = PathBuf::from("/etc/felt/etcd-tls");
    for file in files {
        let file = file.as_ref().expect("TLS file flag from the environment");
        assert_eq!(
            file.parent(),
            Some(mount.as_path()),
            "{file:?} outside the Secret's mount"
        );
    }
    let secret = m
        .mounts("overlayd")
        .unwrap()
        .into_iter()
        .find(|(p, _)| p == &mount);
    assert_eq!(
        secret.map(|(_, b)| b),
        Some(felt_deploy::manifest::Backing::Secret(
            "felt-etcd-tls".into()
        ))
    );
}
