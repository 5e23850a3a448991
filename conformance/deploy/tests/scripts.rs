//! Every shell script of the project passes shellcheck (Debian's 0.9):
//! scripts/, deploy/ and conformance/ (the kind runner and the shared
//! cross-node checks among them).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use felt_deploy::{repo, tools};
use std::process::Command;

#[test]
fn every_shell_script_passes_shellcheck() {
    let scripts = repo::shell_scripts().unwrap();
    for must in [
        "scripts/setup.sh",
        "deploy/image/build.sh",
        "conformance/kind/run.sh",
        "conformance/checks/cross-node.sh",
    ] {
        assert!(
            scripts.iter().any(|p| p.ends_with(must)),
            "{must} not found among {scripts:?}"
        );
    }
    let out = Command::new(tools::shellcheck().unwrap())
        .args(["--external-sources", "--format=gcc"])
        .args(&scripts)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "shellcheck:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}
