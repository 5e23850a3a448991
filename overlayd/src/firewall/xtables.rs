//! iptables plumbing shared by both modes: the two variants (legacy and
//! nft) and families, `*-save` listings, planning the restore block that
//! makes flannel's chain in one table exactly what is wanted (or absent),
//! and removing those chains wherever they must not be.

use super::exec::{run_ok, Tool};
use super::netlink::Inventory;
use super::FirewallError;
use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;

/// Which iptables variant holds the rules.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// iptables-nft: the xtables tables are nf_tables tables (`ip nat`).
    Nft,
    /// iptables-legacy: the kernel's ip_tables.
    Legacy,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Family {
    V4,
    V6,
}

impl Family {
    /// The nf_tables family iptables-nft uses for it.
    pub fn nft(self) -> &'static str {
        match self {
            Family::V4 => "ip",
            Family::V6 => "ip6",
        }
    }
}

/// The tables iptables knows; in nf_tables, tables of these names in
/// family ip/ip6 are iptables-nft's.
pub const XTABLES: [&str; 5] = ["filter", "nat", "mangle", "raw", "security"];

impl Backend {
    pub fn save_tool(self, f: Family) -> Tool {
        match (self, f) {
            (Backend::Nft, Family::V4) => Tool::IptablesNftSave,
            (Backend::Nft, Family::V6) => Tool::Ip6tablesNftSave,
            (Backend::Legacy, Family::V4) => Tool::IptablesLegacySave,
            (Backend::Legacy, Family::V6) => Tool::Ip6tablesLegacySave,
        }
    }

    /// The `-S CHAIN` lister of the nft variant (it reads one chain; its
    /// `*-save` translates the whole table).
    fn list_tool(f: Family) -> Tool {
        match f {
            Family::V4 => Tool::IptablesNft,
            Family::V6 => Tool::Ip6tablesNft,
        }
    }

    pub fn restore_tool(self, f: Family) -> Tool {
        match (self, f) {
            (Backend::Nft, Family::V4) => Tool::IptablesNftRestore,
            (Backend::Nft, Family::V6) => Tool::Ip6tablesNftRestore,
            (Backend::Legacy, Family::V4) => Tool::IptablesLegacyRestore,
            (Backend::Legacy, Family::V6) => Tool::Ip6tablesLegacyRestore,
        }
    }
}

/// A chain felt manages in iptables mode: flannel's name, flannel's jump
/// (appended to the built-in hook chain, with flannel's comment).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OwnedChain {
    pub table: &'static str,
    pub chain: &'static str,
    pub hook: &'static str,
    pub comment: &'static str,
}

pub const MASQ_CHAIN: OwnedChain = OwnedChain {
    table: "nat",
    chain: "FLANNEL-POSTRTG",
    hook: "POSTROUTING",
    comment: "flanneld masq",
};

pub const FWD_CHAIN: OwnedChain = OwnedChain {
    table: "filter",
    chain: "FLANNEL-FWD",
    hook: "FORWARD",
    comment: "flanneld forward",
};

pub const OWNED: [OwnedChain; 2] = [MASQ_CHAIN, FWD_CHAIN];

impl OwnedChain {
    /// The jump rule's spec as iptables-save prints it.
    pub fn jump_spec(&self) -> String {
        format!(
            "-m comment --comment \"{}\" -j {}",
            self.comment, self.chain
        )
    }
}

/// One table of an `iptables-save` listing.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SavedTable {
    pub chains: BTreeSet<String>,
    /// `(chain, spec)` in listing order (which is rule order per chain).
    pub rules: Vec<(String, String)>,
}

impl SavedTable {
    pub fn chain_rules(&self, chain: &str) -> Vec<&str> {
        self.rules
            .iter()
            .filter(|(c, _)| c == chain)
            .map(|(_, s)| s.as_str())
            .collect()
    }
}

/// `iptables-save` output, by table name.
pub type Saved = BTreeMap<String, SavedTable>;

pub fn parse_save(text: &str) -> Saved {
    let mut saved = Saved::new();
    let mut current: Option<String> = None;
    for line in text.lines() {
        if let Some(table) = line.strip_prefix('*') {
            current = Some(table.trim().to_string());
            saved.entry(table.trim().to_string()).or_default();
            continue;
        }
        let Some(t) = current.as_ref().and_then(|c| saved.get_mut(c)) else {
            continue;
        };
        if let Some(decl) = line.strip_prefix(':') {
            if let Some(name) = decl.split_whitespace().next() {
                t.chains.insert(name.to_string());
            }
        } else if let Some(rule) = line.strip_prefix("-A ") {
            let (chain, spec) = rule.split_once(' ').unwrap_or((rule, ""));
            t.rules.push((chain.to_string(), spec.trim().to_string()));
        }
    }
    saved
}

