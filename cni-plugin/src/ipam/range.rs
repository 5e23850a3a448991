//! host-local's ranges and range sets, and its round-robin iteration order.
//! Pure: no I/O, so the order is table-tested.

use ipnet::IpNet;
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// One allocation range: `start..=end` inside `subnet`, `gateway` skipped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Range {
    pub subnet: IpNet,
    pub start: IpAddr,
    pub end: IpAddr,
    pub gateway: IpAddr,
}

fn to_u128(ip: IpAddr) -> u128 {
    match ip {
        IpAddr::V4(a) => u32::from(a) as u128,
        IpAddr::V6(a) => u128::from(a),
    }
}

fn from_u128(v: u128, like: IpAddr) -> IpAddr {
    match like {
        IpAddr::V4(_) => IpAddr::V4(Ipv4Addr::from(v as u32)),
        IpAddr::V6(_) => IpAddr::V6(Ipv6Addr::from(v)),
    }
}

fn offset(ip: IpAddr, by: i8) -> IpAddr {
    let v = to_u128(ip);
    let v = if by >= 0 {
        v.wrapping_add(by as u128)
    } else {
        v.wrapping_sub((-by) as u128)
    };
    from_u128(v, ip)
}

impl Range {
    /// Fills host-local's defaults: start = network+1, end = broadcast-1
    /// (IPv4) or the last address (IPv6), gateway = network+1.
    pub fn new(
        subnet: IpNet,
        start: Option<IpAddr>,
        end: Option<IpAddr>,
        gateway: Option<IpAddr>,
    ) -> Result<Range, String> {
        let subnet = subnet.trunc();
        let (min_prefix_room, last) = match subnet {
            IpNet::V4(n) => (2, offset(IpAddr::V4(n.broadcast()), -1)),
            IpNet::V6(n) => (1, IpAddr::V6(n.broadcast())),
        };
        if subnet.max_prefix_len() - subnet.prefix_len() < min_prefix_room {
            return Err(format!("network {subnet} too small to allocate from"));
        }
        let first = offset(subnet.network(), 1);
        let start = start.unwrap_or(first);
        let end = end.unwrap_or(last);
        for (what, ip) in [("rangeStart", start), ("rangeEnd", end)] {
            if !subnet.contains(&ip) || to_u128(ip) < to_u128(first) || to_u128(ip) > to_u128(last)
            {
                return Err(format!("{what} {ip} not in network {subnet}"));
            }
        }
        if to_u128(start) > to_u128(end) {
            return Err(format!("rangeStart {start} is after rangeEnd {end}"));
        }
        let gateway = gateway.unwrap_or(first);
        if !subnet.contains(&gateway) {
            return Err(format!("gateway {gateway} not in network {subnet}"));
        }
        Ok(Range {
            subnet,
            start,
            end,
            gateway,
        })
    }

    pub fn contains(&self, ip: IpAddr) -> bool {
        self.subnet.contains(&ip)
            && to_u128(ip) >= to_u128(self.start)
            && to_u128(ip) <= to_u128(self.end)
    }

    /// The gateway with the subnet's prefix: what the bridge carries.
    pub fn gateway_net(&self) -> IpNet {
        IpNet::new(self.gateway, self.subnet.prefix_len()).unwrap_or(self.subnet)
    }
}

impl fmt::Display for Range {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", self.start, self.end)
    }
}

/// The ranges of one `ipam.ranges` entry, all of one family.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RangeSet(pub Vec<Range>);

impl RangeSet {
    pub fn new(ranges: Vec<Range>) -> Result<RangeSet, String> {
        let Some(first) = ranges.first() else {
            return Err("empty range set".to_string());
        };
        let v4 = first.subnet.addr().is_ipv4();
        if ranges.iter().any(|r| r.subnet.addr().is_ipv4() != v4) {
            return Err("a range set mixes IPv4 and IPv6".to_string());
        }
        for (i, a) in ranges.iter().enumerate() {
            for b in &ranges[i + 1..] {
                if a.contains(b.start) || a.contains(b.end) || b.contains(a.start) {
                    return Err(format!("ranges {a} and {b} overlap"));
                }
            }
        }
        Ok(RangeSet(ranges))
    }

    pub fn is_ipv4(&self) -> bool {
        self.0.first().is_some_and(|r| r.subnet.addr().is_ipv4())
    }

    pub fn range_of(&self, ip: IpAddr) -> Option<&Range> {
        self.0.iter().find(|r| r.contains(ip))
    }

