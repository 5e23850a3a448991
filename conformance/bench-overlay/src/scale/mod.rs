//! Part 3: scale. N synthetic vxlan peers arrive as a wave of etcd
//! transactions; then the node's steady state at that size. Each size
//! gets a fresh cluster.

mod steady;
mod table;
mod wave;

use crate::error::{BenchError, Result};
use crate::monitor::Monitor;
use crate::objects::{ifindex, VTEP};
use crate::peers::{self, Peer};
use crate::proc::{cpu_seconds, memory, Memory};
use crate::report::Section;
use crate::stats::Samples;
use felt_cluster::{Backend, Cluster, Naming};
use ipnet::Ipv4Net;
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

const NETWORK: &str = "10.0.0.0/8";

#[derive(Debug, Clone)]
pub struct Options {
    pub sizes: Vec<usize>,
    /// Puts per etcd transaction.
    pub batch: usize,
    /// Longest wait for a wave (or a restart) to complete.
    pub timeout: Duration,
    pub floor_runs: u8,
    pub incremental_reps: usize,
    pub idle_passes: usize,
    /// Where to keep overlayd's log of each size (`overlayd-scale-<N>.log`).
    pub logs: Option<PathBuf>,
}

/// From this size on, the floor runs once (before felt's wave): the
/// kernel's cost of gatewayed routes grows with the routes already there
/// (see the method), so one run takes minutes at 65,000.
const FEWER_FLOORS_FROM: usize = 50_000;

/// Everything measured at one size.
#[derive(Debug, Default)]
pub struct SizeResult {
    pub n: usize,
    pub write_s: f64,
    /// All 3N objects announced, after the last put's ack / the first put.
    pub after_last_s: Option<f64>,
    pub from_first_s: Option<f64>,
    /// Objects still missing at the timeout.
    pub missing: usize,
    pub floor_s: Samples,
    /// overlayd's utime+stime from before the first put until the wave
    /// was routed.
    pub wave_cpu_s: Option<f64>,
    pub mem: Option<Memory>,
    pub incremental_ms: Samples,
    pub resync: steady::Resync,
    pub idle: steady::Idle,
    pub notes: Vec<String>,
}

pub fn run_part(opts: &Options) -> Result<Section> {
    let mut results = Vec::new();
    for &n in &opts.sizes {
        eprintln!("scale: {n} peers ...");
        results.push(measure(n, opts)?);
    }
    let mut section = Section::new("Scale");
    table::method(&mut section, opts);
    section.tables.push(table::wave(&results));
    section.tables.push(table::steady(&results));
    if results.len() > 1 {
        section.tables.push(table::growth(&results));
    }
    Ok(section)
}

