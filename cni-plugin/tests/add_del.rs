//! ADD and DEL against the real kernel: what a pod and its node look like
//! after ADD (bridge, veth, addresses, routes, sysctls, IPAM files in
//! host-local's format), the result in every CNI version's format, ADD
//! failing cleanly, and DEL's idempotence in every "already gone" shape.

// Test helpers outside #[test] fns fail the test by panicking, like asserts.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use serde_json::{json, Value};
use std::os::unix::fs::PermissionsExt;
use support::*;

fn sysfs(ns: &felt_common::testutil::TestNetns, path: &str) -> String {
    ns.exec_ok(&["cat", path]).trim().to_string()
}

/// The result's shape for `version`, checked against the kernel.
fn assert_result(version: &str, r: &Value, node: &Node, pod: &Pod) {
    assert_eq!(r["cniVersion"], version, "{r:#}");
    let ifs = r["interfaces"].as_array().expect("interfaces");
    assert_eq!(ifs.len(), 3, "want [bridge, host veth, pod veth]: {r:#}");
    let bridge = node.link("cni0").expect("cni0 exists");
    assert_eq!(ifs[0]["name"], "cni0", "{r:#}");
    assert_eq!(ifs[0]["mac"], bridge["address"], "{r:#}");
    let host = result_host_veth(r);
    assert!(host.starts_with("veth"), "host veth name {host}");
    let host_link = node
        .link(&host)
        .unwrap_or_else(|| panic!("{host} not on node"));
    assert_eq!(ifs[1]["mac"], host_link["address"], "{r:#}");
    assert!(ifs[1].get("sandbox").is_none_or(|s| s == ""), "{r:#}");
    assert_eq!(ifs[2]["name"], "eth0", "{r:#}");
    assert_eq!(ifs[2]["sandbox"], pod.path().as_str(), "{r:#}");
    let eth0 = pod.link("eth0").expect("eth0 in pod");
    assert_eq!(ifs[2]["mac"], eth0["address"], "{r:#}");

    let ips = r["ips"].as_array().expect("ips");
    assert_eq!(ips.len(), 1, "{r:#}");
    assert_eq!(ips[0]["interface"], 2, "{r:#}");
    assert_eq!(ips[0]["gateway"], "10.244.1.1", "{r:#}");
    let (ip, cidr) = result_ip(r);
    assert!(
        ip.starts_with("10.244.1.") && cidr.ends_with("/24"),
        "{cidr}"
    );
    if version.starts_with("0.") {
        assert_eq!(
            ips[0]["version"], "4",
            "{version} needs ips[].version: {r:#}"
        );
    } else {
        assert!(
            ips[0].get("version").is_none(),
            "{version} has no ips[].version: {r:#}"
        );
    }
    let routes = r["routes"].as_array().expect("routes");
    assert!(
        routes.iter().any(|rt| rt["dst"] == "0.0.0.0/0"),
        "no default route in result: {r:#}"
    );
}

#[test]
fn add_result_has_each_versions_format() {
    let node = Node::new("fmt");
    for v in ALL_VERSIONS {
        let pod = Pod::new("fmt");
        let r = node.add_ok(&pod, v);
        assert_result(v, &r, &node, &pod);
        node.del(&pod, &node.conf(v)).ok();
    }
}

