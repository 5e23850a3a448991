//! nftables mode: felt's own table `ip felt`, written with `nft -f -`
//! text scripts and read back with `nft -j` (JSON, parsed in
//! [`super::nft_parse`]'s terms: the listing is turned into the same rule
//! model the script is rendered from, and the two are compared).
//!
//! The whole table is replaced in ONE nft transaction:
//! `add table ip felt; delete table ip felt; table ip felt { ... }`.
//! The `add` makes the `delete` valid when the table is absent; the new
//! definition replaces everything in it, including chains, sets or rules
//! someone added by hand (a `flush table` would keep foreign chains).
//! Packets see the old table or the new one, never neither; connections
//! keep their NAT mapping because it lives in conntrack, not in the rules.

use super::exec::{run_ok, Tool};
use super::rules::{forward_rules, masquerade_rules, AddrMatch, Rule, Verdict};
use super::{netlink, xtables, Firewall, FirewallError, Mode, Outcome, RuleSet};
use async_trait::async_trait;
use ipnet::IpNet;
use std::collections::BTreeMap;
use std::fmt::Write as _;

pub use super::nft_parse::{parse_table, BaseChain, ChainState, TableState};

/// felt's table (family `ip`).
pub const TABLE: &str = "felt";
pub const FAMILY: &str = "ip";
pub const POSTROUTING_CHAIN: &str = "postrouting";
pub const FORWARD_CHAIN: &str = "forward";
/// flannel's nftables-mode tables (pkg/trafficmngr/nftables): taken over,
/// i.e. deleted. flannel creates both even on IPv4-only clusters.
pub const FLANNEL_TABLES: [(&str, &str); 2] = [("ip", "flannel-ipv4"), ("ip6", "flannel-ipv6")];

/// A table as `(family, name)`.
pub type TableId = (String, String);

pub struct NftFirewall {
    // One ensure or uninstall at a time: each reads, then writes.
    lock: tokio::sync::Mutex<()>,
    history: super::History,
}

impl NftFirewall {
    pub fn new() -> Self {
        NftFirewall {
            lock: tokio::sync::Mutex::new(()),
            history: super::History::default(),
        }
    }
}

impl Default for NftFirewall {
    fn default() -> Self {
        Self::new()
    }
}

#[async_trait]
impl Firewall for NftFirewall {
    fn mode(&self) -> Mode {
        Mode::Nftables
    }

    async fn ensure(&self, rs: &RuleSet) -> Result<Outcome, FirewallError> {
        let _one = self.lock.lock().await;
        let inv = netlink::inventory().await?;
        let ours = if has_table(&inv.tables, FAMILY, TABLE) {
            Some(list_felt().await?)
        } else {
            None
        };
        let want = expected(rs);
        let flannel = owned_tables(&inv.tables, false);
        let rewrite = ours != want;
        let mut script = String::new();
        if rewrite {
            script.push_str(&replace_script(rs, ours.is_some()));
        }
        script.push_str(&delete_script(&flannel));
        if !script.is_empty() {
            run_ok(Tool::Nft, &["-f", "-"], Some(&script)).await?;
        }
        // Installing ours first leaves no moment without masquerade; a
        // second nat chain meanwhile is harmless (a flow is NATed once).
        let cleanup = xtables::remove_chains(None, &inv).await;
        FirewallError::collect(cleanup.errors)?;
        Ok(self.history.outcome(
            rewrite,
            !flannel.is_empty() || cleanup.changed,
            ours.is_some(),
        ))
    }

    async fn uninstall(&self) -> Result<(), FirewallError> {
        let _one = self.lock.lock().await;
        super::uninstall_all().await
    }
}

/// What `nft -j list table ip felt` must show for `rs`; None when no rule
/// is wanted (then the table must not exist).
pub fn expected(rs: &RuleSet) -> Option<TableState> {
    let mut chains = BTreeMap::new();
    for (name, base, rules) in chains_of(rs) {
        chains.insert(
            name.to_string(),
            ChainState {
                base: Some(base),
                rules: rules.into_iter().map(Some).collect(),
            },
        );
    }
    (!chains.is_empty()).then_some(TableState {
        chains,
        foreign: Vec::new(),
    })
}

