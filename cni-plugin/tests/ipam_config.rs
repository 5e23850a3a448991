//! Config knobs and IPAM: subnet.env and explicit overrides (bridge,
//! MTU, hairpin, gateway, DNS, ipMasq, ipam ranges), pinned IPs and MACs
//! (runtimeConfig, CNI_ARGS), and allocation in host-local's format and
//! order, including what flannel's host-local left on an upgraded node.

// Test helpers outside #[test] fns fail the test by panicking, like asserts.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use serde_json::json;
use support::*;

#[test]
fn allocation_continues_after_a_reservation_left_by_host_local() {
    let node = Node::new("rr");
    // State as flannel's bridge + host-local leave it on an upgraded node.
    node.reserve("10.244.1.51", "flannel-pod", "eth0");
    std::fs::write(node.ip_dir().join("last_reserved_ip.0"), "10.244.1.50").unwrap();
    let a = Pod::new("rr");
    let b = Pod::new("rr");
    assert_eq!(result_ip(&node.add_ok(&a, "1.0.0")).0, "10.244.1.52");
    node.del(&a, &node.conf("1.0.0")).ok();
    // Round-robin: a freed IP is not handed out again right away.
    assert_eq!(result_ip(&node.add_ok(&b, "1.0.0")).0, "10.244.1.53");
    assert_eq!(node.ip_files(), vec!["10.244.1.51", "10.244.1.53"]);
}

#[test]
fn subnet_file_sets_subnet_gateway_and_mtu() {
    let env = "FLANNEL_NETWORK=10.50.0.0/16\nFLANNEL_SUBNET=10.50.7.1/24\n\
               FLANNEL_MTU=1380\nFLANNEL_IPMASQ=false\n";
    let node = Node::with_subnet_env("senv", env);
    let pod = Pod::new("senv");
    let r = node.add_ok(&pod, "1.0.0");
    assert_eq!(result_ip(&r).1, "10.50.7.2/24");
    assert_eq!(r["ips"][0]["gateway"], "10.50.7.1");
    assert_eq!(node.addrs("cni0"), vec!["10.50.7.1/24".to_string()]);
    assert_eq!(pod.link("eth0").unwrap()["mtu"], 1380);
    assert_eq!(pod.default_route().unwrap()["gateway"], "10.50.7.1");
}

#[test]
fn config_overrides_bridge_mtu_hairpin_gateway_and_dns() {
    let node = Node::new("knobs");
    let pod = Pod::new("knobs");
    let mut conf = node.conf("1.0.0");
    conf["bridge"] = json!("felt-br0");
    conf["mtu"] = json!(1400);
    conf["hairpinMode"] = json!(false);
    conf["isDefaultGateway"] = json!(false);
    conf["dns"] = json!({"nameservers": ["10.96.0.10"], "search": ["svc.cluster.local"]});
    let r = node.add(&pod, &conf).ok();
    assert_eq!(node.bridges(), vec!["felt-br0".to_string()]);
    assert_eq!(r["interfaces"][0]["name"], "felt-br0");
    let host = node.link(&result_host_veth(&r)).unwrap();
    assert_eq!(host["master"], "felt-br0");
    assert_eq!(host["mtu"], 1400);
    assert_eq!(
        host["linkinfo"]["info_slave_data"]["hairpin"], false,
        "{host:#}"
    );
    assert_eq!(pod.link("eth0").unwrap()["mtu"], 1400);
    assert!(
        pod.default_route().is_none(),
        "isDefaultGateway=false: {:?}",
        pod.routes()
    );
    assert_eq!(r["dns"]["nameservers"], json!(["10.96.0.10"]), "{r:#}");
    assert_eq!(r["dns"]["search"], json!(["svc.cluster.local"]), "{r:#}");
}

#[test]
fn runtime_config_pins_ip_and_mac() {
    let node = Node::new("rtc");
    let pod = Pod::new("rtc");
    let mut conf = node.conf("1.0.0");
    conf["runtimeConfig"] = json!({"ips": ["10.244.1.77/24"], "mac": "0a:58:0a:f4:01:4d"});
    let r = node.add(&pod, &conf).ok();
    assert_eq!(result_ip(&r).1, "10.244.1.77/24");
    assert_eq!(pod.addrs("eth0"), vec!["10.244.1.77/24".to_string()]);
    assert_eq!(pod.link("eth0").unwrap()["address"], "0a:58:0a:f4:01:4d");
    assert_eq!(r["interfaces"][2]["mac"], "0a:58:0a:f4:01:4d");
    assert_eq!(node.ip_files(), vec!["10.244.1.77"]);
}

