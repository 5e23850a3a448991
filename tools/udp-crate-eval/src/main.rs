//! Measures, in the same namespace rig as `udp-bench`, pod-to-pod TCP
//! (iperf3, 1 and 4 streams) through flannel0 for:
//! - felt's engine (plain and all techniques),
//! - a forwarder built on tun-rs (TUN offload: recv_multiple splits TSO,
//!   send_multiple does TCP GRO) + quinn-udp (UDP GSO/GRO, recvmmsg),
//! - a forwarder built on the plain `tun` crate + std UdpSocket.
//!
//! The forwarders reuse felt's wire functions (TTL, checks), so only the
//! TUN and socket layers differ. Root required; `scripts/eval-udp-crates.sh`.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

#[path = "../../../overlayd/tests/udp_rig/mod.rs"]
mod udp_rig;

use overlayd::backend::udp::wire;
use overlayd::backend::udp::{Engine, Features};
use std::io::IoSliceMut;
use std::net::{SocketAddr, SocketAddrV4, UdpSocket};
use std::sync::Arc;
use udp_rig::*;

/// Where node `n`'s forwarder sends: the other node of a two-node rig.
#[derive(Clone, Copy)]
struct Route {
    own: (u32, u32),
    peer_subnet: u32,
    peer: SocketAddrV4,
}

impl Route {
    fn new(rig: &Rig, me: usize) -> Route {
        let (n, p) = (&rig.nodes[me], &rig.nodes[1 - me]);
        Route {
            own: (u32::from(n.subnet().network()), 0xffff_ff00),
            peer_subnet: u32::from(p.subnet().network()),
            peer: SocketAddrV4::new(p.underlay_ip(), PORT),
        }
    }
    /// TTL-decremented and routable (the engine's checks, simplified to
    /// one peer).
    fn outbound(&self, pkt: &mut [u8]) -> bool {
        pkt.len() >= 20
            && pkt[0] >> 4 == 4
            && wire::dst_u32(pkt) & 0xffff_ff00 == self.peer_subnet
            && wire::decrement_ttl(pkt)
    }
    fn inbound(&self, pkt: &mut [u8]) -> bool {
        wire::check_inbound(pkt, self.own).is_ok() && wire::decrement_ttl(pkt)
    }
}

/// Bound like the engine's socket, with the same 8 MiB FORCE buffers, so
/// only the I/O calls differ.
fn bind(n: &Node) -> UdpSocket {
    use std::os::fd::AsRawFd;
    let addr = SocketAddrV4::new(n.underlay_ip(), PORT);
    let sock = in_netns(&n.ns, move || UdpSocket::bind(addr)).unwrap();
    for opt in [libc::SO_RCVBUFFORCE, libc::SO_SNDBUFFORCE] {
        let v: libc::c_int = 8 << 20;
        // SAFETY: a live c_int and its size.
        let rc = unsafe {
            libc::setsockopt(
                sock.as_raw_fd(),
                libc::SOL_SOCKET,
                opt,
                (&v as *const libc::c_int).cast(),
                4,
            )
        };
        assert_eq!(rc, 0, "socket buffer");
    }
    sock
}

/// flannel0 as `start_engine` configures it, and the engine's txqueuelen.
fn configure(n: &Node) {
    n.ns.exec_ok(&["ip", "link", "set", "flannel0", "txqueuelen", "10000"]);
    configure_flannel0(n);
}

mod tunrs {
    use super::*;
    use quinn_udp::{RecvMeta, Transmit, UdpSockRef, UdpSocketState};
    use tun_rs::{DeviceBuilder, GROTable, SyncDevice, IDEAL_BATCH_SIZE, VIRTIO_NET_HDR_LEN};

