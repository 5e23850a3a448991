//! Test harness for the `felt` binary, driven like a container runtime:
//! the plugin runs with its network namespace set to a throwaway "node"
//! namespace (`ip netns exec`), pods are throwaway namespaces too, and
//! every file it writes goes to a per-test temp dir. Nothing here touches
//! the machine's own namespace or /var/lib/cni.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use felt_common::testutil::TestNetns;
use serde_json::{json, Value};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

pub const FELT: &str = env!("CARGO_BIN_EXE_felt");
pub const NET_NAME: &str = "felt-test";
pub const ALL_VERSIONS: [&str; 5] = ["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"];
pub const DEFAULT_SUBNET_ENV: &str = "FLANNEL_NETWORK=10.244.0.0/16\n\
     FLANNEL_SUBNET=10.244.1.1/24\nFLANNEL_MTU=1450\nFLANNEL_IPMASQ=true\n";
/// A plugin call that takes longer than this is a hang, not a slow call.
const CALL_TIMEOUT: Duration = Duration::from_secs(30);

static TMP_COUNTER: AtomicUsize = AtomicUsize::new(0);

/// A temp directory removed on drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> Self {
        let n = TMP_COUNTER.fetch_add(1, Ordering::SeqCst);
        let dir =
            std::env::temp_dir().join(format!("felt-cnitest-{tag}-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        TempDir(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// What one plugin process did.
#[derive(Debug)]
pub struct Outcome {
    pub exit: i32,
    pub stdout: String,
    pub stderr: String,
    /// stdout parsed as JSON, when it is JSON.
    pub json: Option<Value>,
    pub elapsed: Duration,
}

impl Outcome {
    /// Asserts success and returns the parsed result (Null when stdout is empty).
    pub fn ok(&self) -> Value {
        assert_eq!(self.exit, 0, "plugin failed: {self:#?}");
        self.json.clone().unwrap_or(Value::Null)
    }

    /// Asserts a failure reported the CNI way: non-zero exit, JSON error
    /// on stdout with a numeric code and a message. Returns (code, msg).
    pub fn err(&self) -> (u64, String) {
        assert_ne!(self.exit, 0, "plugin unexpectedly succeeded: {self:#?}");
        let j = self
            .json
            .as_ref()
            .unwrap_or_else(|| panic!("error is not JSON on stdout: {self:#?}"));
        let code = j["code"]
            .as_u64()
            .unwrap_or_else(|| panic!("error JSON lacks a numeric code: {self:#?}"));
        let msg = j["msg"]
            .as_str()
            .unwrap_or_else(|| panic!("error JSON lacks msg: {self:#?}"))
            .to_string();
        assert!(!msg.is_empty(), "empty msg: {self:#?}");
        (code, msg)
    }

    /// msg + details, for "the error names X" checks.
    pub fn err_text(&self) -> String {
        let (_, msg) = self.err();
        let details = self
            .json
            .as_ref()
            .and_then(|j| j["details"].as_str())
            .unwrap_or("");
        format!("{msg} {details}")
    }

    /// Asserts the failure has exactly this CNI code; returns msg+details.
    pub fn err_code(&self, want: u64) -> String {
        let (code, _) = self.err();
        assert_eq!(code, want, "wrong CNI error code: {self:#?}");
        self.err_text()
    }
}

/// One plugin invocation, as a runtime would make it.
#[derive(Clone, Debug)]
pub struct Call {
    pub command: String,
    pub env: Vec<(String, String)>,
    pub stdin: String,
}

impl Call {
    /// A call with only CNI_COMMAND and CNI_PATH set.
    pub fn bare(command: &str, conf: &Value) -> Self {
        Call {
            command: command.to_string(),
            env: vec![
                ("CNI_COMMAND".into(), command.into()),
                ("CNI_PATH".into(), "/usr/lib/cni".into()),
            ],
            stdin: conf.to_string(),
        }
    }

    /// A container call (ADD/DEL/CHECK) for `pod` with ifname `ifname`.
    pub fn pod(command: &str, conf: &Value, pod: &Pod, ifname: &str) -> Self {
        Call::bare(command, conf)
            .env("CNI_CONTAINERID", &pod.id)
            .env("CNI_NETNS", &pod.path())
            .env("CNI_IFNAME", ifname)
    }

    /// Sets (or replaces) one environment variable.
    pub fn env(mut self, key: &str, value: &str) -> Self {
        self.env.retain(|(k, _)| k != key);
        self.env.push((key.into(), value.into()));
        self
    }

    /// Removes one environment variable.
    pub fn unset(mut self, key: &str) -> Self {
        self.env.retain(|(k, _)| k != key);
        self
    }

    pub fn stdin(mut self, text: &str) -> Self {
        self.stdin = text.to_string();
        self
    }

    /// The process that runs the plugin inside `node` (not yet started).
    pub fn command_in(&self, node: &TestNetns, felt: &str) -> Command {
        let mut cmd = node.command(felt);
        cmd.env_clear()
            .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        for (k, v) in &self.env {
            cmd.env(k, v);
        }
        cmd
    }

    /// Runs the plugin binary `felt` inside `node`; checks it never panics.
    pub fn run_bin(&self, node: &TestNetns, felt: &str) -> Outcome {
        let start = Instant::now();
        let mut child = self.command_in(node, felt).spawn().unwrap();
        let mut stdin = child.stdin.take().unwrap();
        // A plugin may exit before reading stdin (bad env): ignore EPIPE.
        let _ = stdin.write_all(self.stdin.as_bytes());
        drop(stdin);
        let out = wait_with_timeout(child, CALL_TIMEOUT, &self.command);
        let elapsed = start.elapsed();
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        let json = serde_json::from_str(stdout.trim()).ok();
        let o = Outcome {
            exit: out.status.code().unwrap_or(-1),
            stdout,
            stderr,
            json,
            elapsed,
        };
        assert!(!o.stderr.contains("panicked"), "plugin panicked: {o:#?}");
        assert!(
            out.status.code().is_some(),
            "plugin killed by a signal: {o:#?}"
        );
        o
    }

    pub fn run(&self, node: &Node) -> Outcome {
        self.run_bin(&node.ns, FELT)
    }
}

fn wait_with_timeout(
    mut child: std::process::Child,
    limit: Duration,
    what: &str,
) -> std::process::Output {
    // Read pipes on threads so a chatty plugin cannot block on a full pipe.
    let mut so = child.stdout.take().unwrap();
    let mut se = child.stderr.take().unwrap();
    let t_out = std::thread::spawn(move || {
        let mut v = Vec::new();
        let _ = std::io::Read::read_to_end(&mut so, &mut v);
        v
    });
    let t_err = std::thread::spawn(move || {
        let mut v = Vec::new();
        let _ = std::io::Read::read_to_end(&mut se, &mut v);
        v
    });
    let start = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if start.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            panic!("plugin {what} did not finish within {limit:?} (hang)");
        }
        std::thread::sleep(Duration::from_millis(2));
    };
    std::process::Output {
        status,
        stdout: t_out.join().unwrap(),
        stderr: t_err.join().unwrap(),
    }
}

