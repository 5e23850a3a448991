//! Part 2: convergence. From a new lease acknowledged by etcd until its
//! route exists on a peer node, for joins spaced apart and back to back;
//! felt beside the bench's own floor watcher (and flanneld, if given),
//! all watching the same writes.

use crate::error::{BenchError, Result};
use crate::floor::{FloorWatcher, Target};
use crate::monitor::{Event, Monitor};
use crate::ns::block_on_in;
use crate::objects::{make_vtep, VtepSpec};
use crate::peers::{self, Peer};
use crate::report::{num, Section, Table};
use crate::stats::Samples;
use crate::throughput::verdict;
use felt_cluster::process::Daemon;
use felt_cluster::{underlay_ip, Backend, Cluster, Naming, Netns, ETCD_PREFIX};
use ipnet::Ipv4Net;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// The network of this part: room for every join of both modes.
const NETWORK: &str = "10.240.0.0/12";
/// Join public IPs: .30 upwards on the underlay (nodes are .11 up, the
/// floor .250, flanneld .249).
const FIRST_JOIN_OCTET: u8 = 30;
pub const MAX_JOINS: usize = 200;
pub const TARGET_P99_MS: f64 = 10.0;

#[derive(Debug, Clone)]
pub struct Options {
    pub joins: usize,
    pub spacing: Duration,
    pub flanneld: Option<PathBuf>,
    /// How long to wait after the last put for routes still missing.
    pub settle: Duration,
}

/// A watcher under test: where its routes appear.
struct Watched {
    name: &'static str,
    monitor: Monitor,
}

/// Latencies of one watcher in one mode, in ms.
struct Outcome {
    ms: Samples,
    missing: usize,
}

pub fn run_part(opts: &Options) -> Result<Section> {
    if opts.joins == 0 || opts.joins > MAX_JOINS {
        return Err(BenchError::Setup(format!(
            "--joins must be 1..={MAX_JOINS} (one underlay address each)"
        )));
    }
    let bench = Bench::start(opts)?;
    let floor = FloorWatcher::start(Target {
        etcd_ns: bench.cluster.underlay().path(),
        endpoint: bench.cluster.etcd().endpoint().to_string(),
        watch_prefix: format!("{ETCD_PREFIX}/subnets/"),
        kernel_ns: bench.floor_ns.path(),
        vtep: bench.vtep,
    })?;
    let results = bench.measure(opts)?;
    let (added, failed) = floor.stop()?;
    let mut section = Section::new("Convergence");
    method(&mut section, opts);
    let names: Vec<&str> = bench.watched.iter().map(|w| w.name).collect();
    let mut table = table(&names, &results, opts.joins);
    table.note(format!(
        "floor watcher: {added} peers added, {failed} writes failed"
    ));
    if bench.flannel.is_none() {
        table.note("flanneld: not measured (set FLANNELD_BIN=/path/to/flanneld to include it)");
    }
    for w in bench.watched.iter().filter(|w| w.monitor.overruns() > 0) {
        table.note(format!(
            "{}: the route monitor lost notifications ({} overruns)",
            w.name,
            w.monitor.overruns()
        ));
    }
    section.tables.push(table);
    Ok(section)
}

/// Everything of one convergence run. Dropped in declaration order: the
/// monitors and flanneld before the namespaces, the cluster last.
struct Bench {
    watched: Vec<Watched>,
    flannel: Option<Flanneld>,
    floor_ns: Netns,
    vtep: u32,
    /// The joins of both modes.
    joins: Vec<Peer>,
    cluster: Cluster,
}

