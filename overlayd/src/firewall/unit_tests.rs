//! Rendering (exact text) and the "exactly right?" comparison on listings
//! captured from nft 1.0.6 / iptables 1.8.9 (testdata/).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use super::iptables::{self, parse_version};
use super::netlink::{ChainInfo, Inventory};
use super::nft::{self, parse_table};
use super::xtables::{self, parse_save, plan_table, words, Backend, FWD_CHAIN, MASQ_CHAIN};
use super::{outcome, Outcome, RuleSet};

const FELT_JSON: &str = include_str!("testdata/nft-felt-table.json");
const FLANNEL_SAVE: &str = include_str!("testdata/iptables-save-flannel.txt");

fn rs() -> RuleSet {
    RuleSet {
        network: "10.244.0.0/16".parse().unwrap(),
        pod_subnet: "10.244.3.0/24".parse().unwrap(),
        masquerade: true,
        forward: true,
    }
}

#[test]
fn nft_table_renders_flannels_rules_in_order() {
    let want = "\
table ip felt {
\tchain postrouting {
\t\ttype nat hook postrouting priority srcnat; policy accept;
\t\tmeta mark & 0x00004000 == 0x00004000 return
\t\tip saddr 10.244.3.0/24 ip daddr 10.244.0.0/16 return
\t\tip saddr 10.244.0.0/16 ip daddr 10.244.3.0/24 return
\t\tip saddr != 10.244.0.0/16 ip daddr 10.244.3.0/24 return
\t\tip saddr 10.244.0.0/16 ip daddr != 224.0.0.0/4 masquerade fully-random
\t\tip saddr != 10.244.0.0/16 ip daddr 10.244.0.0/16 masquerade fully-random
\t}
\tchain forward {
\t\ttype filter hook forward priority filter; policy accept;
\t\tip saddr 10.244.0.0/16 accept
\t\tip daddr 10.244.0.0/16 accept
\t}
}
";
    assert_eq!(nft::render_table(&rs()), want);
    let script = nft::replace_script(&rs(), false);
    assert!(script.starts_with("add table ip felt\ndelete table ip felt\ntable ip felt {\n"));
}

#[test]
fn nft_renders_only_what_is_on_and_nothing_when_all_is_off() {
    let masq_only = RuleSet {
        forward: false,
        ..rs()
    };
    let t = nft::render_table(&masq_only);
    assert!(
        t.contains("chain postrouting") && !t.contains("chain forward"),
        "{t}"
    );
    let off = RuleSet {
        forward: false,
        masquerade: false,
        ..rs()
    };
    assert_eq!(nft::render_table(&off), "");
    assert_eq!(nft::replace_script(&off, false), "");
    assert_eq!(nft::replace_script(&off, true), "delete table ip felt\n");
    assert!(nft::expected(&off).is_none());
}

#[test]
fn nft_listing_of_the_rendered_table_is_exactly_right() {
    let listed = parse_table(FELT_JSON, "ip", "felt").unwrap();
    assert_eq!(Some(listed), nft::expected(&rs()));
}

type Edit = dyn FnOnce(&mut Vec<serde_json::Value>);

/// The captured listing with `edit` applied to its JSON objects.
fn edited(edit: impl FnOnce(&mut Vec<serde_json::Value>)) -> nft::TableState {
    let mut v: serde_json::Value = serde_json::from_str(FELT_JSON).unwrap();
    edit(v["nftables"].as_array_mut().unwrap());
    parse_table(&v.to_string(), "ip", "felt").unwrap()
}

fn rule_index(objs: &[serde_json::Value], handle: u64) -> usize {
    objs.iter()
        .position(|o| o["rule"]["handle"] == handle)
        .unwrap()
}

#[test]
fn nft_comparison_sees_each_single_rule_deleted() {
    let want = nft::expected(&rs());
    for handle in 3..=10 {
        let state = edited(|objs| {
            let i = rule_index(objs, handle);
            objs.remove(i);
        });
        assert_ne!(Some(state), want, "rule {handle} deleted went unnoticed");
    }
}

