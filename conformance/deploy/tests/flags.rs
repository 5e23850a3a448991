//! Everything the DaemonSet names exists where the binaries look: its
//! command line goes through overlayd's own flag parser, net-conf.json
//! through overlayd's config parser, and the paths overlayd and the felt
//! plugin use are the ones the manifests mount from the host.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use clap::Parser;
use felt_common::subnet_env::DEFAULT_PATH as SUBNET_ENV;
use felt_deploy::manifest::Backing;
use felt_deploy::{tools, variants, Manifest, Variant};
use overlayd::cli::{go_style_args, Flags};
use serde_json::Value;
use std::path::{Path, PathBuf};

fn flags_of(m: &Manifest, v: &Variant) -> Flags {
    let argv = m.argv("overlayd").unwrap();
    assert_eq!(argv[0], "/usr/bin/overlayd", "{}", v.name);
    Flags::try_parse_from(go_style_args(argv.clone()))
        .unwrap_or_else(|e| panic!("{}: overlayd rejects {argv:?}: {e}", v.name))
}

fn probe(m: &Manifest, which: &str) -> (String, String, u64) {
    let p = &m.container("overlayd").unwrap()[which]["httpGet"];
    (
        p["host"].as_str().unwrap().to_string(),
        p["path"].as_str().unwrap().to_string(),
        p["port"].as_u64().unwrap(),
    )
}

#[test]
fn daemonset_command_line_parses_with_overlayds_flags() {
    for v in variants() {
        let m = tools::kustomize(&v.dir).unwrap();
        let f = flags_of(&m, &v);
        assert_eq!(f.kube_subnet_mgr, v.kube, "{}", v.name);
        assert!(f.ip_masq, "{}: --ip-masq", v.name);
        let port = u64::from(f.healthz_port);
        assert_ne!(port, 0, "{}: health endpoint off", v.name);
        assert_eq!(
            probe(&m, "livenessProbe"),
            (f.healthz_ip.to_string(), "/healthz".into(), port)
        );
        assert_eq!(
            probe(&m, "readinessProbe"),
            (f.healthz_ip.to_string(), "/readyz".into(), port)
        );
    }
}

/// A broken command line does fail the parse above.
#[test]
fn overlayd_rejects_a_misspelt_flag() {
    let argv = ["/usr/bin/overlayd", "--kube-subnet-mrg"].map(String::from);
    assert!(Flags::try_parse_from(go_style_args(argv)).is_err());
}

fn mounted(m: &Manifest, container: &str, path: &Path) -> Option<Backing> {
    m.mounts(container)
        .unwrap()
        .into_iter()
        .find(|(at, _)| at == path)
        .map(|(_, b)| b)
}

#[test]
fn overlayd_reads_and_writes_where_the_manifests_mount() {
    for v in variants() {
        let m = tools::kustomize(&v.dir).unwrap();
        let f = flags_of(&m, &v);
        // subnet.env: written by overlayd inside, read by the plugin on the host
        let run_dir = f.subnet_file.parent().unwrap();
        assert_eq!(f.subnet_file, PathBuf::from(SUBNET_ENV), "{}", v.name);
        assert_eq!(
            mounted(&m, "overlayd", run_dir),
            Some(Backing::HostPath(run_dir.to_path_buf())),
            "{}",
            v.name
        );
        // net-conf.json from the ConfigMap (kube mode reads it)
        let cfg_dir = f.net_config_path.parent().unwrap();
        assert_eq!(
            mounted(&m, "overlayd", cfg_dir),
            Some(Backing::ConfigMap("felt-cfg".into())),
            "{}",
            v.name
        );
        let key = f.net_config_path.file_name().unwrap().to_str().unwrap();
        let net_conf = m.config_data(key).unwrap();
        let cfg = overlayd::config::parse(&net_conf)
            .unwrap_or_else(|e| panic!("{}: overlayd rejects net-conf.json: {e}", v.name));
        assert_eq!(cfg.backend.type_name(), v.backend, "{}", v.name);
        assert_eq!(cfg.network.unwrap().to_string(), v.network, "{}", v.name);
        // iptables' lock, shared with kube-proxy
        let lock = Path::new("/run/xtables.lock");
        assert_eq!(
            mounted(&m, "overlayd", lock),
            Some(Backing::HostPath(lock.into()))
        );
    }
}

/// The init containers copy from the ConfigMap and the image into the
/// host directories the runtime reads: /opt/cni/bin and /etc/cni/net.d.
#[test]
fn init_containers_write_to_the_runtimes_cni_directories() {
    for v in variants() {
        let m = tools::kustomize(&v.dir).unwrap();
        let plugin = m.argv("install-cni-plugin").unwrap().join(" ");
        let bin = Path::new("/opt/cni/bin");
        assert_eq!(
            mounted(&m, "install-cni-plugin", bin),
            Some(Backing::HostPath(bin.into()))
        );
        assert!(
            plugin.contains("mv -f /opt/cni/bin/.felt.tmp /opt/cni/bin/felt"),
            "{plugin}"
        );
        let conf = m.argv("install-cni").unwrap().join(" ");
        let net_d = Path::new("/etc/cni/net.d");
        assert_eq!(
            mounted(&m, "install-cni", net_d),
            Some(Backing::HostPath(net_d.into()))
        );
        let cfg = Path::new("/etc/kube-flannel");
        assert_eq!(
            mounted(&m, "install-cni", cfg),
            Some(Backing::ConfigMap("felt-cfg".into()))
        );
        assert!(
            conf.contains("cp /etc/kube-flannel/cni-conf.json "),
            "{conf}"
        );
        assert!(conf.contains("/etc/cni/net.d/10-felt.conflist"), "{conf}");
        // the plugin file's name is the conflist's plugin type
        let conflist: Value =
            serde_json::from_str(&m.config_data("cni-conf.json").unwrap()).unwrap();
        assert_eq!(conflist["plugins"][0]["type"], "felt", "{}", v.name);
        assert_eq!(
            conflist["name"], "cbr0",
            "{}: flannel's IPAM directory name",
            v.name
        );
    }
}
