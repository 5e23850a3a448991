//! ADD: IPAM, bridge, veth, container addresses and routes; any failure
//! half-way undoes everything this ADD did (the [`Add`] guard).

use super::open_pod_netns;
use crate::error::{Error, Result};
use crate::ipam::{allocator, range::RangeSet, store};
use crate::link::addr::{add_addr, add_route};
use crate::link::netlink::{Link, Socket};
use crate::link::{bridge, random_mac, sysctl, veth};
use crate::protocol::config::{self, parse_mac, NetConf, Plan};
use crate::protocol::env::Env;
use crate::protocol::result::{self, format_mac, Added, Iface};
use ipnet::IpNet;
use serde_json::Value;
use std::fs::File;
use std::net::IpAddr;
use std::os::fd::AsRawFd;
use std::path::Path;

/// The env var naming the step after which ADD fails (rollback tests).
pub const FAIL_AFTER_VAR: &str = "FELT_TEST_FAIL_AFTER";

/// Upper bound on waiting for the datapath to carry the pod's first packet
/// (see veth::wait_ready); normally reached in well under a millisecond,
/// but a non-urgent linkwatch event may take up to a second.
const READY_BOUND: std::time::Duration = std::time::Duration::from_secs(1);

pub fn run(conf: &NetConf, env: &Env) -> Result<Value> {
    let subnet_env = config::read_subnet_env(conf)?;
    let plan = config::resolve(conf, subnet_env.as_ref())?;
    // runtimeConfig.mac wins over CNI_ARGS MAC=, as in the bridge plugin.
    let mac = match (conf.mac.as_deref(), env.args.mac.as_deref()) {
        (Some(m), _) => Some(parse_mac(m).map_err(Error::InvalidConfig)?),
        (None, Some(m)) => {
            Some(parse_mac(m).map_err(|e| Error::InvalidEnv(format!("CNI_ARGS: MAC: {e}")))?)
        }
        (None, None) => None,
    };
    let requested = requested_per_set(&plan.ranges, conf, env)?;
    let netns_path = env
        .netns
        .as_deref()
        .ok_or_else(|| Error::InvalidEnv("CNI_NETNS is required".into()))?;
    let netns = open_pod_netns(netns_path)?;
    let host = Socket::open()?;
    // A socket keeps acting on the netns it was opened in: one per netns.
    let pod = Socket::open_in(&netns, netns_path)?;
    let mut add = Add {
        conf,
        env,
        plan: &plan,
        netns,
        netns_path,
        host,
        pod,
        fail_after: std::env::var(FAIL_AFTER_VAR).ok(),
        allocated: Vec::new(),
        host_veth: None,
        done: false,
    };
    let added = add.execute(mac.as_deref(), &requested)?;
    add.done = true;
    Ok(result::build(
        &conf.cni_version,
        conf.prev_result.as_ref(),
        &added,
    ))
}

/// Requested addresses (runtimeConfig, args, CNI_ARGS IP=) by range set.
fn requested_per_set(sets: &[RangeSet], conf: &NetConf, env: &Env) -> Result<Vec<Option<IpAddr>>> {
    let mut out = vec![None; sets.len()];
    for ip in conf.requested_ips.iter().chain(env.args.ips.iter()) {
        let Some(i) = sets.iter().position(|s| s.range_of(*ip).is_some()) else {
            return Err(Error::IpUnavailable(format!(
                "requested IP address {ip} is not in any range set ({})",
                sets.iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
                    .join(" ")
            )));
        };
        out[i] = Some(*ip);
    }
    Ok(out)
}

/// One ADD in progress; dropping it before `done` rolls back.
struct Add<'a> {
    conf: &'a NetConf,
    env: &'a Env,
    plan: &'a Plan,
    netns: File,
    netns_path: &'a Path,
    host: Socket,
    pod: Socket,
    fail_after: Option<String>,
    allocated: Vec<(IpNet, IpAddr)>,
    host_veth: Option<String>,
    done: bool,
}