impl Bench {
    /// A one-node cluster, the floor's namespace with its VTEP, flanneld
    /// if asked for, a route monitor in each, and the joins to write.
    fn start(opts: &Options) -> Result<Self> {
        let conf =
            serde_json::json!({"Network": NETWORK, "SubnetLen": 24, "Backend": {"Type": "vxlan"}});
        let mut c = Cluster::start(Naming::test(), Backend::Vxlan, Some(&conf.to_string()))?;
        c.add_running_nodes(1)?;
        let mut skip = vec![c.nodes[0].subnet()?];
        let floor_ns = c.attach_host("floor", 250)?;
        let vtep = make_vtep(
            &floor_ns,
            &VtepSpec {
                local: underlay_ip(250),
                mtu: 1450,
                mac: peers::mac_for(0xf1, 0),
                addr: None,
            },
        )?;
        let flannel = match &opts.flanneld {
            Some(bin) => Some(start_flanneld(&c, bin)?),
            None => None,
        };
        let mut watched = vec![
            Watched {
                name: "felt",
                monitor: Monitor::start(&c.nodes[0].ns.path())?,
            },
            Watched {
                name: "floor",
                monitor: Monitor::start(&floor_ns.path())?,
            },
        ];
        if let Some(f) = &flannel {
            skip.push(f.subnet);
            watched.push(Watched {
                name: "flanneld",
                monitor: Monitor::start(&f.ns.path())?,
            });
        }
        let network: Ipv4Net = NETWORK
            .parse()
            .map_err(|e| BenchError::Setup(format!("{NETWORK}: {e}")))?;
        let base = underlay_ip(FIRST_JOIN_OCTET);
        let joins = peers::synthesize(network, 24, &skip, 2 * opts.joins, 0xc0, |i| {
            peers::nth_ip(base, i % opts.joins as u32)
        });
        Ok(Bench {
            watched,
            flannel,
            floor_ns,
            vtep,
            joins,
            cluster: c,
        })
    }

    /// Both modes, one after the other, each on joins of its own.
    fn measure(&self, opts: &Options) -> Result<Vec<(String, Vec<Outcome>)>> {
        let modes = [
            (
                format!("{} ms apart", opts.spacing.as_millis()),
                Some(opts.spacing),
            ),
            ("back to back".to_string(), None),
        ];
        let mut results = Vec::new();
        for ((label, spacing), chunk) in modes.into_iter().zip(self.joins.chunks(opts.joins)) {
            eprintln!("convergence: {} joins {label} ...", chunk.len());
            for w in &self.watched {
                w.monitor.drain();
            }
            let acks = write_joins(&self.cluster, chunk, spacing)?;
            let outcomes: Vec<Outcome> = self
                .watched
                .iter()
                .map(|w| latencies(&w.monitor, chunk, &acks, opts.settle))
                .collect();
            results.push((label, outcomes));
        }
        Ok(results)
    }
}

fn method(section: &mut Section, opts: &Options) {
    section.method(format!("{} joins per mode: valid flannel vxlan leases (distinct public IPs on the underlay subnet, distinct VTEP MACs) for new /24s of {NETWORK}, written by an in-process etcd client (one put each, bound to an etcd lease); the clock starts when etcd acknowledges the put.", opts.joins));
    section.method(format!("Modes: one put every {} ms, and all puts back to back (each sent as soon as the previous one is acknowledged).", opts.spacing.as_millis()));
    section.method("The clock stops when the RTM_NEWROUTE for the lease's subnet arrives on an rtnetlink route-monitor socket opened inside the node's namespace (event-driven, timestamped on arrival by a dedicated thread; nothing polls).");
    section.method("Side by side in the same run: felt (overlayd on a cluster node); the floor, the bench itself watching etcd and adding the same neighbour, FDB entry and route with rtnetlink on each event in a scratch namespace; and flanneld when FLANNELD_BIN is given.");
}

fn table(names: &[&str], results: &[(String, Vec<Outcome>)], joins: usize) -> Table {
    let mut headers = vec!["joins".to_string()];
    for n in names {
        headers.push(format!("{n} p50 ms"));
        headers.push(format!("{n} p99 ms"));
    }
    headers.push("target".into());
    let mut t = Table {
        title: format!(
            "Convergence, lease put acknowledged → route on the peer ({joins} joins per mode)"
        ),
        headers,
        ..Table::default()
    };
    for (label, outcomes) in results {
        let mut row = vec![label.clone()];
        for (name, o) in names.iter().zip(outcomes) {
            row.push(num(o.ms.percentile(50.0), 1));
            row.push(num(o.ms.percentile(99.0), 1));
            if o.missing > 0 {
                t.notes.push(format!(
                    "{label}: {} routes never appeared on {name}",
                    o.missing
                ));
            }
        }
        let felt = outcomes.first();
        let ok = felt.is_some_and(|o| {
            o.missing == 0 && o.ms.percentile(99.0).is_some_and(|p| p < TARGET_P99_MS)
        });
        row.push(verdict(ok, &format!("felt p99 < {TARGET_P99_MS} ms")));
        t.row(row);
    }
    t
}

