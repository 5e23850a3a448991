//! The masquerade and forward rules of the pod network, with flannel's
//! semantics (`--ip-masq`, `--iptables-forward-rules`), in one of two
//! rule backends chosen by net-conf.json's `EnableNFTables`:
//!
//! - [`Mode::Nftables`]: felt's own table `ip felt`, replaced as a whole
//!   in one nft transaction ([`nft`]).
//! - [`Mode::Iptables`]: flannel's chains `FLANNEL-POSTRTG` (nat) and
//!   `FLANNEL-FWD` (filter), one `iptables-restore --noflush` per table,
//!   in the iptables variant (legacy or nft) the host's kube-proxy uses
//!   ([`iptables`], [`xtables`]).
//!
//! [`Firewall::ensure`] reads the kernel first and writes nothing when the
//! rules are already exactly right, so a restart never flushes rules that
//! traffic depends on (flannel #2237). It also takes over from flannel
//! and from felt's other mode, so no rule is ever installed twice.

mod exec;
pub mod iptables;
pub mod netlink;
pub mod nft;
mod nft_parse;
pub mod rules;
pub mod xtables;

use async_trait::async_trait;
use ipnet::Ipv4Net;

pub use exec::Tool;

/// The rules one node needs. IPv4 only for now; an IPv6 network would be a
/// second, optional (network, pod subnet) pair rendered by the same rules.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuleSet {
    /// The cluster network (net-conf.json `Network`).
    pub network: Ipv4Net,
    /// This node's pod subnet (its lease).
    pub pod_subnet: Ipv4Net,
    /// Masquerade traffic leaving the pod network (`--ip-masq`).
    pub masquerade: bool,
    /// Accept forwarded traffic from and to the pod network
    /// (flannel's `--iptables-forward-rules`, default true).
    pub forward: bool,
}

/// Which rule backend to use (net-conf.json `EnableNFTables`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Nftables,
    Iptables,
}

impl Mode {
    pub fn from_enable_nftables(enable: bool) -> Self {
        if enable {
            Mode::Nftables
        } else {
            Mode::Iptables
        }
    }
}

/// What [`Firewall::ensure`] found and did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Everything was exactly right; nothing was written.
    Unchanged,
    /// Nothing of ours was there at this firewall's first round; the rules
    /// were installed (possibly while removing flannel's or the other
    /// mode's leftovers). Later rounds that find nothing report Repaired.
    Installed,
    /// Something of ours was missing, wrong or doubled, or leftovers had
    /// to be removed; it was rewritten.
    Repaired,
}

#[derive(Debug, thiserror::Error)]
pub enum FirewallError {
    /// A binary the rules need is not installed.
    #[error("{binary} not found on PATH: install the Debian package \"{package}\"")]
    MissingBinary {
        binary: &'static str,
        package: &'static str,
    },
    #[error("cannot run {binary}: {source}")]
    Spawn {
        binary: &'static str,
        #[source]
        source: std::io::Error,
    },
    /// The command ran and failed.
    #[error("{command} failed ({status}): {stderr}")]
    Command {
        command: String,
        status: String,
        stderr: String,
    },
    /// A listing the code cannot read (not a changed ruleset: that is
    /// repaired, this is output in a format it does not know).
    #[error("cannot read the output of {command}: {detail}")]
    Parse { command: String, detail: String },
    /// `uninstall` went on past these failures.
    #[error("{} errors while removing rules: {}", .0.len(), join(.0))]
    Several(Vec<FirewallError>),
}

fn join(errors: &[FirewallError]) -> String {
    errors
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("; ")
}

impl FirewallError {
    /// None for no errors, the error itself for one, `Several` otherwise.
    pub(crate) fn collect(mut errors: Vec<FirewallError>) -> Result<(), FirewallError> {
        match errors.len() {
            0 => Ok(()),
            1 => Err(errors.remove(0)),
            _ => Err(FirewallError::Several(errors)),
        }
    }
}

/// Installs and verifies the rules inside the network namespace of the
/// calling thread (child processes inherit it).
#[async_trait]
pub trait Firewall: Send + Sync {
    fn mode(&self) -> Mode;

    /// Makes the kernel hold exactly `rules`; writes only when something
    /// is missing or different.
    async fn ensure(&self, rules: &RuleSet) -> Result<Outcome, FirewallError>;

