//! The overlayd -> CNI plugin hand-off through subnet.env: a pod created
//! before overlayd has written it gets CNI's "try again later" (code 11,
//! flannel #2232), and succeeds once overlayd is up.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code: failing loudly is the point

mod common;

use common::{require_root, CONVERGE};
use felt_cluster::{Backend, Cluster, HarnessError, Naming};
use std::time::SystemTime;

#[test]
fn pod_before_overlayd_gets_try_again_later_then_works() {
    require_root();
    let mut c = Cluster::start(Naming::test(), Backend::Vxlan, None).unwrap();
    let n = c.add_node().unwrap();
    let early = c.add_pod(n);
    match early {
        Err(HarnessError::Command { output, .. }) => {
            let compact: String = output.split_whitespace().collect();
            assert!(
                compact.contains("\"code\":11"),
                "want CNI error 11, got {output}"
            );
        }
        other => panic!(
            "ADD without subnet.env: want an error, got {:?}",
            other.map(|_| ())
        ),
    }
    assert!(c.pods.is_empty());
    c.start_overlayd(n, &[]).unwrap();
    c.node_mut(n)
        .unwrap()
        .wait_subnet_env(SystemTime::UNIX_EPOCH, CONVERGE)
        .unwrap();
    let p = c.add_pod(n).unwrap();
    let subnet = c.nodes[n].subnet().unwrap();
    assert!(
        subnet.contains(&c.pods[p].ip),
        "{} not in {subnet}",
        c.pods[p].ip
    );
    // The node's bridge answers as the pod's gateway (<subnet>.1).
    let gw = subnet.hosts().next().unwrap();
    assert!(c.pods[p].ping(gw, 2).unwrap().ok, "pod -> gateway {gw}");
}
