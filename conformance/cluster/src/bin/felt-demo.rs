//! felt-demo: a whole felt cluster on this machine, in throwaway network
//! namespaces: an underlay bridge with etcd, N nodes running overlayd, M
//! pods per node wired by the felt CNI plugin. Prints who reaches whom and
//! the throughput between two pods on different nodes, then tears it all
//! down (with --keep: after Ctrl-C).

use clap::Parser;
use felt_cluster::{Backend, Cluster, HarnessError, Naming, Result, ETCD_PREFIX};
use nix::sys::signal::{sigaction, SaFlags, SigAction, SigHandler, SigSet, Signal};
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

#[derive(Parser, Debug)]
#[command(
    name = "felt-demo",
    about = "Run a multi-node felt cluster in network namespaces"
)]
struct Args {
    /// Routing backend: vxlan, host-gw or udp.
    #[arg(long, default_value = "vxlan", value_parser = ["vxlan", "host-gw", "udp"])]
    backend: String,
    /// Number of nodes (1-30).
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u8).range(1..=30))]
    nodes: u8,
    /// Pods per node (1-20).
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u8).range(1..=20))]
    pods_per_node: u8,
    /// Keep the cluster running until Ctrl-C and print how to enter pods.
    #[arg(long)]
    keep: bool,
}

static INTERRUPTED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: nix::libc::c_int) {
    INTERRUPTED.store(true, Ordering::SeqCst);
}

/// Ctrl-C / SIGTERM only set a flag: the demo then stops between steps and
/// tears down in order instead of dying with namespaces left behind.
fn install_signal_handlers() -> Result<()> {
    let action = SigAction::new(
        SigHandler::Handler(on_signal),
        SaFlags::empty(),
        SigSet::empty(),
    );
    for sig in [Signal::SIGINT, Signal::SIGTERM] {
        // SAFETY: the handler only stores to an atomic.
        unsafe { sigaction(sig, &action) }
            .map_err(|e| HarnessError::Setup(format!("cannot handle {sig}: {e}")))?;
    }
    Ok(())
}

fn check_interrupt() -> Result<()> {
    if INTERRUPTED.load(Ordering::SeqCst) {
        Err(HarnessError::Interrupted)
    } else {
        Ok(())
    }
}

