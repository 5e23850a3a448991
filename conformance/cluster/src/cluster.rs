//! A whole cluster on one machine:
//!
//! ```text
//!   underlay netns: bridge br0 192.168.100.1/24, etcd on :2379
//!      |-- veth -- node1 netns: eth0 192.168.100.11, overlayd, cni0, pods
//!      |-- veth -- node2 netns: eth0 192.168.100.12, ...
//!      `-- veth -- extra hosts (e.g. a hand-made flannel node)
//! ```
//! Everything is torn down on drop, also when a test fails; the logs of
//! every daemon are printed first in that case.

use crate::error::{io_err, Result};
use crate::etcd::Etcd;
use crate::kernel::{KernelState, Peer};
use crate::netns::{Naming, Netns};
use crate::node::{Node, OverlaydArgs};
use crate::pod::{ping_from, result_ipv4, run_cni, Ping, Pod};
use crate::process::{locate_binary, require_tool, tail};
use crate::wait::wait_for;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

/// The cluster network of every test and of the demo.
pub const NETWORK: &str = "10.244.0.0/16";
/// flanneld's default etcd prefix.
pub const ETCD_PREFIX: &str = "/coreos.com/network";
/// The underlay bridge's address; nodes get .11, .12, ...
pub const UNDERLAY_GW: Ipv4Addr = Ipv4Addr::new(192, 168, 100, 1);
const UNDERLAY_BRIDGE: &str = "br0";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Vxlan,
    HostGw,
    Udp,
}

impl Backend {
    /// flannel's spelling in net-conf.json.
    pub fn name(self) -> &'static str {
        match self {
            Backend::Vxlan => "vxlan",
            Backend::HostGw => "host-gw",
            Backend::Udp => "udp",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "vxlan" => Some(Backend::Vxlan),
            "host-gw" => Some(Backend::HostGw),
            "udp" => Some(Backend::Udp),
            _ => None,
        }
    }
}

/// flannel's net-conf.json for `backend`.
pub fn net_conf(backend: Backend) -> String {
    serde_json::json!({
        "Network": NETWORK,
        "SubnetLen": 24,
        "Backend": {"Type": backend.name()},
    })
    .to_string()
}

/// Underlay address of host number `octet`.
pub fn underlay_ip(octet: u8) -> Ipv4Addr {
    let [a, b, c, _] = UNDERLAY_GW.octets();
    Ipv4Addr::new(a, b, c, octet)
}

