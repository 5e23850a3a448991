//! Benchmark of the udp datapath against kernel VXLAN, in namespaces it
//! creates (root required): pod-to-pod TCP with iperf3, 1 and 4 streams,
//! for VXLAN built by hand with ip(8) and for each rung of the udp
//! technique ladder, plus the engine's CPU seconds per GB moved.
//!
//!   cargo run --release -p overlayd --example udp-bench -- [--secs 5] [--gro on|off]
//!
//! Never run by the tests; wrapped by scripts/bench-udp.sh.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

#[path = "../tests/udp_rig/mod.rs"]
mod udp_rig;

use overlayd::backend::udp::{ladder, Engine, Features, StatsSnapshot, BUCKET_LOW};
use udp_rig::*;

struct Args {
    secs: u32,
    gro: bool,
    /// Only rungs whose name contains this (vxlan always runs).
    only: Option<String>,
    /// Print kernel drop counters after each udp rung.
    diag: bool,
}

fn args() -> Args {
    let mut a = Args {
        secs: 5,
        gro: true,
        only: None,
        diag: false,
    };
    let argv: Vec<String> = std::env::args().skip(1).collect();
    let mut it = argv.iter();
    while let Some(k) = it.next() {
        let v = it.next().unwrap_or_else(|| panic!("{k} needs a value"));
        match k.as_str() {
            "--secs" => a.secs = v.parse().expect("--secs N"),
            "--gro" => a.gro = v == "on",
            "--only" => a.only = Some(v.clone()),
            "--diag" => a.diag = v == "on",
            _ => panic!("unknown argument {k}; use --secs N, --gro on|off, --only RUNG, --diag on"),
        }
    }
    a
}

/// CPU seconds (user + system) of this process: the engine's threads.
fn cpu_secs() -> f64 {
    // SAFETY: getrusage fills the zeroed struct we pass.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut ru) };
    let t = |tv: libc::timeval| tv.tv_sec as f64 + tv.tv_usec as f64 / 1e6;
    t(ru.ru_utime) + t(ru.ru_stime)
}

struct Row {
    name: String,
    gbps: [f64; 2],
    retrans: [u64; 2],
    cpu_per_gb: Option<f64>,
}

fn measure(rig: &Rig, name: &str, secs: u32, in_process: bool) -> Row {
    let (a, b) = (&rig.nodes[0], &rig.nodes[1]);
    let mut row = Row {
        name: name.into(),
        gbps: [0.0; 2],
        retrans: [0; 2],
        cpu_per_gb: None,
    };
    for (k, streams) in [1u32, 4].into_iter().enumerate() {
        let cpu0 = cpu_secs();
        let r = iperf(a, b, streams, secs);
        let cpu = cpu_secs() - cpu0;
        row.gbps[k] = r.bits_per_second / 1e9;
        row.retrans[k] = r.retransmits;
        if in_process && k == 0 {
            row.cpu_per_gb = Some(cpu / (r.bytes / 1e9));
        }
        eprintln!(
            "  {name} P{streams}: {:.2} Gbit/s, {} retransmits",
            row.gbps[k], r.retransmits
        );
    }
    row
}

/// flannel's vxlan datapath by hand: flannel.1, neighbour, FDB, route.
fn vxlan(rig: &Rig) {
    let mac = |i: u8| format!("02:fe:00:00:00:{i:02x}");
    for n in &rig.nodes {
        let i = n.idx;
        let local = n.underlay_ip().to_string();
        n.ns.exec_ok(&[
            "ip",
            "link",
            "add",
            "flannel.1",
            "type",
            "vxlan",
            "id",
            "1",
            "local",
            &local,
            "dev",
            "eth0",
            "dstport",
            "8472",
            "nolearning",
        ]);
        n.ns.exec_ok(&[
            "ip",
            "link",
            "set",
            "flannel.1",
            "address",
            &mac(i),
            "mtu",
            "1450",
            "up",
        ]);
        n.ns.exec_ok(&[
            "ip",
            "addr",
            "add",
            &format!("10.244.{i}.0/32"),
            "dev",
            "flannel.1",
        ]);
        for p in rig.nodes.iter().filter(|p| p.idx != i) {
            let j = p.idx;
            let gw = format!("10.244.{j}.0");
            n.ns.exec_ok(&[
                "ip",
                "neigh",
                "replace",
                &gw,
                "lladdr",
                &mac(j),
                "dev",
                "flannel.1",
                "nud",
                "permanent",
            ]);
            n.ns.exec_ok(&[
                "bridge",
                "fdb",
                "append",
                &mac(j),
                "dev",
                "flannel.1",
                "dst",
                &p.underlay_ip().to_string(),
            ]);
            n.ns.exec_ok(&[
                "ip",
                "route",
                "add",
                &format!("10.244.{j}.0/24"),
                "via",
                &gw,
                "dev",
                "flannel.1",
                "onlink",
            ]);
        }
    }
}

