//! The image: deploy/image/build.sh packs it without a daemon or registry;
//! a throwaway containerd imports it (`ctr images import`, as local-node.sh
//! and kind do) and runs what the DaemonSet runs: `overlayd --version`,
//! the felt plugin's VERSION, the tools overlayd needs, and both init
//! containers' exact commands against host directories of the test.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use felt_cluster::process::{locate_binary, run};
use felt_deploy::containerd::{Containerd, RunSpec};
use felt_deploy::manifest::Backing;
use felt_deploy::repo::{self, image_ref};
use felt_deploy::tempdir::TempDir;
use felt_deploy::{tools, Manifest};
use serde_json::Value;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

fn build_image(dir: &Path) -> PathBuf {
    let bin_dir = locate_binary("felt", "FELT_BIN")
        .unwrap()
        .parent()
        .unwrap()
        .to_path_buf();
    let tar = dir.join("felt.tar");
    run(Command::new(repo::deploy_dir().join("image/build.sh"))
        .arg(&tar)
        .env("FELT_BIN_DIR", &bin_dir))
    .unwrap();
    tar
}

fn sha256(path: &Path) -> String {
    let out = run(Command::new("sha256sum").arg(path)).unwrap();
    out.split_whitespace().next().unwrap().to_string()
}

/// manifest.json, config and layer digests as `docker load` and containerd
/// check them.
fn check_archive(tar: &Path, dir: &Path) {
    let x = dir.join("x");
    std::fs::create_dir(&x).unwrap();
    run(Command::new("tar").arg("-xf").arg(tar).arg("-C").arg(&x)).unwrap();
    let manifest: Value =
        serde_json::from_slice(&std::fs::read(x.join("manifest.json")).unwrap()).unwrap();
    let entry = &manifest[0];
    assert_eq!(entry["RepoTags"], serde_json::json!([image_ref()]));
    let config_name = entry["Config"].as_str().unwrap();
    assert_eq!(
        format!("{}.json", sha256(&x.join(config_name))),
        config_name
    );
    let config: Value =
        serde_json::from_slice(&std::fs::read(x.join(config_name)).unwrap()).unwrap();
    let layer = entry["Layers"][0].as_str().unwrap();
    let diff_id = format!("sha256:{}", sha256(&x.join(layer)));
    assert_eq!(config["rootfs"]["diff_ids"], serde_json::json!([diff_id]));
    assert_eq!(
        (config["os"].as_str(), config["architecture"].as_str()),
        (Some("linux"), Some("amd64"))
    );
    std::fs::remove_dir_all(&x).unwrap();
}

/// Every path contents.txt puts into the image (binaries, files, links).
fn listed_paths() -> Vec<String> {
    let text = std::fs::read_to_string(repo::deploy_dir().join("image/contents.txt")).unwrap();
    let mut paths = vec![
        "/bin/sh".to_string(),
        "/usr/lib64/ld-linux-x86-64.so.2".into(),
    ];
    for line in text.lines() {
        let w: Vec<&str> = line.split_whitespace().collect();
        match w.as_slice() {
            ["bin", name] => paths.push(format!("/usr/bin/{name}")),
            ["file", path] | ["link", path, _] => paths.push(path.to_string()),
            _ => {}
        }
    }
    paths
}

/// A RunSpec that backs each of `container`'s volume mounts with a
/// directory under `dir`: host paths under dir/host, the ConfigMap as its
/// data files.
fn mounts(m: &Manifest, container: &str, dir: &Path) -> RunSpec {
    let mut spec = RunSpec::default();
    for (at, backing) in m.mounts(container).unwrap() {
        let src = match backing {
            Backing::HostPath(p) => dir.join("host").join(p.strip_prefix("/").unwrap()),
            Backing::ConfigMap(name) => {
                let cfg = dir.join("configmap").join(&name);
                std::fs::create_dir_all(&cfg).unwrap();
                let data = m.get("ConfigMap", &name).unwrap()["data"]
                    .as_object()
                    .unwrap()
                    .clone();
                for (k, v) in data {
                    std::fs::write(cfg.join(k), v.as_str().unwrap()).unwrap();
                }
                cfg
            }
            other => panic!("{container}: unexpected volume {other:?}"),
        };
        std::fs::create_dir_all(&src).unwrap();
        spec.mounts.push((src, at));
    }
    spec
}

