//! Which subnet this node should hold, decided purely from the leases that
//! exist (flannel's policy, with reservations kept safe):
//! 1. a lease or reservation whose PublicIP is ours, if it fits the config
//!    (a reservation wins over a plain lease);
//! 2. else the previous subnet (from subnet.env) if free and in range;
//! 3. else a random one among the first 100 free subnets from SubnetMin.
//!
//! A plain lease of ours that no longer fits the config is deleted first
//! (as flannel does); a reservation never is: an operator made it.

use super::{Lease, LeaseError};
use crate::config::NetworkConfig;
use ipnet::Ipv4Net;
use std::net::Ipv4Addr;

/// How many free subnets the random pick chooses among (flannel's number).
pub const CANDIDATES: usize = 100;

/// The allocation range from a validated config.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Pool {
    pub network: Ipv4Net,
    pub subnet_len: u8,
    pub min: Ipv4Addr,
    pub max: Ipv4Addr,
}

impl Pool {
    pub fn from_config(cfg: &NetworkConfig) -> Result<Self, LeaseError> {
        let network = cfg.network.ok_or_else(|| {
            LeaseError::Config("IPv4 is disabled: no Network to lease from".into())
        })?;
        Ok(Pool {
            network,
            subnet_len: cfg.subnet_len,
            min: cfg.subnet_min,
            max: cfg.subnet_max,
        })
    }

    /// In the network with the configured length, and between SubnetMin
    /// and SubnetMax.
    pub fn fits(&self, sn: Ipv4Net) -> bool {
        self.fits_network(sn) && sn.network() >= self.min && sn.network() <= self.max
    }

    fn fits_network(&self, sn: Ipv4Net) -> bool {
        sn.prefix_len() == self.subnet_len && self.network.contains(&sn.network())
    }

    fn full(&self) -> LeaseError {
        LeaseError::NetworkFull {
            network: self.network,
            subnet_len: self.subnet_len,
            min: self.min,
            max: self.max,
        }
    }
}

/// What the store must do.
#[derive(Debug, Clone, PartialEq)]
pub enum Plan {
    /// Keep this existing lease (ours by PublicIP); rewrite its attributes.
    Reuse(Lease),
    /// Create `subnet` (only if still absent); first delete `stale`, our
    /// own old lease that no longer fits the config.
    Create {
        subnet: Ipv4Net,
        stale: Option<Ipv4Net>,
    },
}

/// Decides from `leases` (everything under `<prefix>/subnets`) and
/// `malformed`, the subnets of keys whose value is not a lease (still
/// taken: the key exists). `pick` chooses an index below its argument
/// (random in production).
pub fn plan(
    pool: &Pool,
    leases: &[Lease],
    malformed: &[Ipv4Net],
    public_ip: Ipv4Addr,
    previous: Option<Ipv4Net>,
    pick: impl FnOnce(usize) -> usize,
) -> Result<Plan, LeaseError> {
    let ours = leases.iter().filter(|l| l.attrs.public_ip == public_ip);
    let mut stale = None;
    let mut found: Option<&Lease> = None;
    for l in ours {
        let reservation = l.term.is_reservation();
        // An operator's reservation only has to lie in the network;
        // SubnetMin/Max bound what felt picks by itself.
        let usable = if reservation {
            pool.fits_network(l.subnet)
        } else {
            pool.fits(l.subnet)
        };
        match (usable, reservation) {
            (true, true) => return Ok(Plan::Reuse(l.clone())),
            (true, false) => found = found.or(Some(l)),
            (false, false) => stale = Some(l.subnet),
            (false, true) => {}
        }
    }
    if let Some(l) = found {
        return Ok(Plan::Reuse(l.clone()));
    }
    let overlaps = |a: Ipv4Net, b: Ipv4Net| a.contains(&b.network()) || b.contains(&a.network());
    let taken = |sn: Ipv4Net| {
        leases.iter().any(|l| overlaps(l.subnet, sn)) || malformed.iter().any(|m| overlaps(*m, sn))
    };
    if let Some(prev) = previous.map(|p| p.trunc()) {
        if pool.fits(prev) && !taken(prev) && Some(prev) != stale {
            return Ok(Plan::Create {
                subnet: prev,
                stale,
            });
        }
    }
    let free = free_subnets(pool, taken, CANDIDATES);
    if free.is_empty() {
        return Err(pool.full());
    }
    let subnet = free[pick(free.len()).min(free.len() - 1)];
    Ok(Plan::Create { subnet, stale })
}

