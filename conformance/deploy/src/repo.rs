//! Where things are in the repository, and the manifest variants: the base
//! (`deploy/`) and every overlay, with what each one is meant to configure.

use std::path::PathBuf;

/// The image every manifest names: `docker.io/felt/felt:<workspace version>`,
/// what `deploy/image/build.sh` tags by default.
pub fn image_ref() -> String {
    format!("docker.io/felt/felt:{}", env!("CARGO_PKG_VERSION"))
}

/// The repository root.
pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

pub fn deploy_dir() -> PathBuf {
    root().join("deploy")
}

/// The one namespace everything of felt's lives in.
pub const NAMESPACE: &str = "kube-felt";

/// One way to deploy felt: a kustomization directory and what it sets up.
#[derive(Debug, Clone)]
pub struct Variant {
    /// "deploy" for the base, else the overlay's directory name.
    pub name: &'static str,
    pub dir: PathBuf,
    /// Backend.Type in net-conf.json (the ConfigMap's; etcd mode ignores it).
    pub backend: &'static str,
    /// Network in net-conf.json.
    pub network: &'static str,
    /// --kube-subnet-mgr (else etcd mode).
    pub kube: bool,
}

/// The base and every overlay under deploy/overlays (a test checks that
/// this list and the directory agree).
pub fn variants() -> Vec<Variant> {
    let v = |name: &'static str, backend, network, kube| Variant {
        name,
        dir: if name == "deploy" {
            deploy_dir()
        } else {
            deploy_dir().join("overlays").join(name)
        },
        backend,
        network,
        kube,
    };
    vec![
        v("deploy", "vxlan", "10.244.0.0/16", true),
        v("host-gw", "host-gw", "10.244.0.0/16", true),
        v("udp", "udp", "10.244.0.0/16", true),
        v("custom-network", "vxlan", "10.100.0.0/16", true),
        v("migration", "vxlan", "10.244.0.0/16", true),
        v("etcd", "vxlan", "10.244.0.0/16", false),
        v("etcd-tls", "vxlan", "10.244.0.0/16", false),
    ]
}

/// Every shell script the project ships: scripts/, deploy/, conformance/.
pub fn shell_scripts() -> std::io::Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    for top in ["scripts", "deploy", "conformance"] {
        collect_sh(&root().join(top), &mut out)?;
    }
    out.sort();
    Ok(out)
}

fn collect_sh(dir: &std::path::Path, out: &mut Vec<PathBuf>) -> std::io::Result<()> {
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        if path.is_dir() {
            collect_sh(&path, out)?;
        } else if path.extension().is_some_and(|e| e == "sh") {
            out.push(path);
        }
    }
    Ok(())
}
