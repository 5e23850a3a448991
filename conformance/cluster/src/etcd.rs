//! A real etcd (Debian's `etcd` binary) inside the underlay namespace,
//! on the bridge's address so every node can reach it, plus an `etcdctl`
//! client run in the same namespace.

use crate::error::{parse_err, HarnessError, Result};
use crate::netns::Netns;
use crate::process::{require_tool, run, Daemon};
use crate::wait::wait_for;
use base64::Engine;
use nix::sys::signal::Signal;
use serde_json::Value;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

/// etcd's client port (inside the underlay namespace, so never clashes).
pub const CLIENT_PORT: u16 = 2379;

pub struct Etcd {
    daemon: Option<Daemon>,
    /// The namespace etcd runs in (owned by the cluster, not by us).
    ns: String,
    endpoint: String,
    dir: PathBuf,
    /// Extra command-line flags (limits for large benchmarks), kept for
    /// restarts.
    flags: Vec<String>,
}

impl Etcd {
    /// Starts etcd in `ns`, listening on `addr`, data in `dir`; waits until
    /// it answers.
    pub fn start(ns: &Netns, addr: Ipv4Addr, dir: &Path) -> Result<Self> {
        Self::start_with_flags(ns, addr, dir, &[])
    }

    /// [`Etcd::start`] with extra etcd flags, e.g.
    /// `--max-txn-ops=1000` for benchmarks that write large transactions.
    pub fn start_with_flags(
        ns: &Netns,
        addr: Ipv4Addr,
        dir: &Path,
        flags: &[String],
    ) -> Result<Self> {
        require_tool("etcd")?;
        require_tool("etcdctl")?;
        let mut etcd = Etcd {
            daemon: None,
            ns: ns.name().to_string(),
            endpoint: format!("http://{addr}:{CLIENT_PORT}"),
            dir: dir.to_path_buf(),
            flags: flags.to_vec(),
        };
        etcd.run()?;
        Ok(etcd)
    }

    /// Stops etcd (SIGTERM), keeping its data: an outage.
    pub fn stop(&mut self) -> Result<()> {
        match self.daemon.take() {
            Some(d) => d.stop(Signal::SIGTERM, Duration::from_secs(10)).map(|_| ()),
            None => Ok(()),
        }
    }

    /// Starts a stopped etcd again on the same data and waits until it
    /// answers.
    pub fn restart(&mut self) -> Result<()> {
        if self.daemon.is_some() {
            return Err(HarnessError::Setup("etcd is running".into()));
        }
        self.run()
    }

    fn run(&mut self) -> Result<()> {
        let endpoint = self.endpoint.clone();
        let peer = "http://127.0.0.1:2380";
        let data = self.dir.join("etcd-data");
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.ns, "etcd"]);
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
            ])
            .args(&self.flags);
        self.daemon = Some(Daemon::spawn(cmd, "etcd", &self.dir.join("etcd.log"))?);
        self.wait_ready()
    }

    fn wait_ready(&mut self) -> Result<()> {
        let waited = wait_for("etcd to answer", Duration::from_secs(20), || {
            if let Some(d) = self.daemon.as_mut() {
                if let Some(status) = d.try_wait()? {
                    return Err(HarnessError::Setup(format!(
                        "etcd exited ({status}): {}",
                        crate::process::tail(&d.log(), 20)
                    )));
                }
            }
            Ok(self.ctl(&["endpoint", "health"]).is_ok())
        });
        waited.map(|_| ())
    }

    /// One sample of etcd's own /metrics (Prometheus text), e.g.
    /// `grpc_server_started_total{grpc_method="Range",...}`: summed over
    /// every sample whose name and labels contain all of `parts`.
    pub fn metric_sum(&self, parts: &[&str]) -> Result<f64> {
        let addr: std::net::SocketAddr = self
            .endpoint
            .trim_start_matches("http://")
            .parse()
            .map_err(|e| crate::error::parse_err("etcd endpoint", e))?;
        let path = PathBuf::from(format!("/run/netns/{}", self.ns));
        let (_, body) = crate::http::get(&path, addr, "/metrics")?;
        Ok(body
            .lines()
            .filter(|l| !l.starts_with('#') && parts.iter().all(|p| l.contains(p)))
            .filter_map(|l| l.rsplit_once(' ').and_then(|(_, v)| v.parse::<f64>().ok()))
            .sum())
    }

    /// `http://<underlay addr>:2379`, what overlayd gets as --etcd-endpoints.
    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    pub fn log(&self) -> String {
        crate::process::read_log(&self.dir.join("etcd.log"))
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
