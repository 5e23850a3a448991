//! What a process costs, from /proc: memory (VmRSS, VmHWM) and CPU time
//! (utime + stime), and overlayd's own figures from its /metrics.

use crate::error::{io_err, parse_err, Result};
use felt_cluster::Node;

/// Resident memory now and at its peak, in bytes.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Memory {
    pub rss: u64,
    pub hwm: u64,
}

pub fn memory(pid: u32) -> Result<Memory> {
    let path = format!("/proc/{pid}/status");
    let text = std::fs::read_to_string(&path).map_err(io_err(format!("cannot read {path}")))?;
    Ok(Memory {
        rss: status_kb(&text, "VmRSS:")? * 1024,
        hwm: status_kb(&text, "VmHWM:")? * 1024,
    })
}

fn status_kb(text: &str, field: &str) -> Result<u64> {
    text.lines()
        .find(|l| l.starts_with(field))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .ok_or_else(|| parse_err("/proc/<pid>/status", format!("no {field}")))
}

/// User + system CPU seconds the process has used so far (all threads;
/// the kernel counts in clock ticks, so the resolution is 1/CLK_TCK).
pub fn cpu_seconds(pid: u32) -> Result<f64> {
    let path = format!("/proc/{pid}/stat");
    let text = std::fs::read_to_string(&path).map_err(io_err(format!("cannot read {path}")))?;
    let ticks = stat_ticks(&text).ok_or_else(|| parse_err(path, "no utime/stime"))?;
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    Ok(ticks as f64 / if hz > 0 { hz as f64 } else { 100.0 })
}

/// utime + stime (fields 14 and 15) of a /proc/<pid>/stat line; the
/// command name (field 2) may contain spaces, so count after its ')'.
fn stat_ticks(text: &str) -> Option<u64> {
    let rest = &text[text.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // After ')' the first field is #3 (state): utime is #14, stime #15.
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some(utime + stime)
}

/// The reconcile figures overlayd exports, for one pass kind.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct Passes {
    pub count: f64,
    pub seconds: f64,
    /// Kernel objects written or removed so far (all kinds).
    pub corrections: f64,
}

/// `felt_reconcile_duration_seconds{pass=...}` count and sum, and the
/// corrections counters, from the node's /metrics.
pub fn passes(node: &Node, pass: &str) -> Result<Passes> {
    let (_, body) = node.health_get("/metrics")?;
    Ok(passes_in(&body, pass))
}

fn passes_in(body: &str, pass: &str) -> Passes {
    let sample =
        |name: &str| felt_cluster::http::metric(body, &format!("{name}{{pass=\"{pass}\"}}"));
    let corrections = body
        .lines()
        .filter(|l| l.starts_with("felt_reconcile_corrections_total{"))
        .filter_map(|l| l.rsplit_once(' ').and_then(|(_, v)| v.parse::<f64>().ok()))
        .sum::<f64>()
        // An empty float sum is -0.0.
        + 0.0;
    Passes {
        count: sample("felt_reconcile_duration_seconds_count"),
        seconds: sample("felt_reconcile_duration_seconds_sum"),
        corrections,
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn parses_proc_and_metrics() {
        let stat = "1234 (over layd) S 1 2 3 4 5 6 7 8 9 10 250 50 0 0 20 0 4 0 100 200 300";
        assert_eq!(stat_ticks(stat), Some(300));
        let status = "Name:\toverlayd\nVmHWM:\t   20480 kB\nVmRSS:\t   10240 kB\n";
        assert_eq!(status_kb(status, "VmRSS:").unwrap(), 10240);
        assert_eq!(status_kb(status, "VmHWM:").unwrap(), 20480);
        assert!(status_kb(status, "VmSwap:").is_err());
        let body = "felt_reconcile_duration_seconds_sum{pass=\"full\"} 1.5\n\
                    felt_reconcile_duration_seconds_count{pass=\"full\"} 3\n\
                    felt_reconcile_duration_seconds_count{pass=\"incremental\"} 9\n\
                    felt_reconcile_corrections_total{kind=\"route\"} 5\n\
                    felt_reconcile_corrections_total{kind=\"fdb\"} 5\n";
        assert_eq!(
            passes_in(body, "full"),
            Passes {
                count: 3.0,
                seconds: 1.5,
                corrections: 10.0
            }
        );
    }

    #[test]
    fn reads_this_process() {
        let me = std::process::id();
        let m = memory(me).unwrap();
        assert!(m.rss > 0 && m.hwm >= m.rss);
        assert!(cpu_seconds(me).unwrap() >= 0.0);
    }
}
