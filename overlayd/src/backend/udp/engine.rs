//! The engine: attaches the TUN, binds the socket, probes what the kernel
//! offers, and runs one TUN->UDP thread per TUN queue and one UDP->TUN
//! thread.

use super::peers::{PeerCell, PeerRejected, PeerTable, Topology};
use super::socket::UdpSock;
use super::stats::{Shared, StatsSnapshot};
use super::tun::Tun;
use super::worker::{Ctx, Mode, Stop};
use super::{rx, tx, UdpError};
use ipnet::Ipv4Net;
use std::fs::File;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::sync::Arc;
use std::thread::JoinHandle;

/// Which techniques to use; each can be switched off for the benchmark
/// ladder or when a kernel lacks it (the engine also probes and falls
/// back on its own).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Features {
    /// TUN queues (IFF_MULTI_QUEUE when > 1), one reading thread each.
    pub queues: usize,
    /// recvmmsg/sendmmsg and several TUN reads per wakeup.
    pub batching: bool,
    /// IFF_VNET_HDR + TUNSETOFFLOAD(CSUM|TSO4|TSO6[|USO]): TSO split on
    /// read, TCP GRO on write.
    pub offload: bool,
    /// UDP GSO (UDP_SEGMENT) sends.
    pub udp_gso: bool,
    /// UDP GRO receive.
    pub udp_gro: bool,
}

impl Features {
    /// flannel-like: one queue, one packet per syscall.
    pub const PLAIN: Features = Features {
        queues: 1,
        batching: false,
        offload: false,
        udp_gso: false,
        udp_gro: false,
    };

    /// Everything, with one queue per CPU (at most 4).
    pub fn all() -> Features {
        Features {
            queues: default_queues(),
            batching: true,
            offload: true,
            udp_gso: true,
            udp_gro: true,
        }
    }
}

/// The benchmark ladder: each rung adds one technique to the one before.
pub fn ladder() -> [(&'static str, Features); 4] {
    let mq = Features {
        queues: default_queues().max(2),
        ..Features::PLAIN
    };
    let batch = Features {
        batching: true,
        ..mq
    };
    let offload = Features {
        offload: true,
        udp_gso: true,
        udp_gro: true,
        ..batch
    };
    [
        ("plain", Features::PLAIN),
        ("+multiqueue", mq),
        ("+batching", batch),
        ("+offloads", offload),
    ]
}

impl Default for Features {
    fn default() -> Self {
        Features::all()
    }
}

pub fn default_queues() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
        .clamp(1, 4)
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EngineConfig {
    /// "flannel0".
    pub tun_name: String,
    /// Our address and port on the underlay (flannel binds the external
    /// interface's address and Port).
    pub local: SocketAddrV4,
    pub own_subnet: Ipv4Net,
    pub network: Ipv4Net,
    pub subnet_len: u8,
    /// TUN MTU = external MTU - 28.
    pub mtu: u32,
    pub features: Features,
}

/// What the engine runs with, after probing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Active {
    pub ifindex: u32,
    pub queues: usize,
    pub multiqueue: bool,
    pub batching: bool,
    pub vnet_hdr: bool,
    pub tso: bool,
    pub uso: bool,
    pub udp_gso: bool,
    pub udp_gro: bool,
    pub rcvbuf: i32,
    pub sndbuf: i32,
}

pub struct Engine {
    topo: Topology,
    active: Active,
    stop: Arc<Stop>,
    peers: Arc<PeerCell>,
    stats: Vec<Arc<Shared>>,
    threads: Vec<JoinHandle<()>>,
}

fn validate(cfg: &EngineConfig) -> Result<Topology, UdpError> {
    let bad = |m: String| Err(UdpError::BadConfig(m));
    if cfg.own_subnet.prefix_len() != cfg.subnet_len || !cfg.network.contains(&cfg.own_subnet) {
        return bad(format!(
            "own subnet {} is not a /{} inside {}",
            cfg.own_subnet, cfg.subnet_len, cfg.network
        ));
    }
    if !(68..=65_507).contains(&cfg.mtu) {
        return bad(format!("TUN MTU {} out of range 68..=65507", cfg.mtu));
    }
    if cfg.features.queues == 0 {
        return bad("features.queues must be at least 1".into());
    }
    Ok(Topology {
        network: cfg.network.trunc(),
        own_subnet: cfg.own_subnet.trunc(),
        subnet_len: cfg.subnet_len,
    })
}