/// Adds an `iptables -S CHAIN` listing (`-P`/`-N` declarations, `-A`
/// rules) to `t`.
pub fn add_rules_listing(t: &mut SavedTable, text: &str) {
    for line in text.lines() {
        let mut w = line.splitn(3, ' ');
        match (w.next(), w.next(), w.next()) {
            (Some("-N"), Some(chain), _) => {
                t.chains.insert(chain.to_string());
            }
            (Some("-A"), Some(chain), spec) => {
                t.rules
                    .push((chain.to_string(), spec.unwrap_or("").trim().to_string()));
            }
            _ => {}
        }
    }
}

/// Splits a rule spec into words, honouring iptables-save's double quotes
/// (a comment may contain spaces or even "-j X").
pub fn words(spec: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let (mut quoted, mut escaped, mut any) = (false, false, false);
    for ch in spec.chars() {
        match ch {
            _ if escaped => {
                cur.push(ch);
                escaped = false;
            }
            '\\' if quoted => escaped = true,
            '"' => {
                quoted = !quoted;
                any = true;
            }
            c if c.is_whitespace() && !quoted => {
                if any || !cur.is_empty() {
                    out.push(std::mem::take(&mut cur));
                }
                any = false;
            }
            c => cur.push(c),
        }
    }
    if any || !cur.is_empty() {
        out.push(cur);
    }
    out
}

/// Whether a rule jumps (or goes) to `chain`.
pub fn jumps_to(spec: &str, chain: &str) -> bool {
    words(spec)
        .windows(2)
        .any(|w| (w[0] == "-j" || w[0] == "-g") && w[1] == chain)
}

/// The restore block (between `*table` and `COMMIT`) that makes `owned`
/// hold exactly `want` (None: that the chain and every jump to it are
/// gone), or None when the table is already exactly so. Jumps are deleted
/// by their spec, never by number: a number read before the restore may
/// name another tool's rule by the time it runs.
pub fn plan_table(
    table: Option<&SavedTable>,
    owned: &OwnedChain,
    want: Option<&[String]>,
) -> Option<String> {
    let empty = SavedTable::default();
    let t = table.unwrap_or(&empty);
    let exists = t.chains.contains(owned.chain);
    // Jumps from other chains; rules inside our own chain go with its flush.
    let refs: Vec<&(String, String)> = t
        .rules
        .iter()
        .filter(|(c, s)| c != owned.chain && jumps_to(s, owned.chain))
        .collect();
    let mut block = format!(":{} - [0:0]\n", owned.chain);
    let Some(want) = want else {
        if !exists {
            return None;
        }
        for (c, s) in &refs {
            let _ = writeln!(block, "-D {c} {s}");
        }
        let _ = writeln!(block, "-X {}", owned.chain);
        return Some(block);
    };
    let jump = owned.jump_spec();
    // `-D` removes the first match, so of identical jumps the last survives.
    let keep = refs
        .iter()
        .rposition(|(c, s)| c == owned.hook && *s == jump);
    let right = exists && t.chain_rules(owned.chain) == want && refs.len() == 1 && keep.is_some();
    if right {
        return None;
    }
    for (i, (c, s)) in refs.iter().enumerate() {
        if Some(i) != keep {
            let _ = writeln!(block, "-D {c} {s}");
        }
    }
    for w in want {
        let _ = writeln!(block, "-A {} {w}", owned.chain);
    }
    if keep.is_none() {
        let _ = writeln!(block, "-A {} {jump}", owned.hook);
    }
    Some(block)
}

/// `*table ... COMMIT` for every `(table, block)`.
pub fn restore_payload(blocks: &[(&str, String)]) -> String {
    blocks
        .iter()
        .map(|(t, b)| format!("*{t}\n{b}COMMIT\n"))
        .collect()
}

