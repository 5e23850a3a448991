//! The scale part's tables: the wave, the steady state, and how each
//! figure grows with the number of peers.

use super::{Options, SizeResult, NETWORK};
use crate::report::{num, Section, Table};
use crate::stats::growth_exponent;
use crate::throughput::verdict;

/// (peers, all routed after the last put in s, peak RSS in MB).
const TARGETS: [(usize, f64, f64); 2] = [(5000, 1.0, 30.0), (65000, 5.0, 100.0)];

pub fn method(section: &mut Section, opts: &Options) {
    section.method(format!("Synthetic vxlan peer leases (subnets of {NETWORK}, distinct public IPs and VTEP MACs, bound to one etcd lease) written by an in-process etcd client in transactions of {} puts, one after another: a restore, or a wave of joins, as a watcher sees it. A fresh cluster (one overlayd node) per size.", opts.batch));
    section.method("All routed: from the last transaction's acknowledgement (and from the first put) until the last of the 3N objects (route, permanent neighbour, permanent self FDB entry) is announced on an rtnetlink monitor socket inside the node's namespace; then checked complete by a dump.");
    section.method(format!("Kernel floor: the same 3N objects created by the bench with rtnetlink, {} requests in flight (neighbours, then FDB, then routes), in a scratch node namespace with its own VTEP; {} runs below {} peers (one before felt's wave, the rest after; the median is shown), one (before) from there on. The floor grows faster than linearly: each route via its own gateway costs the kernel a scan of the fib_infos already on the device (fib_create_info; the fib_info hash does not include the gateway), which felt's routes pay as well.", super::wave::IN_FLIGHT, opts.floor_runs, super::FEWER_FLOORS_FROM));
    section.method("felt CPU: overlayd's utime+stime from before the first put until the wave was routed (its own work and the kernel's on its behalf).");
    section.method("RSS: VmRSS and VmHWM (peak) of overlayd from /proc/<pid>/status once the wave is routed; the target applies to the peak.");
    section.method(format!("Steady state: one lease changed (a new PublicIP) until the kernel's FDB entry follows, median of {} changes 2 s apart; overlayd stopped (SIGTERM) and started again with `{}` over the programmed kernel: time to /readyz 200 and to its first full pass (felt_reconcile_duration_seconds{{pass=\"full\"}} count ≥ 1), that pass's duration, and utime+stime from exec until then; then {} idle full passes: duration from the histogram's sum/count deltas, CPU from utime+stime deltas between the ends of consecutive passes (/proc/<pid>/stat, 10 ms ticks).", opts.incremental_reps, super::steady::RESYNC, opts.idle_passes));
}

fn target_for(n: usize) -> Option<(f64, f64)> {
    TARGETS.iter().find(|t| t.0 == n).map(|t| (t.1, t.2))
}

pub fn wave(results: &[SizeResult]) -> Table {
    let mut t = Table::new(
        "Scale: a wave of N joins, until every route, neighbour and FDB entry exists on the node",
        &[
            "peers",
            "writes s",
            "routed after last put s",
            "from first put s",
            "kernel floor s",
            "felt/floor",
            "felt CPU s",
            "RSS MB",
            "peak RSS MB",
            "target",
        ],
    );
    for r in results {
        let floor = r.floor_s.median();
        let ratio = r.after_last_s.zip(floor).map(|(a, f)| a / f);
        let mb = |f: fn(&crate::proc::Memory) -> u64| r.mem.as_ref().map(|m| f(m) as f64 / 1e6);
        let peak = mb(|m| m.hwm);
        let target = match target_for(r.n) {
            None => "—".to_string(),
            Some((secs, megs)) => {
                let ok = r.after_last_s.is_some_and(|a| a < secs) && peak.is_some_and(|p| p < megs);
                verdict(ok, &format!("< {secs} s, < {megs} MB"))
            }
        };
        let routed = match r.after_last_s {
            Some(_) => num(r.after_last_s, 3),
            None => format!("> timeout ({} objects missing)", r.missing),
        };
        t.row(vec![
            r.n.to_string(),
            num(Some(r.write_s), 2),
            routed,
            num(r.from_first_s, 3),
            num(floor, 3),
            num(ratio, 1),
            num(r.wave_cpu_s, 2),
            num(mb(|m| m.rss), 1),
            num(peak, 1),
            target,
        ]);
    }
    for r in results {
        t.notes.extend(r.notes.iter().cloned());
    }
    t
}

