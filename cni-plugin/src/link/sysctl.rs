//! sysctls written straight to /proc/sys: the path resolves in the calling
//! thread's network namespace, so no `sysctl` subprocess is needed.

use crate::error::{Error, Result};
use std::fs;
use std::io::ErrorKind;

fn path(key: &str) -> String {
    format!("/proc/sys/{}", key.replace('.', "/"))
}

/// Writes `value` unless the key already holds it (a read is cheaper than
/// a write that triggers kernel notifiers).
pub fn ensure(key: &str, value: &str) -> Result<()> {
    let p = path(key);
    if let Ok(cur) = fs::read_to_string(&p) {
        if cur.trim() == value {
            return Ok(());
        }
    }
    fs::write(&p, value).map_err(|source| Error::Kernel {
        what: format!("set sysctl {key}={value}"),
        source,
    })
}

/// Interface-scoped key; interface names may contain dots, which the
/// dotted form would split, so build the path directly.
pub fn ensure_iface(prefix: &str, ifname: &str, leaf: &str, value: &str) -> Result<()> {
    let p = format!("/proc/sys/{}/{ifname}/{leaf}", prefix.replace('.', "/"));
    if let Ok(cur) = fs::read_to_string(&p) {
        if cur.trim() == value {
            return Ok(());
        }
    }
    match fs::write(&p, value) {
        Ok(()) => Ok(()),
        Err(source) if source.kind() == ErrorKind::NotFound && prefix.contains("ipv6") => Ok(()),
        Err(source) => Err(Error::Kernel {
            what: format!("set {p}={value}"),
            source,
        }),
    }
}
