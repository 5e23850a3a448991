//! net-conf.json -> validated `NetworkConfig`, with flannel's keys
//! (matched case-insensitively, as Go's encoding/json does), defaults and
//! rules. Each validation error names the key and the rule.
//!
//! CONTRACT (types used by backend/ and main.rs): `NetworkConfig`,
//! `BackendConfig`, `VxlanConfig`, `UdpConfig`; `parse` builds them.

use ipnet::{Ipv4Net, Ipv6Net};
use serde_json::{Map, Value};
use std::net::{Ipv4Addr, Ipv6Addr};

#[derive(Debug, Clone, PartialEq)]
pub struct NetworkConfig {
    pub enable_ipv4: bool,
    pub enable_ipv6: bool,
    pub network: Option<Ipv4Net>,
    pub subnet_len: u8,
    /// Network address of the lowest subnet that may be leased.
    pub subnet_min: std::net::Ipv4Addr,
    /// Network address of the highest subnet that may be leased.
    pub subnet_max: std::net::Ipv4Addr,
    pub ipv6_network: Option<Ipv6Net>,
    pub ipv6_subnet_len: u8,
    /// Lowest / highest IPv6 subnet (network addresses); set when IPv6 is on.
    pub ipv6_subnet_min: Option<Ipv6Addr>,
    pub ipv6_subnet_max: Option<Ipv6Addr>,
    pub enable_nftables: bool,
    pub backend: BackendConfig,
}

#[derive(Debug, Clone, PartialEq)]
pub enum BackendConfig {
    Vxlan(VxlanConfig),
    HostGw,
    Udp(UdpConfig),
}

impl BackendConfig {
    /// flannel's BackendType string.
    pub fn type_name(&self) -> &'static str {
        match self {
            BackendConfig::Vxlan(_) => "vxlan",
            BackendConfig::HostGw => "host-gw",
            BackendConfig::Udp(_) => "udp",
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct VxlanConfig {
    /// VNI, default 1.
    pub vni: u32,
    /// UDP port; 0 = kernel default (8472).
    pub port: u16,
    /// Backend.MTU; None = external interface MTU - 50.
    pub mtu: Option<u32>,
    pub gbp: bool,
    pub learning: bool,
    pub direct_routing: bool,
}

#[derive(Debug, Clone, PartialEq)]
pub struct UdpConfig {
    /// UDP port, default 8285.
    pub port: u16,
}

/// flannel's udp backend port.
pub const DEFAULT_UDP_PORT: u16 = 8285;

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum ConfigError {
    #[error("net-conf.json: invalid JSON: {0}")]
    Syntax(String),
    /// A key breaks a rule; `key` is flannel's spelling (`Backend.VNI`).
    #[error("net-conf.json: {key}: {rule}")]
    Invalid { key: String, rule: String },
}

fn invalid(key: &str, rule: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        key: key.to_string(),
        rule: rule.into(),
    }
}

/// Parses and validates net-conf.json text.
pub fn parse(text: &str) -> Result<NetworkConfig, ConfigError> {
    let root: Value = serde_json::from_str(text).map_err(|e| ConfigError::Syntax(e.to_string()))?;
    let Value::Object(obj) = root else {
        return Err(ConfigError::Syntax("top level must be an object".into()));
    };
    let keys = Keys::new(&obj, "")?;
    let enable_ipv4 = keys.bool("EnableIPv4")?.unwrap_or(true);
    let enable_ipv6 = keys.bool("EnableIPv6")?.unwrap_or(false);
    let mut cfg = NetworkConfig {
        enable_ipv4,
        enable_ipv6,
        network: None,
        subnet_len: 0,
        subnet_min: Ipv4Addr::UNSPECIFIED,
        subnet_max: Ipv4Addr::UNSPECIFIED,
        ipv6_network: None,
        ipv6_subnet_len: 0,
        ipv6_subnet_min: None,
        ipv6_subnet_max: None,
        enable_nftables: keys.bool("EnableNFTables")?.unwrap_or(false),
        backend: parse_backend(keys.get("Backend"))?,
    };
    if !enable_ipv4 && !enable_ipv6 {
        return Err(invalid(
            "EnableIPv4",
            "at least one of EnableIPv4 and EnableIPv6 must be true",
        ));
    }
    if enable_ipv4 {
        apply_ipv4(&keys, &mut cfg)?;
    }
    if enable_ipv6 {
        apply_ipv6(&keys, &mut cfg)?;
    }
    Ok(cfg)
}

/// Case-insensitive view of one JSON object (Go's encoding/json rule).
struct Keys<'a> {
    obj: &'a Map<String, Value>,
    /// Prefix for error messages, e.g. "Backend.".
    path: &'a str,
}