    pub fn start(n: &Node, route: Route) {
        let dev = in_netns(&n.ns, || {
            DeviceBuilder::new()
                .name("flannel0")
                .offload(true)
                .build_sync()
        })
        .unwrap();
        let dev = Arc::new(dev);
        let sock = Arc::new(bind(n));
        let state = Arc::new(UdpSocketState::new(UdpSockRef::from(&*sock)).unwrap());
        eprintln!(
            "  quinn-udp: max_gso_segments {} gro_segments {}",
            state.max_gso_segments(),
            state.gro_segments()
        );
        configure(n);
        let (d, s, st) = (dev.clone(), sock.clone(), state.clone());
        std::thread::spawn(move || tx(&d, &s, &st, route));
        std::thread::spawn(move || rx(&dev, &sock, &state, route));
    }

    /// Sends equal-size packets to the peer as one GSO transmit (quinn
    /// needs the contents contiguous: one copy per packet).
    fn tx(dev: &SyncDevice, sock: &UdpSocket, state: &UdpSocketState, r: Route) {
        let mut orig = vec![0u8; VIRTIO_NET_HDR_LEN + 65535];
        let mut bufs = vec![vec![0u8; 2048]; IDEAL_BATCH_SIZE];
        let mut sizes = vec![0usize; IDEAL_BATCH_SIZE];
        let mut out = vec![0u8; 65535];
        let max = state.max_gso_segments().max(1);
        loop {
            let n = match dev.recv_multiple(&mut orig, &mut bufs, &mut sizes, 0) {
                Ok(n) => n,
                Err(e) => {
                    eprintln!("  tun-rs recv_multiple: {e}");
                    return;
                }
            };
            let (mut len, mut seg, mut count) = (0usize, 0usize, 0usize);
            for i in 0..n {
                let pkt = &mut bufs[i][..sizes[i]];
                if !r.outbound(pkt) {
                    continue;
                }
                let fits = count == 0
                    || (pkt.len() <= seg
                        && len + pkt.len() <= 65507
                        && count < max
                        && len % seg == 0);
                if !fits {
                    send(state, sock, &out[..len], seg, r.peer);
                    (len, count) = (0, 0);
                }
                if count == 0 {
                    seg = pkt.len();
                }
                out[len..len + pkt.len()].copy_from_slice(pkt);
                len += pkt.len();
                count += 1;
            }
            if count > 0 {
                send(state, sock, &out[..len], seg, r.peer);
            }
        }
    }

    fn send(
        state: &UdpSocketState,
        sock: &UdpSocket,
        contents: &[u8],
        seg: usize,
        to: SocketAddrV4,
    ) {
        let t = Transmit {
            destination: SocketAddr::V4(to),
            ecn: None,
            contents,
            segment_size: (contents.len() > seg).then_some(seg),
            src_ip: None,
        };
        if let Err(e) = state.try_send(UdpSockRef::from(sock), &t) {
            eprintln!("  quinn-udp try_send: {e}");
        }
    }

    /// Splits GRO batches, copies each packet behind a virtio header
    /// (tun-rs wants one buffer per packet) and lets send_multiple
    /// coalesce.
    fn rx(dev: &SyncDevice, sock: &UdpSocket, state: &UdpSocketState, r: Route) {
        const MSGS: usize = 8;
        let mut store = vec![vec![0u8; 65536]; MSGS];
        let mut slices: Vec<IoSliceMut> = store.iter_mut().map(|b| IoSliceMut::new(b)).collect();
        let mut meta = vec![RecvMeta::default(); MSGS];
        let mut pkts: Vec<Vec<u8>> = (0..MSGS * 64)
            .map(|_| Vec::with_capacity(VIRTIO_NET_HDR_LEN + 65535))
            .collect();
        let mut gro = GROTable::default();
        loop {
            let n = match state.recv(UdpSockRef::from(sock), &mut slices, &mut meta) {
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    wait_readable(sock);
                    continue;
                }
                Err(e) => {
                    eprintln!("  quinn-udp recv: {e}");
                    return;
                }
            };
            let mut k = 0;
            for i in 0..n {
                let m = &meta[i];
                let stride = m.stride.max(1);
                for seg in slices[i][..m.len].chunks_mut(stride) {
                    if !r.inbound(seg) {
                        continue;
                    }
                    let p = &mut pkts[k];
                    p.clear();
                    p.resize(VIRTIO_NET_HDR_LEN, 0);
                    p.extend_from_slice(seg);
                    k += 1;
                }
            }
            if let Err(e) = dev.send_multiple(&mut gro, &mut pkts[..k], VIRTIO_NET_HDR_LEN) {
                eprintln!("  tun-rs send_multiple: {e}");
            }
        }
    }
}

