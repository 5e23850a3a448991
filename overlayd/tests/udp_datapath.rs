//! The udp datapath on real kernels, in namespaces: pod-to-pod ping and
//! TCP on every rung of the technique ladder, peers changing under
//! traffic, ICMP net-unreachable, restart with a persistent TUN.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod udp_rig;

use overlayd::backend::udp::{ladder, DropReason, Engine, Features, StatsSnapshot};
use std::collections::BTreeSet;
use std::time::{Duration, Instant};
use udp_rig::*;

/// Reasons that only garbage can produce: real traffic must never hit them.
const GARBAGE: [DropReason; 8] = [
    DropReason::Runt,
    DropReason::NotIpv4,
    DropReason::BadHeaderLen,
    DropReason::BadTotalLen,
    DropReason::BadChecksum,
    DropReason::NotOurSubnet,
    DropReason::UnknownSender,
    DropReason::BadOffload,
];

fn assert_clean(s: &StatsSnapshot, who: &str) {
    for r in GARBAGE {
        assert_eq!(
            s.dropped(r),
            0,
            "{who}: real traffic dropped as {}",
            r.name()
        );
    }
}

#[test]
fn every_ladder_rung_carries_ping_and_tcp() {
    let rig = Rig::new("udpl", 2, TUN_MTU);
    let (a, b) = (&rig.nodes[0], &rig.nodes[1]);
    for (name, f) in ladder() {
        let ea = start_engine(a, f);
        let eb = start_engine(b, f);
        full_mesh(&[a, b], &[&ea, &eb]);
        let act = ea.active();
        assert_eq!(act.queues, f.queues, "{name}: queues");
        assert_eq!(
            (act.vnet_hdr, act.tso),
            (f.offload, f.offload),
            "{name}: TUN offloads"
        );
        assert_eq!(
            (act.udp_gso, act.udp_gro),
            (f.udp_gso, f.udp_gro),
            "{name}: UDP offloads"
        );
        let (ok, out) = ping(&a.pod, &b.pod_ip().to_string(), 3);
        assert!(ok, "{name}: ping A->B: {out}");
        let r = iperf(a, b, 1, 1);
        eprintln!(
            "{name}: {:.2} Gbit/s, {} retransmits",
            r.bits_per_second / 1e9,
            r.retransmits
        );
        assert!(r.bytes > 1e6, "{name}: TCP moved {} bytes", r.bytes);
        let (sa, sb) = (ea.stats(), eb.stats());
        assert!(
            sa.tx_packets > 1000 && sb.rx_packets > 1000,
            "{name}: {sa:?} {sb:?}"
        );
        assert_clean(&sa, name);
        assert_clean(&sb, name);
        if f.offload {
            // TSO frames were split on A and segments coalesced on B.
            assert!(
                sa.tun_read.buckets[1..].iter().sum::<u64>() > 0,
                "{name}: no TSO frame read: {sa:?}"
            );
            assert!(
                sb.tun_write.buckets[1..].iter().sum::<u64>() > 0,
                "{name}: no GRO write: {sb:?}"
            );
        }
        drop((ea, eb));
        // The next rung may use another queue mode: start from scratch.
        for n in [a, b] {
            n.ns.exec_ok(&["ip", "link", "del", "flannel0"]);
        }
    }
}

#[test]
fn peers_change_under_traffic_and_unleased_gets_net_unreachable() {
    let rig = Rig::new("udpp", 3, TUN_MTU);
    let (a, b, c) = (&rig.nodes[0], &rig.nodes[1], &rig.nodes[2]);
    let ea = start_engine(a, Features::all());
    let eb = start_engine(b, Features::all());
    let ec = start_engine(c, Features::all());
    full_mesh(&[a, b, c], &[&ea, &eb, &ec]);
    // A starts without C: C's subnet is leased by nobody as far as A knows.
    ea.set_peers([(b.subnet(), b.underlay_ip())]);
    let _server = iperf_server(&b.pod, b.pod_ip());
    let client = iperf_client_cmd(&a.pod, b.pod_ip(), 1, 3).output();
    let c_ip = c.pod_ip().to_string();
    let unreachable =
        |out: &str| out.contains("From 10.244.1.0") && out.contains("Destination Net Unreachable");

    let (ok, out) = ping(&a.pod, &c_ip, 1);
    assert!(!ok && unreachable(&out), "before C joins: {out}");
    ea.set_peers([(b.subnet(), b.underlay_ip()), (c.subnet(), c.underlay_ip())]);
    let (ok, out) = ping(&a.pod, &c_ip, 2);
    assert!(ok, "after C joined: {out}");
    ea.set_peers([(b.subnet(), b.underlay_ip())]);
    let (ok, out) = ping(&a.pod, &c_ip, 1);
    assert!(!ok && unreachable(&out), "after C left: {out}");
    // Anything in the Network that nobody leases.
    let (ok, out) = ping(&a.pod, "10.244.99.2", 1);
    assert!(!ok && unreachable(&out), "unleased subnet: {out}");

    // Misrouted into flannel0 by hand: our own subnet and outside the
    // Network are dropped (flannel would answer both with ICMP).
    for dst in ["10.244.1.77", "10.9.9.9"] {
        a.ns.exec_ok(&[
            "ip",
            "route",
            "add",
            &format!("{dst}/32"),
            "dev",
            "flannel0",
        ]);
        assert!(!ping(&a.ns, dst, 1).0);
    }
    wait_for(&ea, "misrouted packets dropped", |s| {
        s.dropped(DropReason::OwnSubnet) >= 1 && s.dropped(DropReason::OutsideNetwork) >= 1
    });

    let out = client.unwrap();
    assert!(out.status.success(), "iperf3 during peer changes failed");
    let r = parse_iperf(&out.stdout);
    assert!(r.bytes > 1e6, "traffic to B kept flowing: {r:?}");
    wait_for(&ea, "three ICMP net-unreachable", |s| {
        s.icmp_unreachable >= 3 && s.dropped(DropReason::NoRoute) >= 3
    });
    assert_clean(&ea.stats(), "A");
}

