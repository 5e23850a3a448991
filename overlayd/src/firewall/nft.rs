//! nftables mode: felt's own table `ip felt` with a NAT postrouting chain
//! (priority srcnat) and a filter forward chain (priority filter), written
//! as one `nft -f` transaction that deletes and re-creates the table, so
//! no packet ever sees half of it. Every rule carries a comment
//! `felt <fingerprint> <index>`: the check compares chains and comments,
//! which nft prints back verbatim whatever its version, so a rule deleted
//! or added by hand, or rules of another configuration, are recognised.

use super::exec::{installed, run};
use super::{
    fingerprint, iptables, written, FirewallError, Mode, Outcome, RuleSet, KUBE_PROXY_MARK,
    MULTICAST,
};
use async_trait::async_trait;
use serde_json::Value;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};

/// felt's table (family ip).
pub const TABLE: &str = "felt";
/// flannel's nftables-mode tables, removed when felt takes a node over.
pub const FLANNEL_TABLES: [(&str, &str); 2] = [("ip", "flannel-ipv4"), ("ip6", "flannel-ipv6")];

/// One base chain as it must be.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChainSpec {
    pub name: &'static str,
    pub kind: &'static str,
    pub hook: &'static str,
    /// As `nft -j` prints it (srcnat = 100, filter = 0).
    pub prio: i64,
    pub rules: Vec<String>,
}

/// The chains `rules` needs, in order (none when nothing is wanted).
pub fn chains(rules: &RuleSet) -> Vec<ChainSpec> {
    let (n, p) = (rules.network, rules.pod_subnet);
    let mut out = Vec::new();
    if rules.masquerade {
        let m = KUBE_PROXY_MARK;
        out.push(ChainSpec {
            name: "postrouting",
            kind: "nat",
            hook: "postrouting",
            prio: 100,
            rules: vec![
                // kube-proxy masquerades these itself.
                format!("meta mark & {m:#010x} == {m:#010x} return"),
                // Within the pod network: never.
                format!("ip saddr {p} ip daddr {n} return"),
                format!("ip saddr {n} ip daddr {p} return"),
                // From outside to this node's pods (a NodePort): keep the source.
                format!("ip saddr != {n} ip daddr {p} return"),
                // Pods to the world (not multicast), and the host to other
                // nodes' pods.
                format!("ip saddr {n} ip daddr != {MULTICAST} masquerade fully-random"),
                format!("ip saddr != {n} ip daddr {n} masquerade fully-random"),
            ],
        });
    }
    if rules.forward {
        out.push(ChainSpec {
            name: "forward",
            kind: "filter",
            hook: "forward",
            prio: 0,
            rules: vec![
                format!("ip saddr {n} accept"),
                format!("ip daddr {n} accept"),
            ],
        });
    }
    out
}

/// The comment of rule `i` of a rule set with fingerprint `fp`.
fn comment(fp: &str, i: usize) -> String {
    format!("felt {fp} {i}")
}

fn rules_fingerprint(chains: &[ChainSpec]) -> String {
    let all: Vec<String> = chains
        .iter()
        .flat_map(|c| c.rules.iter().map(move |r| format!("{} {r}", c.name)))
        .collect();
    fingerprint(&all.join("\n"))
}

/// The table as `nft -f` input (without the surrounding delete).
pub fn render(chains: &[ChainSpec]) -> String {
    let fp = rules_fingerprint(chains);
    let mut out = format!("table ip {TABLE} {{\n");
    let mut i = 0;
    for c in chains {
        let prio = if c.kind == "nat" { "srcnat" } else { "filter" };
        out.push_str(&format!(
            "  chain {} {{\n    type {} hook {} priority {prio}; policy accept;\n",
            c.name, c.kind, c.hook
        ));
        for r in &c.rules {
            out.push_str(&format!("    {r} comment \"{}\"\n", comment(&fp, i)));
            i += 1;
        }
        out.push_str("  }\n");
    }
    out.push_str("}\n");
    out
}

/// What the check compares: per chain (type, hook, prio, policy) and the
/// rule comments in order.
type Shape = BTreeMap<String, (String, String, i64, String, Vec<String>)>;

/// The shape `chains` must have in the kernel.
pub fn wanted_shape(chains: &[ChainSpec]) -> Shape {
    let fp = rules_fingerprint(chains);
    let mut i = 0;
    let mut shape = Shape::new();
    for c in chains {
        let comments = c
            .rules
            .iter()
            .map(|_| {
                i += 1;
                comment(&fp, i - 1)
            })
            .collect();
        shape.insert(
            c.name.to_string(),
            (
                c.kind.into(),
                c.hook.into(),
                c.prio,
                "accept".into(),
                comments,
            ),
        );
    }
    shape
}

