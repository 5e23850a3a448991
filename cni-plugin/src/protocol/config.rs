//! The network configuration on stdin: parsed, defaulted and validated
//! before anything touches the kernel, then resolved against subnet.env
//! into a [`Plan`].

use crate::error::{Error, Result};
use crate::ipam::range::{Range, RangeSet};
use crate::link::addr::Route;
use crate::protocol::env::valid_name;
use crate::protocol::version;
use felt_common::subnet_env::{SubnetEnv, DEFAULT_PATH};
use ipnet::IpNet;
use serde::Deserialize;
use serde_json::Value;
use std::net::IpAddr;
use std::path::PathBuf;

pub const DEFAULT_BRIDGE: &str = "cni0";
pub const DEFAULT_DATA_DIR: &str = "/var/lib/cni/networks";
const DEFAULT_MTU: u32 = 1500;

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawConf {
    name: Option<String>,
    bridge: Option<String>,
    is_gateway: Option<bool>,
    is_default_gateway: Option<bool>,
    hairpin_mode: Option<bool>,
    ip_masq: Option<bool>,
    mtu: Option<u32>,
    dns: Option<Value>,
    data_dir: Option<PathBuf>,
    subnet_file: Option<PathBuf>,
    ipam: Option<RawIpam>,
    routes: Option<Vec<RawRoute>>,
    runtime_config: Option<RawRuntime>,
    args: Option<Value>,
    prev_result: Option<Value>,
    vlan: Option<u32>,
    promisc_mode: Option<bool>,
    macspoofchk: Option<bool>,
    #[serde(rename = "cni.dev/valid-attachments")]
    valid_attachments: Option<Vec<RawAttachment>>,
    #[serde(rename = "cni.dev/attachments")]
    attachments: Option<Vec<RawAttachment>>,
}

