//! The overlayd binary end to end, each run inside its own network
//! namespace with its own etcd there: bad configs are refused before
//! anything is written; a good one leads to a lease in flannel's format,
//! subnet.env, the VXLAN device and routes to peers; the lease survives
//! deletion and restarts; SIGTERM leaves the datapath up.

// Test helpers outside #[test] fns fail loudly by design.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod etcd_util;

use etcd_util::Etcd;
use felt_common::testutil::{ChildGuard, TestNetns};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const PREFIX: &str = "/coreos.com/network";
const BIN: &str = env!("CARGO_BIN_EXE_overlayd");

fn scratch(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("felt-overlayd-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// overlayd inside `ns`, flags through FLANNELD_* variables (as a
/// DaemonSet would set them) plus `args`.
fn overlayd(ns: &TestNetns, etcd: &Etcd, subnet_file: &Path, args: &[&str]) -> Command {
    let mut cmd = ns.command(BIN);
    cmd.args(args)
        .env("FLANNELD_ETCD_ENDPOINTS", &etcd.endpoint)
        .env("FLANNELD_SUBNET_FILE", subnet_file)
        .env("RUST_LOG", "info")
        .stdin(Stdio::null());
    cmd
}

/// Runs to completion (at most 30 s); returns (success, stderr).
fn run_to_end(mut cmd: Command) -> (bool, String) {
    cmd.stdout(Stdio::null()).stderr(Stdio::piped());
    let mut guard = ChildGuard::spawn(cmd, "overlayd");
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(status) = guard.child.try_wait().unwrap() {
            let mut err = String::new();
            use std::io::Read;
            guard
                .child
                .stderr
                .take()
                .unwrap()
                .read_to_string(&mut err)
                .unwrap();
            return (status.success(), err);
        }
        assert!(Instant::now() < deadline, "overlayd did not exit");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn bad_configs_exit_nonzero_naming_the_key_and_write_nothing() {
    let ns = TestNetns::new("lbad");
    let etcd = Etcd::start_in(Some(&ns));
    let dir = scratch("bad");
    let subnet_file = dir.join("subnet.env");
    let cases = [
        (r#"{"Network":"10.0.0.0/29"}"#, "Network"),
        (r#"{"Backend":{"Type":"vxlan"}}"#, "Network"),
        (
            r#"{"Network":"10.0.0.0/16","SubnetLen":31,"Backend":{"Type":"vxlan"}}"#,
            "SubnetLen",
        ),
        (
            r#"{"Network":"10.0.0.0/16","SubnetLen":17,"Backend":{"Type":"vxlan"}}"#,
            "SubnetLen",
        ),
        (
            r#"{"Network":"10.0.0.0/16","SubnetMin":"10.1.0.0","Backend":{"Type":"vxlan"}}"#,
            "SubnetMin",
        ),
        (
            r#"{"Network":"10.0.0.0/16","SubnetMax":"10.0.3.7","Backend":{"Type":"vxlan"}}"#,
            "SubnetMax",
        ),
        (
            r#"{"Network":"10.0.0.0/16","EnableIPv4":"yes","Backend":{"Type":"vxlan"}}"#,
            "EnableIPv4",
        ),
        (
            r#"{"Network":"10.0.0.0/16","Backend":{"Type":"ipip"}}"#,
            "Backend.Type",
        ),
        (
            r#"{"Network":"10.0.0.0/16","Backend":{"type":"vxlan","vni":16777216}}"#,
            "Backend.VNI",
        ),
        (
            r#"{"Network":"10.0.0.0/16","Backend":{"Type":"vxlan","Port":70000}}"#,
            "Backend.Port",
        ),
        (
            r#"{"Network":"10.0.0.0/16","Backend":{"Type":"vxlan","MTU":10}}"#,
            "Backend.MTU",
        ),
        (
            r#"{"Network":"10.0.0.0/16","Backend":{"Type":"vxlan","DirectRouting":"yes"}}"#,
            "Backend.DirectRouting",
        ),
        (
            r#"{"Network":"10.0.0.0/16","Backend":{"Type":"udp","Port":0}}"#,
            "Backend.Port",
        ),
        (
            r#"{"Network":"10.0.0.0/16","EnableIPv6":true,"IPv6Network":"fc00::/48","Backend":{"Type":"vxlan"}}"#,
            "EnableIPv6",
        ),
        (r#"{"Network": "10.0.0.0/16""#, "invalid JSON"),
    ];
    for (cfg, key) in cases {
        etcd.put(&format!("{PREFIX}/config"), cfg);
        let (ok, stderr) = run_to_end(overlayd(&ns, &etcd, &subnet_file, &[]));
        assert!(!ok, "{cfg} was accepted:\n{stderr}");
        assert!(
            stderr.contains(key),
            "{cfg}: stderr does not name {key}:\n{stderr}"
        );
        assert!(
            etcd.keys(&format!("{PREFIX}/subnets")).is_empty(),
            "{cfg}: a lease was written"
        );
        assert!(!subnet_file.exists(), "{cfg}: subnet file written");
        let links = ns.exec_ok(&["ip", "-o", "link", "show"]);
        assert_eq!(
            links.lines().count(),
            1,
            "{cfg}: a device was created: {links}"
        );
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn unsupported_and_invalid_flags_are_refused_clearly() {
    let ns = TestNetns::new("lkube");
    let etcd = Etcd::start_in(Some(&ns));
    let dir = scratch("kube");
    let f = dir.join("subnet.env");
    // Kubernetes mode outside a Pod and without a kubeconfig: says what to give.
    let (ok, err) = run_to_end(overlayd(&ns, &etcd, &f, &["--kube-subnet-mgr"]));
    assert!(
        !ok && err.contains("give --kubeconfig-file or --kube-api-url"),
        "{err}"
    );
    let mut cmd = overlayd(&ns, &etcd, &f, &[]);
    cmd.env("FLANNELD_KUBE_SUBNET_MGR", "true");
    let (ok, err) = run_to_end(cmd);
    assert!(
        !ok && err.contains("give --kubeconfig-file or --kube-api-url"),
        "{err}"
    );
    // TLS files with a plain-http endpoint (Go's single-dash spelling).
    let (ok, err) = run_to_end(overlayd(&ns, &etcd, &f, &["-etcd-cafile=/nonexistent"]));
    assert!(
        !ok && err.contains("every endpoint must be https://"),
        "{err}"
    );
    let (ok, err) = run_to_end(overlayd(
        &ns,
        &etcd,
        &f,
        &["--subnet-lease-renew-margin=1440"],
    ));
    assert!(!ok && err.contains("subnet-lease-renew-margin"), "{err}");
    std::fs::remove_dir_all(&dir).unwrap();
}

/// Polls `f` for up to `secs` seconds.
fn wait_for<T>(secs: u64, what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn start_daemon(ns: &TestNetns, etcd: &Etcd, subnet_file: &Path, log: &Path) -> ChildGuard {
    let mut cmd = overlayd(ns, etcd, subnet_file, &["--ip-masq"]);
    cmd.stdout(Stdio::null())
        .stderr(std::fs::File::create(log).unwrap());
    ChildGuard::spawn(cmd, "overlayd")
}

fn stop_with_sigterm(mut guard: ChildGuard, log: &Path) {
    let pid = nix::unistd::Pid::from_raw(guard.pid() as i32);
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).unwrap();
    let status = wait_for(20, "overlayd to exit on SIGTERM", || {
        guard.child.try_wait().unwrap()
    });
    let text = std::fs::read_to_string(log).unwrap_or_default();
    assert!(
        status.success(),
        "exit status {status} after SIGTERM:\n{text}"
    );
}

fn our_key(etcd: &Etcd) -> Vec<String> {
    etcd.keys(&format!("{PREFIX}/subnets/"))
        .into_iter()
        .filter(|k| {
            etcd.get(k)
                .is_some_and(|v| v.contains("\"PublicIP\":\"10.10.0.2\""))
        })
        .collect()
}

#[test]
fn daemon_leases_writes_subnet_env_routes_peers_and_survives_restarts() {
    let ns = TestNetns::new("ld");
    // A veth pair inside the namespace stands in for the node's NIC.
    ns.exec_ok(&[
        "ip", "link", "add", "uplink0", "type", "veth", "peer", "name", "uplink0p",
    ]);
    ns.exec_ok(&["ip", "addr", "add", "10.10.0.2/24", "dev", "uplink0"]);
    ns.exec_ok(&["ip", "link", "set", "uplink0p", "up"]);
    ns.exec_ok(&["ip", "link", "set", "uplink0", "up"]);
    // No --iface: the interface of the default route is used.
    ns.exec_ok(&[
        "ip",
        "route",
        "add",
        "default",
        "via",
        "10.10.0.1",
        "dev",
        "uplink0",
    ]);
    let etcd = Etcd::start_in(Some(&ns));
    etcd.put(
        &format!("{PREFIX}/config"),
        r#"{"Network":"10.244.0.0/16","Backend":{"Type":"vxlan"}}"#,
    );
    let peer = r#"{"PublicIP":"10.10.0.3","PublicIPv6":null,"BackendType":"vxlan","BackendData":{"VNI":1,"VtepMAC":"02:00:00:00:00:03"}}"#;
    etcd.put(&format!("{PREFIX}/subnets/10.244.7.0-24"), peer);
    let dir = scratch("daemon");
    let (subnet_file, log) = (dir.join("run/subnet.env"), dir.join("overlayd.log"));

    let d = start_daemon(&ns, &etcd, &subnet_file, &log);
    let env = wait_for(30, "subnet.env", || {
        std::fs::read_to_string(&subnet_file).ok()
    });
    let keys = our_key(&etcd);
    assert_eq!(keys.len(), 1, "{keys:?}");
    let key = keys[0].clone();
    let net = key
        .rsplit('/')
        .next()
        .unwrap()
        .trim_end_matches("-24")
        .to_string();
    let gw = format!("{}.1", net.rsplit_once('.').unwrap().0);
    assert_eq!(
        env,
        format!("FLANNEL_NETWORK=10.244.0.0/16\nFLANNEL_SUBNET={gw}/24\nFLANNEL_MTU=1450\nFLANNEL_IPMASQ=true\n")
    );
    // The published VtepMAC is the device's MAC.
    let link: serde_json::Value =
        serde_json::from_str(&ns.exec_ok(&["ip", "-j", "link", "show", "flannel.1"])).unwrap();
    let mac = link[0]["address"].as_str().unwrap().to_string();
    let value: serde_json::Value = serde_json::from_str(&etcd.get(&key).unwrap()).unwrap();
    assert_eq!(value["BackendType"], "vxlan");
    assert_eq!(value["BackendData"]["VtepMAC"], mac.as_str());
    assert_eq!(value["BackendData"]["VNI"], 1);
    assert!(value["PublicIPv6"].is_null());
    // The peer lease becomes a route through the VXLAN device.
    wait_for(20, "route to the peer subnet", || {
        let r = ns.exec_ok(&["ip", "route", "show", "10.244.7.0/24"]);
        r.contains("via 10.244.7.0 dev flannel.1").then_some(())
    });

    // Lease deleted behind our back: re-created on the same subnet.
    etcd.etcdctl_ok(&["del", &key]);
    wait_for(20, "the lease to be re-created", || etcd.get(&key));
    assert_eq!(our_key(&etcd), [key.as_str()]);

    // SIGTERM: clean exit, datapath left up.
    stop_with_sigterm(d, &log);
    ns.exec_ok(&["ip", "link", "show", "flannel.1"]);
    assert!(ns
        .exec_ok(&["ip", "route", "show", "10.244.7.0/24"])
        .contains("flannel.1"));

    // Restart: same subnet, same device MAC, one lease.
    std::fs::remove_file(&subnet_file).unwrap();
    let d = start_daemon(&ns, &etcd, &subnet_file, &log);
    let env2 = wait_for(30, "subnet.env after restart", || {
        std::fs::read_to_string(&subnet_file).ok()
    });
    assert_eq!(env2, env);
    assert_eq!(our_key(&etcd), [key.as_str()]);
    let value2: serde_json::Value = serde_json::from_str(&etcd.get(&key).unwrap()).unwrap();
    assert_eq!(value2["BackendData"]["VtepMAC"], mac.as_str());
    stop_with_sigterm(d, &log);
    std::fs::remove_dir_all(&dir).unwrap();
}

/// Starts overlayd with `args`, waits for subnet.env, stops it; returns
/// the stored value of the lease published by `public_ip`.
fn run_once(
    ns: &TestNetns,
    etcd: &Etcd,
    dir: &Path,
    args: &[&str],
    public_ip: &str,
) -> serde_json::Value {
    let (subnet_file, log) = (dir.join("subnet.env"), dir.join("once.log"));
    let _ = std::fs::remove_file(&subnet_file);
    let mut cmd = overlayd(ns, etcd, &subnet_file, args);
    cmd.stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap());
    let d = ChildGuard::spawn(cmd, "overlayd");
    wait_for(30, "subnet.env", || {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        assert!(!text.contains("ERROR"), "overlayd failed:\n{text}");
        subnet_file.exists().then_some(())
    });
    stop_with_sigterm(d, &log);
    let needle = format!("\"PublicIP\":\"{public_ip}\"");
    let value = etcd
        .keys(&format!("{PREFIX}/subnets/"))
        .into_iter()
        .filter_map(|k| etcd.get(&k))
        .find(|v| v.contains(&needle))
        .unwrap_or_else(|| panic!("no lease with {needle}"));
    serde_json::from_str(&value).unwrap()
}

/// The VTEP's local address (which interface overlayd chose).
fn vtep_local(ns: &TestNetns) -> String {
    let out = ns.exec_ok(&["ip", "-d", "-j", "link", "show", "flannel.1"]);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    v[0]["linkinfo"]["info_data"]["local"]
        .as_str()
        .unwrap()
        .to_string()
}

#[test]
fn iface_by_address_regex_can_reach_and_public_ip_override() {
    let ns = TestNetns::new("lif");
    for (dev, peer, addr) in [
        ("up1", "up1p", "10.10.1.2/24"),
        ("up2", "up2p", "10.10.2.2/24"),
    ] {
        ns.exec_ok(&[
            "ip", "link", "add", dev, "type", "veth", "peer", "name", peer,
        ]);
        ns.exec_ok(&["ip", "addr", "add", addr, "dev", dev]);
        ns.exec_ok(&["ip", "link", "set", peer, "up"]);
        ns.exec_ok(&["ip", "link", "set", dev, "up"]);
    }
    let etcd = Etcd::start_in(Some(&ns));
    etcd.put(
        &format!("{PREFIX}/config"),
        r#"{"Network":"10.244.0.0/16","Backend":{"Type":"vxlan"}}"#,
    );
    let dir = scratch("iface");

    // --iface by address, after a name that does not exist.
    let v = run_once(
        &ns,
        &etcd,
        &dir,
        &["--iface=nosuch0", "--iface=10.10.2.2"],
        "10.10.2.2",
    );
    assert_eq!(vtep_local(&ns), "10.10.2.2");
    assert_eq!(v["BackendType"], "vxlan");
    // --iface-regex on the name; --public-ip is what peers are told.
    ns.exec_ok(&["ip", "link", "del", "flannel.1"]);
    let v = run_once(
        &ns,
        &etcd,
        &dir,
        &["--iface-regex=^up1$", "--public-ip=203.0.113.7"],
        "203.0.113.7",
    );
    assert_eq!(vtep_local(&ns), "10.10.1.2");
    assert!(v["BackendData"]["VtepMAC"].is_string());
    // --iface-can-reach: the interface `ip route get` picks.
    ns.exec_ok(&["ip", "link", "del", "flannel.1"]);
    run_once(
        &ns,
        &etcd,
        &dir,
        &["--iface-can-reach=10.10.2.50"],
        "10.10.2.2",
    );
    assert_eq!(vtep_local(&ns), "10.10.2.2");
    // No match at all: a clear error, nothing leased.
    let before = etcd.keys(&format!("{PREFIX}/subnets/")).len();
    let (ok, err) = run_to_end(overlayd(
        &ns,
        &etcd,
        &dir.join("subnet.env"),
        &["--iface=eth9", "--iface-regex=^wl"],
    ));
    assert!(
        !ok && err.contains("no interface matches --iface eth9, --iface-regex ^wl"),
        "{err}"
    );
    assert_eq!(etcd.keys(&format!("{PREFIX}/subnets/")).len(), before);
    std::fs::remove_dir_all(&dir).unwrap();
}

/// `--log-format=json`: every line is one JSON object. A warning with the
/// same cause (etcd has no config yet, retried every few seconds) is
/// logged once a minute, not once per retry; /healthz answers meanwhile
/// and /readyz says what is awaited.
#[test]
fn json_logs_and_warnings_once_per_cause() {
    let ns = TestNetns::new("ljson");
    let etcd = Etcd::start_in(Some(&ns));
    let dir = scratch("json");
    let log = dir.join("overlayd.log");
    let mut cmd = overlayd(
        &ns,
        &etcd,
        &dir.join("subnet.env"),
        &[
            "--log-format=json",
            "--healthz-port=9102",
            "--healthz-ip=127.0.0.1",
        ],
    );
    cmd.stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap());
    let guard = ChildGuard::spawn(cmd, "overlayd");
    // Retries at 1, 2, 4, 5, 5 s: five attempts in 9 s, one warning.
    std::thread::sleep(Duration::from_secs(9));
    let health = ns.exec_ok(&["python3", "-c", HTTP_GET, "http://127.0.0.1:9102/healthz"]);
    let ready = ns.exec(&["python3", "-c", HTTP_GET, "http://127.0.0.1:9102/readyz"]);
    drop(guard);
    let text = std::fs::read_to_string(&log).unwrap();
    let lines: Vec<serde_json::Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect();
    let warnings: Vec<&serde_json::Value> = lines
        .iter()
        .filter(|l| l["level"] == "WARN" && l["message"] == "cannot read the network config")
        .collect();
    assert_eq!(warnings.len(), 1, "{text}");
    assert!(warnings[0]["error"]
        .as_str()
        .unwrap()
        .contains("network config not found"));
    assert!(health.starts_with("200"), "{health}");
    let ready = String::from_utf8_lossy(&ready.stdout).into_owned();
    assert!(
        ready.starts_with("503") && ready.contains("[-] lease: not yet"),
        "{ready}"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

/// Prints "<status> <body>" of a GET (python3 is on every Debian system
/// this runs on; the harness's own HTTP client lives in felt-cluster).
const HTTP_GET: &str = r#"
import sys, urllib.request, urllib.error
try:
    r = urllib.request.urlopen(sys.argv[1], timeout=3); print(r.status, r.read().decode())
except urllib.error.HTTPError as e:
    print(e.code, e.read().decode()); sys.exit(1)
"#;
