//! One cluster node: a network namespace on the underlay with `eth0`,
//! its own temp directory and (usually) an overlayd.

use crate::error::{io_err, parse_err, HarnessError, Result};
use crate::kernel::{snapshot, KernelState};
use crate::netns::Netns;
use crate::process::{read_log, status_text, tail, Daemon};
use crate::wait::{wait_for, POLL};
use felt_common::subnet_env::SubnetEnv;
use ipnet::Ipv4Net;
use nix::sys::signal::Signal;
use std::io::Write;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};

/// The port overlayd serves /healthz, /readyz and /metrics on, in every
/// node's namespace.
pub const HEALTH_PORT: u16 = 9101;

/// How overlayd is started on a node.
#[derive(Debug, Clone)]
pub struct OverlaydArgs {
    pub binary: PathBuf,
    pub etcd_endpoint: String,
    pub etcd_prefix: String,
    /// Flags every overlayd of the cluster gets (before per-start ones).
    pub common: Vec<String>,
}

pub struct Node {
    /// `node1`, `node2`, ... (what the demo prints).
    pub name: String,
    pub ns: Netns,
    /// The node's underlay address on `eth0`.
    pub ip: Ipv4Addr,
    dir: PathBuf,
    overlayd: Option<Daemon>,
    starts: u32,
}

impl Node {
    pub(crate) fn new(name: String, ns: Netns, ip: Ipv4Addr, dir: PathBuf) -> Self {
        Node {
            name,
            ns,
            ip,
            dir,
            overlayd: None,
            starts: 0,
        }
    }

