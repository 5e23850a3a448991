//! The CNI protocol surface of `felt`: VERSION, STATUS, and every kind of
//! bad input answered with the spec's error code as JSON on stdout, a
//! non-zero exit and no panic (the harness checks stderr for "panicked"
//! on every call). Bad input must be refused before anything is created.

// Test helpers outside #[test] fns fail the test by panicking, like asserts.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use serde_json::{json, Value};
use support::*;

#[test]
fn version_lists_every_supported_version_and_echoes_the_input_version() {
    let node = Node::new("ver");
    for v in ALL_VERSIONS {
        let out = Call::bare("VERSION", &json!({ "cniVersion": v })).run(&node);
        let j = out.ok();
        assert_eq!(j["cniVersion"], v, "{j:#}");
        let supported: Vec<&str> = j["supportedVersions"]
            .as_array()
            .unwrap_or_else(|| panic!("no supportedVersions: {j:#}"))
            .iter()
            .filter_map(Value::as_str)
            .collect();
        for want in ALL_VERSIONS {
            assert!(supported.contains(&want), "{want} missing from {j:#}");
        }
    }
}

#[test]
fn status_succeeds_when_the_subnet_file_is_there() {
    let node = Node::new("stok");
    let out = Call::bare("STATUS", &node.conf("1.1.0")).run(&node);
    out.ok();
    assert!(
        out.stdout.trim().is_empty(),
        "STATUS prints nothing on success: {out:#?}"
    );
}

#[test]
fn status_is_code_50_naming_a_missing_subnet_file() {
    let node = Node::new("stmiss");
    std::fs::remove_file(&node.subnet_file).unwrap();
    let text = Call::bare("STATUS", &node.conf("1.1.0"))
        .run(&node)
        .err_code(50);
    let path = node.subnet_file.to_string_lossy();
    assert!(text.contains(&*path), "error does not name {path}: {text}");
}

/// Runs an ADD for a fresh pod, expects CNI error `code`, checks nothing
/// was made, and returns msg + details.
fn add_fails(tag: &str, code: u64, edit: impl FnOnce(Call, &Node, &Pod) -> Call) -> String {
    let node = Node::new(tag);
    let pod = Pod::new(tag);
    let call = edit(
        Call::pod("ADD", &node.conf("1.0.0"), &pod, "eth0"),
        &node,
        &pod,
    );
    let text = call.run(&node).err_code(code);
    assert!(
        node.veths().is_empty(),
        "veth left after refused ADD: {:?}",
        node.veths()
    );
    assert!(
        node.ip_files().is_empty(),
        "IP reserved by refused ADD: {:?}",
        node.ip_files()
    );
    let pod_links: Vec<Value> = pod.links();
    assert_eq!(
        pod_links.len(),
        1,
        "pod got links from a refused ADD: {pod_links:#?}"
    );
    text
}

#[test]
fn malformed_json_is_code_6() {
    add_fails("badjson", 6, |c, _, _| {
        c.stdin("{\"cniVersion\": \"1.0.0\", \"name\":")
    });
}

#[test]
fn unknown_cni_version_is_code_1() {
    add_fails("badver", 1, |c, n, _| {
        let mut conf = n.conf("1.0.0");
        conf["cniVersion"] = json!("9.9.9");
        c.stdin(&conf.to_string())
    });
}

#[test]
fn missing_env_vars_are_code_4_and_named() {
    for var in ["CNI_CONTAINERID", "CNI_NETNS", "CNI_IFNAME", "CNI_COMMAND"] {
        let text = add_fails("noenv", 4, |c, _, _| c.unset(var));
        assert!(
            text.contains(var),
            "error for missing {var} does not name it: {text}"
        );
    }
}

#[test]
fn unknown_command_is_code_4() {
    add_fails("badcmd", 4, |c, _, _| c.env("CNI_COMMAND", "FROB"));
}

#[test]
fn bad_container_ids_are_code_4() {
    for id in ["../x", "a/b", "-x", "with space", ""] {
        add_fails("badcid", 4, |c, _, _| c.env("CNI_CONTAINERID", id));
    }
}

#[test]
fn bad_network_names_are_code_7() {
    for name in ["bad/name", "../up", "", "-lead"] {
        add_fails("badname", 7, |c, n, _| {
            let mut conf = n.conf("1.0.0");
            conf["name"] = json!(name);
            c.stdin(&conf.to_string())
        });
    }
}

