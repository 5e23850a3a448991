//! felt installed from deploy/ on a real Kubernetes v1.20.2 cluster
//! (../shared/kubernetes/local-node.sh: kube-apiserver with RBAC, the
//! controller-manager allocating podCIDRs, kubelets, containerd 1.6 and
//! kube-proxy in network namespaces, REALNODE_CNI=none), felt's image
//! imported into each node, applied as an operator would:
//!
//! - the DaemonSet rolls out, both nodes go Ready, NetworkUnavailable is
//!   False (FlannelIsUp) and flannel's annotations are on the Nodes;
//! - the cross-node checks kind runs too (conformance/checks/cross-node.sh):
//!   pods on the two nodes ping and talk TCP, a ClusterIP Service reaches
//!   the other node's pod (kube-proxy), the API server answers through the
//!   `kubernetes` Service — for vxlan (deploy/felt.yaml) and host-gw (its
//!   overlay);
//! - a DaemonSet rolling update to a new image tag under a 10 ms ping;
//! - `kubectl delete node`: its routes leave the other node; the kubelet
//!   registering again (new uid, new podCIDR): both nodes reprogrammed;
//! - uninstall (`kubectl delete -f`): what stays and what goes; re-apply.
//!
//! Measured results are printed (rollout time, ping loss, route removal).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use felt_cluster::process::{locate_binary, run};
use felt_deploy::repo::{self, NAMESPACE};
use felt_deploy::tempdir::TempDir;
use felt_deploy::{tools, Manifest};
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

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

    fn script(&self, verb: &str) -> Command {
        let mut cmd = Command::new(local_node_sh());
        cmd.arg(verb).arg(&self.work);
        cmd
    }

    fn kubectl(&self, args: &[&str]) -> String {
        run(self.script("kubectl").args(args)).unwrap()
    }

    fn try_kubectl(&self, args: &[&str]) -> Result<String, String> {
        run(self.script("kubectl").args(args)).map_err(|e| e.to_string())
    }

    fn json(&self, args: &[&str]) -> Value {
        let mut all = args.to_vec();
        all.extend(["-o", "json"]);
        serde_json::from_str(&self.kubectl(&all)).unwrap()
    }

    /// Runs `argv` inside node `n` (its netns and mount namespace).
    fn on_node(&self, n: u32, argv: &[&str]) -> String {
        run(self.script("node").arg(n.to_string()).args(argv)).unwrap()
    }

    fn import(&self, n: u32, tar: &Path) {
        run(self.script("import").arg(n.to_string()).arg(tar)).unwrap();
    }

    /// The `KUBECTL` prefix cross-node.sh takes.
    fn kubectl_prefix(&self) -> String {
        format!(
            "{} kubectl {}",
            local_node_sh().display(),
            self.work.display()
        )
    }
}

impl Drop for LocalCluster {
    fn drop(&mut self) {
        if std::thread::panicking() {
            let _ = Command::new(local_node_sh())
                .args(["kubectl"])
                .arg(&self.work)
                .args([
                    "-n",
                    NAMESPACE,
                    "logs",
                    "-l",
                    "app=felt",
                    "--tail=40",
                    "--all-containers",
                ])
                .status();
        }
        if self.work.join("tag").is_file() {
            let _ = Command::new(local_node_sh())
                .arg("stop")
                .arg(&self.work)
                .status();
        }
    }
}

/// A scratch dir for one cluster (short: containerd's socket paths under
/// it must stay below 108 bytes) and felt's image built into it.
fn setup(tag: &str) -> (TempDir, PathBuf) {
    felt_common::testutil::require_root();
    let dir = TempDir::new(Path::new(&format!(
        "/tmp/felt-t-k8s{tag}-{}",
        std::process::id()
    )))
    .unwrap();
    let tar = build_image(&dir.0, None);
    (dir, tar)
}

