//! flannel's etcd codec: subnet keys (`10.5.52.0-24`, dual stack
//! `10.5.52.0-24&fc00::-64`) and the lease JSON
//! (`{"PublicIP":..,"PublicIPv6":null,"BackendType":..,"BackendData":..}`).
//!
//! Field rules follow flannel's `LeaseAttrs`: PublicIP and PublicIPv6 are
//! always written (PublicIPv6 as `null` when unset); BackendType,
//! BackendData and BackendV6Data are left out when empty. Reading matches
//! field names case-insensitively, as Go does.

use super::{BackendData, LeaseAttrs};
use ipnet::{Ipv4Net, Ipv6Net};
use serde_json::{Map, Value};
use std::net::{Ipv4Addr, Ipv6Addr};

/// The key suffix under `<prefix>/subnets/`.
pub fn subnet_key(subnet: Ipv4Net, ipv6: Option<Ipv6Net>) -> String {
    let v4 = format!("{}-{}", subnet.network(), subnet.prefix_len());
    match ipv6 {
        None => v4,
        Some(n) => format!("{v4}&{}-{}", n.network(), n.prefix_len()),
    }
}

/// Parses the last path component of a subnet key; `None` when it is not
/// one (flannel skips such keys too).
pub fn parse_subnet_key(key: &str) -> Option<(Ipv4Net, Option<Ipv6Net>)> {
    let last = key.rsplit('/').next()?;
    let (v4, v6) = match last.split_once('&') {
        Some((a, b)) => (a, Some(b)),
        None => (last, None),
    };
    let v4 = parse_net::<Ipv4Addr>(v4, 32).and_then(|(a, l)| Ipv4Net::new(a, l).ok())?;
    let v6 = match v6 {
        None => None,
        Some(s) => Some(parse_net::<Ipv6Addr>(s, 128).and_then(|(a, l)| Ipv6Net::new(a, l).ok())?),
    };
    Some((v4, v6))
}

fn parse_net<A: std::str::FromStr>(s: &str, max: u8) -> Option<(A, u8)> {
    let (addr, len) = s.rsplit_once('-')?;
    let len: u8 = len.parse().ok().filter(|l| *l <= max)?;
    Some((addr.parse().ok()?, len))
}

/// The lease value, byte-compatible with flannel's `json.Marshal`.
pub fn encode_attrs(attrs: &LeaseAttrs) -> String {
    let mut out = format!("{{\"PublicIP\":\"{}\"", attrs.public_ip);
    match attrs.public_ipv6 {
        Some(ip) => out.push_str(&format!(",\"PublicIPv6\":\"{ip}\"")),
        None => out.push_str(",\"PublicIPv6\":null"),
    }
    if !attrs.backend_type.is_empty() {
        out.push_str(",\"BackendType\":");
        out.push_str(&Value::String(attrs.backend_type.clone()).to_string());
    }
    if !attrs.backend_data.is_null() {
        out.push_str(",\"BackendData\":");
        out.push_str(attrs.backend_data.as_json());
    }
    if let Some(v6) = attrs.backend_v6_data.as_ref().filter(|v| !v.is_null()) {
        out.push_str(",\"BackendV6Data\":");
        out.push_str(&v6.to_string());
    }
    out.push('}');
    out
}

/// Reads a lease value. Missing fields take Go's zero values (a missing
/// PublicIP reads as 0.0.0.0), so a lease written by any flannel version
/// still marks its subnet as taken.
pub fn decode_attrs(bytes: &[u8]) -> Result<LeaseAttrs, String> {
    let value: Value = serde_json::from_slice(bytes).map_err(|e| format!("not JSON: {e}"))?;
    let Value::Object(obj) = value else {
        return Err("not a JSON object".into());
    };
    let public_ip = match field(&obj, "PublicIP") {
        None => Ipv4Addr::UNSPECIFIED,
        Some(v) => parse_str(v, "PublicIP")?,
    };
    let public_ipv6 = match field(&obj, "PublicIPv6") {
        None => None,
        Some(v) => Some(parse_str(v, "PublicIPv6")?),
    };
    let backend_type = match field(&obj, "BackendType") {
        None => String::new(),
        Some(Value::String(s)) => s.clone(),
        Some(v) => return Err(format!("BackendType is not a string: {v}")),
    };
    Ok(LeaseAttrs {
        public_ip,
        public_ipv6,
        backend_type,
        backend_data: field(&obj, "BackendData").map_or(BackendData::NULL, BackendData::from),
        backend_v6_data: field(&obj, "BackendV6Data").cloned(),
    })
}

/// A field by Go's rule: exact name first, else any case; null = absent.
fn field<'a>(obj: &'a Map<String, Value>, name: &str) -> Option<&'a Value> {
    obj.get(name)
        .or_else(|| {
            obj.iter()
                .find(|(k, _)| k.eq_ignore_ascii_case(name))
                .map(|(_, v)| v)
        })
        .filter(|v| !v.is_null())
}