/// A pod: its own network namespace and a container ID.
pub struct Pod {
    pub ns: TestNetns,
    pub id: String,
}

impl Pod {
    pub fn new(tag: &str) -> Self {
        let ns = TestNetns::new(tag);
        // The namespace name is unique, so it makes a unique container ID.
        let id = format!("cid-{}", ns.name);
        Pod { ns, id }
    }

    pub fn path(&self) -> String {
        self.ns.path().to_string_lossy().into_owned()
    }

    pub fn links(&self) -> Vec<Value> {
        ip_json(&self.ns, &["-d", "link", "show"])
    }

    pub fn link(&self, ifname: &str) -> Option<Value> {
        find_link(&self.links(), ifname)
    }

    /// "addr/prefix" IPv4 addresses on `ifname`.
    pub fn addrs(&self, ifname: &str) -> Vec<String> {
        addrs_of(&self.ns, ifname)
    }

    /// IPv4 routes (main table) as JSON objects.
    pub fn routes(&self) -> Vec<Value> {
        ip_json(&self.ns, &["-4", "route", "show"])
    }

    pub fn default_route(&self) -> Option<Value> {
        self.routes().into_iter().find(|r| r["dst"] == "default")
    }

    /// `ping -c1 -W1 <ip>` from inside the pod; true when answered.
    pub fn ping(&self, ip: &str) -> bool {
        self.ns
            .exec(&["ping", "-n", "-c1", "-W1", ip])
            .status
            .success()
    }

