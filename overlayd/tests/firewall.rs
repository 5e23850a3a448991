//! The masquerade and forward rules on a real kernel, each test in its own
//! network namespace: installed exactly, left alone when right (the kernel
//! sees no change: `nft monitor`, which also reports iptables-nft), repaired
//! when a rule, chain, table or jump is deleted or doubled by hand, flannel's
//! leftovers taken over or removed so nothing is doubled, the other mode's
//! rules removed on a switch, and uninstall leaving others' rules alone.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod backend_util;

use backend_util::block_in;
use felt_common::kernel_monitor::NftMonitor;
use felt_common::testutil::TestNetns;
use overlayd::firewall::{self, Firewall, Mode, Outcome, RuleSet};
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

fn rules() -> RuleSet {
    RuleSet {
        network: "10.244.0.0/16".parse().unwrap(),
        pod_subnet: "10.244.3.0/24".parse().unwrap(),
        masquerade: true,
        forward: true,
    }
}

/// The rule backends of one daemon: one per mode, kept across checks as
/// the daemon keeps its own (it remembers having written the rules).
struct Daemon {
    fws: std::collections::BTreeMap<&'static str, Arc<dyn Firewall>>,
}

static DAEMONS: std::sync::Mutex<Vec<(String, Daemon)>> = std::sync::Mutex::new(Vec::new());

/// The daemon of `ns` restarts (e.g. with EnableNFTables switched).
fn restart(ns: &TestNetns) {
    DAEMONS.lock().unwrap().retain(|(n, _)| *n != ns.name);
}

/// One `ensure` in `ns`, by that namespace's daemon.
fn ensure(ns: &TestNetns, mode: Mode, rules: &RuleSet) -> Outcome {
    let fw = {
        let mut all = DAEMONS.lock().unwrap();
        if !all.iter().any(|(n, _)| *n == ns.name) {
            all.push((
                ns.name.clone(),
                Daemon {
                    fws: Default::default(),
                },
            ));
        }
        let d = &mut all.iter_mut().find(|(n, _)| *n == ns.name).unwrap().1;
        match d.fws.get(mode.name()) {
            Some(fw) => fw.clone(),
            None => {
                let fw: Arc<dyn Firewall> = Arc::from(block_in(ns, move || async move {
                    firewall::build(mode).await.unwrap()
                }));
                d.fws.insert(mode.name(), fw.clone());
                fw
            }
        }
    };
    let rules = rules.clone();
    block_in(ns, move || async move { fw.ensure(&rules).await.unwrap() })
}

fn uninstall(ns: &TestNetns) {
    block_in(ns, || async {
        let errors = firewall::uninstall_all().await;
        assert!(errors.is_empty(), "{errors:?}");
    });
}

/// Everything the namespace's firewall holds, as a sorted multiset of
/// lines (order is not state, but a doubled rule is), header comments
/// left out.
fn ruleset(ns: &TestNetns) -> Vec<String> {
    let nft = ns.exec_ok(&["nft", "list", "ruleset"]);
    let ipt = ns.exec_ok(&["iptables-save"]);
    let legacy = ns.exec_ok(&["iptables-legacy-save"]);
    let mut lines: Vec<String> = nft
        .lines()
        .chain(ipt.lines())
        .chain(legacy.lines())
        .filter(|l| !l.starts_with('#'))
        .map(|l| l.trim().to_string())
        .collect();
    lines.sort();
    lines
}

fn install_then_unchanged(mode: Mode) -> TestNetns {
    let ns = TestNetns::new(&format!("fw{}", &mode.name()[..3]));
    assert_eq!(ensure(&ns, mode, &rules()), Outcome::Installed);
    let installed = ruleset(&ns);
    let log = std::env::temp_dir().join(format!("{}-nft.log", ns.name));
    let monitor = NftMonitor::start(&ns.name, &log);
    assert_eq!(ensure(&ns, mode, &rules()), Outcome::Unchanged);
    assert_eq!(ensure(&ns, mode, &rules()), Outcome::Unchanged);
    std::thread::sleep(Duration::from_millis(200));
    assert!(monitor.changes().is_empty(), "{:?}", monitor.changes());
    assert_eq!(ruleset(&ns), installed);
    drop(monitor);
    let _ = std::fs::remove_file(&log);
    ns
}

