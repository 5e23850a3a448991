//! The udp backend through the real daemon (the full mesh is in mesh.rs):
//! peers joining and leaving while traffic flows, a restart under traffic
//! (the TUN persists), ICMP net-unreachable for a subnet nobody leases, a
//! cluster mixing vxlan and udp nodes (refused, reported), and a flood of
//! garbage datagrams at port 8285 (dropped and counted; traffic and memory
//! unaffected).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code: failing loudly is the point

mod common;

use common::{cluster, wait_ready, CONVERGE};
use felt_cluster::stream::TcpStreamRun;
use felt_cluster::{net_conf, underlay_ip, Backend, Cluster, Naming, ETCD_PREFIX};
use nix::sys::signal::Signal;
use std::net::{Ipv4Addr, SocketAddr, UdpSocket};
use std::time::{Duration, Instant, SystemTime};

/// `ping -c 1` output from pod `from` to `to`.
fn ping_text(c: &Cluster, from: usize, to: Ipv4Addr) -> String {
    let out = c.pods[from]
        .ns
        .command("ping")
        .args(["-n", "-c", "1", "-W", "1", &to.to_string()])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn a_subnet_nobody_leases_answers_net_unreachable() {
    let c = cluster(Backend::Udp, 2, 1);
    let text = ping_text(&c, 0, "10.244.250.5".parse().unwrap());
    assert!(text.contains("Destination Net Unreachable"), "{text}");
    let sample = "felt_udp_icmp_unreachable_total";
    felt_cluster::wait::wait_for("the ICMP counted", CONVERGE, || {
        Ok(c.nodes[0].metric(sample)? >= 1.0)
    })
    .unwrap();
}

#[test]
fn peers_join_and_leave_while_traffic_flows() {
    let mut c = cluster(Backend::Udp, 2, 1);
    let stream = TcpStreamRun::start(&c.pods[0].ns, &c.pods[1].ns, c.pods[1].ip).unwrap();
    let n = c.add_running_nodes(1).unwrap()[0];
    let p = c.add_pod(n).unwrap();
    let start = Instant::now();
    felt_cluster::wait::wait_for("the new node's pod reachable", CONVERGE, || {
        Ok(c.pods[0].ping(c.pods[p].ip, 1)?.ok && c.pods[p].ping(c.pods[1].ip, 1)?.ok)
    })
    .unwrap();
    eprintln!(
        "udp: new node's pod reachable {:?} after its CNI ADD",
        start.elapsed()
    );
    // It leaves: its lease goes, the others stop forwarding to it.
    let key = c.nodes[n].lease_key(ETCD_PREFIX).unwrap();
    c.node_mut(n)
        .unwrap()
        .stop_overlayd(Signal::SIGKILL)
        .unwrap();
    assert!(c.etcd().delete(&key).unwrap());
    let gone = c.pods[p].ip;
    felt_cluster::wait::wait_for("the left node unreachable", CONVERGE, || {
        Ok(ping_text(&c, 0, gone).contains("Destination Net Unreachable"))
    })
    .unwrap();
    let report = stream.finish().unwrap();
    assert!(
        report.longest_gap < Duration::from_secs(1),
        "stream stalled {:?}",
        report.longest_gap
    );
}

#[test]
fn a_restart_keeps_flannel0_and_its_route_and_traffic_resumes_within_a_second() {
    let mut c = cluster(Backend::Udp, 2, 1);
    wait_ready(&c, 0);
    let before = c.nodes[0]
        .ns
        .ip_json(&["link", "show", "flannel0"])
        .unwrap();
    let route = c.nodes[0]
        .ns
        .ip(&["route", "show", "10.244.0.0/16"])
        .unwrap();
    let stream = TcpStreamRun::start(&c.pods[0].ns, &c.pods[1].ns, c.pods[1].ip).unwrap();
    let pinger = common::start_pinger(&c, 0, 1, "udp-restart", "0.01");
    std::thread::sleep(Duration::from_millis(300));
    for signal in [Signal::SIGTERM, Signal::SIGKILL] {
        let since = SystemTime::now();
        c.node_mut(0).unwrap().stop_overlayd(signal).unwrap();
        c.start_overlayd(0, &[]).unwrap();
        c.node_mut(0)
            .unwrap()
            .wait_subnet_env(since, CONVERGE)
            .unwrap();
        wait_ready(&c, 0);
        std::thread::sleep(Duration::from_millis(500));
    }
    let (sent, got) = common::stop_pinger(pinger);
    let report = stream.finish().unwrap();
    let after = c.nodes[0]
        .ns
        .ip_json(&["link", "show", "flannel0"])
        .unwrap();
    assert_eq!(
        before[0]["ifindex"], after[0]["ifindex"],
        "flannel0 was recreated"
    );
    assert_eq!(
        c.nodes[0]
            .ns
            .ip(&["route", "show", "10.244.0.0/16"])
            .unwrap(),
        route
    );
    eprintln!(
        "udp: two restarts; ping {got}/{sent}; stream longest gap {:?}",
        report.longest_gap
    );
    assert!(
        report.longest_gap < Duration::from_secs(1),
        "traffic stopped for {:?}",
        report.longest_gap
    );
}

/// flannel's udp nodes send to every lease whatever its backend (its
/// vxlan nodes skip non-vxlan ones), so a udp node's traffic to a vxlan
/// node is lost at the vxlan node's port 8285. felt refuses on both
/// sides instead: each skips the other's lease, says why, and counts it.
#[test]
fn a_cluster_mixing_vxlan_and_udp_nodes_refuses_and_reports_on_both_sides() {
    common::require_root();
    let mut c = Cluster::start(Naming::test(), Backend::Udp, None).unwrap();
    let (u, v) = (c.add_node().unwrap(), c.add_node().unwrap());
    c.start_overlayd(u, &[]).unwrap();
    c.node_mut(u)
        .unwrap()
        .wait_subnet_env(SystemTime::UNIX_EPOCH, CONVERGE)
        .unwrap();
    c.etcd()
        .put(&format!("{ETCD_PREFIX}/config"), &net_conf(Backend::Vxlan))
        .unwrap();
    c.start_overlayd(v, &[]).unwrap();
    c.node_mut(v)
        .unwrap()
        .wait_subnet_env(SystemTime::UNIX_EPOCH, CONVERGE)
        .unwrap();
    c.add_pod(u).unwrap();
    c.add_pod(v).unwrap();
    for i in [u, v] {
        felt_cluster::wait::wait_for("the other backend reported", CONVERGE, || {
            Ok(c.nodes[i].metric("felt_leases_skipped{reason=\"backend-type\"}")? == 1.0)
        })
        .unwrap();
    }
    assert!(c.nodes[u].overlayd_log().contains("uses backend \"vxlan\""));
    assert!(c.nodes[v].overlayd_log().contains("uses backend \"udp\""));
    let v_subnet = c.nodes[v].subnet().unwrap();
    assert!(c.nodes[v]
        .kernel()
        .unwrap()
        .route_to(c.nodes[u].subnet().unwrap())
        .is_none());
    let text = ping_text(&c, 0, c.pods[1].ip);
    assert!(
        text.contains("Destination Net Unreachable"),
        "{v_subnet}: {text}"
    );
}

/// Garbage at port 8285 from a host outside the pod network, bounded:
/// every kind is dropped and counted by reason, pod traffic through the
/// node keeps flowing, and overlayd's memory stays flat. The host is
/// given a lease first (a compromised peer), so its datagrams pass the
/// sender check and meet each inner check; then it loses the lease and
/// everything it sends is refused as coming from an unknown sender.
#[test]
fn a_garbage_flood_is_dropped_counted_and_harmless() {
    let mut c = cluster(Backend::Udp, 2, 1);
    let out = c.add_host("junk", 201).unwrap();
    let junk_lease = felt_cluster::lease_key(ETCD_PREFIX, "10.244.222.0/24".parse().unwrap());
    let value = r#"{"PublicIP":"192.168.100.201","PublicIPv6":null,"BackendType":"udp"}"#;
    c.etcd().put(&junk_lease, value).unwrap();
    felt_cluster::wait::wait_for("the junk host a peer", CONVERGE, || {
        Ok(c.nodes[0].metric("felt_peers{backend=\"udp\"}")? == 2.0)
    })
    .unwrap();
    let pid = c.nodes[0].overlayd_pid().unwrap();
    let rss_before = rss_kib(pid);
    let stream = TcpStreamRun::start(&c.pods[1].ns, &c.pods[0].ns, c.pods[0].ip).unwrap();
    let own = c.nodes[0].subnet().unwrap().network();
    let inside = Ipv4Addr::from(u32::from(own) + 2);
    let kinds: Vec<(&str, Vec<u8>)> = vec![
        ("runt", vec![0x45; 10]),
        ("not_ipv4", ipv4(inside, |p| p[0] = 0x65)),
        ("bad_header_len", ipv4(inside, |p| p[0] = 0x44)),
        (
            "bad_total_len",
            ipv4(inside, |p| p[3] = p[3].wrapping_add(9)),
        ),
        ("bad_checksum", ipv4(inside, |p| p[10] ^= 0xff)),
        ("not_our_subnet", ipv4("8.8.8.8".parse().unwrap(), |_| {})),
    ];
    let per_kind = 3000;
    let host = c.host(out).unwrap();
    let node_ip = c.nodes[0].ip;
    let dropped = |c: &Cluster, r: &str| {
        c.nodes[0]
            .metric(&format!("felt_udp_drops_total{{reason=\"{r}\"}}"))
            .unwrap()
    };
    let lost = |c: &Cluster| udp_rcvbuf_errors(c);
    let lost_before = lost(&c);
    for (reason, datagram) in &kinds {
        let before = dropped(&c, reason);
        flood(host, node_ip, datagram, per_kind);
        let mut now = before;
        let counted = felt_cluster::wait::wait_for(reason, CONVERGE, || {
            now = dropped(&c, reason);
            Ok(now - before >= per_kind as f64)
        });
        assert!(
            counted.is_ok(),
            "{reason}: {} of {per_kind} counted (kernel socket drops: {})",
            now - before,
            lost(&c) - lost_before
        );
    }
    // The lease goes: the same host is now nobody.
    c.etcd().delete(&junk_lease).unwrap();
    felt_cluster::wait::wait_for("the junk host no peer", CONVERGE, || {
        Ok(c.nodes[0].metric("felt_peers{backend=\"udp\"}")? == 1.0)
    })
    .unwrap();
    let before = dropped(&c, "unknown_sender");
    flood(host, node_ip, &kinds[1].1, per_kind);
    felt_cluster::wait::wait_for("unknown senders counted", CONVERGE, || {
        Ok(dropped(&c, "unknown_sender") - before >= per_kind as f64)
    })
    .unwrap();
    let report = stream.finish().unwrap();
    let rss_after = rss_kib(pid);
    eprintln!(
        "udp flood: {} datagrams, each counted by reason; stream gap {:?}; RSS {rss_before} -> {rss_after} KiB",
        7 * per_kind,
        report.longest_gap
    );
    assert!(
        report.longest_gap < Duration::from_secs(1),
        "traffic stalled {:?}",
        report.longest_gap
    );
    assert!(
        rss_after < rss_before + 4096,
        "RSS grew {rss_before} -> {rss_after} KiB"
    );
    assert!(c.node_mut(0).unwrap().overlayd_running());
}

/// Sends `n` copies of `datagram` to `node_ip:8285` from `host`, paced
/// (bursts of 200) so the node's socket buffer never overflows: every
/// datagram must reach overlayd to be counted.
fn flood(host: &felt_cluster::Netns, node_ip: Ipv4Addr, datagram: &[u8], n: usize) {
    let d = datagram.to_vec();
    felt_cluster::tcp::in_netns(&host.path(), move || {
        let s = UdpSocket::bind((underlay_ip(201), 0))
            .map_err(|e| felt_cluster::HarnessError::Setup(e.to_string()))?;
        let to = SocketAddr::from((node_ip, 8285));
        for i in 0..n {
            s.send_to(&d, to)
                .map_err(|e| felt_cluster::HarnessError::Setup(e.to_string()))?;
            if i % 200 == 199 {
                std::thread::sleep(Duration::from_millis(2));
            }
        }
        Ok(())
    })
    .unwrap();
}

/// UDP receive-buffer overflows in node1's namespace (/proc/net/snmp).
fn udp_rcvbuf_errors(c: &Cluster) -> f64 {
    let snmp = c.nodes[0].ns.exec(&["cat", "/proc/net/snmp"]).unwrap();
    let udp: Vec<&str> = snmp.lines().filter(|l| l.starts_with("Udp:")).collect();
    let (names, values) = (udp[0].split_whitespace(), udp[1].split_whitespace());
    names
        .zip(values)
        .find(|(n, _)| *n == "RcvbufErrors")
        .and_then(|(_, v)| v.parse().ok())
        .unwrap_or(0.0)
}

/// A valid 28-byte IPv4/ICMP packet to `dst`, then `spoil`ed.
fn ipv4(dst: Ipv4Addr, spoil: impl Fn(&mut Vec<u8>)) -> Vec<u8> {
    let mut p = vec![0x45, 0, 0, 28, 0, 1, 0, 0, 64, 1, 0, 0, 192, 168, 100, 201];
    p.extend(dst.octets());
    p.extend([8, 0, 0xf7, 0xff, 0, 0, 0, 0]);
    let sum = checksum(&p[..20]);
    p[10..12].copy_from_slice(&sum.to_be_bytes());
    spoil(&mut p);
    p
}

fn checksum(b: &[u8]) -> u16 {
    let mut s: u32 = b
        .chunks(2)
        .map(|c| u32::from(u16::from_be_bytes([c[0], c[1]])))
        .sum();
    while s > 0xffff {
        s = (s & 0xffff) + (s >> 16);
    }
    !(s as u16)
}

fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap()
}
