//! The vxlan device on a real kernel, inside throwaway namespaces:
//! attributes, stable MAC, in-place fixes, adopt vs recreate.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod backend_util;

use backend_util::*;
use overlayd::backend::vxlan::VxlanBackend;
use overlayd::backend::{Backend, ExternalInterface, Prepared};
use overlayd::config::VxlanConfig;

/// prepare() (and configure_own() when `own` is given) in the namespace.
fn prepare(node: &Node, cfg: VxlanConfig, own: Option<&str>) -> Prepared {
    let ext: ExternalInterface = node.ext.clone();
    let own = own.map(|s| {
        lease(
            s,
            &ext.public_ip.to_string(),
            "vxlan",
            serde_json::Value::Null,
        )
    });
    block_in(&node.ns, move || async move {
        let mut b = VxlanBackend::new(cfg).unwrap();
        let p = b.prepare(&ext).await.unwrap();
        if let Some(own) = own {
            b.configure_own(&own).await.unwrap();
        }
        p
    })
}

#[test]
fn device_has_flannel_attributes_address_and_is_up() {
    let node = single_node("vxattr", "192.168.50.1/24");
    let p = prepare(&node, vxlan_cfg(), Some("10.244.1.0/24"));
    let link = link_json(&node.ns, "flannel.1");
    let info = &link["linkinfo"]["info_data"];
    assert_eq!(link["linkinfo"]["info_kind"], "vxlan");
    assert_eq!(info["id"], 1);
    assert_eq!(info["local"], "192.168.50.1");
    assert_eq!(info["link"], "e0");
    assert_eq!(info["port"], 8472);
    assert_eq!(info["learning"], false);
    assert!(info.get("gbp").is_none(), "gbp must be off: {info}");
    assert_eq!(link["mtu"], 1450);
    assert_eq!(p.mtu, 1450);
    assert_eq!(p.backend_data["VNI"], 1);
    assert_eq!(link["address"], p.backend_data["VtepMAC"]);
    let flags: Vec<String> = serde_json::from_value(link["flags"].clone()).unwrap();
    assert!(flags.contains(&"UP".to_string()), "{flags:?}");
    let addrs = json(
        &node.ns,
        &["ip", "-j", "-4", "addr", "show", "dev", "flannel.1"],
    );
    let info = &addrs[0]["addr_info"];
    assert_eq!(info.as_array().unwrap().len(), 1, "{info}");
    assert_eq!(info[0]["local"], "10.244.1.0");
    assert_eq!(info[0]["prefixlen"], 32);
    // No router advertisements accepted on the VTEP.
    let ra = node
        .ns
        .exec_ok(&["cat", "/proc/sys/net/ipv6/conf/flannel.1/accept_ra"]);
    assert_eq!(ra.trim(), "0");
}

#[test]
fn options_port_gbp_learning_mtu_are_applied() {
    let node = single_node("vxopt", "192.168.50.1/24");
    let cfg = VxlanConfig {
        vni: 4097,
        port: 4789,
        mtu: Some(1400),
        gbp: true,
        learning: true,
        direct_routing: false,
    };
    prepare(&node, cfg, None);
    let link = link_json(&node.ns, "flannel.4097");
    let info = &link["linkinfo"]["info_data"];
    assert_eq!(
        (info["id"].clone(), info["port"].clone()),
        (4097.into(), 4789.into())
    );
    assert_eq!(info["learning"], true);
    assert_eq!(info["gbp"], true);
    assert_eq!(link["mtu"], 1400);
}

#[test]
fn mac_is_the_same_after_the_device_is_deleted_and_recreated() {
    let node = single_node("vxmac", "192.168.50.1/24");
    let first = prepare(&node, vxlan_cfg(), None);
    let mac = link_json(&node.ns, "flannel.1")["address"].clone();
    node.ns.exec_ok(&["ip", "link", "del", "flannel.1"]);
    let second = prepare(&node, vxlan_cfg(), None);
    assert_eq!(link_json(&node.ns, "flannel.1")["address"], mac);
    assert_eq!(first.backend_data, second.backend_data);
    // Another node (other public IP) gets another MAC.
    let other = single_node("vxmac2", "192.168.50.2/24");
    let theirs = prepare(&other, vxlan_cfg(), None);
    assert_ne!(
        theirs.backend_data["VtepMAC"],
        first.backend_data["VtepMAC"]
    );
}