#[derive(Debug, Deserialize)]
struct RawAttachment {
    #[serde(rename = "containerID")]
    container_id: String,
    ifname: String,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawIpam {
    #[serde(rename = "type")]
    kind: Option<String>,
    ranges: Option<Vec<Vec<RawRange>>>,
    subnet: Option<IpNet>,
    range_start: Option<IpAddr>,
    range_end: Option<IpAddr>,
    gateway: Option<IpAddr>,
    routes: Option<Vec<RawRoute>>,
    data_dir: Option<PathBuf>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawRange {
    subnet: IpNet,
    range_start: Option<IpAddr>,
    range_end: Option<IpAddr>,
    gateway: Option<IpAddr>,
}

#[derive(Debug, Deserialize)]
struct RawRoute {
    dst: IpNet,
    gw: Option<IpAddr>,
}

#[derive(Debug, Default, Deserialize)]
struct RawRuntime {
    ips: Option<Vec<String>>,
    mac: Option<String>,
}

/// A validated network configuration; nothing read from disk yet.
#[derive(Debug, Clone)]
pub struct NetConf {
    pub cni_version: String,
    pub name: String,
    pub bridge: String,
    pub hairpin: bool,
    pub is_default_gateway: bool,
    pub ip_masq: Option<bool>,
    pub mtu: Option<u32>,
    pub dns: Option<Value>,
    pub data_dir: PathBuf,
    pub subnet_file: PathBuf,
    /// Explicit `ipam.ranges` / `ipam.subnet`; empty means subnet.env.
    pub ranges: Vec<RangeSet>,
    pub routes: Vec<Route>,
    /// Addresses asked for in runtimeConfig.ips or args.cni.ips.
    pub requested_ips: Vec<IpAddr>,
    pub mac: Option<String>,
    pub prev_result: Option<Value>,
    /// GC's `cni.dev/valid-attachments` (or older `cni.dev/attachments`):
    /// (container ID, ifname) pairs to keep.
    pub valid_attachments: Option<Vec<(String, String)>>,
}

fn invalid(msg: impl Into<String>) -> Error {
    Error::InvalidConfig(msg.into())
}

/// Parses stdin. Malformed JSON is a decode error (6), an unknown version
/// an incompatible-version error (1), anything else wrong a config error (7)
/// or, for features felt deliberately lacks, unsupported (2).
pub fn parse(bytes: &[u8]) -> Result<NetConf> {
    let mut value: Value = serde_json::from_slice(bytes)
        .map_err(|e| Error::Decode(format!("failed to parse network configuration: {e}")))?;
    merge_delegate(&mut value);
    let cni_version = version::check(&value)?;
    let raw: RawConf = serde_json::from_value(value)
        .map_err(|e| invalid(format!("invalid network configuration: {e}")))?;
    let name = raw.name.clone().unwrap_or_default();
    if !valid_name(&name) {
        return Err(invalid(format!(
            "invalid network name {name:?} (must match ^[a-zA-Z0-9][a-zA-Z0-9_.\\-]*$)"
        )));
    }
    check_unsupported(&raw)?;
    let bridge = raw
        .bridge
        .clone()
        .unwrap_or_else(|| DEFAULT_BRIDGE.to_string());
    crate::protocol::env::validate_ifname(&bridge)
        .map_err(|_| invalid(format!("invalid bridge name {bridge:?}")))?;
    if let Some(mtu) = raw.mtu {
        if !(68..=65535).contains(&mtu) {
            return Err(invalid(format!("invalid mtu {mtu} (68..65535)")));
        }
    }
    let ipam = raw.ipam.unwrap_or_default();
    let ranges = parse_ranges(&ipam)?;
    let mut routes = Vec::new();
    for r in ipam
        .routes
        .iter()
        .flatten()
        .chain(raw.routes.iter().flatten())
    {
        routes.push(Route {
            dst: r.dst.trunc(),
            gw: r.gw,
        });
    }
    let valid_attachments = raw
        .valid_attachments
        .or(raw.attachments)
        .map(|v| v.into_iter().map(|a| (a.container_id, a.ifname)).collect());
    let (requested_ips, mac) =
        requested(raw.runtime_config.unwrap_or_default(), raw.args.as_ref())?;
    Ok(NetConf {
        cni_version,
        name,
        bridge,
        hairpin: raw.hairpin_mode.unwrap_or(true),
        is_default_gateway: raw.is_default_gateway.unwrap_or(true),
        ip_masq: raw.ip_masq,
        mtu: raw.mtu,
        dns: raw.dns.filter(|d| !d.is_null()),
        data_dir: raw
            .data_dir
            .or(ipam.data_dir)
            .unwrap_or_else(|| DEFAULT_DATA_DIR.into()),
        subnet_file: raw.subnet_file.unwrap_or_else(|| DEFAULT_PATH.into()),
        ranges,
        routes,
        requested_ips,
        mac,
        prev_result: raw.prev_result.filter(|p| !p.is_null()),
        valid_attachments,
    })
}

/// kube-flannel's conflist nests bridge options under `delegate`; with only
/// `type` changed they must still apply. Top-level keys win.
fn merge_delegate(value: &mut Value) {
    let Some(obj) = value.as_object_mut() else {
        return;
    };
    let Some(Value::Object(delegate)) = obj.remove("delegate") else {
        return;
    };
    for (k, v) in delegate {
        if k != "type" && k != "name" && k != "cniVersion" {
            obj.entry(k).or_insert(v);
        }
    }
}

fn check_unsupported(raw: &RawConf) -> Result<()> {
    let unsupported = |what: String| Err(Error::Unsupported(what));
    if let Some(v) = raw.vlan.filter(|v| *v != 0) {
        return unsupported(format!("unsupported field vlan={v}"));
    }
    if raw.promisc_mode == Some(true) {
        return unsupported("unsupported field promiscMode=true".into());
    }
    if raw.macspoofchk == Some(true) {
        return unsupported("unsupported field macspoofchk=true".into());
    }
    if raw.is_gateway == Some(false) {
        return unsupported(
            "unsupported field isGateway=false (felt always gives the bridge the gateway address)"
                .into(),
        );
    }
    if let Some(kind) = raw.ipam.as_ref().and_then(|i| i.kind.as_deref()) {
        if !kind.is_empty() && kind != "host-local" {
            return unsupported(format!(
                "unsupported field ipam.type={kind:?} (felt has built-in host-local IPAM)"
            ));
        }
    }
    Ok(())
}

fn parse_ranges(ipam: &RawIpam) -> Result<Vec<RangeSet>> {
    let mut sets = Vec::new();
    if let Some(subnet) = ipam.subnet {
        let r = Range::new(subnet, ipam.range_start, ipam.range_end, ipam.gateway)
            .map_err(|e| invalid(format!("ipam.subnet: {e}")))?;
        sets.push(RangeSet::new(vec![r]).map_err(invalid)?);
    }
    for (i, set) in ipam.ranges.iter().flatten().enumerate() {
        let mut ranges = Vec::new();
        for r in set {
            let gw = r.gateway.or(ipam.gateway.filter(|g| r.subnet.contains(g)));
            ranges.push(
                Range::new(r.subnet, r.range_start, r.range_end, gw)
                    .map_err(|e| invalid(format!("ipam.ranges[{i}]: {e}")))?,
            );
        }
        sets.push(RangeSet::new(ranges).map_err(|e| invalid(format!("ipam.ranges[{i}]: {e}")))?);
    }
    Ok(sets)
}

fn requested(rt: RawRuntime, args: Option<&Value>) -> Result<(Vec<IpAddr>, Option<String>)> {
    let from_args = args
        .and_then(|a| a.pointer("/cni/ips"))
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(|v| v.as_str().map(str::to_string))
                .collect::<Vec<_>>()
        });
    let mut ips = Vec::new();
    for s in rt
        .ips
        .into_iter()
        .flatten()
        .chain(from_args.into_iter().flatten())
    {
        // Both "10.0.0.5" and "10.0.0.5/24" are in use.
        let ip = s
            .parse::<IpAddr>()
            .or_else(|_| s.parse::<IpNet>().map(|n| n.addr()))
            .map_err(|_| invalid(format!("runtimeConfig.ips: {s:?} is not an IP address")))?;
        ips.push(ip);
    }
    if let Some(mac) = &rt.mac {
        parse_mac(mac).map_err(|e| invalid(format!("runtimeConfig.mac: {e}")))?;
    }
    Ok((ips, rt.mac))
}