impl<'a> Keys<'a> {
    fn new(obj: &'a Map<String, Value>, path: &'a str) -> Result<Self, ConfigError> {
        // Go would silently take the last of two spellings; JSON objects
        // here lose their order, so refuse the ambiguity instead.
        let mut seen: Vec<String> = Vec::new();
        for k in obj.keys() {
            let lower = k.to_lowercase();
            if seen.contains(&lower) {
                return Err(invalid(
                    &format!("{path}{k}"),
                    "given twice with different upper/lower case",
                ));
            }
            seen.push(lower);
        }
        Ok(Keys { obj, path })
    }

    fn name(&self, key: &str) -> String {
        format!("{}{key}", self.path)
    }

    /// The value of `key`; JSON null counts as absent (as in Go).
    fn get(&self, key: &str) -> Option<&'a Value> {
        self.obj
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(key))
            .map(|(_, v)| v)
            .filter(|v| !v.is_null())
    }

    fn bool(&self, key: &str) -> Result<Option<bool>, ConfigError> {
        match self.get(key) {
            None => Ok(None),
            Some(Value::Bool(b)) => Ok(Some(*b)),
            Some(v) => Err(invalid(
                &self.name(key),
                format!("must be true or false, not {v}"),
            )),
        }
    }

    fn uint(&self, key: &str, max: u64) -> Result<Option<u64>, ConfigError> {
        match self.get(key) {
            None => Ok(None),
            Some(v) => match v.as_u64() {
                Some(n) if n <= max => Ok(Some(n)),
                _ => Err(invalid(
                    &self.name(key),
                    format!("must be a whole number from 0 to {max}, not {v}"),
                )),
            },
        }
    }

    fn string(&self, key: &str) -> Result<Option<&'a str>, ConfigError> {
        match self.get(key) {
            None => Ok(None),
            Some(Value::String(s)) => Ok(Some(s)),
            Some(v) => Err(invalid(
                &self.name(key),
                format!("must be a string, not {v}"),
            )),
        }
    }

    fn parsed<T: std::str::FromStr>(
        &self,
        key: &str,
        what: &str,
    ) -> Result<Option<T>, ConfigError> {
        match self.string(key)? {
            None => Ok(None),
            Some(s) => s
                .trim()
                .parse()
                .map(Some)
                .map_err(|_| invalid(&self.name(key), format!("must be {what}, not {s:?}"))),
        }
    }
}

/// Network, SubnetLen, SubnetMin, SubnetMax, with flannel's defaults.
fn apply_ipv4(keys: &Keys, cfg: &mut NetworkConfig) -> Result<(), ConfigError> {
    let network: Ipv4Net = keys
        .parsed::<Ipv4Net>("Network", "an IPv4 CIDR such as 10.244.0.0/16")?
        .map(|n| n.trunc())
        .filter(|n| n.prefix_len() > 0 || !n.network().is_unspecified())
        .ok_or_else(|| {
            invalid(
                "Network",
                "is required when EnableIPv4 is true (an IPv4 CIDR such as 10.244.0.0/16)",
            )
        })?;
    let prefix = network.prefix_len();
    let subnet_len = match keys.uint("SubnetLen", 32)? {
        None | Some(0) => default_subnet_len(prefix, 28, 22, 24).ok_or_else(|| {
            invalid(
                "Network",
                "is too small: the smallest useful network is a /28",
            )
        })?,
        Some(len) => check_subnet_len(len as u8, prefix, 30, "SubnetLen")?,
    };
    // u64: the network may end at 255.255.255.255.
    let size = 1u64 << (32 - subnet_len);
    let net = u64::from(u32::from(network.network()));
    let last = u64::from(u32::from(network.broadcast()));
    let min = keys.parsed::<Ipv4Addr>("SubnetMin", "an IPv4 address")?;
    let max = keys.parsed::<Ipv4Addr>("SubnetMax", "an IPv4 address")?;
    let min = bound4(min, (net + size) as u32, network, subnet_len, "SubnetMin")?;
    let max = bound4(
        max,
        (last + 1 - size) as u32,
        network,
        subnet_len,
        "SubnetMax",
    )?;
    if u32::from(min) > u32::from(max) {
        return Err(invalid(
            "SubnetMin",
            format!("{min} is above SubnetMax {max}"),
        ));
    }
    cfg.network = Some(network);
    cfg.subnet_len = subnet_len;
    cfg.subnet_min = min;
    cfg.subnet_max = max;
    Ok(())
}

