//! deploy/felt.yaml on a real Kubernetes v1.20.2 cluster without a CNI
//! (../shared/kubernetes/local-node.sh: kube-apiserver with RBAC, kubelets
//! and containerd 1.6 in network namespaces, REALNODE_CNI=none), with the
//! image imported into each node: the init containers run in the kubelet's
//! pods, install the plugin and the conflist into each node's /opt/cni/bin
//! and /etc/cni/net.d, and the nodes turn Ready (the runtime accepts the
//! conflist). The overlayd container is started from the same image.
//!
//! The pod-to-pod checks (conformance/checks/cross-node.sh, what kind runs)
//! belong here once overlayd's --kube-subnet-mgr routes between nodes.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use felt_cluster::process::{locate_binary, run};
use felt_deploy::repo::{self, NAMESPACE};
use felt_deploy::tempdir::TempDir;
use felt_deploy::{tools, Manifest};
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::Command;

fn local_node_sh() -> PathBuf {
    std::env::var_os("FELT_LOCAL_NODE")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo::root().join("../shared/kubernetes/local-node.sh"))
}

/// A started local-node.sh cluster, stopped (by its own `stop`) on drop.
struct LocalCluster {
    work: PathBuf,
}

impl LocalCluster {
    fn start(work: &Path, nodes: u32, images: &Path) -> Self {
        let script = local_node_sh();
        assert!(
            script.is_file(),
            "{} missing (set FELT_LOCAL_NODE)",
            script.display()
        );
        let cluster = LocalCluster {
            work: work.to_path_buf(),
        };
        run(Command::new(&script)
            .arg("start")
            .arg(work)
            .arg(nodes.to_string())
            .env("REALNODE_CNI", "none")
            .env("REALNODE_AUTHZ", "RBAC")
            .env("REALNODE_IMAGES", images)
            .env("KUBECTL", tools::kubectl().unwrap()))
        .unwrap();
        cluster
    }

    fn kubectl(&self, args: &[&str]) -> String {
        run(Command::new(local_node_sh())
            .arg("kubectl")
            .arg(&self.work)
            .args(args))
        .unwrap()
    }
}

impl Drop for LocalCluster {
    fn drop(&mut self) {
        if self.work.join("tag").is_file() {
            let _ = Command::new(local_node_sh())
                .arg("stop")
                .arg(&self.work)
                .status();
        }
    }
}

#[test]
fn daemonset_installs_felt_on_a_real_cluster() {
    felt_common::testutil::require_root();
    let felt = locate_binary("felt", "FELT_BIN").unwrap();
    // short: containerd's socket paths under it must stay below 108 bytes
    let dir = TempDir::new(Path::new(&format!(
        "/tmp/felt-t-k8s-{}",
        std::process::id()
    )))
    .unwrap();
    let tar = dir.0.join("felt.tar");
    run(Command::new(repo::deploy_dir().join("image/build.sh"))
        .arg(&tar)
        .env("FELT_BIN_DIR", felt.parent().unwrap()))
    .unwrap();
    let work = dir.0.join("w");
    let cluster = LocalCluster::start(&work, 2, &tar);
    let file = repo::deploy_dir().join("felt.yaml");
    cluster.kubectl(&["apply", "-f", &file.display().to_string()]);
    // Ready needs a CNI config the runtime loads: only felt's is there
    cluster.kubectl(&[
        "wait",
        "--for=condition=Ready",
        "node",
        "--all",
        "--timeout=240s",
    ]);

    let m = Manifest::read(&file).unwrap();
    let conflist = m.config_data("cni-conf.json").unwrap();
    for n in 1..=2 {
        let node = work.join(format!("n{n}/cni"));
        assert_eq!(
            std::fs::read(node.join("bin/felt")).unwrap(),
            std::fs::read(&felt).unwrap()
        );
        assert_eq!(
            std::fs::read_to_string(node.join("net.d/10-felt.conflist")).unwrap(),
            conflist
        );
        let names: Vec<_> = std::fs::read_dir(node.join("net.d"))
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, ["10-felt.conflist"], "node{n}: temporary files left");
    }
    let pods: Value =
        serde_json::from_str(&cluster.kubectl(&["-n", NAMESPACE, "get", "pods", "-o", "json"]))
            .unwrap();
    let pods = pods["items"].as_array().unwrap();
    assert_eq!(pods.len(), 2, "one felt pod per node");
    for pod in pods {
        let name = pod["metadata"]["name"].as_str().unwrap();
        assert_eq!(pod["spec"]["hostNetwork"], true);
        for init in pod["status"]["initContainerStatuses"].as_array().unwrap() {
            assert_eq!(init["state"]["terminated"]["exitCode"], 0, "{name}: {init}");
        }
        // the kubelet started overlayd from the image (whatever it then did)
        let main = &pod["status"]["containerStatuses"][0];
        assert_eq!(main["name"], "overlayd");
        let started = ["running", "terminated"].iter().any(|s| {
            main["state"][s]["startedAt"].is_string()
                || main["lastState"][s]["startedAt"].is_string()
        });
        assert!(started, "{name}: overlayd never started: {main}");
    }
}
