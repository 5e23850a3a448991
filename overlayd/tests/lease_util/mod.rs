//! Helpers for the lease store tests: a store on a test etcd, requests,
//! TTL inspection, waiting for snapshots.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use crate::etcd_util::Etcd;
use etcd_client::Client;
use ipnet::Ipv4Net;
use overlayd::lease::etcd::{EtcdOptions, EtcdStore};
use overlayd::lease::{LeaseAttrs, LeaseRequest, LeaseSnapshot};
use serde_json::json;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;

pub const PREFIX: &str = "/coreos.com/network";

pub async fn store(etcd: &Etcd) -> EtcdStore {
    let opts = EtcdOptions {
        endpoints: vec![etcd.endpoint.clone()],
        prefix: PREFIX.into(),
        ..Default::default()
    };
    EtcdStore::connect(&opts).await.unwrap()
}

pub fn with_config(cfg: &str) -> Etcd {
    let etcd = Etcd::start();
    etcd.put(&format!("{PREFIX}/config"), cfg);
    etcd
}

pub fn req(ip: [u8; 4], mac: &str, previous: Option<&str>) -> LeaseRequest {
    LeaseRequest {
        attrs: LeaseAttrs {
            public_ip: ip.into(),
            public_ipv6: None,
            backend_type: "vxlan".into(),
            backend_data: json!({"VNI": 1, "VtepMAC": mac}).into(),
            backend_v6_data: None,
        },
        previous_subnet: previous.map(|p| p.parse().unwrap()),
    }
}

pub fn net(s: &str) -> Ipv4Net {
    s.parse().unwrap()
}

/// (etcd lease id, remaining TTL seconds, granted TTL) of a key.
pub async fn key_ttl(etcd: &Etcd, key: &str) -> (i64, i64, i64) {
    let mut c = Client::connect([etcd.endpoint.as_str()], None)
        .await
        .unwrap();
    let resp = c.get(key, None).await.unwrap();
    let kv = resp
        .kvs()
        .first()
        .unwrap_or_else(|| panic!("{key} missing"));
    if kv.lease() == 0 {
        return (0, -1, 0);
    }
    let t = c.lease_time_to_live(kv.lease(), None).await.unwrap();
    (kv.lease(), t.ttl(), t.granted_ttl())
}

pub const VXLAN16: &str = r#"{"Network":"10.5.0.0/16","Backend":{"Type":"vxlan"}}"#;

/// How long tests wait for what normally takes milliseconds: generous,
/// because CI runs them on 2 loaded cores next to other suites.
pub const PATIENCE: Duration = Duration::from_secs(20);

/// Waits (up to [`PATIENCE`]) until the published snapshot satisfies `pred`.
pub async fn until(
    rx: &mut watch::Receiver<Arc<LeaseSnapshot>>,
    what: &str,
    pred: impl Fn(&LeaseSnapshot) -> bool,
) {
    let ok = tokio::time::timeout(PATIENCE, rx.wait_for(|s| pred(s)))
        .await
        .is_ok_and(|r| r.is_ok());
    if !ok {
        panic!(
            "snapshot never showed {what}; last: {:?}",
            rx.borrow().keys().collect::<Vec<_>>()
        );
    }
}

pub fn has(s: &LeaseSnapshot, sn: &str) -> bool {
    s.contains_key(&net(sn))
}
