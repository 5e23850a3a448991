//! The rules on real packets, in both modes. Namespaces:
//!
//! ```text
//!  pod 10.244.3.5 ── 10.244.3.1 ┐
//!                               node (ip_forward, felt's rules) 192.168.90.1 ── 192.168.90.2 outside
//!  remote 10.244.4.5 ─ 10.244.4.1 ┘                                  (no route back to 10.244.0.0/16)
//! ```
//!
//! Servers report the source address they see: of a TCP connection
//! (which also proves the reply came back through the NAT), or of a UDP
//! datagram where no reply can come back (masquerade off, or the
//! kube-proxy mark that makes felt leave a packet alone). The mark case
//! compares two UDP ports that differ only in the mark.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod backend_util;
mod firewall_util;

use felt_common::netns::{open_netns, NetnsGuard};
use felt_common::testutil::TestNetns;
use firewall_util::*;
use overlayd::firewall::{Mode, RuleSet};
use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

struct Net {
    pod: TestNetns,
    node: TestNetns,
    outside: TestNetns,
    remote: TestNetns,
}

fn wire(a: &TestNetns, a_if: &str, a_addr: &str, b: &TestNetns, b_if: &str, b_addr: &str) {
    sh(
        a,
        &format!(
            "ip link add {a_if} type veth peer name {b_if} netns {}",
            b.name
        ),
    );
    sh(
        a,
        &format!("ip addr add {a_addr} dev {a_if}; ip link set {a_if} up"),
    );
    sh(
        b,
        &format!("ip addr add {b_addr} dev {b_if}; ip link set {b_if} up"),
    );
}

fn net(tag: &str) -> Net {
    let n = Net {
        pod: TestNetns::new(&format!("{tag}p")),
        node: TestNetns::new(&format!("{tag}n")),
        outside: TestNetns::new(&format!("{tag}o")),
        remote: TestNetns::new(&format!("{tag}r")),
    };
    wire(
        &n.node,
        "n-pod",
        "10.244.3.1/24",
        &n.pod,
        "eth0",
        "10.244.3.5/24",
    );
    wire(
        &n.node,
        "n-rem",
        "10.244.4.1/24",
        &n.remote,
        "eth0",
        "10.244.4.5/24",
    );
    wire(
        &n.node,
        "n-out",
        "192.168.90.1/24",
        &n.outside,
        "eth0",
        "192.168.90.2/24",
    );
    sh(&n.pod, "ip route add default via 10.244.3.1");
    sh(&n.remote, "ip route add default via 10.244.4.1");
    sh(&n.node, "sysctl -qw net.ipv4.ip_forward=1");
    // kube-proxy's mark on one UDP port only: the control port differs
    // in nothing else.
    feed(
        &n.node,
        &["nft", "-f", "-"],
        "table ip kubemark {\n chain pre {\n  type filter hook prerouting priority mangle; policy accept;\n  udp dport 9001 meta mark set 0x4000\n }\n}\n",
    );
    n
}

/// Runs `f` on a thread inside `ns`; `f` gets a sender to say "ready"
/// (its socket is bound) before it waits for traffic.
fn serve<T: Send + 'static>(
    ns: &TestNetns,
    f: impl FnOnce(mpsc::Sender<()>) -> T + Send + 'static,
) -> JoinHandle<T> {
    let path = ns.path();
    let (tx, rx) = mpsc::channel();
    let h = std::thread::spawn(move || {
        let file = open_netns(&path).unwrap();
        let _in = NetnsGuard::enter(&file, &path).unwrap();
        f(tx)
    });
    rx.recv_timeout(Duration::from_secs(10))
        .expect("server never got ready");
    h
}

/// The peer address of the first connection to `bind`, if any arrives
/// within 10 s.
fn tcp_peer(ns: &TestNetns, bind: &str) -> JoinHandle<Option<IpAddr>> {
    let bind: SocketAddr = bind.parse().unwrap();
    serve(ns, move |ready| {
        let l = TcpListener::bind(bind).unwrap();
        l.set_nonblocking(true).unwrap();
        ready.send(()).unwrap();
        let end = Instant::now() + Duration::from_secs(10);
        while Instant::now() < end {
            match l.accept() {
                Ok((_, peer)) => return Some(peer.ip()),
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    std::thread::sleep(Duration::from_millis(10))
                }
                Err(e) => panic!("accept: {e}"),
            }
        }
        None
    })
}