/// Writes the joins, spaced or back to back; returns each put's ack time.
fn write_joins(c: &Cluster, joins: &[Peer], spacing: Option<Duration>) -> Result<Vec<Instant>> {
    let endpoint = c.etcd().endpoint().to_string();
    block_on_in(&c.underlay().path(), || async move {
        let mut client = peers::connect(&endpoint).await?;
        let lease = peers::grant(&mut client, 3600).await?;
        let start = tokio::time::Instant::now() + Duration::from_millis(50);
        let mut acks = Vec::with_capacity(joins.len());
        for (i, p) in joins.iter().enumerate() {
            if let Some(s) = spacing {
                tokio::time::sleep_until(start + s * i as u32).await;
            }
            acks.push(peers::put(&mut client, ETCD_PREFIX, p, lease).await?);
        }
        Ok(acks)
    })
}

/// Route arrival minus put ack per join, from the monitor's events.
fn latencies(monitor: &Monitor, joins: &[Peer], acks: &[Instant], settle: Duration) -> Outcome {
    let want: HashMap<Ipv4Net, Instant> = joins
        .iter()
        .zip(acks)
        .map(|(p, a)| (p.subnet, *a))
        .collect();
    let mut seen: HashMap<Ipv4Net, Instant> = HashMap::new();
    let deadline = Instant::now() + settle;
    while seen.len() < want.len() {
        let Some((at, event)) = monitor.next_until(deadline) else {
            break;
        };
        if let Event::Route { new: true, dst, .. } = event {
            if want.contains_key(&dst) {
                seen.entry(dst).or_insert(at);
            }
        }
    }
    let mut ms = Samples::default();
    for (dst, at) in &seen {
        if let Some(ack) = want.get(dst) {
            ms.push(signed_ms(*ack, *at));
        }
    }
    Outcome {
        ms,
        missing: want.len() - seen.len(),
    }
}

/// `to - from` in ms; negative when the route came before the ack.
pub fn signed_ms(from: Instant, to: Instant) -> f64 {
    match to.checked_duration_since(from) {
        Some(d) => d.as_secs_f64() * 1e3,
        None => -(from.duration_since(to).as_secs_f64() * 1e3),
    }
}

/// flanneld on its own node of the underlay.
struct Flanneld {
    // The daemon goes before its namespace.
    _daemon: Daemon,
    ns: Netns,
    subnet: Ipv4Net,
}

fn start_flanneld(c: &Cluster, bin: &Path) -> Result<Flanneld> {
    let ns = c.attach_host("flannel", 249)?;
    let env = c.dir().join("flanneld-subnet.env");
    let mut cmd = ns.command(&bin.to_string_lossy());
    cmd.arg(format!("--etcd-endpoints={}", c.etcd().endpoint()))
        .arg(format!("--etcd-prefix={ETCD_PREFIX}"))
        .arg("--iface=eth0")
        .arg(format!("--subnet-file={}", env.display()));
    let daemon = Daemon::spawn(cmd, "flanneld", &c.dir().join("flanneld.log"))?;
    felt_cluster::wait::wait_for_file(&env, Duration::from_secs(30))?;
    let parsed = felt_common::subnet_env::SubnetEnv::read(&env)
        .map_err(|e| BenchError::Setup(format!("flanneld's subnet.env: {e}")))?;
    let subnet = parsed
        .subnet
        .map(|s| s.trunc())
        .ok_or_else(|| BenchError::Setup("flanneld wrote no FLANNEL_SUBNET".into()))?;
    Ok(Flanneld {
        _daemon: daemon,
        ns,
        subnet,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signed_milliseconds() {
        let a = Instant::now();
        let b = a + Duration::from_millis(3);
        assert!((signed_ms(a, b) - 3.0).abs() < 1e-9);
        assert!((signed_ms(b, a) + 3.0).abs() < 1e-9);
    }
}
