//! Running the rule binaries without blocking the runtime (tokio::process),
//! with errors that name the binary and, when missing, its Debian package.

use super::FirewallError;
use std::path::Path;
use std::process::Stdio;
use tokio::io::AsyncWriteExt;

/// Every binary the firewall runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tool {
    Nft,
    Iptables,
    IptablesNft,
    Ip6tablesNft,
    IptablesNftSave,
    IptablesNftRestore,
    IptablesLegacySave,
    IptablesLegacyRestore,
    Ip6tablesNftSave,
    Ip6tablesNftRestore,
    Ip6tablesLegacySave,
    Ip6tablesLegacyRestore,
}

impl Tool {
    pub fn binary(self) -> &'static str {
        match self {
            Tool::Nft => "nft",
            Tool::Iptables => "iptables",
            Tool::IptablesNft => "iptables-nft",
            Tool::Ip6tablesNft => "ip6tables-nft",
            Tool::IptablesNftSave => "iptables-nft-save",
            Tool::IptablesNftRestore => "iptables-nft-restore",
            Tool::IptablesLegacySave => "iptables-legacy-save",
            Tool::IptablesLegacyRestore => "iptables-legacy-restore",
            Tool::Ip6tablesNftSave => "ip6tables-nft-save",
            Tool::Ip6tablesNftRestore => "ip6tables-nft-restore",
            Tool::Ip6tablesLegacySave => "ip6tables-legacy-save",
            Tool::Ip6tablesLegacyRestore => "ip6tables-legacy-restore",
        }
    }

    pub fn package(self) -> &'static str {
        match self {
            Tool::Nft => "nftables",
            _ => "iptables",
        }
    }

    fn missing(self) -> FirewallError {
        FirewallError::MissingBinary {
            binary: self.binary(),
            package: self.package(),
        }
    }

    /// Fails with the package to install unless the binary is on PATH.
    pub fn require(self) -> Result<(), FirewallError> {
        self.require_in(&std::env::var_os("PATH").unwrap_or_default())
    }

    pub(crate) fn require_in(self, path: &std::ffi::OsStr) -> Result<(), FirewallError> {
        let found = std::env::split_paths(path).any(|dir| is_executable(&dir.join(self.binary())));
        if found {
            Ok(())
        } else {
            Err(self.missing())
        }
    }
}

fn is_executable(p: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// What a finished command printed.
pub(crate) struct Output {
    pub stdout: String,
    pub stderr: String,
    pub success: bool,
    status: String,
}

impl Output {
    /// `Ok(stdout)` when it succeeded, else a `Command` error.
    pub fn ok(self, tool: Tool, args: &[&str]) -> Result<String, FirewallError> {
        if self.success {
            return Ok(self.stdout);
        }
        Err(FirewallError::Command {
            command: command_line(tool, args),
            status: self.status,
            stderr: self.stderr.trim().to_string(),
        })
    }
}

pub(crate) fn command_line(tool: Tool, args: &[&str]) -> String {
    std::iter::once(tool.binary())
        .chain(args.iter().copied())
        .collect::<Vec<_>>()
        .join(" ")
}

/// Runs `tool args` with `stdin` fed in full; the child is killed if the
/// future is dropped. Exit status is reported, not judged.
pub(crate) async fn run(
    tool: Tool,
    args: &[&str],
    stdin: Option<&str>,
) -> Result<Output, FirewallError> {
    let mut cmd = tokio::process::Command::new(tool.binary());
    cmd.args(args)
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let spawn_err = |source: std::io::Error| match source.kind() {
        std::io::ErrorKind::NotFound => tool.missing(),
        _ => FirewallError::Spawn {
            binary: tool.binary(),
            source,
        },
    };
    let mut child = cmd.spawn().map_err(spawn_err)?;
    if let (Some(text), Some(mut pipe)) = (stdin, child.stdin.take()) {
        // A child that exits early (bad input) closes the pipe; its exit
        // status and stderr then say why, so a write error is not the news.
        let _ = pipe.write_all(text.as_bytes()).await;
        drop(pipe);
    }
    let out = child.wait_with_output().await.map_err(spawn_err)?;
    Ok(Output {
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        success: out.status.success(),
        status: out.status.to_string(),
    })
}

/// Runs and requires success; returns stdout.
pub(crate) async fn run_ok(
    tool: Tool,
    args: &[&str],
    stdin: Option<&str>,
) -> Result<String, FirewallError> {
    run(tool, args, stdin).await?.ok(tool, args)
}