    /// The node's temp directory (subnet.env, CNI data, logs).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn subnet_file(&self) -> PathBuf {
        self.dir.join("subnet.env")
    }

    pub fn overlayd_log_path(&self) -> PathBuf {
        self.dir.join("overlayd.log")
    }

    /// overlayd's output so far, empty before its first start.
    pub fn overlayd_log(&self) -> String {
        let path = self.overlayd_log_path();
        if path.exists() {
            read_log(&path)
        } else {
            String::new()
        }
    }

    pub fn subnet_env(&self) -> Result<SubnetEnv> {
        SubnetEnv::read(&self.subnet_file()).map_err(|e| parse_err("subnet.env", e))
    }

    /// The node's pod subnet (network address form, e.g. 10.244.3.0/24).
    pub fn subnet(&self) -> Result<Ipv4Net> {
        let env = self.subnet_env()?;
        env.subnet
            .map(|s| s.trunc())
            .ok_or_else(|| parse_err("subnet.env", "no FLANNEL_SUBNET"))
    }

    /// The etcd key of this node's lease, e.g.
    /// `/coreos.com/network/subnets/10.244.3.0-24`.
    pub fn lease_key(&self, prefix: &str) -> Result<String> {
        Ok(lease_key(prefix, self.subnet()?))
    }

    /// Kernel objects the overlay owns in this node (routes, flannel.1
    /// neighbours and FDB).
    pub fn kernel(&self) -> Result<KernelState> {
        snapshot(&self.ns)
    }

    /// The pid of the running overlayd (its own: `ip netns exec` execs
    /// it), for reading /proc/<pid>/status and /proc/<pid>/stat.
    pub fn overlayd_pid(&self) -> Option<u32> {
        self.overlayd.as_ref().map(Daemon::pid)
    }

    pub fn overlayd_running(&mut self) -> bool {
        match self.overlayd.as_mut() {
            Some(d) => matches!(d.try_wait(), Ok(None)),
            None => false,
        }
    }

    /// Starts overlayd in the node's namespace with flanneld's flags, plus
    /// `extra` flags.
    pub fn start_overlayd(&mut self, args: &OverlaydArgs, extra: &[&str]) -> Result<()> {
        if self.overlayd_running() {
            return Err(HarnessError::Setup(format!(
                "overlayd already runs on {}",
                self.name
            )));
        }
        self.starts += 1;
        let log = self.overlayd_log_path();
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .map_err(io_err(format!("cannot open {}", log.display())))?;
        writeln!(f, "=== harness: overlayd start #{} ===", self.starts)
            .map_err(io_err("cannot write overlayd log"))?;
        let mut cmd = self.ns.command(&args.binary.to_string_lossy());
        cmd.args(["--etcd-endpoints", &args.etcd_endpoint])
            .args(["--etcd-prefix", &args.etcd_prefix])
            .args(["--iface", "eth0"])
            .args(["--healthz-ip", "127.0.0.1"])
            .args(["--healthz-port", &HEALTH_PORT.to_string()])
            .arg("--subnet-file")
            .arg(self.subnet_file())
            .args(&args.common)
            .args(extra)
            .env(
                "RUST_LOG",
                std::env::var("FELT_OVERLAYD_LOG").unwrap_or("info".into()),
            );
        let what = format!("overlayd on {}", self.name);
        self.overlayd = Some(Daemon::spawn(cmd, &what, &log)?);
        Ok(())
    }

    /// Stops overlayd with `signal` (SIGKILL after 5 s); returns how it
    /// ended, e.g. "exit code 0".
    pub fn stop_overlayd(&mut self, signal: Signal) -> Result<String> {
        match self.overlayd.take() {
            Some(d) => d
                .stop(signal, Duration::from_secs(5))
                .map(|s| status_text(&s)),
            None => Err(HarnessError::Setup(format!(
                "overlayd does not run on {}",
                self.name
            ))),
        }
    }

    /// Waits for overlayd to exit on its own (bad config); returns its
    /// exit status text and its log.
    pub fn wait_overlayd_exit(&mut self, timeout: Duration) -> Result<(Option<i32>, String)> {
        let Some(d) = self.overlayd.as_mut() else {
            return Err(HarnessError::Setup("overlayd was not started".into()));
        };
        let status = d.wait_exit(timeout)?;
        self.overlayd = None;
        Ok((status.code(), self.overlayd_log()))
    }

    /// Waits until subnet.env exists and was written at or after `since`
    /// (a restart rewrites it); fails early when overlayd dies.
    pub fn wait_subnet_env(&mut self, since: SystemTime, timeout: Duration) -> Result<Duration> {
        let file = self.subnet_file();
        let start = Instant::now();
        loop {
            let fresh = std::fs::metadata(&file)
                .and_then(|m| m.modified())
                .map(|t| t >= since)
                .unwrap_or(false);
            if fresh && self.subnet_env().is_ok() {
                return Ok(start.elapsed());
            }
            if let Some(d) = self.overlayd.as_mut() {
                if let Some(status) = d.try_wait()? {
                    return Err(HarnessError::Setup(format!(
                        "overlayd on {} exited ({}) before writing {}:\n{}",
                        self.name,
                        status_text(&status),
                        file.display(),
                        tail(&self.overlayd_log(), 30)
                    )));
                }
            }
            if start.elapsed() > timeout {
                return Err(HarnessError::Timeout {
                    what: format!("{} on {}", file.display(), self.name),
                    waited: timeout,
                });
            }
            std::thread::sleep(POLL);
        }
    }

    /// Waits until `check(kernel state)` holds on this node.
    pub fn wait_kernel(
        &self,
        what: &str,
        timeout: Duration,
        mut check: impl FnMut(&KernelState) -> bool,
    ) -> Result<Duration> {
        let what = format!("{what} on {}", self.name);
        wait_for(&what, timeout, || Ok(check(&self.kernel()?)))
    }
}

impl Node {
    /// `GET path` on the node's overlayd health endpoint: (status, body).
    pub fn health_get(&self, path: &str) -> Result<(u16, String)> {
        let addr = std::net::SocketAddr::from((Ipv4Addr::LOCALHOST, HEALTH_PORT));
        crate::http::get(&self.ns.path(), addr, path)
    }

    /// /readyz: whether the node is ready, and the body (the reasons).
    pub fn readyz(&self) -> Result<(bool, String)> {
        let (code, body) = self.health_get("/readyz")?;
        Ok((code == 200, body))
    }

    /// One sample of overlayd's /metrics, e.g.
    /// `felt_reconcile_corrections_total{kind="route"}`; absent reads 0.
    pub fn metric(&self, sample: &str) -> Result<f64> {
        let (_, body) = self.health_get("/metrics")?;
        Ok(crate::http::metric(&body, sample))
    }
}

/// flannel's lease key for `subnet`: `<prefix>/subnets/10.244.3.0-24`.
pub fn lease_key(prefix: &str, subnet: Ipv4Net) -> String {
    format!(
        "{}/subnets/{}-{}",
        prefix.trim_end_matches('/'),
        subnet.network(),
        subnet.prefix_len()
    )
}
