//! The CNI_* environment: read, then validated the way the Go skeleton
//! does (runtimes rely on these rules).

use crate::error::{Error, Result};
use std::net::IpAddr;
use std::path::PathBuf;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Command {
    Add,
    Del,
    Check,
    Version,
    Status,
    Gc,
}

impl Command {
    pub fn parse(s: &str) -> Result<Self> {
        Ok(match s {
            "ADD" => Command::Add,
            "DEL" => Command::Del,
            "CHECK" => Command::Check,
            "VERSION" => Command::Version,
            "STATUS" => Command::Status,
            "GC" => Command::Gc,
            other => {
                return Err(Error::InvalidEnv(format!(
                    "CNI_COMMAND: unknown command {other:?}"
                )))
            }
        })
    }
}

/// Per-attachment environment of ADD, DEL and CHECK.
#[derive(Debug, Clone, Default)]
pub struct Env {
    pub container_id: String,
    /// `None` only for DEL (spec: may be empty).
    pub netns: Option<PathBuf>,
    pub ifname: String,
    pub args: CniArgs,
}

/// The keys felt understands in CNI_ARGS.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct CniArgs {
    pub ips: Vec<IpAddr>,
    pub mac: Option<String>,
}

/// `^[a-zA-Z0-9][a-zA-Z0-9_.\-]*$`, the skeleton's rule for container IDs
/// and network names; it also keeps paths inside the data dir.
pub fn valid_name(s: &str) -> bool {
    let mut chars = s.chars();
    match chars.next() {
        Some(c) if c.is_ascii_alphanumeric() => {}
        _ => return false,
    }
    chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'))
}

pub fn validate_ifname(name: &str) -> Result<()> {
    let bad = |why: &str| {
        Err(Error::InvalidEnv(format!(
            "CNI_IFNAME: invalid interface name {name:?}: {why}"
        )))
    };
    if name.is_empty() {
        return bad("empty");
    }
    if name.len() > 15 {
        return bad("longer than 15 characters");
    }
    if name == "." || name == ".." {
        return bad("not allowed");
    }
    if name
        .chars()
        .any(|c| c == '/' || c == ':' || c.is_whitespace())
    {
        return bad("contains '/', ':' or whitespace");
    }
    Ok(())
}

fn var(name: &str) -> Option<String> {
    std::env::var(name).ok()
}

fn required(name: &str) -> Result<String> {
    match var(name) {
        Some(v) if !v.is_empty() => Ok(v),
        _ => Err(Error::InvalidEnv(format!(
            "required environment variable {name} is missing or empty"
        ))),
    }
}

/// Reads and validates the environment for `cmd` (not for VERSION/STATUS/GC,
/// which carry no attachment).
pub fn load(cmd: Command) -> Result<Env> {
    let container_id = required("CNI_CONTAINERID")?;
    if !valid_name(&container_id) {
        return Err(Error::InvalidEnv(format!(
            "CNI_CONTAINERID: invalid container ID {container_id:?} (must match ^[a-zA-Z0-9][a-zA-Z0-9_.\\-]*$)"
        )));
    }
    let netns = match cmd {
        Command::Del => var("CNI_NETNS")
            .filter(|v| !v.is_empty())
            .map(PathBuf::from),
        _ => Some(PathBuf::from(required("CNI_NETNS")?)),
    };
    let ifname = required("CNI_IFNAME")?;
    validate_ifname(&ifname)?;
    required("CNI_PATH")?;
    let args = parse_args(&var("CNI_ARGS").unwrap_or_default())?;
    Ok(Env {
        container_id,
        netns,
        ifname,
        args,
    })
}

/// Parses `K=V;K=V`. Unknown keys fail unless `IgnoreUnknown` is true, as
/// in the Go plugins; the keys Kubernetes always sends are known.
pub fn parse_args(raw: &str) -> Result<CniArgs> {
    let mut args = CniArgs::default();
    let mut unknown = Vec::new();
    let mut ignore_unknown = false;
    for pair in raw.split(';').filter(|p| !p.is_empty()) {
        let Some((k, v)) = pair.split_once('=') else {
            return Err(Error::InvalidEnv(format!(
                "CNI_ARGS: invalid pair {pair:?} (want KEY=VALUE)"
            )));
        };
        match k {
            "IP" => {
                for ip in v.split(',').filter(|s| !s.is_empty()) {
                    let ip = ip.trim().parse().map_err(|_| {
                        Error::InvalidEnv(format!("CNI_ARGS: IP={ip:?} is not an IP address"))
                    })?;
                    args.ips.push(ip);
                }
            }
            "MAC" => args.mac = Some(v.to_string()),
            "IgnoreUnknown" => {
                ignore_unknown = matches!(v.to_ascii_lowercase().as_str(), "1" | "true")
            }
            "K8S_POD_NAMESPACE" | "K8S_POD_NAME" | "K8S_POD_INFRA_CONTAINER_ID" | "K8S_POD_UID" => {
            }
            other => unknown.push(other.to_string()),
        }
    }
    if !unknown.is_empty() && !ignore_unknown {
        return Err(Error::InvalidEnv(format!(
            "CNI_ARGS: unknown args {unknown:?}"
        )));
    }
    Ok(args)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_the_skeleton_rule() {
        assert!(valid_name("abc-1.2_3"));
        assert!(valid_name("0"));
        for bad in ["", ".", "..", "-a", "_a", "a/b", "../x", "a b", "a:b"] {
            assert!(!valid_name(bad), "{bad:?} accepted");
        }
    }

    #[test]
    fn ifname_rules() {
        assert!(validate_ifname("eth0").is_ok());
        assert!(validate_ifname("a23456789012345").is_ok());
        for bad in [
            "",
            ".",
            "..",
            "a234567890123456",
            "a/b",
            "a:b",
            "a b",
            "a\tb",
        ] {
            let err = validate_ifname(bad).unwrap_err();
            assert_eq!(err.code(), 4, "{bad:?}");
            assert!(err.to_string().contains("CNI_IFNAME"));
        }
    }

    #[test]
    fn args_parse_ip_mac_and_ignore_unknown() {
        let a = parse_args("IgnoreUnknown=1;IP=10.0.0.5;MAC=02:00:00:00:00:01;FOO=bar").unwrap();
        assert_eq!(a.ips, vec!["10.0.0.5".parse::<IpAddr>().unwrap()]);
        assert_eq!(a.mac.as_deref(), Some("02:00:00:00:00:01"));
        let err = parse_args("FOO=bar").unwrap_err();
        assert_eq!(err.code(), 4);
        assert!(parse_args("K8S_POD_NAME=x;K8S_POD_NAMESPACE=y").is_ok());
        assert_eq!(parse_args("IP=nope;IgnoreUnknown=1").unwrap_err().code(), 4);
        assert_eq!(parse_args("junk").unwrap_err().code(), 4);
    }
}