#[test]
fn cni_args_pin_ip_and_mac_and_unknown_keys_are_ignored() {
    let node = Node::new("args");
    let pod = Pod::new("args");
    let args = "IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME=web-0;\
                IP=10.244.1.88;MAC=0a:58:0a:f4:01:58";
    let r = Call::pod("ADD", &node.conf("0.4.0"), &pod, "eth0")
        .env("CNI_ARGS", args)
        .run(&node)
        .ok();
    assert_eq!(result_ip(&r).1, "10.244.1.88/24");
    assert_eq!(pod.addrs("eth0"), vec!["10.244.1.88/24".to_string()]);
    assert_eq!(pod.link("eth0").unwrap()["address"], "0a:58:0a:f4:01:58");
}

#[test]
fn requested_ip_already_taken_fails_without_leftovers() {
    let node = Node::new("taken");
    node.reserve("10.244.1.88", "someone-else", "eth0");
    let pod = Pod::new("taken");
    Call::pod("ADD", &node.conf("1.0.0"), &pod, "eth0")
        .env("CNI_ARGS", "IgnoreUnknown=1;IP=10.244.1.88")
        .run(&node)
        .err_code(105);
    assert_eq!(node.ip_files(), vec!["10.244.1.88"]);
    let owner = std::fs::read_to_string(node.ip_dir().join("10.244.1.88")).unwrap();
    assert!(
        owner.starts_with("someone-else"),
        "reservation overwritten: {owner:?}"
    );
    assert!(node.veths().is_empty(), "veth left: {:?}", node.veths());
    assert!(pod.link("eth0").is_none(), "eth0 left in pod");
}

#[test]
fn ipam_subnet_override_replaces_the_subnet_file_range() {
    let node = Node::new("ipamsub");
    let pod = Pod::new("ipamsub");
    let mut conf = node.conf("1.0.0");
    conf["ipam"] = json!({"subnet": "10.244.3.0/24"});
    let r = node.add(&pod, &conf).ok();
    let (_, cidr) = result_ip(&r);
    assert!(
        cidr.starts_with("10.244.3.") && cidr.ends_with("/24"),
        "{cidr}"
    );
    assert_eq!(r["ips"][0]["gateway"], "10.244.3.1");
    assert!(
        pod.ping("10.244.3.1"),
        "gateway of the override subnet unreachable"
    );
}

#[test]
fn exhausted_range_says_no_ip_addresses_available_and_leaves_nothing() {
    let node = Node::new("full");
    let mut conf = node.conf("1.0.0");
    // A /29: .1 is the gateway, .7 broadcast, so .2-.6 are the 5 pod IPs.
    conf["ipam"] = json!({"ranges": [[{"subnet": "10.244.1.0/29"}]]});
    let pods: Vec<Pod> = (0..6).map(|_| Pod::new("full")).collect();
    let mut ips = Vec::new();
    for pod in &pods[..5] {
        ips.push(result_ip(&node.add(pod, &conf).ok()).0);
    }
    ips.sort();
    let want: Vec<String> = (2..=6).map(|i| format!("10.244.1.{i}")).collect();
    assert_eq!(ips, want);
    let text = node.add(&pods[5], &conf).err_code(100);
    assert!(text.contains("no IP addresses available"), "{text}");
    assert!(pods[5].link("eth0").is_none(), "eth0 left in pod");
    assert_eq!(
        node.veths().len(),
        5,
        "veth left by failed ADD: {:?}",
        node.veths()
    );
    assert_eq!(node.ip_files(), want);
}

fn nft_ruleset(node: &Node) -> String {
    node.ns.exec_ok(&["nft", "list", "ruleset"])
}

#[test]
fn ip_masq_follows_flannel_semantics() {
    // FLANNEL_IPMASQ=true: overlayd masquerades, so the plugin must not.
    let node = Node::new("nomasq");
    let pod = Pod::new("nomasq");
    node.add_ok(&pod, "1.0.0");
    assert!(
        !nft_ruleset(&node).contains("masquerade"),
        "{}",
        nft_ruleset(&node)
    );

    // ipMasq: true in the config: pod traffic leaving the cluster is masqueraded.
    let node = Node::new("masq");
    let pod = Pod::new("masq");
    let mut conf = node.conf("1.0.0");
    conf["ipMasq"] = json!(true);
    node.add(&pod, &conf).ok();
    let rules = nft_ruleset(&node);
    assert!(
        rules.contains("masquerade") && rules.contains("10.244.1.0/24"),
        "no masquerade for the pod subnet: {rules}"
    );
}

