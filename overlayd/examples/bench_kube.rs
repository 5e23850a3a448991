//! Scale benchmark of the Kubernetes lease store (run by
//! scripts/bench-kube.sh): N synthetic flannel-annotated Nodes, sized like
//! real ones (kubelet labels, conditions, addresses, an image list), in
//! the test API server (v1.20.2 on etcd, in a network namespace).
//!
//! Measures, per N:
//! - watch lag: from the last Node created to the store's snapshot holding
//!   all N (the store runs in its own process, started on an empty cluster);
//! - a fresh store's start: time to its first full snapshot and its peak
//!   and steady RSS, with paged listings (the default) and with cached
//!   ones (resourceVersion=0, one response);
//! - the size of a resourceVersion=0 list on 1.20 (one response or pages);
//! - snapshot rebuild: one `Tracker::snapshot` over N leases, and one
//!   `changed_since` diff, averaged.
//!
//!   bench_kube 5000 20000         # parent: runs everything
//!   bench_kube store KUBECONFIG NETCONF N paged|cached   # child (internal)

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

#[path = "../tests/etcd_util/mod.rs"]
mod etcd_util;
#[path = "../tests/kube_util/mod.rs"]
mod kube_util;

use futures::StreamExt;
use k8s_openapi::api::core::v1::Node;
use kube::api::{Api, PostParams};
use kube_util::nodes::{flannel_vxlan, node_json};
use kube_util::{ApiOptions, KubeApi};
use overlayd::lease::kube::annotations::Annotations;
use overlayd::lease::kube::tracker::Tracker;
use overlayd::lease::kube::{node, KubeOptions, KubeStore, NodeIdentity};
use overlayd::lease::{LeaseSnapshot, LeaseStore};
use overlayd::metrics::Metrics;
use serde_json::{json, Value};
use std::io::BufRead;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

const NETCONF: &str = r#"{"Network":"10.0.0.0/8","Backend":{"Type":"vxlan"}}"#;
/// Node creations in flight at once.
const PARALLEL: usize = 64;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) == Some("store") {
        return child(&args[1..]);
    }
    let counts: Vec<usize> = if args.is_empty() {
        vec![5000]
    } else {
        args.iter()
            .map(|a| a.parse().expect("node counts"))
            .collect()
    };
    println!("| nodes | create rate (nodes/s) | resourceVersion=0 list (limit=500) | watch lag: last create -> snapshot with all | fresh store, paged lists: first full snapshot, RSS | fresh store, cached lists (with_cached_lists) | snapshot rebuild | changed_since |");
    println!("|---|---|---|---|---|---|---|---|");
    for n in counts {
        run(n);
    }
}

fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
}

/// A Node as a kubelet registers it, with flannel's annotations.
fn synthetic(i: usize) -> Value {
    let name = format!("node-{i:05}");
    let ip = format!("172.16.{}.{}", i / 250, 1 + i % 250);
    let mac = format!(
        "aa:bb:cc:{:02x}:{:02x}:{:02x}",
        i >> 16,
        (i >> 8) & 0xff,
        i & 0xff
    );
    let cidr = format!("10.{}.{}.0/24", i / 256, i % 256);
    let mut ann = flannel_vxlan(&ip, &mac);
    ann.push(("node.alpha.kubernetes.io/ttl".into(), "0".into()));
    ann.push((
        "volumes.kubernetes.io/controller-managed-attach-detach".into(),
        "true".into(),
    ));
    let mut v = node_json(&name, Some(&cidr), &ann);
    v["metadata"]["labels"] = json!({
        "kubernetes.io/hostname": name, "kubernetes.io/os": "linux", "kubernetes.io/arch": "amd64",
        "beta.kubernetes.io/os": "linux", "beta.kubernetes.io/arch": "amd64",
        "node.kubernetes.io/instance-type": "m5.large", "topology.kubernetes.io/zone": "zone-a",
    });
    let now = "2026-01-01T00:00:00Z";
    let cond = |t: &str, s: &str| json!({"type": t, "status": s, "reason": "Kubelet", "message": "kubelet status", "lastHeartbeatTime": now, "lastTransitionTime": now});
    let images: Vec<Value> = (0..20)
        .map(|k| json!({"names": [format!("registry.example.com/team/app-{k}@sha256:{:064x}", k * 7919 + i), format!("registry.example.com/team/app-{k}:v1.{k}")], "sizeBytes": 10_000_000 + k}))
        .collect();
    v["status"] = json!({
        "conditions": [cond("Ready", "True"), cond("MemoryPressure", "False"), cond("DiskPressure", "False"), cond("PIDPressure", "False")],
        "addresses": [{"type": "InternalIP", "address": ip}, {"type": "Hostname", "address": name}],
        "capacity": {"cpu": "2", "memory": "8Gi", "pods": "110"},
        "allocatable": {"cpu": "2", "memory": "7Gi", "pods": "110"},
        "nodeInfo": {"machineID": format!("{i:032x}"), "systemUUID": format!("{i:032x}"), "bootID": format!("{i:032x}"),
            "kernelVersion": "6.1.0", "osImage": "Debian GNU/Linux 12", "containerRuntimeVersion": "containerd://1.6.20",
            "kubeletVersion": "v1.20.2", "kubeProxyVersion": "v1.20.2", "operatingSystem": "linux", "architecture": "amd64"},
        "images": images,
    });
    v
}