/// quinn-udp receives with MSG_DONTWAIT: wait in poll(2) when idle.
fn wait_readable(sock: &UdpSocket) {
    use std::os::fd::AsRawFd;
    let mut p = libc::pollfd {
        fd: sock.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one live pollfd.
    unsafe { libc::poll(&mut p, 1, -1) };
}

mod plain_tun {
    use super::*;

    pub fn start(n: &Node, route: Route) {
        let dev = in_netns(&n.ns, || {
            let mut cfg = tun::Configuration::default();
            cfg.tun_name("flannel0");
            tun::create(&cfg)
        })
        .unwrap();
        let dev = Arc::new(dev);
        let sock = Arc::new(bind(n));
        configure(n);
        let (d, s) = (dev.clone(), sock.clone());
        std::thread::spawn(move || {
            let mut buf = vec![0u8; 65536];
            while let Ok(len) = d.recv(&mut buf) {
                if route.outbound(&mut buf[..len]) {
                    let _ = s.send_to(&buf[..len], route.peer);
                }
            }
        });
        std::thread::spawn(move || {
            let mut buf = vec![0u8; 65536];
            while let Ok((len, _)) = sock.recv_from(&mut buf) {
                if route.inbound(&mut buf[..len]) {
                    let _ = dev.send(&buf[..len]);
                }
            }
        });
    }
}

/// `setup` returns what must live while traffic runs (felt's engines).
fn run(name: &str, secs: u32, setup: impl Fn(&Rig) -> Vec<Engine>) -> String {
    let rig = Rig::new("ueval", 2, TUN_MTU);
    rig.set_veth_gro(true);
    let _keep = setup(&rig);
    let (a, b) = (&rig.nodes[0], &rig.nodes[1]);
    let (ok, out) = ping(&a.pod, &b.pod_ip().to_string(), 2);
    assert!(ok, "{name}: ping: {out}");
    let r1 = iperf(a, b, 1, secs);
    let r4 = iperf(a, b, 4, secs);
    let row = format!(
        "| {name} | {:.2} | {} | {:.2} | {} |",
        r1.bits_per_second / 1e9,
        r1.retransmits,
        r4.bits_per_second / 1e9,
        r4.retransmits
    );
    eprintln!("{row}");
    row
}

fn main() {
    let secs: u32 = std::env::args()
        .nth(1)
        .map(|s| s.parse().expect("seconds"))
        .unwrap_or(5);
    let mut rows = Vec::new();
    let one_queue = Features {
        queues: 1,
        ..Features::all()
    };
    for (name, f) in [
        ("felt engine, plain", Features::PLAIN),
        ("felt engine, all techniques", Features::all()),
        ("felt engine, all techniques, 1 queue", one_queue),
    ] {
        rows.push(run(name, secs, |rig| {
            let (a, b) = (&rig.nodes[0], &rig.nodes[1]);
            let (ea, eb) = (start_engine(a, f), start_engine(b, f));
            full_mesh(&[a, b], &[&ea, &eb]);
            vec![ea, eb]
        }));
    }
    rows.push(run("tun-rs offload + quinn-udp GSO/GRO", secs, |rig| {
        for (i, n) in rig.nodes.iter().enumerate() {
            tunrs::start(n, Route::new(rig, i));
        }
        Vec::new()
    }));
    rows.push(run("tun crate + std UdpSocket", secs, |rig| {
        for (i, n) in rig.nodes.iter().enumerate() {
            plain_tun::start(n, Route::new(rig, i));
        }
        Vec::new()
    }));
    println!("\npod-to-pod TCP through flannel0, iperf3 {secs} s, veth GRO on");
    println!("| stack | 1 stream Gbit/s | retr | 4 streams Gbit/s | retr |");
    println!("|---|---|---|---|---|");
    for r in rows {
        println!("{r}");
    }
}
