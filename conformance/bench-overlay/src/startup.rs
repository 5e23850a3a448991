//! Part 4: start-up. From spawning overlayd (`ip netns exec` execs it)
//! until /readyz answers 200, with the cluster's etcd already holding
//! the network config: on fresh nodes (no lease, no device, no
//! subnet.env) and on a node restarted over its own state.

use crate::error::{BenchError, Result};
use crate::report::{num, Section, Table};
use crate::stats::Samples;
use crate::throughput::verdict;
use felt_cluster::node::HEALTH_PORT;
use felt_cluster::tcp::in_netns;
use felt_cluster::{Backend, Cluster, Naming};
use nix::sys::signal::Signal;
use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::path::Path;
use std::time::{Duration, Instant};

pub const TARGET_MS: f64 = 300.0;
/// How often /readyz is asked while waiting.
const POLL: Duration = Duration::from_millis(2);

#[derive(Debug, Clone)]
pub struct Options {
    pub runs: usize,
}

pub fn run_part(opts: &Options) -> Result<Section> {
    let mut c = Cluster::start(Naming::test(), Backend::Vxlan, None)?;
    // One node that every later one sees as a peer.
    c.add_running_nodes(1)?;
    let mut fresh = Samples::default();
    for _ in 0..opts.runs {
        let i = c.add_node()?;
        let start = Instant::now();
        c.start_overlayd(i, &[])?;
        fresh.push(wait_ready(&c.nodes[i].ns.path(), start)?);
        // Keeps the machine quiet; its lease stays, a peer for the next.
        c.node_mut(i)?.stop_overlayd(Signal::SIGTERM)?;
    }
    let mut restarted = Samples::default();
    for _ in 0..opts.runs {
        c.node_mut(0)?.stop_overlayd(Signal::SIGTERM)?;
        let start = Instant::now();
        c.start_overlayd(0, &[])?;
        restarted.push(wait_ready(&c.nodes[0].ns.path(), start)?);
    }
    let mut section = Section::new("Start-up");
    section.method(format!("overlayd spawned (through `ip netns exec`, which execs it) until GET /readyz answers 200, asked every {} ms from a thread inside the node's namespace; the cluster's etcd already holds the network config. Fresh: a new node each time (no lease, no VTEP, no subnet.env; the earlier ones' leases stay, so each new node has more peers). Restarted: SIGTERM and start again on a node holding its lease, VTEP and subnet.env.", POLL.as_millis()));
    let mut t = Table::new(
        "Start-up: process spawn → /readyz 200, ms",
        &["node", "median", "min", "max", "runs", "target"],
    );
    for (label, s) in [("fresh", &fresh), ("restarted", &restarted)] {
        let ok = s.median().is_some_and(|m| m < TARGET_MS);
        t.row(vec![
            label.into(),
            num(s.median(), 0),
            num(s.min(), 0),
            num(s.max(), 0),
            s.len().to_string(),
            verdict(ok, &format!("< {TARGET_MS} ms")),
        ]);
    }
    section.tables.push(t);
    Ok(section)
}

/// Asks /readyz in the namespace at `ns` until it answers 200; returns the
/// ms since `start`.
fn wait_ready(ns: &Path, start: Instant) -> Result<f64> {
    let timeout = Duration::from_secs(20);
    in_netns(ns, move || {
        let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, HEALTH_PORT));
        while start.elapsed() < timeout {
            if readyz_ok(addr) {
                return Ok(start.elapsed().as_secs_f64() * 1e3);
            }
            std::thread::sleep(POLL);
        }
        Err(felt_cluster::HarnessError::Timeout {
            what: "/readyz 200".into(),
            waited: timeout,
        })
    })
    .map_err(BenchError::from)
}

/// One GET /readyz; true on 200. Refused or unready: false.
fn readyz_ok(addr: SocketAddr) -> bool {
    let attempt = || -> std::io::Result<bool> {
        let mut s = TcpStream::connect_timeout(&addr, Duration::from_millis(200))?;
        s.set_read_timeout(Some(Duration::from_secs(2)))?;
        s.write_all(b"GET /readyz HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")?;
        let mut head = [0u8; 12];
        s.read_exact(&mut head)?;
        Ok(&head[9..12] == b"200")
    };
    attempt().unwrap_or(false)
}
