//! `subnet.env`: the hand-off from overlayd to the CNI plugin, in flannel's
//! exact format so either side can be flannel's.
//!
//! ```text
//! FLANNEL_NETWORK=10.244.0.0/16
//! FLANNEL_SUBNET=10.244.1.1/24
//! FLANNEL_MTU=1450
//! FLANNEL_IPMASQ=true
//! ```
//! (+ FLANNEL_IPV6_NETWORK / FLANNEL_IPV6_SUBNET with IPv6.)

use ipnet::{Ipv4Net, Ipv6Net};
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

/// Where flannel (and so felt) puts it by default.
pub const DEFAULT_PATH: &str = "/run/flannel/subnet.env";

#[derive(Debug, thiserror::Error)]
pub enum SubnetEnvError {
    #[error("subnet file {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("subnet file line {line}: {key}={value}: {reason}")]
    BadValue {
        line: usize,
        key: String,
        value: String,
        reason: String,
    },
    #[error("subnet file has neither FLANNEL_SUBNET nor FLANNEL_IPV6_SUBNET")]
    NoSubnet,
    #[error("subnet file lacks {0}")]
    Missing(&'static str),
}

/// The parsed contents of subnet.env.
///
/// `subnet` keeps flannel's form: the node's gateway address with the
/// subnet's prefix length (`10.244.1.1/24`), not the network address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubnetEnv {
    pub network: Option<Ipv4Net>,
    pub subnet: Option<Ipv4Net>,
    pub ipv6_network: Option<Ipv6Net>,
    pub ipv6_subnet: Option<Ipv6Net>,
    pub mtu: u32,
    pub ipmasq: bool,
}

impl SubnetEnv {
    /// Parses flannel's KEY=VALUE lines. Unknown keys, blank lines and
    /// `#` comments are ignored (flannel's own reader ignores them too).
    pub fn parse(text: &str) -> Result<Self, SubnetEnvError> {
        let mut env = SubnetEnv {
            network: None,
            subnet: None,
            ipv6_network: None,
            ipv6_subnet: None,
            mtu: 0,
            ipmasq: false,
        };
        let mut have_mtu = false;
        for (idx, raw) in text.lines().enumerate() {
            let line = raw.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let Some((key, value)) = line.split_once('=') else {
                continue;
            };
            let (key, value) = (key.trim(), value.trim().trim_matches('"'));
            let bad = |reason: String| SubnetEnvError::BadValue {
                line: idx + 1,
                key: key.to_string(),
                value: value.to_string(),
                reason,
            };
            match key {
                "FLANNEL_NETWORK" => {
                    env.network = Some(value.parse().map_err(|e| bad(format!("{e}")))?)
                }
                "FLANNEL_SUBNET" => {
                    env.subnet = Some(value.parse().map_err(|e| bad(format!("{e}")))?)
                }
                "FLANNEL_IPV6_NETWORK" => {
                    env.ipv6_network = Some(value.parse().map_err(|e| bad(format!("{e}")))?)
                }
                "FLANNEL_IPV6_SUBNET" => {
                    env.ipv6_subnet = Some(value.parse().map_err(|e| bad(format!("{e}")))?)
                }
                "FLANNEL_MTU" => {
                    env.mtu = value.parse().map_err(|e| bad(format!("{e}")))?;
                    have_mtu = true;
                }
                "FLANNEL_IPMASQ" => env.ipmasq = value.parse().map_err(|e| bad(format!("{e}")))?,
                _ => {}
            }
        }
        if env.subnet.is_none() && env.ipv6_subnet.is_none() {
            return Err(SubnetEnvError::NoSubnet);
        }
        if env.subnet.is_some() && env.network.is_none() {
            return Err(SubnetEnvError::Missing("FLANNEL_NETWORK"));
        }
        if env.ipv6_subnet.is_some() && env.ipv6_network.is_none() {
            return Err(SubnetEnvError::Missing("FLANNEL_IPV6_NETWORK"));
        }
        if !have_mtu {
            return Err(SubnetEnvError::Missing("FLANNEL_MTU"));
        }
        Ok(env)
    }

