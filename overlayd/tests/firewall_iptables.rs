//! iptables mode on a real kernel, inside throwaway namespaces, in both
//! variants: exact install, a second round that writes nothing (identical
//! listing, counters kept, nft monitor silent), repair of every hand-made
//! change, takeover of flannel's chains without a rewrite, uninstall that
//! leaves foreign rules byte-identical.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod backend_util;
mod firewall_util;

use felt_common::testutil::TestNetns;
use firewall_util::*;
use overlayd::firewall::{Mode, Outcome};

const NFT_SAVE: &str = "iptables-nft-save";
const LEGACY_SAVE: &str = "iptables-legacy-save";

/// New connections from the pod subnet through nat POSTROUTING: the jump
/// and the pod-to-pod RETURN rule count them.
fn traffic(ns: &TestNetns) {
    sh(
        ns,
        "ip addr replace 10.244.3.1/24 dev lo; ping -c 2 -W 1 -I 10.244.3.1 10.244.3.1 >/dev/null",
    );
}

fn jump_counter(save_c: &str) -> String {
    let line = save_c
        .lines()
        .find(|l| l.contains("-A POSTROUTING -m comment --comment \"flanneld masq\""))
        .unwrap_or_else(|| panic!("no jump in {save_c}"));
    line.split(' ').next().unwrap().to_string()
}

#[test]
fn iptables_installs_exactly_and_a_second_round_writes_nothing() {
    let ns = TestNetns::new("fwi1");
    let fw = Fw::new(Mode::Iptables);
    assert_eq!(fw.ensure(&ns, &rules()), Outcome::Installed);
    assert_eq!(
        felt_iptables(&save(&ns, NFT_SAVE, false)),
        expected_iptables()
    );
    traffic(&ns);
    let before = save(&ns, NFT_SAVE, true);
    assert_ne!(jump_counter(&before), "[0:0]", "the traffic did not count");

    let monitor = NftMonitor::start(&ns);
    assert_eq!(fw.ensure(&ns, &rules()), Outcome::Unchanged);
    assert_eq!(
        Fw::new(Mode::Iptables).ensure(&ns, &rules()),
        Outcome::Unchanged
    );
    assert_eq!(monitor.changes(), Vec::<String>::new());
    assert_eq!(
        save(&ns, NFT_SAVE, true),
        before,
        "listing or counters changed"
    );
}

#[test]
fn iptables_uses_the_legacy_variant_when_kube_proxy_does() {
    let ns = TestNetns::new("fwi2");
    foreign_xtables(&ns, "iptables-legacy-restore");
    let fw = Fw::new(Mode::Iptables);
    assert_eq!(fw.ensure(&ns, &rules()), Outcome::Installed);
    let legacy = save(&ns, LEGACY_SAVE, false);
    assert_eq!(felt_iptables(&legacy), expected_iptables());
    assert!(flannel_lines(&save(&ns, NFT_SAVE, false)).is_empty());
    // kube-proxy's jump stays first: ours is appended, like flannel's.
    let post = chain_lines(&legacy, "POSTROUTING");
    assert!(
        post[0].contains("KUBE-POSTROUTING") && post[1].contains("FLANNEL-POSTRTG"),
        "{post:?}"
    );

    traffic(&ns);
    let before = save(&ns, LEGACY_SAVE, true);
    assert_ne!(jump_counter(&before), "[0:0]");
    assert_eq!(fw.ensure(&ns, &rules()), Outcome::Unchanged);
    assert_eq!(
        save(&ns, LEGACY_SAVE, true),
        before,
        "listing or counters changed"
    );
}

#[test]
fn iptables_repairs_every_hand_made_change() {
    let ns = TestNetns::new("fwi3");
    let fw = Fw::new(Mode::Iptables);
    fw.ensure(&ns, &rules());
    let installed = flannel_lines(&save(&ns, NFT_SAVE, false));
    assert_eq!(installed.len(), 12, "{installed:?}");
    let jump = "POSTROUTING -m comment --comment 'flanneld masq' -j FLANNEL-POSTRTG";
    let mut breakages: Vec<String> = Vec::new();
    for n in 1..=6 {
        breakages.push(format!("iptables -t nat -D FLANNEL-POSTRTG {n}"));
    }
    for n in 1..=2 {
        breakages.push(format!("iptables -t filter -D FLANNEL-FWD {n}"));
    }
    breakages.extend([
        format!("iptables -t nat -D {jump}"),
        format!("iptables -t nat -A {jump}"),
        format!("iptables -t nat -I {jump}; iptables -t nat -A {jump}"),
        "iptables -t filter -D FORWARD -m comment --comment 'flanneld forward' -j FLANNEL-FWD; \
         iptables -t filter -F FLANNEL-FWD; iptables -t filter -X FLANNEL-FWD"
            .to_string(),
        "iptables -t filter -A FLANNEL-FWD -s 192.0.2.1 -j DROP".to_string(),
        "iptables -t nat -I FLANNEL-POSTRTG 3 -j RETURN".to_string(),
        "iptables -t nat -N OTHER; iptables -t nat -A OTHER -j FLANNEL-POSTRTG".to_string(),
        // The whole nat table (iptables-nft keeps it as an nf_tables table).
        "nft delete table ip nat".to_string(),
    ]);
    for b in &breakages {
        sh(&ns, b);
        assert_ne!(flannel_lines(&save(&ns, NFT_SAVE, false)), installed, "{b}");
        assert_eq!(fw.ensure(&ns, &rules()), Outcome::Repaired, "after {b}");
        let now = save(&ns, NFT_SAVE, false);
        assert_eq!(felt_iptables(&now), expected_iptables(), "after {b}");
        assert_eq!(flannel_lines(&now), installed, "after {b}");
    }
}

