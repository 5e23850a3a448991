//! A real kube-apiserver v1.20.2 (RBAC on, token auth) with Debian's etcd,
//! both on the loopback of a throwaway network namespace, and kubectl 1.20
//! run inside that namespace as a `system:masters` admin. Everything dies
//! and is removed on drop.

use crate::error::{io_err, Result};
use crate::tempdir::TempDir;
use crate::tools;
use felt_cluster::process::{describe, require_tool, run, stdout_if_success, tail, Daemon};
use felt_cluster::wait::wait_for;
use felt_cluster::{HarnessError, Naming, Netns};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

const PORT: u16 = 6443;

pub struct ApiServer {
    // Field order is drop order: the server, its etcd, the namespace, files.
    api: Daemon,
    _etcd: Daemon,
    ns: Netns,
    dir: TempDir,
    kubectl: PathBuf,
}

impl ApiServer {
    /// Starts etcd and the API server and waits until /readyz answers.
    pub fn start() -> Result<Self> {
        require_tool("etcd")?;
        require_tool("openssl")?;
        let apiserver = tools::kube_apiserver()?;
        let kubectl = tools::kubectl()?;
        let naming = Naming::test();
        let dir = TempDir::new(&std::env::temp_dir().join(naming.name("api")))?;
        let ns = Netns::create(&naming.name("api"))?;
        let etcd = start_etcd(&ns, &dir.0)?;
        write_auth(&dir.0)?;
        let mut cmd = ns.command(&apiserver.display().to_string());
        cmd.args(apiserver_args(&dir.0));
        let api = Daemon::spawn(cmd, "kube-apiserver", &dir.0.join("kube-apiserver.log"))?;
        let server = ApiServer {
            api,
            _etcd: etcd,
            ns,
            dir,
            kubectl,
        };
        server.wait_ready()?;
        Ok(server)
    }

    fn wait_ready(&self) -> Result<()> {
        let ready = wait_for("kube-apiserver /readyz", Duration::from_secs(90), || {
            Ok(self.kubectl(&["get", "--raw", "/readyz"], None).is_ok())
        });
        ready.map(|_| ()).map_err(|e| {
            HarnessError::Setup(format!("{e}; log: {}", tail(&self.api.log(), 30))).into()
        })
    }

    /// kubectl ARGS as the admin, `stdin` piped in; stdout on success.
    pub fn kubectl(&self, args: &[&str], stdin: Option<&str>) -> Result<String> {
        let mut cmd = self.ns.command(&self.kubectl.display().to_string());
        cmd.arg("--kubeconfig")
            .arg(self.dir.0.join("admin.kubeconfig"))
            .arg("--cache-dir")
            .arg(self.dir.0.join("kube-cache"))
            .args(args);
        let Some(input) = stdin else {
            return Ok(run(&mut cmd)?);
        };
        cmd.stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let what = describe(&cmd);
        let mut child = cmd.spawn().map_err(io_err(format!("run {what}")))?;
        if let Some(mut pipe) = child.stdin.take() {
            pipe.write_all(input.as_bytes())
                .map_err(io_err(format!("write to {what}")))?;
        }
        let out = child
            .wait_with_output()
            .map_err(io_err(format!("wait for {what}")))?;
        Ok(stdout_if_success(out, what)?)
    }
}

fn start_etcd(ns: &Netns, dir: &Path) -> Result<Daemon> {
    let url = "http://127.0.0.1:2379";
    let peer = "http://127.0.0.1:2380";
    let mut cmd = ns.command("etcd");
    cmd.args(["--name", "api"])
        .arg("--data-dir")
        .arg(dir.join("etcd"))
        .args(["--listen-client-urls", url, "--advertise-client-urls", url])
        .args([
            "--listen-peer-urls",
            peer,
            "--initial-advertise-peer-urls",
            peer,
        ])
        .args(["--initial-cluster", &format!("api={peer}")])
        .args(["--log-level", "warn", "--logger", "zap"]);
    Ok(Daemon::spawn(cmd, "etcd", &dir.join("etcd.log"))?)
}

/// An admin token (system:masters), the service-account key pair, and a
/// kubeconfig that trusts the server's self-signed certificate.
fn write_auth(dir: &Path) -> Result<()> {
    let key = dir.join("sa.key");
    run(Command::new("openssl")
        .arg("genrsa")
        .arg("-out")
        .arg(&key)
        .arg("2048"))?;
    run(Command::new("openssl")
        .args(["rsa", "-pubout", "-in"])
        .arg(&key)
        .arg("-out")
        .arg(dir.join("sa.pub")))?;
    let token = format!("felt-deploy-admin-{}", std::process::id());
    write(
        &dir.join("tokens.csv"),
        &format!("{token},admin,admin,\"system:masters\"\n"),
    )?;
    let kubeconfig = format!(
        "apiVersion: v1\nkind: Config\nclusters:\n- name: t\n  cluster:\n    server: https://127.0.0.1:{PORT}\n    certificate-authority: {}\nusers:\n- name: admin\n  user:\n    token: {token}\ncontexts:\n- name: t\n  context: {{cluster: t, user: admin}}\ncurrent-context: t\n",
        dir.join("certs/apiserver.crt").display()
    );
    write(&dir.join("admin.kubeconfig"), &kubeconfig)
}

fn apiserver_args(dir: &Path) -> Vec<String> {
    let d = |p: &str| dir.join(p).display().to_string();
    vec![
        "--etcd-servers=http://127.0.0.1:2379".into(),
        "--bind-address=127.0.0.1".into(),
        "--advertise-address=127.0.0.1".into(),
        format!("--secure-port={PORT}"),
        "--insecure-port=0".into(),
        format!("--cert-dir={}", d("certs")),
        "--authorization-mode=RBAC".into(),
        format!("--token-auth-file={}", d("tokens.csv")),
        format!("--service-account-key-file={}", d("sa.pub")),
        format!("--service-account-signing-key-file={}", d("sa.key")),
        "--service-account-issuer=https://kubernetes.default.svc.cluster.local".into(),
        "--service-cluster-ip-range=10.96.0.0/12".into(),
        // as kubeadm clusters do: the udp overlay runs a privileged container
        "--allow-privileged=true".into(),
        "--profiling=false".into(),
    ]
}

fn write(path: &Path, text: &str) -> Result<()> {
    std::fs::write(path, text).map_err(io_err(format!("write {}", path.display())))
}
