//! A real Kubernetes API server for tests (upstream v1.20.2 from
//! ../shared/kube-apiserver, or any binary KUBE_APISERVER names) on
//! Debian's etcd, both inside a network namespace the test creates,
//! loopback only, killed with the test.
//!
//! - Binary: KUBE_APISERVER (an unpacked binary) or KUBE_APISERVER_XZ (the
//!   xz file, unpacked once into a temp dir keyed by the file's path and
//!   size, and shared by all test processes).
//! - Auth: token file with [`ADMIN_TOKEN`] (system:masters) and
//!   [`FELT_TOKEN`] (a ServiceAccount-like user, [`FELT_USER`]); RBAC on
//!   with [`ApiOptions::rbac`], else AlwaysAllow.
//! - TLS: the server's self-signed certificate (--cert-dir), trusted
//!   through the kubeconfig files [`KubeApi::kubeconfig`] writes.
//!
//! The test's own async code must run inside the namespace too:
//! [`KubeApi::block_on`] enters it on the current thread and builds the
//! runtime there, so every worker thread (and every socket) lives in it.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

pub mod nodes;
pub mod rbac;
pub mod store;

use crate::etcd_util::Etcd;
use felt_common::netns::{open_netns, NetnsGuard};
use felt_common::testutil::TestNetns;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

pub const ADMIN_TOKEN: &str = "felt-test-admin-token";
pub const FELT_TOKEN: &str = "felt-test-sa-token";
pub const FELT_USER: &str = "system:serviceaccount:kube-system:felt";
const PORT: u16 = 6443;
/// How many extra users [`user`] names (each with its own token).
pub const USERS: usize = 8;

/// Extra user `i` (< [`USERS`]): its token and name, a ServiceAccount-like
/// identity with no permissions until a test binds a role to it.
pub fn user(i: usize) -> (String, String) {
    (
        format!("felt-test-sa-token-{i}"),
        format!("system:serviceaccount:kube-system:felt-{i}"),
    )
}

#[derive(Debug, Clone)]
pub struct ApiOptions {
    /// --authorization-mode=RBAC (else AlwaysAllow).
    pub rbac: bool,
    /// Short tag for the namespace name (`felt-t-<tag>-...`).
    pub tag: String,
}

impl Default for ApiOptions {
    fn default() -> Self {
        ApiOptions {
            rbac: false,
            tag: "kapi".into(),
        }
    }
}

/// The unpacked API server binary. KUBE_APISERVER_XZ is unpacked once
/// into a temp dir named after the file's path and size, shared by every
/// test process (renamed into place whole, so a concurrent or killed
/// unpack never leaves a half binary in use), and reused by later runs.
pub fn apiserver_binary() -> PathBuf {
    if let Some(p) = std::env::var_os("KUBE_APISERVER") {
        return PathBuf::from(p);
    }
    static UNPACKED: OnceLock<PathBuf> = OnceLock::new();
    UNPACKED.get_or_init(unpack).clone()
}

fn unpack() -> PathBuf {
    let xz = std::env::var_os("KUBE_APISERVER_XZ")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            // The repository's checkout sits beside ../shared when run by hand.
            Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("../../shared/kube-apiserver/kube-apiserver-v1.20.2.xz")
        });
    let size = std::fs::metadata(&xz)
        .unwrap_or_else(|e| {
            panic!(
                "no kube-apiserver: set KUBE_APISERVER (a binary) or KUBE_APISERVER_XZ ({}: {e})",
                xz.display()
            )
        })
        .len();
    let key = {
        use std::hash::{Hash, Hasher};
        let mut h = std::collections::hash_map::DefaultHasher::new();
        xz.hash(&mut h);
        h.finish()
    };
    let dir = std::env::temp_dir().join(format!("felt-kube-apiserver-{size}-{key:x}"));
    let bin = dir.join("kube-apiserver");
    if bin.exists() {
        return bin;
    }
    std::fs::create_dir_all(&dir).unwrap();
    let part = dir.join(format!("kube-apiserver.part-{}", std::process::id()));
    let st = Command::new("xz")
        .arg("-dc")
        .arg(&xz)
        .stdout(std::fs::File::create(&part).unwrap())
        .status()
        .unwrap();
    assert!(st.success(), "xz -dc {} failed", xz.display());
    std::fs::set_permissions(&part, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    std::fs::rename(&part, &bin).unwrap();
    bin
}

