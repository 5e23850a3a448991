//! A node that already holds N peers: one lease changing (incremental),
//! overlayd restarted over a programmed kernel (full resync), and the
//! periodic full pass when nothing changes (idle).

use super::wave;
use crate::error::{BenchError, Result};
use crate::monitor::{wait_events, Event, Monitor};
use crate::peers::{nth_ip, Peer};
use crate::proc::{cpu_seconds, passes, Passes};
use crate::stats::Samples;
use felt_cluster::{Cluster, Node};
use nix::sys::signal::Signal;
use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

/// The resync interval overlayd is restarted with, so idle passes come
/// often enough to measure.
pub const RESYNC: &str = "--resync-interval=5s";

/// Time between two lease changes, so each starts on a quiet node (what
/// a change does afterwards, a pass it triggers, has finished).
const SPACING: Duration = Duration::from_secs(2);

/// One lease updated with a new public IP, `reps` times (different
/// leases, `SPACING` apart): ms from the put's ack until the FDB entry
/// points to it.
pub fn incremental(c: &Cluster, monitor: &Monitor, peers: &[Peer], reps: usize) -> Result<Samples> {
    let mut ms = Samples::default();
    let step = (peers.len() / reps.max(1)).max(1);
    for r in 0..reps {
        let Some(old) = peers.get(r * step) else {
            break;
        };
        let peer = Peer {
            public_ip: nth_ip(Ipv4Addr::new(100, 127, 0, 0), r as u32 + 1),
            ..old.clone()
        };
        if r > 0 {
            std::thread::sleep(SPACING);
        }
        monitor.drain();
        let ack = wave::update(c, &peer)?;
        let seen = wait_events(monitor, Duration::from_secs(10), |e| {
            matches!(e, Event::Fdb { new: true, mac, dst: Some(d), .. }
                if *mac == peer.mac && *d == peer.public_ip)
        });
        match seen {
            Some(at) => ms.push(crate::convergence::signed_ms(ack, at)),
            None => {
                return Err(BenchError::Timeout {
                    what: format!("the FDB entry of {} to follow its new IP", peer.subnet),
                    waited: Duration::from_secs(10),
                })
            }
        }
    }
    Ok(ms)
}

/// overlayd restarted over a kernel that holds everything already.
#[derive(Debug, Clone, Default)]
pub struct Resync {
    pub to_ready: Option<Duration>,
    pub to_first_full: Option<Duration>,
    /// The first full pass's own duration (from the histogram).
    pub pass: Option<Duration>,
    /// CPU seconds from exec until the first full pass was seen done.
    pub cpu: Option<f64>,
    /// Kernel objects the restart wrote or removed (should be none).
    pub corrections: f64,
}

/// SIGTERM, then start again with [`RESYNC`]; times /readyz 200 and the
/// first full reconcile pass.
pub fn restart(c: &mut Cluster, timeout: Duration) -> Result<Resync> {
    c.node_mut(0)?.stop_overlayd(Signal::SIGTERM)?;
    let start = Instant::now();
    c.start_overlayd(0, &[RESYNC])?;
    let node = c.node_mut(0)?;
    let pid = node
        .overlayd_pid()
        .ok_or_else(|| BenchError::Setup("overlayd did not start".into()))?;
    let mut out = Resync::default();
    let deadline = start + timeout;
    while Instant::now() < deadline {
        if out.to_ready.is_none() && node.readyz().is_ok_and(|(ok, _)| ok) {
            out.to_ready = Some(start.elapsed());
        }
        if let Ok(p) = passes(node, "full") {
            if p.count >= 1.0 {
                out.to_first_full = Some(start.elapsed());
                out.cpu = cpu_seconds(pid).ok();
                out.pass = Some(Duration::from_secs_f64(p.seconds / p.count));
                out.corrections = p.corrections;
                if out.to_ready.is_none() && node.readyz().is_ok_and(|(ok, _)| ok) {
                    out.to_ready = Some(start.elapsed());
                }
                return Ok(out);
            }
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    Err(BenchError::Timeout {
        what: "the restarted overlayd's first full pass".into(),
        waited: timeout,
    })
}

/// Idle full passes: time per pass (histogram sum/count delta) and CPU
/// (utime+stime delta between the ends of two consecutive passes, so
/// one pass and ~5 s of idling, which costs next to nothing).
#[derive(Debug, Clone, Default)]
pub struct Idle {
    pub pass_ms: Samples,
    pub cpu_s: Samples,
}

pub fn idle(node: &Node, passes_wanted: usize, timeout: Duration) -> Result<Idle> {
    let pid = node
        .overlayd_pid()
        .ok_or_else(|| BenchError::Setup("overlayd does not run".into()))?;
    let mut out = Idle::default();
    let (mut prev, mut prev_cpu) = next_full(node, pid, None, timeout)?;
    for _ in 0..passes_wanted {
        let (p, cpu) = next_full(node, pid, Some(prev.count), timeout)?;
        let n = p.count - prev.count;
        out.pass_ms.push((p.seconds - prev.seconds) / n * 1e3);
        out.cpu_s.push((cpu - prev_cpu) / n);
        (prev, prev_cpu) = (p, cpu);
    }
    Ok(out)
}

/// Waits for a full pass to end after `after` passes (`None`: the next
/// one from now); returns the counters and the CPU seconds right then.
fn next_full(
    node: &Node,
    pid: u32,
    after: Option<f64>,
    timeout: Duration,
) -> Result<(Passes, f64)> {
    let start = Instant::now();
    let base = match after {
        Some(c) => c,
        None => passes(node, "full")?.count,
    };
    while start.elapsed() < timeout {
        let p = passes(node, "full")?;
        if p.count > base {
            return Ok((p, cpu_seconds(pid)?));
        }
        // Coarse: each scrape costs overlayd a little CPU, which would be
        // counted as the pass's.
        std::thread::sleep(Duration::from_millis(100));
    }
    Err(BenchError::Timeout {
        what: "an idle full pass".into(),
        waited: timeout,
    })
}
