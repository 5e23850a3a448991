//! What happens around a pod's life: ADD rolled back after an injected
//! failure, GC after a reboot, the bridge address repaired after the
//! node's subnet changed (or refused while old pods live), and ADD as a
//! chained plugin with a prevResult.

// Test helpers outside #[test] fns fail the test by panicking, like asserts.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use serde_json::{json, Value};
use support::*;

/// Steps after which FELT_TEST_FAIL_AFTER makes ADD fail (docs/cni-plugin.md).
const FAIL_STEPS: [&str; 8] = [
    "ipam",
    "bridge",
    "veth",
    "hairpin",
    "addresses",
    "routes",
    "sysctl",
    "result",
];

#[test]
fn add_failing_after_each_step_rolls_back_everything() {
    for step in FAIL_STEPS {
        let node = Node::new("rb");
        let pod = Pod::new("rb");
        let out = Call::pod("ADD", &node.conf("1.0.0"), &pod, "eth0")
            .env("FELT_TEST_FAIL_AFTER", step)
            .run(&node);
        out.err_code(199);
        assert!(
            node.veths().is_empty(),
            "{step}: veth left on node: {:?}",
            node.veths()
        );
        let pod_links: Vec<String> = pod
            .links()
            .iter()
            .map(|l| l["ifname"].as_str().unwrap_or_default().to_string())
            .collect();
        assert_eq!(pod_links, vec!["lo"], "{step}: links left in pod");
        assert!(
            node.ip_files().is_empty(),
            "{step}: IP left: {:?}",
            node.ip_files()
        );
        // Clean enough that the same pod can be added for real.
        let r = node.add_ok(&pod, "1.0.0");
        assert_eq!(node.ip_files(), vec![result_ip(&r).0], "{step}");
        assert!(
            pod.ping("10.244.1.1"),
            "{step}: pod unreachable after retry"
        );
    }
}

fn gc_conf(node: &Node, key: &str, attachments: Value) -> Value {
    let mut conf = node.conf("1.1.0");
    conf[key] = attachments;
    conf
}

#[test]
fn gc_after_a_reboot_releases_ips_of_containers_not_listed() {
    let node = Node::new("gcboot");
    // A reboot: reservations on disk, no pods, no bridge.
    node.reserve("10.244.1.2", "keep-me", "eth0");
    node.reserve("10.244.1.3", "gone", "eth0");
    node.reserve("10.244.1.4", "keep-me", "eth1");
    std::fs::write(node.ip_dir().join("last_reserved_ip.0"), "10.244.1.4").unwrap();
    let valid = json!([{"containerID": "keep-me", "ifname": "eth0"}]);
    let out = Call::bare("GC", &gc_conf(&node, "cni.dev/valid-attachments", valid)).run(&node);
    out.ok();
    assert!(
        out.stdout.trim().is_empty(),
        "GC prints nothing on success: {out:#?}"
    );
    assert_eq!(node.ip_files(), vec!["10.244.1.2"]);
    let last = std::fs::read_to_string(node.ip_dir().join("last_reserved_ip.0")).unwrap();
    assert_eq!(
        last.trim(),
        "10.244.1.4",
        "GC must not reset round-robin state"
    );
}

#[test]
fn gc_understands_the_older_attachments_key() {
    let node = Node::new("gcold");
    node.reserve("10.244.1.2", "keep-me", "eth0");
    node.reserve("10.244.1.3", "gone", "eth0");
    let valid = json!([{"containerID": "keep-me", "ifname": "eth0"}]);
    Call::bare("GC", &gc_conf(&node, "cni.dev/attachments", valid))
        .run(&node)
        .ok();
    assert_eq!(node.ip_files(), vec!["10.244.1.2"]);
}

#[test]
fn gc_with_an_empty_list_releases_everything_and_tolerates_no_data() {
    let node = Node::new("gcall");
    Call::bare(
        "GC",
        &gc_conf(&node, "cni.dev/valid-attachments", json!([])),
    )
    .run(&node)
    .ok();
    node.reserve("10.244.1.2", "a", "eth0");
    node.reserve("10.244.1.9", "b", "eth0");
    Call::bare(
        "GC",
        &gc_conf(&node, "cni.dev/valid-attachments", json!([])),
    )
    .run(&node)
    .ok();
    assert!(node.ip_files().is_empty(), "left: {:?}", node.ip_files());
}

#[test]
fn gc_keeps_live_pods_and_releases_the_rest() {
    let node = Node::new("gclive");
    let a = Pod::new("gclive");
    let b = Pod::new("gclive");
    let ra = node.add_ok(&a, "1.1.0");
    node.add_ok(&b, "1.1.0");
    let valid = json!([{"containerID": a.id, "ifname": "eth0"}]);
    Call::bare("GC", &gc_conf(&node, "cni.dev/valid-attachments", valid))
        .run(&node)
        .ok();
    assert_eq!(node.ip_files(), vec![result_ip(&ra).0]);
    assert!(a.ping("10.244.1.1"), "GC broke a listed pod");
}

/// A node whose cni0 still holds the gateway of its previous subnet.
fn node_with_old_bridge(tag: &str) -> Node {
    let node = Node::new(tag);
    node.ns
        .exec_ok(&["ip", "link", "add", "cni0", "type", "bridge"]);
    node.ns
        .exec_ok(&["ip", "addr", "add", "10.244.9.1/24", "dev", "cni0"]);
    node.ns.exec_ok(&["ip", "link", "set", "cni0", "up"]);
    node
}

