//! Synthetic peers: valid flannel vxlan leases (subnet, public IP, VTEP
//! MAC), their etcd keys and values, and writing them with an in-process
//! etcd client (a process per write would measure process start-up).

use crate::error::{etcd_err, Result};
use etcd_client::{Client, PutOptions, Txn, TxnOp};
use ipnet::Ipv4Net;
use std::net::Ipv4Addr;
use std::time::Instant;

/// What one synthetic node publishes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Peer {
    pub subnet: Ipv4Net,
    pub public_ip: Ipv4Addr,
    pub mac: [u8; 6],
}

impl Peer {
    /// The neighbour (and onlink gateway) address: the subnet's network
    /// address, as flannel uses it.
    pub fn gateway(&self) -> Ipv4Addr {
        self.subnet.network()
    }

    /// flannel's lease key under `prefix`.
    pub fn key(&self, prefix: &str) -> String {
        felt_cluster::lease_key(prefix, self.subnet)
    }

    /// flannel's lease JSON for a vxlan node with VNI 1.
    pub fn lease_json(&self) -> String {
        format!(
            r#"{{"PublicIP":"{}","PublicIPv6":null,"BackendType":"vxlan","BackendData":{{"VNI":1,"VtepMAC":"{}"}}}}"#,
            self.public_ip,
            fmt_mac(&self.mac)
        )
    }
}

pub fn fmt_mac(m: &[u8; 6]) -> String {
    format!(
        "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
        m[0], m[1], m[2], m[3], m[4], m[5]
    )
}

/// A locally administered unicast MAC unique to `index` (and `tag`, so
/// two sets never share a MAC).
pub fn mac_for(tag: u8, index: u32) -> [u8; 6] {
    let b = index.to_be_bytes();
    [0x0e, tag, b[0], b[1], b[2], b[3]]
}

/// `n` peers on the /`len` subnets of `network` in order, leaving out the
/// network's first subnet and every subnet in `skip` (the nodes' own);
/// peer `i` gets `ip(i)` and a MAC tagged `tag`. Fewer than `n` when the
/// network runs out.
pub fn synthesize(
    network: Ipv4Net,
    len: u8,
    skip: &[Ipv4Net],
    n: usize,
    tag: u8,
    ip: impl Fn(u32) -> Ipv4Addr,
) -> Vec<Peer> {
    let Ok(subnets) = network.subnets(len) else {
        return Vec::new();
    };
    subnets
        .skip(1)
        .filter(|s| !skip.contains(s))
        .take(n)
        .zip(0u32..)
        .map(|(subnet, i)| Peer {
            subnet,
            public_ip: ip(i),
            mac: mac_for(tag, i),
        })
        .collect()
}

/// The `i`-th address after `base`.
pub fn nth_ip(base: Ipv4Addr, i: u32) -> Ipv4Addr {
    Ipv4Addr::from(u32::from(base).wrapping_add(i))
}

/// A peer from a watched lease key and value (`None` for anything that
/// is not a vxlan lease with a VtepMAC).
pub fn parse_lease(key: &[u8], value: &[u8]) -> Option<Peer> {
    let key = std::str::from_utf8(key).ok()?;
    let (addr, len) = key.rsplit('/').next()?.split_once('-')?;
    let subnet = Ipv4Net::new(addr.parse().ok()?, len.parse().ok()?).ok()?;
    let v: serde_json::Value = serde_json::from_slice(value).ok()?;
    let public_ip = v["PublicIP"].as_str()?.parse().ok()?;
    let mac = parse_mac(v["BackendData"]["VtepMAC"].as_str()?)?;
    Some(Peer {
        subnet,
        public_ip,
        mac,
    })
}

fn parse_mac(s: &str) -> Option<[u8; 6]> {
    let bytes: Vec<u8> = s
        .split(':')
        .map(|b| u8::from_str_radix(b, 16).ok())
        .collect::<Option<_>>()?;
    bytes.try_into().ok()
}