#[test]
fn changed_mac_mtu_and_learning_are_fixed_in_place() {
    let node = single_node("vxfix", "192.168.50.1/24");
    let p = prepare(&node, vxlan_cfg(), None);
    let index = ifindex(&node.ns, "flannel.1");
    node.ns.exec_ok(&[
        "ip",
        "link",
        "set",
        "flannel.1",
        "address",
        "02:00:00:00:00:01",
    ]);
    node.ns.exec_ok(&[
        "ip",
        "link",
        "set",
        "flannel.1",
        "type",
        "vxlan",
        "learning",
    ]);
    let mut cfg = vxlan_cfg();
    cfg.mtu = Some(1380);
    prepare(&node, cfg, None);
    let link = link_json(&node.ns, "flannel.1");
    assert_eq!(link["ifindex"], index, "device must not be recreated");
    assert_eq!(link["mtu"], 1380);
    assert_eq!(link["address"], p.backend_data["VtepMAC"]);
    assert_eq!(link["linkinfo"]["info_data"]["learning"], false);
}

#[test]
fn compatible_device_made_by_flannel_is_adopted_not_recreated() {
    let node = single_node("vxadopt", "192.168.50.1/24");
    // What flanneld leaves behind: same VNI/port/local/dev, random MAC.
    node.ns.exec_ok(&[
        "ip",
        "link",
        "add",
        "flannel.1",
        "type",
        "vxlan",
        "id",
        "1",
        "local",
        "192.168.50.1",
        "dev",
        "e0",
        "dstport",
        "8472",
        "nolearning",
    ]);
    node.ns
        .exec_ok(&["ip", "link", "set", "flannel.1", "mtu", "1450", "up"]);
    let index = ifindex(&node.ns, "flannel.1");
    prepare(&node, vxlan_cfg(), Some("10.244.1.0/24"));
    assert_eq!(ifindex(&node.ns, "flannel.1"), index);
    // And a second start (daemon restart) leaves it alone too.
    prepare(&node, vxlan_cfg(), Some("10.244.1.0/24"));
    assert_eq!(ifindex(&node.ns, "flannel.1"), index);
}

#[test]
fn incompatible_device_is_recreated() {
    let node = single_node("vxrecr", "192.168.50.1/24");
    let cases: [&[&str]; 3] = [
        &[
            "id",
            "1",
            "local",
            "192.168.50.1",
            "dev",
            "e0",
            "dstport",
            "4789",
        ],
        &[
            "id",
            "1",
            "local",
            "192.168.50.9",
            "dev",
            "e0",
            "dstport",
            "8472",
        ],
        &[
            "id",
            "1",
            "local",
            "192.168.50.1",
            "dev",
            "e1",
            "dstport",
            "8472",
        ],
    ];
    for args in cases {
        let mut argv = vec!["ip", "link", "add", "flannel.1", "type", "vxlan"];
        argv.extend_from_slice(args);
        node.ns.exec_ok(&argv);
        let before = ifindex(&node.ns, "flannel.1");
        prepare(&node, vxlan_cfg(), None);
        let link = link_json(&node.ns, "flannel.1");
        assert_ne!(link["ifindex"], before, "{args:?}");
        assert_eq!(link["linkinfo"]["info_data"]["port"], 8472, "{args:?}");
        assert_eq!(
            link["linkinfo"]["info_data"]["local"], "192.168.50.1",
            "{args:?}"
        );
        assert_eq!(link["linkinfo"]["info_data"]["link"], "e0", "{args:?}");
        node.ns.exec_ok(&["ip", "link", "del", "flannel.1"]);
    }
}

#[test]
fn a_non_vxlan_link_with_the_name_is_replaced() {
    let node = single_node("vxkind", "192.168.50.1/24");
    node.ns
        .exec_ok(&["ip", "link", "add", "flannel.1", "type", "bridge"]);
    prepare(&node, vxlan_cfg(), None);
    assert_eq!(
        link_json(&node.ns, "flannel.1")["linkinfo"]["info_kind"],
        "vxlan"
    );
}

#[test]
fn stale_address_of_a_previous_subnet_is_replaced() {
    let node = single_node("vxaddr", "192.168.50.1/24");
    prepare(&node, vxlan_cfg(), Some("10.244.7.0/24"));
    prepare(&node, vxlan_cfg(), Some("10.244.1.0/24"));
    let addrs = json(
        &node.ns,
        &["ip", "-j", "-4", "addr", "show", "dev", "flannel.1"],
    );
    let locals: Vec<&serde_json::Value> = addrs[0]["addr_info"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| &a["local"])
        .collect();
    assert_eq!(locals, vec!["10.244.1.0"]);
}
