//! felt's owner index: `<dir>/.felt-owners/<containerID>~<hex(ifname)>~<ip>`,
//! a hard link to the reservation file `<dir>/<ip>`.
//!
//! host-local finds an owner's addresses by reading every file of the
//! network, ~10 µs per pod on every ADD and DEL (2-3 ms on a full node).
//! With the index that is one directory read. Hard links, because they
//! allocate no inode: on ext4 a link costs ~25 µs where a new file or
//! symlink costs 10-30x that under write load. The index is only a hint:
//! every address it names is confirmed against its reservation file, and
//! DEL falls back to the full scan when an owner has no entry (addresses
//! reserved by host-local before a migration, a repeated DEL).
//! host-local tolerates it: its walk sees the links as more files of the
//! same owner (it releases them along with the address) and cannot parse
//! their names as IPs.

use super::store::{read_entry, Store};
use crate::error::{Error, Result};
use std::fs;
use std::io::ErrorKind;
use std::net::IpAddr;
use std::path::PathBuf;

pub const INDEX_DIR: &str = ".felt-owners";

fn hex(s: &str) -> String {
    s.bytes().map(|b| format!("{b:02x}")).collect()
}

fn unhex(s: &str) -> Option<String> {
    let bytes: Option<Vec<u8>> = (0..s.len())
        .step_by(2)
        .map(|i| s.get(i..i + 2).and_then(|h| u8::from_str_radix(h, 16).ok()))
        .collect();
    String::from_utf8(bytes?).ok()
}

/// `<id>~<hex(ifname)>~`: `~` is in neither alphabet (container IDs are
/// `[a-zA-Z0-9_.-]`, the ifname is hex-encoded).
fn prefix(id: &str, ifname: &str) -> String {
    format!("{id}~{}~", hex(ifname))
}

/// (container ID, ifname) of an index entry's file name.
pub fn parse_name(name: &str) -> Option<(String, String)> {
    let mut parts = name.splitn(3, '~');
    let (id, ifname, ip) = (parts.next()?, parts.next()?, parts.next()?);
    ip.parse::<IpAddr>().ok()?;
    Some((id.to_string(), unhex(ifname)?))
}

impl Store {
    fn index_dir(&self) -> PathBuf {
        self.dir().join(INDEX_DIR)
    }

    /// Addresses the index lists for the owner (unconfirmed).
    fn listed(&self, id: &str, ifname: &str) -> Result<Vec<(IpAddr, PathBuf)>> {
        let dir = self.index_dir();
        let rd = match fs::read_dir(&dir) {
            Ok(rd) => rd,
            Err(e) if e.kind() == ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(Error::io_path("read", &dir)(e)),
        };
        let prefix = prefix(id, ifname);
        Ok(rd
            .flatten()
            .filter_map(|d| {
                let name = d.file_name();
                let ip = name.to_str()?.strip_prefix(&prefix)?.parse().ok()?;
                Some((ip, d.path()))
            })
            .collect())
    }

    /// The owner's addresses per the index, each confirmed by its
    /// reservation file; `None` when the index has no entry.
    pub fn owned_by(&self, id: &str, ifname: &str) -> Result<Option<Vec<IpAddr>>> {
        let listed = self.listed(id, ifname)?;
        if listed.is_empty() {
            return Ok(None);
        }
        let confirmed = listed
            .into_iter()
            .map(|(ip, _)| ip)
            .filter(|ip| read_entry(self.dir(), *ip).is_some_and(|e| e.matches(id, ifname)))
            .collect();
        Ok(Some(confirmed))
    }