/// An etcd client connected to `endpoint`: call inside the namespace
/// that reaches etcd (see `ns::block_on_in`).
pub async fn connect(endpoint: &str) -> Result<Client> {
    Client::connect([endpoint], None)
        .await
        .map_err(etcd_err(format!("connect to {endpoint}")))
}

/// A fresh etcd lease of `ttl_secs` that all synthetic keys are bound to,
/// as flannel binds every subnet key to one.
pub async fn grant(client: &mut Client, ttl_secs: i64) -> Result<i64> {
    let resp = client
        .lease_grant(ttl_secs, None)
        .await
        .map_err(etcd_err("lease grant"))?;
    Ok(resp.id())
}

/// Puts one lease; returns when etcd acknowledged it.
pub async fn put(client: &mut Client, prefix: &str, peer: &Peer, lease: i64) -> Result<Instant> {
    let opts = PutOptions::new().with_lease(lease);
    client
        .put(peer.key(prefix), peer.lease_json(), Some(opts))
        .await
        .map_err(etcd_err(format!("put {}", peer.key(prefix))))?;
    Ok(Instant::now())
}

/// Puts `peers` in one transaction (one revision, one watch response);
/// returns when etcd acknowledged it.
pub async fn put_txn(
    client: &mut Client,
    prefix: &str,
    peers: &[Peer],
    lease: i64,
) -> Result<Instant> {
    let ops: Vec<TxnOp> = peers
        .iter()
        .map(|p| {
            let opts = PutOptions::new().with_lease(lease);
            TxnOp::put(p.key(prefix), p.lease_json(), Some(opts))
        })
        .collect();
    client
        .txn(Txn::new().and_then(ops))
        .await
        .map_err(etcd_err(format!("txn of {} puts", peers.len())))?;
    Ok(Instant::now())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn synthetic_leases_are_flannel_leases() {
        let net: Ipv4Net = "10.0.0.0/8".parse().unwrap();
        let own: Ipv4Net = "10.0.2.0/24".parse().unwrap();
        let base = Ipv4Addr::new(172, 16, 0, 0);
        let peers = synthesize(net, 24, &[own], 3, 0xfe, |i| nth_ip(base, i + 1));
        let subnets: Vec<String> = peers.iter().map(|p| p.subnet.to_string()).collect();
        assert_eq!(subnets, ["10.0.1.0/24", "10.0.3.0/24", "10.0.4.0/24"]);
        assert_eq!(peers[1].public_ip, Ipv4Addr::new(172, 16, 0, 2));
        assert_eq!(peers[1].gateway(), Ipv4Addr::new(10, 0, 3, 0));
        assert_eq!(
            peers[1].key("/coreos.com/network"),
            "/coreos.com/network/subnets/10.0.3.0-24"
        );
        let v: serde_json::Value = serde_json::from_str(&peers[1].lease_json()).unwrap();
        assert_eq!(v["PublicIP"], "172.16.0.2");
        assert_eq!(v["BackendType"], "vxlan");
        assert_eq!(v["BackendData"]["VNI"], 1);
        assert_eq!(v["BackendData"]["VtepMAC"], "0e:fe:00:00:00:01");
        assert!(v["PublicIPv6"].is_null());
        let p = &peers[1];
        let back = parse_lease(p.key("/x").as_bytes(), p.lease_json().as_bytes());
        assert_eq!(back.as_ref(), Some(p));
        assert_eq!(parse_lease(b"/x/config", b"{}"), None);
        assert_eq!(
            parse_lease(p.key("/x").as_bytes(), b"{\"PublicIP\":\"1.2.3.4\"}"),
            None
        );
        let small: Ipv4Net = "10.0.0.0/22".parse().unwrap();
        assert_eq!(synthesize(small, 24, &[], 10, 1, |_| base).len(), 3);
    }
}
