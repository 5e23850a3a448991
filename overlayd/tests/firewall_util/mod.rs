//! Helpers for the firewall tests: running a Firewall inside a test
//! namespace, reading the rules back as text, what flannel leaves behind,
//! and `nft monitor` as proof that a round wrote nothing.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use crate::backend_util::block_in;
use felt_common::testutil::TestNetns;
use overlayd::firewall::{build, Firewall, Mode, Outcome, RuleSet};
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

pub fn rules() -> RuleSet {
    RuleSet {
        network: "10.244.0.0/16".parse().unwrap(),
        pod_subnet: "10.244.3.0/24".parse().unwrap(),
        masquerade: true,
        forward: true,
    }
}

/// A firewall kept across rounds, like the daemon keeps one.
#[derive(Clone)]
pub struct Fw(pub Arc<dyn Firewall>);

impl Fw {
    pub fn new(mode: Mode) -> Self {
        Fw(Arc::from(build(mode).unwrap()))
    }

    /// One `ensure` inside `ns`.
    pub fn ensure(&self, ns: &TestNetns, rs: &RuleSet) -> Outcome {
        let (fw, rs) = (self.0.clone(), rs.clone());
        block_in(ns, move || async move { fw.ensure(&rs).await })
            .unwrap_or_else(|e| panic!("ensure in {}: {e}", ns.name))
    }

    pub fn uninstall(&self, ns: &TestNetns) {
        let fw = self.0.clone();
        block_in(ns, move || async move { fw.uninstall().await })
            .unwrap_or_else(|e| panic!("uninstall in {}: {e}", ns.name))
    }
}

/// Runs a shell snippet inside `ns` (tests only: readable setup lines).
pub fn sh(ns: &TestNetns, script: &str) -> String {
    ns.exec_ok(&["sh", "-ec", script])
}

/// Feeds `input` to `argv` inside `ns`.
pub fn feed(ns: &TestNetns, argv: &[&str], input: &str) {
    use std::io::Write;
    let mut cmd = ns.command(argv[0]);
    cmd.args(&argv[1..]).stdin(Stdio::piped());
    let mut child = cmd.spawn().unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(input.as_bytes())
        .unwrap();
    let st = child.wait().unwrap();
    assert!(st.success(), "{argv:?} < {input}");
}

/// `nft list ruleset` inside `ns`.
pub fn ruleset(ns: &TestNetns) -> String {
    ns.exec_ok(&["nft", "list", "ruleset"])
}

/// An iptables-save listing without its timestamp comment lines.
pub fn save(ns: &TestNetns, tool: &str, counters: bool) -> String {
    let mut argv = vec![tool];
    if counters {
        argv.push("-c");
    }
    ns.exec_ok(&argv)
        .lines()
        .filter(|l| !l.starts_with('#'))
        .map(|l| format!("{l}\n"))
        .collect()
}

/// The rule lines of `chain` in a save listing, in order.
pub fn chain_lines(save: &str, chain: &str) -> Vec<String> {
    let prefix = format!("-A {chain} ");
    save.lines()
        .filter(|l| l.starts_with(&prefix))
        .map(str::to_string)
        .collect()
}

/// Lines mentioning FLANNEL- chains anywhere (declarations, rules,
/// jumps), sorted: a multiset, so a doubled line shows.
pub fn flannel_lines(save: &str) -> Vec<String> {
    let mut lines: Vec<String> = save
        .lines()
        .filter(|l| l.contains("FLANNEL-"))
        .map(str::to_string)
        .collect();
    lines.sort();
    lines
}

