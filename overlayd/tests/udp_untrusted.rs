//! The udp datapath against what it does not control: a hand-made
//! flannel-style peer (a plain UDP socket speaking the wire format) and a
//! flood of garbage from the underlay.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod udp_rig;

use felt_common::testutil::TestNetns;
use overlayd::backend::udp::{DropReason, Features};
use std::net::{Ipv4Addr, SocketAddrV4, UdpSocket};
use std::time::Duration;
use udp_rig::*;

/// Internet checksum, big-endian words (independent of the engine's).
fn csum(data: &[u8]) -> u16 {
    let mut s: u32 = data
        .chunks(2)
        .map(|c| u32::from(c[0]) << 8 | u32::from(*c.get(1).unwrap_or(&0)))
        .sum();
    while s > 0xffff {
        s = (s & 0xffff) + (s >> 16);
    }
    !(s as u16)
}

/// An IPv4/UDP packet as flannel's format carries it; `hdr` supplies TOS,
/// id and flags (bytes 1, 4..8) where the sender's kernel chose them.
fn udp_packet(
    src: SocketAddrV4,
    dst: SocketAddrV4,
    ttl: u8,
    payload: &[u8],
    hdr: [u8; 5],
) -> Vec<u8> {
    let total = 28 + payload.len();
    let mut p = vec![0x45, hdr[0]];
    p.extend_from_slice(&(total as u16).to_be_bytes());
    p.extend_from_slice(&hdr[1..5]);
    p.extend_from_slice(&[ttl, 17, 0, 0]);
    p.extend_from_slice(&src.ip().octets());
    p.extend_from_slice(&dst.ip().octets());
    let c = csum(&p);
    p[10..12].copy_from_slice(&c.to_be_bytes());
    let udp_len = (8 + payload.len()) as u16;
    let mut udp = Vec::new();
    udp.extend_from_slice(&src.port().to_be_bytes());
    udp.extend_from_slice(&dst.port().to_be_bytes());
    udp.extend_from_slice(&udp_len.to_be_bytes());
    udp.extend_from_slice(&[0, 0]);
    udp.extend_from_slice(payload);
    let mut pseudo = p[12..20].to_vec();
    pseudo.extend_from_slice(&[0, 17]);
    pseudo.extend_from_slice(&udp_len.to_be_bytes());
    pseudo.extend_from_slice(&udp);
    let c = match csum(&pseudo) {
        0 => 0xffff,
        c => c,
    };
    udp[6..8].copy_from_slice(&c.to_be_bytes());
    p.extend_from_slice(&udp);
    p
}

fn bind_in(ns: &TestNetns, addr: SocketAddrV4) -> UdpSocket {
    let s = in_netns(ns, move || UdpSocket::bind(addr)).unwrap();
    // Only a guard against a hung test; the tests never wait for absence.
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s
}

/// Engine on node 1, a flannel-style peer at 192.168.77.3 leasing
/// 10.244.3.0/24, checked in both directions for one feature set.
fn interop(tag: &str, features: Features) {
    let rig = Rig::new(tag, 1, TUN_MTU);
    let a = &rig.nodes[0];
    let flannel = TestNetns::new(&format!("{tag}-fl"));
    Rig::attach(&rig.lan, &flannel, "fl", "192.168.77.3/24");
    let peer = bind_in(
        &flannel,
        SocketAddrV4::new(Ipv4Addr::new(192, 168, 77, 3), PORT),
    );
    let ea = start_engine(a, features);
    ea.set_peers([(
        "10.244.3.0/24".parse().unwrap(),
        Ipv4Addr::new(192, 168, 77, 3),
    )]);

    // Pod -> flannel peer: the datagram is the pod's packet with TTL 62
    // (64 - node forwarding - engine) and the checksum fixed.
    let pod_addr = SocketAddrV4::new(a.pod_ip(), 4000);
    let far = SocketAddrV4::new(Ipv4Addr::new(10, 244, 3, 5), 6000);
    let pod = bind_in(&a.pod, pod_addr);
    let payload = b"felt udp interop: pod to flannel";
    pod.send_to(payload, far).unwrap();
    let mut buf = [0u8; 2048];
    let (n, from) = peer.recv_from(&mut buf).unwrap();
    assert_eq!(
        from.to_string(),
        format!("{}:{PORT}", a.underlay_ip()),
        "sent from our port"
    );
    let got = &buf[..n];
    let kernel_chosen = [got[1], got[4], got[5], got[6], got[7]];
    assert_eq!(
        got,
        &udp_packet(pod_addr, far, 62, payload, kernel_chosen)[..],
        "flannel's format, byte for byte"
    );

    // flannel peer -> pod: a raw inner packet; TTL 3 arrives (engine -1,
    // node -1), TTL 2 leaves the engine with 1 and dies in the node, TTL
    // 1 dies in the engine. The marker behind each proves the order.
    let send = |ttl: u8, dst: SocketAddrV4, msg: &[u8]| {
        let inner = udp_packet(far, dst, ttl, msg, [0, 0, 0, 0x40, 0]);
        peer.send_to(&inner, SocketAddrV4::new(a.underlay_ip(), PORT))
            .unwrap();
    };
    let other = SocketAddrV4::new(Ipv4Addr::new(10, 244, 2, 5), 4000);
    send(1, pod_addr, b"ttl 1");
    send(2, pod_addr, b"ttl 2");
    send(3, other, b"not our subnet");
    send(3, pod_addr, b"ttl 3");
    let (n, src) = pod.recv_from(&mut buf).unwrap();
    assert_eq!(
        (&buf[..n], src),
        (&b"ttl 3"[..], far.into()),
        "only the TTL-3 packet arrives"
    );
    // Counters are published after each batch: wait for the whole batch.
    wait_for(
        &ea,
        "TTL 2 and 3 into the TUN, TTL 1 and 10.244.2.5 dropped",
        |s| {
            s.rx_packets == 2
                && s.dropped(DropReason::TtlExpired) == 1
                && s.dropped(DropReason::NotOurSubnet) == 1
        },
    );
}