fn chains_of(rs: &RuleSet) -> Vec<(&'static str, BaseChain, Vec<Rule>)> {
    let mut out = Vec::new();
    let masq = masquerade_rules(rs);
    if !masq.is_empty() {
        out.push((
            POSTROUTING_CHAIN,
            BaseChain::new("nat", "postrouting", 100),
            masq,
        ));
    }
    let fwd = forward_rules(rs);
    if !fwd.is_empty() {
        out.push((FORWARD_CHAIN, BaseChain::new("filter", "forward", 0), fwd));
    }
    out
}

/// `table ip felt { ... }` for `rs`, or "" when no rule is wanted.
pub fn render_table(rs: &RuleSet) -> String {
    let chains = chains_of(rs);
    if chains.is_empty() {
        return String::new();
    }
    let mut s = format!("table {FAMILY} {TABLE} {{\n");
    for (name, base, rules) in chains {
        let _ = writeln!(s, "\tchain {name} {{");
        let _ = writeln!(
            s,
            "\t\ttype {} hook {} priority {}; policy {};",
            base.kind,
            base.hook,
            priority_name(base.prio),
            base.policy
        );
        for r in rules {
            let _ = writeln!(s, "\t\t{}", render_rule(&r));
        }
        s.push_str("\t}\n");
    }
    s.push_str("}\n");
    s
}

fn priority_name(prio: i64) -> String {
    match prio {
        100 => "srcnat".into(),
        0 => "filter".into(),
        p => p.to_string(),
    }
}

/// One rule in nft syntax, e.g. `ip saddr != 10.244.0.0/16 ip daddr
/// 10.244.0.0/16 masquerade fully-random`.
pub fn render_rule(r: &Rule) -> String {
    let mut parts = Vec::new();
    if let Some(m) = r.mark {
        parts.push(format!("meta mark & {m:#010x} == {m:#010x}"));
    }
    for (field, m) in [("saddr", r.src), ("daddr", r.dst)] {
        if let Some(m) = m {
            parts.push(render_addr(field, &m));
        }
    }
    parts.push(
        match r.verdict {
            Verdict::Return => "return",
            Verdict::Masquerade => "masquerade fully-random",
            Verdict::Accept => "accept",
        }
        .to_string(),
    );
    parts.join(" ")
}

fn render_addr(field: &str, m: &AddrMatch) -> String {
    let proto = match m.net {
        IpNet::V4(_) => "ip",
        IpNet::V6(_) => "ip6",
    };
    let op = if m.negated { "!= " } else { "" };
    format!("{proto} {field} {op}{}", m.net)
}

/// The script that makes felt's table exactly `rs` (or removes it).
pub fn replace_script(rs: &RuleSet, present: bool) -> String {
    let table = render_table(rs);
    match (table.is_empty(), present) {
        (true, false) => String::new(),
        (true, true) => format!("delete table {FAMILY} {TABLE}\n"),
        (false, _) => format!("add table {FAMILY} {TABLE}\ndelete table {FAMILY} {TABLE}\n{table}"),
    }
}

/// Deletes `tables`; the `add` before each makes the `delete` valid even
/// if the table vanished since it was listed (and is a no-op otherwise).
pub fn delete_script(tables: &[TableId]) -> String {
    tables
        .iter()
        .map(|(f, n)| format!("add table {f} {n}\ndelete table {f} {n}\n"))
        .collect()
}

pub(crate) fn has_table(tables: &[TableId], family: &str, name: &str) -> bool {
    tables.iter().any(|(f, n)| f == family && n == name)
}

/// The tables felt removes that are present: flannel's, and felt's own
/// when `with_felt` (iptables mode, uninstall).
pub(crate) fn owned_tables(tables: &[TableId], with_felt: bool) -> Vec<TableId> {
    let felt = with_felt.then_some((FAMILY, TABLE));
    FLANNEL_TABLES
        .into_iter()
        .chain(felt)
        .filter(|(f, n)| has_table(tables, f, n))
        .map(|(f, n)| (f.to_string(), n.to_string()))
        .collect()
}

/// Deletes `tables` in one transaction.
pub(crate) async fn delete_tables(tables: &[TableId]) -> Result<(), FirewallError> {
    if tables.is_empty() {
        return Ok(());
    }
    run_ok(Tool::Nft, &["-f", "-"], Some(&delete_script(tables))).await?;
    Ok(())
}

async fn list_felt() -> Result<TableState, FirewallError> {
    let text = run_ok(Tool::Nft, &["-j", "list", "table", FAMILY, TABLE], None).await?;
    parse_table(&text, FAMILY, TABLE).map_err(|detail| FirewallError::Parse {
        command: format!("nft -j list table {FAMILY} {TABLE}"),
        detail,
    })
}
