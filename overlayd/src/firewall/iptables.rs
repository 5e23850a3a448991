//! iptables mode: flannel's chains and rules, byte for byte as flannel
//! writes them (so a node switched from flannel keeps exactly its rules,
//! and one switched back finds flannel's own), applied per table as one
//! `iptables-restore --noflush` transaction. The check lists felt's chain
//! and the built-in chain that jumps to it with `iptables -S <chain>` (the
//! rules print exactly as the restore input) and counts the jumps (exactly
//! one). It never lists a whole table: with kube-proxy's thousands of
//! rules, `iptables-save -t nat` takes most of a second.
//!
//! Which iptables: the one kube-proxy uses (legacy or nft; two sets of
//! rules in two backends is flannel #1317), told by where its KUBE-*
//! chains are, else the system's default `iptables`.

use super::exec::{installed, run};
use super::{nft, written, FirewallError, Mode, Outcome, RuleSet, KUBE_PROXY_MARK, MULTICAST};
use async_trait::async_trait;
use std::sync::atomic::{AtomicBool, Ordering};

pub const MASQ_CHAIN: &str = "FLANNEL-POSTRTG";
pub const FWD_CHAIN: &str = "FLANNEL-FWD";
const MASQ_COMMENT: &str = "flanneld masq";
const FWD_COMMENT: &str = "flanneld forward";

/// One of felt's chains in one table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChainRules {
    pub table: &'static str,
    /// The built-in chain that jumps to it.
    pub hook: &'static str,
    pub chain: &'static str,
    /// `-A <chain> ...` lines, as iptables-save prints them.
    pub rules: Vec<String>,
    /// The jump, as iptables-save prints it (`-A <hook> ... -j <chain>`).
    pub jump: String,
}

/// The chains `rules` needs; a chain not wanted has no rules.
pub fn chains(rules: &RuleSet) -> [ChainRules; 2] {
    let (n, p) = (rules.network, rules.pod_subnet);
    let masq =
        |spec: String| format!("-A {MASQ_CHAIN} {spec} -m comment --comment \"{MASQ_COMMENT}\"");
    let m = KUBE_PROXY_MARK;
    let masq_rules = if rules.masquerade {
        vec![
            format!(
                "{} -j RETURN",
                masq(format!("-m mark --mark {m:#x}/{m:#x}"))
            ),
            format!("{} -j RETURN", masq(format!("-s {p} -d {n}"))),
            format!("{} -j RETURN", masq(format!("-s {n} -d {p}"))),
            format!("{} -j RETURN", masq(format!("! -s {n} -d {p}"))),
            format!(
                "{} -j MASQUERADE --random-fully",
                masq(format!("-s {n} ! -d {MULTICAST}"))
            ),
            format!(
                "{} -j MASQUERADE --random-fully",
                masq(format!("! -s {n} -d {n}"))
            ),
        ]
    } else {
        Vec::new()
    };
    let fwd_rules = if rules.forward {
        vec![
            format!("-A {FWD_CHAIN} -s {n} -m comment --comment \"{FWD_COMMENT}\" -j ACCEPT"),
            format!("-A {FWD_CHAIN} -d {n} -m comment --comment \"{FWD_COMMENT}\" -j ACCEPT"),
        ]
    } else {
        Vec::new()
    };
    [
        ChainRules {
            table: "nat",
            hook: "POSTROUTING",
            chain: MASQ_CHAIN,
            rules: masq_rules,
            jump: format!("-A POSTROUTING -m comment --comment \"{MASQ_COMMENT}\" -j {MASQ_CHAIN}"),
        },
        ChainRules {
            table: "filter",
            hook: "FORWARD",
            chain: FWD_CHAIN,
            rules: fwd_rules,
            jump: format!("-A FORWARD -m comment --comment \"{FWD_COMMENT}\" -j {FWD_CHAIN}"),
        },
    ]
}

/// What one table holds of one of felt's chains.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Found {
    pub declared: bool,
    pub rules: Vec<String>,
    /// Every rule in the hook chain that jumps to felt's chain.
    pub jumps: Vec<String>,
}

