//! A real etcd (Debian's `etcd` binary) inside the underlay namespace,
//! on the bridge's address so every node can reach it, plus an `etcdctl`
//! client run in the same namespace.

use crate::error::{parse_err, HarnessError, Result};
use crate::netns::Netns;
use crate::process::{require_tool, run, Daemon};
use crate::wait::wait_for;
use base64::Engine;
use serde_json::Value;
use std::net::Ipv4Addr;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

/// etcd's client port (inside the underlay namespace, so never clashes).
pub const CLIENT_PORT: u16 = 2379;

pub struct Etcd {
    daemon: Daemon,
    ns: String,
    endpoint: String,
}

impl Etcd {
    /// Starts etcd in `ns`, listening on `addr`, data in `dir`; waits until
    /// it answers.
    pub fn start(ns: &Netns, addr: Ipv4Addr, dir: &Path) -> Result<Self> {
        require_tool("etcd")?;
        require_tool("etcdctl")?;
        let endpoint = format!("http://{addr}:{CLIENT_PORT}");
        let peer = "http://127.0.0.1:2380";
        let data = dir.join("etcd-data");
        let mut cmd = ns.command("etcd");
        cmd.args(["--name", "felt"])
            .arg("--data-dir")
            .arg(&data)
            .args(["--listen-client-urls", &endpoint])
            .args(["--advertise-client-urls", &endpoint])
            .args(["--listen-peer-urls", peer])
            .args(["--initial-advertise-peer-urls", peer])
            .args(["--initial-cluster", &format!("felt={peer}")])
            .args([
                "--logger",
                "zap",
                "--log-outputs",
                "stderr",
                "--log-level",
                "warn",
            ]);
        let daemon = Daemon::spawn(cmd, "etcd", &dir.join("etcd.log"))?;
        let mut etcd = Etcd {
            daemon,
            ns: ns.name().to_string(),
            endpoint,
        };
        etcd.wait_ready()?;
        Ok(etcd)
    }

    fn wait_ready(&mut self) -> Result<()> {
        let waited = wait_for("etcd to answer", Duration::from_secs(20), || {
            if let Some(status) = self.daemon.try_wait()? {
                return Err(HarnessError::Setup(format!(
                    "etcd exited ({status}): {}",
                    crate::process::tail(&self.daemon.log(), 20)
                )));
            }
            Ok(self.ctl(&["endpoint", "health"]).is_ok())
        });
        waited.map(|_| ())
    }

    /// `http://<underlay addr>:2379`, what overlayd gets as --etcd-endpoints.
    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    pub fn log(&self) -> String {
        self.daemon.log()
    }

    fn ctl(&self, args: &[&str]) -> Result<String> {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.ns, "etcdctl"])
            .args(["--endpoints", &self.endpoint, "--dial-timeout", "2s"])
            .args(args)
            .env("ETCDCTL_API", "3");
        run(&mut cmd)
    }

    pub fn put(&self, key: &str, value: &str) -> Result<()> {
        // `--` so a value starting with '-' is not read as a flag.
        self.ctl(&["put", key, "--", value]).map(|_| ())
    }

    /// Puts `key` bound to a fresh lease of `ttl_secs`, the way flannel
    /// stores its subnet leases.
    pub fn put_with_ttl(&self, key: &str, value: &str, ttl_secs: u64) -> Result<()> {
        let out = self.ctl(&["lease", "grant", &ttl_secs.to_string()])?;
        // "lease 694d7a0b5d3e3f0a granted with TTL(86400s)"
        let id = out
            .split_whitespace()
            .nth(1)
            .ok_or_else(|| parse_err("etcdctl lease grant", &out))?;
        self.ctl(&["put", &format!("--lease={id}"), key, "--", value])
            .map(|_| ())
    }

    /// Every key under `prefix` with its value, in key order.
    pub fn get_prefix(&self, prefix: &str) -> Result<Vec<KeyValue>> {
        let out = self.ctl(&["get", "--prefix", prefix, "-w", "json"])?;
        parse_kvs(&out)
    }

    pub fn get(&self, key: &str) -> Result<Option<KeyValue>> {
        let out = self.ctl(&["get", key, "-w", "json"])?;
        Ok(parse_kvs(&out)?.into_iter().find(|kv| kv.key == key))
    }

    /// Deletes `key`; true when it existed.
    pub fn delete(&self, key: &str) -> Result<bool> {
        let out = self.ctl(&["del", key])?;
        Ok(out.trim() == "1")
    }

    /// The granted TTL and remaining seconds of the lease `key` is bound
    /// to; None when the key has no lease (a reservation).
    pub fn lease_ttl(&self, lease: i64) -> Result<Option<(i64, i64)>> {
        if lease == 0 {
            return Ok(None);
        }
        let out = self.ctl(&["lease", "timetolive", &format!("{lease:x}"), "-w", "json"])?;
        let v: Value = serde_json::from_str(&out).map_err(|e| parse_err("lease timetolive", e))?;
        let granted = v["granted-ttl"].as_i64();
        let ttl = v["ttl"].as_i64();
        match (granted, ttl) {
            (Some(g), Some(t)) => Ok(Some((g, t))),
            _ => Err(parse_err("lease timetolive", out)),
        }
    }
}

/// One etcd key with its value and the lease it is bound to (0: none).
#[derive(Debug, Clone)]
pub struct KeyValue {
    pub key: String,
    pub value: String,
    pub lease: i64,
}

fn parse_kvs(out: &str) -> Result<Vec<KeyValue>> {
    let v: Value = serde_json::from_str(out).map_err(|e| parse_err("etcdctl get -w json", e))?;
    let Some(kvs) = v.get("kvs").and_then(Value::as_array) else {
        return Ok(Vec::new());
    };
    kvs.iter().map(parse_kv).collect()
}

fn parse_kv(kv: &Value) -> Result<KeyValue> {
    let field = |name: &str| -> Result<String> {
        let b64 = kv[name].as_str().unwrap_or("");
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(b64)
            .map_err(|e| parse_err(format!("etcd {name}"), e))?;
        String::from_utf8(bytes).map_err(|e| parse_err(format!("etcd {name}"), e))
    };
    Ok(KeyValue {
        key: field("key")?,
        value: field("value")?,
        lease: kv["lease"].as_i64().unwrap_or(0),
    })
}
