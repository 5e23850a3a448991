//! ipMasq: masquerade pod traffic leaving the cluster network, with the
//! `nft` binary in the node netns. Only used when ipMasq ends up true
//! (not with overlayd, which masquerades itself), so the subprocess stays
//! off the default hot path.

use crate::error::{Error, Result};
use crate::ipam::range::RangeSet;
use ipnet::IpNet;
use std::io::Write;
use std::process::{Command, Stdio};

pub const TABLE: &str = "felt-cni";

/// The whole ruleset for network `name`, replaced atomically on each call.
pub fn ruleset(name: &str, ranges: &[RangeSet], cluster: &[IpNet]) -> Option<String> {
    let subnets: Vec<IpNet> = ranges
        .iter()
        .filter(|s| s.is_ipv4())
        .flat_map(|s| s.0.iter().map(|r| r.subnet))
        .collect();
    if subnets.is_empty() {
        return None;
    }
    // Unquoted: nft 1.0.x rejects a quoted chain name here; network names
    // are restricted to [a-zA-Z0-9_.-], which nft accepts after "masq-".
    let chain = format!("masq-{name}");
    let mut keep: Vec<String> = cluster
        .iter()
        .filter(|n| n.addr().is_ipv4())
        .map(|n| n.to_string())
        .collect();
    if keep.is_empty() {
        keep = subnets.iter().map(|n| n.to_string()).collect();
    }
    keep.push("224.0.0.0/4".into());
    let mut out = format!(
        "add table ip {TABLE}\n\
         add chain ip {TABLE} {chain} {{ type nat hook postrouting priority srcnat; policy accept; }}\n\
         flush chain ip {TABLE} {chain}\n"
    );
    for s in &subnets {
        out.push_str(&format!(
            "add rule ip {TABLE} {chain} ip saddr {s} ip daddr != {{ {} }} masquerade\n",
            keep.join(", ")
        ));
    }
    Some(out)
}

pub fn ensure(name: &str, ranges: &[RangeSet], cluster: &[IpNet]) -> Result<()> {
    let Some(rules) = ruleset(name, ranges, cluster) else {
        return Ok(());
    };
    let child = Command::new("nft")
        .args(["-f", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn();
    let mut child = match child {
        Ok(c) => c,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(Error::Unsupported(
                "ipMasq not supported: the nft binary is not installed".into(),
            ))
        }
        Err(e) => return Err(Error::io("run nft for ipMasq")(e)),
    };
    if let Some(mut stdin) = child.stdin.take() {
        stdin
            .write_all(rules.as_bytes())
            .map_err(Error::io("write nft ruleset"))?;
    }
    let out = child
        .wait_with_output()
        .map_err(Error::io("run nft for ipMasq"))?;
    if !out.status.success() {
        return Err(Error::Kernel {
            what: "install ipMasq rules (nft)".into(),
            source: std::io::Error::other(String::from_utf8_lossy(&out.stderr).trim().to_string()),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ipam::range::Range;

    #[test]
    fn ruleset_masquerades_subnet_leaving_cluster() {
        let set = RangeSet::new(vec![Range::new(
            "10.244.1.0/24".parse().unwrap(),
            None,
            None,
            None,
        )
        .unwrap()])
        .unwrap();
        let rules = ruleset("cbr0", &[set], &["10.244.0.0/16".parse().unwrap()]).unwrap();
        assert!(rules.contains("add rule ip felt-cni masq-cbr0 ip saddr 10.244.1.0/24 ip daddr != { 10.244.0.0/16, 224.0.0.0/4 } masquerade"), "{rules}");
        assert!(rules.contains("type nat hook postrouting"));
    }
}