#[test]
fn nft_comparison_sees_foreign_and_changed_things() {
    let want = nft::expected(&rs());
    let cases: Vec<(&str, Box<Edit>)> = vec![
        (
            "counter added to a rule",
            Box::new(|o| {
                let i = rule_index(o, 4);
                o[i]["rule"]["expr"].as_array_mut().unwrap().insert(
                    0,
                    serde_json::json!({"counter": {"packets": 0, "bytes": 0}}),
                );
            }),
        ),
        (
            "masquerade without fully-random",
            Box::new(|o| {
                let i = rule_index(o, 7);
                o[i]["rule"]["expr"][2] = serde_json::json!({"masquerade": null});
            }),
        ),
        (
            "rule order swapped",
            Box::new(|o| {
                let (a, b) = (rule_index(o, 4), rule_index(o, 5));
                o.swap(a, b);
            }),
        ),
        (
            "foreign rule appended",
            Box::new(|o| {
                let mut r = o[rule_index(o, 10)].clone();
                r["rule"]["handle"] = 99.into();
                o.push(r);
            }),
        ),
        (
            "foreign chain",
            Box::new(|o| {
                o.push(serde_json::json!({"chain": {"family": "ip", "table": "felt", "name": "x", "handle": 50}}));
            }),
        ),
        (
            "a set",
            Box::new(|o| {
                o.push(serde_json::json!({"set": {"family": "ip", "table": "felt", "name": "s", "type": "ipv4_addr", "handle": 51}}));
            }),
        ),
        (
            "table made dormant",
            Box::new(|o| o[1]["table"]["flags"] = serde_json::json!(["dormant"])),
        ),
        (
            "policy drop",
            Box::new(|o| o[3]["chain"]["policy"] = "drop".into()),
        ),
        (
            "priority changed",
            Box::new(|o| o[2]["chain"]["prio"] = 99.into()),
        ),
        (
            "pod subnet changed",
            Box::new(|o| {
                let i = rule_index(o, 4);
                o[i]["rule"]["expr"][0]["match"]["right"]["prefix"]["addr"] = "10.244.9.0".into();
            }),
        ),
    ];
    for (what, edit) in cases {
        assert_ne!(Some(edited(edit)), want, "{what} went unnoticed");
    }
}

fn table(f: &str, n: &str) -> (String, String) {
    (f.to_string(), n.to_string())
}

#[test]
fn inventory_tells_iptables_nft_tables_and_leftovers_apart() {
    let inv = Inventory {
        tables: vec![
            table("ip", "felt"),
            table("ip", "nat"),
            table("ip", "filter"),
            table("inet", "nat"),
            table("ip6", "flannel-ipv6"),
        ],
        chains: vec![ChainInfo {
            family: "ip".into(),
            table: "nat".into(),
            name: "FLANNEL-POSTRTG".into(),
            uses: 7,
        }],
    };
    let v4 = xtables::present_tables(Backend::Nft, xtables::Family::V4, &inv);
    assert_eq!(v4.into_iter().collect::<Vec<_>>(), ["filter", "nat"]);
    assert!(xtables::present_tables(Backend::Nft, xtables::Family::V6, &inv).is_empty());
    assert!(inv.chain("ip", "nat", "FLANNEL-POSTRTG").is_some());
    assert!(inv.chain("ip6", "nat", "FLANNEL-POSTRTG").is_none());
    assert_eq!(
        nft::owned_tables(&inv.tables, false),
        [table("ip6", "flannel-ipv6")]
    );
    assert_eq!(
        nft::owned_tables(&inv.tables, true),
        [table("ip6", "flannel-ipv6"), table("ip", "felt")]
    );
}

#[test]
fn a_failed_dump_assumes_every_leftover_may_be_there() {
    let inv = Inventory::everything();
    assert_eq!(nft::owned_tables(&inv.tables, true).len(), 3);
    for f in ["ip", "ip6"] {
        assert!(inv.chain(f, "nat", "FLANNEL-POSTRTG").is_some());
        assert!(inv.chain(f, "filter", "FLANNEL-FWD").is_some());
    }
    assert_eq!(
        nft::delete_script(&[table("ip", "felt")]),
        "add table ip felt\ndelete table ip felt\n"
    );
}

#[test]
fn iptables_chain_listing_is_read_like_a_save() {
    let mut t = xtables::SavedTable::default();
    xtables::add_rules_listing(
        &mut t,
        "-P POSTROUTING ACCEPT\n-A POSTROUTING -m comment --comment \"flanneld masq\" -j FLANNEL-POSTRTG\n",
    );
    xtables::add_rules_listing(&mut t, "-N FLANNEL-POSTRTG\n-A FLANNEL-POSTRTG -j RETURN\n");
    let saved = parse_save(FLANNEL_SAVE);
    assert!(t.chains.contains("FLANNEL-POSTRTG"));
    assert_eq!(t.chain_rules("FLANNEL-POSTRTG"), ["-j RETURN"]);
    assert_eq!(
        t.chain_rules("POSTROUTING"),
        saved["nat"].chain_rules("POSTROUTING")[1..]
    );
}