/// flannel's iptables rules for `rules()`, as flannel v0.28 leaves them
/// (its rule specs, appended jumps), loaded with `tool` (a *-restore).
pub fn flannel_iptables(ns: &TestNetns, restore: &str) {
    let m = "-m comment --comment \"flanneld masq\"";
    let f = "-m comment --comment \"flanneld forward\"";
    let text = format!(
        "*nat\n:FLANNEL-POSTRTG - [0:0]\n\
         -A POSTROUTING {m} -j FLANNEL-POSTRTG\n\
         -A FLANNEL-POSTRTG -m mark --mark 0x4000/0x4000 {m} -j RETURN\n\
         -A FLANNEL-POSTRTG -s 10.244.3.0/24 -d 10.244.0.0/16 {m} -j RETURN\n\
         -A FLANNEL-POSTRTG -s 10.244.0.0/16 -d 10.244.3.0/24 {m} -j RETURN\n\
         -A FLANNEL-POSTRTG ! -s 10.244.0.0/16 -d 10.244.3.0/24 {m} -j RETURN\n\
         -A FLANNEL-POSTRTG -s 10.244.0.0/16 ! -d 224.0.0.0/4 {m} -j MASQUERADE --random-fully\n\
         -A FLANNEL-POSTRTG ! -s 10.244.0.0/16 -d 10.244.0.0/16 {m} -j MASQUERADE --random-fully\n\
         COMMIT\n*filter\n:FLANNEL-FWD - [0:0]\n\
         -A FORWARD {f} -j FLANNEL-FWD\n\
         -A FLANNEL-FWD -s 10.244.0.0/16 {f} -j ACCEPT\n\
         -A FLANNEL-FWD -d 10.244.0.0/16 {f} -j ACCEPT\n\
         COMMIT\n"
    );
    feed(ns, &[restore, "--noflush"], &text);
}

/// flannel's nftables-mode tables as knftables creates them (table
/// comments, both families, chain comments).
pub fn flannel_nft(ns: &TestNetns) {
    let text = "\
table ip flannel-ipv4 {
  comment \"rules for flannel-ipv4\"
  chain postrtg {
    comment \"chain to manage traffic masquerading by flannel\"
    type nat hook postrouting priority srcnat; policy accept;
    meta mark 0x4000 return
    ip saddr 10.244.3.0/24 ip daddr 10.244.0.0/16 return
    ip saddr 10.244.0.0/16 ip daddr 10.244.3.0/24 return
    ip saddr != 10.244.3.0/24 ip daddr 10.244.0.0/16 return
    ip saddr 10.244.0.0/16 ip daddr != 224.0.0.0/4 masquerade fully-random
    ip saddr != 10.244.0.0/16 ip daddr 10.244.0.0/16 masquerade fully-random
  }
  chain forward {
    comment \"chain to accept flannel traffic\"
    type filter hook forward priority filter; policy accept;
    ip saddr 10.244.0.0/16 accept
    ip daddr 10.244.0.0/16 accept
  }
}
table ip6 flannel-ipv6 {
  comment \"rules for flannel-ipv6\"
}
";
    feed(ns, &["nft", "-f", "-"], text);
}

/// iptables state no felt code may touch, loaded with `restore`: a
/// kube-proxy-like nat chain with its jump and a foreign forward rule
/// (every base chain declared, so that the tables look the same whoever
/// adds to them later).
pub fn foreign_xtables(ns: &TestNetns, restore: &str) {
    let text = "*nat\n:PREROUTING ACCEPT [0:0]\n:INPUT ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n\
                :POSTROUTING ACCEPT [0:0]\n:KUBE-POSTROUTING - [0:0]\n\
                -A POSTROUTING -m comment --comment \"kubernetes postrouting rules\" -j KUBE-POSTROUTING\n\
                -A KUBE-POSTROUTING -m mark ! --mark 0x4000/0x4000 -j RETURN\n\
                -A KUBE-POSTROUTING -j MASQUERADE --random-fully\n\
                COMMIT\n*filter\n:INPUT ACCEPT [0:0]\n:FORWARD ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n\
                -A FORWARD -s 192.0.2.0/24 -j ACCEPT\nCOMMIT\n";
    feed(ns, &[restore, "--noflush"], text);
}

/// An unrelated nft table no felt code may touch.
pub fn foreign_nft(ns: &TestNetns) {
    feed(
        ns,
        &["nft", "-f", "-"],
        "table inet other {\n chain c {\n  type filter hook input priority 10; policy accept;\n  tcp dport 22 counter accept\n }\n}\n",
    );
}

/// `nft monitor` in a namespace, to prove that a step wrote nothing: every
/// nf_tables transaction (nft's and iptables-nft's) is reported.
pub struct NftMonitor {
    child: Child,
    log: PathBuf,
    ns: String,
}