#[test]
fn nftables_rules_are_exact_and_left_alone_when_right() {
    let ns = install_then_unchanged(Mode::Nftables);
    let text = ns.exec_ok(&["nft", "list", "table", "ip", "felt"]);
    for want in [
        "type nat hook postrouting priority srcnat; policy accept;",
        "meta mark & 0x00004000 == 0x00004000 return",
        "ip saddr 10.244.3.0/24 ip daddr 10.244.0.0/16 return",
        "ip saddr 10.244.0.0/16 ip daddr 10.244.3.0/24 return",
        "ip saddr != 10.244.0.0/16 ip daddr 10.244.3.0/24 return",
        "ip saddr 10.244.0.0/16 ip daddr != 224.0.0.0/4 masquerade fully-random",
        "ip saddr != 10.244.0.0/16 ip daddr 10.244.0.0/16 masquerade fully-random",
        "type filter hook forward priority filter; policy accept;",
        "ip saddr 10.244.0.0/16 accept",
        "ip daddr 10.244.0.0/16 accept",
    ] {
        assert!(text.contains(want), "missing {want:?} in\n{text}");
    }
    assert!(!ns.exec_ok(&["iptables-save"]).contains("FLANNEL"));
}

#[test]
fn iptables_rules_are_flannels_and_left_alone_when_right() {
    let ns = install_then_unchanged(Mode::Iptables);
    let nat = ns.exec_ok(&["iptables-save", "-t", "nat"]);
    let [want_nat, want_fwd] = firewall::iptables::chains(&rules());
    let ours: Vec<&str> = nat
        .lines()
        .filter(|l| l.starts_with("-A FLANNEL-POSTRTG"))
        .collect();
    assert_eq!(
        ours,
        want_nat
            .rules
            .iter()
            .map(String::as_str)
            .collect::<Vec<_>>()
    );
    assert_eq!(nat.lines().filter(|l| *l == want_nat.jump).count(), 1);
    let filter = ns.exec_ok(&["iptables-save", "-t", "filter"]);
    assert_eq!(
        filter
            .lines()
            .filter(|l| l.starts_with("-A FLANNEL-FWD"))
            .count(),
        2
    );
    assert_eq!(filter.lines().filter(|l| *l == want_fwd.jump).count(), 1);
    assert!(
        ns.exec(&["nft", "list", "table", "ip", "felt"])
            .status
            .code()
            != Some(0)
    );
}

/// Breaks the rules one way, expects ensure to repair them exactly.
fn repaired(ns: &TestNetns, mode: Mode, break_it: &[&str], want: &[String]) {
    ns.exec_ok(break_it);
    assert_ne!(ruleset(ns), want, "{break_it:?} changed nothing");
    assert_eq!(
        ensure(ns, mode, &rules()),
        Outcome::Repaired,
        "{break_it:?}"
    );
    assert_eq!(ruleset(ns), want, "after {break_it:?}");
}

/// The handle of the nft rule in `chain` whose text contains `needle`.
fn nft_handle(ns: &TestNetns, chain: &str, needle: &str) -> String {
    let text = ns.exec_ok(&["nft", "-a", "list", "chain", "ip", "felt", chain]);
    let line = text
        .lines()
        .find(|l| l.contains(needle))
        .unwrap_or_else(|| panic!("{needle} in {text}"));
    line.rsplit("# handle ").next().unwrap().trim().to_string()
}