    /// Adds `ip` (already reserved) to the owner's entries.
    pub fn record_owner(&self, id: &str, ifname: &str, ip: IpAddr) -> Result<()> {
        let file = self.dir().join(ip.to_string());
        let link = self.index_dir().join(format!("{}{ip}", prefix(id, ifname)));
        let attempt = || fs::hard_link(&file, &link);
        let result = match attempt() {
            Err(e) if e.kind() == ErrorKind::NotFound => {
                let dir = self.index_dir();
                fs::create_dir_all(&dir).map_err(Error::io_path("create", &dir))?;
                attempt()
            }
            // A leftover of an earlier reservation of the same address.
            Err(e) if e.kind() == ErrorKind::AlreadyExists => {
                let _ = fs::remove_file(&link);
                attempt()
            }
            other => other,
        };
        result.map_err(Error::io_path("create", &link))
    }

    /// Drops every entry of the owner.
    pub fn forget_owner(&self, id: &str, ifname: &str) -> Result<()> {
        let mut first_err = None;
        for (_, path) in self.listed(id, ifname)? {
            if let Err(e) = fs::remove_file(&path) {
                if e.kind() != ErrorKind::NotFound {
                    first_err = first_err.or(Some(Error::io_path("remove", &path)(e)));
                }
            }
        }
        first_err.map_or(Ok(()), Err)
    }

    /// Every (container ID, ifname) that has an index entry.
    pub fn indexed_owners(&self) -> Vec<(String, String)> {
        let Ok(rd) = fs::read_dir(self.index_dir()) else {
            return Vec::new();
        };
        let mut owners: Vec<(String, String)> = rd
            .flatten()
            .filter_map(|d| d.file_name().to_str().and_then(parse_name))
            .collect();
        owners.sort();
        owners.dedup();
        owners
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp_root(tag: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("felt-cni-owners-{tag}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&d);
        d
    }

    #[test]
    fn names_round_trip() {
        let name = format!("{}10.0.0.2", prefix("abc-1", "eth0"));
        assert_eq!(parse_name(&name), Some(("abc-1".into(), "eth0".into())));
        assert_eq!(parse_name("nonsense"), None);
        assert_eq!(parse_name("a~zz~10.0.0.2"), None);
        assert_eq!(parse_name(&format!("{}junk", prefix("a", "eth0"))), None);
    }

    #[test]
    fn index_is_confirmed_against_reservation_files() {
        let root = temp_root("confirm");
        let store = Store::open(&root, "n").unwrap();
        let (a, b): (IpAddr, IpAddr) = ("10.0.0.2".parse().unwrap(), "10.0.0.3".parse().unwrap());
        assert_eq!(store.owned_by("c1", "eth0").unwrap(), None);
        assert!(store.reserve("c1", "eth0", a, 0).unwrap());
        store.record_owner("c1", "eth0", a).unwrap();
        store.record_owner("c1", "eth0", a).unwrap();
        assert_eq!(store.owned_by("c1", "eth0").unwrap(), Some(vec![a]));
        // Released behind the index's back, then reserved by someone else.
        store.release(a).unwrap();
        assert!(store.reserve("c2", "eth0", a, 0).unwrap());
        assert_eq!(store.owned_by("c1", "eth0").unwrap(), Some(vec![]));
        assert!(store.reserve("c1", "eth1", b, 0).unwrap());
        store.record_owner("c1", "eth1", b).unwrap();
        let want = vec![
            ("c1".to_string(), "eth0".to_string()),
            ("c1".to_string(), "eth1".to_string()),
        ];
        assert_eq!(store.indexed_owners(), want);
        // host-local reads the link as one more file of the same owner.
        let link = root
            .join("n")
            .join(INDEX_DIR)
            .join(format!("{}{b}", prefix("c1", "eth1")));
        assert_eq!(fs::read_to_string(&link).unwrap(), "c1\r\neth1");
        store.forget_owner("c1", "eth0").unwrap();
        store.forget_owner("c1", "eth0").unwrap();
        assert_eq!(store.owned_by("c1", "eth0").unwrap(), None);
        assert_eq!(store.owned_by("c1", "eth1").unwrap(), Some(vec![b]));
        drop(store);
        fs::remove_dir_all(&root).unwrap();
    }
}
