//! The udp backend (flannel's `Backend: {"Type": "udp"}`): a persistent
//! TUN `flannel0` carrying the node subnet's network address /32, MTU =
//! external MTU − 28, one route for the whole network to it, and the
//! userspace [`Engine`] forwarding between it and UDP port 8285 on the
//! external interface's address. Peers live in the engine's table, not in
//! the kernel: the reconciler hands them over after each pass.
//!
//! The device outlives the daemon (TUNSETPERSIST): a restart re-attaches
//! to it, so its address and route stay and traffic resumes as soon as the
//! new engine runs. A device deleted by hand or an engine whose threads
//! died is started again by the next full pass.

use super::{Engine, EngineConfig, Features, StatsSnapshot, BUCKET_LOW};
use crate::backend::{
    own_ip_problem, set_sysctl, Backend, BackendError, ExternalInterface, Prepared,
};
use crate::config::UdpConfig;
use crate::kernel::{Kernel, KernelError};
use crate::lease::Lease;
use crate::metrics::{BatchLabel, DirectionLabel, Metrics, ReasonLabel};
use crate::spec::{ObjectKind, PeerObjects, RouteSpec, Scope};
use async_trait::async_trait;
use ipnet::Ipv4Net;
use std::net::SocketAddrV4;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};

/// flannel's device name.
pub const DEVICE: &str = "flannel0";
/// Outer IPv4 + UDP header bytes.
const ENCAP_OVERHEAD: u32 = 28;

pub struct UdpBackend {
    cfg: UdpConfig,
    network: Ipv4Net,
    subnet_len: u8,
    /// Set by `prepare`.
    kernel: Option<Kernel>,
    ext: Option<ExternalInterface>,
    mtu: u32,
    engine: Arc<Mutex<Option<Engine>>>,
    /// flannel0's ifindex, 0 while it does not exist.
    ifindex: AtomicU32,
    metrics: Arc<Metrics>,
    pump: Mutex<Option<tokio::task::JoinHandle<()>>>,
}

impl UdpBackend {
    pub fn new(cfg: UdpConfig, network: Ipv4Net, subnet_len: u8, metrics: Arc<Metrics>) -> Self {
        UdpBackend {
            cfg,
            network,
            subnet_len,
            kernel: None,
            ext: None,
            mtu: 0,
            engine: Arc::new(Mutex::new(None)),
            ifindex: AtomicU32::new(0),
            metrics,
            pump: Mutex::new(None),
        }
    }

    /// Starts the engine (creating or re-attaching flannel0) unless one
    /// runs healthy already; true when it had to.
    async fn ensure_engine(&self, own: &Lease) -> Result<bool, BackendError> {
        let ext = self.ext.as_ref().ok_or(BackendError::NotPrepared)?;
        let cfg = EngineConfig {
            tun_name: DEVICE.into(),
            // flannel binds the interface's own address: a --public-ip
            // behind NAT is not an address of this host.
            local: SocketAddrV4::new(ext.iface_addr, self.cfg.port),
            own_subnet: own.subnet,
            network: self.network,
            subnet_len: self.subnet_len,
            mtu: self.mtu,
            features: Features::all(),
        };
        let slot = self.engine.clone();
        let started = tokio::task::spawn_blocking(move || {
            let mut engine = slot
                .lock()
                .map_err(|_| BackendError::Config("udp engine lock poisoned".into()))?;
            if engine.as_ref().is_some_and(Engine::healthy) {
                return Ok::<_, BackendError>(None);
            }
            if let Some(old) = engine.take() {
                tracing::warn!("the udp datapath stopped (device gone?); starting it again");
                old.stop();
            }
            let e = Engine::start(cfg).map_err(|e| BackendError::Config(e.to_string()))?;
            let index = e.active().ifindex;
            *engine = Some(e);
            Ok(Some(index))
        })
        .await
        .map_err(|e| BackendError::Config(format!("udp engine start: {e}")))??;
        if let Some(index) = started {
            self.ifindex.store(index, Ordering::SeqCst);
        }
        Ok(started.is_some())
    }
}