/// Reads felt's chain and the jumps to it from `iptables -S` listings of
/// the chain (`None`: it does not exist) and of its hook chain.
pub fn find(chain: Option<&str>, hook: &str, c: &ChainRules) -> Found {
    let rule = format!("-A {} ", c.chain);
    let target = format!("-j {}", c.chain);
    let jumps = format!("-A {} ", c.hook);
    Found {
        declared: chain.is_some(),
        rules: chain
            .unwrap_or("")
            .lines()
            .filter(|l| l.starts_with(&rule))
            .map(String::from)
            .collect(),
        jumps: hook
            .lines()
            .filter(|l| {
                l.starts_with(&jumps) && (l.ends_with(&target) || l.contains(&format!("{target} ")))
            })
            .map(String::from)
            .collect(),
    }
}

/// The restore lines that make `found` into `want` (none if it is already).
pub fn repair(found: &Found, want: &ChainRules) -> Vec<String> {
    let wanted = !want.rules.is_empty();
    let right = if wanted {
        found.declared && found.rules == want.rules && found.jumps == [want.jump.clone()]
    } else {
        !found.declared && found.jumps.is_empty()
    };
    if right {
        return Vec::new();
    }
    let mut lines = Vec::new();
    let jump_ok = wanted && found.jumps == [want.jump.clone()];
    if !jump_ok {
        lines.extend(found.jumps.iter().map(|j| j.replacen("-A ", "-D ", 1)));
    }
    if wanted {
        lines.push(format!(":{} - [0:0]", want.chain));
        lines.push(format!("-F {}", want.chain));
        lines.extend(want.rules.iter().cloned());
        if !jump_ok {
            // First in the hook: before anything else on the node.
            lines.push(want.jump.replacen(
                &format!("-A {}", want.hook),
                &format!("-I {} 1", want.hook),
                1,
            ));
        }
    } else if found.declared {
        lines.push(format!("-F {}", want.chain));
        lines.push(format!("-X {}", want.chain));
    }
    lines
}

/// An iptables backend: the list and restore binaries to use.
pub struct Iptables {
    list: &'static str,
    restore: &'static str,
    cleaned: AtomicBool,
    /// Set once this process has written the rules.
    wrote: AtomicBool,
}

/// (iptables, iptables-restore) of the system default, the nft variant
/// and the legacy one.
const VARIANTS: [(&str, &str); 3] = [
    ("iptables", "iptables-restore"),
    ("iptables-nft", "iptables-nft-restore"),
    ("iptables-legacy", "iptables-legacy-restore"),
];

fn variant(v: (&'static str, &'static str)) -> Iptables {
    Iptables {
        list: v.0,
        restore: v.1,
        cleaned: AtomicBool::new(false),
        wrote: AtomicBool::new(false),
    }
}

impl Iptables {
    /// Picks the variant whose tables hold kube-proxy's chain, else the
    /// system default.
    pub async fn detect() -> Result<Self, FirewallError> {
        let installed_ones: Vec<(&'static str, &'static str)> = VARIANTS
            .iter()
            .copied()
            .filter(|(l, r)| installed(l) && installed(r))
            .collect();
        let mut with_kube = Vec::new();
        for v in installed_ones.iter().skip_while(|v| v.0 == "iptables") {
            if variant(*v)
                .listing("nat", "KUBE-POSTROUTING")
                .await?
                .is_some()
            {
                with_kube.push(*v);
            }
        }
        let pick = match with_kube.as_slice() {
            [only] => Some(*only),
            _ => installed_ones.first().copied(),
        };
        let v = pick.ok_or_else(|| FirewallError::Missing {
            binary: "iptables-restore".into(),
            package: "iptables",
            mode: "iptables",
        })?;
        tracing::debug!(iptables = v.0, "iptables variant");
        Ok(variant(v))
    }

    /// `iptables -t <table> -S <chain>`; `None` when the chain does not exist.
    async fn listing(&self, table: &str, chain: &str) -> Result<Option<String>, FirewallError> {
        match run(
            self.list,
            &["-w", "5", "-t", table, "-S", chain],
            None,
            "iptables",
        )
        .await
        {
            Ok(text) => Ok(Some(text)),
            // iptables-nft says "incompatible" when the table itself does
            // not exist yet (nothing has used it in this namespace).
            Err(FirewallError::Command { detail, .. })
                if ["No chain/target/match", "does not exist", "is incompatible"]
                    .iter()
                    .any(|m| detail.contains(m)) =>
            {
                Ok(None)
            }
            Err(e) => Err(e),
        }
    }