fn parse_str<T: std::str::FromStr>(v: &Value, name: &str) -> Result<T, String> {
    v.as_str()
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| format!("{name} is not an address: {v}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const FLANNEL_DOC: &str = r#"{"PublicIP":"192.168.64.3","PublicIPv6":null,"BackendType":"vxlan","BackendData":{"VNI":1,"VtepMAC":"c6:d2:32:6f:8f:44"}}"#;

    #[test]
    fn flannel_documented_lease_round_trips_byte_for_byte() {
        let attrs = decode_attrs(FLANNEL_DOC.as_bytes()).unwrap();
        assert_eq!(attrs.public_ip, Ipv4Addr::new(192, 168, 64, 3));
        assert_eq!(attrs.public_ipv6, None);
        assert_eq!(attrs.backend_type, "vxlan");
        assert_eq!(
            attrs.backend_data,
            json!({"VNI": 1, "VtepMAC": "c6:d2:32:6f:8f:44"}).into()
        );
        assert_eq!(attrs.backend_v6_data, None);
        assert_eq!(encode_attrs(&attrs), FLANNEL_DOC);
    }

    #[test]
    fn empty_fields_are_omitted_like_go_omitempty() {
        let attrs = LeaseAttrs {
            public_ip: Ipv4Addr::new(10, 0, 0, 1),
            public_ipv6: None,
            backend_type: String::new(),
            backend_data: BackendData::NULL,
            backend_v6_data: None,
        };
        assert_eq!(
            encode_attrs(&attrs),
            r#"{"PublicIP":"10.0.0.1","PublicIPv6":null}"#
        );
        assert_eq!(
            decode_attrs(encode_attrs(&attrs).as_bytes()).unwrap(),
            attrs
        );
    }

    #[test]
    fn dual_stack_lease_round_trips() {
        let text = r#"{"PublicIP":"10.0.0.1","PublicIPv6":"fd00::1","BackendType":"vxlan","BackendData":{"VNI":1,"VtepMAC":"aa:bb:cc:dd:ee:01"},"BackendV6Data":{"VNI":1,"VtepMAC":"aa:bb:cc:dd:ee:02"}}"#;
        let attrs = decode_attrs(text.as_bytes()).unwrap();
        assert_eq!(attrs.public_ipv6, Some("fd00::1".parse().unwrap()));
        assert_eq!(
            attrs.backend_v6_data,
            Some(json!({"VNI":1,"VtepMAC":"aa:bb:cc:dd:ee:02"}))
        );
        assert_eq!(encode_attrs(&attrs), text);
    }

    #[test]
    fn decoding_is_case_insensitive_and_rejects_garbage() {
        let attrs =
            decode_attrs(br#"{"publicip":"10.0.0.2","backendtype":"host-gw","Extra":1}"#).unwrap();
        assert_eq!(attrs.public_ip, Ipv4Addr::new(10, 0, 0, 2));
        assert_eq!(attrs.backend_type, "host-gw");
        assert_eq!(attrs.backend_data, BackendData::NULL);
        assert!(decode_attrs(b"nope").is_err());
        assert!(decode_attrs(b"[1]").is_err());
        assert!(decode_attrs(br#"{"PublicIP":"300.1.1.1"}"#).is_err());
        assert!(decode_attrs(br#"{"PublicIP":"10.0.0.1","BackendType":5}"#).is_err());
    }

    #[test]
    fn subnet_keys_in_flannel_format() {
        let sn: Ipv4Net = "10.5.52.0/24".parse().unwrap();
        let sn6: Ipv6Net = "fc00:0:0:1::/64".parse().unwrap();
        assert_eq!(subnet_key(sn, None), "10.5.52.0-24");
        assert_eq!(subnet_key(sn, Some(sn6)), "10.5.52.0-24&fc00:0:0:1::-64");
        assert_eq!(
            parse_subnet_key("/coreos.com/network/subnets/10.5.52.0-24"),
            Some((sn, None))
        );
        assert_eq!(
            parse_subnet_key("10.5.52.0-24&fc00:0:0:1::-64"),
            Some((sn, Some(sn6)))
        );
        assert_eq!(
            parse_subnet_key("/coreos.com/network/subnets/10.5.52.0-24&fc00::-64")
                .unwrap()
                .1,
            Some("fc00::/64".parse().unwrap())
        );
        for bad in [
            "config",
            "10.5.52.0",
            "10.5.52.0-33",
            "10.5.52-24",
            "10.5.52.0-24&zz::-64",
            "10.5.52.0-24&fc00::-129",
            "x/10.5.52.0-",
        ] {
            assert_eq!(parse_subnet_key(bad), None, "{bad}");
        }
    }
}