/// The source address of the first datagram to `bind`.
fn udp_source(ns: &TestNetns, bind: &str) -> JoinHandle<Option<IpAddr>> {
    let bind: SocketAddr = bind.parse().unwrap();
    serve(ns, move |ready| {
        let s = UdpSocket::bind(bind).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        ready.send(()).unwrap();
        let mut buf = [0u8; 64];
        s.recv_from(&mut buf).ok().map(|(_, from)| from.ip())
    })
}

fn from_pod<T: Send + 'static>(n: &Net, f: impl FnOnce() -> T + Send + 'static) -> T {
    serve(&n.pod, move |ready| {
        ready.send(()).unwrap();
        f()
    })
    .join()
    .unwrap()
}

fn tcp_from_pod(n: &Net, to: &str) -> bool {
    let to: SocketAddr = to.parse().unwrap();
    from_pod(n, move || {
        TcpStream::connect_timeout(&to, Duration::from_secs(5)).is_ok()
    })
}

fn udp_from_pod(n: &Net, to: &str) {
    let to: SocketAddr = to.parse().unwrap();
    from_pod(n, move || {
        let s = UdpSocket::bind("10.244.3.5:0").unwrap();
        s.send_to(b"felt", to).unwrap();
    });
}

fn ip(s: &str) -> Option<IpAddr> {
    Some(s.parse().unwrap())
}

fn masquerade_on(mode: Mode, tag: &str) {
    let n = net(tag);
    Fw::new(mode).ensure(&n.node, &rules());

    let seen = tcp_peer(&n.outside, "192.168.90.2:8080");
    assert!(
        tcp_from_pod(&n, "192.168.90.2:8080"),
        "pod cannot reach outside"
    );
    assert_eq!(seen.join().unwrap(), ip("192.168.90.1"), "not masqueraded");

    let seen = tcp_peer(&n.remote, "10.244.4.5:8080");
    assert!(
        tcp_from_pod(&n, "10.244.4.5:8080"),
        "pod cannot reach the remote pod"
    );
    assert_eq!(
        seen.join().unwrap(),
        ip("10.244.3.5"),
        "pod to pod was masqueraded"
    );

    let control = udp_source(&n.outside, "192.168.90.2:9000");
    udp_from_pod(&n, "192.168.90.2:9000");
    assert_eq!(control.join().unwrap(), ip("192.168.90.1"));
    let marked = udp_source(&n.outside, "192.168.90.2:9001");
    udp_from_pod(&n, "192.168.90.2:9001");
    assert_eq!(
        marked.join().unwrap(),
        ip("10.244.3.5"),
        "kube-proxy's mark was ignored"
    );
}

fn masquerade_off(mode: Mode, tag: &str) {
    let n = net(tag);
    let off = RuleSet {
        masquerade: false,
        ..rules()
    };
    Fw::new(mode).ensure(&n.node, &off);
    let seen = udp_source(&n.outside, "192.168.90.2:9000");
    udp_from_pod(&n, "192.168.90.2:9000");
    assert_eq!(seen.join().unwrap(), ip("10.244.3.5"));
}

#[test]
fn nft_masquerades_pod_traffic_leaving_the_network_only() {
    masquerade_on(Mode::Nftables, "fwtn");
}

#[test]
fn iptables_masquerades_pod_traffic_leaving_the_network_only() {
    masquerade_on(Mode::Iptables, "fwti");
}

#[test]
fn nft_without_masquerade_outside_sees_the_pod() {
    masquerade_off(Mode::Nftables, "fwtno");
}

#[test]
fn iptables_without_masquerade_outside_sees_the_pod() {
    masquerade_off(Mode::Iptables, "fwtio");
}