fn build_image(dir: &Path, tag: Option<&str>) -> PathBuf {
    let felt = locate_binary("felt", "FELT_BIN").unwrap();
    let tar = dir.join(format!("felt-{}.tar", tag.unwrap_or("default")));
    let mut cmd = Command::new(repo::deploy_dir().join("image/build.sh"));
    cmd.arg(&tar).env("FELT_BIN_DIR", felt.parent().unwrap());
    if let Some(t) = tag {
        cmd.arg(t);
    }
    run(&mut cmd).unwrap();
    tar
}

/// Waits for felt's DaemonSet to finish rolling out.
fn rollout(c: &LocalCluster) {
    c.kubectl(&[
        "-n",
        NAMESPACE,
        "rollout",
        "status",
        "ds/felt",
        "--timeout=300s",
    ]);
}

/// Waits for `node` (or `--all`) to be Ready.
fn nodes_ready(c: &LocalCluster, node: &str) {
    c.kubectl(&[
        "wait",
        "--for=condition=Ready",
        "node",
        node,
        "--timeout=240s",
    ]);
}

/// Applies `what` (`-f FILE` or `-k DIR`) and waits for the rollout and
/// for every node Ready; returns the rollout time.
fn install(c: &LocalCluster, what: &[&str]) -> Duration {
    let start = Instant::now();
    let mut apply = vec!["apply"];
    apply.extend(what);
    c.kubectl(&apply);
    rollout(c);
    let took = start.elapsed();
    nodes_ready(c, "--all");
    took
}

/// NetworkUnavailable=False (FlannelIsUp) and flannel's annotations on
/// every Node, with a podCIDR inside the network.
fn check_nodes(c: &LocalCluster, backend: &str) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let nodes = c.json(&["get", "nodes"]);
        let problems: Vec<String> = nodes["items"]
            .as_array()
            .unwrap()
            .iter()
            .flat_map(|n| node_problems(n, backend))
            .collect();
        if problems.is_empty() {
            return;
        }
        assert!(Instant::now() < deadline, "{problems:#?}");
        std::thread::sleep(Duration::from_millis(500));
    }
}

fn node_problems(n: &Value, backend: &str) -> Vec<String> {
    let name = n["metadata"]["name"].as_str().unwrap_or("?");
    let ann = &n["metadata"]["annotations"];
    let a = |k: &str| {
        ann[format!("flannel.alpha.coreos.com/{k}")]
            .as_str()
            .map(String::from)
    };
    let mut out = Vec::new();
    if a("kube-subnet-manager").as_deref() != Some("true") {
        out.push(format!("{name}: no kube-subnet-manager=true"));
    }
    if a("backend-type").as_deref() != Some(backend) {
        out.push(format!("{name}: backend-type {:?}", a("backend-type")));
    }
    if a("public-ip").is_none() {
        out.push(format!("{name}: no public-ip"));
    }
    if backend == "vxlan" && !a("backend-data").is_some_and(|d| d.contains("\"VtepMAC\"")) {
        out.push(format!("{name}: backend-data {:?}", a("backend-data")));
    }
    let cond = n["status"]["conditions"]
        .as_array()
        .and_then(|cs| cs.iter().find(|c| c["type"] == "NetworkUnavailable"));
    match cond {
        Some(c) if c["status"] == "False" && c["reason"] == "FlannelIsUp" => {}
        other => out.push(format!("{name}: NetworkUnavailable {other:?}")),
    }
    out
}

/// conformance/checks/cross-node.sh against this cluster.
fn cross_node(c: &LocalCluster) {
    let out = Command::new(repo::root().join("conformance/checks/cross-node.sh"))
        .env("KUBECTL", c.kubectl_prefix())
        .env("TIMEOUT", "180")
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    eprintln!("{text}");
    assert!(out.status.success(), "cross-node checks failed:\n{text}");
}

fn podcidr(c: &LocalCluster, node: &str) -> String {
    c.kubectl(&["get", "node", node, "-o", "jsonpath={.spec.podCIDR}"])
}