/// flannel's default subnet length: `wide` when the network prefix is at
/// most `wide_from`, else prefix + 2; `None` when the network is smaller
/// than `smallest`.
fn default_subnet_len(prefix: u8, smallest: u8, wide_from: u8, wide: u8) -> Option<u8> {
    if prefix > smallest {
        None
    } else if prefix <= wide_from {
        Some(wide)
    } else {
        Some(prefix + 2)
    }
}

fn check_subnet_len(len: u8, prefix: u8, longest: u8, key: &str) -> Result<u8, ConfigError> {
    if len > longest {
        return Err(invalid(
            key,
            format!("must be at most {longest}, not {len}"),
        ));
    }
    // The first subnet is never leased, so two subnets would leave one.
    if len < prefix.saturating_add(2) {
        return Err(invalid(
            key,
            format!(
                "must be at least the network prefix + 2 (/{}) so the network holds four subnets, not {len}",
                prefix + 2
            ),
        ));
    }
    Ok(len)
}

/// A SubnetMin/SubnetMax value: the default when absent or 0.0.0.0 (Go's
/// zero value), else checked to lie in the network on a subnet boundary.
fn bound4(
    given: Option<Ipv4Addr>,
    default: u32,
    network: Ipv4Net,
    subnet_len: u8,
    key: &str,
) -> Result<Ipv4Addr, ConfigError> {
    let Some(addr) = given.filter(|a| !a.is_unspecified()) else {
        return Ok(Ipv4Addr::from(default));
    };
    if !network.contains(&addr) {
        return Err(invalid(
            key,
            format!("{addr} is not inside Network {network}"),
        ));
    }
    let mask = u32::MAX << (32 - subnet_len);
    if u32::from(addr) & mask != u32::from(addr) {
        return Err(invalid(
            key,
            format!("{addr} is not on a SubnetLen (/{subnet_len}) boundary"),
        ));
    }
    Ok(addr)
}

/// IPv6Network, IPv6SubnetLen, IPv6SubnetMin, IPv6SubnetMax.
fn apply_ipv6(keys: &Keys, cfg: &mut NetworkConfig) -> Result<(), ConfigError> {
    let network: Ipv6Net = keys
        .parsed::<Ipv6Net>("IPv6Network", "an IPv6 CIDR such as fc00::/48")?
        .map(|n| n.trunc())
        .filter(|n| n.prefix_len() > 0 || !n.network().is_unspecified())
        .ok_or_else(|| {
            invalid(
                "IPv6Network",
                "is required when EnableIPv6 is true (an IPv6 CIDR such as fc00::/48)",
            )
        })?;
    let prefix = network.prefix_len();
    let len = match keys.uint("IPv6SubnetLen", 128)? {
        None | Some(0) => default_subnet_len(prefix, 124, 62, 64).ok_or_else(|| {
            invalid(
                "IPv6Network",
                "is too small: the smallest useful network is a /124",
            )
        })?,
        Some(len) => check_subnet_len(len as u8, prefix, 126, "IPv6SubnetLen")?,
    };
    let size = 1u128 << (128 - len);
    let net = u128::from(network.network());
    let last = u128::from(network.broadcast());
    let min = keys.parsed::<Ipv6Addr>("IPv6SubnetMin", "an IPv6 address")?;
    let max = keys.parsed::<Ipv6Addr>("IPv6SubnetMax", "an IPv6 address")?;
    let min = bound6(min, net + size, network, len, "IPv6SubnetMin")?;
    let max = bound6(max, last - size + 1, network, len, "IPv6SubnetMax")?;
    if u128::from(min) > u128::from(max) {
        return Err(invalid(
            "IPv6SubnetMin",
            format!("{min} is above IPv6SubnetMax {max}"),
        ));
    }
    cfg.ipv6_network = Some(network);
    cfg.ipv6_subnet_len = len;
    cfg.ipv6_subnet_min = Some(min);
    cfg.ipv6_subnet_max = Some(max);
    Ok(())
}