#[async_trait]
impl Backend for UdpBackend {
    fn backend_type(&self) -> &'static str {
        "udp"
    }

    async fn prepare(&mut self, ext: &ExternalInterface) -> Result<Prepared, BackendError> {
        self.mtu = ext
            .mtu
            .checked_sub(ENCAP_OVERHEAD)
            .filter(|m| *m >= 68)
            .ok_or_else(|| {
                BackendError::Config(format!(
                    "{} has MTU {}, too small for the udp backend",
                    ext.name, ext.mtu
                ))
            })?;
        let kernel = Kernel::connect()?;
        if let Some(link) = kernel.link_by_name(DEVICE).await? {
            self.ifindex.store(link.index, Ordering::SeqCst);
        }
        self.kernel = Some(kernel);
        self.ext = Some(ext.clone());
        // flannel's udp leases carry no BackendData.
        Ok(Prepared {
            backend_data: serde_json::Value::Null,
            mtu: self.mtu,
        })
    }

    async fn configure_own(&mut self, own: &Lease) -> Result<(), BackendError> {
        self.ensure(own).await?;
        if let Ok(mut p) = self.pump.lock() {
            if p.is_none() {
                *p = Some(tokio::spawn(pump(
                    self.engine.clone(),
                    self.metrics.clone(),
                )));
            }
        }
        Ok(())
    }

    async fn ensure(&self, own: &Lease) -> Result<Vec<ObjectKind>, BackendError> {
        let kernel = self.kernel.as_ref().ok_or(BackendError::NotPrepared)?;
        let mut fixed = Vec::new();
        let link = kernel.link_by_name(DEVICE).await?;
        if link.is_none() {
            // Deleted by hand: the engine's queues are dead with it.
            if let Ok(mut e) = self.engine.lock() {
                if let Some(old) = e.take() {
                    old.stop();
                }
            }
        }
        if self.ensure_engine(own).await? && link.is_some() {
            fixed.push(ObjectKind::Device);
        }
        let Some(link) = kernel.link_by_name(DEVICE).await? else {
            return Err(BackendError::Kernel(KernelError::NotFound {
                what: format!("link {DEVICE}"),
            }));
        };
        self.ifindex.store(link.index, Ordering::SeqCst);
        let addr = Ipv4Net::new(own.subnet.network(), 32)
            .map_err(|e| BackendError::Config(format!("own subnet {}: {e}", own.subnet)))?;
        if kernel.ensure_only_ipv4_addr(link.index, addr).await? {
            fixed.push(ObjectKind::Address);
        }
        let mut device = false;
        if link.mtu != self.mtu {
            kernel.set_mtu(link.index, self.mtu).await?;
            device = true;
        }
        if !link.up {
            kernel.set_up(link.index).await?;
            device = true;
        }
        // The ICMP net-unreachable the engine writes comes from flannel0's
        // own address; without accept_local the kernel drops it as a martian.
        device |= set_sysctl(&format!("net/ipv4/conf/{DEVICE}/accept_local"), "1")?;
        if device && !fixed.contains(&ObjectKind::Device) {
            fixed.push(ObjectKind::Device);
        }
        Ok(fixed)
    }

    fn scope(&self) -> Scope {
        let index = self.ifindex.load(Ordering::SeqCst);
        Scope {
            ext_index: self.ext.as_ref().map_or(0, |e| e.index),
            device: (index != 0).then_some(index),
            // Direct routes of a backend this node ran before are felt's.
            ext_gateway_routes: true,
        }
    }

    fn peer_objects(&self, peer: &Lease, _connected: &[Ipv4Net]) -> Result<PeerObjects, String> {
        let ext = self.ext.as_ref().ok_or("udp backend not prepared")?;
        own_ip_problem(ext, peer)?;
        // Peers are forwarded in userspace: nothing in the kernel per peer.
        Ok(PeerObjects::default())
    }

    fn base_objects(&self, _own: &Lease) -> PeerObjects {
        let index = self.ifindex.load(Ordering::SeqCst);
        if index == 0 {
            return PeerObjects::default();
        }
        PeerObjects {
            routes: vec![RouteSpec {
                dst: self.network,
                gateway: None,
                oif: index,
                onlink: false,
                metric: 0,
            }],
            ..PeerObjects::default()
        }
    }

    fn set_peers(&self, peers: &[&Lease]) {
        if let Ok(engine) = self.engine.lock() {
            if let Some(e) = engine.as_ref() {
                e.set_peers(peers.iter().map(|l| (l.subnet, l.attrs.public_ip)));
            }
        }
    }
}

