//! nftables mode on a real kernel, inside throwaway namespaces: exact
//! install, a second round that writes nothing (nft monitor), repair of
//! every hand-made change, takeover from flannel, uninstall that leaves
//! foreign rules byte-identical.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod backend_util;
mod firewall_util;

use felt_common::testutil::TestNetns;
use firewall_util::*;
use overlayd::firewall::{Mode, Outcome};

#[test]
fn nft_installs_exactly_and_a_second_round_writes_nothing() {
    let ns = TestNetns::new("fwn1");
    let fw = Fw::new(Mode::Nftables);
    assert_eq!(fw.ensure(&ns, &rules()), Outcome::Installed);
    assert_eq!(felt_chains(&ns), Some(expected_felt()));

    let monitor = NftMonitor::start(&ns);
    assert_eq!(fw.ensure(&ns, &rules()), Outcome::Unchanged);
    // A restarted daemon (a new firewall) must not rewrite either.
    assert_eq!(
        Fw::new(Mode::Nftables).ensure(&ns, &rules()),
        Outcome::Unchanged
    );
    assert_eq!(monitor.changes(), Vec::<String>::new());
    assert_eq!(felt_chains(&ns), Some(expected_felt()));
}

#[test]
fn nft_repairs_each_rule_deleted_by_hand() {
    let ns = TestNetns::new("fwn2");
    let fw = Fw::new(Mode::Nftables);
    fw.ensure(&ns, &rules());
    for chain in ["postrouting", "forward"] {
        let count = felt_handles(&ns, chain).len();
        assert_eq!(count, expected_felt()[chain].len() - 1, "{chain}");
        for i in 0..count {
            let handle = felt_handles(&ns, chain)[i].clone();
            sh(
                &ns,
                &format!("nft delete rule ip felt {chain} handle {handle}"),
            );
            assert_ne!(felt_chains(&ns), Some(expected_felt()));
            assert_eq!(
                fw.ensure(&ns, &rules()),
                Outcome::Repaired,
                "{chain} rule {i}"
            );
            assert_eq!(felt_chains(&ns), Some(expected_felt()), "{chain} rule {i}");
        }
    }
}

#[test]
fn nft_repairs_chains_tables_and_foreign_additions() {
    let ns = TestNetns::new("fwn3");
    let fw = Fw::new(Mode::Nftables);
    fw.ensure(&ns, &rules());
    let breakages = [
        "nft flush chain ip felt forward; nft delete chain ip felt forward",
        "nft delete table ip felt",
        "nft add rule ip felt forward ip saddr 192.0.2.1 drop",
        "nft insert rule ip felt postrouting counter",
        "nft add chain ip felt extra",
        "nft add set ip felt s '{ type ipv4_addr; }'",
        "nft add chain ip felt forward '{ policy drop; }'",
    ];
    for b in breakages {
        sh(&ns, b);
        assert_eq!(fw.ensure(&ns, &rules()), Outcome::Repaired, "after {b}");
        assert_eq!(felt_chains(&ns), Some(expected_felt()), "after {b}");
        let table = ns.exec_ok(&["nft", "list", "table", "ip", "felt"]);
        assert!(
            !table.contains("set s") && !table.contains("policy drop"),
            "{table}"
        );
    }
}

#[test]
fn nft_masquerade_and_forward_are_independent() {
    let ns = TestNetns::new("fwn4");
    let fw = Fw::new(Mode::Nftables);
    let no_fwd = overlayd::firewall::RuleSet {
        forward: false,
        ..rules()
    };
    fw.ensure(&ns, &no_fwd);
    let mut want = expected_felt();
    want.remove("forward");
    assert_eq!(felt_chains(&ns), Some(want));
    let nothing = overlayd::firewall::RuleSet {
        masquerade: false,
        ..no_fwd
    };
    assert_eq!(fw.ensure(&ns, &nothing), Outcome::Repaired);
    assert_eq!(felt_chains(&ns), None, "no rule wanted: no table");
    assert_eq!(fw.ensure(&ns, &nothing), Outcome::Unchanged);
}

#[test]
fn nft_takes_over_from_flannel_without_doubling_anything() {
    let ns = TestNetns::new("fwn5");
    foreign_xtables(&ns, "iptables-nft-restore");
    foreign_xtables(&ns, "iptables-legacy-restore");
    foreign_nft(&ns);
    let (nft_before, legacy_before) = (ruleset(&ns), save(&ns, "iptables-legacy-save", false));
    // flannel ran in nftables mode once and in iptables mode (both
    // variants) before that.
    flannel_nft(&ns);
    flannel_iptables(&ns, "iptables-nft-restore");
    flannel_iptables(&ns, "iptables-legacy-restore");

    let fw = Fw::new(Mode::Nftables);
    assert_eq!(fw.ensure(&ns, &rules()), Outcome::Installed);
    assert_eq!(felt_chains(&ns), Some(expected_felt()));
    let after = ruleset(&ns);
    assert!(!after.contains("flannel-ipv"), "{after}");
    assert_eq!(without_table(&after, "table ip felt"), nft_before);
    assert_eq!(save(&ns, "iptables-legacy-save", false), legacy_before);
    assert_eq!(fw.ensure(&ns, &rules()), Outcome::Unchanged);
}

#[test]
fn nft_uninstall_removes_all_of_it_and_nothing_else() {
    let ns = TestNetns::new("fwn6");
    foreign_xtables(&ns, "iptables-nft-restore");
    foreign_xtables(&ns, "iptables-legacy-restore");
    foreign_nft(&ns);
    let (nft_before, legacy_before) = (ruleset(&ns), save(&ns, "iptables-legacy-save", false));
    let fw = Fw::new(Mode::Nftables);
    fw.ensure(&ns, &rules());
    flannel_nft(&ns);
    flannel_iptables(&ns, "iptables-legacy-restore");
    fw.uninstall(&ns);
    assert_eq!(ruleset(&ns), nft_before);
    assert_eq!(save(&ns, "iptables-legacy-save", false), legacy_before);
    // Nothing left to remove is not an error.
    fw.uninstall(&ns);
}