#[test]
fn add_repairs_a_bridge_address_left_from_an_old_subnet() {
    let node = node_with_old_bridge("repair");
    let pod = Pod::new("repair");
    let r = node.add_ok(&pod, "1.0.0");
    assert_eq!(node.addrs("cni0"), vec!["10.244.1.1/24".to_string()]);
    assert_eq!(result_ip(&r).0, "10.244.1.2");
    assert!(pod.ping("10.244.1.1"), "gateway unreachable after repair");
}

#[test]
fn old_gateway_stays_beside_the_new_while_a_pod_uses_the_old_subnet() {
    let node = node_with_old_bridge("keepold");
    node.reserve("10.244.9.5", "old-pod", "eth0");
    let pod = Pod::new("keepold");
    let r = node.add_ok(&pod, "1.0.0");
    let mut addrs = node.addrs("cni0");
    addrs.sort();
    assert_eq!(
        addrs,
        vec!["10.244.1.1/24".to_string(), "10.244.9.1/24".to_string()]
    );
    assert_eq!(result_ip(&r).0, "10.244.1.2");
    assert!(pod.ping("10.244.1.1"), "new gateway unreachable");
    // The old pod goes: the next ADD drops the old subnet's gateway.
    node.release("10.244.9.5");
    let other = Pod::new("keepold");
    node.add_ok(&other, "1.0.0");
    assert_eq!(node.addrs("cni0"), vec!["10.244.1.1/24".to_string()]);
}

#[test]
fn chained_add_keeps_the_prev_result_and_appends_its_own() {
    let node = Node::new("chain");
    let pod = Pod::new("chain");
    let mut conf = node.conf("1.0.0");
    conf["prevResult"] = json!({
        "cniVersion": "1.0.0",
        "interfaces": [{"name": "prev0", "mac": "0a:00:00:00:00:01"}],
        "ips": [],
        "dns": {"nameservers": ["10.96.0.10"]}
    });
    let r = node.add(&pod, &conf).ok();
    let ifs = r["interfaces"].as_array().expect("interfaces");
    assert!(
        ifs.iter().any(|i| i["name"] == "prev0"),
        "prevResult interface dropped: {r:#}"
    );
    assert_eq!(ifs.len(), 4, "{r:#}");
    let idx = r["ips"][0]["interface"].as_u64().expect("ips[0].interface") as usize;
    assert_eq!(
        ifs[idx]["name"], "eth0",
        "ips[0] points at the wrong interface: {r:#}"
    );
    assert_eq!(ifs[idx]["sandbox"], pod.path().as_str(), "{r:#}");
    assert_eq!(
        r["dns"]["nameservers"],
        json!(["10.96.0.10"]),
        "prev DNS dropped: {r:#}"
    );
    assert_eq!(pod.addrs("eth0"), vec![result_ip(&r).1]);
}

#[test]
fn gc_works_before_the_daemon_wrote_the_subnet_file() {
    let node = Node::new("gcnosub");
    std::fs::remove_file(&node.subnet_file).unwrap();
    node.reserve("10.244.1.2", "keep-me", "eth0");
    node.reserve("10.244.1.3", "gone", "eth0");
    let valid = json!([{"containerID": "keep-me", "ifname": "eth0"}]);
    Call::bare("GC", &gc_conf(&node, "cni.dev/valid-attachments", valid))
        .run(&node)
        .ok();
    assert_eq!(node.ip_files(), vec!["10.244.1.2"]);
}

#[test]
fn add_adopts_an_existing_bridge_that_is_down_and_bare() {
    let node = Node::new("brdown");
    node.ns
        .exec_ok(&["ip", "link", "add", "cni0", "type", "bridge"]);
    let pod = Pod::new("brdown");
    node.add_ok(&pod, "1.0.0");
    assert_eq!(node.bridges(), vec!["cni0".to_string()]);
    assert_eq!(node.addrs("cni0"), vec!["10.244.1.1/24".to_string()]);
    assert!(
        pod.ping("10.244.1.1"),
        "gateway unreachable on the adopted bridge"
    );
    // docs/cni-plugin.md: an adopted bridge gets its MAC pinned too.
    let assign = node
        .ns
        .exec_ok(&["cat", "/sys/class/net/cni0/addr_assign_type"]);
    assert_eq!(assign.trim(), "3", "adopted bridge MAC not pinned");
}

#[test]
fn gc_deletes_orphan_ports_but_never_a_live_pods_veth() {
    let node = Node::new("gcveth");
    let live = Pod::new("gcveth");
    let r = node.add_ok(&live, "1.1.0");
    // A live pod whose interface is down (no carrier) is still live.
    live.ns.exec_ok(&["ip", "link", "set", "eth0", "down"]);
    // An orphan: a veth on the bridge whose other end is in no pod.
    node.ns.exec_ok(&[
        "ip",
        "link",
        "add",
        "vethdead0",
        "type",
        "veth",
        "peer",
        "name",
        "vethdead1",
    ]);
    node.ns
        .exec_ok(&["ip", "link", "set", "vethdead0", "master", "cni0"]);
    let valid = json!([{"containerID": live.id, "ifname": "eth0"}]);
    Call::bare("GC", &gc_conf(&node, "cni.dev/valid-attachments", valid))
        .run(&node)
        .ok();
    let veths = node.veths();
    assert!(
        veths.contains(&result_host_veth(&r)),
        "GC deleted a live pod's veth: {veths:?}"
    );
    assert!(
        !veths.contains(&"vethdead0".to_string()),
        "orphan kept: {veths:?}"
    );
    assert_eq!(node.ip_files(), vec![result_ip(&r).0]);
}