/// `aa:bb:cc:dd:ee:ff` into bytes; unicast only.
pub fn parse_mac(s: &str) -> std::result::Result<Vec<u8>, String> {
    let bytes: Vec<u8> = s
        .split(':')
        .map(|p| {
            if p.len() == 2 {
                u8::from_str_radix(p, 16).ok()
            } else {
                None
            }
        })
        .collect::<Option<Vec<u8>>>()
        .filter(|b| b.len() == 6)
        .ok_or_else(|| format!("{s:?} is not a MAC address"))?;
    if bytes[0] & 1 == 1 {
        return Err(format!("{s:?} is a multicast MAC address"));
    }
    Ok(bytes)
}

/// Everything ADD needs, resolved from config + subnet.env.
#[derive(Debug, Clone, PartialEq)]
pub struct Plan {
    pub ranges: Vec<RangeSet>,
    pub routes: Vec<Route>,
    pub mtu: u32,
    pub ip_masq: bool,
    /// The cluster-wide networks (FLANNEL_NETWORK, FLANNEL_IPV6_NETWORK).
    pub cluster: Vec<IpNet>,
}

/// Reads the subnet file: `Ok(None)` when it does not exist.
pub fn read_subnet_env(conf: &NetConf) -> Result<Option<SubnetEnv>> {
    match SubnetEnv::read(&conf.subnet_file) {
        Ok(env) => Ok(Some(env)),
        Err(felt_common::subnet_env::SubnetEnvError::Io { source, .. })
            if source.kind() == std::io::ErrorKind::NotFound =>
        {
            Ok(None)
        }
        Err(e) => Err(invalid(format!("invalid subnet file: {e}"))),
    }
}

