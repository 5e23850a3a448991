//! sysctls written straight to /proc/sys: the path resolves in the calling
//! thread's network namespace, so no `sysctl` subprocess is needed.

use crate::error::{Error, Result};
use std::fs;
use std::io::{self, ErrorKind};

fn path(key: &str) -> String {
    format!("/proc/sys/{}", key.replace('.', "/"))
}

/// Writes `value` unless the file already holds it (a read is cheaper than
/// a write that triggers kernel notifiers).
fn write_if_changed(p: &str, value: &str) -> io::Result<()> {
    if let Ok(cur) = fs::read_to_string(p) {
        if cur.trim() == value {
            return Ok(());
        }
    }
    fs::write(p, value)
}

pub fn ensure(key: &str, value: &str) -> Result<()> {
    write_if_changed(&path(key), value).map_err(|source| Error::Kernel {
        what: format!("set sysctl {key}={value}"),
        source,
    })
}

/// Interface-scoped key; interface names may contain dots, which the
/// dotted form would split, so build the path directly.
pub fn ensure_iface(prefix: &str, ifname: &str, leaf: &str, value: &str) -> Result<()> {
    let p = format!("/proc/sys/{}/{ifname}/{leaf}", prefix.replace('.', "/"));
    match write_if_changed(&p, value) {
        Ok(()) => Ok(()),
        Err(source) if source.kind() == ErrorKind::NotFound && prefix.contains("ipv6") => Ok(()),
        Err(source) => Err(Error::Kernel {
            what: format!("set {p}={value}"),
            source,
        }),
    }
}
