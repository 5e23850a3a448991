//! Many pods at once (what a runtime does when a node starts) and real
//! traffic between pods made by the plugin.

// Test helpers outside #[test] fns fail the test by panicking, like asserts.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::collections::BTreeSet;
use support::*;

const PODS: usize = 64;

#[test]
fn concurrent_adds_and_dels_on_a_fresh_node() {
    let node = Node::new("conc");
    let pods: Vec<Pod> = (0..PODS).map(|_| Pod::new("conc")).collect();
    let conf = node.conf("1.0.0");

    // Every ADD starts at once against a node without a bridge: they race
    // on creating cni0 and on the IPAM directory.
    let outs: Vec<Outcome> = std::thread::scope(|s| {
        let handles: Vec<_> = pods
            .iter()
            .map(|pod| s.spawn(|| node.add(pod, &conf)))
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let ips: BTreeSet<String> = outs.iter().map(|o| result_ip(&o.ok()).0).collect();
    assert_eq!(ips.len(), PODS, "IPs not distinct: {ips:?}");
    assert_eq!(node.bridges(), vec!["cni0".to_string()]);
    assert_eq!(node.addrs("cni0"), vec!["10.244.1.1/24".to_string()]);
    assert_eq!(node.veths().len(), PODS);
    let files: BTreeSet<String> = node.ip_files().into_iter().collect();
    assert_eq!(files, ips, "IP files differ from the IPs handed out");
    for (pod, out) in pods.iter().zip(&outs) {
        assert_eq!(
            pod.addrs("eth0"),
            vec![result_ip(&out.json.clone().unwrap()).1]
        );
    }

    std::thread::scope(|s| {
        for pod in &pods {
            let (node, conf) = (&node, &conf);
            s.spawn(move || node.del(pod, conf).ok());
        }
    });
    assert!(
        node.ip_files().is_empty(),
        "IPs left: {:?}",
        node.ip_files()
    );
    assert!(node.veths().is_empty(), "veths left: {:?}", node.veths());
}

#[test]
fn two_pods_reach_each_other_and_the_gateway() {
    let node = Node::new("ping");
    let a = Pod::new("ping");
    let b = Pod::new("ping");
    let ipa = result_ip(&node.add_ok(&a, "1.0.0")).0;
    let ipb = result_ip(&node.add_ok(&b, "1.0.0")).0;
    assert!(a.ping("10.244.1.1"), "a cannot reach the gateway");
    assert!(b.ping("10.244.1.1"), "b cannot reach the gateway");
    assert!(a.ping(&ipb), "a cannot reach b ({ipb})");
    assert!(b.ping(&ipa), "b cannot reach a ({ipa})");
    node.del(&b, &node.conf("1.0.0")).ok();
    assert!(!a.ping(&ipb), "b still answers after DEL");
}

#[test]
fn concurrent_adds_repair_an_old_bridge_address_once() {
    let node = Node::new("concrep");
    node.ns
        .exec_ok(&["ip", "link", "add", "cni0", "type", "bridge"]);
    node.ns
        .exec_ok(&["ip", "addr", "add", "10.244.9.1/24", "dev", "cni0"]);
    let pods: Vec<Pod> = (0..16).map(|_| Pod::new("concrep")).collect();
    let conf = node.conf("1.0.0");
    std::thread::scope(|s| {
        for pod in &pods {
            let (node, conf) = (&node, &conf);
            s.spawn(move || node.add(pod, conf).ok());
        }
    });
    assert_eq!(node.addrs("cni0"), vec!["10.244.1.1/24".to_string()]);
    assert_eq!(node.ip_files().len(), 16);
    for pod in &pods {
        assert!(
            pod.ping("10.244.1.1"),
            "{} cannot reach the gateway",
            pod.ns.name
        );
    }
}

#[test]
fn adds_and_dels_interleaved_keep_ipam_and_links_consistent() {
    let node = Node::new("mix");
    let conf = node.conf("1.0.0");
    let old: Vec<Pod> = (0..16).map(|_| Pod::new("mix")).collect();
    let new: Vec<Pod> = (0..16).map(|_| Pod::new("mix")).collect();
    for pod in &old {
        node.add(pod, &conf).ok();
    }
    let added: Vec<Outcome> = std::thread::scope(|s| {
        for pod in &old {
            let (node, conf) = (&node, &conf);
            s.spawn(move || node.del(pod, conf).ok());
        }
        let handles: Vec<_> = new
            .iter()
            .map(|pod| s.spawn(|| node.add(pod, &conf)))
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let ips: BTreeSet<String> = added.iter().map(|o| result_ip(&o.ok()).0).collect();
    assert_eq!(ips.len(), 16, "IPs not distinct: {ips:?}");
    let files: BTreeSet<String> = node.ip_files().into_iter().collect();
    assert_eq!(files, ips, "IP files are not exactly the live pods' IPs");
    assert_eq!(node.veths().len(), 16, "{:?}", node.veths());
    for pod in &old {
        assert!(pod.link("eth0").is_none(), "{} kept eth0", pod.ns.name);
    }
}
