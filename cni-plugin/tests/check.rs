//! CHECK compares the pod with the prevResult the runtime cached from ADD:
//! an intact pod passes, and each kind of drift fails with a message that
//! names what differs.

// Test helpers outside #[test] fns fail the test by panicking, like asserts.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use support::*;

fn added(tag: &str, version: &str) -> (Node, Pod, serde_json::Value) {
    let node = Node::new(tag);
    let pod = Pod::new(tag);
    let r = node.add_ok(&pod, version);
    (node, pod, r)
}

#[test]
fn check_passes_on_an_intact_pod_in_each_version_that_has_check() {
    for v in ["0.4.0", "1.0.0", "1.1.0"] {
        let (node, pod, r) = added("chkok", v);
        let out = node.check(&pod, v, &r);
        out.ok();
        assert!(
            out.stdout.trim().is_empty(),
            "CHECK prints nothing on success: {out:#?}"
        );
    }
}

#[test]
fn check_fails_naming_a_deleted_default_route() {
    let (node, pod, r) = added("chkrt", "1.0.0");
    pod.ns.exec_ok(&["ip", "route", "del", "default"]);
    let text = node.check(&pod, "1.0.0", &r).err_code(103).to_lowercase();
    assert!(
        text.contains("route") || text.contains("0.0.0.0/0") || text.contains("default"),
        "CHECK error does not name the route: {text}"
    );
}

#[test]
fn check_fails_naming_a_deleted_address() {
    let (node, pod, r) = added("chkaddr", "1.0.0");
    let (ip, cidr) = result_ip(&r);
    pod.ns.exec_ok(&["ip", "addr", "del", &cidr, "dev", "eth0"]);
    let text = node.check(&pod, "1.0.0", &r).err_code(103);
    assert!(text.contains(&ip), "CHECK error does not name {ip}: {text}");
}

#[test]
fn check_fails_naming_a_missing_interface() {
    let (node, pod, r) = added("chkif", "1.0.0");
    // Deleting the host end takes the pod end with it.
    node.ns
        .exec_ok(&["ip", "link", "del", &result_host_veth(&r)]);
    let text = node.check(&pod, "1.0.0", &r).err_code(103);
    assert!(
        text.contains("eth0"),
        "CHECK error does not name eth0: {text}"
    );
}

#[test]
fn check_fails_when_the_host_veth_left_the_bridge() {
    let (node, pod, r) = added("chkbr", "1.0.0");
    let host = result_host_veth(&r);
    node.ns.exec_ok(&["ip", "link", "set", &host, "nomaster"]);
    let text = node.check(&pod, "1.0.0", &r).err_code(103);
    assert!(
        text.contains(&host) || text.contains("cni0"),
        "CHECK error names neither {host} nor cni0: {text}"
    );
}

#[test]
fn check_is_refused_for_a_0_3_1_config() {
    // CHECK does not exist before 0.4.0: incompatible version (1).
    let (node, pod, r) = added("chk031", "0.3.1");
    node.check(&pod, "0.3.1", &r).err_code(1);
}

#[test]
fn check_fails_naming_an_address_whose_reservation_is_gone() {
    // host-local's CHECK: the address must still be reserved for this
    // container, or the next ADD may hand it to another pod.
    let (node, pod, r) = added("chkipam", "1.0.0");
    let (ip, _) = result_ip(&r);
    std::fs::remove_file(node.ip_dir().join(&ip)).unwrap();
    let text = node.check(&pod, "1.0.0", &r).err_code(103);
    assert!(text.contains(&ip), "CHECK error does not name {ip}: {text}");
}
