use super::*;

fn ok(text: &str) -> NetworkConfig {
    match parse(text) {
        Ok(c) => c,
        Err(e) => panic!("{text}: {e}"),
    }
}

/// Asserts the error names `key` and contains `rule`.
fn bad(text: &str, key: &str, rule: &str) {
    match parse(text) {
        Ok(c) => panic!("{text} was accepted: {c:?}"),
        Err(ConfigError::Invalid { key: k, rule: r }) => {
            assert_eq!(k, key, "{text}: {r}");
            assert!(r.contains(rule), "{text}: rule {r:?} lacks {rule:?}");
        }
        Err(e) => panic!("{text}: wrong error kind {e}"),
    }
}

fn a(s: &str) -> Ipv4Addr {
    s.parse().unwrap()
}

#[test]
fn flannel_default_kube_config() {
    let c = ok(
        r#"{"Network": "10.244.0.0/16", "EnableNFTables": false, "Backend": {"Type": "vxlan"}}"#,
    );
    assert!(c.enable_ipv4);
    assert!(!c.enable_ipv6);
    assert!(!c.enable_nftables);
    assert_eq!(c.network, Some("10.244.0.0/16".parse().unwrap()));
    assert_eq!(c.subnet_len, 24);
    assert_eq!(c.subnet_min, a("10.244.1.0"));
    assert_eq!(c.subnet_max, a("10.244.255.0"));
    assert_eq!(
        c.backend,
        BackendConfig::Vxlan(VxlanConfig {
            vni: 1,
            port: 0,
            mtu: None,
            gbp: false,
            learning: false,
            direct_routing: false
        })
    );
    assert_eq!(c.ipv6_network, None);
}