#[test]
fn iptables_specs_are_flannels_in_save_format() {
    let masq = iptables::chain_specs(&MASQ_CHAIN, &super::rules::masquerade_rules(&rs()));
    let c = "-m comment --comment \"flanneld masq\"";
    assert_eq!(
        masq,
        [
            format!("-m mark --mark 0x4000/0x4000 {c} -j RETURN"),
            format!("-s 10.244.3.0/24 -d 10.244.0.0/16 {c} -j RETURN"),
            format!("-s 10.244.0.0/16 -d 10.244.3.0/24 {c} -j RETURN"),
            format!("! -s 10.244.0.0/16 -d 10.244.3.0/24 {c} -j RETURN"),
            format!("-s 10.244.0.0/16 ! -d 224.0.0.0/4 {c} -j MASQUERADE --random-fully"),
            format!("! -s 10.244.0.0/16 -d 10.244.0.0/16 {c} -j MASQUERADE --random-fully"),
        ]
    );
    let fwd = iptables::chain_specs(&FWD_CHAIN, &super::rules::forward_rules(&rs()));
    let c = "-m comment --comment \"flanneld forward\"";
    assert_eq!(
        fwd,
        [
            format!("-s 10.244.0.0/16 {c} -j ACCEPT"),
            format!("-d 10.244.0.0/16 {c} -j ACCEPT")
        ]
    );
    assert_eq!(
        MASQ_CHAIN.jump_spec(),
        "-m comment --comment \"flanneld masq\" -j FLANNEL-POSTRTG"
    );
}

#[test]
fn host_bits_in_the_config_do_not_change_the_rules() {
    let sloppy = RuleSet {
        network: "10.244.7.7/16".parse().unwrap(),
        pod_subnet: "10.244.3.9/24".parse().unwrap(),
        ..rs()
    };
    assert_eq!(nft::render_table(&sloppy), nft::render_table(&rs()));
}

#[test]
fn flannels_iptables_rules_are_taken_over_without_a_write() {
    let saved = parse_save(FLANNEL_SAVE);
    assert!(iptables::plan(&saved, &rs()).is_empty());
}

fn replace(text: &str, from: &str, to: &str) -> xtables::Saved {
    assert!(text.contains(from), "{from}");
    parse_save(&text.replacen(from, to, 1))
}

#[test]
fn iptables_plan_repairs_each_single_rule_deleted() {
    for line in FLANNEL_SAVE.lines().filter(|l| l.contains("-A FLANNEL-")) {
        let saved = replace(FLANNEL_SAVE, &format!("{line}\n"), "");
        let blocks = iptables::plan(&saved, &rs());
        assert_eq!(blocks.len(), 1, "deleting {line}");
        let (_, block) = &blocks[0];
        assert!(
            !block.contains("-D ")
                && !block.contains("-A POSTROUTING")
                && !block.contains("-A FORWARD"),
            "{block}"
        );
        assert!(block.starts_with(":FLANNEL-"), "{block}");
    }
}

#[test]
fn iptables_plan_adds_a_missing_jump_and_drops_duplicates() {
    let jump = "-A POSTROUTING -m comment --comment \"flanneld masq\" -j FLANNEL-POSTRTG\n";
    let saved = replace(FLANNEL_SAVE, jump, "");
    let (table, block) = &iptables::plan(&saved, &rs())[0];
    assert_eq!(*table, "nat");
    assert!(block.ends_with(&jump.to_string()), "{block}");

    let saved = replace(FLANNEL_SAVE, jump, &format!("{jump}{jump}{jump}"));
    let (_, block) = &iptables::plan(&saved, &rs())[0];
    let deletes: Vec<&str> = block.lines().filter(|l| l.starts_with("-D ")).collect();
    assert_eq!(
        deletes,
        [&jump[..jump.len() - 1].replacen("-A", "-D", 1); 2]
    );
    assert!(!block.contains("-A POSTROUTING"), "{block}");

    // A jump without the comment, from another chain: not ours, removed.
    let odd = "-A KUBE-POSTROUTING -j FLANNEL-POSTRTG\n";
    let saved = replace(FLANNEL_SAVE, jump, &format!("{jump}{odd}"));
    let (_, block) = &iptables::plan(&saved, &rs())[0];
    assert!(
        block.contains("-D KUBE-POSTROUTING -j FLANNEL-POSTRTG\n"),
        "{block}"
    );
}