#[test]
fn add_builds_bridge_veth_addresses_routes_and_ipam_files() {
    let node = Node::new("add");
    let pod = Pod::new("add");
    let r = node.add_ok(&pod, "1.0.0");
    let (ip, cidr) = result_ip(&r);
    assert_eq!(ip, "10.244.1.2", "first IP of a fresh range is network+2");

    // Node: one bridge holding the gateway, one veth on it, hairpin on.
    assert_eq!(node.bridges(), vec!["cni0".to_string()]);
    assert_eq!(node.addrs("cni0"), vec!["10.244.1.1/24".to_string()]);
    let host = result_host_veth(&r);
    assert_eq!(node.veths(), vec![host.clone()]);
    let hl = node.link(&host).unwrap();
    assert_eq!(hl["master"], "cni0", "{hl:#}");
    assert_eq!(hl["mtu"], 1450, "{hl:#}");
    assert_eq!(hl["linkinfo"]["info_slave_data"]["hairpin"], true, "{hl:#}");
    assert_eq!(hl["operstate"], "UP", "{hl:#}");
    assert_eq!(node.sysctl("net.ipv4.ip_forward"), "1");
    let accept_ra = node.sysctl("net.ipv6.conf.cni0.accept_ra");
    assert_eq!(
        accept_ra, "0",
        "the bridge must not take router advertisements"
    );

    // Pod: eth0 up with the address, MTU from subnet.env, default route.
    let eth0 = pod.link("eth0").unwrap();
    assert_eq!(eth0["mtu"], 1450, "{eth0:#}");
    assert_eq!(eth0["operstate"], "UP", "{eth0:#}");
    assert_eq!(pod.addrs("eth0"), vec![cidr]);
    let def = pod.default_route().expect("default route in pod");
    assert_eq!(def["gateway"], "10.244.1.1", "{def:#}");
    assert_eq!(def["dev"], "eth0", "{def:#}");
    assert_eq!(pod.sysctl("net.ipv4.conf.eth0.arp_notify"), "1");

    // IPAM: host-local's files, byte for byte.
    let file = node.ip_dir().join(&ip);
    let content = std::fs::read(&file).unwrap();
    assert_eq!(content, format!("{}\r\neth0", pod.id).into_bytes());
    let mode = std::fs::metadata(&file).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "IP file mode {mode:o}");
    let last = std::fs::read_to_string(node.ip_dir().join("last_reserved_ip.0")).unwrap();
    assert_eq!(last.trim(), ip);
    assert!(node.ip_dir().join("lock").exists(), "no lock file");
}

#[test]
fn bridge_mac_is_pinned_while_ports_come_and_go() {
    let node = Node::new("mac");
    let pods: Vec<Pod> = (0..3).map(|_| Pod::new("mac")).collect();
    node.add_ok(&pods[0], "1.0.0");
    let mac = node.link("cni0").unwrap()["address"].clone();
    node.add_ok(&pods[1], "1.0.0");
    node.add_ok(&pods[2], "1.0.0");
    node.del(&pods[0], &node.conf("1.0.0")).ok();
    assert_eq!(
        node.link("cni0").unwrap()["address"],
        mac,
        "bridge MAC moved"
    );
    // 3 = NET_ADDR_SET: the kernel will not replace it with a port's MAC.
    assert_eq!(sysfs(&node.ns, "/sys/class/net/cni0/addr_assign_type"), "3");
}

#[test]
fn del_removes_veth_and_releases_ip_and_is_idempotent() {
    let node = Node::new("del");
    let pod = Pod::new("del");
    let r = node.add_ok(&pod, "1.0.0");
    let mut conf = node.conf("1.0.0");
    conf["prevResult"] = r;
    node.del(&pod, &conf).ok();
    assert!(pod.link("eth0").is_none(), "eth0 still in pod");
    assert!(node.veths().is_empty(), "veth left: {:?}", node.veths());
    assert!(node.ip_files().is_empty(), "IP left: {:?}", node.ip_files());
    node.del(&pod, &conf).ok();
    node.del(&pod, &node.conf("0.3.1")).ok();
}

#[test]
fn del_of_a_container_never_added_succeeds() {
    let node = Node::new("delnone");
    let pod = Pod::new("delnone");
    node.del(&pod, &node.conf("1.0.0")).ok();
    assert!(node.veths().is_empty());
}

#[test]
fn del_after_the_netns_is_gone_releases_the_ip() {
    let node = Node::new("delns");
    let pod = Pod::new("delns");
    node.add_ok(&pod, "1.0.0");
    felt_common::testutil::run_ok("ip", &["netns", "del", &pod.ns.name]);
    node.del(&pod, &node.conf("1.0.0")).ok();
    assert!(node.ip_files().is_empty(), "IP left: {:?}", node.ip_files());
    // The kernel destroys a dead netns (and so the veth pair) asynchronously.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while !node.veths().is_empty() && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    assert!(node.veths().is_empty(), "veth left: {:?}", node.veths());
    node.del(&pod, &node.conf("1.0.0")).ok();
}

#[test]
fn del_with_empty_cni_netns_releases_the_ip() {
    let node = Node::new("delempty");
    let pod = Pod::new("delempty");
    node.add_ok(&pod, "1.0.0");
    Call::pod("DEL", &node.conf("1.0.0"), &pod, "eth0")
        .env("CNI_NETNS", "")
        .run(&node)
        .ok();
    assert!(node.ip_files().is_empty(), "IP left: {:?}", node.ip_files());
}