fn run(n: usize) {
    let api = KubeApi::start(ApiOptions {
        rbac: false,
        tag: "kbench".into(),
    });
    let kubeconfig = api.kubeconfig(kube_util::ADMIN_TOKEN);
    let netconf = api.dir.join("net-conf.json");
    std::fs::write(&netconf, NETCONF).unwrap();
    // Phase 1: a store watching an empty cluster while N Nodes arrive.
    let mut watcher = spawn_store(&api, &kubeconfig, &netconf, n, "paged");
    let rt = api.runtime();
    let (rate, last_created) = rt.block_on(async {
        let admin = kube_util::client_for(&kubeconfig).await;
        let nodes: Api<Node> = Api::all(admin);
        let started = Instant::now();
        futures::stream::iter(0..n)
            .map(|i| {
                let nodes = nodes.clone();
                async move {
                    let node: Node = serde_json::from_value(synthetic(i)).unwrap();
                    nodes.create(&PostParams::default(), &node).await.unwrap();
                }
            })
            .buffer_unordered(PARALLEL)
            .collect::<Vec<()>>()
            .await;
        (n as f64 / started.elapsed().as_secs_f64(), unix_now())
    });
    let listing = rt.block_on(list_size(&kubeconfig));
    let all_at: f64 = watcher.field("all").parse().unwrap();
    watcher.finish();
    // Phase 2: a store started on the full cluster, paged listing, then
    // one listing from the watch cache.
    let fresh = |mode: &str| {
        let mut c = spawn_store(&api, &kubeconfig, &netconf, n, mode);
        let first = c.field("first_full_after_s");
        let (hwm, rss) = (c.field("hwm_mb"), c.field("rss_mb"));
        c.finish();
        format!("{first} s, RSS {hwm} MB peak / {rss} MB steady")
    };
    let (paged, cached) = (fresh("paged"), fresh("cached"));
    let (rebuild, diff) = rebuild_cost(n);
    println!(
        "| {n} | {rate:.0} | {listing} | {:.2} s | {paged} | {cached} | {:.2} ms | {:.2} ms |",
        all_at - last_created,
        rebuild.as_secs_f64() * 1e3,
        diff.as_secs_f64() * 1e3
    );
    drop(rt);
}

/// What the store's listing request returns: one response or pages
/// (1.20's watch cache ignores the limit for resourceVersion=0), its size.
async fn list_size(kubeconfig: &std::path::Path) -> String {
    let admin = kube_util::client_for(kubeconfig).await;
    let req = http::Request::get(
        "/api/v1/nodes?resourceVersion=0&resourceVersionMatch=NotOlderThan&limit=500",
    )
    .body(Vec::new())
    .unwrap();
    let body = admin.request_text(req).await.unwrap();
    let v: Value = serde_json::from_str(&body).unwrap();
    let items = v["items"].as_array().map_or(0, Vec::len);
    let paged = v["metadata"]["continue"]
        .as_str()
        .is_some_and(|c| !c.is_empty());
    format!(
        "{items} Nodes{}, {:.0} MB ({:.1} KB per Node)",
        if paged {
            " (paged)"
        } else {
            " in one response"
        },
        body.len() as f64 / 1e6,
        body.len() as f64 / 1e3 / items.max(1) as f64
    )
}