pub fn steady(results: &[SizeResult]) -> Table {
    let mut t = Table::new(
        "Scale: steady state at N peers",
        &[
            "peers",
            "idle full pass ms",
            "its CPU s",
            "restart → /readyz ms",
            "→ first full pass ms",
            "that pass ms",
            "CPU to then s",
            "objects rewritten",
            "one lease changed → kernel ms",
        ],
    );
    for r in results.iter().filter(|r| r.after_last_s.is_some()) {
        let ms = |d: Option<std::time::Duration>| num(d.map(|d| d.as_secs_f64() * 1e3), 0);
        t.row(vec![
            r.n.to_string(),
            num(r.idle.pass_ms.median(), 1),
            num(r.idle.cpu_s.median(), 2),
            ms(r.resync.to_ready),
            ms(r.resync.to_first_full),
            ms(r.resync.pass),
            num(r.resync.cpu, 2),
            num(Some(r.resync.corrections), 0),
            num(r.incremental_ms.median(), 1),
        ]);
    }
    t
}

/// One figure across sizes: (peers, value) for those measured.
fn series(results: &[SizeResult], f: impl Fn(&SizeResult) -> Option<f64>) -> Vec<(f64, f64)> {
    results
        .iter()
        .filter_map(|r| f(r).map(|v| (r.n as f64, v)))
        .collect()
}

pub fn growth(results: &[SizeResult]) -> Table {
    let (first, last) = match (results.first(), results.last()) {
        (Some(a), Some(b)) => (a.n, b.n),
        _ => (0, 0),
    };
    let mut t = Table::new(
        &format!(
            "Scale: growth from {first} to {last} peers (×{:.0} peers); k is the exponent of the best fit value ∝ N^k (1 = linear)",
            last as f64 / first.max(1) as f64
        ),
        &["figure", "smallest", "largest", "×", "k"],
    );
    let secs = |d: Option<std::time::Duration>| d.map(|d| d.as_secs_f64());
    let figures: Vec<(&str, Vec<(f64, f64)>)> = vec![
        (
            "routed after last put, s",
            series(results, |r| r.after_last_s),
        ),
        ("kernel floor, s", series(results, |r| r.floor_s.median())),
        (
            "felt CPU for the wave, s",
            series(results, |r| r.wave_cpu_s),
        ),
        (
            "peak RSS, MB",
            series(results, |r| r.mem.map(|m| m.hwm as f64 / 1e6)),
        ),
        (
            "idle full pass, ms",
            series(results, |r| r.idle.pass_ms.median()),
        ),
        (
            "idle full pass CPU, s",
            series(results, |r| r.idle.cpu_s.median()),
        ),
        (
            "restart → /readyz, s",
            series(results, |r| secs(r.resync.to_ready)),
        ),
        (
            "restart → first full pass, s",
            series(results, |r| secs(r.resync.to_first_full)),
        ),
        (
            "one lease changed, ms",
            series(results, |r| r.incremental_ms.median()),
        ),
    ];
    for (name, pts) in figures {
        let (lo, hi) = (pts.first().map(|p| p.1), pts.last().map(|p| p.1));
        let times = lo.zip(hi).filter(|(l, _)| *l > 0.0).map(|(l, h)| h / l);
        t.row(vec![
            name.to_string(),
            num(lo, 3),
            num(hi, 3),
            num(times, 1),
            num(growth_exponent(&pts), 2),
        ]);
    }
    t
}