fn hist(name: &str, h: &overlayd::backend::udp::Histogram) -> String {
    let parts: Vec<String> = BUCKET_LOW
        .iter()
        .zip(h.buckets)
        .filter(|(_, c)| *c > 0)
        .map(|(lo, c)| format!("{lo}+:{c}"))
        .collect();
    format!("{name} [{}]", parts.join(" "))
}

fn summary(s: &StatsSnapshot) -> String {
    let drops: Vec<String> = s
        .drops()
        .filter(|(_, c)| *c > 0)
        .map(|(r, c)| format!("{}={c}", r.name()))
        .collect();
    format!(
        "{}  {}  {}  {}  drops: {}",
        hist("tun_read", &s.tun_read),
        hist("udp_send", &s.udp_send),
        hist("udp_recv", &s.udp_recv),
        hist("tun_write", &s.tun_write),
        if drops.is_empty() {
            "none".into()
        } else {
            drops.join(" ")
        }
    )
}

fn udp_rung(name: &str, f: Features, a: &Args) -> Row {
    let rig = Rig::new("ubench", 2, TUN_MTU);
    rig.set_veth_gro(a.gro);
    let (n1, n2) = (&rig.nodes[0], &rig.nodes[1]);
    let e1 = start_engine(n1, f);
    let e2 = start_engine(n2, f);
    full_mesh(&[n1, n2], &[&e1, &e2]);
    eprintln!("{name}: {:?}", e1.active());
    let row = measure(&rig, name, a.secs, true);
    for (who, e) in [("sender", &e1), ("receiver", &e2)] {
        eprintln!("  {who}: {}", summary(&Engine::stats(e)));
    }
    if a.diag {
        diag(&rig);
    }
    row
}

/// Non-zero kernel drop and error counters of every namespace of the rig.
fn diag(rig: &Rig) {
    for n in &rig.nodes {
        for ns in [&n.ns, &n.pod] {
            let snmp = ns.exec_ok(&["nstat", "-az"]);
            let hits: Vec<&str> = snmp
                .lines()
                .filter(|l| {
                    ["Drop", "Err", "Overflow", "Prune", "Collapse"]
                        .iter()
                        .any(|k| l.contains(k))
                })
                .filter(|l| l.split_whitespace().nth(1).is_some_and(|v| v != "0"))
                .collect();
            eprintln!("  {}: {}", ns.name, hits.join(" | "));
            let links = ns.exec_ok(&["ip", "-s", "-o", "link"]);
            for l in links.lines().filter(|l| !l.contains(" lo:")) {
                eprintln!("    {}", l.split_whitespace().collect::<Vec<_>>().join(" "));
            }
        }
    }
}

/// The 1-minute load average: other work on the machine skews the runs.
fn load() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|l| l.split_whitespace().next().map(str::to_string))
        .unwrap_or_default()
}

fn main() {
    let a = args();
    let load_before = load();
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter("warn")
        .init();
    let mut rows = Vec::new();
    {
        let rig = Rig::new("vbench", 2, 1450);
        rig.set_veth_gro(a.gro);
        vxlan(&rig);
        rows.push(measure(&rig, "vxlan (kernel)", a.secs, false));
    }
    for (name, f) in ladder() {
        if a.only.as_ref().is_some_and(|o| !name.contains(o.as_str())) {
            continue;
        }
        rows.push(udp_rung(&format!("udp {name}"), f, &a));
    }
    let base = [rows[0].gbps[0], rows[0].gbps[1]];
    println!(
        "\npod-to-pod TCP, iperf3 {} s per run, veth GRO {}, {} CPUs",
        a.secs,
        if a.gro { "on" } else { "off" },
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1)
    );
    println!(
        "load average (1 min) {load_before} before, {} after",
        load()
    );
    println!("| datapath | 1 stream Gbit/s | vs vxlan | retr | 4 streams Gbit/s | vs vxlan | retr | engine CPU s/GB (1 stream) |");
    println!("|---|---|---|---|---|---|---|---|");
    for r in &rows {
        let cpu = r
            .cpu_per_gb
            .map(|c| format!("{c:.2}"))
            .unwrap_or_else(|| "kernel".into());
        println!(
            "| {} | {:.2} | {:.2} | {} | {:.2} | {:.2} | {} | {} |",
            r.name,
            r.gbps[0],
            r.gbps[0] / base[0],
            r.retrans[0],
            r.gbps[1],
            r.gbps[1] / base[1],
            r.retrans[1],
            cpu
        );
    }
}
