//! flannel's masquerade semantics on real packets, in both rule modes: a
//! pod reaches a host outside the cluster network with its node's address
//! as source; pod-to-pod traffic across nodes keeps pod addresses; a packet
//! kube-proxy marked 0x4000 is left to kube-proxy (not masqueraded by
//! felt). Rules deleted by hand are back within 5 s and counted. (A node
//! without --ip-masq is masqueraded by the CNI plugin's own ipMasq, as
//! flannel delegates it; node2 here only hosts the peer pod.)

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code: failing loudly is the point

mod common;

use felt_cluster::tcp::{tcp_roundtrip, EchoServer};
use felt_cluster::udp::{send, UdpSink};
use felt_cluster::{underlay_ip, Backend, Cluster, Naming};
use std::net::IpAddr;
use std::time::{Duration, Instant, SystemTime};

/// node1 with --ip-masq, node2 without; a pod on each; an outside host.
fn cluster(nftables: bool) -> (Cluster, usize) {
    common::require_root();
    let conf = format!(
        r#"{{"Network":"10.244.0.0/16","SubnetLen":24,"EnableNFTables":{nftables},"Backend":{{"Type":"vxlan"}}}}"#
    );
    let mut c = Cluster::start(Naming::test(), Backend::Vxlan, Some(&conf)).unwrap();
    c.add_node().unwrap();
    c.add_node().unwrap();
    c.start_overlayd(0, &["--ip-masq"]).unwrap();
    c.start_overlayd(1, &[]).unwrap();
    for i in 0..2 {
        c.node_mut(i)
            .unwrap()
            .wait_subnet_env(SystemTime::UNIX_EPOCH, common::CONVERGE)
            .unwrap();
        c.add_pod(i).unwrap();
    }
    c.wait_mesh(&[0, 1], common::CONVERGE).unwrap();
    for i in 0..2 {
        common::wait_ready(&c, i);
    }
    let outside = c.add_host("out", 200).unwrap();
    (c, outside)
}

fn source_ip(sink: &UdpSink, c: &Cluster, pod: usize, tag: &str) -> IpAddr {
    send(&c.pods[pod].ns, sink.addr, tag.as_bytes()).unwrap();
    sink.source_of(tag.as_bytes()).unwrap().ip()
}

fn masquerade(nftables: bool) {
    let (c, outside) = cluster(nftables);
    let out_ns = c.host(outside).unwrap();
    let out_ip = underlay_ip(200);
    let sink = UdpSink::start(out_ns, out_ip, 0).unwrap();
    // Masqueraded to node1's address, and replies find their way back.
    assert_eq!(source_ip(&sink, &c, 0, "masq"), IpAddr::V4(c.nodes[0].ip));
    let echo = EchoServer::start(out_ns, out_ip).unwrap();
    assert_eq!(
        tcp_roundtrip(&c.pods[0].ns, echo.addr, b"out and back").unwrap(),
        b"out and back"
    );
    // Pod to pod across nodes: pod addresses kept.
    let pod_sink = UdpSink::start(&c.pods[1].ns, c.pods[1].ip, 0).unwrap();
    assert_eq!(source_ip(&pod_sink, &c, 0, "p2p"), IpAddr::V4(c.pods[0].ip));
    // kube-proxy's mark (set here by hand for one port): left alone.
    let marked = UdpSink::start(out_ns, out_ip, 7777).unwrap();
    let ns = &c.nodes[0].ns;
    ns.exec(&["nft", "add", "table", "ip", "kp"]).unwrap();
    ns.exec(&[
        "nft",
        "add",
        "chain",
        "ip",
        "kp",
        "pre",
        "{ type filter hook prerouting priority mangle; }",
    ])
    .unwrap();
    ns.exec(&[
        "nft", "add", "rule", "ip", "kp", "pre", "udp", "dport", "7777", "meta", "mark", "set",
        "0x4000",
    ])
    .unwrap();
    assert_eq!(
        source_ip(&marked, &c, 0, "marked"),
        IpAddr::V4(c.pods[0].ip)
    );
    assert_eq!(
        source_ip(&sink, &c, 0, "unmarked"),
        IpAddr::V4(c.nodes[0].ip)
    );
}