#[test]
fn vxlan_install_traffic_upgrade_membership_and_uninstall() {
    let (dir, tar) = setup("v");
    let c = LocalCluster::start(&dir.0.join("w"), 2, &tar);
    let felt_yaml = repo::deploy_dir().join("felt.yaml");
    let file = felt_yaml.display().to_string();
    let rollout = install(&c, &["-f", &file]);
    check_nodes(&c, "vxlan");
    installed_files_are_the_manifests(&c, &felt_yaml);
    cross_node(&c);
    flannel_node_routed_both_ways(&c);
    let loss = upgrade_under_ping(&c, &dir.0);
    let (gone, back) = node_deleted_and_reregistered(&c);
    let kept = uninstall_and_reapply(&c, &file);
    eprintln!(
        "vxlan on a real cluster: rollout {rollout:?}; upgrade ping loss {} of {} (target 0); \
         routes left node1 {gone:?} after node2's deletion; node2 re-registered and both nodes \
         reprogrammed after {back:?}; after uninstall: {kept}",
        loss.1 - loss.0,
        loss.1
    );
}

#[test]
fn host_gw_install_and_traffic() {
    let (dir, tar) = setup("h");
    let c = LocalCluster::start(&dir.0.join("w"), 2, &tar);
    let overlay = repo::deploy_dir().join("overlays/host-gw");
    let rollout = install(&c, &["-k", &overlay.display().to_string()]);
    check_nodes(&c, "host-gw");
    cross_node(&c);
    eprintln!("host-gw on a real cluster: rollout {rollout:?}");
}

/// The init containers installed exactly the plugin and the conflist.
fn installed_files_are_the_manifests(c: &LocalCluster, felt_yaml: &Path) {
    let felt = locate_binary("felt", "FELT_BIN").unwrap();
    let conflist = Manifest::read(felt_yaml)
        .unwrap()
        .config_data("cni-conf.json")
        .unwrap();
    for n in 1..=2 {
        let node = c.work.join(format!("n{n}/cni"));
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
}

/// Two busybox pods pinned to node1 and node2 (namespace `felt-ping`);
/// their addresses.
fn ping_pods(c: &LocalCluster) -> (String, String) {
    let pod = |name: &str, node: &str| {
        format!(
            "apiVersion: v1\nkind: Pod\nmetadata: {{name: {name}, namespace: felt-ping}}\nspec:\n  nodeName: {node}\n  terminationGracePeriodSeconds: 1\n  containers:\n  - {{name: b, image: docker.io/library/busybox:1.35.0, imagePullPolicy: IfNotPresent, command: [sleep, '3600']}}\n---\n"
        )
    };
    let yaml = format!("{}{}", pod("a", "node1"), pod("b", "node2"));
    let file = c.work.join("ping-pods.yaml");
    std::fs::write(&file, yaml).unwrap();
    let _ = c.try_kubectl(&["create", "namespace", "felt-ping"]);
    c.kubectl(&["apply", "-f", &file.display().to_string()]);
    c.kubectl(&[
        "-n",
        "felt-ping",
        "wait",
        "--for=condition=Ready",
        "pod/a",
        "pod/b",
        "--timeout=180s",
    ]);
    let ip = |p: &str| {
        c.kubectl(&[
            "-n",
            "felt-ping",
            "get",
            "pod",
            p,
            "-o",
            "jsonpath={.status.podIP}",
        ])
    };
    (ip("a"), ip("b"))
}

/// A rolling update to a new image tag while pod a pings pod b every
/// 10 ms; returns (received, transmitted).
fn upgrade_under_ping(c: &LocalCluster, dir: &Path) -> (u64, u64) {
    let (_, b_ip) = ping_pods(c);
    let tag = "0.1.0-next";
    let tar = build_image(dir, Some(tag));
    for n in 1..=2 {
        c.import(n, &tar);
    }
    let ping_log = dir.join("upgrade-ping.log");
    let mut ping = c.script("kubectl");
    ping.args([
        "-n",
        "felt-ping",
        "exec",
        "a",
        "--",
        "ping",
        "-i",
        "0.01",
        "-w",
        "60",
        &b_ip,
    ])
    .stdout(std::fs::File::create(&ping_log).unwrap())
    .stderr(std::process::Stdio::null());
    let mut ping = ping.spawn().unwrap();
    std::thread::sleep(Duration::from_secs(2));
    let image = format!("docker.io/felt/felt:{tag}");
    let set = format!("*={image}");
    c.kubectl(&["-n", NAMESPACE, "set", "image", "ds/felt", &set]);
    rollout(c);
    let ds = c.json(&["-n", NAMESPACE, "get", "ds", "felt"]);
    assert_eq!(
        ds["spec"]["template"]["spec"]["containers"][0]["image"],
        image.as_str()
    );
    std::thread::sleep(Duration::from_secs(2));
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(ping.id() as i32),
        nix::sys::signal::Signal::SIGINT,
    );
    // kubectl exec ends when its ping does (60 s at most).
    let _ = ping.wait();
    let text = std::fs::read_to_string(&ping_log).unwrap_or_default();
    let (got, sent) = ping_summary(&text).unwrap_or_else(|| panic!("no ping summary in {text}"));
    eprintln!("rolling update to {tag}: ping every 10 ms, {got}/{sent} replies");
    (got, sent)
}

