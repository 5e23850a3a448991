//! Pods: a network namespace wired up by the `felt` CNI plugin, called
//! exactly as a container runtime calls it.

use crate::error::{io_err, parse_err, Result};
use crate::netns::Netns;
use crate::node::Node;
use crate::process::{describe, stdout_if_success};
use serde_json::Value;
use std::io::Write;
use std::net::Ipv4Addr;
use std::path::Path;
use std::process::Stdio;

pub struct Pod {
    /// `pod1.2` = second pod on node1 (what the demo prints).
    pub name: String,
    pub ns: Netns,
    pub ip: Ipv4Addr,
    /// Index of the node it runs on.
    pub node: usize,
    pub container_id: String,
}

/// The network config a runtime would hand the plugin for a node.
pub fn cni_config(node: &Node) -> String {
    serde_json::json!({
        "cniVersion": "1.0.0",
        "name": "cbr0",
        "type": "felt",
        "subnetFile": node.subnet_file(),
        "dataDir": node.dir().join("cni"),
    })
    .to_string()
}

/// Runs `felt` in `node`'s namespace with CNI_COMMAND=`command` for the
/// pod namespace `pod_ns`; returns the plugin's stdout.
pub fn run_cni(
    felt: &Path,
    node: &Node,
    command: &str,
    pod_ns: &Netns,
    id: &str,
) -> Result<String> {
    let cni_path = felt.parent().unwrap_or(Path::new("/"));
    let mut cmd = node.ns.command(&felt.to_string_lossy());
    cmd.env("CNI_COMMAND", command)
        .env("CNI_CONTAINERID", id)
        .env("CNI_NETNS", pod_ns.path())
        .env("CNI_IFNAME", "eth0")
        .env("CNI_PATH", cni_path)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let what = format!("felt {command} for {}", pod_ns.name());
    let mut child = cmd.spawn().map_err(io_err(format!("cannot run {what}")))?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin
            .write_all(cni_config(node).as_bytes())
            .map_err(io_err(format!("cannot write config to {what}")))?;
    }
    let out = child
        .wait_with_output()
        .map_err(io_err(format!("cannot wait for {what}")))?;
    stdout_if_success(out, format!("CNI_COMMAND={command} {}", describe(&cmd)))
}

/// The first IPv4 address of a CNI result (`ips[].address`, `a.b.c.d/nn`).
pub fn result_ipv4(result: &str) -> Result<Ipv4Addr> {
    let v: Value = serde_json::from_str(result).map_err(|e| parse_err("CNI result", e))?;
    v["ips"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|ip| ip["address"].as_str())
        .filter_map(|a| a.split('/').next())
        .find_map(|a| a.parse::<Ipv4Addr>().ok())
        .ok_or_else(|| parse_err("CNI result", format!("no IPv4 address in {result}")))
}

/// One ping's outcome.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Ping {
    pub ok: bool,
    /// Round-trip time of the reply, in milliseconds.
    pub rtt_ms: Option<f64>,
}

impl Pod {
    /// One echo request to `to`, waiting at most `wait_secs` for the reply.
    pub fn ping(&self, to: Ipv4Addr, wait_secs: u32) -> Result<Ping> {
        ping_from(&self.ns, to, wait_secs)
    }
}

/// `ping -c 1` from inside `ns`.
pub fn ping_from(ns: &Netns, to: Ipv4Addr, wait_secs: u32) -> Result<Ping> {
    let out = ns
        .command("ping")
        .args([
            "-n",
            "-c",
            "1",
            "-W",
            &wait_secs.to_string(),
            &to.to_string(),
        ])
        .stdin(Stdio::null())
        .output()
        .map_err(io_err("cannot run ping"))?;
    let text = String::from_utf8_lossy(&out.stdout);
    // "64 bytes from 10.244.2.2: icmp_seq=1 ttl=62 time=0.081 ms"
    let rtt_ms = text
        .split("time=")
        .nth(1)
        .and_then(|s| s.split_whitespace().next())
        .and_then(|s| s.parse().ok());
    Ok(Ping {
        ok: out.status.success(),
        rtt_ms,
    })
}
