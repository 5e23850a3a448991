//! Conformance through libcni, the library containerd and CRI-O call
//! plugins with: the Go driver in conformance/libcni-driver runs each
//! conflist (0.3.1, 0.4.0, 1.0.0; the latter two chain Debian's portmap
//! after felt) through VERSION, ADD, CHECK, DEL, DEL inside a node
//! namespace, and the pod and node are inspected between the steps.

// Test helpers outside #[test] fns fail the test by panicking, like asserts.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::process::Command;
use support::*;

const SETUP_HINT: &str = "run scripts/setup.sh (installs golang-go and golang-github-appc-cni-dev)";
const GOPATH: &str = "/usr/share/gocode";
/// The network name in the repo's conflists.
const NETWORK: &str = "felt-conformance";

fn driver_src() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../conformance/libcni-driver")
}

/// Builds the driver offline against Debian's libcni into `dir`.
fn build_driver(dir: &Path) -> PathBuf {
    let go = Command::new("go").arg("version").output();
    assert!(
        go.is_ok_and(|o| o.status.success()),
        "`go` is missing: {SETUP_HINT}"
    );
    let libcni = Path::new(GOPATH).join("src/github.com/containernetworking/cni/libcni");
    assert!(
        libcni.is_dir(),
        "{} is missing: {SETUP_HINT}",
        libcni.display()
    );
    let out_bin = dir.join("libcni-driver");
    let out = Command::new("go")
        .args(["build", "-o"])
        .arg(&out_bin)
        .arg(".")
        .current_dir(driver_src())
        .env("GO111MODULE", "off")
        .env("GOPATH", GOPATH)
        .env(
            "GOCACHE",
            Path::new(env!("CARGO_TARGET_TMPDIR")).join("gocache"),
        )
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "go build of the libcni driver failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out_bin
}

/// The repo's conflist for `version`, with the node's temp paths.
fn conflist(version: &str, node: &Node, dir: &Path) -> PathBuf {
    let src = driver_src().join(format!("conflists/felt-{version}.conflist"));
    let mut list: Value = serde_json::from_str(&std::fs::read_to_string(&src).unwrap()).unwrap();
    assert_eq!(list["cniVersion"], version);
    assert_eq!(list["name"], NETWORK);
    let felt = &mut list["plugins"][0];
    assert_eq!(felt["type"], "felt");
    felt["subnetFile"] = json!(node.subnet_file);
    felt["dataDir"] = json!(node.data_dir);
    let path = dir.join(format!("felt-{version}.conflist"));
    std::fs::write(&path, list.to_string()).unwrap();
    path
}

struct Driver {
    bin: PathBuf,
    plugin_dir: PathBuf,
    cache_dir: PathBuf,
    conflist: PathBuf,
}

impl Driver {
    /// Runs the driver's `ops` inside the node; fails the test on error.
    fn run(&self, node: &Node, pod: &Pod, ops: &str) -> String {
        let mut cmd = node.ns.command(&self.bin.to_string_lossy());
        cmd.arg("-plugin-dir")
            .arg(&self.plugin_dir)
            .arg("-cache-dir")
            .arg(&self.cache_dir)
            .args(["-ops", ops])
            .arg(&self.conflist)
            .args([pod.path().as_str(), pod.id.as_str(), "eth0"]);
        let out = cmd.output().unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            out.status.success(),
            "libcni driver {ops} failed:\n{stdout}\n{stderr}"
        );
        assert!(!stderr.contains("panicked"), "{stderr}");
        stdout
    }
}

fn conformance(version: &str) {
    let tmp = TempDir::new("libcni");
    let bin = build_driver(&tmp.0);
    let node = Node::new("lcn");
    let pod = Pod::new("lcp");
    let plugin_dir = tmp.0.join("bin");
    std::fs::create_dir_all(&plugin_dir).unwrap();
    std::os::unix::fs::symlink(FELT, plugin_dir.join("felt")).unwrap();
    std::os::unix::fs::symlink("/usr/lib/cni/portmap", plugin_dir.join("portmap")).unwrap();
    let d = Driver {
        bin,
        plugin_dir,
        cache_dir: tmp.0.join("cache"),
        conflist: conflist(version, &node, &tmp.0),
    };

    let out = d.run(&node, &pod, "version,add,check");
    // The runtime sees felt's address, also through portmap's chaining.
    assert!(
        out.contains("ADD: ") && out.contains("10.244.1.2/24"),
        "{out}"
    );
    if version == "0.3.1" {
        assert!(out.contains("CHECK: skipped"), "{out}");
    } else {
        assert!(out.contains("CHECK: ok"), "{out}");
    }
    assert_eq!(
        pod.addrs("eth0"),
        vec!["10.244.1.2/24".to_string()],
        "{out}"
    );
    let ip_dir = node.data_dir.join(NETWORK);
    assert_eq!(ip_files_in(&ip_dir), vec!["10.244.1.2"]);
    let owner = std::fs::read_to_string(ip_dir.join("10.244.1.2")).unwrap();
    assert_eq!(owner, format!("{}\r\neth0", pod.id));
    assert!(pod.ping("10.244.1.1"), "pod cannot reach its gateway");
    assert_eq!(node.veths().len(), 1);

    // A second process, as the runtime's later calls are: CHECK and DEL
    // get the ADD result from libcni's cache as prevResult.
    let out = d.run(&node, &pod, "check,del,del");
    assert_eq!(out.matches("DEL: ok").count(), 2, "{out}");
    assert!(
        ip_files_in(&ip_dir).is_empty(),
        "IP left: {:?}",
        ip_files_in(&ip_dir)
    );
    assert!(node.veths().is_empty(), "veth left: {:?}", node.veths());
    assert!(pod.link("eth0").is_none(), "eth0 left in pod");
}

#[test]
fn libcni_conflist_0_3_1() {
    conformance("0.3.1");
}

#[test]
fn libcni_conflist_0_4_0_chained_with_portmap() {
    conformance("0.4.0");
}

#[test]
fn libcni_conflist_1_0_0_chained_with_portmap() {
    conformance("1.0.0");
}
