//! A throwaway etcd for tests: its own data directory and free loopback
//! ports, killed on drop. It can run in the test's own namespace (loopback
//! only) or inside a `TestNetns` next to an overlayd under test.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use felt_common::testutil::{ChildGuard, TestNetns};
use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

static N: AtomicUsize = AtomicUsize::new(0);

pub struct Etcd {
    pub endpoint: String,
    pub data_dir: PathBuf,
    /// The namespace it runs in, for etcdctl; `None` = the test's own.
    pub netns: Option<String>,
    args: Vec<String>,
    /// etcdctl's TLS flags when etcd serves TLS.
    ctl_tls: Vec<String>,
    child: Option<ChildGuard>,
}

/// A port nobody listens on right now (in the test's namespace; a fresh
/// namespace has every port free anyway).
fn free_port() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port()
}

impl Etcd {
    /// Starts etcd on 127.0.0.1 in the current namespace.
    pub fn start() -> Self {
        Self::start_in(None)
    }

    /// Starts etcd inside `ns` (on that namespace's loopback).
    pub fn start_in(ns: Option<&TestNetns>) -> Self {
        Self::start_with(ns, None)
    }

    /// Starts etcd serving clients over TLS only, requiring a client
    /// certificate, with the files made by `make_certs(dir)`.
    pub fn start_tls(dir: &std::path::Path) -> Self {
        Self::start_with(None, Some(dir))
    }

    fn start_with(ns: Option<&TestNetns>, tls: Option<&std::path::Path>) -> Self {
        // A port picked free can be taken by a parallel test before etcd
        // binds it: then etcd exits at once and we try other ports.
        for _ in 0..4 {
            let mut etcd = Self::configure(ns, tls);
            if etcd.try_resume() {
                return etcd;
            }
        }
        panic!("etcd did not start (4 attempts)");
    }