    /// Every candidate once, host-local's order: from `last`+1 (or the
    /// first range's start), across ranges, wrapping; gateways skipped.
    pub fn iter_from(&self, last: Option<IpAddr>) -> RangeIter<'_> {
        let first =
            match last.and_then(|ip| self.0.iter().position(|r| r.contains(ip)).map(|i| (i, ip))) {
                Some((i, ip)) => self.succ((i, to_u128(ip))),
                None => (0, self.0.first().map(|r| to_u128(r.start)).unwrap_or(0)),
            };
        RangeIter {
            set: self,
            first,
            cur: first,
            done: self.0.is_empty(),
        }
    }

    fn succ(&self, (i, v): (usize, u128)) -> (usize, u128) {
        let r = &self.0[i];
        if v < to_u128(r.end) {
            (i, v + 1)
        } else {
            let n = (i + 1) % self.0.len();
            (n, to_u128(self.0[n].start))
        }
    }
}

impl fmt::Display for RangeSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let parts: Vec<String> = self.0.iter().map(|r| r.to_string()).collect();
        f.write_str(&parts.join(","))
    }
}

pub struct RangeIter<'a> {
    set: &'a RangeSet,
    first: (usize, u128),
    cur: (usize, u128),
    done: bool,
}

impl Iterator for RangeIter<'_> {
    type Item = IpAddr;

    fn next(&mut self) -> Option<IpAddr> {
        loop {
            if self.done {
                return None;
            }
            let (i, v) = self.cur;
            self.cur = self.set.succ(self.cur);
            if self.cur == self.first {
                self.done = true;
            }
            let range = &self.set.0[i];
            let ip = from_u128(v, range.start);
            if ip != range.gateway {
                return Some(ip);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn set(specs: &[(&str, Option<&str>, Option<&str>)]) -> RangeSet {
        let ranges = specs
            .iter()
            .map(|(n, s, e)| Range::new(n.parse().unwrap(), s.map(ip), e.map(ip), None).unwrap())
            .collect();
        RangeSet::new(ranges).unwrap()
    }

    #[test]
    fn defaults_match_host_local() {
        let r = Range::new("10.244.1.1/24".parse().unwrap(), None, None, None).unwrap();
        assert_eq!(r.subnet, "10.244.1.0/24".parse::<IpNet>().unwrap());
        assert_eq!(
            (r.start, r.end, r.gateway),
            (ip("10.244.1.1"), ip("10.244.1.254"), ip("10.244.1.1"))
        );
        assert_eq!(r.to_string(), "10.244.1.1-10.244.1.254");
        assert_eq!(r.gateway_net().to_string(), "10.244.1.1/24");
        let r6 = Range::new("fd00::/120".parse().unwrap(), None, None, None).unwrap();
        assert_eq!((r6.start, r6.end), (ip("fd00::1"), ip("fd00::ff")));
    }

    #[test]
    fn rejects_bad_ranges() {
        let n: IpNet = "10.0.0.0/24".parse().unwrap();
        assert!(Range::new(n, Some(ip("10.0.1.1")), None, None).is_err());
        assert!(Range::new(n, Some(ip("10.0.0.9")), Some(ip("10.0.0.3")), None).is_err());
        assert!(Range::new(n, None, Some(ip("10.0.0.255")), None).is_err());
        assert!(Range::new(n, None, None, Some(ip("10.1.0.1"))).is_err());
        assert!(Range::new("10.0.0.0/31".parse().unwrap(), None, None, None).is_err());
        let a = Range::new(n, None, None, None).unwrap();
        let b = Range::new("fd00::/64".parse().unwrap(), None, None, None).unwrap();
        assert!(RangeSet::new(vec![a.clone(), b]).is_err());
        assert!(RangeSet::new(vec![a.clone(), a]).is_err());
    }

    #[test]
    fn iterates_round_robin_skipping_gateway() {
        let s = set(&[("10.0.0.0/29", None, None)]);
        let all: Vec<String> = s.iter_from(None).map(|i| i.to_string()).collect();
        assert_eq!(
            all,
            ["10.0.0.2", "10.0.0.3", "10.0.0.4", "10.0.0.5", "10.0.0.6"]
        );
        let from: Vec<String> = s
            .iter_from(Some(ip("10.0.0.4")))
            .map(|i| i.to_string())
            .collect();
        assert_eq!(
            from,
            ["10.0.0.5", "10.0.0.6", "10.0.0.2", "10.0.0.3", "10.0.0.4"]
        );
        // A last-reserved outside the set restarts at the beginning.
        assert_eq!(
            s.iter_from(Some(ip("192.168.0.1"))).next(),
            Some(ip("10.0.0.2"))
        );
    }

    #[test]
    fn iterates_across_ranges() {
        let s = set(&[
            ("10.0.0.0/24", Some("10.0.0.10"), Some("10.0.0.11")),
            ("10.0.1.0/24", Some("10.0.1.20"), Some("10.0.1.21")),
        ]);
        let all: Vec<String> = s
            .iter_from(Some(ip("10.0.0.11")))
            .map(|i| i.to_string())
            .collect();
        assert_eq!(all, ["10.0.1.20", "10.0.1.21", "10.0.0.10", "10.0.0.11"]);
        assert_eq!(s.to_string(), "10.0.0.10-10.0.0.11,10.0.1.20-10.0.1.21");
    }
}