/// A running API server with its etcd, in its own namespace.
pub struct KubeApi {
    pub url: String,
    pub dir: PathBuf,
    /// Dropped last (fields drop in order): kills whatever still runs.
    child: Option<Child>,
    pub etcd: Etcd,
    pub ns: TestNetns,
    args: Vec<String>,
}

impl KubeApi {
    pub fn start(opts: ApiOptions) -> Self {
        let ns = TestNetns::new(&opts.tag);
        let etcd = Etcd::start_in(Some(&ns));
        let dir = std::env::temp_dir().join(format!("{}-kube", ns.name));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("certs")).unwrap();
        write_auth_files(&dir);
        let f = |n: &str| dir.join(n).display().to_string();
        let mode = if opts.rbac { "RBAC" } else { "AlwaysAllow" };
        let args = vec![
            format!("--etcd-servers={}", etcd.endpoint),
            "--bind-address=127.0.0.1".into(),
            "--advertise-address=127.0.0.1".into(),
            format!("--secure-port={PORT}"),
            "--insecure-port=0".into(),
            format!("--cert-dir={}", f("certs")),
            format!("--authorization-mode={mode}"),
            format!("--token-auth-file={}", f("tokens.csv")),
            format!("--service-account-key-file={}", f("sa.pub")),
            format!("--service-account-signing-key-file={}", f("sa.key")),
            "--service-account-issuer=https://kubernetes.default.svc.cluster.local".into(),
            "--service-cluster-ip-range=10.96.0.0/12".into(),
            "--profiling=false".into(),
        ];
        let mut api = KubeApi {
            url: format!("https://127.0.0.1:{PORT}"),
            dir,
            child: None,
            etcd,
            ns,
            args,
        };
        api.resume();
        api
    }

    /// Starts the API server (again, on the same etcd, port and
    /// certificate) and waits until /readyz answers ok.
    pub fn resume(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join("apiserver.log"))
            .unwrap();
        let mut cmd = self.ns.command(apiserver_binary().to_str().unwrap());
        cmd.args(&self.args)
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log);
        // SAFETY: only prctl between fork and exec. The server must die
        // with the test process even if it is killed.
        unsafe {
            cmd.pre_exec(|| {
                nix::sys::prctl::set_pdeathsig(nix::sys::signal::Signal::SIGKILL)?;
                Ok(())
            });
        }
        self.child = Some(cmd.spawn().expect("cannot start kube-apiserver"));
        self.wait_ready();
    }

    /// Kills the API server (etcd keeps running).
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    fn wait_ready(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(90);
        loop {
            if let Some(st) = self.child.as_mut().and_then(|c| c.try_wait().unwrap()) {
                panic!("kube-apiserver exited ({st}):\n{}", self.log_tail());
            }
            // The certificate appears once the server has generated it.
            let cert_ready = self.dir.join("certs/apiserver.crt").exists();
            let kubeconfig = self.kubeconfig(ADMIN_TOKEN);
            if cert_ready && self.in_thread(move || readyz(&kubeconfig)) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "kube-apiserver not ready after 90 s:\n{}",
                self.log_tail()
            );
            std::thread::sleep(Duration::from_millis(250));
        }
    }

    pub fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(self.dir.join("apiserver.log")).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(40)..].join("\n")
    }

    /// Runs `f` on a fresh thread inside the namespace; works from
    /// anywhere, also inside a test's runtime.
    pub fn in_thread<T: Send + 'static>(&self, f: impl FnOnce() -> T + Send + 'static) -> T {
        let path = self.ns.path();
        std::thread::spawn(move || {
            let file = open_netns(&path).unwrap();
            let _g = NetnsGuard::enter(&file, &path).unwrap();
            f()
        })
        .join()
        .unwrap()
    }

    /// Runs `fut` on a multi-thread runtime whose threads all live in the
    /// API server's namespace (for tests that need none across calls).
    pub fn block_on<F: std::future::Future>(&self, fut: F) -> F::Output {
        self.runtime().block_on(fut)
    }

    /// A runtime whose threads live in the API server's namespace; it
    /// outlives the API server's restarts, and tasks spawned on it (a
    /// store's watch) keep running between `block_on` calls.
    pub fn runtime(&self) -> NsRuntime {
        let path = self.ns.path();
        let file = open_netns(&path).unwrap();
        let _g = NetnsGuard::enter(&file, &path).unwrap();
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        NsRuntime { rt: Some(rt), path }
    }

    /// A kubeconfig file for `token` that trusts the server's certificate.
    pub fn kubeconfig(&self, token: &str) -> PathBuf {
        let ca = std::fs::read(self.dir.join("certs/apiserver.crt")).unwrap_or_default();
        let path = self.dir.join(format!("kubeconfig-{token}"));
        let text = format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: test\n  cluster:\n    server: {}\n    certificate-authority-data: {}\nusers:\n- name: u\n  user:\n    token: {token}\ncontexts:\n- name: c\n  context:\n    cluster: test\n    user: u\ncurrent-context: c\n",
            self.url,
            base64_encode(&ca)
        );
        std::fs::write(&path, text).unwrap();
        path
    }

    /// An admin client (call inside [`KubeApi::block_on`]).
    pub async fn admin(&self) -> kube::Client {
        client_for(&self.kubeconfig(ADMIN_TOKEN)).await
    }

    /// etcdctl inside the namespace, e.g. to change what the API server
    /// stores behind its back.
    pub fn etcdctl_ok(&self, args: &[&str]) -> String {
        self.etcd.etcdctl_ok(args)
    }
}