    /// Reads and parses the file at `path`.
    pub fn read(path: &Path) -> Result<Self, SubnetEnvError> {
        let text = fs::read_to_string(path).map_err(|source| SubnetEnvError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        Self::parse(&text)
    }

    /// Renders flannel's format, keys in flannel's order.
    pub fn render(&self) -> String {
        let mut out = String::new();
        if let Some(n) = self.network {
            out.push_str(&format!("FLANNEL_NETWORK={n}\n"));
        }
        if let Some(s) = self.subnet {
            out.push_str(&format!("FLANNEL_SUBNET={s}\n"));
        }
        if let Some(n) = self.ipv6_network {
            out.push_str(&format!("FLANNEL_IPV6_NETWORK={n}\n"));
        }
        if let Some(s) = self.ipv6_subnet {
            out.push_str(&format!("FLANNEL_IPV6_SUBNET={s}\n"));
        }
        out.push_str(&format!("FLANNEL_MTU={}\n", self.mtu));
        out.push_str(&format!("FLANNEL_IPMASQ={}\n", self.ipmasq));
        out
    }

    /// Writes the file atomically (temp file in the same directory, fsync,
    /// rename), so the CNI plugin never reads half a file.
    pub fn write_atomic(&self, path: &Path) -> Result<(), SubnetEnvError> {
        write_file_atomic(path, self.render().as_bytes())
    }
}

/// Atomic replace of `path` with `contents`; creates the parent directory.
pub fn write_file_atomic(path: &Path, contents: &[u8]) -> Result<(), SubnetEnvError> {
    let io = |source| SubnetEnvError::Io {
        path: path.to_path_buf(),
        source,
    };
    let dir = path.parent().unwrap_or(Path::new("."));
    fs::create_dir_all(dir).map_err(io)?;
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = dir.join(format!(".{name}.tmp.{}", std::process::id()));
    let result = (|| {
        let mut f = fs::File::create(&tmp)?;
        f.write_all(contents)?;
        f.sync_all()?;
        fs::rename(&tmp, path)
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result.map_err(io)
}

#[cfg(test)]
mod tests {
    use super::*;

    const FLANNEL: &str = "FLANNEL_NETWORK=10.244.0.0/16\nFLANNEL_SUBNET=10.244.1.1/24\nFLANNEL_MTU=1450\nFLANNEL_IPMASQ=true\n";

    #[test]
    fn parses_and_renders_flannel_format_byte_for_byte() {
        let env = SubnetEnv::parse(FLANNEL).unwrap();
        assert_eq!(env.network, Some("10.244.0.0/16".parse().unwrap()));
        assert_eq!(env.subnet, Some("10.244.1.1/24".parse().unwrap()));
        assert_eq!(env.mtu, 1450);
        assert!(env.ipmasq);
        assert_eq!(env.render(), FLANNEL);
    }

    #[test]
    fn dual_stack_round_trips() {
        let text = "FLANNEL_NETWORK=10.244.0.0/16\nFLANNEL_SUBNET=10.244.1.1/24\nFLANNEL_IPV6_NETWORK=fc00::/48\nFLANNEL_IPV6_SUBNET=fc00:0:0:1::1/64\nFLANNEL_MTU=1450\nFLANNEL_IPMASQ=false\n";
        let env = SubnetEnv::parse(text).unwrap();
        assert_eq!(env.ipv6_subnet, Some("fc00:0:0:1::1/64".parse().unwrap()));
        assert_eq!(env.render(), text);
    }

    #[test]
    fn rejects_bad_and_incomplete_files() {
        let err = SubnetEnv::parse(
            "FLANNEL_NETWORK=10.244.0.0/16\nFLANNEL_SUBNET=nope\nFLANNEL_MTU=1450\n",
        )
        .unwrap_err();
        assert!(err.to_string().contains("FLANNEL_SUBNET=nope"), "{err}");
        assert!(matches!(
            SubnetEnv::parse("FLANNEL_MTU=1450\n"),
            Err(SubnetEnvError::NoSubnet)
        ));
        assert!(matches!(
            SubnetEnv::parse("FLANNEL_NETWORK=10.244.0.0/16\nFLANNEL_SUBNET=10.244.1.1/24\n"),
            Err(SubnetEnvError::Missing("FLANNEL_MTU"))
        ));
    }

    #[test]
    fn atomic_write_replaces_whole_file() {
        let dir = std::env::temp_dir().join(format!("felt-subnetenv-{}", std::process::id()));
        let path = dir.join("sub/subnet.env");
        let env = SubnetEnv::parse(FLANNEL).unwrap();
        env.write_atomic(&path).unwrap();
        assert_eq!(fs::read_to_string(&path).unwrap(), FLANNEL);
        assert_eq!(SubnetEnv::read(&path).unwrap(), env);
        let leftovers: Vec<_> = fs::read_dir(path.parent().unwrap()).unwrap().collect();
        assert_eq!(leftovers.len(), 1, "temp file left behind");
        fs::remove_dir_all(&dir).unwrap();
    }
}
