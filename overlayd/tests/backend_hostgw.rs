//! The host-gw backend on a real kernel: routes via peers' public IPs,
//! problems for peers off the segment, failing operations retried.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod backend_util;

use backend_util::*;
use overlayd::backend::hostgw::HostGwBackend;
use overlayd::backend::Backend;
use std::sync::Arc;

#[test]
fn host_gw_routes_connected_peers_and_reports_the_rest() {
    let node = single_node("rchgw", "192.168.50.1/24");
    let ext = node.ext.clone();
    let o = own(&node, "host-gw");
    let near = lease(
        "10.244.2.0/24",
        "192.168.50.2",
        "host-gw",
        serde_json::Value::Null,
    );
    let far = lease(
        "10.244.3.0/24",
        "10.99.0.3",
        "host-gw",
        serde_json::Value::Null,
    );
    node.ns.exec_ok(&[
        "ip",
        "route",
        "add",
        "10.244.9.0/24",
        "via",
        "192.168.50.9",
        "dev",
        "e0",
    ]);
    let snap = snapshot(&[&o, &near, &far]);
    let report = block_in(&node.ns, move || async move {
        let mut b = HostGwBackend::new();
        b.prepare(&ext).await.unwrap();
        b.configure_own(&o).await.unwrap();
        let backend: Arc<dyn Backend> = Arc::from(Box::new(b) as Box<dyn Backend>);
        let mut rec = reconciler(backend, o, NETWORK.parse().unwrap());
        rec.round(&snap, true).await
    });
    let r = route_to(&node.ns, "10.244.2.0/24").unwrap();
    assert_eq!(
        (r["gateway"].as_str(), r["dev"].as_str()),
        (Some("192.168.50.2"), Some("e0"))
    );
    assert!(route_to(&node.ns, "10.244.3.0/24").is_none());
    assert!(
        route_to(&node.ns, "10.244.9.0/24").is_none(),
        "stale host-gw route kept"
    );
    assert_eq!(report.problems.len(), 1, "{:?}", report.problems);
    assert!(
        report.problems[0].contains("10.244.3.0/24")
            && report.problems[0].contains("directly connected")
    );
}

#[test]
fn a_failing_operation_does_not_block_the_others_and_is_retried() {
    let node = single_node("rcfail", "192.168.50.1/24");
    let ext = node.ext.clone();
    let o = own(&node, "host-gw");
    // The segment's broadcast address is "connected" but the kernel
    // refuses it as a gateway (EINVAL): that peer's route fails.
    let bad = lease(
        "10.244.2.0/24",
        "192.168.50.255",
        "host-gw",
        serde_json::Value::Null,
    );
    let good = lease(
        "10.244.3.0/24",
        "192.168.50.3",
        "host-gw",
        serde_json::Value::Null,
    );
    let snap = snapshot(&[&o, &bad, &good]);
    let fixed = snapshot(&[&o, &good]);
    let reports = block_in(&node.ns, move || async move {
        let mut b = HostGwBackend::new();
        b.prepare(&ext).await.unwrap();
        let backend: Arc<dyn Backend> = Arc::from(Box::new(b) as Box<dyn Backend>);
        let mut rec = reconciler(backend, o, NETWORK.parse().unwrap());
        vec![
            rec.round(&snap, true).await,
            rec.round(&snap, true).await,
            rec.round(&fixed, true).await,
        ]
    });
    assert_eq!(
        (reports[0].applied, reports[0].failed),
        (1, 1),
        "{:?}",
        reports[0]
    );
    assert_eq!(
        (reports[1].applied, reports[1].failed),
        (0, 1),
        "retried: {:?}",
        reports[1]
    );
    assert_eq!(
        (reports[2].applied, reports[2].failed),
        (0, 0),
        "{:?}",
        reports[2]
    );
    assert!(route_to(&node.ns, "10.244.3.0/24").is_some());
    assert!(route_to(&node.ns, "10.244.2.0/24").is_none());
}
