//! Masquerade and forward rules with flannel's semantics (--ip-masq,
//! --iptables-forward-rules), in one of two rule backends chosen by
//! net-conf.json's EnableNFTables:
//!
//! - **nftables** (`nft.rs`): felt's own table `ip felt`, replaced as one
//!   atomic `nft -f` transaction;
//! - **iptables** (`iptables.rs`): flannel's chains FLANNEL-POSTRTG and
//!   FLANNEL-FWD, replaced atomically per table with
//!   `iptables-restore --noflush`, in whichever of iptables-legacy and
//!   iptables-nft the node's kube-proxy uses.
//!
//! Rules are data (`RuleSet`, pure renderers); `ensure` reads what the
//! kernel holds and writes only when something of felt's is missing or
//! different, so a restart never rewrites (let alone flushes) rules that
//! traffic depends on (flannel #2237). A node switched from flannel: its
//! iptables chains are flannel's own names (taken over), its nftables
//! tables are removed, and so are felt's rules of the other mode, so
//! nothing is ever doubled. Rules are removed only by
//! `overlayd --uninstall-rules`.

mod exec;
pub mod iptables;
pub mod nft;

use crate::health::readiness::{Condition, Readiness};
use crate::metrics::Metrics;
use async_trait::async_trait;
use ipnet::Ipv4Net;
use std::sync::Arc;
use std::time::Duration;

/// What felt's rules must do on this node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuleSet {
    /// The whole pod network (FLANNEL_NETWORK).
    pub network: Ipv4Net,
    /// This node's pod subnet.
    pub pod_subnet: Ipv4Net,
    /// Masquerade pod traffic leaving the pod network (--ip-masq).
    pub masquerade: bool,
    /// Accept forwarding to and from the pod network (--iptables-forward-rules).
    pub forward: bool,
}

/// flannel's kube-proxy mark: packets kube-proxy will masquerade itself.
pub const KUBE_PROXY_MARK: u32 = 0x4000;
/// Multicast is never masqueraded.
pub const MULTICAST: &str = "224.0.0.0/4";

/// The rule backend.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Nftables,
    Iptables,
}

impl Mode {
    pub fn name(self) -> &'static str {
        match self {
            Mode::Nftables => "nftables",
            Mode::Iptables => "iptables",
        }
    }
}

/// What `ensure` found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Everything was exactly right: nothing written.
    Unchanged,
    /// Nothing of felt's was there (first start on this node).
    Installed,
    /// Something of felt's was missing or different, or another mode's or
    /// flannel's rules had to go: re-applied.
    Repaired,
}

#[derive(Debug, thiserror::Error)]
pub enum FirewallError {
    #[error(
        "`{binary}` is not installed (Debian package {package}); it is needed for {mode} rules"
    )]
    Missing {
        binary: String,
        package: &'static str,
        mode: &'static str,
    },
    #[error("`{command}` failed: {detail}")]
    Command { command: String, detail: String },
    #[error("cannot read {what}: {detail}")]
    Parse { what: String, detail: String },
}

/// A rule backend.
#[async_trait]
pub trait Firewall: Send + Sync {
    fn mode(&self) -> Mode;

    /// Makes felt's rules exactly `rules`, atomically, writing nothing when
    /// they already are; removes the other mode's and flannel's leftovers.
    async fn ensure(&self, rules: &RuleSet) -> Result<Outcome, FirewallError>;

    /// Removes felt's rules and flannel's (the takeover targets) of this
    /// mode; keeps going past errors and returns all of them.
    async fn uninstall(&self) -> Vec<FirewallError>;
}

/// The backend for `mode`, or why it cannot run here.
pub async fn build(mode: Mode) -> Result<Box<dyn Firewall>, FirewallError> {
    match mode {
        Mode::Nftables => Ok(Box::new(nft::Nftables::new().await?)),
        Mode::Iptables => Ok(Box::new(iptables::Iptables::detect().await?)),
    }
}

/// Removes every rule felt or flannel installed, both modes: for
/// `overlayd --uninstall-rules`. A mode whose tools are missing has
/// nothing installed by them; its absence is not an error.
pub async fn uninstall_all() -> Vec<FirewallError> {
    let mut errors = Vec::new();
    for mode in [Mode::Nftables, Mode::Iptables] {
        match build(mode).await {
            Ok(fw) => errors.extend(fw.uninstall().await),
            Err(FirewallError::Missing { .. }) => {}
            Err(e) => errors.push(e),
        }
    }
    errors
}

/// Keeps the rules in place: checks every `interval` and repairs what is
/// missing, counting repairs and reporting the rules' readiness. Runs
/// until dropped; errors are retried at the next check.
pub async fn keep(
    fw: Arc<dyn Firewall>,
    rules: RuleSet,
    interval: Duration,
    metrics: Arc<Metrics>,
    readiness: Arc<Readiness>,
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
    metrics: &Metrics,
    readiness: &Readiness,
) -> bool {
    match fw.ensure(rules).await {
        Ok(outcome) => {
            match outcome {
                Outcome::Unchanged => {}
                Outcome::Installed => tracing::info!(
                    mode = fw.mode().name(),
                    "installed masquerade/forward rules"
                ),
                Outcome::Repaired => {
                    metrics.rule_repairs.inc();
                    tracing::warn!(
                        mode = fw.mode().name(),
                        "masquerade/forward rules were missing or changed; repaired"
                    );
                }
            }
            readiness.ok(Condition::Rules, fw.mode().name());
            true
        }
        Err(e) => {
            tracing::warn!(error = %e, "cannot install the masquerade/forward rules; retrying");
            readiness.not(Condition::Rules, e.to_string());
            false
        }
    }
}

/// Installed or repaired: rules missing when this process has installed
/// them before were removed by someone, which is a repair.
fn written(nothing_before: bool, installed_before: &std::sync::atomic::AtomicBool) -> Outcome {
    let again = installed_before.swap(true, std::sync::atomic::Ordering::SeqCst);
    if nothing_before && !again {
        Outcome::Installed
    } else {
        Outcome::Repaired
    }
}

/// A short stable fingerprint of rendered rules (FNV-1a 32), so rules of
/// another configuration are never mistaken for the wanted ones.
fn fingerprint(text: &str) -> String {
    let mut h: u32 = 0x811c_9dc5;
    for b in text.bytes() {
        h ^= u32::from(b);
        h = h.wrapping_mul(0x0100_0193);
    }
    format!("{h:08x}")
}