    async fn found(&self, c: &ChainRules) -> Result<Found, FirewallError> {
        let chain = self.listing(c.table, c.chain).await?;
        let hook = self.listing(c.table, c.hook).await?.unwrap_or_default();
        Ok(find(chain.as_deref(), &hook, c))
    }

    async fn restore(&self, table: &str, lines: &[String]) -> Result<(), FirewallError> {
        let input = format!("*{table}\n{}\nCOMMIT\n", lines.join("\n"));
        run(
            self.restore,
            &["--noflush", "-w", "5"],
            Some(&input),
            "iptables",
        )
        .await
        .map(|_| ())
    }

    /// Makes felt's chains match `rules`: whether anything was written,
    /// and whether nothing of felt's was there before.
    async fn converge(&self, rules: &RuleSet) -> Result<(bool, bool), FirewallError> {
        let (mut wrote, mut nothing_before) = (false, true);
        for want in chains(rules) {
            let found = self.found(&want).await?;
            nothing_before &= !found.declared && found.jumps.is_empty();
            let lines = repair(&found, &want);
            if !lines.is_empty() {
                self.restore(want.table, &lines).await?;
                wrote = true;
            }
        }
        Ok((wrote, nothing_before))
    }
}

/// No rules at all: what converging to removes felt's chains.
fn no_rules() -> RuleSet {
    RuleSet {
        masquerade: false,
        forward: false,
        network: ipnet::Ipv4Net::default(),
        pod_subnet: ipnet::Ipv4Net::default(),
    }
}

/// Removes felt's (flannel's) iptables chains from both variants: when
/// the node runs nftables mode. True when any was there.
pub async fn remove_leftovers() -> Result<bool, FirewallError> {
    let mut removed = false;
    for v in VARIANTS
        .iter()
        .skip(1)
        .filter(|(l, r)| installed(l) && installed(r))
    {
        if variant(*v).converge(&no_rules()).await?.0 {
            tracing::info!(variant = v.0, "removed flannel's iptables chains");
            removed = true;
        }
    }
    Ok(removed)
}

#[async_trait]
impl super::Firewall for Iptables {
    fn mode(&self) -> Mode {
        Mode::Iptables
    }

    async fn ensure(&self, rules: &RuleSet) -> Result<Outcome, FirewallError> {
        let mut repaired = false;
        if !self.cleaned.load(Ordering::SeqCst) {
            if installed("nft") {
                let leftovers: Vec<(String, String)> = nft::tables()
                    .await?
                    .into_iter()
                    .filter(|(f, n)| {
                        (f == "ip" && n == nft::TABLE)
                            || nft::FLANNEL_TABLES
                                .iter()
                                .any(|(ff, nn)| f == ff && n == nn)
                    })
                    .collect();
                if !leftovers.is_empty() {
                    tracing::info!(tables = ?leftovers, "removing nftables-mode tables (felt's or flannel's)");
                    nft::delete_tables(&leftovers).await?;
                    repaired = true;
                }
            }
            self.cleaned.store(true, Ordering::SeqCst);
        }
        let (wrote, nothing_before) = self.converge(rules).await?;
        if !wrote {
            if rules.masquerade || rules.forward {
                self.wrote.store(true, Ordering::SeqCst);
            }
            return Ok(if repaired {
                Outcome::Repaired
            } else {
                Outcome::Unchanged
            });
        }
        Ok(written(nothing_before && !repaired, &self.wrote))
    }

