//! A throwaway containerd 1.6 (Debian's, with runc) for the image tests:
//! its own root, state and socket under a temp dir, in a network namespace
//! made for it and a private mount namespace (its snapshot mounts vanish
//! with it), with the CRI plugin off. Tasks are killed and every process is
//! gone on drop.

use crate::error::{io_err, Result};
use crate::tempdir::TempDir;
use felt_cluster::process::{describe, require_tool, run, Daemon};
use felt_cluster::wait::wait_for;
use felt_cluster::{Naming, Netns};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

/// containerd namespace the kubelet's CRI uses, as `ctr -n k8s.io`.
pub const K8S_NS: &str = "k8s.io";

pub struct Containerd {
    // Drop order: tasks (in drop()), containerd, the namespace, files.
    daemon: Option<Daemon>,
    ns: Netns,
    dir: TempDir,
}

/// One `ctr run`: bind mounts (host dir, container path) and environment.
#[derive(Debug, Default, Clone)]
pub struct RunSpec {
    pub mounts: Vec<(PathBuf, PathBuf)>,
    pub env: Vec<(String, String)>,
}

/// What a container printed and how it exited.
#[derive(Debug)]
pub struct RunOutput {
    pub success: bool,
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

impl Containerd {
    pub fn start() -> Result<Self> {
        for tool in [
            "containerd",
            "ctr",
            "runc",
            "containerd-shim-runc-v2",
            "nsenter",
            "unshare",
        ] {
            require_tool(tool)?;
        }
        let naming = Naming::test();
        let dir = TempDir::new(&std::env::temp_dir().join(naming.name("ctrd")))?;
        let ns = Netns::create(&naming.name("ctrd"))?;
        let config = dir.0.join("config.toml");
        std::fs::write(&config, config_toml(&dir.0))
            .map_err(io_err(format!("write {}", config.display())))?;
        // nsenter, not `ip netns exec`: that would mount a fresh /sys and
        // hide the cgroup hierarchies runc needs.
        let mut cmd = Command::new("nsenter");
        cmd.arg(format!("--net={}", ns.path().display()))
            .args([
                "unshare",
                "--mount",
                "--propagation",
                "private",
                "containerd",
                "--config",
            ])
            .arg(&config);
        let daemon = Daemon::spawn(cmd, "containerd", &dir.0.join("containerd.log"))?;
        let c = Containerd {
            daemon: Some(daemon),
            ns,
            dir,
        };
        wait_for("containerd to answer", Duration::from_secs(30), || {
            Ok(c.ctr(&["version"]).is_ok())
        })?;
        Ok(c)
    }

    fn socket(&self) -> PathBuf {
        self.dir.0.join("containerd.sock")
    }

    /// `ctr -a SOCKET -n k8s.io ARGS`.
    pub fn ctr(&self, args: &[&str]) -> Result<String> {
        Ok(run(Command::new("ctr")
            .arg("-a")
            .arg(self.socket())
            .args(["-n", K8S_NS])
            .args(args))?)
    }

    /// `ctr images import TAR`: what local-node.sh and kind do with an archive.
    pub fn import(&self, tar: &Path) -> Result<String> {
        self.ctr(&["images", "import", &tar.display().to_string()])
    }

    /// `ctr run --rm` of `argv` in `image`; the container has a network
    /// namespace of its own (nothing configured but loopback).
    pub fn run(&self, image: &str, id: &str, spec: &RunSpec, argv: &[&str]) -> Result<RunOutput> {
        let mut cmd = Command::new("ctr");
        cmd.arg("-a")
            .arg(self.socket())
            .args(["-n", K8S_NS, "run", "--rm"]);
        for (src, dst) in &spec.mounts {
            cmd.arg("--mount").arg(format!(
                "type=bind,src={},dst={},options=rbind:rw",
                src.display(),
                dst.display()
            ));
        }
        for (k, v) in &spec.env {
            cmd.arg("--env").arg(format!("{k}={v}"));
        }
        cmd.arg(image).arg(id).args(argv);
        let what = describe(&cmd);
        let out = cmd
            .stdin(std::process::Stdio::null())
            .output()
            .map_err(io_err(format!("run {what}")))?;
        Ok(RunOutput {
            success: out.status.success(),
            code: out.status.code(),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        })
    }

    /// Like [`run`](Self::run), failing unless the container exits 0.
    pub fn run_ok(&self, image: &str, id: &str, spec: &RunSpec, argv: &[&str]) -> Result<String> {
        let out = self.run(image, id, spec, argv)?;
        if out.success {
            return Ok(out.stdout);
        }
        let status = format!("exit {:?}", out.code);
        let output = format!("{}{}", out.stdout, out.stderr);
        Err(felt_cluster::HarnessError::Command {
            cmd: format!("ctr run {image} {}", argv.join(" ")),
            status,
            output,
        }
        .into())
    }

    pub fn log(&self) -> String {
        self.daemon.as_ref().map(Daemon::log).unwrap_or_default()
    }

    pub fn netns(&self) -> &Netns {
        &self.ns
    }
}

impl Drop for Containerd {
    fn drop(&mut self) {
        // Containers of a failed test: killed through containerd, which
        // knows their cgroups; their shims then exit by themselves.
        if let Ok(list) = self.ctr(&["tasks", "ls", "-q"]) {
            for id in list.split_whitespace() {
                let _ = self.ctr(&["tasks", "kill", "-s", "SIGKILL", id]);
                let _ = self.ctr(&["tasks", "delete", "-f", id]);
                let _ = self.ctr(&["containers", "delete", id]);
            }
        }
        // containerd itself; shims left in its network namespace are killed
        // by the Netns guard right after.
        self.daemon.take();
    }
}

fn config_toml(dir: &Path) -> String {
    let d = dir.display();
    format!(
        r#"version = 2
root = "{d}/root"
state = "{d}/state"
oom_score = 0
disabled_plugins = ["io.containerd.grpc.v1.cri", "io.containerd.snapshotter.v1.aufs",
  "io.containerd.snapshotter.v1.btrfs", "io.containerd.snapshotter.v1.zfs",
  "io.containerd.snapshotter.v1.devmapper", "io.containerd.tracing.processor.v1.otlp",
  "io.containerd.internal.v1.tracing"]
[grpc]
  address = "{d}/containerd.sock"
[ttrpc]
  address = "{d}/containerd.sock.ttrpc"
[debug]
  address = ""
[metrics]
  address = ""
[plugins."io.containerd.internal.v1.opt"]
  path = "{d}/opt"
"#
    )
}
