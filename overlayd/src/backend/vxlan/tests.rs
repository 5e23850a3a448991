//! Pure tests of the vxlan backend: MAC derivation, compatibility and
//! what each peer needs. Kernel behaviour is in tests/backend_vxlan.rs.

use super::*;
use crate::lease::test_lease;

const DEV: u32 = 9;

fn ext() -> ExternalInterface {
    ExternalInterface {
        name: "eth0".into(),
        index: 2,
        iface_addr: "192.168.1.1".parse().unwrap(),
        public_ip: "192.168.1.1".parse().unwrap(),
        mtu: 1500,
    }
}

fn cfg(direct_routing: bool) -> VxlanConfig {
    VxlanConfig {
        vni: 1,
        port: 0,
        mtu: None,
        gbp: false,
        learning: false,
        direct_routing,
    }
}

fn backend(direct_routing: bool) -> VxlanBackend {
    let mut b = VxlanBackend::new(cfg(direct_routing)).unwrap();
    b.spec = Some(b.device_spec(&ext()).unwrap());
    b.ext = Some(ext());
    b.ifindex.store(DEV, Ordering::SeqCst);
    b
}

fn lease(subnet: &str, public_ip: &str, data: serde_json::Value) -> Lease {
    let mut lease = test_lease(subnet, public_ip, "vxlan");
    lease.attrs.backend_data = data.into();
    lease
}

fn peer_data() -> serde_json::Value {
    serde_json::json!({"VNI": 1, "VtepMAC": "c6:d2:32:6f:8f:44"})
}

#[test]
fn vtep_mac_is_stable_local_unicast_and_distinct() {
    let ip: Ipv4Addr = "192.168.1.1".parse().unwrap();
    let mac = vtep_mac(ip, 1);
    assert_eq!(mac, vtep_mac(ip, 1));
    assert_eq!(mac[0] & 0x02, 0x02, "locally administered");
    assert_eq!(mac[0] & 0x01, 0, "unicast");
    assert_ne!(mac, vtep_mac(ip, 2));
    assert_ne!(mac, vtep_mac("192.168.1.2".parse().unwrap(), 1));
    // Pinned: a change here changes every node's MAC on upgrade.
    assert_eq!(fmt_mac(&mac), fmt_mac(&vtep_mac(ip, 1)));
}

#[test]
fn device_spec_follows_config() {
    let b = VxlanBackend::new(cfg(false)).unwrap();
    let spec = b.device_spec(&ext()).unwrap();
    assert_eq!(spec.name, "flannel.1");
    assert_eq!(spec.mtu, 1450);
    assert_eq!(spec.params.port, 8472);
    assert_eq!(spec.params.local, ext().iface_addr);
    assert_eq!(spec.params.dev, 2);
    let mut c = cfg(false);
    c.mtu = Some(1400);
    c.port = 4789;
    c.vni = 42;
    let spec = VxlanBackend::new(c).unwrap().device_spec(&ext()).unwrap();
    assert_eq!(
        (spec.name.as_str(), spec.mtu, spec.params.port),
        ("flannel.42", 1400, 4789)
    );
}

#[test]
fn invalid_vni_is_refused() {
    for vni in [0, 1 << 24] {
        let mut c = cfg(false);
        c.vni = vni;
        assert!(
            matches!(VxlanBackend::new(c), Err(BackendError::Config(_))),
            "vni {vni}"
        );
    }
}

#[test]
fn incompatibility_table() {
    let want = backend(false).spec.unwrap().params;
    let kind = Some(InfoKind::Vxlan);
    assert_eq!(incompatible(kind.as_ref(), Some(&want), &want), None);
    // Learning is fixable in place, so it is not a reason to recreate.
    let mut learn = want.clone();
    learn.learning = true;
    assert_eq!(incompatible(kind.as_ref(), Some(&learn), &want), None);
    let variants: Vec<(&str, VxlanParams)> = vec![
        (
            "vni",
            VxlanParams {
                vni: 2,
                ..want.clone()
            },
        ),
        (
            "port",
            VxlanParams {
                port: 4789,
                ..want.clone()
            },
        ),
        (
            "local",
            VxlanParams {
                local: "10.0.0.9".parse().unwrap(),
                ..want.clone()
            },
        ),
        (
            "dev",
            VxlanParams {
                dev: 77,
                ..want.clone()
            },
        ),
        (
            "gbp",
            VxlanParams {
                gbp: true,
                ..want.clone()
            },
        ),
    ];
    for (what, have) in variants {
        let reason = incompatible(kind.as_ref(), Some(&have), &want);
        assert!(
            reason.as_deref().is_some_and(|r| r.contains(what)),
            "{what}: {reason:?}"
        );
    }
    assert!(incompatible(Some(&InfoKind::Bridge), None, &want).is_some());
}