const MARK_A: &str = "felt_t_mark_a";
const MARK_B: &str = "felt_t_mark_b";

impl NftMonitor {
    /// Starts the monitor and returns once it provably reports changes.
    pub fn start(ns: &TestNetns) -> Self {
        let log = std::env::temp_dir().join(format!("{}-nft-monitor.log", ns.name));
        let out = std::fs::File::create(&log).unwrap();
        let child = ns
            .command("nft")
            .arg("monitor")
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let m = NftMonitor {
            child,
            log,
            ns: ns.name.clone(),
        };
        // The monitor may subscribe after the first marker: repeat until seen.
        let start = Instant::now();
        while !m.marker_seen(MARK_A, "delete") {
            assert!(
                start.elapsed() < Duration::from_secs(20),
                "nft monitor silent"
            );
            m.marker(MARK_A);
            m.wait_for(MARK_A, Duration::from_millis(500));
        }
        m
    }

    fn marker(&self, name: &str) {
        use std::io::Write;
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.ns, "nft", "-f", "-"]);
        let mut child = c.stdin(Stdio::piped()).spawn().unwrap();
        let script = format!("add table ip {name}\ndelete table ip {name}\n");
        child
            .stdin
            .take()
            .unwrap()
            .write_all(script.as_bytes())
            .unwrap();
        assert!(child.wait().unwrap().success());
    }

    fn text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn marker_seen(&self, name: &str, verb: &str) -> bool {
        self.text().contains(&format!("{verb} table ip {name}"))
    }

    fn wait_for(&self, name: &str, timeout: Duration) -> bool {
        let end = Instant::now() + timeout;
        while Instant::now() < end {
            if self.marker_seen(name, "delete") {
                return true;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        false
    }

    /// Everything reported between the start handshake and now (a closing
    /// marker proves the monitor has caught up).
    pub fn changes(&self) -> Vec<String> {
        self.marker(MARK_B);
        assert!(
            self.wait_for(MARK_B, Duration::from_secs(10)),
            "closing marker never reported"
        );
        let text = self.text();
        let lines: Vec<&str> = text.lines().collect();
        let after_a = lines
            .iter()
            .rposition(|l| l.contains(&format!("table ip {MARK_A}")))
            .unwrap();
        let before_b = lines
            .iter()
            .position(|l| l.contains(&format!("table ip {MARK_B}")))
            .unwrap();
        let mut between = &lines[after_a + 1..before_b];
        // The opening marker's own generation line.
        if between
            .first()
            .is_some_and(|l| l.starts_with("# new generation"))
        {
            between = &between[1..];
        }
        between
            .iter()
            .filter(|l| !l.trim().is_empty())
            .map(|l| l.to_string())
            .collect()
    }
}

impl Drop for NftMonitor {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_file(&self.log);
    }
}

/// `nft list table ip felt` as chain → rule lines (in order), or None when
/// the table does not exist. Chains are a map: their order is not state.
pub fn felt_chains(ns: &TestNetns) -> Option<BTreeMap<String, Vec<String>>> {
    let out = ns.exec(&["nft", "list", "table", "ip", "felt"]);
    if !out.status.success() {
        return None;
    }
    let mut chains = BTreeMap::new();
    let mut current: Option<String> = None;
    for line in String::from_utf8_lossy(&out.stdout).lines().map(str::trim) {
        if let Some(name) = line
            .strip_prefix("chain ")
            .and_then(|l| l.strip_suffix(" {"))
        {
            current = Some(name.to_string());
            chains.insert(name.to_string(), Vec::new());
        } else if line == "}" {
            current = None;
        } else if let (Some(c), false) = (&current, line.is_empty()) {
            chains.get_mut(c).unwrap().push(line.to_string());
        }
    }
    Some(chains)
}