#[test]
fn iptables_plan_removes_chains_that_are_off_and_leaves_others() {
    let off = RuleSet {
        masquerade: false,
        ..rs()
    };
    let blocks = iptables::plan(&parse_save(FLANNEL_SAVE), &off);
    assert_eq!(blocks.len(), 1);
    let (table, block) = &blocks[0];
    assert_eq!(*table, "nat");
    assert_eq!(
        block,
        ":FLANNEL-POSTRTG - [0:0]\n-D POSTROUTING -m comment --comment \"flanneld masq\" -j FLANNEL-POSTRTG\n-X FLANNEL-POSTRTG\n"
    );
    assert!(!block.contains("KUBE"));
    // Absent and unwanted: nothing to do.
    assert!(plan_table(None, &MASQ_CHAIN, None).is_none());
}

#[test]
fn iptables_plan_rewrites_a_chain_someone_added_to() {
    let extra = "-A FLANNEL-FWD -j DROP\n";
    let saved = parse_save(&FLANNEL_SAVE.replacen("COMMIT\n", &format!("{extra}COMMIT\n"), 1));
    let blocks = iptables::plan(&saved, &rs());
    assert_eq!(blocks.len(), 1);
    assert_eq!(blocks[0].0, "filter");
}

#[test]
fn words_honour_quotes() {
    assert_eq!(
        words("-m comment --comment \"a -j FLANNEL-FWD\" -j ACCEPT"),
        [
            "-m",
            "comment",
            "--comment",
            "a -j FLANNEL-FWD",
            "-j",
            "ACCEPT"
        ]
    );
    assert!(!xtables::jumps_to(
        "-m comment --comment \"x -j FLANNEL-FWD\" -j ACCEPT",
        "FLANNEL-FWD"
    ));
    assert!(xtables::jumps_to(
        "-s 1.2.3.4/32 -g FLANNEL-FWD",
        "FLANNEL-FWD"
    ));
}

#[test]
fn iptables_version_names_the_variant() {
    assert_eq!(parse_version("iptables v1.8.9 (nf_tables)\n"), Backend::Nft);
    assert_eq!(parse_version("iptables v1.8.9 (legacy)\n"), Backend::Legacy);
    assert_eq!(parse_version("iptables v1.6.1\n"), Backend::Legacy);
}

#[test]
fn outcomes() {
    assert_eq!(outcome(false, false, true), Outcome::Unchanged);
    assert_eq!(outcome(false, false, false), Outcome::Unchanged);
    assert_eq!(outcome(true, false, false), Outcome::Installed);
    assert_eq!(outcome(true, true, false), Outcome::Installed);
    assert_eq!(outcome(true, false, true), Outcome::Repaired);
    assert_eq!(outcome(false, true, false), Outcome::Repaired);
}

#[test]
fn a_missing_binary_names_its_debian_package() {
    let empty = std::env::temp_dir().join(format!("felt-fw-empty-{}", std::process::id()));
    std::fs::create_dir_all(&empty).unwrap();
    let err = super::Tool::Nft.require_in(empty.as_os_str()).unwrap_err();
    assert_eq!(
        err.to_string(),
        "nft not found on PATH: install the Debian package \"nftables\""
    );
    let err = super::Tool::IptablesLegacyRestore
        .require_in(empty.as_os_str())
        .unwrap_err();
    assert!(
        err.to_string()
            .contains("iptables-legacy-restore not found"),
        "{err}"
    );
    assert!(err.to_string().contains("\"iptables\""), "{err}");
    std::fs::remove_dir(&empty).unwrap();
    assert!(super::Tool::Nft
        .require_in("/usr/sbin:/sbin".as_ref())
        .is_ok());
}

#[test]
fn several_errors_are_all_reported() {
    use super::FirewallError;
    let e = |b| FirewallError::MissingBinary {
        binary: b,
        package: "p",
    };
    assert!(FirewallError::collect(vec![]).is_ok());
    let one = FirewallError::collect(vec![e("a")]).unwrap_err();
    assert!(matches!(
        one,
        FirewallError::MissingBinary { binary: "a", .. }
    ));
    let two = FirewallError::collect(vec![e("a"), e("b")])
        .unwrap_err()
        .to_string();
    assert!(
        two.starts_with("2 errors") && two.contains("a not found") && two.contains("b not found"),
        "{two}"
    );
}