#[test]
fn del_when_the_veth_is_already_gone_releases_the_ip() {
    let node = Node::new("delveth");
    let pod = Pod::new("delveth");
    node.add_ok(&pod, "1.0.0");
    pod.ns.exec_ok(&["ip", "link", "del", "eth0"]);
    node.del(&pod, &node.conf("1.0.0")).ok();
    assert!(node.ip_files().is_empty(), "IP left: {:?}", node.ip_files());
    assert!(node.veths().is_empty(), "veth left: {:?}", node.veths());
}

#[test]
fn del_releases_only_its_own_container() {
    let node = Node::new("delown");
    let a = Pod::new("delown");
    let b = Pod::new("delown");
    let ra = node.add_ok(&a, "1.0.0");
    node.add_ok(&b, "1.0.0");
    node.del(&b, &node.conf("1.0.0")).ok();
    assert_eq!(node.ip_files(), vec![result_ip(&ra).0]);
    assert_eq!(node.veths(), vec![result_host_veth(&ra)]);
    assert!(a.ping("10.244.1.1"), "pod a lost its network");
}

#[test]
fn add_on_an_existing_ifname_fails_and_leaves_the_pod_alone() {
    let node = Node::new("dup");
    let pod = Pod::new("dup");
    let r = node.add_ok(&pod, "1.0.0");
    let (ip, cidr) = result_ip(&r);
    for id in [pod.id.clone(), format!("{}-again", pod.id)] {
        Call::pod("ADD", &node.conf("1.0.0"), &pod, "eth0")
            .env("CNI_CONTAINERID", &id)
            .run(&node)
            .err_code(102);
        assert_eq!(pod.addrs("eth0"), vec![cidr.clone()]);
        assert!(pod.default_route().is_some(), "default route lost");
        assert_eq!(node.veths(), vec![result_host_veth(&r)]);
        assert_eq!(node.ip_files(), vec![ip.clone()]);
        assert!(pod.ping("10.244.1.1"), "pod lost its network");
    }
}

#[test]
fn del_after_a_reboot_without_subnet_file_still_releases_the_ip() {
    // After a reboot /run/flannel/subnet.env is gone until the daemon is
    // back, and the runtime cleans up old pods first.
    let node = Node::new("delnosub");
    let pod = Pod::new("delnosub");
    node.add_ok(&pod, "1.0.0");
    std::fs::remove_file(&node.subnet_file).unwrap();
    node.del(&pod, &node.conf("1.0.0")).ok();
    assert!(node.ip_files().is_empty(), "IP left: {:?}", node.ip_files());
    assert!(node.veths().is_empty(), "veth left: {:?}", node.veths());
}

#[test]
fn same_container_and_ifname_in_another_netns_is_refused() {
    let node = Node::new("dupid");
    let a = Pod::new("dupid");
    let b = Pod::new("dupid");
    let ra = node.add_ok(&a, "1.0.0");
    Call::pod("ADD", &node.conf("1.0.0"), &b, "eth0")
        .env("CNI_CONTAINERID", &a.id)
        .run(&node)
        .err_code(101);
    assert_eq!(node.ip_files(), vec![result_ip(&ra).0]);
    assert!(b.link("eth0").is_none(), "eth0 left in second netns");
    assert_eq!(node.veths(), vec![result_host_veth(&ra)]);
    assert!(a.ping("10.244.1.1"), "first pod lost its network");
}

#[test]
fn two_interfaces_in_one_pod_are_separate_attachments() {
    let node = Node::new("multi");
    let pod = Pod::new("multi");
    let conf = node.conf("1.0.0");
    // The second attachment must not add a second default route.
    let mut conf1 = node.conf("1.0.0");
    conf1["isDefaultGateway"] = json!(false);
    let r0 = Call::pod("ADD", &conf, &pod, "eth0").run(&node).ok();
    let r1 = Call::pod("ADD", &conf1, &pod, "net1").run(&node).ok();
    let (ip0, ip1) = (result_ip(&r0).0, result_ip(&r1).0);
    assert_ne!(ip0, ip1);
    assert_eq!(node.veths().len(), 2);
    Call::pod("DEL", &conf1, &pod, "net1").run(&node).ok();
    assert!(pod.link("net1").is_none(), "net1 not deleted");
    assert_eq!(pod.addrs("eth0"), vec![result_ip(&r0).1]);
    assert_eq!(node.ip_files(), vec![ip0]);
    let owner = std::fs::read_to_string(node.ip_dir().join(result_ip(&r0).0)).unwrap();
    assert_eq!(owner, format!("{}\r\neth0", pod.id));
}