    pub fn sysctl(&self, key: &str) -> String {
        sysctl(&self.ns, key)
    }
}

/// A node: its network namespace (where the plugin runs, where cni0 lives)
/// plus a temp dir holding subnet.env and the IPAM data dir.
pub struct Node {
    pub ns: TestNetns,
    pub tmp: TempDir,
    pub subnet_file: PathBuf,
    pub data_dir: PathBuf,
}

impl Node {
    /// A node whose subnet.env is flannel's usual 10.244.1.1/24, MTU 1450.
    pub fn new(tag: &str) -> Self {
        Self::with_subnet_env(tag, DEFAULT_SUBNET_ENV)
    }

    pub fn with_subnet_env(tag: &str, subnet_env: &str) -> Self {
        let ns = TestNetns::new(tag);
        let tmp = TempDir::new(tag);
        let subnet_file = tmp.0.join("subnet.env");
        std::fs::write(&subnet_file, subnet_env).unwrap();
        let data_dir = tmp.0.join("networks");
        Node {
            ns,
            tmp,
            subnet_file,
            data_dir,
        }
    }

    /// The plugin config a runtime would pass, for `version`.
    pub fn conf(&self, version: &str) -> Value {
        json!({
            "cniVersion": version,
            "name": NET_NAME,
            "type": "felt",
            "subnetFile": self.subnet_file,
            "dataDir": self.data_dir,
        })
    }

    pub fn add(&self, pod: &Pod, conf: &Value) -> Outcome {
        Call::pod("ADD", conf, pod, "eth0").run(self)
    }

    /// ADD that must succeed; returns the result.
    pub fn add_ok(&self, pod: &Pod, version: &str) -> Value {
        self.add(pod, &self.conf(version)).ok()
    }

    pub fn del(&self, pod: &Pod, conf: &Value) -> Outcome {
        Call::pod("DEL", conf, pod, "eth0").run(self)
    }

    /// CHECK with `prev` as prevResult, the way a runtime passes the cached ADD result.
    pub fn check(&self, pod: &Pod, version: &str, prev: &Value) -> Outcome {
        let mut conf = self.conf(version);
        conf["prevResult"] = prev.clone();
        Call::pod("CHECK", &conf, pod, "eth0").run(self)
    }

    /// Where host-local-format IP files of the test network live.
    pub fn ip_dir(&self) -> PathBuf {
        self.data_dir.join(NET_NAME)
    }

    /// Names of the IP reservation files (those named like an IP).
    pub fn ip_files(&self) -> Vec<String> {
        ip_files_in(&self.ip_dir())
    }

    /// Writes an IP file the way host-local would (a reservation left by
    /// an earlier boot or by flannel's plugin).
    pub fn reserve(&self, ip: &str, container_id: &str, ifname: &str) {
        std::fs::create_dir_all(self.ip_dir()).unwrap();
        std::fs::write(
            self.ip_dir().join(ip),
            format!("{container_id}\r\n{ifname}"),
        )
        .unwrap();
    }