/// What `nft list table ip felt` must show for `rules()`.
pub fn expected_felt() -> BTreeMap<String, Vec<String>> {
    let post = [
        "type nat hook postrouting priority srcnat; policy accept;",
        "meta mark & 0x00004000 == 0x00004000 return",
        "ip saddr 10.244.3.0/24 ip daddr 10.244.0.0/16 return",
        "ip saddr 10.244.0.0/16 ip daddr 10.244.3.0/24 return",
        "ip saddr != 10.244.0.0/16 ip daddr 10.244.3.0/24 return",
        "ip saddr 10.244.0.0/16 ip daddr != 224.0.0.0/4 masquerade fully-random",
        "ip saddr != 10.244.0.0/16 ip daddr 10.244.0.0/16 masquerade fully-random",
    ];
    let fwd = [
        "type filter hook forward priority filter; policy accept;",
        "ip saddr 10.244.0.0/16 accept",
        "ip daddr 10.244.0.0/16 accept",
    ];
    let own = |l: &[&str]| l.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    BTreeMap::from([
        ("postrouting".to_string(), own(&post)),
        ("forward".to_string(), own(&fwd)),
    ])
}

/// What iptables-save must show of felt's chains for `rules()`, chain by
/// chain in rule order.
pub fn expected_iptables() -> BTreeMap<&'static str, Vec<String>> {
    let m = "-m comment --comment \"flanneld masq\"";
    let f = "-m comment --comment \"flanneld forward\"";
    BTreeMap::from([
        (
            "FLANNEL-POSTRTG",
            vec![
                format!("-A FLANNEL-POSTRTG -m mark --mark 0x4000/0x4000 {m} -j RETURN"),
                format!("-A FLANNEL-POSTRTG -s 10.244.3.0/24 -d 10.244.0.0/16 {m} -j RETURN"),
                format!("-A FLANNEL-POSTRTG -s 10.244.0.0/16 -d 10.244.3.0/24 {m} -j RETURN"),
                format!("-A FLANNEL-POSTRTG ! -s 10.244.0.0/16 -d 10.244.3.0/24 {m} -j RETURN"),
                format!("-A FLANNEL-POSTRTG -s 10.244.0.0/16 ! -d 224.0.0.0/4 {m} -j MASQUERADE --random-fully"),
                format!("-A FLANNEL-POSTRTG ! -s 10.244.0.0/16 -d 10.244.0.0/16 {m} -j MASQUERADE --random-fully"),
            ],
        ),
        ("POSTROUTING", vec![format!("-A POSTROUTING {m} -j FLANNEL-POSTRTG")]),
        (
            "FLANNEL-FWD",
            vec![
                format!("-A FLANNEL-FWD -s 10.244.0.0/16 {f} -j ACCEPT"),
                format!("-A FLANNEL-FWD -d 10.244.0.0/16 {f} -j ACCEPT"),
            ],
        ),
        ("FORWARD", vec![format!("-A FORWARD {f} -j FLANNEL-FWD")]),
    ])
}

/// felt's chains (and the jumps to them) in a save listing, as
/// [`expected_iptables`] lays them out; foreign rules of the hook chains
/// are left out.
pub fn felt_iptables(save: &str) -> BTreeMap<&'static str, Vec<String>> {
    let mut out = BTreeMap::new();
    for chain in ["FLANNEL-POSTRTG", "POSTROUTING", "FLANNEL-FWD", "FORWARD"] {
        let lines: Vec<String> = chain_lines(save, chain)
            .into_iter()
            .filter(|l| chain.starts_with("FLANNEL-") || l.contains("FLANNEL-"))
            .collect();
        out.insert(chain, lines);
    }
    out
}

/// `text` (an `nft list ruleset`) without the block of `header`
/// (e.g. "table ip felt").
pub fn without_table(text: &str, header: &str) -> String {
    let mut out = String::new();
    let mut skipping = false;
    for line in text.lines() {
        if line == format!("{header} {{") {
            skipping = true;
        } else if skipping && line == "}" {
            skipping = false;
        } else if !skipping {
            out.push_str(line);
            out.push('\n');
        }
    }
    out
}

/// Rule handles of `chain` in felt's table, in order.
pub fn felt_handles(ns: &TestNetns, chain: &str) -> Vec<String> {
    let text = ns.exec_ok(&["nft", "-a", "list", "chain", "ip", "felt", chain]);
    text.lines()
        .filter(|l| !l.contains("type ") && !l.contains("chain "))
        .filter_map(|l| {
            l.rsplit_once("# handle ")
                .map(|(_, h)| h.trim().to_string())
        })
        .collect()
}