#[test]
fn nftables_each_deleted_rule_chain_and_the_table_are_repaired() {
    let ns = install_then_unchanged(Mode::Nftables);
    let want = ruleset(&ns);
    let postrouting = [
        "meta mark",
        "ip saddr 10.244.3.0/24 ip daddr 10.244.0.0/16",
        "ip saddr 10.244.0.0/16 ip daddr 10.244.3.0/24",
        "ip saddr != 10.244.0.0/16 ip daddr 10.244.3.0/24",
        "daddr != 224.0.0.0/4",
        "ip saddr != 10.244.0.0/16 ip daddr 10.244.0.0/16",
    ];
    for needle in postrouting {
        let h = nft_handle(&ns, "postrouting", needle);
        repaired(
            &ns,
            Mode::Nftables,
            &[
                "nft",
                "delete",
                "rule",
                "ip",
                "felt",
                "postrouting",
                "handle",
                &h,
            ],
            &want,
        );
    }
    for needle in [
        "ip saddr 10.244.0.0/16 accept",
        "ip daddr 10.244.0.0/16 accept",
    ] {
        let h = nft_handle(&ns, "forward", needle);
        repaired(
            &ns,
            Mode::Nftables,
            &[
                "nft", "delete", "rule", "ip", "felt", "forward", "handle", &h,
            ],
            &want,
        );
    }
    repaired(
        &ns,
        Mode::Nftables,
        &["nft", "add", "rule", "ip", "felt", "forward", "accept"],
        &want,
    );
    repaired(
        &ns,
        Mode::Nftables,
        &["nft", "flush", "chain", "ip", "felt", "postrouting"],
        &want,
    );
    repaired(
        &ns,
        Mode::Nftables,
        &["nft", "delete", "table", "ip", "felt"],
        &want,
    );
}

#[test]
fn iptables_each_deleted_rule_chain_and_jump_are_repaired() {
    let ns = install_then_unchanged(Mode::Iptables);
    let want = ruleset(&ns);
    let [nat, fwd] = firewall::iptables::chains(&rules());
    for (table, c) in [("nat", &nat), ("filter", &fwd)] {
        for rule in &c.rules {
            let mut del = vec!["iptables", "-t", table];
            let spec = rule.replacen("-A ", "-D ", 1);
            let words = shell_words(&spec);
            del.extend(words.iter().map(String::as_str));
            repaired(&ns, Mode::Iptables, &del, &want);
        }
        let jump = shell_words(&c.jump.replacen("-A ", "-D ", 1));
        let mut del = vec!["iptables", "-t", table];
        del.extend(jump.iter().map(String::as_str));
        repaired(&ns, Mode::Iptables, &del, &want);
        // A second jump (an old flannel appended one): deduplicated.
        let dup = shell_words(&c.jump);
        let mut add = vec!["iptables", "-t", table];
        add.extend(dup.iter().map(String::as_str));
        repaired(&ns, Mode::Iptables, &add, &want);
        repaired(
            &ns,
            Mode::Iptables,
            &["iptables", "-t", table, "-F", c.chain],
            &want,
        );
    }
}

/// Splits an iptables-save line into words, honouring double quotes.
fn shell_words(line: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut quoted = false;
    for ch in line.chars() {
        match ch {
            '"' => quoted = !quoted,
            ' ' if !quoted => {
                if !cur.is_empty() {
                    out.push(std::mem::take(&mut cur));
                }
            }
            _ => cur.push(ch),
        }
    }
    if !cur.is_empty() {
        out.push(cur);
    }
    out
}

/// What a node switched from flannel carries: flannel's iptables chains
/// (an older rule set: no --random-fully, a doubled jump) and its
/// nftables tables, beside kube-proxy's chain and someone's table.
fn flannel_node(tag: &str) -> TestNetns {
    let ns = TestNetns::new(tag);
    let restore = "*nat
:KUBE-POSTROUTING - [0:0]
:FLANNEL-POSTRTG - [0:0]
-A POSTROUTING -m comment --comment \"kubernetes postrouting rules\" -j KUBE-POSTROUTING
-A POSTROUTING -m comment --comment \"flanneld masq\" -j FLANNEL-POSTRTG
-A POSTROUTING -m comment --comment \"flanneld masq\" -j FLANNEL-POSTRTG
-A KUBE-POSTROUTING -m mark --mark 0x4000/0x4000 -j MASQUERADE
-A FLANNEL-POSTRTG -s 10.244.0.0/16 -d 10.244.0.0/16 -m comment --comment \"flanneld masq\" -j RETURN
-A FLANNEL-POSTRTG -s 10.244.0.0/16 ! -d 224.0.0.0/4 -m comment --comment \"flanneld masq\" -j MASQUERADE
COMMIT
";
    let mut cmd = ns.command("iptables-restore");
    cmd.arg("--noflush").stdin(Stdio::piped());
    let mut child = cmd.spawn().unwrap();
    use std::io::Write;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(restore.as_bytes())
        .unwrap();
    assert!(child.wait().unwrap().success());
    for t in ["ip flannel-ipv4", "ip6 flannel-ipv6", "inet someone-else"] {
        let words: Vec<&str> = t.split(' ').collect();
        ns.exec_ok(&["nft", "add", "table", words[0], words[1]]);
    }
    ns.exec_ok(&[
        "nft",
        "add",
        "chain",
        "inet",
        "someone-else",
        "c",
        "{ type filter hook input priority 0; policy accept; }",
    ]);
    ns
}