#[test]
fn a_non_bridge_link_named_like_the_bridge_is_a_clear_error() {
    // A veth: its module creates no devices of its own when loaded (ifb or
    // dummy would add ifb0/dummy0 to the root namespace on some kernels).
    let node = Node::new("notbr");
    node.ns.exec_ok(&[
        "ip", "link", "add", "cni0", "type", "veth", "peer", "name", "cni0peer",
    ]);
    let pod = Pod::new("notbr");
    let text = node.add(&pod, &node.conf("1.0.0")).err_code(7);
    assert!(text.contains("cni0"), "error does not name cni0: {text}");
    assert_eq!(node.link("cni0").unwrap()["linkinfo"]["info_kind"], "veth");
    assert!(node.ip_files().is_empty(), "IP left: {:?}", node.ip_files());
    assert_eq!(node.veths().len(), 2, "new veth left: {:?}", node.veths());
    assert!(pod.link("eth0").is_none(), "eth0 left in pod");
}

#[test]
fn a_fifteen_character_ifname_is_accepted() {
    let node = Node::new("if15");
    let pod = Pod::new("if15");
    let r = Call::pod("ADD", &node.conf("1.0.0"), &pod, "abcdefghijklmno")
        .run(&node)
        .ok();
    assert_eq!(pod.addrs("abcdefghijklmno"), vec![result_ip(&r).1]);
    Call::pod("DEL", &node.conf("1.0.0"), &pod, "abcdefghijklmno")
        .run(&node)
        .ok();
    assert!(node.ip_files().is_empty(), "IP left: {:?}", node.ip_files());
}

