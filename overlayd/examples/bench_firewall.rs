//! Firewall benchmark (not a test): how long one `ensure` takes when
//! nothing changed (the periodic check) and when it must install, per
//! mode and iptables variant, on an empty namespace and next to a
//! kube-proxy-sized iptables ruleset; and the raw nft costs behind the
//! choice of text scripts + JSON listings. Run by scripts/bench-firewall.sh.
//!
//!   bench_firewall [ROUNDS] [KUBE_RULES]      # defaults: 50 5000

use felt_common::netns::{open_netns, NetnsGuard};
use overlayd::firewall::{build, Mode, Outcome, RuleSet};
use std::io::Write;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

struct Ns(String);

impl Ns {
    fn new(tag: &str) -> Result<Self, String> {
        let name = format!("felt-t-bf{tag}-{}", std::process::id());
        sh("ip", &["netns", "add", &name], None)?;
        Ok(Ns(name))
    }
}

impl Drop for Ns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
    }
}

/// Runs a command in the current thread's namespace.
fn sh(prog: &str, args: &[&str], stdin: Option<&str>) -> Result<String, String> {
    let mut c = Command::new(prog);
    c.args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = c.spawn().map_err(|e| format!("{prog}: {e}"))?;
    if let (Some(text), Some(mut pipe)) = (stdin, child.stdin.take()) {
        pipe.write_all(text.as_bytes()).map_err(|e| e.to_string())?;
    }
    let out = child.wait_with_output().map_err(|e| e.to_string())?;
    if !out.status.success() {
        return Err(format!(
            "{prog} {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// `n` kube-proxy-like service chains (a jump each from KUBE-SERVICES and
/// a DNAT-free rule inside), for `restore`.
fn kube_rules(n: usize) -> String {
    let mut s = String::from("*nat\n:KUBE-SERVICES - [0:0]\n");
    for i in 0..n {
        s.push_str(&format!(":KUBE-SVC-{i:06} - [0:0]\n"));
    }
    s.push_str(
        "-A PREROUTING -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES\n",
    );
    for i in 0..n {
        let (a, b) = (i / 250, i % 250 + 1);
        s.push_str(&format!(
            "-A KUBE-SERVICES -d 10.96.{a}.{b}/32 -p tcp -m comment --comment \"svc {i}\" -m tcp --dport 80 -j KUBE-SVC-{i:06}\n\
             -A KUBE-SVC-{i:06} -m comment --comment \"svc {i}\" -j RETURN\n"
        ));
    }
    s.push_str("COMMIT\n");
    s
}

struct Stats {
    median: Duration,
    p90: Duration,
}

fn stats(mut v: Vec<Duration>) -> Stats {
    v.sort();
    Stats {
        median: v[v.len() / 2],
        p90: v[(v.len() * 9 / 10).min(v.len() - 1)],
    }
}

fn ms(d: Duration) -> String {
    format!("{:.1}", d.as_secs_f64() * 1000.0)
}

/// Runs `f` on a thread inside `ns` with a tokio runtime made there.
fn inside<T: Send + 'static>(
    ns: &Ns,
    f: impl FnOnce(&tokio::runtime::Runtime) -> Result<T, String> + Send + 'static,
) -> Result<T, String> {
    let path = std::path::PathBuf::from(format!("/run/netns/{}", ns.0));
    std::thread::spawn(move || {
        let file = open_netns(&path).map_err(|e| e.to_string())?;
        let _in = NetnsGuard::enter(&file, &path).map_err(|e| e.to_string())?;
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| e.to_string())?;
        f(&rt)
    })
    .join()
    .map_err(|_| "benchmark thread panicked".to_string())?
}

fn rules() -> RuleSet {
    RuleSet {
        network: "10.244.0.0/16".parse().unwrap_or_default(),
        pod_subnet: "10.244.3.0/24".parse().unwrap_or_default(),
        masquerade: true,
        forward: true,
    }
}

/// (unchanged check, install) timings of `mode` after `setup` ran.
fn ensure_times(
    mode: Mode,
    setup: Option<(&'static str, String)>,
    rounds: usize,
) -> Result<(Stats, Stats), String> {
    let ns = Ns::new("e")?;
    inside(&ns, move |rt| {
        if let Some((restore, text)) = setup {
            sh(restore, &["--noflush"], Some(&text))?;
        }
        let fw = build(mode).map_err(|e| e.to_string())?;
        let (mut check, mut install) = (Vec::new(), Vec::new());
        for _ in 0..rounds {
            rt.block_on(fw.uninstall()).map_err(|e| e.to_string())?;
            let t = Instant::now();
            let o = rt
                .block_on(fw.ensure(&rules()))
                .map_err(|e| e.to_string())?;
            install.push(t.elapsed());
            if o == Outcome::Unchanged {
                return Err("install round reported Unchanged".into());
            }
            let t = Instant::now();
            let o = rt
                .block_on(fw.ensure(&rules()))
                .map_err(|e| e.to_string())?;
            check.push(t.elapsed());
            if o != Outcome::Unchanged {
                return Err(format!("check round reported {o:?}"));
            }
        }
        Ok((stats(check), stats(install)))
    })
}

/// The JSON twin of the text replace script: add + delete the table, then
/// every object of its listing (listed objects are read as "add").
fn json_replace(listing: &str) -> Result<String, String> {
    let v: serde_json::Value = serde_json::from_str(listing).map_err(|e| e.to_string())?;
    let table = serde_json::json!({"table": {"family": "ip", "name": "felt"}});
    let mut cmds = vec![
        serde_json::json!({"add": table}),
        serde_json::json!({"delete": table}),
    ];
    let objects = v["nftables"].as_array().cloned().unwrap_or_default();
    cmds.extend(objects.into_iter().filter(|o| o.get("metainfo").is_none()));
    Ok(serde_json::json!({ "nftables": cmds }).to_string())
}

/// Median time of `prog args < stdin` inside a namespace holding felt's
/// nft table.
fn raw_nft(rounds: usize, kube: Option<String>) -> Result<Vec<(&'static str, Stats)>, String> {
    let ns = Ns::new("r")?;
    inside(&ns, move |rt| {
        if let Some(text) = kube {
            sh("iptables-nft-restore", &["--noflush"], Some(&text))?;
        }
        let fw = build(Mode::Nftables).map_err(|e| e.to_string())?;
        rt.block_on(fw.ensure(&rules()))
            .map_err(|e| e.to_string())?;
        let text = sh("nft", &["list", "table", "ip", "felt"], None)?;
        let json = sh("nft", &["-j", "list", "table", "ip", "felt"], None)?;
        let replace = "add table ip felt\ndelete table ip felt\n";
        let text_apply = format!("{replace}{text}");
        let json_apply = json_replace(&json)?;
        type Case<'a> = (&'static str, &'a [&'a str], Option<&'a str>);
        let cases: [Case; 5] = [
            ("nft list tables (-j)", &["-j", "list", "tables"], None),
            (
                "nft list table, text",
                &["list", "table", "ip", "felt"],
                None,
            ),
            (
                "nft list table, JSON (-j)",
                &["-j", "list", "table", "ip", "felt"],
                None,
            ),
            (
                "nft -f: replace table, text",
                &["-f", "-"],
                Some(&text_apply),
            ),
            (
                "nft -j -f: replace table, JSON",
                &["-j", "-f", "-"],
                Some(&json_apply),
            ),
        ];
        let mut out = Vec::new();
        for (what, args, stdin) in cases {
            let mut v = Vec::new();
            for _ in 0..rounds {
                let t = Instant::now();
                sh("nft", args, stdin)?;
                v.push(t.elapsed());
            }
            out.push((what, stats(v)));
        }
        let mut v = Vec::new();
        for _ in 0..rounds {
            let t = Instant::now();
            rt.block_on(overlayd::firewall::netlink::inventory())
                .map_err(|e| e.to_string())?;
            v.push(t.elapsed());
        }
        out.push((
            "netlink dump of tables + chains (felt's inventory)",
            stats(v),
        ));
        Ok(out)
    })
}

type Scenario = (&'static str, Mode, Option<(&'static str, String)>);

/// What each timed namespace holds before felt's first round.
fn scenarios(kube: usize) -> Vec<Scenario> {
    let legacy_hint = "*nat\n:KUBE-POSTROUTING - [0:0]\nCOMMIT\n".to_string();
    vec![
        ("nftables, empty namespace", Mode::Nftables, None),
        ("iptables (nft variant), empty", Mode::Iptables, None),
        (
            "iptables (legacy variant), empty",
            Mode::Iptables,
            Some(("iptables-legacy-restore", legacy_hint)),
        ),
        (
            "iptables (nft variant), kube-proxy rules",
            Mode::Iptables,
            Some(("iptables-nft-restore", kube_rules(kube))),
        ),
        (
            "iptables (legacy variant), kube-proxy rules",
            Mode::Iptables,
            Some(("iptables-legacy-restore", kube_rules(kube))),
        ),
        (
            "nftables, next to kube-proxy iptables-nft rules",
            Mode::Nftables,
            Some(("iptables-nft-restore", kube_rules(kube))),
        ),
    ]
}

fn main() -> Result<(), String> {
    let args: Vec<String> = std::env::args().collect();
    let rounds: usize = args.get(1).and_then(|a| a.parse().ok()).unwrap_or(50);
    let kube: usize = args.get(2).and_then(|a| a.parse().ok()).unwrap_or(5000);
    let scenarios = scenarios(kube);
    println!(
        "ensure(), {rounds} rounds each; kube-proxy rules = {kube} services ({} rules)",
        2 * kube + 1
    );
    println!();
    println!("| scenario | check, nothing changed: median (p90) ms | install: median (p90) ms |");
    println!("|---|---|---|");
    for (what, mode, setup) in scenarios {
        let (check, install) = ensure_times(mode, setup, rounds)?;
        println!(
            "| {what} | {} ({}) | {} ({}) |",
            ms(check.median),
            ms(check.p90),
            ms(install.median),
            ms(install.p90)
        );
    }
    println!();
    println!(
        "| raw call (felt's table present) | alone: median (p90) ms | next to kube-proxy rules |"
    );
    println!("|---|---|---|");
    let alone = raw_nft(rounds, None)?;
    let crowded = raw_nft(rounds, Some(kube_rules(kube)))?;
    for ((what, a), (_, c)) in alone.into_iter().zip(crowded) {
        println!(
            "| {what} | {} ({}) | {} ({}) |",
            ms(a.median),
            ms(a.p90),
            ms(c.median),
            ms(c.p90)
        );
    }
    Ok(())
}
