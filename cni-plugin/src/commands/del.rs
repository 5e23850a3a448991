//! DEL: idempotent. The pod's veth goes (if its netns still exists) and
//! its addresses are released by (container ID, ifname) in every case.
//!
//! Deleting a veth costs ~20 ms in the kernel, almost all of it an
//! rcu_barrier() *after* the link has been unlisted and rtnl released. So
//! a detached child sends the delete while DEL waits for the kernel's
//! RTM_DELLINK event (sent when the link is unlisted; both ends go in one
//! batch) and returns then; the child sits out the grace period alone.

use super::join_errors;
use crate::error::{Error, Result};
use crate::ipam::store::Store;
use crate::link::{netlink::Socket, veth};
use crate::protocol::config::NetConf;
use crate::protocol::env::Env;
use felt_common::netns::{open_netns, NetnsGuard};
use netlink_packet_route::RouteNetlinkMessage;
use std::time::{Duration, Instant};

/// How long DEL waits to see the link gone before reporting failure.
const GONE_TIMEOUT: Duration = Duration::from_secs(2);

pub fn run(conf: &NetConf, env: &Env) -> Result<()> {
    let mut errors = Vec::new();
    if let Err(e) = delete_container_link(env) {
        errors.push(e);
    }
    match Store::open(&conf.data_dir, &conf.name) {
        Ok(store) => match store.release_by_id(&env.container_id, &env.ifname) {
            Ok(ips) => debug!("released {ips:?}"),
            Err(e) => errors.push(e),
        },
        Err(e) => errors.push(e),
    }
    join_errors(errors)
}

/// Deletes CNI_IFNAME in the pod netns; a missing/empty/dead netns or a
/// missing link count as already done.
fn delete_container_link(env: &Env) -> Result<()> {
    let Some(path) = env.netns.as_deref() else {
        return Ok(());
    };
    let Ok(netns) = open_netns(path) else {
        debug!("netns {} gone, nothing to delete", path.display());
        return Ok(());
    };
    let (mut watch, del) = {
        let _in_pod = NetnsGuard::enter(&netns, path)?;
        (Socket::open()?, Socket::open()?)
    };
    // Subscribe before looking, so the removal event cannot slip between.
    watch.subscribe_links()?;
    let Some(link) = watch.get_link(&env.ifname)? else {
        return Ok(());
    };
    // Fork before the IPAM lock is taken: a child sharing the lock's open
    // file description would hold the flock for its whole life.
    if !spawn_delete(del, &env.ifname) {
        // No child: delete in-line, paying the grace period here.
        let mut del = Socket::open_in(&netns, path)?;
        return veth::delete_by_name(&mut del, &env.ifname).map(|_| ());
    }
    let start = Instant::now();
    while let Some(left) = GONE_TIMEOUT.checked_sub(start.elapsed()) {
        match watch.recv_events(left) {
            Ok(events) if events.iter().any(|m| is_removal_of(m, link.index)) => return Ok(()),
            Ok(events) if !events.is_empty() => continue,
            // Timeout, or events lost (ENOBUFS): the kernel's view decides.
            _ => break,
        }
    }
    if watch.get_link(&env.ifname)?.is_none() {
        return Ok(());
    }
    Err(Error::Kernel {
        what: format!("delete {} in {}", env.ifname, path.display()),
        source: std::io::Error::other("interface still present after delete"),
    })
}

fn is_removal_of(msg: &RouteNetlinkMessage, index: u32) -> bool {
    matches!(msg, RouteNetlinkMessage::DelLink(l) if l.header.index == index)
}

/// Forks a child that deletes `ifname` through `sock` (opened in the pod
/// netns) and exits. Returns false when fork fails.
fn spawn_delete(mut sock: Socket, ifname: &str) -> bool {
    // SAFETY: the plugin is single-threaded; the child only calls
    // async-signal-safe-in-practice code (open/dup2/netlink) and _exit.
    match unsafe { nix::unistd::fork() } {
        Ok(nix::unistd::ForkResult::Child) => {
            detach_stdio();
            let code = match veth::delete_by_name(&mut sock, ifname) {
                Ok(_) => 0,
                Err(_) => 1,
            };
            // SAFETY: ends the child without running the parent's atexit.
            unsafe { libc::_exit(code) }
        }
        Ok(nix::unistd::ForkResult::Parent { .. }) => true,
        Err(_) => false,
    }
}

/// The runtime reads our stdout to EOF: the child must not hold it.
fn detach_stdio() {
    // SAFETY: plain fd syscalls on fds this process owns.
    unsafe {
        libc::setsid();
        let fd = libc::open(c"/dev/null".as_ptr(), libc::O_RDWR);
        if fd >= 0 {
            for target in 0..3 {
                libc::dup2(fd, target);
            }
            if fd > 2 {
                libc::close(fd);
            }
        }
    }
}
