//! host-local's on-disk format, kept byte-compatible so a node moved from
//! flannel keeps its pods' addresses:
//! `<dataDir>/<network>/<ip>` holds `<containerID>\r\n<ifname>` (created
//! O_EXCL, 0600), `last_reserved_ip.<range set index>`, and `lock`, held
//! with flock(LOCK_EX) for the store's lifetime.

use crate::error::{Error, Result};
use std::fs::{self, File, OpenOptions};
use std::io::{ErrorKind, Read, Write};
use std::net::IpAddr;
use std::os::fd::AsRawFd;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

const LAST_RESERVED: &str = "last_reserved_ip.";
const LINE_BREAK: &str = "\r\n";

/// A locked store directory. The lock goes with the value.
pub struct Store {
    dir: PathBuf,
    _lock: File,
}

/// One reservation as found on disk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub ip: IpAddr,
    pub container_id: String,
    /// Empty for files written by old host-local versions (ID only).
    pub ifname: String,
}

impl Store {
    /// Creates `<data_dir>/<network>` if needed and takes its lock. The
    /// network name is validated by the caller, so it cannot escape.
    pub fn open(data_dir: &Path, network: &str) -> Result<Store> {
        let dir = data_dir.join(network);
        fs::create_dir_all(&dir).map_err(Error::io_path("create IPAM directory", &dir))?;
        let lock_path = dir.join("lock");
        let lock = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(&lock_path)
            .map_err(Error::io_path("open", &lock_path))?;
        loop {
            // SAFETY: flock on an fd we own.
            let rc = unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX) };
            if rc == 0 {
                break;
            }
            let err = std::io::Error::last_os_error();
            if err.kind() != ErrorKind::Interrupted {
                return Err(Error::io_path("lock", &lock_path)(err));
            }
        }
        Ok(Store { dir, _lock: lock })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Creates the file for `ip`; `Ok(false)` when someone holds it.
    pub fn reserve(&self, id: &str, ifname: &str, ip: IpAddr, set_index: usize) -> Result<bool> {
        let path = self.dir.join(ip.to_string());
        let mut file = match OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&path)
        {
            Ok(f) => f,
            Err(e) if e.kind() == ErrorKind::AlreadyExists => return Ok(false),
            Err(e) => return Err(Error::io_path("create", &path)(e)),
        };
        if let Err(e) = file.write_all(format!("{id}{LINE_BREAK}{ifname}").as_bytes()) {
            // Unlike host-local, never leave a half-written reservation.
            let _ = fs::remove_file(&path);
            return Err(Error::io_path("write", &path)(e));
        }
        self.write_last_reserved(set_index, ip)?;
        Ok(true)
    }

    /// Overwrites in place instead of O_TRUNC: truncating first costs a
    /// journaled size change on every ADD for a file of a dozen bytes.
    fn write_last_reserved(&self, set_index: usize, ip: IpAddr) -> Result<()> {
        let path = self.last_reserved_path(set_index);
        let text = ip.to_string();
        let mut f = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o644)
            .open(&path)
            .map_err(Error::io_path("open", &path))?;
        f.write_all(text.as_bytes())
            .and_then(|()| f.set_len(text.len() as u64))
            .map_err(Error::io_path("write", &path))
    }

    fn last_reserved_path(&self, set_index: usize) -> PathBuf {
        self.dir.join(format!("{LAST_RESERVED}{set_index}"))
    }

    pub fn last_reserved(&self, set_index: usize) -> Option<IpAddr> {
        fs::read_to_string(self.last_reserved_path(set_index))
            .ok()?
            .trim()
            .parse()
            .ok()
    }

    /// Every reservation file; unreadable entries are skipped.
    pub fn entries(&self) -> Result<Vec<Entry>> {
        list_entries(&self.dir)
    }

    /// Removes the file of `ip`; a missing file is fine.
    pub fn release(&self, ip: IpAddr) -> Result<()> {
        let path = self.dir.join(ip.to_string());
        match fs::remove_file(&path) {
            Err(e) if e.kind() != ErrorKind::NotFound => Err(Error::io_path("remove", &path)(e)),
            _ => Ok(()),
        }
    }

    /// Releases every address held by (`id`, `ifname`) — or by `id` alone
    /// in files from old host-local versions — and returns them.
    /// felt's owner index answers first; without an entry every file is
    /// read (addresses reserved by host-local, or a repeated DEL).
    pub fn release_by_id(&self, id: &str, ifname: &str) -> Result<Vec<IpAddr>> {
        let ips = match self.owned_by(id, ifname)? {
            Some(ips) => ips,
            None => self
                .entries()?
                .into_iter()
                .filter(|e| e.matches(id, ifname))
                .map(|e| e.ip)
                .collect(),
        };
        let mut released = Vec::new();
        let mut first_err = None;
        for ip in ips {
            match self.release(ip) {
                Ok(()) => released.push(ip),
                Err(e) => first_err = first_err.or(Some(e)),
            }
        }
        if let Err(e) = self.forget_owner(id, ifname) {
            first_err = first_err.or(Some(e));
        }
        match first_err {
            Some(e) => Err(e),
            None => Ok(released),
        }
    }
}

impl Entry {
    pub fn matches(&self, id: &str, ifname: &str) -> bool {
        self.container_id == id && (self.ifname == ifname || self.ifname.is_empty())
    }
}

