//! iptables mode: flannel's own chains, so a node switched from flannel
//! keeps its rules untouched when they are already right (takeover is
//! then a no-op), in the iptables variant the host uses.
//!
//! Each table that needs a change gets ONE `iptables-restore --noflush`
//! block: declaring our chain flushes it, our rules follow, the jump is
//! added only if missing and surplus jumps are deleted, all committed at
//! once. Nothing else in the table is named, so nothing else changes.

use super::exec::{run_ok, Tool};
use super::netlink::Inventory;
use super::rules::{forward_rules, masquerade_rules, AddrMatch, Rule, Verdict};
use super::xtables::{self, Backend, Family, OwnedChain, FWD_CHAIN, MASQ_CHAIN, OWNED};
use super::{netlink, nft, Firewall, FirewallError, Mode, Outcome, RuleSet};
use async_trait::async_trait;

/// How the variant was chosen.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Choice {
    /// kube-proxy's (or kubelet's) KUBE-* chains live there: final.
    KubeChains(Backend),
    /// No KUBE-* chains anywhere yet: `iptables` on PATH; asked again
    /// each round until kube-proxy shows up.
    Default(Backend),
}

impl Choice {
    pub fn backend(self) -> Backend {
        match self {
            Choice::KubeChains(b) | Choice::Default(b) => b,
        }
    }
}

#[derive(Default)]
struct State {
    kube: Option<Backend>,
    default: Option<Backend>,
}

pub struct IptablesFirewall {
    // One ensure or uninstall at a time; also caches the variant.
    state: tokio::sync::Mutex<State>,
    history: super::History,
}

impl IptablesFirewall {
    pub fn new() -> Self {
        IptablesFirewall {
            state: tokio::sync::Mutex::new(State::default()),
            history: super::History::default(),
        }
    }
}

impl Default for IptablesFirewall {
    fn default() -> Self {
        Self::new()
    }
}

#[async_trait]
impl Firewall for IptablesFirewall {
    fn mode(&self) -> Mode {
        Mode::Iptables
    }

    async fn ensure(&self, rs: &RuleSet) -> Result<Outcome, FirewallError> {
        let mut state = self.state.lock().await;
        let inv = netlink::inventory().await?;
        let backend = choose(&mut state, &inv).await?.backend();
        let saved = xtables::read_owned(backend, Family::V4, &inv).await?;
        let had_ours = OWNED.iter().any(|o| {
            saved
                .get(o.table)
                .is_some_and(|t| t.chains.contains(o.chain))
        });
        let blocks = plan(&saved, rs);
        if !blocks.is_empty() {
            xtables::restore(backend, Family::V4, &xtables::restore_payload(&blocks)).await?;
        }
        // felt's nftables mode and flannel's: their tables go.
        let stale = nft::owned_tables(&inv.tables, true);
        nft::delete_tables(&stale).await?;
        let cleanup = xtables::remove_chains(Some((backend, Family::V4)), &inv).await;
        FirewallError::collect(cleanup.errors)?;
        Ok(self.history.outcome(
            !blocks.is_empty(),
            !stale.is_empty() || cleanup.changed,
            had_ours,
        ))
    }

    async fn uninstall(&self) -> Result<(), FirewallError> {
        let _one = self.state.lock().await;
        super::uninstall_all().await
    }
}

/// The restore blocks (per table) that make `saved` hold exactly `rs`.
pub fn plan<'a>(saved: &xtables::Saved, rs: &RuleSet) -> Vec<(&'a str, String)> {
    let wanted = [
        (MASQ_CHAIN, masquerade_rules(rs)),
        (FWD_CHAIN, forward_rules(rs)),
    ];
    wanted
        .into_iter()
        .filter_map(|(owned, rules)| {
            let specs = chain_specs(&owned, &rules);
            let want = (!rules.is_empty()).then_some(specs.as_slice());
            xtables::plan_table(saved.get(owned.table), &owned, want).map(|b| (owned.table, b))
        })
        .collect()
}

/// The specs of `rules` in `owned`, as iptables-save prints them.
pub fn chain_specs(owned: &OwnedChain, rules: &[Rule]) -> Vec<String> {
    rules.iter().map(|r| rule_spec(r, owned.comment)).collect()
}

/// One rule as iptables-save prints it (addresses, then matches in the
/// order given, then the target), e.g. `! -s 10.244.0.0/16 -d
/// 10.244.0.0/16 -m comment --comment "flanneld masq" -j MASQUERADE
/// --random-fully`.
pub fn rule_spec(r: &Rule, comment: &str) -> String {
    let mut parts = Vec::new();
    for (flag, m) in [("-s", r.src), ("-d", r.dst)] {
        if let Some(AddrMatch { net, negated }) = m {
            let bang = if negated { "! " } else { "" };
            parts.push(format!("{bang}{flag} {net}"));
        }
    }
    if let Some(m) = r.mark {
        parts.push(format!("-m mark --mark {m:#x}/{m:#x}"));
    }
    parts.push(format!("-m comment --comment \"{comment}\""));
    parts.push(
        match r.verdict {
            Verdict::Return => "-j RETURN",
            Verdict::Masquerade => "-j MASQUERADE --random-fully",
            Verdict::Accept => "-j ACCEPT",
        }
        .to_string(),
    );
    parts.join(" ")
}

/// The variant to use, like kubernetes' iptables-wrapper: the one holding
/// KUBE-* chains, else the one `iptables` on PATH is.
async fn choose(state: &mut State, inv: &Inventory) -> Result<Choice, FirewallError> {
    if let Some(b) = state.kube {
        return Ok(Choice::KubeChains(b));
    }
    // The nft variant's chains are in the inventory already.
    let kube_nft = inv.chains.iter().any(|c| {
        (c.family == "ip" || c.family == "ip6")
            && xtables::XTABLES.contains(&c.table.as_str())
            && c.name.starts_with("KUBE-")
    });
    if kube_nft {
        state.kube = Some(Backend::Nft);
        return Ok(Choice::KubeChains(Backend::Nft));
    }
    // Legacy: only where it has tables (its *-save -t would create one).
    for family in [Family::V4, Family::V6] {
        if xtables::present_tables(Backend::Legacy, family, inv).is_empty() {
            continue;
        }
        let saved = xtables::save(Backend::Legacy, family).await?;
        if saved
            .values()
            .any(|t| t.chains.iter().any(|c| c.starts_with("KUBE-")))
        {
            state.kube = Some(Backend::Legacy);
            return Ok(Choice::KubeChains(Backend::Legacy));
        }
    }
    if let Some(b) = state.default {
        return Ok(Choice::Default(b));
    }
    let b = default_backend().await?;
    state.default = Some(b);
    Ok(Choice::Default(b))
}

/// What `iptables --version` says it is: "iptables v1.8.9 (nf_tables)" or
/// "(legacy)"; before 1.8 there was only legacy and no suffix.
pub fn parse_version(text: &str) -> Backend {
    if text.contains("(nf_tables)") {
        Backend::Nft
    } else {
        Backend::Legacy
    }
}

async fn default_backend() -> Result<Backend, FirewallError> {
    Ok(parse_version(
        &run_ok(Tool::Iptables, &["--version"], None).await?,
    ))
}
