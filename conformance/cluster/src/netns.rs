//! Named network namespaces owned by the harness, deleted on drop
//! together with every process still inside them.

use crate::error::{parse_err, Result};
use crate::process::{ip, run};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};

static CLUSTERS: AtomicUsize = AtomicUsize::new(0);

/// How a cluster names its namespaces: `<prefix>-<tag>-<suffix>`.
///
/// Tests use `felt-t-<tag>-<pid>-<n>`, the shape `scripts/test.sh` knows
/// (it deletes leftovers whose pid is gone); the demo uses
/// `felt-demo-<tag>-<pid>`.
#[derive(Debug, Clone)]
pub struct Naming {
    prefix: String,
    suffix: String,
}

impl Naming {
    /// Names for a test cluster, unique within and across test processes.
    pub fn test() -> Self {
        let n = CLUSTERS.fetch_add(1, Ordering::SeqCst);
        Naming {
            prefix: "felt-t".into(),
            suffix: format!("{}-{n}", std::process::id()),
        }
    }

    /// Names for the demo: short enough to type.
    pub fn demo() -> Self {
        Naming {
            prefix: "felt-demo".into(),
            suffix: std::process::id().to_string(),
        }
    }

    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    pub fn name(&self, tag: &str) -> String {
        format!("{}-{tag}-{}", self.prefix, self.suffix)
    }
}

/// A network namespace under /run/netns.
#[derive(Debug)]
pub struct Netns {
    name: String,
}

impl Netns {
    /// `ip netns add <name>`, loopback up.
    pub fn create(name: &str) -> Result<Self> {
        ip(&["netns", "add", name])?;
        let ns = Netns {
            name: name.to_string(),
        };
        ns.ip(&["link", "set", "lo", "up"])?;
        Ok(ns)
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// What a runtime passes as CNI_NETNS.
    pub fn path(&self) -> PathBuf {
        PathBuf::from(format!("/run/netns/{}", self.name))
    }

    /// A command that runs inside this namespace.
    pub fn command(&self, program: &str) -> Command {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.name, program]);
        cmd
    }

    /// Runs `argv` inside; fails unless it succeeds; returns stdout.
    pub fn exec(&self, argv: &[&str]) -> Result<String> {
        let Some((program, args)) = argv.split_first() else {
            return Ok(String::new());
        };
        run(self.command(program).args(args))
    }

    /// `ip -n <ns> <args>`.
    pub fn ip(&self, args: &[&str]) -> Result<String> {
        let mut all = vec!["-n", &self.name];
        all.extend_from_slice(args);
        ip(&all)
    }

    /// `ip -n <ns> -j <args>` parsed; empty output reads as `[]`.
    pub fn ip_json(&self, args: &[&str]) -> Result<Vec<serde_json::Value>> {
        let mut all = vec!["-j"];
        all.extend_from_slice(args);
        parse_json_list(&self.ip(&all)?, &format!("ip {}", all.join(" ")))
    }

    /// `bridge -n <ns> -j fdb show dev <dev>`, parsed.
    pub fn fdb(&self, dev: &str) -> Result<Vec<serde_json::Value>> {
        let out =
            run(Command::new("bridge").args(["-n", &self.name, "-j", "fdb", "show", "dev", dev]))?;
        parse_json_list(&out, "bridge fdb show")
    }

    /// Sets a sysctl inside the namespace (never in the root one).
    pub fn sysctl(&self, key: &str, value: &str) -> Result<()> {
        self.exec(&["sysctl", "-q", "-w", &format!("{key}={value}")])
            .map(|_| ())
    }
}

fn parse_json_list(out: &str, what: &str) -> Result<Vec<serde_json::Value>> {
    if out.trim().is_empty() {
        return Ok(Vec::new());
    }
    match serde_json::from_str(out) {
        Ok(serde_json::Value::Array(items)) => Ok(items),
        Ok(other) => Err(parse_err(what, format!("not a list: {other}"))),
        Err(e) => Err(parse_err(what, e)),
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        // Processes keep a namespace alive after `ip netns del`: kill them
        // first (daemons, pings, iperf3).
        let pids = Command::new("ip")
            .args(["netns", "pids", &self.name])
            .stderr(Stdio::null())
            .output();
        if let Ok(out) = pids {
            for pid in String::from_utf8_lossy(&out.stdout).split_whitespace() {
                if let Ok(pid) = pid.parse::<i32>() {
                    let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
                }
            }
        }
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .stderr(Stdio::null())
            .status();
    }
}