/// Copies the engine's counters into the metrics once a second (the
/// engine counts per thread without locks; the exposition needs totals).
async fn pump(engine: Arc<Mutex<Option<Engine>>>, metrics: Arc<Metrics>) {
    let mut last: Vec<u64> = Vec::new();
    loop {
        tokio::time::sleep(std::time::Duration::from_secs(1)).await;
        let Some(stats) = engine
            .lock()
            .ok()
            .and_then(|e| e.as_ref().map(Engine::stats))
        else {
            continue;
        };
        let now = samples(&stats);
        for (i, (sample, value)) in now.iter().enumerate() {
            // A restarted engine counts from zero again.
            let before = last.get(i).copied().filter(|b| b <= value).unwrap_or(0);
            if *value > before {
                count(&metrics, sample, value - before);
            }
        }
        last = now.into_iter().map(|(_, v)| v).collect();
    }
}

/// Where one engine counter goes.
enum Sample {
    Packets(&'static str),
    Bytes(&'static str),
    Drop(&'static str),
    Icmp,
    Batch(&'static str, usize),
}

fn samples(s: &StatsSnapshot) -> Vec<(Sample, u64)> {
    let mut out = vec![
        (Sample::Packets("tx"), s.tx_packets),
        (Sample::Packets("rx"), s.rx_packets),
        (Sample::Bytes("tx"), s.tx_bytes),
        (Sample::Bytes("rx"), s.rx_bytes),
        (Sample::Icmp, s.icmp_unreachable),
    ];
    out.extend(s.drops().map(|(r, n)| (Sample::Drop(r.name()), n)));
    for (op, h) in [
        ("tun_read", &s.tun_read),
        ("udp_send", &s.udp_send),
        ("udp_recv", &s.udp_recv),
        ("tun_write", &s.tun_write),
    ] {
        out.extend(
            h.buckets
                .iter()
                .enumerate()
                .map(|(b, n)| (Sample::Batch(op, b), *n)),
        );
    }
    out
}

fn count(m: &Metrics, sample: &Sample, n: u64) {
    let dir = |d: &str| DirectionLabel {
        direction: d.into(),
    };
    match sample {
        Sample::Packets(d) => m.udp_packets.get_or_create(&dir(d)).inc_by(n),
        Sample::Bytes(d) => m.udp_bytes.get_or_create(&dir(d)).inc_by(n),
        Sample::Drop(r) => m
            .udp_drops
            .get_or_create(&ReasonLabel {
                reason: (*r).into(),
            })
            .inc_by(n),
        Sample::Icmp => m.udp_icmp_unreachable.inc_by(n),
        Sample::Batch(op, b) => m
            .udp_batches
            .get_or_create(&BatchLabel {
                op: (*op).into(),
                size: size_class(*b),
            })
            .inc_by(n),
    };
}

/// "1", "2-3", "4-7", ... for bucket `b` (the last one open-ended).
fn size_class(b: usize) -> String {
    let lo = BUCKET_LOW[b];
    match BUCKET_LOW.get(b + 1) {
        _ if lo == 1 => "1".into(),
        Some(next) => format!("{lo}-{}", next - 1),
        None => format!("{lo}+"),
    }
}

impl Drop for UdpBackend {
    fn drop(&mut self) {
        if let Ok(mut p) = self.pump.lock() {
            if let Some(t) = p.take() {
                t.abort();
            }
        }
    }
}
