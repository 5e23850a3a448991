//! host-local's allocation policy over a locked [`Store`].

use super::range::RangeSet;
use super::store::Store;
use crate::error::{Error, Result};
use std::net::IpAddr;

/// Reserves one address of range set `set_index` for (`id`, `ifname`):
/// `requested` exactly, or the next free one after the last reserved.
pub fn allocate(
    store: &Store,
    set_index: usize,
    set: &RangeSet,
    owner: (&str, &str),
    requested: Option<IpAddr>,
) -> Result<IpAddr> {
    let (id, ifname) = owner;
    // The owner index instead of host-local's read-every-file lookup.
    let owned = store.owned_by(id, ifname)?.unwrap_or_default();
    if let Some(ip) = owned.iter().find(|ip| set.range_of(**ip).is_some()) {
        return Err(Error::Duplicate(format!(
            "{ip} has been allocated to {id}, duplicate allocation is not allowed"
        )));
    }
    let ip = reserve_one(store, set_index, set, owner, requested)?;
    if let Err(e) = store.record_owner(id, ifname, ip) {
        let _ = store.release(ip);
        return Err(e);
    }
    Ok(ip)
}

fn reserve_one(
    store: &Store,
    set_index: usize,
    set: &RangeSet,
    (id, ifname): (&str, &str),
    requested: Option<IpAddr>,
) -> Result<IpAddr> {
    if let Some(ip) = requested {
        let Some(range) = set.range_of(ip) else {
            return Err(Error::IpUnavailable(format!(
                "requested IP address {ip} is not in range set {set}"
            )));
        };
        if ip == range.gateway || !store.reserve(id, ifname, ip, set_index)? {
            return Err(Error::IpUnavailable(format!(
                "requested IP address {ip} is not available in range set {set}"
            )));
        }
        return Ok(ip);
    }
    for ip in set.iter_from(store.last_reserved(set_index)) {
        if store.reserve(id, ifname, ip, set_index)? {
            return Ok(ip);
        }
    }
    Err(Error::Exhausted(set.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ipam::range::Range;
    use std::path::PathBuf;

    fn root(tag: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("felt-cni-alloc-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        d
    }

    fn set(net: &str) -> RangeSet {
        RangeSet::new(vec![
            Range::new(net.parse().unwrap(), None, None, None).unwrap()
        ])
        .unwrap()
    }

    #[test]
    fn round_robin_then_exhausted_then_wraps_to_freed() {
        let dir = root("rr");
        let store = Store::open(&dir, "n").unwrap();
        let s = set("10.0.0.0/29");
        let mut got = Vec::new();
        for i in 0..5 {
            got.push(
                allocate(&store, 0, &s, (&format!("c{i}"), "eth0"), None)
                    .unwrap()
                    .to_string(),
            );
        }
        assert_eq!(
            got,
            ["10.0.0.2", "10.0.0.3", "10.0.0.4", "10.0.0.5", "10.0.0.6"]
        );
        let err = allocate(&store, 0, &s, ("c9", "eth0"), None).unwrap_err();
        assert_eq!(
            err.to_string(),
            "no IP addresses available in range set: 10.0.0.1-10.0.0.6"
        );
        assert_eq!(err.code(), 100);
        store.release_by_id("c1", "eth0").unwrap();
        store.release_by_id("c3", "eth0").unwrap();
        // Next after last reserved (.6) wraps to the first freed one: .3.
        assert_eq!(
            allocate(&store, 0, &s, ("c10", "eth0"), None)
                .unwrap()
                .to_string(),
            "10.0.0.3"
        );
        assert_eq!(
            allocate(&store, 0, &s, ("c11", "eth0"), None)
                .unwrap()
                .to_string(),
            "10.0.0.5"
        );
        drop(store);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn owner_index_drives_release_and_survives_host_local_files() {
        let dir = root("index");
        let store = Store::open(&dir, "n").unwrap();
        let s = set("10.0.0.0/24");
        let ip = allocate(&store, 0, &s, ("a", "eth0"), None).unwrap();
        assert_eq!(store.owned_by("a", "eth0").unwrap(), Some(vec![ip]));
        // A reservation written by host-local (no index entry) for "b".
        std::fs::write(dir.join("n/10.0.0.99"), "b\r\neth0").unwrap();
        assert_eq!(store.release_by_id("a", "eth0").unwrap(), vec![ip]);
        assert_eq!(
            store.owned_by("a", "eth0").unwrap(),
            None,
            "index entry kept"
        );
        assert_eq!(
            store.release_by_id("b", "eth0").unwrap(),
            vec!["10.0.0.99".parse::<IpAddr>().unwrap()]
        );
        assert!(store.entries().unwrap().is_empty());
        drop(store);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn duplicate_and_requested() {
        let dir = root("dup");
        let store = Store::open(&dir, "n").unwrap();
        let s = set("10.0.0.0/24");
        allocate(&store, 0, &s, ("a", "eth0"), None).unwrap();
        let err = allocate(&store, 0, &s, ("a", "eth0"), None).unwrap_err();
        assert!(
            err.to_string()
                .contains("duplicate allocation is not allowed"),
            "{err}"
        );
        assert_eq!(err.code(), 101);
        // Same container, other interface: allowed.
        allocate(&store, 0, &s, ("a", "eth1"), None).unwrap();
        let want: IpAddr = "10.0.0.77".parse().unwrap();
        assert_eq!(
            allocate(&store, 0, &s, ("b", "eth0"), Some(want)).unwrap(),
            want
        );
        let err = allocate(&store, 0, &s, ("c", "eth0"), Some(want)).unwrap_err();
        assert_eq!(err.code(), 105);
        let err = allocate(
            &store,
            0,
            &s,
            ("c", "eth0"),
            Some("10.9.0.1".parse().unwrap()),
        )
        .unwrap_err();
        assert!(err.to_string().contains("not in range set"), "{err}");
        let err = allocate(
            &store,
            0,
            &s,
            ("c", "eth0"),
            Some("10.0.0.1".parse().unwrap()),
        )
        .unwrap_err();
        assert_eq!(err.code(), 105, "gateway handed out");
        drop(store);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