/// Pure: explicit config wins over subnet.env, which fills the rest
/// (flannel's mapping: ranges [[FLANNEL_SUBNET]], mtu FLANNEL_MTU,
/// ipMasq = !FLANNEL_IPMASQ because overlayd masquerades itself).
pub fn resolve(conf: &NetConf, env: Option<&SubnetEnv>) -> Result<Plan> {
    let mut ranges = conf.ranges.clone();
    if ranges.is_empty() {
        let Some(env) = env else {
            return Err(Error::TryAgain(format!(
                "subnet file {} not found and no ipam.ranges configured (is overlayd running?)",
                conf.subnet_file.display()
            )));
        };
        let subnets = [env.subnet.map(IpNet::V4), env.ipv6_subnet.map(IpNet::V6)];
        for subnet in subnets.into_iter().flatten() {
            let r = Range::new(subnet, None, None, None)
                .map_err(|e| invalid(format!("subnet file {}: {e}", conf.subnet_file.display())))?;
            ranges.push(RangeSet::new(vec![r]).map_err(invalid)?);
        }
    }
    let cluster: Vec<IpNet> = env
        .map(|e| [e.network.map(IpNet::V4), e.ipv6_network.map(IpNet::V6)])
        .into_iter()
        .flatten()
        .flatten()
        .collect();
    let mut routes: Vec<Route> = Vec::new();
    for set in &ranges {
        let Some(first) = set.0.first() else { continue };
        let gw = Some(first.gateway);
        if conf.is_default_gateway {
            let any = if set.is_ipv4() { "0.0.0.0/0" } else { "::/0" };
            let dst = any
                .parse()
                .map_err(|_| invalid("internal: default route"))?;
            routes.push(Route { dst, gw });
        } else {
            for net in cluster
                .iter()
                .filter(|n| n.addr().is_ipv4() == set.is_ipv4())
            {
                routes.push(Route { dst: *net, gw });
            }
        }
    }
    for r in &conf.routes {
        let gw =
            r.gw.or_else(|| gateway_for(&ranges, r.dst.addr().is_ipv4()));
        let route = Route { dst: r.dst, gw };
        if !routes.iter().any(|x| x.dst == route.dst) {
            routes.push(route);
        }
    }
    let mtu = conf
        .mtu
        .or(env.map(|e| e.mtu).filter(|m| *m > 0))
        .unwrap_or(DEFAULT_MTU);
    let ip_masq = conf
        .ip_masq
        .unwrap_or_else(|| env.is_some_and(|e| !e.ipmasq));
    Ok(Plan {
        ranges,
        routes,
        mtu,
        ip_masq,
        cluster,
    })
}