fn dir_listing(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

fn check_init_containers(ctr: &Containerd, m: &Manifest, dir: &Path, felt: &Path) {
    let image = image_ref();
    for round in 0..2 {
        // twice: the second install replaces what the first left
        for name in ["install-cni-plugin", "install-cni"] {
            let argv = m.argv(name).unwrap();
            let argv: Vec<&str> = argv.iter().map(String::as_str).collect();
            let spec = mounts(m, name, dir);
            ctr.run_ok(&image, &format!("{name}-{round}"), &spec, &argv)
                .unwrap();
        }
    }
    let bin = dir.join("host/opt/cni/bin");
    assert_eq!(dir_listing(&bin), ["felt"]);
    assert_eq!(
        std::fs::read(bin.join("felt")).unwrap(),
        std::fs::read(felt).unwrap()
    );
    let mode = std::fs::metadata(bin.join("felt"))
        .unwrap()
        .permissions()
        .mode()
        & 0o7777;
    assert_eq!(mode, 0o755);
    let net_d = dir.join("host/etc/cni/net.d");
    assert_eq!(dir_listing(&net_d), ["10-felt.conflist"]);
    let conflist = std::fs::read_to_string(net_d.join("10-felt.conflist")).unwrap();
    assert_eq!(conflist, m.config_data("cni-conf.json").unwrap());
}

#[test]
fn image_builds_imports_and_runs_what_the_daemonset_runs() {
    felt_common::testutil::require_root();
    let dir = TempDir::new(
        &std::env::temp_dir().join(format!("felt-deploy-image-{}", std::process::id())),
    )
    .unwrap();
    let tar = build_image(&dir.0);
    check_archive(&tar, &dir.0);
    let ctr = Containerd::start().unwrap();
    let imported = ctr.import(&tar).unwrap();
    assert!(imported.contains(&image_ref()), "{imported}");
    let listed = ctr.ctr(&["images", "ls", "-q"]).unwrap();
    assert!(listed.lines().any(|l| l == image_ref()), "{listed}");
    let image = image_ref();
    let none = RunSpec::default();

    let m = tools::kustomize(&repo::deploy_dir()).unwrap();
    let mut argv = vec![m.argv("overlayd").unwrap()[0].clone()];
    argv.push("--version".into());
    let argv: Vec<&str> = argv.iter().map(String::as_str).collect();
    let out = ctr
        .run_ok(&image, "overlayd-version", &none, &argv)
        .unwrap();
    assert_eq!(
        out.trim(),
        format!("overlayd {}", env!("CARGO_PKG_VERSION"))
    );

    let version = RunSpec {
        env: vec![("CNI_COMMAND".into(), "VERSION".into())],
        ..RunSpec::default()
    };
    let out = ctr
        .run_ok(
            &image,
            "felt-version",
            &version,
            &[
                "/bin/sh",
                "-c",
                "echo '{\"cniVersion\":\"0.3.1\"}' | /usr/bin/felt",
            ],
        )
        .unwrap();
    let v: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["cniVersion"], "0.3.1", "{out}");

    let tools_check = "for t in iptables-nft-save iptables-nft-restore iptables-legacy-save iptables-legacy-restore \
        ip6tables-nft-restore ip6tables-legacy-restore iptables-save iptables-restore; do $t --version || exit 1; done; \
        nft --version && test -s /etc/ssl/certs/ca-certificates.crt";
    let out = ctr
        .run_ok(&image, "tools", &none, &["/bin/sh", "-c", tools_check])
        .unwrap();
    assert!(
        out.contains("(nf_tables)") && out.contains("(legacy)") && out.contains("nftables v"),
        "{out}"
    );

    let paths = listed_paths().join(" ");
    let script = format!("for p in {paths}; do [ -e $p ] || echo missing $p; done");
    let out = ctr
        .run_ok(&image, "files", &none, &["/bin/sh", "-c", &script])
        .unwrap();
    assert_eq!(out, "", "paths contents.txt lists but the image lacks");

    let felt = locate_binary("felt", "FELT_BIN").unwrap();
    check_init_containers(&ctr, &m, &dir.0, &felt);
}

/// The Containerfile builds from the same list with the same script.
#[test]
fn containerfile_uses_the_shared_contents_list() {
    let text = std::fs::read_to_string(repo::deploy_dir().join("image/Containerfile")).unwrap();
    for needle in [
        "COPY deploy/image/contents.txt deploy/image/assemble-rootfs.sh /image/",
        "$(awk '$1 == \"pkg\" {print $2}' /image/contents.txt)",
        "/image/assemble-rootfs.sh /rootfs /felt-bin /image/contents.txt",
        "FROM scratch",
        "COPY --from=rootfs /rootfs/ /",
        "cargo build --release --locked -p overlayd -p felt-cni",
    ] {
        assert!(text.contains(needle), "Containerfile lacks {needle:?}");
    }
}