    /// Removes everything felt installed in either mode and flannel's
    /// tables and chains; keeps going past errors and reports them all.
    async fn uninstall(&self) -> Result<(), FirewallError>;
}

/// The firewall for `mode`. Fails early when the mode's own binary (`nft`
/// or `iptables`) is not installed. The other mode's binaries are needed
/// only to remove its leftovers; when one is missing then, that round
/// fails with an error naming it and its package.
pub fn build(mode: Mode) -> Result<Box<dyn Firewall>, FirewallError> {
    Ok(match mode {
        Mode::Nftables => {
            Tool::Nft.require()?;
            Box::new(nft::NftFirewall::new())
        }
        Mode::Iptables => {
            Tool::Iptables.require()?;
            Box::new(iptables::IptablesFirewall::new())
        }
    })
}

/// Whether this firewall has ensured before: then a table or chain found
/// missing was deleted since, which is a repair, not a first install.
#[derive(Default)]
pub(crate) struct History {
    ensured: std::sync::atomic::AtomicBool,
}

impl History {
    /// The outcome of a successful round; see [`outcome`].
    pub(crate) fn outcome(
        &self,
        wrote_ours: bool,
        removed_leftovers: bool,
        had_ours: bool,
    ) -> Outcome {
        use std::sync::atomic::Ordering;
        let before = self.ensured.swap(true, Ordering::Relaxed);
        outcome(wrote_ours, removed_leftovers, had_ours || before)
    }
}

/// The outcome of a round that rewrote ours (`wrote_ours`) and/or removed
/// leftovers, given whether anything of ours existed before.
pub(crate) fn outcome(wrote_ours: bool, removed_leftovers: bool, had_ours: bool) -> Outcome {
    match (wrote_ours || removed_leftovers, had_ours) {
        (false, _) => Outcome::Unchanged,
        (true, false) if wrote_ours => Outcome::Installed,
        _ => Outcome::Repaired,
    }
}

/// Both modes' uninstall: felt's and flannel's nftables tables, then
/// flannel's chains in every iptables variant and family.
pub async fn uninstall_all() -> Result<(), FirewallError> {
    let mut errors = Vec::new();
    let inv = match netlink::inventory().await {
        Ok(i) => i,
        Err(e) => {
            // Unknown is not "absent": assume everything may be there.
            errors.push(e);
            netlink::Inventory::everything()
        }
    };
    if let Err(e) = nft::delete_tables(&nft::owned_tables(&inv.tables, true)).await {
        errors.push(e);
    }
    errors.extend(xtables::remove_chains(None, &inv).await.errors);
    FirewallError::collect(errors)
}

/// Keeps the rules in place: checks every `interval` and repairs what is
/// missing, counting repairs and reporting the rules' readiness. Runs
/// until dropped; errors are retried at the next check.
pub async fn keep(
    fw: std::sync::Arc<dyn Firewall>,
    rules: RuleSet,
    interval: std::time::Duration,
    metrics: std::sync::Arc<crate::metrics::Metrics>,
    readiness: std::sync::Arc<crate::health::readiness::Readiness>,
) {
    loop {
        tokio::time::sleep(interval).await;
        apply_once(fw.as_ref(), &rules, &metrics, &readiness).await;
    }
}

/// One check: ensure, count, report. Returns whether the rules hold now.
pub async fn apply_once(
    fw: &dyn Firewall,
    rules: &RuleSet,
    metrics: &crate::metrics::Metrics,
    readiness: &crate::health::readiness::Readiness,
) -> bool {
    use crate::health::readiness::Condition;
    let mode = match fw.mode() {
        Mode::Nftables => "nftables",
        Mode::Iptables => "iptables",
    };
    match fw.ensure(rules).await {
        Ok(outcome) => {
            match outcome {
                Outcome::Unchanged => {}
                Outcome::Installed => tracing::info!(mode, "installed masquerade/forward rules"),
                Outcome::Repaired => {
                    metrics.rule_repairs.inc();
                    tracing::warn!(
                        mode,
                        "masquerade/forward rules were missing or changed; repaired"
                    );
                }
            }
            readiness.ok(Condition::Rules, mode);
            true
        }
        Err(e) => {
            tracing::warn!(error = %e, "cannot install the masquerade/forward rules; retrying");
            readiness.not(Condition::Rules, e.to_string());
            false
        }
    }
}

#[cfg(test)]
mod unit_tests;