fn main() -> ExitCode {
    let args = Args::parse();
    if !nix::unistd::geteuid().is_root() {
        eprintln!("felt-demo: run as root (it creates network namespaces)");
        return ExitCode::FAILURE;
    }
    let result = install_signal_handlers().and_then(|()| run(&args));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(HarnessError::Interrupted) => {
            println!("\ninterrupted; everything was torn down");
            ExitCode::from(130)
        }
        Err(e) => {
            eprintln!("felt-demo: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run(args: &Args) -> Result<()> {
    let backend = Backend::parse(&args.backend)
        .ok_or_else(|| HarnessError::Setup(format!("unknown backend {}", args.backend)))?;
    let start = Instant::now();
    println!(
        "== felt demo: {} nodes x {} pods, backend {}",
        args.nodes,
        args.pods_per_node,
        backend.name()
    );
    let mut c = Cluster::start(Naming::demo(), backend, None)?;
    println!(
        "underlay {} with etcd at {}",
        c.underlay().name(),
        c.etcd().endpoint()
    );
    let outcome = demo_steps(&mut c, args, start);
    if let Err(e) = &outcome {
        if !matches!(e, HarnessError::Interrupted) {
            eprintln!("felt-demo failed: {e}\n{}", c.logs());
        }
    }
    drop(c);
    let left = leftover_namespaces()?;
    if !left.is_empty() {
        return Err(HarnessError::Setup(format!(
            "teardown left namespaces behind: {}",
            left.join(" ")
        )));
    }
    if outcome.is_ok() {
        println!("\ntorn down: no namespaces, processes or files left");
    }
    outcome
}

/// This demo's namespaces still listed by `ip netns` after teardown.
fn leftover_namespaces() -> Result<Vec<String>> {
    let suffix = format!("-{}", std::process::id());
    let out = felt_cluster::process::ip(&["netns", "list"])?;
    Ok(out
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .filter(|n| n.starts_with("felt-demo-") && n.ends_with(&suffix))
        .map(str::to_string)
        .collect())
}

fn demo_steps(c: &mut Cluster, args: &Args, start: Instant) -> Result<()> {
    check_interrupt()?;
    let nodes = c.add_running_nodes(usize::from(args.nodes))?;
    check_interrupt()?;
    let converged = c.wait_mesh(&nodes, Duration::from_secs(15))?;
    println!(
        "\n{:<7} {:<16} {:<16} {:<18} netns",
        "node", "eth0", "pod subnet", "VTEP MAC"
    );
    for &i in &nodes {
        let peer = c.peer(i)?;
        let n = &c.nodes[i];
        let mac = peer.vtep_mac.unwrap_or_else(|| "-".into());
        println!(
            "{:<7} {:<16} {:<16} {:<18} {}",
            n.name,
            n.ip,
            peer.subnet.to_string(),
            mac,
            n.ns.name()
        );
    }
    for &i in &nodes {
        for _ in 0..args.pods_per_node {
            check_interrupt()?;
            c.add_pod(i)?;
        }
    }
    println!(
        "\n{} pods up; full mesh of routes {converged:?} after the last subnet.env; {:.1}s so far",
        c.pods.len(),
        start.elapsed().as_secs_f64()
    );
    print_matrix(c)?;
    check_interrupt()?;
    print_throughput(c)?;
    if args.keep {
        keep_running(c)?;
    }
    Ok(())
}

/// The pod-to-pod ping matrix: round-trip time in ms, or FAIL.
fn print_matrix(c: &Cluster) -> Result<()> {
    let matrix = c.ping_matrix(2);
    let width = c
        .pods
        .iter()
        .map(|p| p.name.len())
        .max()
        .unwrap_or(6)
        .max(7);
    println!("\nping (ms), from row to column:");
    print!("{:<width$}", "");
    for p in &c.pods {
        print!(" {:>width$}", p.name);
    }
    println!();
    let (mut ok, mut total) = (0, 0);
    for (from, row) in c.pods.iter().zip(&matrix) {
        print!("{:<width$}", from.name);
        for (to, cell) in c.pods.iter().zip(row) {
            let text = match cell {
                _ if from.ip == to.ip => "-".to_string(),
                Ok(p) if p.ok => p.rtt_ms.map_or("ok".into(), |ms| format!("{ms:.3}")),
                _ => "FAIL".to_string(),
            };
            if from.ip != to.ip {
                total += 1;
                ok += usize::from(text != "FAIL");
            }
            print!(" {text:>width$}");
        }
        println!();
    }
    println!("{ok}/{total} pod pairs reachable");
    check_interrupt()?;
    if ok == total {
        Ok(())
    } else {
        Err(HarnessError::Setup(format!(
            "{} pod pairs unreachable",
            total - ok
        )))
    }
}

/// iperf3 for 3 s between the first pods of node1 and node2.
fn print_throughput(c: &Cluster) -> Result<()> {
    let server = c.pods.iter().find(|p| p.node == 0);
    let client = c.pods.iter().find(|p| p.node == 1);
    let (Some(server), Some(client)) = (server, client) else {
        println!("\n(one node only: no cross-node throughput to measure)");
        return Ok(());
    };
    if felt_cluster::process::require_tool("iperf3").is_err() {
        println!("\n(iperf3 not installed: run scripts/setup.sh for the throughput figure)");
        return Ok(());
    }
    let bps = iperf3(c, server, client)?;
    println!(
        "\niperf3 {} -> {} (node{} -> node{}, 3 s TCP): {:.2} Gbit/s",
        client.name,
        server.name,
        client.node + 1,
        server.node + 1,
        bps / 1e9
    );
    Ok(())
}

fn iperf3(c: &Cluster, server: &felt_cluster::Pod, client: &felt_cluster::Pod) -> Result<f64> {
    let mut cmd = server.ns.command("iperf3");
    cmd.args(["-s", "-B", &server.ip.to_string()]);
    let log = c.dir().join("iperf3-server.log");
    let daemon = felt_cluster::process::Daemon::spawn(cmd, "iperf3 server", &log)?;
    felt_cluster::wait::wait_for("iperf3 to listen", Duration::from_secs(5), || {
        Ok(server
            .ns
            .exec(&["ss", "-Hltn", "sport", "= :5201"])?
            .contains("5201"))
    })?;
    let out = client
        .ns
        .exec(&["iperf3", "-c", &server.ip.to_string(), "-t", "3", "-J"]);
    drop(daemon);
    let v: serde_json::Value = serde_json::from_str(&out?).map_err(|e| HarnessError::Parse {
        what: "iperf3 -J".into(),
        detail: e.to_string(),
    })?;
    v["end"]["sum_received"]["bits_per_second"]
        .as_f64()
        .ok_or_else(|| HarnessError::Parse {
            what: "iperf3 -J".into(),
            detail: "no end.sum_received.bits_per_second".into(),
        })
}

/// Prints how to look around, then waits for Ctrl-C.
fn keep_running(c: &Cluster) -> Result<()> {
    println!("\nThe cluster keeps running. In another terminal, as root:");
    for p in &c.pods {
        println!(
            "  ip netns exec {:<28} sh   # {} {} on node{}",
            p.ns.name(),
            p.name,
            p.ip,
            p.node + 1
        );
    }
    for n in &c.nodes {
        println!(
            "  ip netns exec {:<28} sh   # {} {}, overlayd log {}",
            n.ns.name(),
            n.name,
            n.ip,
            n.overlayd_log_path().display()
        );
    }
    println!(
        "  ip netns exec {} etcdctl --endpoints {} get --prefix {ETCD_PREFIX}",
        c.underlay().name(),
        c.etcd().endpoint()
    );
    println!("Press Ctrl-C to tear everything down.");
    while !INTERRUPTED.load(Ordering::SeqCst) {
        std::thread::sleep(Duration::from_millis(200));
    }
    println!("\ntearing down ...");
    Ok(())
}