#[test]
fn iptables_masquerade_semantics() {
    masquerade(false);
}

#[test]
fn nftables_masquerade_semantics() {
    masquerade(true);
}

/// Deletes one of node1's rules with `del`, expects it back within 5 s
/// (masquerading again) and the repair counted.
fn repaired(c: &Cluster, sink: &UdpSink, del: &[&str]) {
    let before = c.nodes[0]
        .metric("felt_firewall_rule_repairs_total")
        .unwrap();
    c.nodes[0].ns.exec(del).unwrap();
    let start = Instant::now();
    let mut n = 0;
    let back = felt_cluster::wait::wait_for("the rule back", Duration::from_secs(5), || {
        n += 1;
        Ok(c.nodes[0].metric("felt_firewall_rule_repairs_total")? > before)
    });
    assert!(back.is_ok(), "{del:?}: not repaired within 5 s");
    eprintln!("{del:?}: repaired after {:?}", start.elapsed());
    let tag = format!("after {}", del.join(" "));
    assert_eq!(
        source_ip(sink, c, 0, &tag),
        IpAddr::V4(c.nodes[0].ip),
        "{del:?}"
    );
}

#[test]
fn deleted_rules_come_back_within_five_seconds_in_both_modes() {
    for nftables in [false, true] {
        let (c, outside) = cluster(nftables);
        let sink = UdpSink::start(c.host(outside).unwrap(), underlay_ip(200), 0).unwrap();
        let net = "10.244.0.0/16";
        if nftables {
            let h = handle(&c, "postrouting", "masquerade fully-random");
            repaired(
                &c,
                &sink,
                &[
                    "nft",
                    "delete",
                    "rule",
                    "ip",
                    "felt",
                    "postrouting",
                    "handle",
                    &h,
                ],
            );
            let h = handle(&c, "forward", "ip saddr 10.244.0.0/16 accept");
            repaired(
                &c,
                &sink,
                &[
                    "nft", "delete", "rule", "ip", "felt", "forward", "handle", &h,
                ],
            );
            repaired(&c, &sink, &["nft", "delete", "table", "ip", "felt"]);
        } else {
            let masq = [
                "-s",
                net,
                "!",
                "-d",
                "224.0.0.0/4",
                "-m",
                "comment",
                "--comment",
                "flanneld masq",
                "-j",
                "MASQUERADE",
                "--random-fully",
            ];
            let mut del = vec!["iptables", "-t", "nat", "-D", "FLANNEL-POSTRTG"];
            del.extend(masq);
            repaired(&c, &sink, &del);
            let fwd = [
                "-s",
                net,
                "-m",
                "comment",
                "--comment",
                "flanneld forward",
                "-j",
                "ACCEPT",
            ];
            let mut del = vec!["iptables", "-t", "filter", "-D", "FLANNEL-FWD"];
            del.extend(fwd);
            repaired(&c, &sink, &del);
            let jump = [
                "-m",
                "comment",
                "--comment",
                "flanneld masq",
                "-j",
                "FLANNEL-POSTRTG",
            ];
            let mut del = vec!["iptables", "-t", "nat", "-D", "POSTROUTING"];
            del.extend(jump);
            repaired(&c, &sink, &del);
        }
    }
}

/// The handle of the rule in felt's `chain` on node1 containing `needle`.
fn handle(c: &Cluster, chain: &str, needle: &str) -> String {
    let text = c.nodes[0]
        .ns
        .exec(&["nft", "-a", "list", "chain", "ip", "felt", chain])
        .unwrap();
    let line = text
        .lines()
        .find(|l| l.contains(needle))
        .unwrap_or_else(|| panic!("{needle} in {text}"));
    line.rsplit("# handle ").next().unwrap().trim().to_string()
}