impl Drop for KubeApi {
    fn drop(&mut self) {
        self.stop();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// See [`KubeApi::runtime`].
pub struct NsRuntime {
    rt: Option<tokio::runtime::Runtime>,
    path: PathBuf,
}

impl NsRuntime {
    /// Runs `fut` with the calling thread inside the namespace too.
    pub fn block_on<F: std::future::Future>(&self, fut: F) -> F::Output {
        let file = open_netns(&self.path).unwrap();
        let _g = NetnsGuard::enter(&file, &self.path).unwrap();
        self.rt.as_ref().unwrap().block_on(fut)
    }
}

impl Drop for NsRuntime {
    fn drop(&mut self) {
        if let Some(rt) = self.rt.take() {
            rt.shutdown_timeout(Duration::from_secs(5));
        }
    }
}

pub async fn client_for(kubeconfig: &Path) -> kube::Client {
    let kc = kube::config::Kubeconfig::read_from(kubeconfig).unwrap();
    let cfg = kube::Config::from_custom_kubeconfig(kc, &Default::default())
        .await
        .unwrap();
    kube::Client::try_from(cfg).unwrap()
}

fn readyz(kubeconfig: &Path) -> bool {
    let Ok(rt) = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    else {
        return false;
    };
    rt.block_on(async {
        let client = client_for(kubeconfig).await;
        let req = http::Request::get("/readyz").body(Vec::new()).unwrap();
        let r = tokio::time::timeout(Duration::from_secs(5), client.request_text(req)).await;
        matches!(r, Ok(Ok(ref body)) if body.trim() == "ok")
    })
}

fn write_auth_files(dir: &Path) {
    let sa_groups = "system:serviceaccounts,system:serviceaccounts:kube-system";
    let mut tokens = format!(
        "{ADMIN_TOKEN},admin,1,\"system:masters\"\n{FELT_TOKEN},{FELT_USER},2,\"{sa_groups}\"\n"
    );
    for i in 0..USERS {
        let (token, name) = user(i);
        tokens.push_str(&format!("{token},{name},{},\"{sa_groups}\"\n", 10 + i));
    }
    std::fs::write(dir.join("tokens.csv"), tokens).unwrap();
    crate::etcd_util::openssl(dir, &["genrsa", "-out", "sa.key", "2048"]);
    crate::etcd_util::openssl(dir, &["rsa", "-in", "sa.key", "-pubout", "-out", "sa.pub"]);
}

fn base64_encode(data: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(data)
}