    fn configure(ns: Option<&TestNetns>, tls: Option<&std::path::Path>) -> Self {
        let n = N.fetch_add(1, Ordering::SeqCst);
        let data_dir = std::env::temp_dir().join(format!("felt-etcd-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&data_dir);
        std::fs::create_dir_all(&data_dir).unwrap();
        let (client, peer) = (free_port(), free_port());
        let scheme = if tls.is_some() { "https" } else { "http" };
        let endpoint = format!("{scheme}://127.0.0.1:{client}");
        let peer_url = format!("http://127.0.0.1:{peer}");
        let args = [
            "--name".to_string(),
            "felt-test".into(),
            "--data-dir".into(),
            data_dir.display().to_string(),
            "--listen-client-urls".into(),
            endpoint.clone(),
            "--advertise-client-urls".into(),
            endpoint.clone(),
            "--listen-peer-urls".into(),
            peer_url.clone(),
            "--initial-advertise-peer-urls".into(),
            peer_url.clone(),
            "--initial-cluster".into(),
            format!("felt-test={peer_url}"),
            "--log-level".into(),
            "error".into(),
            "--logger".into(),
            "zap".into(),
        ];
        let mut args = args.to_vec();
        let mut ctl_tls = Vec::new();
        if let Some(dir) = tls {
            let f = |n: &str| dir.join(n).display().to_string();
            for (flag, file) in [
                ("--cert-file", "server.crt"),
                ("--key-file", "server.key"),
                ("--trusted-ca-file", "ca.crt"),
            ] {
                args.extend([flag.to_string(), f(file)]);
            }
            args.push("--client-cert-auth".into());
            ctl_tls = vec![
                format!("--cacert={}", f("ca.crt")),
                format!("--cert={}", f("client.crt")),
                format!("--key={}", f("client.key")),
            ];
        }
        Etcd {
            endpoint,
            data_dir,
            netns: ns.map(|n| n.name.clone()),
            args,
            ctl_tls,
            child: None,
        }
    }

    /// Kills etcd (SIGKILL); its data stays for `resume`.
    pub fn kill(&mut self) {
        drop(self.child.take());
    }

    /// Starts etcd again on the same ports and data, and waits for it.
    pub fn resume(&mut self) {
        assert!(
            self.try_resume(),
            "etcd at {} did not come back",
            self.endpoint
        );
    }

    /// Starts etcd; false if it exited or stayed unhealthy for 20 s.
    fn try_resume(&mut self) -> bool {
        let mut cmd = match &self.netns {
            Some(ns) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", ns, "etcd"]);
                c
            }
            None => Command::new("etcd"),
        };
        cmd.args(&self.args)
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        self.child = Some(ChildGuard::spawn(cmd, "etcd"));
        self.wait_healthy()
    }

    fn wait_healthy(&mut self) -> bool {
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            let healthy = self.etcdctl(&["endpoint", "health"]).status.success();
            // Checked after the health call: a healthy answer may come from
            // another test's etcd that took the port, while ours exited.
            let exited = match self.child.as_mut() {
                Some(g) => g.child.try_wait().ok().flatten().is_some(),
                None => true,
            };
            if exited {
                return false;
            }
            if healthy {
                return true;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        false
    }

    /// Runs etcdctl (v3 API) against this etcd.
    pub fn etcdctl(&self, args: &[&str]) -> std::process::Output {
        let mut cmd = match &self.netns {
            Some(ns) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", ns, "etcdctl"]);
                c
            }
            None => Command::new("etcdctl"),
        };
        cmd.env("ETCDCTL_API", "3")
            .args(["--endpoints", &self.endpoint, "--command-timeout=5s"])
            .args(&self.ctl_tls)
            .args(args)
            .output()
            .unwrap()
    }

    /// etcdctl that must succeed; returns stdout.
    pub fn etcdctl_ok(&self, args: &[&str]) -> String {
        let out = self.etcdctl(args);
        assert!(
            out.status.success(),
            "etcdctl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Keys under `prefix` (one per element).
    pub fn keys(&self, prefix: &str) -> Vec<String> {
        self.etcdctl_ok(&["get", prefix, "--prefix", "--keys-only"])
            .lines()
            .filter(|l| !l.is_empty())
            .map(String::from)
            .collect()
    }

    /// The value of `key`, if set.
    pub fn get(&self, key: &str) -> Option<String> {
        let out = self.etcdctl_ok(&["get", key, "--print-value-only"]);
        let v = out.trim_end_matches('\n');
        (!v.is_empty()).then(|| v.to_string())
    }

    pub fn put(&self, key: &str, value: &str) {
        self.etcdctl_ok(&["put", key, value]);
    }
}

impl Drop for Etcd {
    fn drop(&mut self) {
        // Kill etcd before removing the directory it writes to.
        drop(self.child.take());
        let _ = std::fs::remove_dir_all(&self.data_dir);
    }
}

/// Runs openssl in `dir`; fails the test unless it succeeds.
pub fn openssl(dir: &std::path::Path, args: &[&str]) {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A CA, a server certificate for 127.0.0.1 and a client certificate
/// (P-256 keys) in `dir`: ca.crt, server.{crt,key}, client.{crt,key}.
pub fn make_certs(dir: &std::path::Path) {
    let run = |args: &[&str]| openssl(dir, args);
    let ec = [
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
    ];
    let mut ca = vec![
        "req",
        "-x509",
        "-days",
        "2",
        "-subj",
        "/CN=felt-test-ca",
        "-keyout",
        "ca.key",
        "-out",
        "ca.crt",
    ];
    ca.extend(ec);
    run(&ca);
    for (name, ext) in [
        (
            "server",
            "subjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth\n",
        ),
        ("client", "extendedKeyUsage=clientAuth\n"),
    ] {
        let (key, csr, crt, extf) = (
            format!("{name}.key"),
            format!("{name}.csr"),
            format!("{name}.crt"),
            format!("{name}.ext"),
        );
        std::fs::write(dir.join(&extf), ext).unwrap();
        let mut req = vec![
            "req",
            "-subj",
            "/CN=felt-test",
            "-keyout",
            &key,
            "-out",
            &csr,
        ];
        req.extend(ec);
        run(&req);
        run(&[
            "x509",
            "-req",
            "-in",
            &csr,
            "-CA",
            "ca.crt",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-days",
            "2",
            "-out",
            &crt,
            "-extfile",
            &extf,
        ]);
    }
}