#[test]
fn subnet_len_defaults_follow_flannel() {
    // /22 or wider -> /24; narrower -> prefix + 2.
    assert_eq!(ok(r#"{"Network":"10.0.0.0/8"}"#).subnet_len, 24);
    assert_eq!(ok(r#"{"Network":"10.0.0.0/22"}"#).subnet_len, 24);
    let c = ok(r#"{"Network":"10.0.0.0/23"}"#);
    assert_eq!(
        (c.subnet_len, c.subnet_min, c.subnet_max),
        (25, a("10.0.0.128"), a("10.0.1.128"))
    );
    let c = ok(r#"{"Network":"10.0.0.0/28"}"#);
    assert_eq!(
        (c.subnet_len, c.subnet_min, c.subnet_max),
        (30, a("10.0.0.4"), a("10.0.0.12"))
    );
    // SubnetLen 0 is Go's zero value: the default.
    assert_eq!(
        ok(r#"{"Network":"10.0.0.0/16","SubnetLen":0}"#).subnet_len,
        24
    );
}

#[test]
fn explicit_values_and_host_bits_of_network() {
    let c = ok(
        r#"{"Network":"10.5.3.7/16","SubnetLen":20,"SubnetMin":"10.5.32.0","SubnetMax":"10.5.64.0"}"#,
    );
    assert_eq!(c.network, Some("10.5.0.0/16".parse().unwrap()));
    assert_eq!(
        (c.subnet_len, c.subnet_min, c.subnet_max),
        (20, a("10.5.32.0"), a("10.5.64.0"))
    );
    // "0.0.0.0" is Go's zero value for SubnetMin/Max: the default.
    let c = ok(r#"{"Network":"10.5.0.0/16","SubnetMin":"0.0.0.0"}"#);
    assert_eq!(c.subnet_min, a("10.5.1.0"));
}

#[test]
fn keys_are_case_insensitive_and_unknown_keys_ignored() {
    let c = ok(
        r#"{"network":"10.1.0.0/16","SUBNETLEN":26,"enableipv4":true,"Whatever":[1,2],
        "backend":{"type":"VXLAN","vni":4096,"PORT":4789,"mtu":1400,"gbp":true,"learning":true,"directrouting":true,"Extra":1}}"#,
    );
    assert_eq!(c.subnet_len, 26);
    assert_eq!(
        c.backend,
        BackendConfig::Vxlan(VxlanConfig {
            vni: 4096,
            port: 4789,
            mtu: Some(1400),
            gbp: true,
            learning: true,
            direct_routing: true
        })
    );
    let c =
        ok(r#"{"Network":"10.1.0.0/16","Backend":{"Type":"vxlan","VNI":7,"DirectRouting":true}}"#);
    assert!(matches!(
        c.backend,
        BackendConfig::Vxlan(VxlanConfig {
            vni: 7,
            direct_routing: true,
            ..
        })
    ));
    bad(
        r#"{"Network":"10.1.0.0/16","network":"10.2.0.0/16"}"#,
        "network",
        "twice",
    );
}

#[test]
fn backend_types_and_defaults() {
    let udp = BackendConfig::Udp(UdpConfig { port: 8285 });
    assert_eq!(ok(r#"{"Network":"10.1.0.0/16"}"#).backend, udp);
    assert_eq!(
        ok(r#"{"Network":"10.1.0.0/16","Backend":null}"#).backend,
        udp
    );
    assert_eq!(
        ok(r#"{"Network":"10.1.0.0/16","Backend":{"Type":"UDP"}}"#).backend,
        udp
    );
    assert_eq!(
        ok(r#"{"Network":"10.1.0.0/16","Backend":{"Type":"udp","Port":9000}}"#).backend,
        BackendConfig::Udp(UdpConfig { port: 9000 })
    );
    assert_eq!(
        ok(r#"{"Network":"10.1.0.0/16","Backend":{"Type":"host-gw"}}"#).backend,
        BackendConfig::HostGw
    );
    assert_eq!(BackendConfig::HostGw.type_name(), "host-gw");
}

#[test]
fn ipv6_defaults_and_dual_stack() {
    let c = ok(r#"{"Network":"10.1.0.0/16","EnableIPv6":true,"IPv6Network":"fc00::/48"}"#);
    assert_eq!(c.ipv6_network, Some("fc00::/48".parse().unwrap()));
    assert_eq!(c.ipv6_subnet_len, 64);
    assert_eq!(c.ipv6_subnet_min, Some("fc00:0:0:1::".parse().unwrap()));
    assert_eq!(c.ipv6_subnet_max, Some("fc00:0:0:ffff::".parse().unwrap()));
    let c = ok(r#"{"EnableIPv4":false,"EnableIPv6":true,"IPv6Network":"fc00::/120"}"#);
    assert!(!c.enable_ipv4);
    assert_eq!(c.network, None);
    assert_eq!(c.ipv6_subnet_len, 122);
}

#[test]
fn every_ipv4_rule_names_its_key() {
    bad(r#"{}"#, "Network", "is required");
    bad(r#"{"Network":""}"#, "Network", "IPv4 CIDR");
    bad(r#"{"Network":"fc00::/48"}"#, "Network", "IPv4 CIDR");
    bad(r#"{"Network":"0.0.0.0/0"}"#, "Network", "is required");
    bad(r#"{"Network":"10.0.0.0/29"}"#, "Network", "/28");
    bad(
        r#"{"Network":"10.0.0.0/16","SubnetLen":31}"#,
        "SubnetLen",
        "at most 30",
    );
    bad(
        r#"{"Network":"10.0.0.0/16","SubnetLen":17}"#,
        "SubnetLen",
        "prefix + 2",
    );
    bad(
        r#"{"Network":"10.0.0.0/16","SubnetLen":"24"}"#,
        "SubnetLen",
        "whole number",
    );
    bad(
        r#"{"Network":"10.0.0.0/16","SubnetLen":-1}"#,
        "SubnetLen",
        "whole number",
    );
    bad(
        r#"{"Network":"10.0.0.0/16","SubnetMin":"10.1.0.0"}"#,
        "SubnetMin",
        "not inside Network",
    );
    bad(
        r#"{"Network":"10.0.0.0/16","SubnetMax":"11.0.0.0"}"#,
        "SubnetMax",
        "not inside Network",
    );
    bad(
        r#"{"Network":"10.0.0.0/16","SubnetMin":"10.0.1.5"}"#,
        "SubnetMin",
        "boundary",
    );
    bad(
        r#"{"Network":"10.0.0.0/16","SubnetMax":"10.0.1.128"}"#,
        "SubnetMax",
        "boundary",
    );
    bad(
        r#"{"Network":"10.0.0.0/16","SubnetMin":"bogus"}"#,
        "SubnetMin",
        "IPv4 address",
    );
    bad(
        r#"{"Network":"10.0.0.0/16","SubnetMin":"10.0.9.0","SubnetMax":"10.0.8.0"}"#,
        "SubnetMin",
        "above SubnetMax",
    );
    bad(
        r#"{"Network":"10.0.0.0/16","EnableIPv4":"yes"}"#,
        "EnableIPv4",
        "true or false",
    );
    bad(
        r#"{"Network":"10.0.0.0/16","EnableNFTables":1}"#,
        "EnableNFTables",
        "true or false",
    );
    bad(r#"{"EnableIPv4":false}"#, "EnableIPv4", "at least one");
}

#[test]
fn every_ipv6_rule_names_its_key() {
    bad(
        r#"{"EnableIPv4":false,"EnableIPv6":true}"#,
        "IPv6Network",
        "is required",
    );
    bad(
        r#"{"EnableIPv4":false,"EnableIPv6":true,"IPv6Network":"fc00::/125"}"#,
        "IPv6Network",
        "/124",
    );
    let base = r#""EnableIPv4":false,"EnableIPv6":true,"IPv6Network":"fc00::/48""#;
    bad(
        &format!("{{{base},\"IPv6SubnetLen\":127}}"),
        "IPv6SubnetLen",
        "at most 126",
    );
    bad(
        &format!("{{{base},\"IPv6SubnetLen\":49}}"),
        "IPv6SubnetLen",
        "prefix + 2",
    );
    bad(
        &format!("{{{base},\"IPv6SubnetMin\":\"fd00::\"}}"),
        "IPv6SubnetMin",
        "not inside",
    );
    bad(
        &format!("{{{base},\"IPv6SubnetMax\":\"fc00:0:0:1::1\"}}"),
        "IPv6SubnetMax",
        "boundary",
    );
}

#[test]
fn every_backend_rule_names_its_key() {
    let net = r#""Network":"10.0.0.0/16""#;
    let b = |backend: &str| format!("{{{net},\"Backend\":{backend}}}");
    bad(&b(r#""vxlan""#), "Backend", "must be an object");
    bad(&b(r#"{}"#), "Backend.Type", "is required");
    bad(
        &b(r#"{"Type":"ipip"}"#),
        "Backend.Type",
        "unsupported backend type \"ipip\"",
    );
    bad(
        &b(r#"{"Type":"vxlan","VNI":16777216}"#),
        "Backend.VNI",
        "0 to 16777215",
    );
    bad(
        &b(r#"{"Type":"vxlan","VNI":"1"}"#),
        "Backend.VNI",
        "whole number",
    );
    bad(
        &b(r#"{"Type":"vxlan","Port":70000}"#),
        "Backend.Port",
        "0 to 65535",
    );
    bad(
        &b(r#"{"Type":"vxlan","MTU":60}"#),
        "Backend.MTU",
        "at least 68",
    );
    bad(
        &b(r#"{"Type":"vxlan","GBP":"true"}"#),
        "Backend.GBP",
        "true or false",
    );
    bad(
        &b(r#"{"Type":"vxlan","Learning":0}"#),
        "Backend.Learning",
        "true or false",
    );
    bad(
        &b(r#"{"Type":"vxlan","DirectRouting":"no"}"#),
        "Backend.DirectRouting",
        "true or false",
    );
    bad(
        &b(r#"{"Type":"udp","Port":0}"#),
        "Backend.Port",
        "from 1 to 65535",
    );
    bad(
        &b(r#"{"type":"vxlan","Vni":1,"VNI":2}"#),
        "Backend.Vni",
        "twice",
    );
}

#[test]
fn syntax_errors_are_reported() {
    assert!(matches!(parse("{"), Err(ConfigError::Syntax(_))));
    assert!(matches!(parse("[]"), Err(ConfigError::Syntax(_))));
}
