//! The ConfigMap's conflist as the felt plugin parses it: a real ADD and
//! DEL, the way a runtime runs the conflist's first plugin (name and
//! cniVersion copied in), in throwaway namespaces. Its keys must have their
//! effect: hairpin on the bridge port, a default route via the gateway,
//! host-local state under the network's name (flannel's "cbr0" directory).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use felt_cluster::process::locate_binary;
use felt_common::testutil::TestNetns;
use felt_deploy::tempdir::TempDir;
use felt_deploy::{repo, tools};
use serde_json::{json, Value};
use std::io::Write;
use std::process::{Command, Stdio};

/// Runs the felt binary as a runtime does: `cmd` with CNI_* `env`, the
/// config on stdin. Whether it succeeded, and its stdout as JSON.
fn call(mut cmd: Command, env: &[(&str, String)], conf: &Value) -> (bool, Value) {
    let mut child = cmd
        .envs(env.iter().map(|(k, v)| (k, v)))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(conf.to_string().as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let v = if stdout.trim().is_empty() {
        Value::Null
    } else {
        serde_json::from_str(&stdout).unwrap()
    };
    (out.status.success(), v)
}

fn felt() -> String {
    locate_binary("felt", "FELT_BIN")
        .unwrap()
        .display()
        .to_string()
}

fn plugin(host: &TestNetns, command: &str, pod: &TestNetns, conf: &Value) -> (bool, Value) {
    let env = [
        ("CNI_COMMAND", command.to_string()),
        ("CNI_CONTAINERID", "deploy-conflist-test".into()),
        ("CNI_NETNS", pod.path().display().to_string()),
        ("CNI_IFNAME", "eth0".into()),
        ("CNI_PATH", "/opt/cni/bin".into()),
    ];
    call(host.command(&felt()), &env, conf)
}

#[test]
fn the_configmaps_conflist_works_with_the_felt_plugin() {
    felt_common::testutil::require_root();
    let m = tools::kustomize(&repo::deploy_dir()).unwrap();
    let conflist: Value = serde_json::from_str(&m.config_data("cni-conf.json").unwrap()).unwrap();
    assert_eq!(conflist["plugins"][1]["type"], "portmap");
    assert_eq!(
        conflist["plugins"][1]["capabilities"],
        json!({"portMappings": true})
    );
    let tmp = TempDir::new(
        &std::env::temp_dir().join(format!("felt-deploy-conflist-{}", std::process::id())),
    )
    .unwrap();
    let subnet_env = tmp.0.join("subnet.env");
    std::fs::write(
        &subnet_env,
        "FLANNEL_NETWORK=10.244.0.0/16\nFLANNEL_SUBNET=10.244.7.1/24\nFLANNEL_MTU=1450\nFLANNEL_IPMASQ=true\n",
    )
    .unwrap();
    // What libcni hands the first plugin; only the files move to the test's
    // temp dir (subnet.env, host-local state), every conflist key stays.
    let mut conf = conflist["plugins"][0].clone();
    conf["name"] = conflist["name"].clone();
    conf["cniVersion"] = conflist["cniVersion"].clone();
    conf["subnetFile"] = json!(subnet_env);
    conf["dataDir"] = json!(tmp.0.join("ipam"));

    let host = TestNetns::new("dplhost");
    let pod = TestNetns::new("dplpod");
    let (ok, result) = plugin(&host, "ADD", &pod, &conf);
    assert!(ok, "ADD failed: {result}");
    assert_eq!(result["cniVersion"], conflist["cniVersion"]);
    let ip = result["ips"][0]["address"].as_str().unwrap();
    assert!(
        ip.starts_with("10.244.7.") && ip.ends_with("/24"),
        "{result}"
    );
    assert_eq!(result["ips"][0]["gateway"], "10.244.7.1");
    // isDefaultGateway: the pod's default route is the bridge
    let routes = pod.exec_ok(&["ip", "-4", "route", "show", "default"]);
    assert!(routes.contains("via 10.244.7.1 dev eth0"), "{routes}");
    // FLANNEL_MTU reached the pod
    assert!(pod
        .exec_ok(&["ip", "link", "show", "eth0"])
        .contains("mtu 1450"));
    // hairpinMode: the pod's port on cni0 reflects traffic back
    let ports: Value = serde_json::from_str(
        &host.exec_ok(&["bridge", "-j", "-d", "link", "show", "master", "cni0"]),
    )
    .unwrap();
    let ports = ports.as_array().unwrap();
    assert_eq!(ports.len(), 1, "{ports:?}");
    assert_eq!(ports[0]["hairpin"], true, "{ports:?}");
    // host-local state under the network's name
    let addr = ip.split('/').next().unwrap();
    assert!(
        tmp.0.join("ipam/cbr0").join(addr).is_file(),
        "no ipam/cbr0/{addr}"
    );

    let (ok, result) = plugin(&host, "DEL", &pod, &conf);
    assert!(ok, "DEL failed: {result}");
    assert!(!tmp.0.join("ipam/cbr0").join(addr).exists());
}

/// The plugin answers VERSION with the conflist's cniVersion among its own.
#[test]
fn the_plugin_supports_the_conflists_cni_version() {
    let m = tools::kustomize(&repo::deploy_dir()).unwrap();
    let conflist: Value = serde_json::from_str(&m.config_data("cni-conf.json").unwrap()).unwrap();
    let env = [("CNI_COMMAND", "VERSION".to_string())];
    let (ok, v) = call(
        Command::new(felt()),
        &env,
        &json!({"cniVersion": conflist["cniVersion"]}),
    );
    assert!(ok, "{v}");
    assert!(
        v["supportedVersions"]
            .as_array()
            .unwrap()
            .contains(&conflist["cniVersion"]),
        "{v}"
    );
}