/// The shape of `nft -j list table ip felt` output.
pub fn shape_of(json: &str) -> Result<Shape, FirewallError> {
    let bad = |detail: String| FirewallError::Parse {
        what: format!("nft -j list table ip {TABLE}"),
        detail,
    };
    let v: Value = serde_json::from_str(json).map_err(|e| bad(e.to_string()))?;
    let items = v["nftables"]
        .as_array()
        .ok_or_else(|| bad("no nftables array".into()))?;
    let mut shape = Shape::new();
    for item in items {
        if let Some(c) = item.get("chain") {
            let s = |k: &str| c[k].as_str().unwrap_or("").to_string();
            let entry = (
                s("type"),
                s("hook"),
                c["prio"].as_i64().unwrap_or(i64::MIN),
                s("policy"),
                Vec::new(),
            );
            shape.insert(s("name"), entry);
        }
    }
    for item in items {
        if let Some(r) = item.get("rule") {
            let chain = r["chain"].as_str().unwrap_or("");
            let comment = r["comment"].as_str().unwrap_or("(no comment)").to_string();
            if let Some(entry) = shape.get_mut(chain) {
                entry.4.push(comment);
            }
        }
    }
    Ok(shape)
}

pub struct Nftables {
    /// The other mode's and flannel's leftovers are looked for once: only
    /// another daemon (flannel before the switch) makes them.
    cleaned: AtomicBool,
    /// Set once this process has written the rules.
    wrote: AtomicBool,
}

impl Nftables {
    pub async fn new() -> Result<Self, FirewallError> {
        if !installed("nft") {
            return Err(FirewallError::Missing {
                binary: "nft".into(),
                package: "nftables",
                mode: "nftables",
            });
        }
        Ok(Nftables {
            cleaned: AtomicBool::new(false),
            wrote: AtomicBool::new(false),
        })
    }

    /// felt's table as the kernel holds it; `None` when absent.
    async fn current(&self) -> Result<Option<Shape>, FirewallError> {
        match run(
            "nft",
            &["-j", "list", "table", "ip", TABLE],
            None,
            "nftables",
        )
        .await
        {
            Ok(json) => shape_of(&json).map(Some),
            Err(FirewallError::Command { detail, .. })
                if detail.contains("No such file or directory") =>
            {
                Ok(None)
            }
            Err(e) => Err(e),
        }
    }
}

/// The (family, name) of every nftables table present.
pub async fn tables() -> Result<Vec<(String, String)>, FirewallError> {
    let out = run("nft", &["list", "tables"], None, "nftables").await?;
    Ok(out
        .lines()
        .filter_map(|l| {
            let mut w = l.split_whitespace();
            (w.next() == Some("table"))
                .then(|| Some((w.next()?.to_string(), w.next()?.to_string())))
                .flatten()
        })
        .collect())
}

/// Deletes the given tables in one transaction.
pub async fn delete_tables(which: &[(String, String)]) -> Result<(), FirewallError> {
    if which.is_empty() {
        return Ok(());
    }
    let script: String = which
        .iter()
        .map(|(f, n)| format!("delete table {f} {n}\n"))
        .collect();
    run("nft", &["-f", "-"], Some(&script), "nftables")
        .await
        .map(|_| ())
}

/// flannel's nftables tables present now.
async fn flannel_tables() -> Result<Vec<(String, String)>, FirewallError> {
    Ok(tables()
        .await?
        .into_iter()
        .filter(|(f, n)| FLANNEL_TABLES.iter().any(|(ff, nn)| f == ff && n == nn))
        .collect())
}

#[async_trait]
impl super::Firewall for Nftables {
    fn mode(&self) -> Mode {
        Mode::Nftables
    }

    async fn ensure(&self, rules: &RuleSet) -> Result<Outcome, FirewallError> {
        let mut outcome = Outcome::Unchanged;
        if !self.cleaned.load(Ordering::SeqCst) {
            let leftovers = flannel_tables().await?;
            if !leftovers.is_empty() {
                tracing::info!(tables = ?leftovers, "removing flannel's nftables tables");
                delete_tables(&leftovers).await?;
                outcome = Outcome::Repaired;
            }
            if iptables::remove_leftovers().await? {
                outcome = Outcome::Repaired;
            }
            self.cleaned.store(true, Ordering::SeqCst);
        }
        let chains = chains(rules);
        let have = self.current().await?;
        let want = (!chains.is_empty()).then(|| wanted_shape(&chains));
        if have == want {
            if want.is_some() {
                self.wrote.store(true, Ordering::SeqCst);
            }
            return Ok(outcome);
        }
        let mut script = format!("add table ip {TABLE}\ndelete table ip {TABLE}\n");
        if !chains.is_empty() {
            script.push_str(&render(&chains));
        }
        run("nft", &["-f", "-"], Some(&script), "nftables").await?;
        Ok(written(
            have.is_none() && outcome == Outcome::Unchanged,
            &self.wrote,
        ))
    }