fn gateway_for(ranges: &[RangeSet], v4: bool) -> Option<IpAddr> {
    ranges
        .iter()
        .find(|s| s.is_ipv4() == v4)
        .and_then(|s| s.0.first())
        .map(|r| r.gateway)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn conf(json: &str) -> NetConf {
        parse(json.as_bytes()).unwrap()
    }

    fn env() -> SubnetEnv {
        SubnetEnv::parse(
            "FLANNEL_NETWORK=10.244.0.0/16\nFLANNEL_SUBNET=10.244.1.1/24\nFLANNEL_MTU=1450\nFLANNEL_IPMASQ=true\n",
        )
        .unwrap()
    }

    #[test]
    fn kube_flannel_delegate_defaults() {
        let c = conf(
            r#"{"cniVersion":"1.0.0","name":"cbr0","type":"felt","hairpinMode":true,"isDefaultGateway":true}"#,
        );
        assert_eq!(
            (c.bridge.as_str(), c.hairpin, c.is_default_gateway),
            ("cni0", true, true)
        );
        assert_eq!(c.data_dir, PathBuf::from("/var/lib/cni/networks"));
        assert_eq!(c.subnet_file, PathBuf::from("/run/flannel/subnet.env"));
        let plan = resolve(&c, Some(&env())).unwrap();
        assert_eq!(plan.ranges[0].to_string(), "10.244.1.1-10.244.1.254");
        assert_eq!(plan.mtu, 1450);
        assert!(
            !plan.ip_masq,
            "FLANNEL_IPMASQ=true must turn plugin masquerading off"
        );
        assert_eq!(
            plan.routes,
            vec![Route {
                dst: "0.0.0.0/0".parse().unwrap(),
                gw: Some("10.244.1.1".parse().unwrap())
            }]
        );
        assert_eq!(
            plan.cluster,
            vec!["10.244.0.0/16".parse::<IpNet>().unwrap()]
        );
    }

    #[test]
    fn flannel_delegate_keys_apply() {
        let c = conf(
            r#"{"cniVersion":"1.0.0","name":"cbr0","type":"felt","mtu":1400,
            "delegate":{"type":"bridge","hairpinMode":false,"isDefaultGateway":false,"mtu":1300}}"#,
        );
        assert!(!c.hairpin && !c.is_default_gateway);
        assert_eq!(c.mtu, Some(1400), "top-level keys win over delegate");
    }

    #[test]
    fn without_default_gateway_routes_the_cluster_network() {
        let c = conf(r#"{"cniVersion":"0.3.1","name":"n","isDefaultGateway":false}"#);
        let plan = resolve(&c, Some(&env())).unwrap();
        assert_eq!(
            plan.routes,
            vec![Route {
                dst: "10.244.0.0/16".parse().unwrap(),
                gw: Some("10.244.1.1".parse().unwrap())
            }]
        );
    }

    #[test]
    fn explicit_values_override_subnet_env() {
        let c = conf(
            r#"{"cniVersion":"1.1.0","name":"n","mtu":9000,"ipMasq":false,
               "ipam":{"type":"host-local","ranges":[[{"subnet":"192.168.5.0/24","gateway":"192.168.5.254"}]],
                       "routes":[{"dst":"172.16.0.0/12"},{"dst":"0.0.0.0/0"}]}}"#,
        );
        let mut e = env();
        e.ipmasq = false;
        let plan = resolve(&c, Some(&e)).unwrap();
        assert_eq!(plan.mtu, 9000);
        assert!(!plan.ip_masq);
        assert_eq!(
            plan.ranges[0].0[0].gateway,
            "192.168.5.254".parse::<IpAddr>().unwrap()
        );
        let gw = Some("192.168.5.254".parse().unwrap());
        assert_eq!(
            plan.routes,
            vec![
                Route {
                    dst: "0.0.0.0/0".parse().unwrap(),
                    gw
                },
                Route {
                    dst: "172.16.0.0/12".parse().unwrap(),
                    gw
                },
            ]
        );
        // Usable with no subnet file at all.
        let plan = resolve(&c, None).unwrap();
        assert_eq!((plan.mtu, plan.ip_masq), (9000, false));
    }

    #[test]
    fn ip_masq_follows_flannel_rule() {
        let c = conf(r#"{"cniVersion":"1.0.0","name":"n"}"#);
        let mut e = env();
        e.ipmasq = false;
        assert!(resolve(&c, Some(&e)).unwrap().ip_masq);
        let c = conf(r#"{"cniVersion":"1.0.0","name":"n","ipMasq":false}"#);
        assert!(!resolve(&c, Some(&e)).unwrap().ip_masq);
    }

    #[test]
    fn missing_subnet_source_is_try_again() {
        let c = conf(r#"{"cniVersion":"1.0.0","name":"n","subnetFile":"/nonexistent/subnet.env"}"#);
        let err = resolve(&c, None).unwrap_err();
        assert_eq!(err.code(), 11);
        assert!(err.to_string().contains("/nonexistent/subnet.env"), "{err}");
    }

    #[test]
    fn error_codes_for_bad_input() {
        let code = |s: &str| parse(s.as_bytes()).unwrap_err().code();
        assert_eq!(code("{not json"), 6);
        assert_eq!(code(r#"{"cniVersion":"9.9.9","name":"n"}"#), 1);
        assert_eq!(code(r#"{"name":"n"}"#), 1);
        assert_eq!(code(r#"{"cniVersion":"1.0.0","name":"../etc"}"#), 7);
        assert_eq!(code(r#"{"cniVersion":"1.0.0"}"#), 7);
        assert_eq!(code(r#"{"cniVersion":"1.0.0","name":"n","mtu":"big"}"#), 7);
        assert_eq!(code(r#"{"cniVersion":"1.0.0","name":"n","mtu":10}"#), 7);
        assert_eq!(
            code(
                r#"{"cniVersion":"1.0.0","name":"n","ipam":{"subnet":"10.0.0.0/24","rangeStart":"10.1.0.1"}}"#
            ),
            7
        );
        assert_eq!(code(r#"{"cniVersion":"1.0.0","name":"n","vlan":5}"#), 2);
        assert_eq!(
            code(r#"{"cniVersion":"1.0.0","name":"n","ipam":{"type":"dhcp"}}"#),
            2
        );
        assert_eq!(
            code(r#"{"cniVersion":"1.0.0","name":"n","runtimeConfig":{"mac":"zz"}}"#),
            7
        );
    }

    #[test]
    fn runtime_config_requests() {
        let c = conf(
            r#"{"cniVersion":"1.0.0","name":"n","runtimeConfig":{"ips":["10.244.1.9/24"],"mac":"02:11:22:33:44:55","portMappings":[]},
               "args":{"cni":{"ips":["10.244.1.10"]}}}"#,
        );
        assert_eq!(
            c.requested_ips,
            vec![
                "10.244.1.9".parse::<IpAddr>().unwrap(),
                "10.244.1.10".parse().unwrap()
            ]
        );
        assert_eq!(
            parse_mac(c.mac.as_deref().unwrap()).unwrap(),
            vec![2, 0x11, 0x22, 0x33, 0x44, 0x55]
        );
        assert!(parse_mac("01:00:00:00:00:00").is_err());
    }
}
