//! CHECK: compares the kernel and the IPAM store with prevResult and lists
//! every difference.

use super::open_pod_netns;
use crate::error::{Error, Result};
use crate::ipam::store;
use crate::link::addr::{list_addrs, list_routes};
use crate::link::netlink::Socket;
use crate::protocol::config::NetConf;
use crate::protocol::env::Env;
use crate::protocol::result::{self, format_mac, Parsed};
use crate::protocol::version;

pub fn run(conf: &NetConf, env: &Env) -> Result<()> {
    version::require(&conf.cni_version, "0.4.0", "CHECK")?;
    let prev = conf.prev_result.as_ref().ok_or_else(|| {
        Error::InvalidConfig("CHECK needs prevResult in the network configuration".into())
    })?;
    let prev = result::parse(prev).map_err(Error::InvalidConfig)?;
    let Some(idx) = prev
        .interfaces
        .iter()
        .position(|i| i.name == env.ifname && i.sandbox.is_some())
    else {
        return Err(Error::CheckFailed(format!(
            "prevResult has no interface {} with a sandbox",
            env.ifname
        )));
    };
    let path = env
        .netns
        .as_deref()
        .ok_or_else(|| Error::InvalidEnv("CNI_NETNS is required".into()))?;
    let netns = open_pod_netns(path)?;
    let mut diffs = Vec::new();
    let mut pod = Socket::open_in(&netns, path)?;
    check_container(&mut pod, &prev, idx, &mut diffs)?;
    let mut host = Socket::open()?;
    check_host(&mut host, conf, &prev, idx, &mut diffs)?;
    check_ipam(conf, env, &prev, idx, &mut diffs)?;
    if diffs.is_empty() {
        Ok(())
    } else {
        Err(Error::CheckFailed(format!(
            "CHECK found differences: {}",
            diffs.join("; ")
        )))
    }
}

fn check_container(
    pod: &mut Socket,
    prev: &Parsed,
    idx: usize,
    diffs: &mut Vec<String>,
) -> Result<()> {
    let want = &prev.interfaces[idx];
    let Some(link) = pod.get_link(&want.name)? else {
        diffs.push(format!(
            "interface {} not found in the container",
            want.name
        ));
        return Ok(());
    };
    let mac = link.mac.as_deref().map(format_mac).unwrap_or_default();
    if !want.mac.is_empty() && mac != want.mac {
        diffs.push(format!(
            "interface {} has MAC {mac}, prevResult says {}",
            want.name, want.mac
        ));
    }
    if !link.up {
        diffs.push(format!("interface {} is down", want.name));
    }
    let have = list_addrs(pod, link.index)?;
    for (net, _) in prev.ips.iter().filter(|(_, i)| *i == Some(idx)) {
        if !have.contains(net) {
            diffs.push(format!("address {net} missing on {}", want.name));
        }
    }
    let routes = list_routes(pod)?;
    for r in &prev.routes {
        if !routes
            .iter()
            .any(|k| k.dst == r.dst && (r.gw.is_none() || k.gw == r.gw))
        {
            let via = r.gw.map(|g| format!(" via {g}")).unwrap_or_default();
            diffs.push(format!("route {}{via} missing in the container", r.dst));
        }
    }
    Ok(())
}

/// The host veth is the interface listed just before the container one
/// (felt's order: bridge, host veth, container veth).
fn check_host(
    host: &mut Socket,
    conf: &NetConf,
    prev: &Parsed,
    idx: usize,
    diffs: &mut Vec<String>,
) -> Result<()> {
    let Some(bridge) = host.get_link(&conf.bridge)? else {
        diffs.push(format!("bridge {} not found", conf.bridge));
        return Ok(());
    };
    let Some(veth) = idx
        .checked_sub(1)
        .and_then(|i| prev.interfaces.get(i))
        .filter(|i| i.sandbox.is_none())
    else {
        return Ok(());
    };
    match host.get_link(&veth.name)? {
        None => diffs.push(format!("host veth {} not found", veth.name)),
        Some(link) if link.master != Some(bridge.index) => diffs.push(format!(
            "host veth {} is not attached to bridge {}",
            veth.name, conf.bridge
        )),
        Some(_) => {}
    }
    Ok(())
}

fn check_ipam(
    conf: &NetConf,
    env: &Env,
    prev: &Parsed,
    idx: usize,
    diffs: &mut Vec<String>,
) -> Result<()> {
    let entries = store::list_entries(&conf.data_dir.join(&conf.name))?;
    for (net, _) in prev.ips.iter().filter(|(_, i)| *i == Some(idx)) {
        if !entries
            .iter()
            .any(|e| e.ip == net.addr() && e.matches(&env.container_id, &env.ifname))
        {
            diffs.push(format!(
                "no IPAM reservation of {} for {}/{}",
                net.addr(),
                env.container_id,
                env.ifname
            ));
        }
    }
    Ok(())
}