    async fn uninstall(&self) -> Vec<FirewallError> {
        let mut errors = Vec::new();
        match tables().await {
            Ok(all) => {
                let ours: Vec<(String, String)> = all
                    .into_iter()
                    .filter(|(f, n)| {
                        (f == "ip" && n == TABLE)
                            || FLANNEL_TABLES.iter().any(|(ff, nn)| f == ff && n == nn)
                    })
                    .collect();
                if let Err(e) = delete_tables(&ours).await {
                    errors.push(e);
                }
            }
            Err(e) => errors.push(e),
        }
        errors
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rules(masquerade: bool, forward: bool) -> RuleSet {
        RuleSet {
            network: "10.244.0.0/16".parse().unwrap(),
            pod_subnet: "10.244.3.0/24".parse().unwrap(),
            masquerade,
            forward,
        }
    }

    #[test]
    fn flannels_rules_in_nft_syntax() {
        let text = render(&chains(&rules(true, true)));
        let fp = rules_fingerprint(&chains(&rules(true, true)));
        let want = format!(
            "table ip felt {{
  chain postrouting {{
    type nat hook postrouting priority srcnat; policy accept;
    meta mark & 0x00004000 == 0x00004000 return comment \"felt {fp} 0\"
    ip saddr 10.244.3.0/24 ip daddr 10.244.0.0/16 return comment \"felt {fp} 1\"
    ip saddr 10.244.0.0/16 ip daddr 10.244.3.0/24 return comment \"felt {fp} 2\"
    ip saddr != 10.244.0.0/16 ip daddr 10.244.3.0/24 return comment \"felt {fp} 3\"
    ip saddr 10.244.0.0/16 ip daddr != 224.0.0.0/4 masquerade fully-random comment \"felt {fp} 4\"
    ip saddr != 10.244.0.0/16 ip daddr 10.244.0.0/16 masquerade fully-random comment \"felt {fp} 5\"
  }}
  chain forward {{
    type filter hook forward priority filter; policy accept;
    ip saddr 10.244.0.0/16 accept comment \"felt {fp} 6\"
    ip daddr 10.244.0.0/16 accept comment \"felt {fp} 7\"
  }}
}}
"
        );
        assert_eq!(text, want);
        assert!(chains(&rules(false, false)).is_empty());
        assert_eq!(chains(&rules(false, true)).len(), 1);
        let other = RuleSet {
            pod_subnet: "10.244.4.0/24".parse().unwrap(),
            ..rules(true, true)
        };
        assert_ne!(
            rules_fingerprint(&chains(&other)),
            fp,
            "another subnet, another fingerprint"
        );
    }

    #[test]
    fn shape_read_back_matches_and_notices_a_missing_rule() {
        let c = chains(&rules(false, true));
        let fp = rules_fingerprint(&c);
        let json = format!(
            r#"{{"nftables":[{{"metainfo":{{"version":"1.0.6"}}}},{{"table":{{"family":"ip","name":"felt","handle":3}}}},
            {{"chain":{{"family":"ip","table":"felt","name":"forward","handle":2,"type":"filter","hook":"forward","prio":0,"policy":"accept"}}}},
            {{"rule":{{"family":"ip","table":"felt","chain":"forward","handle":4,"comment":"felt {fp} 0","expr":[]}}}},
            {{"rule":{{"family":"ip","table":"felt","chain":"forward","handle":5,"comment":"felt {fp} 1","expr":[]}}}}]}}"#
        );
        assert_eq!(shape_of(&json).unwrap(), wanted_shape(&c));
        let missing = json.replace(&format!(",\n            {{\"rule\":{{\"family\":\"ip\",\"table\":\"felt\",\"chain\":\"forward\",\"handle\":5,\"comment\":\"felt {fp} 1\",\"expr\":[]}}}}"), "");
        assert_ne!(missing, json);
        assert_ne!(shape_of(&missing).unwrap(), wanted_shape(&c));
    }
}