/// A child process running one store; its report lines are `key value`.
struct Child {
    child: std::process::Child,
    lines: std::io::Lines<std::io::BufReader<std::process::ChildStdout>>,
}

impl Child {
    fn field(&mut self, key: &str) -> String {
        for line in self.lines.by_ref() {
            let line = line.unwrap();
            if let Some(v) = line.strip_prefix(&format!("{key} ")) {
                return v.to_string();
            }
        }
        panic!("store child ended without reporting {key}");
    }

    fn finish(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn spawn_store(
    api: &KubeApi,
    kubeconfig: &PathBuf,
    netconf: &PathBuf,
    n: usize,
    mode: &str,
) -> Child {
    let exe = std::env::current_exe().unwrap();
    let mut cmd = api.ns.command(exe.to_str().unwrap());
    cmd.arg("store")
        .arg(kubeconfig)
        .arg(netconf)
        .arg(n.to_string())
        .arg(mode)
        .stdout(Stdio::piped());
    let mut child = cmd.spawn().unwrap();
    let out = child.stdout.take().unwrap();
    Child {
        child,
        lines: std::io::BufReader::new(out).lines(),
    }
}

/// The child: a store watching every Node; reports when it holds `n`.
fn child(args: &[String]) {
    let (kubeconfig, netconf, n) = (&args[0], &args[1], args[2].parse::<usize>().unwrap());
    let cached = args.get(3).map(String::as_str) == Some("cached");
    let started = Instant::now();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let opts = KubeOptions {
            api_url: None,
            kubeconfig: Some(kubeconfig.into()),
            annotation_prefix: "flannel.alpha.coreos.com".into(),
            net_config_path: netconf.into(),
            node: Some(NodeIdentity::Node("bench".into())),
            set_node_network_unavailable: false,
        };
        let store = KubeStore::connect(&opts, Arc::new(Metrics::new()))
            .await
            .unwrap();
        let store = Arc::new(store.with_cached_lists(cached));
        let (tx, mut rx) = tokio::sync::watch::channel(Arc::new(LeaseSnapshot::new()));
        let s = store.clone();
        tokio::spawn(async move { s.watch_leases(tx).await });
        rx.wait_for(|s| s.len() >= n).await.unwrap();
        println!("all {}", unix_now());
        println!("first_full_after_s {:.2}", started.elapsed().as_secs_f64());
        // Let allocator caches settle before reading the steady RSS.
        tokio::time::sleep(Duration::from_secs(2)).await;
        let (hwm, rss) = memory();
        println!("hwm_mb {:.0}", hwm / 1024.0);
        println!("rss_mb {:.0}", rss / 1024.0);
    });
}

/// (VmHWM, VmRSS) in KiB.
fn memory() -> (f64, f64) {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let kb = |key: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(key))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    (kb("VmHWM:"), kb("VmRSS:"))
}

/// Average cost of one snapshot rebuild over `n` leases, and of diffing
/// two consecutive snapshots that differ in one lease.
fn rebuild_cost(n: usize) -> (Duration, Duration) {
    let ann = Annotations::new("flannel.alpha.coreos.com").unwrap();
    let mut t = Tracker::new();
    t.init();
    for i in 0..n {
        let mut node: Node = serde_json::from_value(synthetic(i)).unwrap();
        node::trim(&ann, &mut node);
        t.init_apply(format!("node-{i:05}"), node::derive(&ann, &node));
    }
    t.init_done();
    let rounds = 50;
    let started = Instant::now();
    let mut snaps = Vec::new();
    for _ in 0..rounds {
        snaps.push(t.snapshot());
    }
    let rebuild = started.elapsed() / rounds;
    let mut node: Node = serde_json::from_value(synthetic(0)).unwrap();
    node.metadata.annotations.as_mut().unwrap().insert(
        "flannel.alpha.coreos.com/public-ip".into(),
        "172.31.0.1".into(),
    );
    t.apply("node-00000".into(), node::derive(&ann, &node));
    let newer = t.snapshot();
    let started = Instant::now();
    for s in &snaps {
        assert_eq!(s.changed_since(&newer).len(), 1);
    }
    (rebuild, started.elapsed() / rounds)
}