fn flannel0_state(n: &Node) -> (u32, BTreeSet<String>, BTreeSet<String>) {
    let link = n.ns.exec_ok(&["ip", "-o", "link", "show", "flannel0"]);
    let idx = link.split(':').next().unwrap().trim().parse().unwrap();
    let lines = |argv: &[&str]| n.ns.exec_ok(argv).lines().map(str::to_string).collect();
    let addrs = lines(&["ip", "-4", "-o", "addr", "show", "dev", "flannel0"]);
    let routes = lines(&["ip", "-4", "route", "show", "dev", "flannel0"]);
    (idx, addrs, routes)
}

fn offload_shown(n: &Node) -> bool {
    let k = n.ns.exec_ok(&["ethtool", "-k", "flannel0"]);
    k.lines()
        .any(|l| l.trim() == "tcp-segmentation-offload: on")
}

/// Starts A's engine again and returns how long until it forwarded
/// traffic again (measured, never asserted).
fn restart(a: &Node, b: &Node, old: Engine, f: Features) -> (Engine, Duration) {
    let t0 = Instant::now();
    old.stop();
    let e = start_engine(a, f);
    e.set_peers([(b.subnet(), b.underlay_ip())]);
    let deadline = t0 + Duration::from_secs(10);
    while e.stats().rx_packets == 0 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(1));
    }
    (e, t0.elapsed())
}

#[test]
fn restart_keeps_the_device_and_traffic_resumes() {
    let rig = Rig::new("udpr", 2, TUN_MTU);
    let (a, b) = (&rig.nodes[0], &rig.nodes[1]);
    let ea = start_engine(a, Features::all());
    let eb = start_engine(b, Features::all());
    full_mesh(&[a, b], &[&ea, &eb]);
    let before = flannel0_state(a);
    assert!(offload_shown(a), "TSO advertised with offloads on");
    // 10 ms pings across two restarts: the lost ones measure the gap.
    let mut pinger = a.pod.command("ping");
    pinger.args([
        "-n",
        "-q",
        "-i",
        "0.01",
        "-c",
        "400",
        "-W",
        "1",
        &b.pod_ip().to_string(),
    ]);
    let pinger = std::thread::spawn(move || pinger.output().unwrap());
    std::thread::sleep(Duration::from_millis(800));
    let (ea, gap1) = restart(a, b, ea, Features::all());
    assert_eq!(
        flannel0_state(a),
        before,
        "same ifindex, address and routes"
    );
    std::thread::sleep(Duration::from_millis(800));
    // Restart without offloads: the sticky offload mask must be cleared.
    let plain = Features {
        offload: false,
        ..Features::all()
    };
    let (ea, gap2) = restart(a, b, ea, plain);
    assert_eq!(flannel0_state(a), before);
    assert!(!offload_shown(a), "offload mask cleared on re-attach");
    let out = pinger.join().unwrap();
    let summary = String::from_utf8_lossy(&out.stdout).to_string();
    eprintln!("restart: first packet after {gap1:?} and {gap2:?}; ping: {summary}");
    let (ok, out) = ping(&a.pod, &b.pod_ip().to_string(), 3);
    assert!(ok, "traffic after restarts: {out}");
    assert!(ea.stats().rx_packets > 0 && eb.stats().rx_packets > 0);
}

#[test]
fn a_deleted_device_makes_the_engine_unhealthy() {
    let rig = Rig::new("udph", 1, TUN_MTU);
    let a = &rig.nodes[0];
    let ea = start_engine(a, Features::all());
    assert!(ea.healthy());
    a.ns.exec_ok(&["ip", "link", "del", "flannel0"]);
    // The TUN readers see the device go (EBADFD) and end.
    let deadline = Instant::now() + Duration::from_secs(10);
    while ea.healthy() {
        assert!(Instant::now() < deadline, "engine still reports healthy");
        std::thread::sleep(Duration::from_millis(10));
    }
    // A new engine recreates the device.
    drop(ea);
    let ea = start_engine(a, Features::all());
    assert!(ea.healthy());
}