/// busybox: "N packets transmitted, M packets received, ..."
fn ping_summary(text: &str) -> Option<(u64, u64)> {
    let line = text.lines().find(|l| l.contains("packets transmitted"))?;
    let nums: Vec<u64> = line
        .split(|ch: char| !ch.is_ascii_digit())
        .filter_map(|s| s.parse().ok())
        .collect();
    Some((*nums.get(1)?, *nums.first()?))
}

/// node1's route to `cidr` (empty when none).
fn route_on_node1(c: &LocalCluster, cidr: &str) -> String {
    c.on_node(1, &["ip", "route", "show", cidr])
        .trim()
        .to_string()
}

/// `kubectl delete node node2`: its route leaves node1. Its kubelet,
/// restarted, registers anew with another podCIDR: node1 routes to that,
/// node2 to node1. Returns (route removal time, reprogramming time).
fn node_deleted_and_reregistered(c: &LocalCluster) -> (Duration, Duration) {
    let old = podcidr(c, "node2");
    assert!(
        !route_on_node1(c, &old).is_empty(),
        "no route to node2's {old} to begin with"
    );
    let start = Instant::now();
    c.kubectl(&["delete", "node", "node2"]);
    while !route_on_node1(c, &old).is_empty() {
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "route to {old} kept"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let gone = start.elapsed();
    let start = Instant::now();
    run(c.script("restart-kubelet").arg("2")).unwrap();
    let mut new = String::new();
    while new.is_empty() {
        assert!(
            start.elapsed() < Duration::from_secs(180),
            "node2 did not come back with a podCIDR"
        );
        std::thread::sleep(Duration::from_millis(500));
        new = c
            .try_kubectl(&["get", "node", "node2", "-o", "jsonpath={.spec.podCIDR}"])
            .unwrap_or_default();
    }
    rollout(c);
    nodes_ready(c, "node2");
    let node1 = podcidr(c, "node1");
    loop {
        let to2 = route_on_node1(c, &new);
        let to1 = c.on_node(2, &["ip", "route", "show", &node1]);
        if !to2.is_empty() && !to1.trim().is_empty() {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(180),
            "node1 -> {new}: {to2:?}; node2 -> {node1}: {to1:?}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let back = start.elapsed();
    assert_ne!(old, new, "node2 came back with the same podCIDR");
    eprintln!("node2 deleted: route to {old} gone after {gone:?}; back as {new}, reprogrammed after {back:?}");
    check_nodes(c, "vxlan");
    cross_node(c);
    // Pod b outlived its Node with an address of the old podCIDR, which
    // nothing routes any more: pods of a re-created Node are recreated.
    c.kubectl(&["-n", "felt-ping", "delete", "pod", "b", "--wait=true"]);
    ping_pods(c);
    (gone, back)
}

/// `kubectl delete -f felt.yaml`: felt's objects and pods go; the plugin,
/// the conflist, subnet.env, the datapath and the rules stay on the
/// nodes (pods keep their network); applying again works.
fn uninstall_and_reapply(c: &LocalCluster, file: &str) -> String {
    c.kubectl(&["delete", "-f", file, "--wait=true", "--timeout=120s"]);
    let deadline = Instant::now() + Duration::from_secs(120);
    while c.try_kubectl(&["get", "namespace", NAMESPACE]).is_ok() {
        assert!(Instant::now() < deadline, "namespace {NAMESPACE} not gone");
        std::thread::sleep(Duration::from_millis(500));
    }
    assert!(
        c.try_kubectl(&["get", "clusterrole", "felt"]).is_err(),
        "ClusterRole kept"
    );
    for n in 1..=2 {
        let node = c.work.join(format!("n{n}"));
        assert!(
            node.join("cni/bin/felt").is_file(),
            "node{n}: plugin removed"
        );
        assert!(
            node.join("cni/net.d/10-felt.conflist").is_file(),
            "node{n}: conflist removed"
        );
        assert!(
            node.join("run/flannel/subnet.env").is_file(),
            "node{n}: subnet.env removed"
        );
        let link = c.on_node(n, &["ip", "-o", "link", "show", "flannel.1"]);
        assert!(!link.is_empty(), "node{n}: flannel.1 removed");
        let rules = c.on_node(n, &["iptables", "-t", "nat", "-S", "FLANNEL-POSTRTG"]);
        assert_eq!(
            rules.lines().count(),
            7,
            "node{n}: masquerade rules: {rules}"
        );
    }
    // Pods keep their network without felt running.
    let b_ip = c.kubectl(&[
        "-n",
        "felt-ping",
        "get",
        "pod",
        "b",
        "-o",
        "jsonpath={.status.podIP}",
    ]);
    c.kubectl(&[
        "-n",
        "felt-ping",
        "exec",
        "a",
        "--",
        "ping",
        "-c",
        "3",
        "-W",
        "2",
        &b_ip,
    ]);
    let rollout = install(c, &["-f", file]);
    check_nodes(c, "vxlan");
    cross_node(c);
    format!("plugin, conflist, subnet.env, flannel.1 and the rules kept, pods still talking; re-applied in {rollout:?}")
}

const FLANNEL_SUBNET: &str = "10.244.200.0/24";
const FLANNEL_MAC: &str = "5a:e8:17:2b:9c:01";
const FLANNEL_IP: &str = "10.250.0.50";

/// A node annotated by hand exactly as flannel annotates its Node (vxlan),
/// with flannel's datapath built by hand in a namespace on the cluster's
/// underlay: felt's nodes route to it, it routes to them (from their
/// annotations, as flanneld would), and its pod and felt's pods ping.
fn flannel_node_routed_both_ways(c: &LocalCluster) {
    let tag = std::fs::read_to_string(c.work.join("tag")).unwrap();
    let cp = format!("{}-cp", tag.trim());
    let host = felt_common::testutil::TestNetns::new("k8sfl");
    let ip = |args: &[&str]| host.exec_ok(&[&["ip"], args].concat());
    run(Command::new("ip").args([
        "-n", &cp, "link", "add", "fl50", "type", "veth", "peer", "name", "eth0", "netns",
        &host.name,
    ]))
    .unwrap();
    run(Command::new("ip").args(["-n", &cp, "link", "set", "fl50", "master", "br0", "up"]))
        .unwrap();
    ip(&["addr", "add", &format!("{FLANNEL_IP}/24"), "dev", "eth0"]);
    ip(&["link", "set", "eth0", "up"]);
    ip(&[
        "link",
        "add",
        "flannel.1",
        "type",
        "vxlan",
        "id",
        "1",
        "local",
        FLANNEL_IP,
        "dev",
        "eth0",
        "dstport",
        "8472",
        "nolearning",
    ]);
    ip(&[
        "link",
        "set",
        "flannel.1",
        "address",
        FLANNEL_MAC,
        "mtu",
        "1450",
        "up",
    ]);
    ip(&["addr", "add", "10.244.200.0/32", "dev", "flannel.1"]);
    // Its "pod": an address behind a veth whose other end stays here.
    ip(&[
        "link", "add", "pod0", "type", "veth", "peer", "name", "pod1",
    ]);
    ip(&["addr", "add", "10.244.200.1/24", "dev", "pod0"]);
    ip(&["link", "set", "pod0", "up"]);
    ip(&["link", "set", "pod1", "up"]);
    let data = format!(r#"{{"VNI":1,"VtepMAC":"{FLANNEL_MAC}"}}"#);
    let node = serde_json::json!({
        "apiVersion": "v1", "kind": "Node",
        "metadata": {"name": "flannel-node", "annotations": {
            "flannel.alpha.coreos.com/kube-subnet-manager": "true",
            "flannel.alpha.coreos.com/backend-type": "vxlan",
            "flannel.alpha.coreos.com/backend-data": data,
            "flannel.alpha.coreos.com/public-ip": FLANNEL_IP,
        }},
        "spec": {"podCIDR": FLANNEL_SUBNET, "podCIDRs": [FLANNEL_SUBNET]},
    });
    let file = c.work.join("flannel-node.json");
    std::fs::write(&file, node.to_string()).unwrap();
    c.kubectl(&["create", "-f", &file.display().to_string()]);
    // flanneld's side: a neighbour, an FDB entry and a route per felt node.
    let nodes = c.json(&["get", "nodes"]);
    for n in nodes["items"].as_array().unwrap() {
        let ann = &n["metadata"]["annotations"];
        if n["metadata"]["name"] == "flannel-node" {
            continue;
        }
        let cidr: ipnet::Ipv4Net = n["spec"]["podCIDR"].as_str().unwrap().parse().unwrap();
        let public = ann["flannel.alpha.coreos.com/public-ip"].as_str().unwrap();
        let data: Value = serde_json::from_str(
            ann["flannel.alpha.coreos.com/backend-data"]
                .as_str()
                .unwrap(),
        )
        .unwrap();
        let mac = data["VtepMAC"].as_str().unwrap();
        let gw = cidr.network().to_string();
        ip(&[
            "neigh",
            "replace",
            &gw,
            "lladdr",
            mac,
            "dev",
            "flannel.1",
            "nud",
            "permanent",
        ]);
        host.exec_ok(&[
            "bridge",
            "fdb",
            "replace",
            mac,
            "dev",
            "flannel.1",
            "dst",
            public,
            "self",
            "permanent",
        ]);
        ip(&[
            "route",
            "replace",
            &cidr.to_string(),
            "via",
            &gw,
            "dev",
            "flannel.1",
            "onlink",
        ]);
    }
    let (a_ip, _) = ping_pods(c);
    let start = Instant::now();
    loop {
        let there = c.try_kubectl(&[
            "-n",
            "felt-ping",
            "exec",
            "a",
            "--",
            "ping",
            "-c",
            "1",
            "-W",
            "1",
            "10.244.200.1",
        ]);
        let back = host.exec(&["ping", "-c", "1", "-W", "1", "-I", "10.244.200.1", &a_ip]);
        if there.is_ok() && back.status.success() {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "flannel node and felt pod never reached each other: {there:?}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    eprintln!(
        "a flannel-annotated node and felt's pods reach each other both ways after {:?}",
        start.elapsed()
    );
    c.kubectl(&["delete", "node", "flannel-node"]);
}