    async fn uninstall(&self) -> Vec<FirewallError> {
        let mut errors = Vec::new();
        for v in VARIANTS
            .iter()
            .skip(1)
            .filter(|(l, r)| installed(l) && installed(r))
        {
            if let Err(e) = variant(*v).converge(&no_rules()).await {
                errors.push(e);
            }
        }
        errors
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rules() -> RuleSet {
        RuleSet {
            network: "10.244.0.0/16".parse().unwrap(),
            pod_subnet: "10.244.3.0/24".parse().unwrap(),
            masquerade: true,
            forward: true,
        }
    }

    #[test]
    fn flannels_rules_byte_for_byte() {
        let [nat, filter] = chains(&rules());
        assert_eq!(
            nat.rules,
            [
                "-A FLANNEL-POSTRTG -m mark --mark 0x4000/0x4000 -m comment --comment \"flanneld masq\" -j RETURN",
                "-A FLANNEL-POSTRTG -s 10.244.3.0/24 -d 10.244.0.0/16 -m comment --comment \"flanneld masq\" -j RETURN",
                "-A FLANNEL-POSTRTG -s 10.244.0.0/16 -d 10.244.3.0/24 -m comment --comment \"flanneld masq\" -j RETURN",
                "-A FLANNEL-POSTRTG ! -s 10.244.0.0/16 -d 10.244.3.0/24 -m comment --comment \"flanneld masq\" -j RETURN",
                "-A FLANNEL-POSTRTG -s 10.244.0.0/16 ! -d 224.0.0.0/4 -m comment --comment \"flanneld masq\" -j MASQUERADE --random-fully",
                "-A FLANNEL-POSTRTG ! -s 10.244.0.0/16 -d 10.244.0.0/16 -m comment --comment \"flanneld masq\" -j MASQUERADE --random-fully",
            ]
        );
        assert_eq!(
            nat.jump,
            "-A POSTROUTING -m comment --comment \"flanneld masq\" -j FLANNEL-POSTRTG"
        );
        assert_eq!(
            filter.rules,
            [
                "-A FLANNEL-FWD -s 10.244.0.0/16 -m comment --comment \"flanneld forward\" -j ACCEPT",
                "-A FLANNEL-FWD -d 10.244.0.0/16 -m comment --comment \"flanneld forward\" -j ACCEPT",
            ]
        );
    }

    #[test]
    fn repair_table() {
        let [nat, _] = chains(&rules());
        let chain = format!("-N FLANNEL-POSTRTG\n{}\n", nat.rules.join("\n"));
        let hook = |extra: &str| {
            format!(
                "-P POSTROUTING ACCEPT\n{}\n-A POSTROUTING -j KUBE-POSTROUTING\n{extra}",
                nat.jump
            )
        };
        // Exactly right: nothing to do, whatever else is there.
        assert!(repair(&find(Some(&chain), &hook(""), &nat), &nat).is_empty());
        // A rule gone: the chain is rewritten, the jump left alone.
        let one_less = chain.replace(&format!("{}\n", nat.rules[2]), "");
        let lines = repair(&find(Some(&one_less), &hook(""), &nat), &nat);
        assert_eq!(
            lines[..2],
            [
                ":FLANNEL-POSTRTG - [0:0]".to_string(),
                "-F FLANNEL-POSTRTG".into()
            ]
        );
        assert_eq!(lines.len(), 2 + 6);
        // A second jump: both deleted, one inserted first.
        let doubled = hook(&format!("{}\n", nat.jump));
        let lines = repair(&find(Some(&chain), &doubled, &nat), &nat);
        assert_eq!(
            lines
                .iter()
                .filter(|l| l.starts_with("-D POSTROUTING"))
                .count(),
            2
        );
        assert_eq!(
            lines.last().unwrap(),
            "-I POSTROUTING 1 -m comment --comment \"flanneld masq\" -j FLANNEL-POSTRTG"
        );
        // The chain missing altogether: declared, filled, jumped to.
        let lines = repair(&find(None, "-P POSTROUTING ACCEPT\n", &nat), &nat);
        assert_eq!(lines.len(), 2 + 6 + 1);
        // Not wanted: jump, rules and chain go; KUBE-* stays.
        let none = ChainRules {
            rules: Vec::new(),
            ..nat.clone()
        };
        let lines = repair(&find(Some(&chain), &hook(""), &none), &none);
        assert_eq!(
            lines,
            [
                nat.jump.replacen("-A ", "-D ", 1),
                "-F FLANNEL-POSTRTG".to_string(),
                "-X FLANNEL-POSTRTG".to_string()
            ]
        );
    }
}
