//! Running the rule tools (`nft`, `iptables-save`, `iptables-restore`) as
//! child processes of the daemon, in its network namespace.

use super::FirewallError;
use std::process::Stdio;
use tokio::io::AsyncWriteExt;
use tokio::process::Command;

/// The Debian package a rule tool comes from, for the "not installed" error.
pub fn package_of(binary: &str) -> &'static str {
    if binary == "nft" {
        "nftables"
    } else {
        "iptables"
    }
}

/// Whether `binary` is on PATH.
pub fn installed(binary: &str) -> bool {
    std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).any(|d| d.join(binary).is_file()))
        .unwrap_or(false)
}

/// Runs `binary args` with `stdin` fed in; its stdout on success.
/// `mode` names the rules the tool is needed for.
pub async fn run(
    binary: &str,
    args: &[&str],
    stdin: Option<&str>,
    mode: &'static str,
) -> Result<String, FirewallError> {
    let command = format!("{binary} {}", args.join(" "));
    let mut child = Command::new(binary)
        .args(args)
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => FirewallError::Missing {
                binary: binary.to_string(),
                package: package_of(binary),
                mode,
            },
            _ => FirewallError::Command {
                command: command.clone(),
                detail: e.to_string(),
            },
        })?;
    if let (Some(text), Some(mut pipe)) = (stdin, child.stdin.take()) {
        pipe.write_all(text.as_bytes())
            .await
            .map_err(|e| FirewallError::Command {
                command: command.clone(),
                detail: format!("writing its input: {e}"),
            })?;
    }
    let out = child
        .wait_with_output()
        .await
        .map_err(|e| FirewallError::Command {
            command: command.clone(),
            detail: e.to_string(),
        })?;
    if !out.status.success() {
        return Err(FirewallError::Command {
            command,
            detail: format!(
                "{}: {}",
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            ),
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}
