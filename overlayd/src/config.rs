//! net-conf.json -> validated `NetworkConfig`, with flannel's keys
//! (matched case-insensitively, as Go's encoding/json does), defaults and
//! rules. Each validation error names the key and the rule.
//!
//! CONTRACT (types used by backend/ and main.rs):

use ipnet::{Ipv4Net, Ipv6Net};

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