#[test]
fn bad_ifnames_are_code_4() {
    for ifname in ["abcdefghijklmnop", "eth/0", ".", "..", "eth:0", "eth 0"] {
        add_fails("badif", 4, |c, _, _| c.env("CNI_IFNAME", ifname));
    }
}

#[test]
fn netns_path_that_is_a_regular_file_is_code_4() {
    // docs/cni-plugin.md: a path that is not a network namespace is an
    // invalid CNI_NETNS (4); a missing one is an unknown container (3).
    let tmp = TempDir::new("nsfile");
    let file = tmp.0.join("not-a-netns");
    std::fs::write(&file, "x").unwrap();
    let text = add_fails("nsfile", 4, |c, _, _| {
        c.env("CNI_NETNS", &file.to_string_lossy())
    });
    assert!(
        text.contains("CNI_NETNS"),
        "error does not name CNI_NETNS: {text}"
    );
}

#[test]
fn netns_path_that_does_not_exist_is_code_3() {
    add_fails("nsgone", 3, |c, _, _| {
        c.env("CNI_NETNS", "/run/netns/felt-t-does-not-exist")
    });
}

#[test]
fn missing_subnet_file_on_add_is_an_error_naming_it() {
    let text = add_fails("nosub", 11, |c, n, _| {
        std::fs::remove_file(&n.subnet_file).unwrap();
        c
    });
    assert!(
        text.contains("subnet.env"),
        "error does not name the file: {text}"
    );
}

#[test]
fn missing_network_name_is_code_7() {
    add_fails("noname", 7, |c, n, _| {
        let mut conf = n.conf("1.0.0");
        conf.as_object_mut().unwrap().remove("name");
        c.stdin(&conf.to_string())
    });
}

#[test]
fn unknown_cni_args_key_without_ignore_unknown_is_code_4() {
    let text = add_fails("argsbad", 4, |c, _, _| c.env("CNI_ARGS", "FOO=bar"));
    assert!(
        text.contains("CNI_ARGS"),
        "error does not name CNI_ARGS: {text}"
    );
}

#[test]
fn unsupported_fields_are_code_2_and_named() {
    for (key, value) in [("vlan", json!(100)), ("promiscMode", json!(true))] {
        let text = add_fails("unsup", 2, |c, n, _| {
            let mut conf = n.conf("1.0.0");
            conf[key] = value.clone();
            c.stdin(&conf.to_string())
        });
        assert!(text.contains(key), "error does not name {key}: {text}");
    }
}

#[test]
fn status_and_gc_need_cni_1_1() {
    let node = Node::new("old11");
    Call::bare("STATUS", &node.conf("1.0.0"))
        .run(&node)
        .err_code(1);
    let mut conf = node.conf("1.0.0");
    conf["cni.dev/valid-attachments"] = json!([]);
    Call::bare("GC", &conf).run(&node).err_code(1);
}

#[test]
fn gc_without_valid_attachments_is_code_7_and_releases_nothing() {
    let node = Node::new("gcnolist");
    node.reserve("10.244.1.2", "a", "eth0");
    Call::bare("GC", &node.conf("1.1.0")).run(&node).err_code(7);
    assert_eq!(node.ip_files(), vec!["10.244.1.2"]);
}

#[test]
fn check_without_prev_result_is_code_7() {
    let node = Node::new("chknoprev");
    let pod = Pod::new("chknoprev");
    node.add_ok(&pod, "1.0.0");
    Call::pod("CHECK", &node.conf("1.0.0"), &pod, "eth0")
        .run(&node)
        .err_code(7);
}

#[test]
fn malformed_subnet_file_is_code_7_on_add_and_50_on_status() {
    let bad = "FLANNEL_NETWORK=10.244.0.0/16\nFLANNEL_SUBNET=not-a-subnet\nFLANNEL_MTU=1450\n";
    let text = add_fails("badsub", 7, |c, n, _| {
        std::fs::write(&n.subnet_file, bad).unwrap();
        c
    });
    assert!(
        text.contains("FLANNEL_SUBNET"),
        "error does not name the key: {text}"
    );
    let node = Node::with_subnet_env("badsubst", bad);
    Call::bare("STATUS", &node.conf("1.1.0"))
        .run(&node)
        .err_code(50);
}
