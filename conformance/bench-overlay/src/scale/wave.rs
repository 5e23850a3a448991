//! A wave of joins: N synthetic leases written in transactions, and the
//! moment the node's kernel holds all 3N objects; and the kernel floor,
//! the same 3N objects written by the bench directly.

use crate::error::{BenchError, Result};
use crate::monitor::{Event, Monitor};
use crate::ns::{block_on_in, rtnetlink_in};
use crate::objects::{add_pipelined, count_present, make_vtep, VtepSpec, VTEP};
use crate::peers::{self, Peer};
use felt_cluster::{underlay_ip, Cluster, Netns, ETCD_PREFIX};
use ipnet::Ipv4Net;
use std::collections::{HashMap, HashSet};
use std::net::Ipv4Addr;
use std::path::Path;
use std::time::{Duration, Instant};

/// Requests in flight when the floor writes its objects.
pub const IN_FLIGHT: usize = 64;

/// When the wave's writes started and when the last one was acknowledged.
#[derive(Debug, Clone, Copy)]
pub struct Writes {
    pub started: Instant,
    pub last_ack: Instant,
}

/// Writes `peers` in transactions of `batch` puts, one after another.
pub fn write(c: &Cluster, peers: &[Peer], batch: usize) -> Result<Writes> {
    let endpoint = c.etcd().endpoint().to_string();
    block_on_in(&c.underlay().path(), || async move {
        let mut client = peers::connect(&endpoint).await?;
        let lease = peers::grant(&mut client, 86_400).await?;
        let started = Instant::now();
        let mut last_ack = started;
        for chunk in peers.chunks(batch.max(1)) {
            last_ack = peers::put_txn(&mut client, ETCD_PREFIX, chunk, lease).await?;
        }
        Ok(Writes { started, last_ack })
    })
}

/// Puts one lease again with a new public IP; returns the ack time.
pub fn update(c: &Cluster, peer: &Peer) -> Result<Instant> {
    let endpoint = c.etcd().endpoint().to_string();
    block_on_in(&c.underlay().path(), || async move {
        let mut client = peers::connect(&endpoint).await?;
        let lease = peers::grant(&mut client, 86_400).await?;
        peers::put(&mut client, ETCD_PREFIX, peer, lease).await
    })
}

/// What is still missing on the node, by object.
pub struct Pending {
    routes: HashSet<Ipv4Net>,
    neigh: HashMap<Ipv4Addr, [u8; 6]>,
    fdb: HashMap<[u8; 6], Ipv4Addr>,
    dev: u32,
}

impl Pending {
    pub fn new(peers: &[Peer], dev: u32) -> Self {
        Pending {
            routes: peers.iter().map(|p| p.subnet).collect(),
            neigh: peers.iter().map(|p| (p.gateway(), p.mac)).collect(),
            fdb: peers.iter().map(|p| (p.mac, p.public_ip)).collect(),
            dev,
        }
    }

    pub fn left(&self) -> usize {
        self.routes.len() + self.neigh.len() + self.fdb.len()
    }

    /// Takes in one notification; true once nothing is missing.
    pub fn see(&mut self, e: &Event) -> bool {
        match e {
            Event::Route {
                new: true,
                dst,
                oif,
                ..
            } if *oif == self.dev => {
                self.routes.remove(dst);
            }
            Event::Neigh {
                new: true,
                ifindex,
                ip,
                mac: Some(mac),
                ..
            } if *ifindex == self.dev && self.neigh.get(ip) == Some(mac) => {
                self.neigh.remove(ip);
            }
            Event::Fdb {
                new: true,
                ifindex,
                mac,
                dst: Some(dst),
                ..
            } if *ifindex == self.dev && self.fdb.get(mac) == Some(dst) => {
                self.fdb.remove(mac);
            }
            _ => {}
        }
        self.left() == 0
    }
}

/// Waits until every object of `pending` has been announced; the arrival
/// time of the last one, or `None` at the timeout.
pub fn wait_all(monitor: &Monitor, pending: &mut Pending, timeout: Duration) -> Option<Instant> {
    crate::monitor::wait_events(monitor, timeout, |e| pending.see(e))
}

/// How many of `peers` are completely programmed in namespace `ns`.
pub fn present(ns: &Path, dev: u32, peers: &[Peer]) -> Result<usize> {
    block_on_in(ns, || async move {
        let h = rtnetlink_in(ns)?;
        count_present(&h, dev, peers).await
    })
}

/// The kernel floor: a scratch node namespace with its own VTEP, all 3N
/// objects written with `IN_FLIGHT` requests outstanding. Returns how
/// long the writes took (checked complete afterwards, untimed), and the
/// namespace: the caller keeps it until the end of the size, so the
/// kernel's cleanup of 3N objects never runs during another measurement.
pub fn floor(c: &Cluster, peers: &[Peer], run: u8) -> Result<(Duration, Netns)> {
    let octet = 240 + run;
    let ns: Netns = c.attach_host(&format!("floor{run}"), octet)?;
    let dev = make_vtep(
        &ns,
        &VtepSpec {
            local: underlay_ip(octet),
            mtu: 1450,
            mac: peers::mac_for(0xf2, u32::from(run)),
            addr: None,
        },
    )?;
    let path = ns.path();
    let took = block_on_in(&path, || async {
        let h = rtnetlink_in(&path)?;
        let start = Instant::now();
        add_pipelined(&h, dev, peers, IN_FLIGHT).await?;
        Ok(start.elapsed())
    })?;
    let done = present(&path, dev, peers)?;
    if done != peers.len() {
        return Err(BenchError::Setup(format!(
            "floor: only {done} of {} peers complete in {VTEP}",
            peers.len()
        )));
    }
    Ok((took, ns))
}