impl Engine {
    /// Call from a thread inside the node's network namespace: the TUN
    /// and the socket are created there. The device is left in place on
    /// stop (persistent); its address, MTU and routes are the caller's.
    pub fn start(cfg: EngineConfig) -> Result<Engine, UdpError> {
        let topo = validate(&cfg)?;
        let f = cfg.features;
        let tun = Tun::open(&cfg.tun_name, f.queues, f.offload)?;
        let sock = UdpSock::bind(cfg.local, f.udp_gso, f.udp_gro)?;
        let active = Active {
            ifindex: tun.info.ifindex,
            queues: tun.queues.len(),
            multiqueue: tun.info.multiqueue,
            batching: f.batching,
            vnet_hdr: tun.info.vnet_hdr,
            tso: tun.info.tso,
            uso: tun.info.uso,
            udp_gso: sock.info.gso,
            udp_gro: sock.info.gro,
            rcvbuf: sock.info.rcvbuf,
            sndbuf: sock.info.sndbuf,
        };
        tracing::info!(device = %cfg.tun_name, ifindex = active.ifindex, queues = active.queues,
            multiqueue = active.multiqueue, batching = active.batching, vnet_hdr = active.vnet_hdr,
            tso = active.tso, uso = active.uso, udp_gso = active.udp_gso, udp_gro = active.udp_gro,
            rcvbuf = active.rcvbuf, sndbuf = active.sndbuf, local = %cfg.local, "udp datapath started");
        let mut engine = Engine {
            topo,
            active,
            stop: Arc::new(Stop::new().map_err(|source| UdpError::Thread { source })?),
            peers: Arc::new(PeerCell::default()),
            stats: Vec::new(),
            threads: Vec::new(),
        };
        let sock = Arc::new(sock.file);
        let mode = Mode {
            batched: f.batching,
            vnet: tun.info.vnet_hdr,
            gso: active.udp_gso,
        };
        let queues: Vec<Arc<File>> = tun.queues.into_iter().map(Arc::new).collect();
        for (q, queue) in queues.iter().enumerate() {
            let (queue, sock) = (queue.clone(), sock.clone());
            engine.spawn(&cfg, mode, format!("udp-tx-{q}"), move |ctx| {
                tx::run(ctx, queue, sock)
            })?;
        }
        // One receiver: all traffic between two nodes is one outer 5-tuple,
        // and two threads on one socket would reorder a TCP stream.
        engine.spawn(&cfg, mode, "udp-rx".into(), move |ctx| {
            rx::run(ctx, queues, sock)
        })?;
        Ok(engine)
    }

    fn spawn(
        &mut self,
        cfg: &EngineConfig,
        mode: Mode,
        name: String,
        body: impl FnOnce(Ctx) + Send + 'static,
    ) -> Result<(), UdpError> {
        let stats = Arc::new(Shared::default());
        self.stats.push(stats.clone());
        let ctx = Ctx {
            topo: self.topo,
            tun_addr: self.topo.own_subnet.network(),
            port: cfg.local.port(),
            mtu: cfg.mtu as usize,
            mode,
            stop: self.stop.clone(),
            peers: self.peers.clone(),
            stats,
        };
        let handle = std::thread::Builder::new()
            .name(name)
            .spawn(move || body(ctx))
            .map_err(|source| UdpError::Thread { source })?;
        self.threads.push(handle);
        Ok(())
    }

    /// Replaces the peer table (subnet -> public IP) while traffic
    /// flows. Leases that cannot be routed are left out and returned.
    pub fn set_peers(
        &self,
        peers: impl IntoIterator<Item = (Ipv4Net, Ipv4Addr)>,
    ) -> Vec<PeerRejected> {
        let (table, rejected) = PeerTable::build(&self.topo, peers);
        for r in &rejected {
            tracing::warn!(subnet = %r.subnet, reason = r.reason, "lease not routed by the udp backend");
        }
        tracing::info!(peers = table.len(), "udp peer table updated");
        self.peers.publish(table);
        rejected
    }

    pub fn stats(&self) -> StatsSnapshot {
        StatsSnapshot::sum(&self.stats)
    }

    /// False once a worker thread ended on its own (its TUN queue or the
    /// socket failed, e.g. flannel0 was deleted): stop and start again.
    pub fn healthy(&self) -> bool {
        !self.threads.iter().any(|t| t.is_finished())
    }

    pub fn active(&self) -> Active {
        self.active
    }

    /// Stops the threads and closes the fds; the TUN device stays.
    pub fn stop(mut self) {
        self.shutdown();
    }

    fn shutdown(&mut self) {
        self.stop.set();
        for t in self.threads.drain(..) {
            if t.join().is_err() {
                tracing::error!("udp datapath thread panicked");
            }
        }
    }
}

impl Drop for Engine {
    fn drop(&mut self) {
        self.shutdown();
    }
}