#[test]
fn peer_gets_neighbour_fdb_and_onlink_route() {
    let b = backend(false);
    let own = lease("10.244.1.0/24", "192.168.1.1", serde_json::json!({}));
    let peer = lease("10.244.2.0/24", "192.168.1.2", peer_data());
    let d = b.desired(&own, &[&peer], &["192.168.1.0/24".parse().unwrap()]);
    let mac = parse_mac("c6:d2:32:6f:8f:44").unwrap();
    let gw: Ipv4Addr = "10.244.2.0".parse().unwrap();
    assert!(d.problems.is_empty(), "{:?}", d.problems);
    assert_eq!(
        d.neighbours.into_iter().collect::<Vec<_>>(),
        vec![NeighSpec {
            ifindex: DEV,
            ip: gw,
            mac
        }]
    );
    assert_eq!(
        d.fdb.into_iter().collect::<Vec<_>>(),
        vec![FdbSpec {
            ifindex: DEV,
            mac,
            dst: "192.168.1.2".parse().unwrap()
        }]
    );
    let route = RouteSpec {
        dst: peer.subnet,
        gateway: Some(gw),
        oif: DEV,
        onlink: true,
        metric: 0,
    };
    assert_eq!(d.routes.into_iter().collect::<Vec<_>>(), vec![route]);
}

#[test]
fn direct_routing_uses_plain_route_only_when_connected() {
    let b = backend(true);
    let own = lease("10.244.1.0/24", "192.168.1.1", serde_json::json!({}));
    let near = lease("10.244.2.0/24", "192.168.1.2", peer_data());
    let far = lease("10.244.3.0/24", "172.16.0.3", peer_data());
    let d = b.desired(&own, &[&near, &far], &["192.168.1.0/24".parse().unwrap()]);
    let direct = RouteSpec {
        dst: near.subnet,
        gateway: Some("192.168.1.2".parse().unwrap()),
        oif: 2,
        onlink: false,
        metric: 0,
    };
    assert!(d.routes.contains(&direct));
    assert_eq!(d.routes.len(), 2);
    assert_eq!(d.neighbours.len(), 1, "only the far peer needs a neighbour");
    assert_eq!(d.fdb.len(), 1);
    assert!(b.scope().ext_gateway_routes);
}

#[test]
fn bad_peers_are_reported_not_dropped_silently() {
    let b = backend(false);
    let own = lease("10.244.1.0/24", "192.168.1.1", serde_json::json!({}));
    let no_mac = lease(
        "10.244.2.0/24",
        "192.168.1.2",
        serde_json::json!({"VNI": 1}),
    );
    let same_ip = lease("10.244.3.0/24", "192.168.1.1", peer_data());
    let other_vni = lease(
        "10.244.4.0/24",
        "192.168.1.4",
        serde_json::json!({"VNI": 7, "VtepMAC": "0a:00:00:00:00:04"}),
    );
    let multicast_mac = lease(
        "10.244.5.0/24",
        "192.168.1.5",
        serde_json::json!({"VNI": 1, "VtepMAC": "01:00:5e:00:00:01"}),
    );
    let d = b.desired(&own, &[&no_mac, &same_ip, &other_vni, &multicast_mac], &[]);
    assert_eq!(d.problems.len(), 3, "{:?}", d.problems);
    assert_eq!(
        d.routes.len(),
        1,
        "the VNI mismatch is logged but still programmed"
    );
}

#[test]
fn a_vtep_mac_claimed_by_two_public_ips_is_reported() {
    let b = backend(false);
    let own = lease("10.244.1.0/24", "192.168.1.1", serde_json::json!({}));
    let first = lease("10.244.2.0/24", "192.168.1.2", peer_data());
    let clash = lease("10.244.3.0/24", "192.168.1.3", peer_data());
    // Same node re-registered with a new subnet: same MAC, same IP: fine.
    let again = lease("10.244.4.0/24", "192.168.1.2", peer_data());
    let d = b.desired(&own, &[&first, &clash, &again], &[]);
    assert_eq!(d.problems.len(), 1, "{:?}", d.problems);
    assert!(d.problems[0].contains("10.244.3.0/24"));
    assert_eq!(d.fdb.len(), 1);
    assert_eq!(d.routes.len(), 2);
}
