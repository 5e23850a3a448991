//! The outside tools the tests run, found the same way everywhere:
//! an environment variable first, else where scripts/setup.sh puts them
//! (target/deploy-tools), else ../shared for the test kube-apiserver.

use crate::error::{io_err, DeployError, Result};
use crate::manifest::Manifest;
use crate::repo;
use felt_cluster::process::run;
use std::path::{Path, PathBuf};
use std::process::Command;

/// target/deploy-tools, or $FELT_DEPLOY_TOOLS.
pub fn tools_dir() -> PathBuf {
    std::env::var_os("FELT_DEPLOY_TOOLS")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo::root().join("target/deploy-tools"))
}

fn missing(tool: &str, looked: &Path, hint: &str) -> DeployError {
    DeployError::MissingTool {
        tool: tool.into(),
        looked: looked.display().to_string(),
        hint: hint.into(),
    }
}

/// kubectl 1.20 (Debian's kubernetes-client): $FELT_KUBECTL, else
/// target/deploy-tools/bin/kubectl. Its version is checked, since its
/// kustomize (2.0) is the oldest the manifests promise to work with.
pub fn kubectl() -> Result<PathBuf> {
    let path = std::env::var_os("FELT_KUBECTL")
        .map(PathBuf::from)
        .unwrap_or_else(|| tools_dir().join("bin/kubectl"));
    if !path.is_file() {
        return Err(missing(
            "kubectl 1.20",
            &path,
            "run scripts/setup.sh (or set FELT_KUBECTL)",
        ));
    }
    let version = run(Command::new(&path).args(["version", "--client", "--short"]))?;
    if !version.contains("v1.20.") {
        return Err(missing(
            "kubectl 1.20",
            &path,
            &format!("it says {version:?}"),
        ));
    }
    Ok(path)
}

/// `kubectl kustomize DIR`: the YAML stream.
pub fn render(dir: &Path) -> Result<String> {
    Ok(run(Command::new(kubectl()?).arg("kustomize").arg(dir))?)
}

/// `kubectl kustomize DIR`, parsed.
pub fn kustomize(dir: &Path) -> Result<Manifest> {
    Manifest::parse(
        &format!("kubectl kustomize {}", dir.display()),
        &render(dir)?,
    )
}

/// The pinned kubernetes-validate in target/deploy-tools/venv.
pub fn validator() -> Result<PathBuf> {
    let path = tools_dir().join("venv/bin/kubernetes-validate");
    if path.is_file() {
        Ok(path)
    } else {
        Err(missing(
            "kubernetes-validate",
            &path,
            "run scripts/setup.sh",
        ))
    }
}

/// `shellcheck` from Debian's package.
pub fn shellcheck() -> Result<PathBuf> {
    let path = PathBuf::from("/usr/bin/shellcheck");
    if path.is_file() {
        Ok(path)
    } else {
        Err(missing("shellcheck", &path, "run scripts/setup.sh"))
    }
}

/// The v1.20.2 kube-apiserver: $KUBE_APISERVER (a binary), else
/// $KUBE_APISERVER_XZ or ../shared/kube-apiserver/kube-apiserver-v1.20.2.xz
/// unpacked once into target/deploy-tools/bin.
pub fn kube_apiserver() -> Result<PathBuf> {
    if let Some(bin) = std::env::var_os("KUBE_APISERVER") {
        return Ok(PathBuf::from(bin));
    }
    let xz = std::env::var_os("KUBE_APISERVER_XZ")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo::root().join("../shared/kube-apiserver/kube-apiserver-v1.20.2.xz"));
    if !xz.is_file() {
        return Err(missing(
            "kube-apiserver",
            &xz,
            "set KUBE_APISERVER or KUBE_APISERVER_XZ",
        ));
    }
    let bin = tools_dir().join("bin/kube-apiserver-v1.20.2");
    if bin.is_file() {
        return Ok(bin);
    }
    unpack_xz(&xz, &bin)?;
    Ok(bin)
}

/// xz -dc SRC > DEST, atomically (tests unpacking at once race harmlessly).
fn unpack_xz(src: &Path, dest: &Path) -> Result<()> {
    let dir = dest.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).map_err(io_err(format!("create {}", dir.display())))?;
    let tmp = dest.with_extension(format!("tmp{}", std::process::id()));
    let file = std::fs::File::create(&tmp).map_err(io_err(format!("create {}", tmp.display())))?;
    run(Command::new("xz").arg("-dc").arg(src).stdout(file))?;
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o755))
        .map_err(io_err(format!("chmod {}", tmp.display())))?;
    std::fs::rename(&tmp, dest).map_err(io_err(format!("rename to {}", dest.display())))
}
