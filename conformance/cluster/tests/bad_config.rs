//! An invalid net-conf.json in etcd: overlayd names the offending field,
//! exits non-zero, and leaves no trace (no lease, no subnet.env, no VXLAN
//! device).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code: failing loudly is the point

mod common;

use common::require_root;
use felt_cluster::{Backend, Cluster, Naming, ETCD_PREFIX, VTEP};
use std::time::Duration;

/// (net-conf.json, what the error must name)
const CASES: &[(&str, &str)] = &[
    (
        r#"{"Network":"10.244.0.0/33","Backend":{"Type":"vxlan"}}"#,
        "Network",
    ),
    (
        r#"{"Network":"10.244.0.0/16","SubnetLen":31,"Backend":{"Type":"vxlan"}}"#,
        "SubnetLen",
    ),
    (
        r#"{"Network":"10.244.0.0/16","SubnetMin":"10.244.1.7","Backend":{"Type":"vxlan"}}"#,
        "SubnetMin",
    ),
    (
        r#"{"Network":"10.244.0.0/16","Backend":{"Type":"bogus"}}"#,
        "Backend.Type",
    ),
    (
        r#"{"Network":"10.244.0.0/16","Backend":{"Type":"vxlan","VNI":16777216}}"#,
        "VNI",
    ),
    (
        r#"{"Network":"10.244.0.0/16","Backend":{"Type":"vxlan"}"#,
        "net-conf.json",
    ),
];

#[test]
fn each_bad_net_conf_field_fails_clearly_and_writes_nothing() {
    require_root();
    let mut c = Cluster::start(Naming::test(), Backend::Vxlan, None).unwrap();
    let n = c.add_node().unwrap();
    let mut failures = Vec::new();
    for (conf, field) in CASES {
        c.etcd()
            .put(&format!("{ETCD_PREFIX}/config"), conf)
            .unwrap();
        let log_len = c.nodes[n].overlayd_log().len();
        c.start_overlayd(n, &[]).unwrap();
        let (code, log) = match c
            .node_mut(n)
            .unwrap()
            .wait_overlayd_exit(Duration::from_secs(10))
        {
            Ok(r) => r,
            Err(e) => {
                c.node_mut(n)
                    .unwrap()
                    .stop_overlayd(nix::sys::signal::Signal::SIGKILL)
                    .unwrap();
                failures.push(format!("{field}: overlayd did not exit: {e}"));
                continue;
            }
        };
        let log = log.get(log_len..).unwrap_or(&log);
        if code.unwrap_or(0) == 0 {
            failures.push(format!("{field}: exit code {code:?}, want non-zero"));
        }
        if !log.contains(field) {
            failures.push(format!("{field}: error does not name it:\n{log}"));
        }
        let leases = c
            .etcd()
            .get_prefix(&format!("{ETCD_PREFIX}/subnets/"))
            .unwrap();
        if !leases.is_empty() {
            failures.push(format!("{field}: leases written: {leases:?}"));
        }
        if c.nodes[n].subnet_file().exists() {
            failures.push(format!("{field}: subnet.env written"));
        }
        if c.nodes[n].kernel().unwrap().vtep.is_some() {
            failures.push(format!("{field}: {VTEP} created"));
        }
        eprintln!(
            "{field}: exit {code:?}: {}",
            log.lines()
                .rev()
                .find(|l| !l.trim().is_empty())
                .unwrap_or("")
        );
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