#[test]
fn iptables_takes_over_flannels_chains_without_rewriting_them() {
    let ns = TestNetns::new("fwi4");
    foreign_nft(&ns);
    // Leftovers to remove: felt's own table from nftables mode, flannel's
    // nftables tables, flannel's chains in the other variant.
    Fw::new(Mode::Nftables).ensure(&ns, &rules());
    flannel_nft(&ns);
    flannel_iptables(&ns, "iptables-nft-restore");
    flannel_iptables(&ns, "iptables-legacy-restore");
    traffic(&ns);
    let nft_foreign = ruleset(&ns);
    let before = save(&ns, NFT_SAVE, true);

    let fw = Fw::new(Mode::Iptables);
    assert_eq!(fw.ensure(&ns, &rules()), Outcome::Repaired);
    assert_eq!(
        save(&ns, NFT_SAVE, true),
        before,
        "flannel's exact rules were rewritten"
    );
    let after = ruleset(&ns);
    assert!(
        !after.contains("flannel-ipv") && !after.contains("table ip felt"),
        "{after}"
    );
    let expect = [
        "table ip felt",
        "table ip flannel-ipv4",
        "table ip6 flannel-ipv6",
    ]
    .iter()
    .fold(nft_foreign, |t, h| without_table(&t, h));
    assert_eq!(after, expect);
    assert!(flannel_lines(&save(&ns, LEGACY_SAVE, false)).is_empty());
    assert_eq!(fw.ensure(&ns, &rules()), Outcome::Unchanged);
}

#[test]
fn iptables_removes_a_duplicate_jump() {
    let ns = TestNetns::new("fwi5");
    // flannel's rules loaded twice: the chains are redeclared (flushed),
    // the jumps appended twice.
    flannel_iptables(&ns, "iptables-nft-restore");
    flannel_iptables(&ns, "iptables-nft-restore");
    assert_eq!(chain_lines(&save(&ns, NFT_SAVE, false), "FORWARD").len(), 2);
    let fw = Fw::new(Mode::Iptables);
    assert_eq!(fw.ensure(&ns, &rules()), Outcome::Repaired);
    assert_eq!(
        felt_iptables(&save(&ns, NFT_SAVE, false)),
        expected_iptables()
    );
}

#[test]
fn iptables_uninstall_removes_all_of_it_and_nothing_else() {
    let ns = TestNetns::new("fwi6");
    foreign_xtables(&ns, "iptables-nft-restore");
    foreign_nft(&ns);
    let (nft_before, xt_before) = (ruleset(&ns), save(&ns, NFT_SAVE, false));
    let fw = Fw::new(Mode::Iptables);
    fw.ensure(&ns, &rules());
    flannel_nft(&ns);
    fw.uninstall(&ns);
    assert_eq!(save(&ns, NFT_SAVE, false), xt_before);
    assert_eq!(ruleset(&ns), nft_before);
    fw.uninstall(&ns);
}

#[test]
fn switching_mode_removes_the_other_modes_rules() {
    let ns = TestNetns::new("fwi7");
    assert_eq!(
        Fw::new(Mode::Iptables).ensure(&ns, &rules()),
        Outcome::Installed
    );
    assert_eq!(
        Fw::new(Mode::Nftables).ensure(&ns, &rules()),
        Outcome::Installed
    );
    assert!(flannel_lines(&save(&ns, NFT_SAVE, false)).is_empty());
    assert_eq!(felt_chains(&ns), Some(expected_felt()));

    assert_eq!(
        Fw::new(Mode::Iptables).ensure(&ns, &rules()),
        Outcome::Installed
    );
    assert_eq!(felt_chains(&ns), None);
    assert_eq!(
        felt_iptables(&save(&ns, NFT_SAVE, false)),
        expected_iptables()
    );
}
