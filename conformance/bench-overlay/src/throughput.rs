//! Part 1: pod-to-pod TCP throughput across two nodes (iperf3), felt
//! (overlayd + the felt CNI plugin, via the cluster harness) against the
//! same kernel datapath built by hand, on the same underlay, in the same
//! run, runs interleaved.

use crate::error::{parse_err, BenchError, Result};
use crate::refpath::{self, pod_mtu};
use crate::report::{num, Section, Table};
use crate::stats::Samples;
use felt_cluster::process::{run, Daemon};
use felt_cluster::{Backend, Cluster, Naming, Netns};
use std::net::Ipv4Addr;
use std::time::Duration;

const PORT: &str = "5201";
pub const TARGET: f64 = 0.97;

#[derive(Debug, Clone)]
pub struct Options {
    pub backends: Vec<Backend>,
    pub streams: Vec<u32>,
    /// Measured seconds per run (after one omitted second of ramp-up).
    pub secs: u32,
    pub reps: usize,
}

/// One side of the comparison: where iperf3 runs.
struct Side<'a> {
    client: &'a Netns,
    server_ip: Ipv4Addr,
}

#[derive(Default)]
struct Cell {
    reference: Samples,
    felt: Samples,
    /// felt/ref of each pair of neighbouring runs: drift of the machine's
    /// speed cancels within a pair.
    ratios: Samples,
}

pub fn run_part(opts: &Options) -> Result<Section> {
    let mut section = Section::new("Pod-to-pod TCP throughput");
    method(&mut section, opts);
    let mut table = Table::new(
        "Throughput, Gbit/s (median of runs), felt against the hand-built datapath",
        &[
            "backend", "streams", "MTU", "ref", "felt", "felt/ref", "range", "runs", "target",
        ],
    );
    for &backend in &opts.backends {
        let cells = measure_backend(backend, opts)?;
        for (streams, cell) in opts.streams.iter().zip(cells) {
            let ratio = cell.ratios.median();
            table.row(vec![
                backend.name().into(),
                streams.to_string(),
                pod_mtu(backend).to_string(),
                num(cell.reference.median(), 2),
                num(cell.felt.median(), 2),
                num(ratio, 3),
                format!(
                    "{}–{}",
                    num(cell.ratios.min(), 3),
                    num(cell.ratios.max(), 3)
                ),
                cell.felt.len().to_string(),
                verdict(ratio.is_some_and(|r| r >= TARGET), &format!("≥ {TARGET}")),
            ]);
        }
    }
    table.note("felt/ref is the median over pairs of neighbouring runs; range is the lowest and highest pair ratio");
    section.tables.push(table);
    Ok(section)
}

fn method(section: &mut Section, opts: &Options) {
    section.method("felt: two nodes of the namespace cluster (overlayd, pods made by the felt CNI plugin). Reference: two more node namespaces on the same underlay bridge, each with a cni0 bridge and a veth pod of the same MTU, flannel's vxlan device (VNI 1, port 8472, learning off) with a permanent neighbour, self FDB entry and onlink route per peer, or a plain route via the peer for host-gw, all made with ip(8).");
    section.method(format!(
        "iperf3 from a pod on one node to a pod on the other (client pinned to CPU 0, server to CPU 1 with `-A`), {} s per run after 1 s omitted, {} streams; {} runs per side, interleaved ref, felt, felt, ref, ... so a drift of the machine's speed hits both.",
        opts.secs,
        opts.streams.iter().map(u32::to_string).collect::<Vec<_>>().join(" and "),
        opts.reps
    ));
}

pub fn verdict(ok: bool, target: &str) -> String {
    format!("{target} {}", if ok { "met" } else { "MISSED" })
}