#[test]
fn flannel_style_peer_interoperates_with_all_features() {
    interop("udpi", Features::all());
}

#[test]
fn flannel_style_peer_interoperates_plain() {
    interop("udpj", Features::PLAIN);
}

fn rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let line = status.lines().find(|l| l.starts_with("VmRSS:")).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

const FLOOD: u64 = 5_000;

#[test]
fn garbage_flood_is_dropped_counted_and_costs_no_memory() {
    let rig = Rig::new("udpg", 2, TUN_MTU);
    let (a, b) = (&rig.nodes[0], &rig.nodes[1]);
    let evil = TestNetns::new("udpg-evil");
    Rig::attach(&rig.lan, &evil, "ev", "192.168.77.200/24");
    evil.exec_ok(&["ip", "addr", "add", "192.168.77.201/24", "dev", "eth0"]);
    let ea = start_engine(a, Features::all());
    let eb = start_engine(b, Features::all());
    full_mesh(&[a, b], &[&ea, &eb]);
    // .200 holds a lease (a compromised peer), .201 holds none.
    ea.set_peers([
        (b.subnet(), b.underlay_ip()),
        (
            "10.244.5.0/24".parse().unwrap(),
            Ipv4Addr::new(192, 168, 77, 200),
        ),
    ]);
    let peer = bind_in(&evil, "192.168.77.200:9999".parse().unwrap());
    let stranger = bind_in(&evil, "192.168.77.201:9999".parse().unwrap());
    let target = SocketAddrV4::new(a.underlay_ip(), PORT);
    let src = "10.244.5.5:53".parse().unwrap();
    let good = udp_packet(src, SocketAddrV4::new(a.pod_ip(), 9), 64, b"junk", [0; 5]);
    let mutate = |f: &dyn Fn(&mut Vec<u8>)| {
        let mut p = good.clone();
        f(&mut p);
        p
    };
    let kinds: Vec<(DropReason, &UdpSocket, Vec<u8>)> = vec![
        (DropReason::Runt, &peer, vec![0x45; 10]),
        (DropReason::NotIpv4, &peer, mutate(&|p| p[0] = 0x60)),
        (DropReason::BadHeaderLen, &peer, mutate(&|p| p[0] = 0x43)),
        (
            DropReason::BadTotalLen,
            &peer,
            mutate(&|p| p.extend_from_slice(&[0; 3])),
        ),
        (DropReason::BadChecksum, &peer, mutate(&|p| p[13] ^= 0x40)),
        (
            DropReason::NotOurSubnet,
            &peer,
            udp_packet(src, "8.8.8.8:53".parse().unwrap(), 64, b"x", [0; 5]),
        ),
        (
            DropReason::TtlExpired,
            &peer,
            mutate(&|p| {
                p[8] = 1;
                p[10] = 0;
                p[11] = 0;
                let c = csum(&p[..20]);
                p[10..12].copy_from_slice(&c.to_be_bytes());
            }),
        ),
        (DropReason::UnknownSender, &stranger, good.clone()),
    ];
    let rss_before = rss_kib();
    let _server = iperf_server(&b.pod, b.pod_ip());
    let client = std::thread::spawn({
        let cmd = iperf_client_cmd(&a.pod, b.pod_ip(), 1, 3);
        move || {
            let mut cmd = cmd;
            cmd.output().unwrap()
        }
    });
    let start = ea.stats();
    for (reason, sock, bytes) in &kinds {
        for _ in 0..FLOOD {
            sock.send_to(bytes, target).unwrap();
        }
        let base = start.dropped(*reason);
        wait_for(&ea, reason.name(), |s| s.dropped(*reason) >= base + FLOOD);
        assert_eq!(
            ea.stats().dropped(*reason),
            base + FLOOD,
            "{} counted exactly",
            reason.name()
        );
    }
    let out = client.join().unwrap();
    assert!(out.status.success(), "real traffic during the flood");
    let r = parse_iperf(&out.stdout);
    assert!(r.bytes > 1e6, "real traffic kept flowing: {r:?}");
    let (ok, text) = ping(&a.pod, &b.pod_ip().to_string(), 2);
    assert!(ok, "after the flood: {text}");
    let grown = rss_kib().saturating_sub(rss_before);
    eprintln!(
        "garbage flood: {} datagrams, RSS grew {grown} KiB",
        FLOOD * kinds.len() as u64
    );
    assert!(grown < 4096, "RSS grew {grown} KiB during the flood");
    // Nothing but B's datagrams reached A's TUN (some of B's may have
    // been lost to a full socket buffer during the flood, none added).
    assert!(ea.stats().rx_packets <= eb.stats().tx_packets);
}