#[test]
fn range_start_and_end_bound_the_allocation() {
    let node = Node::new("bounds");
    let mut conf = node.conf("1.0.0");
    conf["ipam"] = json!({"ranges": [[{
        "subnet": "10.244.1.0/24", "rangeStart": "10.244.1.100", "rangeEnd": "10.244.1.101"
    }]]});
    let pods: Vec<Pod> = (0..3).map(|_| Pod::new("bounds")).collect();
    assert_eq!(result_ip(&node.add(&pods[0], &conf).ok()).0, "10.244.1.100");
    assert_eq!(result_ip(&node.add(&pods[1], &conf).ok()).0, "10.244.1.101");
    let text = node.add(&pods[2], &conf).err_code(100);
    assert!(text.contains("no IP addresses available"), "{text}");
    // The gateway is still network + 1 even though it is outside the range.
    assert_eq!(node.addrs("cni0"), vec!["10.244.1.1/24".to_string()]);
}

#[test]
fn requested_ip_outside_the_range_fails_without_leftovers() {
    let node = Node::new("outside");
    let pod = Pod::new("outside");
    let mut conf = node.conf("1.0.0");
    conf["runtimeConfig"] = json!({"ips": ["192.168.77.5/24"]});
    let text = node.add(&pod, &conf).err_code(105);
    assert!(
        text.contains("192.168.77.5"),
        "error does not name the IP: {text}"
    );
    assert!(node.ip_files().is_empty(), "IP left: {:?}", node.ip_files());
    assert!(node.veths().is_empty(), "veth left: {:?}", node.veths());
    assert!(pod.link("eth0").is_none(), "eth0 left in pod");
}

#[test]
fn del_releases_a_reservation_in_the_legacy_id_only_format() {
    // host-local before 0.8 wrote just the container ID; upgraded nodes
    // still have such files and DEL must release them.
    let node = Node::new("legacy");
    let pod = Pod::new("legacy");
    std::fs::create_dir_all(node.ip_dir()).unwrap();
    std::fs::write(node.ip_dir().join("10.244.1.40"), &pod.id).unwrap();
    node.reserve("10.244.1.41", "other-pod", "eth0");
    node.del(&pod, &node.conf("1.0.0")).ok();
    assert_eq!(node.ip_files(), vec!["10.244.1.41"]);
}

#[test]
fn last_reserved_ip_from_an_old_subnet_does_not_block_allocation() {
    let node = Node::new("oldlast");
    std::fs::create_dir_all(node.ip_dir()).unwrap();
    std::fs::write(node.ip_dir().join("last_reserved_ip.0"), "10.244.9.77").unwrap();
    let pod = Pod::new("oldlast");
    assert_eq!(result_ip(&node.add_ok(&pod, "1.0.0")).0, "10.244.1.2");
}

#[test]
fn allocation_wraps_around_to_freed_addresses() {
    let node = Node::new("wrap");
    let mut conf = node.conf("1.0.0");
    conf["ipam"] = json!({"ranges": [[{"subnet": "10.244.1.0/29"}]]});
    let pods: Vec<Pod> = (0..6).map(|_| Pod::new("wrap")).collect();
    for pod in &pods[..5] {
        node.add(pod, &conf).ok();
    }
    // Free 10.244.1.3 (second pod); the iterator is at .6, wraps, finds it.
    node.del(&pods[1], &conf).ok();
    assert_eq!(result_ip(&node.add(&pods[5], &conf).ok()).0, "10.244.1.3");
}

#[test]
fn ipam_gateway_setting_moves_the_gateway() {
    let node = Node::new("gw");
    let pod = Pod::new("gw");
    let mut conf = node.conf("1.0.0");
    conf["ipam"] = json!({"ranges": [[{"subnet": "10.244.1.0/24", "gateway": "10.244.1.254"}]]});
    let r = node.add(&pod, &conf).ok();
    assert_eq!(r["ips"][0]["gateway"], "10.244.1.254", "{r:#}");
    assert_eq!(node.addrs("cni0"), vec!["10.244.1.254/24".to_string()]);
    assert_eq!(pod.default_route().unwrap()["gateway"], "10.244.1.254");
    assert!(pod.ping("10.244.1.254"), "custom gateway unreachable");
}