/// Up to `limit` free subnets, in order from SubnetMin to SubnetMax.
fn free_subnets(pool: &Pool, taken: impl Fn(Ipv4Net) -> bool, limit: usize) -> Vec<Ipv4Net> {
    let step = 1u64 << (32 - pool.subnet_len);
    let mut out = Vec::new();
    let mut at = u64::from(u32::from(pool.min));
    while at <= u64::from(u32::from(pool.max)) && out.len() < limit {
        let addr = Ipv4Addr::from(at as u32);
        if let Ok(sn) = Ipv4Net::new(addr, pool.subnet_len) {
            if !taken(sn) {
                out.push(sn);
            }
        }
        at += step;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lease::{LeaseAttrs, Term};
    use std::time::{Duration, SystemTime};

    fn pool(net: &str, len: u8) -> Pool {
        let cfg =
            crate::config::parse(&format!(r#"{{"Network":"{net}","SubnetLen":{len}}}"#)).unwrap();
        Pool::from_config(&cfg).unwrap()
    }

    fn lease(sn: &str, ip: [u8; 4], reservation: bool) -> Lease {
        Lease {
            subnet: sn.parse().unwrap(),
            ipv6_subnet: None,
            attrs: LeaseAttrs {
                public_ip: ip.into(),
                public_ipv6: None,
                backend_type: "vxlan".into(),
                backend_data: crate::lease::BackendData::NULL,
                backend_v6_data: None,
            },
            term: if reservation {
                Term::Reservation
            } else {
                Term::Expiring(Some(SystemTime::now() + Duration::from_secs(3600)))
            },
        }
    }

    fn net(s: &str) -> Ipv4Net {
        s.parse().unwrap()
    }

    const ME: [u8; 4] = [192, 168, 0, 1];

    #[test]
    fn reuses_our_lease_by_public_ip() {
        let p = pool("10.0.0.0/16", 24);
        let ls = [
            lease("10.0.5.0/24", [192, 168, 0, 2], false),
            lease("10.0.7.0/24", ME, false),
        ];
        assert_eq!(
            plan(&p, &ls, &[], ME.into(), Some(net("10.0.9.0/24")), |_| 0).unwrap(),
            Plan::Reuse(ls[1].clone())
        );
    }

    #[test]
    fn reservation_of_ours_wins_even_outside_min_max() {
        let cfg =
            crate::config::parse(r#"{"Network":"10.0.0.0/16","SubnetMin":"10.0.10.0"}"#).unwrap();
        let p = Pool::from_config(&cfg).unwrap();
        let ls = [
            lease("10.0.20.0/24", ME, false),
            lease("10.0.3.0/24", ME, true),
        ];
        assert_eq!(
            plan(&p, &ls, &[], ME.into(), None, |_| 0).unwrap(),
            Plan::Reuse(ls[1].clone())
        );
    }

    #[test]
    fn others_reservations_are_never_allocated() {
        let p = pool("10.0.0.0/28", 30); // subnets .4 .8 .12
        let ls = [
            lease("10.0.0.4/30", [1, 1, 1, 1], true),
            lease("10.0.0.8/30", [1, 1, 1, 2], false),
        ];
        assert_eq!(
            plan(&p, &ls, &[], ME.into(), Some(net("10.0.0.4/30")), |n| n - 1).unwrap(),
            Plan::Create {
                subnet: net("10.0.0.12/30"),
                stale: None
            }
        );
    }

    #[test]
    fn previous_subnet_used_when_free_and_in_range() {
        let p = pool("10.0.0.0/16", 24);
        let prev = Some(net("10.0.42.1/24")); // subnet.env form: host address
        assert_eq!(
            plan(&p, &[], &[], ME.into(), prev, |_| 0).unwrap(),
            Plan::Create {
                subnet: net("10.0.42.0/24"),
                stale: None
            }
        );
        // Taken by someone else: a fresh pick instead.
        let ls = [lease("10.0.42.0/24", [1, 1, 1, 1], false)];
        assert_eq!(
            plan(&p, &ls, &[], ME.into(), prev, |_| 0).unwrap(),
            Plan::Create {
                subnet: net("10.0.1.0/24"),
                stale: None
            }
        );
        // Outside the network, wrong length, or the reserved first subnet: ignored.
        for bad in ["10.1.42.0/24", "10.0.42.0/25", "10.0.0.0/24"] {
            assert_eq!(
                plan(&p, &[], &[], ME.into(), Some(net(bad)), |_| 0).unwrap(),
                Plan::Create {
                    subnet: net("10.0.1.0/24"),
                    stale: None
                },
                "{bad}"
            );
        }
    }

    #[test]
    fn stale_lease_of_ours_is_replaced() {
        let p = pool("10.0.0.0/16", 24);
        let ls = [
            lease("10.0.3.0/25", ME, false),
            lease("10.9.0.0/24", ME, true),
        ];
        assert_eq!(
            plan(&p, &ls, &[], ME.into(), None, |_| 0).unwrap(),
            Plan::Create {
                subnet: net("10.0.1.0/24"),
                stale: Some(net("10.0.3.0/25"))
            }
        );
    }

    #[test]
    fn random_pick_is_among_first_hundred_free_subnets() {
        let p = pool("10.0.0.0/8", 24);
        let ls = [
            lease("10.0.1.0/24", [1, 1, 1, 1], false),
            lease("10.0.0.0/16", [1, 1, 1, 2], true),
        ];
        let mut seen = 0;
        let got = plan(&p, &ls, &[], ME.into(), None, |n| {
            seen = n;
            n - 1
        })
        .unwrap();
        assert_eq!(seen, CANDIDATES);
        // The /16 reservation covers 10.0.x.0/24: the first free is 10.1.0.0.
        assert_eq!(
            got,
            Plan::Create {
                subnet: net("10.1.99.0/24"),
                stale: None
            }
        );
    }

    #[test]
    fn full_network_is_a_clear_error() {
        let p = pool("10.0.0.0/28", 30);
        let ls = [
            lease("10.0.0.4/30", [1, 1, 1, 1], false),
            lease("10.0.0.8/30", [1, 1, 1, 2], false),
            lease("10.0.0.12/30", [1, 1, 1, 3], true),
        ];
        let err = plan(&p, &ls, &[], ME.into(), None, |_| 0).unwrap_err();
        assert!(matches!(err, LeaseError::NetworkFull { .. }), "{err}");
        assert!(
            err.to_string()
                .contains("no free subnet left in 10.0.0.0/28"),
            "{err}"
        );
    }

    #[test]
    fn range_ends_at_top_of_address_space() {
        let p = pool("255.255.255.0/24", 26);
        let got = plan(&p, &[], &[], ME.into(), None, |n| n - 1).unwrap();
        assert_eq!(
            got,
            Plan::Create {
                subnet: net("255.255.255.192/26"),
                stale: None
            }
        );
    }
}
