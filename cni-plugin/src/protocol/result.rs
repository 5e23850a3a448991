//! Results in the requested version's format. A prevResult from an earlier
//! plugin in the chain is kept as JSON so fields felt does not model pass
//! through untouched; felt appends its own entries.

use crate::link::addr::Route;
use crate::protocol::version::at_least;
use ipnet::IpNet;
use serde_json::{json, Map, Value};
use std::net::IpAddr;

/// One interface entry of the result.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Iface {
    pub name: String,
    pub mac: String,
    pub sandbox: Option<String>,
}

/// What one ADD did: [bridge, host veth, container veth], addresses on the
/// container veth, routes, dns.
#[derive(Debug, Clone)]
pub struct Added {
    pub interfaces: [Iface; 3],
    pub ips: Vec<(IpNet, IpAddr)>,
    pub routes: Vec<Route>,
    pub dns: Option<Value>,
}

pub fn format_mac(mac: &[u8]) -> String {
    mac.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

fn take_array(obj: &mut Map<String, Value>, key: &str) -> Vec<Value> {
    match obj.remove(key) {
        Some(Value::Array(a)) => a,
        _ => Vec::new(),
    }
}

/// Builds the ADD result for `version` on top of `prev` (chaining).
pub fn build(version: &str, prev: Option<&Value>, added: &Added) -> Value {
    let mut obj = match prev {
        Some(Value::Object(o)) => o.clone(),
        _ => Map::new(),
    };
    let mut ifaces = take_array(&mut obj, "interfaces");
    let base = ifaces.len();
    for iface in &added.interfaces {
        let mut v = json!({"name": iface.name, "mac": iface.mac});
        if let Some(sb) = &iface.sandbox {
            v["sandbox"] = json!(sb);
        }
        ifaces.push(v);
    }
    obj.insert("interfaces".into(), Value::Array(ifaces));
    let mut ips = take_array(&mut obj, "ips");
    for (addr, gw) in &added.ips {
        ips.push(
            json!({"address": addr.to_string(), "gateway": gw.to_string(), "interface": base + 2}),
        );
    }
    obj.insert("ips".into(), Value::Array(ips));
    let mut routes = take_array(&mut obj, "routes");
    for r in &added.routes {
        let mut v = json!({"dst": r.dst.to_string()});
        if let Some(gw) = r.gw {
            v["gw"] = json!(gw.to_string());
        }
        routes.push(v);
    }
    obj.insert("routes".into(), Value::Array(routes));
    if let Some(dns) = &added.dns {
        obj.insert("dns".into(), dns.clone());
    } else {
        obj.entry("dns".to_string()).or_insert_with(|| json!({}));
    }
    obj.insert("cniVersion".into(), json!(version));
    let mut out = Value::Object(obj);
    convert_ips(&mut out, version);
    out
}

/// 0.3.x/0.4.0 carry `"version": "4"|"6"` in every ips[] entry; 1.x has none.
pub fn convert_ips(result: &mut Value, version: &str) {
    let Some(ips) = result.get_mut("ips").and_then(Value::as_array_mut) else {
        return;
    };
    for ip in ips {
        let Some(o) = ip.as_object_mut() else {
            continue;
        };
        if at_least(version, "1.0.0") {
            o.remove("version");
        } else {
            let v6 = o
                .get("address")
                .and_then(Value::as_str)
                .and_then(|a| a.parse::<IpNet>().ok())
                .is_some_and(|n| n.addr().is_ipv6());
            o.insert("version".into(), json!(if v6 { "6" } else { "4" }));
        }
    }
}

/// The parts of a prevResult CHECK compares with the kernel.
#[derive(Debug, Default, PartialEq)]
pub struct Parsed {
    pub interfaces: Vec<Iface>,
    pub ips: Vec<(IpNet, Option<usize>)>,
    pub routes: Vec<Route>,
}

pub fn parse(prev: &Value) -> Result<Parsed, String> {
    let mut out = Parsed::default();
    for i in prev
        .get("interfaces")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        out.interfaces.push(Iface {
            name: i
                .get("name")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_string(),
            mac: i
                .get("mac")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_ascii_lowercase(),
            sandbox: i
                .get("sandbox")
                .and_then(Value::as_str)
                .filter(|s| !s.is_empty())
                .map(str::to_string),
        });
    }
    for ip in prev
        .get("ips")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        let addr = ip
            .get("address")
            .and_then(Value::as_str)
            .unwrap_or_default();
        let net = addr
            .parse::<IpNet>()
            .map_err(|_| format!("prevResult: bad address {addr:?}"))?;
        let idx = ip
            .get("interface")
            .and_then(Value::as_u64)
            .map(|i| i as usize);
        out.ips.push((net, idx));
    }
    for r in prev
        .get("routes")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        let dst = r.get("dst").and_then(Value::as_str).unwrap_or_default();
        let dst = dst
            .parse::<IpNet>()
            .map_err(|_| format!("prevResult: bad route dst {dst:?}"))?;
        let gw = r
            .get("gw")
            .and_then(Value::as_str)
            .and_then(|g| g.parse().ok());
        out.routes.push(Route {
            dst: dst.trunc(),
            gw,
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn added() -> Added {
        let iface = |n: &str, sb: Option<&str>| Iface {
            name: n.into(),
            mac: "02:00:00:00:00:01".into(),
            sandbox: sb.map(Into::into),
        };
        Added {
            interfaces: [
                iface("cni0", None),
                iface("veth1234abcd", None),
                iface("eth0", Some("/run/netns/p")),
            ],
            ips: vec![(
                "10.244.1.2/24".parse().unwrap(),
                "10.244.1.1".parse().unwrap(),
            )],
            routes: vec![Route {
                dst: "0.0.0.0/0".parse().unwrap(),
                gw: Some("10.244.1.1".parse().unwrap()),
            }],
            dns: None,
        }
    }

    #[test]
    fn v1_result_shape() {
        let r = build("1.0.0", None, &added());
        assert_eq!(r["cniVersion"], "1.0.0");
        assert_eq!(r["interfaces"].as_array().unwrap().len(), 3);
        assert_eq!(r["interfaces"][2]["sandbox"], "/run/netns/p");
        assert!(r["interfaces"][0].get("sandbox").is_none());
        assert_eq!(
            r["ips"][0],
            json!({"address":"10.244.1.2/24","gateway":"10.244.1.1","interface":2})
        );
        assert_eq!(r["routes"][0], json!({"dst":"0.0.0.0/0","gw":"10.244.1.1"}));
        assert_eq!(r["dns"], json!({}));
    }

    #[test]
    fn old_versions_carry_ip_version() {
        for v in ["0.3.0", "0.3.1", "0.4.0"] {
            let r = build(v, None, &added());
            assert_eq!(r["cniVersion"], v);
            assert_eq!(r["ips"][0]["version"], "4", "{v}");
        }
    }

    #[test]
    fn chaining_appends_and_converts_prev() {
        let prev = json!({"cniVersion":"0.4.0","interfaces":[{"name":"x","mac":"02:00:00:00:00:09"}],
            "ips":[{"version":"4","address":"192.168.0.5/24","interface":0}],"dns":{"nameservers":["1.1.1.1"]},
            "custom":"kept"});
        let r = build("1.0.0", Some(&prev), &added());
        assert_eq!(r["interfaces"].as_array().unwrap().len(), 4);
        assert_eq!(r["ips"][1]["interface"], 3);
        assert!(r["ips"][0].get("version").is_none());
        assert_eq!(r["dns"]["nameservers"][0], "1.1.1.1");
        assert_eq!(r["custom"], "kept");
        let parsed = parse(&r).unwrap();
        assert_eq!(
            parsed.interfaces[3].sandbox.as_deref(),
            Some("/run/netns/p")
        );
        assert_eq!(parsed.ips[1], ("10.244.1.2/24".parse().unwrap(), Some(3)));
        assert_eq!(parsed.routes.len(), 1);
    }
}