fn measure_backend(backend: Backend, opts: &Options) -> Result<Vec<Cell>> {
    eprintln!("throughput: {} cluster ...", backend.name());
    let mut c = Cluster::start(Naming::test(), backend, None)?;
    let nodes = c.add_running_nodes(2)?;
    for &n in &nodes {
        c.add_pod(n)?;
    }
    c.wait_mesh(&nodes, Duration::from_secs(20))?;
    let refs = refpath::build(&c, backend)?;
    let (felt_client, felt_server) = (&c.pods[0], &c.pods[1]);
    let (ref_client, ref_server) = (&refs[0], &refs[1]);
    reachable(&felt_client.ns, felt_server.ip)?;
    reachable(&ref_client.pod, ref_server.pod_ip)?;
    let _servers = [
        server(&felt_server.ns, felt_server.ip, &c, "felt")?,
        server(&ref_server.pod, ref_server.pod_ip, &c, "ref")?,
    ];
    let felt = Side {
        client: &felt_client.ns,
        server_ip: felt_server.ip,
    };
    let reference = Side {
        client: &ref_client.pod,
        server_ip: ref_server.pod_ip,
    };
    let mut cells: Vec<Cell> = opts.streams.iter().map(|_| Cell::default()).collect();
    for rep in 0..opts.reps {
        for (cell, &streams) in cells.iter_mut().zip(&opts.streams) {
            // ABBA: ref first in even reps, felt first in odd ones.
            let (r, f) = if rep % 2 == 0 {
                let r = iperf(&reference, streams, opts.secs)?;
                (r, iperf(&felt, streams, opts.secs)?)
            } else {
                let f = iperf(&felt, streams, opts.secs)?;
                (iperf(&reference, streams, opts.secs)?, f)
            };
            eprintln!(
                "throughput: {} {streams} streams rep {}: ref {r:.2} felt {f:.2} Gbit/s",
                backend.name(),
                rep + 1
            );
            cell.reference.push(r);
            cell.felt.push(f);
            cell.ratios.push(f / r);
        }
    }
    Ok(cells)
}

fn reachable(from: &Netns, to: Ipv4Addr) -> Result<()> {
    let ping = felt_cluster::pod::ping_from(from, to, 2)?;
    if ping.ok {
        Ok(())
    } else {
        Err(BenchError::Setup(format!(
            "{to} is not reachable from {}",
            from.name()
        )))
    }
}

/// A persistent iperf3 server on `ip` in `ns`, listening when this returns.
fn server(ns: &Netns, ip: Ipv4Addr, c: &Cluster, tag: &str) -> Result<Daemon> {
    let mut cmd = ns.command("iperf3");
    cmd.args(["-s", "-B", &ip.to_string(), "-p", PORT]);
    cmd.args(affinity(1));
    let log = c.dir().join(format!("iperf3-{tag}.log"));
    let d = Daemon::spawn(cmd, &format!("iperf3 server ({tag})"), &log)?;
    let filter = format!("sport = :{PORT}");
    felt_cluster::wait::wait_for("iperf3 to listen", Duration::from_secs(10), || {
        Ok(!ns.exec(&["ss", "-Hltn", &filter])?.trim().is_empty())
    })?;
    Ok(d)
}

/// One iperf3 run: received Gbit/s.
fn iperf(side: &Side<'_>, streams: u32, secs: u32) -> Result<f64> {
    let out = run(side
        .client
        .command("iperf3")
        .args([
            "-c",
            &side.server_ip.to_string(),
            "-p",
            PORT,
            "-t",
            &secs.to_string(),
            "-O",
            "1",
            "-P",
            &streams.to_string(),
            "-J",
        ])
        .args(affinity(0)))?;
    received_gbits(&out)
}

/// iperf3's `-A <cpu>`: client and server on CPUs of their own, the same
/// for both sides, so the scheduler's placement does not differ between
/// runs (only with two CPUs or more).
fn affinity(cpu: usize) -> Vec<String> {
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    if cpus >= 2 {
        vec!["-A".into(), cpu.to_string()]
    } else {
        Vec::new()
    }
}

fn received_gbits(json: &str) -> Result<f64> {
    let v: serde_json::Value =
        serde_json::from_str(json).map_err(|e| parse_err("iperf3 -J output", e))?;
    v["end"]["sum_received"]["bits_per_second"]
        .as_f64()
        .map(|b| b / 1e9)
        .ok_or_else(|| {
            parse_err(
                "iperf3 -J output",
                format!("no end.sum_received ({})", v["error"]),
            )
        })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn reads_iperf3_json() {
        let out = r#"{"start":{},"end":{"sum_sent":{"bits_per_second":9.9e9},"sum_received":{"bits_per_second":9.5e9}}}"#;
        assert_eq!(received_gbits(out).unwrap(), 9.5);
        let err = r#"{"start":{},"end":{},"error":"unable to connect"}"#;
        let e = received_gbits(err).unwrap_err().to_string();
        assert!(e.contains("unable to connect"), "{e}");
    }
}