/// A temp directory removed on drop (after the daemons writing to it).
struct TempDir(PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

pub struct Cluster {
    // Drop order is declaration order: pods and nodes (their daemons)
    // first, etcd, then the underlay, then the files.
    pub pods: Vec<Pod>,
    pub nodes: Vec<Node>,
    hosts: Vec<Netns>,
    etcd: Etcd,
    underlay: Netns,
    dir: TempDir,
    naming: Naming,
    backend: Backend,
    felt: PathBuf,
    overlayd: OverlaydArgs,
}

impl Cluster {
    /// Underlay + etcd seeded with `net_conf` (default: flannel's config
    /// for `backend`). No nodes yet.
    pub fn start(naming: Naming, backend: Backend, net_conf_json: Option<&str>) -> Result<Self> {
        Self::start_with_etcd_flags(naming, backend, net_conf_json, &[])
    }

    /// [`Cluster::start`] with extra flags for etcd (see
    /// [`Etcd::start_with_flags`]).
    pub fn start_with_etcd_flags(
        naming: Naming,
        backend: Backend,
        net_conf_json: Option<&str>,
        etcd_flags: &[String],
    ) -> Result<Self> {
        for tool in ["ip", "bridge", "ping", "sysctl"] {
            require_tool(tool)?;
        }
        let felt = locate_binary("felt", "FELT_BIN")?;
        let overlayd_bin = locate_binary("overlayd", "OVERLAYD_BIN")?;
        let path = std::env::temp_dir().join(naming.name("cluster"));
        std::fs::create_dir_all(&path)
            .map_err(io_err(format!("cannot create {}", path.display())))?;
        let dir = TempDir(path);
        let underlay = Netns::create(&naming.name("underlay"))?;
        // A fixed MAC: by default a bridge takes its lowest port MAC, so the
        // gateway's MAC would change under the nodes' ARP caches as they join.
        underlay.ip(&[
            "link",
            "add",
            UNDERLAY_BRIDGE,
            "address",
            "02:fe:17:00:00:01",
            "type",
            "bridge",
        ])?;
        underlay.ip(&[
            "addr",
            "add",
            &format!("{UNDERLAY_GW}/24"),
            "dev",
            UNDERLAY_BRIDGE,
        ])?;
        underlay.ip(&["link", "set", UNDERLAY_BRIDGE, "up"])?;
        let etcd = Etcd::start_with_flags(&underlay, UNDERLAY_GW, &dir.0, etcd_flags)?;
        let conf = net_conf_json.map_or_else(|| net_conf(backend), str::to_string);
        etcd.put(&format!("{ETCD_PREFIX}/config"), &conf)?;
        let overlayd = OverlaydArgs {
            binary: overlayd_bin,
            etcd_endpoint: etcd.endpoint().to_string(),
            etcd_prefix: ETCD_PREFIX.to_string(),
            common: Vec::new(),
        };
        Ok(Cluster {
            pods: Vec::new(),
            nodes: Vec::new(),
            hosts: Vec::new(),
            etcd,
            underlay,
            dir,
            naming,
            backend,
            felt,
            overlayd,
        })
    }

    pub fn etcd(&self) -> &Etcd {
        &self.etcd
    }

    /// For outages: stop and restart etcd.
    pub fn etcd_mut(&mut self) -> &mut Etcd {
        &mut self.etcd
    }

    pub fn backend(&self) -> Backend {
        self.backend
    }

    pub fn dir(&self) -> &Path {
        &self.dir.0
    }

    pub fn naming(&self) -> &Naming {
        &self.naming
    }

    pub fn underlay(&self) -> &Netns {
        &self.underlay
    }

    /// A namespace plugged into the underlay bridge with `eth0` =
    /// 192.168.100.<octet>/24, forwarding on (as on any k8s node).
    pub fn attach_host(&self, tag: &str, octet: u8) -> Result<Netns> {
        let ns = Netns::create(&self.naming.name(tag))?;
        let port = format!("v{octet}");
        self.underlay.ip(&[
            "link",
            "add",
            &port,
            "type",
            "veth",
            "peer",
            "name",
            "eth0",
            "netns",
            ns.name(),
        ])?;
        self.underlay
            .ip(&["link", "set", &port, "master", UNDERLAY_BRIDGE, "up"])?;
        let addr = format!("{}/24", underlay_ip(octet));
        ns.ip(&["addr", "add", &addr, "dev", "eth0"])?;
        ns.ip(&["link", "set", "eth0", "up"])?;
        ns.sysctl("net.ipv4.ip_forward", "1")?;
        Ok(ns)
    }

    /// An extra host without overlayd (e.g. a flannel node built by hand);
    /// returns its index for [`Cluster::host`].
    pub fn add_host(&mut self, tag: &str, octet: u8) -> Result<usize> {
        let ns = self.attach_host(tag, octet)?;
        self.hosts.push(ns);
        Ok(self.hosts.len() - 1)
    }

    pub fn host(&self, i: usize) -> Option<&Netns> {
        self.hosts.get(i)
    }

    /// A node namespace on the underlay, overlayd not started yet.
    pub fn add_node(&mut self) -> Result<usize> {
        let i = self.nodes.len();
        let octet = u8::try_from(11 + i)
            .map_err(|_| crate::HarnessError::Setup("too many nodes".into()))?;
        let name = format!("node{}", i + 1);
        let ns = self.attach_host(&format!("n{}", i + 1), octet)?;
        let dir = self.dir.0.join(&name);
        std::fs::create_dir_all(&dir)
            .map_err(io_err(format!("cannot create {}", dir.display())))?;
        self.nodes
            .push(Node::new(name, ns, underlay_ip(octet), dir));
        Ok(i)
    }

    /// Flags every overlayd started from now on gets.
    pub fn set_overlayd_flags(&mut self, flags: &[&str]) {
        self.overlayd.common = flags.iter().map(|f| f.to_string()).collect();
    }

    /// Starts overlayd on node `i` with flanneld's flags plus `extra`.
    pub fn start_overlayd(&mut self, i: usize, extra: &[&str]) -> Result<()> {
        let args = self.overlayd.clone();
        self.node_mut(i)?.start_overlayd(&args, extra)
    }

    pub fn node_mut(&mut self, i: usize) -> Result<&mut Node> {
        self.nodes
            .get_mut(i)
            .ok_or_else(|| crate::HarnessError::Setup(format!("no node #{i}")))
    }

    /// Adds `n` nodes, starts overlayd on each and waits for every
    /// subnet.env.
    pub fn add_running_nodes(&mut self, n: usize) -> Result<Vec<usize>> {
        let mut added = Vec::new();
        for _ in 0..n {
            let i = self.add_node()?;
            self.start_overlayd(i, &[])?;
            added.push(i);
        }
        for &i in &added {
            self.node_mut(i)?
                .wait_subnet_env(SystemTime::UNIX_EPOCH, Duration::from_secs(20))?;
        }
        Ok(added)
    }

    /// Creates a pod on node `node` through `felt` ADD; returns its index.
    pub fn add_pod(&mut self, node: usize) -> Result<usize> {
        let k = self.pods.iter().filter(|p| p.node == node).count() + 1;
        let ns = Netns::create(&self.naming.name(&format!("n{}p{k}", node + 1)))?;
        let id = ns.name().to_string();
        let host = self
            .nodes
            .get(node)
            .ok_or_else(|| crate::HarnessError::Setup(format!("no node #{node}")))?;
        let result = run_cni(&self.felt, host, "ADD", &ns, &id)?;
        let ip = result_ipv4(&result)?;
        self.pods.push(Pod {
            name: format!("pod{}.{k}", node + 1),
            ns,
            ip,
            node,
            container_id: id,
        });
        Ok(self.pods.len() - 1)
    }

    /// `felt` DEL for pod `i` (the namespace stays until drop).
    pub fn del_pod(&self, i: usize) -> Result<String> {
        let pod = self
            .pods
            .get(i)
            .ok_or_else(|| crate::HarnessError::Setup(format!("no pod #{i}")))?;
        let node = self
            .nodes
            .get(pod.node)
            .ok_or_else(|| crate::HarnessError::Setup(format!("no node #{}", pod.node)))?;
        run_cni(&self.felt, node, "DEL", &pod.ns, &pod.container_id)
    }

    /// What node `i` publishes: subnet, public IP, VTEP MAC.
    pub fn peer(&self, i: usize) -> Result<Peer> {
        let node = self
            .nodes
            .get(i)
            .ok_or_else(|| crate::HarnessError::Setup(format!("no node #{i}")))?;
        Ok(Peer {
            subnet: node.subnet()?,
            public_ip: node.ip,
            vtep_mac: node.kernel()?.vtep_mac(),
        })
    }

    /// Everything wrong in node `at`'s kernel about peer `peer`.
    pub fn peer_problems(&self, at: usize, peer: &Peer) -> Result<Vec<String>> {
        let node = self
            .nodes
            .get(at)
            .ok_or_else(|| crate::HarnessError::Setup(format!("no node #{at}")))?;
        Ok(self.problems_in(&node.kernel()?, peer))
    }

    fn problems_in(&self, state: &KernelState, peer: &Peer) -> Vec<String> {
        match self.backend {
            Backend::Vxlan => state.vxlan_peer_problems(peer),
            Backend::HostGw => state.hostgw_peer_problems(peer, "eth0"),
            // Peers live in overlayd's userspace table; the kernel holds
            // one route for the whole network to flannel0.
            Backend::Udp => state.udp_problems(NETWORK),
        }
    }

    /// Waits until every node in `nodes` has correct entries for every
    /// other one; returns how long that took.
    pub fn wait_mesh(&self, nodes: &[usize], timeout: Duration) -> Result<Duration> {
        let mut peers = Vec::new();
        for &i in nodes {
            peers.push((i, self.peer(i)?));
        }
        let mut last = Vec::new();
        let waited = wait_for("a full mesh of routes", timeout, || {
            last.clear();
            for &at in nodes {
                // One snapshot per node and poll: checks are pure.
                let state = match self.nodes.get(at) {
                    Some(n) => n.kernel()?,
                    None => return Err(crate::HarnessError::Setup(format!("no node #{at}"))),
                };
                for (i, peer) in &peers {
                    if *i != at {
                        for p in self.problems_in(&state, peer) {
                            last.push(format!("node{}: {p}", at + 1));
                        }
                    }
                }
                if self.backend == Backend::Udp {
                    last.extend(self.udp_table_problem(at, nodes.len() - 1)?);
                }
            }
            Ok(last.is_empty())
        });
        waited.map_err(|e| crate::HarnessError::Setup(format!("{e}: {}", last.join("; "))))
    }

    /// Whether node `at`'s udp peer table (its `felt_peers` metric) holds
    /// at least `want` peers.
    fn udp_table_problem(&self, at: usize, want: usize) -> Result<Option<String>> {
        let node = self
            .nodes
            .get(at)
            .ok_or_else(|| crate::HarnessError::Setup(format!("no node #{at}")))?;
        let have = node.metric("felt_peers{backend=\"udp\"}").unwrap_or(0.0);
        Ok((have < want as f64)
            .then(|| format!("node{}: udp peer table has {have} of {want}", at + 1)))
    }

    /// Pings every pod from every pod (in parallel); `[from][to]`.
    pub fn ping_matrix(&self, wait_secs: u32) -> Vec<Vec<Result<Ping>>> {
        std::thread::scope(|s| {
            let rows: Vec<_> = self
                .pods
                .iter()
                .map(|from| {
                    let cols: Vec<_> = self
                        .pods
                        .iter()
                        .map(|to| s.spawn(move || from.ping(to.ip, wait_secs)))
                        .collect();
                    cols
                })
                .collect();
            rows.into_iter()
                .map(|cols| {
                    cols.into_iter()
                        .map(|h| {
                            h.join().unwrap_or_else(|_| {
                                Err(crate::HarnessError::Setup("ping thread panicked".into()))
                            })
                        })
                        .collect()
                })
                .collect()
        })
    }

    /// Pings `to` from namespace `from` (pod or host).
    pub fn ping(&self, from: &Netns, to: Ipv4Addr) -> Result<Ping> {
        ping_from(from, to, 2)
    }

    /// The tails of every daemon log, for failure reports.
    pub fn logs(&self) -> String {
        let mut out = String::new();
        for n in &self.nodes {
            out.push_str(&format!(
                "----- overlayd on {} ({}) -----\n{}\n",
                n.name,
                n.overlayd_log_path().display(),
                tail(&n.overlayd_log(), 60)
            ));
        }
        out.push_str(&format!(
            "----- etcd -----\n{}\n",
            tail(&self.etcd.log(), 20)
        ));
        out
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "=== cluster {} failed; daemon logs ===\n{}",
                self.dir.0.display(),
                self.logs()
            );
        }
    }
}
