//! The rules as data, independent of the backend that renders them:
//! flannel's masquerade chain (pkg/trafficmngr/iptables masqRules) and
//! forward chain (forwardRules), in flannel's order. Order matters: the
//! RETURN rules exempt traffic the MASQUERADE rules would otherwise catch.

use super::RuleSet;
use ipnet::{IpNet, Ipv4Net};
use std::net::Ipv4Addr;

/// kube-proxy's masquerade mark: packets it marked are masqueraded by
/// kube-proxy's own rules, and a second NAT breaks them on some kernels.
pub const KUBE_PROXY_MARK: u32 = 0x4000;

/// IPv4 multicast, never masqueraded.
pub const MULTICAST_V4: Ipv4Net = match Ipv4Net::new(Ipv4Addr::new(224, 0, 0, 0), 4) {
    Ok(n) => n,
    Err(_) => unreachable!(),
};

/// An address match: `net`, or everything but `net` when `negated`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AddrMatch {
    pub net: IpNet,
    pub negated: bool,
}

impl AddrMatch {
    pub fn is(net: impl Into<IpNet>) -> Self {
        AddrMatch {
            net: net.into(),
            negated: false,
        }
    }

    pub fn not(net: impl Into<IpNet>) -> Self {
        AddrMatch {
            net: net.into(),
            negated: true,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Leave this chain: no masquerade.
    Return,
    /// Masquerade with fully random source ports (`--random-fully`).
    Masquerade,
    Accept,
}

/// One rule: every present match must hold, then the verdict applies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rule {
    /// `(mark & m) == m`.
    pub mark: Option<u32>,
    pub src: Option<AddrMatch>,
    pub dst: Option<AddrMatch>,
    pub verdict: Verdict,
}

impl Rule {
    fn addrs(src: Option<AddrMatch>, dst: Option<AddrMatch>, verdict: Verdict) -> Self {
        Rule {
            mark: None,
            src,
            dst,
            verdict,
        }
    }
}

/// The nat postrouting rules, in order; empty when masquerade is off.
pub fn masquerade_rules(rs: &RuleSet) -> Vec<Rule> {
    if !rs.masquerade {
        return Vec::new();
    }
    // Host bits would render differently in each backend; rules name networks.
    let (n, p) = (rs.network.trunc(), rs.pod_subnet.trunc());
    vec![
        // Already marked for masquerade by kube-proxy.
        Rule {
            mark: Some(KUBE_PROXY_MARK),
            src: None,
            dst: None,
            verdict: Verdict::Return,
        },
        // Pod to pod, in either direction: keep the pod address.
        Rule::addrs(
            Some(AddrMatch::is(p)),
            Some(AddrMatch::is(n)),
            Verdict::Return,
        ),
        Rule::addrs(
            Some(AddrMatch::is(n)),
            Some(AddrMatch::is(p)),
            Verdict::Return,
        ),
        // From outside to a pod of this node (e.g. a NodePort hop): keep
        // the client address.
        Rule::addrs(
            Some(AddrMatch::not(n)),
            Some(AddrMatch::is(p)),
            Verdict::Return,
        ),
        // Pods to the outside world, multicast excepted.
        Rule::addrs(
            Some(AddrMatch::is(n)),
            Some(AddrMatch::not(MULTICAST_V4)),
            Verdict::Masquerade,
        ),
        // The host (or outside) to pods of other nodes.
        Rule::addrs(
            Some(AddrMatch::not(n)),
            Some(AddrMatch::is(n)),
            Verdict::Masquerade,
        ),
    ]
}

/// The filter forward rules; empty when forward rules are off.
pub fn forward_rules(rs: &RuleSet) -> Vec<Rule> {
    if !rs.forward {
        return Vec::new();
    }
    let n = rs.network.trunc();
    vec![
        Rule::addrs(Some(AddrMatch::is(n)), None, Verdict::Accept),
        Rule::addrs(None, Some(AddrMatch::is(n)), Verdict::Accept),
    ]
}