impl Add<'_> {
    /// Test hook: fail right after `step` when FELT_TEST_FAIL_AFTER names it.
    fn step_done(&self, step: &str) -> Result<()> {
        match &self.fail_after {
            Some(s) if s == step => Err(Error::TestFault(step.to_string())),
            _ => Ok(()),
        }
    }

    /// CNI_IFNAME already in the pod netns belongs to a running pod: fail
    /// without touching it.
    fn ensure_no_pod_iface(&mut self) -> Result<()> {
        if self.pod.get_link(&self.env.ifname)?.is_some() {
            return Err(Error::IfaceExists {
                ifname: self.env.ifname.clone(),
                netns: self.netns_path.display().to_string(),
            });
        }
        Ok(())
    }

    fn execute(&mut self, mac: Option<&[u8]>, requested: &[Option<IpAddr>]) -> Result<Added> {
        // Checked before anything is touched.
        self.ensure_no_pod_iface()?;
        self.allocate(requested)?;
        self.step_done("ipam")?;
        let br = self.ensure_bridge()?;
        self.step_done("bridge")?;
        let host_mac = random_mac();
        let host_name = self.create_veth(&host_mac, mac, br.index)?;
        self.step_done("veth")?;
        if self.conf.hairpin {
            veth::set_hairpin(&mut self.host, &host_name, true)?;
        }
        self.step_done("hairpin")?;
        let container_mac = self.configure_container()?;
        let path = veth::Path {
            bridge: &br.name,
            host_veth: &host_name,
            pod_if: &self.env.ifname,
        };
        if !veth::wait_ready(&mut self.host, &mut self.pod, &path, READY_BOUND)? {
            debug!("{host_name}: datapath not ready after {READY_BOUND:?}, continuing");
        }
        self.node_sysctls()?;
        self.step_done("sysctl")?;
        if self.plan.ip_masq {
            crate::masq::ensure(&self.conf.name, &self.plan.ranges, &self.plan.cluster)?;
        }
        let added = Added {
            interfaces: [
                Iface {
                    name: br.name.clone(),
                    mac: br.mac.as_deref().map(format_mac).unwrap_or_default(),
                    sandbox: None,
                },
                Iface {
                    name: host_name,
                    mac: format_mac(&host_mac),
                    sandbox: None,
                },
                Iface {
                    name: self.env.ifname.clone(),
                    mac: container_mac,
                    sandbox: Some(self.netns_path.display().to_string()),
                },
            ],
            ips: self.allocated.clone(),
            routes: self.plan.routes.clone(),
            dns: self.conf.dns.clone(),
        };
        self.step_done("result")?;
        Ok(added)
    }

    /// The node bridge, up, carrying the gateway of every range set.
    fn ensure_bridge(&mut self) -> Result<Link> {
        let br = bridge::ensure_bridge(&mut self.host, &self.conf.bridge, self.plan.mtu)?;
        let dir = self.conf.data_dir.join(&self.conf.name);
        let in_use = |old: &IpNet| -> Result<bool> {
            Ok(store::list_entries(&dir)?
                .iter()
                .any(|e| old.contains(&e.ip)))
        };
        for set in &self.plan.ranges {
            if let Some(first) = set.0.first() {
                bridge::ensure_gateway(&mut self.host, &br, &first.gateway_net(), &in_use)?;
            }
        }
        Ok(br)
    }

    fn allocate(&mut self, requested: &[Option<IpAddr>]) -> Result<()> {
        let store = store::Store::open(&self.conf.data_dir, &self.conf.name)?;
        let owner = (self.env.container_id.as_str(), self.env.ifname.as_str());
        for (i, set) in self.plan.ranges.iter().enumerate() {
            let ip =
                allocator::allocate(&store, i, set, owner, requested.get(i).copied().flatten())?;
            let range = set
                .range_of(ip)
                .ok_or_else(|| Error::IpUnavailable(format!("{ip} outside {set}")))?;
            let net = IpNet::new(ip, range.subnet.prefix_len())
                .map_err(|e| Error::InvalidConfig(e.to_string()))?;
            debug!("allocated {net} for {}/{}", owner.0, owner.1);
            self.allocated.push((net, range.gateway));
        }
        Ok(())
    }

    /// Creates the pair; a clash on the random host name is retried.
    fn create_veth(
        &mut self,
        host_mac: &[u8],
        mac: Option<&[u8]>,
        bridge_index: u32,
    ) -> Result<String> {
        let mut attempt = 0;
        loop {
            let host_name = veth::random_host_name();
            let pair = veth::Pair {
                host_name: &host_name,
                host_mac,
                peer_name: &self.env.ifname,
                peer_mac: mac,
                peer_netns: self.netns.as_raw_fd(),
                bridge_index,
                mtu: self.plan.mtu,
            };
            match veth::create_pair(&mut self.host, &pair) {
                Ok(()) => {
                    self.host_veth = Some(host_name.clone());
                    return Ok(host_name);
                }
                Err(e) if e.is_exists() && attempt < 3 => {
                    self.ensure_no_pod_iface()?;
                    attempt += 1;
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// Addresses, link up + arp_notify, routes inside the pod; returns the
    /// container MAC.
    fn configure_container(&mut self) -> Result<String> {
        let ifname = self.env.ifname.clone();
        let link = self.pod.get_link(&ifname)?.ok_or_else(|| Error::NotFound {
            what: format!(
                "{ifname} in {} after creating it",
                self.netns_path.display()
            ),
        })?;
        for (net, _) in &self.allocated {
            add_addr(
                &mut self.pod,
                link.index,
                net,
                &format!("add {net} to {ifname}"),
            )?;
        }
        self.step_done("addresses")?;
        let what = format!("set {ifname} up with arp_notify=1");
        veth::set_up_with_arp_notify(&mut self.pod, link.index, &what)?;
        for route in &self.plan.routes {
            add_route(&mut self.pod, route, Some(link.index))?;
        }
        self.step_done("routes")?;
        Ok(link.mac.as_deref().map(format_mac).unwrap_or_default())
    }

    fn node_sysctls(&self) -> Result<()> {
        if self.plan.ranges.iter().any(RangeSet::is_ipv4) {
            sysctl::ensure("net.ipv4.ip_forward", "1")?;
        }
        if self.plan.ranges.iter().any(|s| !s.is_ipv4()) {
            sysctl::ensure("net.ipv6.conf.all.forwarding", "1")?;
        }
        Ok(())
    }

    /// Undo in reverse: the veth (both ends go with the host end), then
    /// the addresses this ADD reserved. Keeps going past errors.
    fn rollback(&mut self) {
        if let Some(name) = self.host_veth.take() {
            if let Err(e) = veth::delete_by_name(&mut self.host, &name) {
                eprintln!("felt: rollback: {e}");
            }
        }
        if self.allocated.is_empty() {
            return;
        }
        match store::Store::open(&self.conf.data_dir, &self.conf.name) {
            Ok(store) => {
                for (net, _) in self.allocated.drain(..) {
                    if let Err(e) = store.release(net.addr()) {
                        eprintln!("felt: rollback: {e}");
                    }
                }
                // Without an entry, DEL falls back to reading every file.
                if let Err(e) = store.forget_owner(&self.env.container_id, &self.env.ifname) {
                    eprintln!("felt: rollback: {e}");
                }
            }
            Err(e) => eprintln!("felt: rollback: {e}"),
        }
    }
}

impl Drop for Add<'_> {
    fn drop(&mut self) {
        if !self.done {
            self.rollback();
        }
    }
}