fn bound6(
    given: Option<Ipv6Addr>,
    default: u128,
    network: Ipv6Net,
    len: u8,
    key: &str,
) -> Result<Ipv6Addr, ConfigError> {
    let Some(addr) = given.filter(|a| !a.is_unspecified()) else {
        return Ok(Ipv6Addr::from(default));
    };
    if !network.contains(&addr) {
        return Err(invalid(
            key,
            format!("{addr} is not inside IPv6Network {network}"),
        ));
    }
    let mask = u128::MAX << (128 - len);
    if u128::from(addr) & mask != u128::from(addr) {
        return Err(invalid(
            key,
            format!("{addr} is not on an IPv6SubnetLen (/{len}) boundary"),
        ));
    }
    Ok(addr)
}

/// The Backend object. Absent -> udp (flannel's default); Type is matched
/// lower-cased; options a type does not know are ignored.
fn parse_backend(value: Option<&Value>) -> Result<BackendConfig, ConfigError> {
    let Some(value) = value else {
        return Ok(BackendConfig::Udp(UdpConfig {
            port: DEFAULT_UDP_PORT,
        }));
    };
    let Value::Object(obj) = value else {
        return Err(invalid(
            "Backend",
            format!("must be an object, not {value}"),
        ));
    };
    let keys = Keys::new(obj, "Backend.")?;
    let Some(kind) = keys.string("Type")? else {
        return Err(invalid(
            "Backend.Type",
            "is required (vxlan, host-gw or udp)",
        ));
    };
    match kind.to_lowercase().as_str() {
        "vxlan" => parse_vxlan(&keys).map(BackendConfig::Vxlan),
        "host-gw" => Ok(BackendConfig::HostGw),
        "udp" => {
            let port = keys
                .uint("Port", u16::MAX as u64)?
                .unwrap_or(DEFAULT_UDP_PORT as u64);
            if port == 0 {
                return Err(invalid("Backend.Port", "must be from 1 to 65535, not 0"));
            }
            Ok(BackendConfig::Udp(UdpConfig { port: port as u16 }))
        }
        other => Err(invalid(
            "Backend.Type",
            format!("unsupported backend type {other:?} (felt supports vxlan, host-gw and udp)"),
        )),
    }
}

fn parse_vxlan(keys: &Keys) -> Result<VxlanConfig, ConfigError> {
    const MAX_VNI: u64 = (1 << 24) - 1;
    let vni = keys.uint("VNI", MAX_VNI)?.unwrap_or(1) as u32;
    let port = keys.uint("Port", u16::MAX as u64)?.unwrap_or(0) as u16;
    // Go's zero value: MTU 0 means "derive it from the interface".
    let mtu = match keys.uint("MTU", 65535)? {
        None | Some(0) => None,
        Some(m) if m < 68 => {
            return Err(invalid(
                "Backend.MTU",
                format!("must be at least 68 (IPv4 minimum), not {m}"),
            ))
        }
        Some(m) => Some(m as u32),
    };
    Ok(VxlanConfig {
        vni,
        port,
        mtu,
        gbp: keys.bool("GBP")?.unwrap_or(false),
        learning: keys.bool("Learning")?.unwrap_or(false),
        direct_routing: keys.bool("DirectRouting")?.unwrap_or(false),
    })
}

#[cfg(test)]
#[path = "config_tests.rs"]
mod tests;