fn foreign(ns: &TestNetns) -> Vec<String> {
    ruleset(ns)
        .into_iter()
        .filter(|l| l.contains("KUBE-") || l.contains("someone-else") || l.contains("hook input"))
        .collect()
}

#[test]
fn a_flannel_node_is_taken_over_without_doubling_in_both_modes() {
    for mode in [Mode::Iptables, Mode::Nftables] {
        let ns = flannel_node(&format!("fwtk{}", &mode.name()[..3]));
        let others = foreign(&ns);
        assert_eq!(ensure(&ns, mode, &rules()), Outcome::Repaired);
        let all = ruleset(&ns);
        let nat = ns.exec_ok(&["iptables-save", "-t", "nat"]);
        let jumps = nat
            .lines()
            .filter(|l| l.ends_with("-j FLANNEL-POSTRTG"))
            .count();
        let tables = ns.exec_ok(&["nft", "list", "tables"]);
        assert!(
            !tables.contains("flannel-ipv4") && !tables.contains("flannel-ipv6"),
            "{tables}"
        );
        match mode {
            Mode::Iptables => {
                assert_eq!(jumps, 1, "{nat}");
                assert!(nat.contains("--random-fully"), "{nat}");
                assert!(!tables.contains("table ip felt"), "{tables}");
            }
            Mode::Nftables => {
                assert_eq!(jumps, 0, "flannel's chains kept beside felt's table: {nat}");
                assert!(!nat.contains(":FLANNEL-POSTRTG"), "{nat}");
                assert!(tables.contains("table ip felt"), "{tables}");
            }
        }
        assert_eq!(
            foreign(&ns),
            others,
            "{mode:?} touched someone else's rules: {all:?}"
        );
        assert_eq!(ensure(&ns, mode, &rules()), Outcome::Unchanged);
    }
}

#[test]
fn switching_mode_removes_the_other_modes_rules_and_uninstall_removes_all() {
    let ns = flannel_node("fwsw");
    let others = foreign(&ns);
    ensure(&ns, Mode::Iptables, &rules());
    restart(&ns);
    assert_eq!(ensure(&ns, Mode::Nftables, &rules()), Outcome::Repaired);
    assert!(!ns.exec_ok(&["iptables-save"]).contains("FLANNEL"));
    restart(&ns);
    assert_eq!(ensure(&ns, Mode::Iptables, &rules()), Outcome::Repaired);
    assert!(!ns
        .exec_ok(&["nft", "list", "tables"])
        .contains("table ip felt"));
    uninstall(&ns);
    let left = ruleset(&ns);
    assert!(
        !left
            .iter()
            .any(|l| l.contains("FLANNEL") || l.contains("table ip felt")),
        "{left:?}"
    );
    assert_eq!(foreign(&ns), others);
    // Rules off: nothing of felt's stays or comes back.
    restart(&ns);
    let off = RuleSet {
        masquerade: false,
        forward: false,
        ..rules()
    };
    assert_eq!(ensure(&ns, Mode::Iptables, &off), Outcome::Unchanged);
    assert!(!ns.exec_ok(&["iptables-save"]).contains("FLANNEL"));
}