/// etcd limits for 65,000 leases written 100 per transaction.
fn etcd_flags() -> Vec<String> {
    [
        "--quota-backend-bytes=8589934592",
        "--max-txn-ops=1024",
        "--max-request-bytes=10485760",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

fn measure(n: usize, opts: &Options) -> Result<SizeResult> {
    let conf =
        serde_json::json!({"Network": NETWORK, "SubnetLen": 24, "Backend": {"Type": "vxlan"}});
    let mut c = Cluster::start_with_etcd_flags(
        Naming::test(),
        Backend::Vxlan,
        Some(&conf.to_string()),
        &etcd_flags(),
    )?;
    c.add_running_nodes(1)?;
    felt_cluster::wait::wait_for("overlayd ready", Duration::from_secs(20), || {
        Ok(c.nodes[0].readyz().is_ok_and(|(ok, _)| ok))
    })?;
    let network: Ipv4Net = NETWORK
        .parse()
        .map_err(|e| BenchError::Setup(format!("{NETWORK}: {e}")))?;
    let own = c.nodes[0].subnet()?;
    let base = Ipv4Addr::new(100, 64, 0, 0);
    let peers = peers::synthesize(network, 24, &[own], n, 0x5c, |i| peers::nth_ip(base, i + 1));
    if peers.len() < n {
        return Err(BenchError::Setup(format!(
            "{NETWORK} holds only {} peer subnets",
            peers.len()
        )));
    }
    let mut r = SizeResult {
        n,
        ..SizeResult::default()
    };
    let mut keep = Vec::new();
    let (t, ns) = wave::floor(&c, &peers, 0)?;
    r.floor_s.push(t.as_secs_f64());
    keep.push(ns);
    let outcome = measure_felt(&mut c, &peers, opts, &mut r, &mut keep);
    if let Some(dir) = &opts.logs {
        let to = dir.join(format!("overlayd-scale-{n}.log"));
        if let Err(e) = std::fs::copy(c.nodes[0].overlayd_log_path(), &to) {
            eprintln!("scale: cannot keep the log as {}: {e}", to.display());
        }
    }
    outcome.map(|()| r)
}

/// felt's wave, the remaining floor runs, then the steady state.
fn measure_felt(
    c: &mut Cluster,
    peers: &[Peer],
    opts: &Options,
    r: &mut SizeResult,
    keep: &mut Vec<felt_cluster::Netns>,
) -> Result<()> {
    if !felt_wave(c, peers, opts, r)? {
        return Ok(());
    }
    let runs = if r.n >= FEWER_FLOORS_FROM {
        1
    } else {
        opts.floor_runs.max(1)
    };
    for run in 1..runs {
        let (t, ns) = wave::floor(c, peers, run)?;
        r.floor_s.push(t.as_secs_f64());
        keep.push(ns);
    }
    steady_state(c, peers, opts, r)
}

/// The wave on felt's node; false when it did not complete in time.
fn felt_wave(c: &Cluster, peers: &[Peer], opts: &Options, r: &mut SizeResult) -> Result<bool> {
    let node = &c.nodes[0];
    let dev = ifindex(&node.ns, VTEP)?;
    let pid = node
        .overlayd_pid()
        .ok_or_else(|| BenchError::Setup("overlayd does not run".into()))?;
    let monitor = Monitor::start(&node.ns.path())?;
    let mut pending = wave::Pending::new(peers, dev);
    let cpu_before = cpu_seconds(pid)?;
    let writes = wave::write(c, peers, opts.batch)?;
    r.write_s = (writes.last_ack - writes.started).as_secs_f64();
    let mut done = wave::wait_all(&monitor, &mut pending, opts.timeout);
    if monitor.overruns() > 0 {
        // Lost notifications: fall back to dumping until complete.
        r.notes.push(format!(
            "{}: the monitor overran; completion found by dumping (coarser)",
            r.n
        ));
        done = poll_complete(c, dev, peers, writes.last_ack + opts.timeout)?;
    }
    r.wave_cpu_s = Some(cpu_seconds(pid)? - cpu_before);
    r.mem = Some(memory(pid)?);
    let Some(at) = done else {
        r.missing = pending.left();
        r.notes.push(format!(
            "{}: {} of {} objects still missing {} s after the last put; the rest of this size was skipped",
            r.n,
            r.missing,
            3 * r.n,
            opts.timeout.as_secs()
        ));
        return Ok(false);
    };
    r.after_last_s = Some(crate::convergence::signed_ms(writes.last_ack, at) / 1e3);
    r.from_first_s = Some((at - writes.started).as_secs_f64());
    let complete = wave::present(&node.ns.path(), dev, peers)?;
    if complete != peers.len() {
        return Err(BenchError::Setup(format!(
            "announced but not in the kernel: {complete} of {} peers complete",
            peers.len()
        )));
    }
    r.incremental_ms = steady::incremental(c, &monitor, peers, opts.incremental_reps)?;
    Ok(true)
}

fn poll_complete(
    c: &Cluster,
    dev: u32,
    peers: &[Peer],
    deadline: Instant,
) -> Result<Option<Instant>> {
    let ns = c.nodes[0].ns.path();
    while Instant::now() < deadline {
        if wave::present(&ns, dev, peers)? == peers.len() {
            return Ok(Some(Instant::now()));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(None)
}

fn steady_state(c: &mut Cluster, peers: &[Peer], opts: &Options, r: &mut SizeResult) -> Result<()> {
    r.resync = steady::restart(c, opts.timeout)?;
    // One pass may take long at scale: allow two resync intervals more.
    let wait = Duration::from_secs(15) + r.resync.pass.unwrap_or_default() * 3;
    r.idle = steady::idle(&c.nodes[0], opts.idle_passes, wait)?;
    if let Some(pid) = c.nodes[0].overlayd_pid() {
        let after = memory(pid)?;
        r.notes.push(format!(
            "{}: after the restart and {} idle passes: RSS {:.1} MB, peak {:.1} MB",
            r.n,
            opts.idle_passes,
            after.rss as f64 / 1e6,
            after.hwm as f64 / 1e6
        ));
    }
    let dev = ifindex(&c.nodes[0].ns, VTEP)?;
    // The leases the incremental step moved no longer match `peers`.
    let complete = wave::present(&c.nodes[0].ns.path(), dev, peers)?;
    if complete < peers.len().saturating_sub(opts.incremental_reps) {
        r.notes.push(format!(
            "{}: after the restart only {complete} peers are complete",
            r.n
        ));
    }
    Ok(())
}