#[test]
fn a_proc_pid_netns_path_works_like_a_bind_mount() {
    // Docker-style runtimes pass /proc/<pid>/ns/net instead of /run/netns/x.
    let node = Node::new("procns");
    let pod = Pod::new("procns");
    let mut sleeper = pod.ns.command("sleep");
    sleeper.arg("60");
    let guard = felt_common::testutil::ChildGuard::spawn(sleeper, "sleep in pod");
    // `ip netns exec` execs into sleep, so the pid is the sleeper's own.
    let path = format!("/proc/{}/ns/net", guard.pid());
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    let pod_ino = std::fs::metadata(pod.path())
        .map(|m| std::os::unix::fs::MetadataExt::ino(&m))
        .unwrap();
    while std::fs::metadata(&path)
        .map(|m| std::os::unix::fs::MetadataExt::ino(&m))
        .ok()
        != Some(pod_ino)
    {
        assert!(
            std::time::Instant::now() < deadline,
            "sleeper never entered the pod netns"
        );
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    let r = Call::pod("ADD", &node.conf("1.0.0"), &pod, "eth0")
        .env("CNI_NETNS", &path)
        .run(&node)
        .ok();
    assert_eq!(pod.addrs("eth0"), vec![result_ip(&r).1]);
    Call::pod("DEL", &node.conf("1.0.0"), &pod, "eth0")
        .env("CNI_NETNS", &path)
        .run(&node)
        .ok();
    assert!(pod.link("eth0").is_none(), "eth0 left in pod");
    assert!(node.ip_files().is_empty(), "IP left: {:?}", node.ip_files());
}

#[test]
fn a_real_kernel_failure_late_in_add_rolls_back() {
    // A route whose gateway is not on-link makes the kernel refuse it:
    // the last step of ADD fails for real, not through the test hook.
    let node = Node::new("kfail");
    let pod = Pod::new("kfail");
    let mut conf = node.conf("1.0.0");
    conf["ipam"] = json!({
        "ranges": [[{"subnet": "10.244.1.0/24"}]],
        "routes": [{"dst": "192.168.5.0/24", "gw": "10.99.99.1"}]
    });
    let text = node.add(&pod, &conf).err_code(110);
    assert!(
        text.contains("192.168.5.0/24"),
        "error does not name the route: {text}"
    );
    assert!(node.veths().is_empty(), "veth left: {:?}", node.veths());
    assert!(pod.link("eth0").is_none(), "eth0 left in pod");
    assert!(node.ip_files().is_empty(), "IP left: {:?}", node.ip_files());
}

#[test]
fn an_mtu_the_kernel_refuses_fails_without_leftovers() {
    let node = Node::new("badmtu");
    let pod = Pod::new("badmtu");
    let mut conf = node.conf("1.0.0");
    conf["mtu"] = json!(70000);
    node.add(&pod, &conf).err();
    assert!(node.veths().is_empty(), "veth left: {:?}", node.veths());
    assert!(pod.link("eth0").is_none(), "eth0 left in pod");
    assert!(node.ip_files().is_empty(), "IP left: {:?}", node.ip_files());
}

#[test]
fn a_node_link_named_like_the_pod_interface_does_not_matter() {
    // Every real node has an eth0; the pod's eth0 must still be made.
    let node = Node::new("nodeeth0");
    node.ns.exec_ok(&[
        "ip", "link", "add", "eth0", "type", "veth", "peer", "name", "eth0peer",
    ]);
    let pod = Pod::new("nodeeth0");
    let r = node.add_ok(&pod, "1.0.0");
    assert_eq!(pod.addrs("eth0"), vec![result_ip(&r).1]);
    assert!(node.link("eth0").is_some(), "the node's own eth0 is gone");
    node.del(&pod, &node.conf("1.0.0")).ok();
    assert!(
        node.link("eth0").is_some(),
        "DEL removed the node's own eth0"
    );
}

#[test]
fn dual_stack_subnet_file_gives_the_pod_both_families() {
    let env = "FLANNEL_NETWORK=10.244.0.0/16\nFLANNEL_SUBNET=10.244.1.1/24\n\
               FLANNEL_IPV6_NETWORK=fd00:10:244::/56\nFLANNEL_IPV6_SUBNET=fd00:10:244:1::1/64\n\
               FLANNEL_MTU=1450\nFLANNEL_IPMASQ=true\n";
    let node = Node::with_subnet_env("dual", env);
    let pod = Pod::new("dual");
    for v in ["0.3.1", "1.0.0"] {
        let r = node.add_ok(&pod, v);
        let ips = r["ips"].as_array().expect("ips");
        assert_eq!(ips.len(), 2, "{r:#}");
        let v6 = ips
            .iter()
            .find(|i| i["address"].as_str().is_some_and(|a| a.contains(':')))
            .unwrap_or_else(|| panic!("no IPv6 address: {r:#}"));
        assert_eq!(v6["gateway"], "fd00:10:244:1::1", "{r:#}");
        assert_eq!(v6["interface"], 2, "{r:#}");
        if v == "0.3.1" {
            assert_eq!(v6["version"], "6", "{r:#}");
        }
        let addr6 = v6["address"]
            .as_str()
            .unwrap()
            .split('/')
            .next()
            .unwrap()
            .to_string();
        let shown = pod.ns.exec_ok(&["ip", "-6", "addr", "show", "dev", "eth0"]);
        assert!(shown.contains(&addr6), "{addr6} not on eth0: {shown}");
        let default6 = pod.ns.exec_ok(&["ip", "-6", "route", "show", "default"]);
        assert!(
            default6.contains("fd00:10:244:1::1"),
            "no IPv6 default route: {default6}"
        );
        let ping6 = pod
            .ns
            .exec(&["ping", "-6", "-n", "-c1", "-W1", "fd00:10:244:1::1"]);
        assert!(ping6.status.success(), "IPv6 gateway unreachable");
        node.del(&pod, &node.conf(v)).ok();
        assert!(
            node.ip_files().is_empty(),
            "IPs left: {:?}",
            node.ip_files()
        );
    }
}

#[test]
fn add_right_after_del_of_the_same_interface_succeeds() {
    // A runtime may re-create the same attachment as soon as DEL returns:
    // nothing of the old interface may still be in the way.
    let node = Node::new("readd");
    let pod = Pod::new("readd");
    let conf = node.conf("1.0.0");
    for round in 0..10 {
        let r = node.add(&pod, &conf);
        assert_eq!(r.exit, 0, "round {round}: {r:#?}");
        node.del(&pod, &conf).ok();
        assert!(
            pod.link("eth0").is_none(),
            "round {round}: eth0 still there after DEL"
        );
    }
    let r = node.add_ok(&pod, "1.0.0");
    assert_eq!(node.veths(), vec![result_host_veth(&r)]);
    assert_eq!(node.ip_files(), vec![result_ip(&r).0]);
    assert!(pod.ping("10.244.1.1"), "pod unreachable after re-adds");
}