/// Reads reservations without taking the lock (for cheap read-only checks).
pub fn list_entries(dir: &Path) -> Result<Vec<Entry>> {
    let rd = match fs::read_dir(dir) {
        Ok(rd) => rd,
        Err(e) if e.kind() == ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(Error::io_path("read", dir)(e)),
    };
    let mut out = Vec::new();
    for dirent in rd.flatten() {
        let name = dirent.file_name();
        let Some(ip) = name.to_str().and_then(|n| n.parse::<IpAddr>().ok()) else {
            continue;
        };
        let Some(text) = read_small(&dirent.path()) else {
            continue;
        };
        out.push(parse_entry(ip, &text));
    }
    Ok(out)
}

/// The reservation of `ip`, if its file exists and is readable.
pub fn read_entry(dir: &Path, ip: IpAddr) -> Option<Entry> {
    read_small(&dir.join(ip.to_string())).map(|text| parse_entry(ip, &text))
}

/// Reads a reservation file with open+read+close: ADD and DEL read every
/// file of the network (host-local's by-ID lookup), so per-file syscalls
/// add up on a full node.
fn read_small(path: &Path) -> Option<String> {
    let mut file = File::open(path).ok()?;
    let mut buf = [0u8; 512];
    let n = file.read(&mut buf).ok()?;
    let mut bytes = buf[..n].to_vec();
    if n == buf.len() {
        file.read_to_end(&mut bytes).ok()?;
    }
    String::from_utf8(bytes).ok()
}

fn parse_entry(ip: IpAddr, text: &str) -> Entry {
    let text = text.trim();
    let (id, ifname) = match text.split_once('\n') {
        Some((id, ifname)) => (id.trim_end_matches('\r').trim(), ifname.trim()),
        None => (text, ""),
    };
    Entry {
        ip,
        container_id: id.to_string(),
        ifname: ifname.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    pub fn temp_dir(tag: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("felt-cni-{tag}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&d);
        d
    }

    #[test]
    fn writes_host_local_format() {
        let root = temp_dir("store-format");
        let store = Store::open(&root, "cbr0").unwrap();
        let ip: IpAddr = "10.244.1.2".parse().unwrap();
        assert!(store.reserve("c1", "eth0", ip, 0).unwrap());
        assert!(
            !store.reserve("c2", "eth0", ip, 0).unwrap(),
            "O_EXCL not honoured"
        );
        let file = root.join("cbr0/10.244.1.2");
        assert_eq!(fs::read_to_string(&file).unwrap(), "c1\r\neth0");
        assert_eq!(
            fs::metadata(&file).unwrap().permissions().mode() & 0o777,
            0o600
        );
        assert_eq!(
            fs::read_to_string(root.join("cbr0/last_reserved_ip.0")).unwrap(),
            "10.244.1.2"
        );
        assert!(root.join("cbr0/lock").exists());
        assert_eq!(store.last_reserved(0), Some(ip));
        // Overwritten in place: a shorter address must not keep a tail.
        assert!(store
            .reserve("c3", "eth0", "10.244.1.100".parse().unwrap(), 0)
            .unwrap());
        assert!(store
            .reserve("c4", "eth0", "10.244.1.9".parse().unwrap(), 0)
            .unwrap());
        assert_eq!(
            fs::read_to_string(root.join("cbr0/last_reserved_ip.0")).unwrap(),
            "10.244.1.9"
        );
        drop(store);
        fs::remove_dir_all(&root).unwrap();
    }

    #[test]
    fn release_by_id_matches_id_and_ifname_and_legacy_files() {
        let root = temp_dir("store-release");
        let store = Store::open(&root, "n").unwrap();
        for (ip, id, ifn) in [
            ("10.0.0.2", "a", "eth0"),
            ("10.0.0.3", "a", "eth1"),
            ("10.0.0.4", "b", "eth0"),
        ] {
            assert!(store.reserve(id, ifn, ip.parse().unwrap(), 0).unwrap());
        }
        fs::write(root.join("n/10.0.0.5"), "a").unwrap();
        let mut got = store.release_by_id("a", "eth0").unwrap();
        got.sort();
        assert_eq!(
            got,
            vec![
                "10.0.0.2".parse::<IpAddr>().unwrap(),
                "10.0.0.5".parse().unwrap()
            ]
        );
        let left: Vec<String> = store
            .entries()
            .unwrap()
            .iter()
            .map(|e| e.ip.to_string())
            .collect();
        assert_eq!(left.len(), 2);
        assert!(
            store.release_by_id("a", "eth0").unwrap().is_empty(),
            "second release not a no-op"
        );
        drop(store);
        fs::remove_dir_all(&root).unwrap();
    }

    #[test]
    fn reads_entries_longer_than_one_read() {
        let root = temp_dir("store-long");
        let store = Store::open(&root, "n").unwrap();
        let id = "a".repeat(700);
        assert!(store
            .reserve(&id, "eth0", "10.0.0.9".parse().unwrap(), 0)
            .unwrap());
        let entries = store.entries().unwrap();
        assert_eq!(
            (entries[0].container_id.len(), entries[0].ifname.as_str()),
            (700, "eth0")
        );
        drop(store);
        fs::remove_dir_all(&root).unwrap();
    }

    #[test]
    fn lock_excludes_a_second_holder() {
        let root = temp_dir("store-lock");
        let store = Store::open(&root, "n").unwrap();
        let lock = File::open(root.join("n/lock")).unwrap();
        // SAFETY: flock on an fd we own.
        let rc = unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
        assert_eq!(rc, -1, "lock not held");
        drop(store);
        let rc = unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
        assert_eq!(rc, 0, "lock not released on drop");
        fs::remove_dir_all(&root).unwrap();
    }
}