    /// Removes a reservation file made with [`Node::reserve`] (its pod is gone).
    pub fn release(&self, ip: &str) {
        std::fs::remove_file(self.ip_dir().join(ip)).unwrap();
    }

    pub fn links(&self) -> Vec<Value> {
        ip_json(&self.ns, &["-d", "link", "show"])
    }

    pub fn link(&self, ifname: &str) -> Option<Value> {
        find_link(&self.links(), ifname)
    }

    /// Names of the host-side veths (all `veth*` links) in the node.
    pub fn veths(&self) -> Vec<String> {
        self.links()
            .iter()
            .filter(|l| l["linkinfo"]["info_kind"] == "veth")
            .map(|l| l["ifname"].as_str().unwrap_or_default().to_string())
            .collect()
    }

    /// Names of all bridges in the node.
    pub fn bridges(&self) -> Vec<String> {
        self.links()
            .iter()
            .filter(|l| l["linkinfo"]["info_kind"] == "bridge")
            .map(|l| l["ifname"].as_str().unwrap_or_default().to_string())
            .collect()
    }

    pub fn addrs(&self, ifname: &str) -> Vec<String> {
        addrs_of(&self.ns, ifname)
    }

    pub fn sysctl(&self, key: &str) -> String {
        sysctl(&self.ns, key)
    }
}

/// A sysctl as seen inside `ns` (/proc/sys/net resolves per netns).
pub fn sysctl(ns: &TestNetns, key: &str) -> String {
    let path = format!("/proc/sys/{}", key.replace('.', "/"));
    ns.exec_ok(&["cat", &path]).trim().to_string()
}

/// `ip -j <args>` inside `ns`, parsed.
pub fn ip_json(ns: &TestNetns, args: &[&str]) -> Vec<Value> {
    let mut argv = vec!["ip", "-j"];
    argv.extend_from_slice(args);
    let out = ns.exec_ok(&argv);
    if out.trim().is_empty() {
        return Vec::new();
    }
    match serde_json::from_str::<Value>(&out) {
        Ok(Value::Array(v)) => v,
        other => panic!("unexpected ip -j output {out:?}: {other:?}"),
    }
}

fn find_link(links: &[Value], ifname: &str) -> Option<Value> {
    links.iter().find(|l| l["ifname"] == ifname).cloned()
}

fn addrs_of(ns: &TestNetns, ifname: &str) -> Vec<String> {
    let out = ns.exec(&["ip", "-j", "-4", "addr", "show", "dev", ifname]);
    if !out.status.success() {
        return Vec::new();
    }
    let v: Vec<Value> = serde_json::from_slice(&out.stdout).unwrap_or_default();
    v.iter()
        .flat_map(|l| l["addr_info"].as_array().cloned().unwrap_or_default())
        .map(|a| format!("{}/{}", a["local"].as_str().unwrap(), a["prefixlen"]))
        .collect()
}

/// IP-named files in a host-local network dir (empty when it is missing).
pub fn ip_files_in(dir: &Path) -> Vec<String> {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut v: Vec<String> = rd
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.parse::<std::net::IpAddr>().is_ok())
        .collect();
    v.sort();
    v
}

/// The pod's address from a result: (ip without prefix, "ip/prefix").
pub fn result_ip(result: &Value) -> (String, String) {
    let cidr = result["ips"][0]["address"]
        .as_str()
        .unwrap_or_else(|| panic!("result has no ips[0].address: {result:#}"))
        .to_string();
    let ip = cidr.split('/').next().unwrap().to_string();
    (ip, cidr)
}

/// The host veth name from a result (interfaces[1]).
pub fn result_host_veth(result: &Value) -> String {
    result["interfaces"][1]["name"]
        .as_str()
        .unwrap_or_else(|| panic!("result has no interfaces[1].name: {result:#}"))
        .to_string()
}