/// The xtables tables present for `backend`/`family`, found without
/// creating any: for nft from the nf_tables table list, for legacy from
/// /proc (iptables-legacy-save -t would create the table it names).
pub fn present_tables(backend: Backend, family: Family, inv: &Inventory) -> BTreeSet<String> {
    match backend {
        Backend::Nft => inv
            .tables
            .iter()
            .filter(|(f, n)| f == family.nft() && XTABLES.contains(&n.as_str()))
            .map(|(_, n)| n.clone())
            .collect(),
        Backend::Legacy => {
            // thread-self: the namespace of this thread, which is the one
            // the child processes run in (a test thread may differ from
            // the process's main thread).
            let file = match family {
                Family::V4 => "/proc/thread-self/net/ip_tables_names",
                Family::V6 => "/proc/thread-self/net/ip6_tables_names",
            };
            std::fs::read_to_string(file)
                .unwrap_or_default()
                .lines()
                .map(|l| l.trim().to_string())
                .filter(|l| !l.is_empty())
                .collect()
        }
    }
}

pub async fn save(backend: Backend, family: Family) -> Result<Saved, FirewallError> {
    Ok(parse_save(
        &run_ok(backend.save_tool(family), &[], None).await?,
    ))
}

/// What [`plan_table`] needs of felt's chains in `backend`: legacy's full
/// listing (it is one cheap copy from the kernel), or for the nft variant
/// only the hook chains and felt's chains, read one by one; unless the
/// kernel's use count says a rule outside the hook chain jumps to
/// felt's chain too, which only the full listing shows.
pub async fn read_owned(
    backend: Backend,
    family: Family,
    inv: &Inventory,
) -> Result<Saved, FirewallError> {
    if backend == Backend::Legacy {
        return save(backend, family).await;
    }
    let mut saved = Saved::new();
    for o in OWNED {
        if !present_tables(backend, family, inv).contains(o.table) {
            continue;
        }
        let t = saved.entry(o.table.to_string()).or_default();
        add_rules_listing(t, &list_chain(family, o.table, o.hook).await?);
        let Some(chain) = inv.chain(family.nft(), o.table, o.chain) else {
            continue;
        };
        add_rules_listing(t, &list_chain(family, o.table, o.chain).await?);
        // The kernel's use count is the chain's own rules plus every jump
        // to it, wherever it is.
        let from_hook = t
            .chain_rules(o.hook)
            .iter()
            .filter(|s| jumps_to(s, o.chain))
            .count();
        if chain.uses as usize != t.chain_rules(o.chain).len() + from_hook {
            return save(backend, family).await;
        }
    }
    Ok(saved)
}

async fn list_chain(family: Family, table: &str, chain: &str) -> Result<String, FirewallError> {
    run_ok(
        Backend::list_tool(family),
        &["-t", table, "-S", chain],
        None,
    )
    .await
}

pub async fn restore(backend: Backend, family: Family, payload: &str) -> Result<(), FirewallError> {
    // --noflush: touch only what the payload names; --wait: take the
    // xtables lock like kube-proxy does instead of failing on contention.
    let args = ["--noflush", "--wait=10"];
    run_ok(backend.restore_tool(family), &args, Some(payload)).await?;
    Ok(())
}

/// What removing chains did: whether anything changed, and every failure.
#[derive(Debug, Default)]
pub struct Cleanup {
    pub changed: bool,
    pub errors: Vec<FirewallError>,
}

/// Removes flannel's chains and their jumps from every variant and family
/// except `keep` (where iptables mode manages them). The nft variant is
/// read only when the inventory shows such a chain, legacy only when it
/// has a nat or filter table; keeps going past failures.
pub async fn remove_chains(keep: Option<(Backend, Family)>, inv: &Inventory) -> Cleanup {
    let mut out = Cleanup::default();
    for backend in [Backend::Nft, Backend::Legacy] {
        for family in [Family::V4, Family::V6] {
            if keep == Some((backend, family)) {
                continue;
            }
            let needed = match backend {
                Backend::Nft => OWNED
                    .iter()
                    .any(|o| inv.chain(family.nft(), o.table, o.chain).is_some()),
                Backend::Legacy => {
                    let present = present_tables(backend, family, inv);
                    OWNED.iter().any(|o| present.contains(o.table))
                }
            };
            if !needed {
                continue;
            }
            match remove_in(backend, family).await {
                Ok(changed) => out.changed |= changed,
                Err(e) => out.errors.push(e),
            }
        }
    }
    out
}

async fn remove_in(backend: Backend, family: Family) -> Result<bool, FirewallError> {
    let saved = save(backend, family).await?;
    let blocks: Vec<(&str, String)> = OWNED
        .iter()
        .filter_map(|o| plan_table(saved.get(o.table), o, None).map(|b| (o.table, b)))
        .collect();
    if blocks.is_empty() {
        return Ok(false);
    }
    restore(backend, family, &restore_payload(&blocks)).await?;
    Ok(true)
}
