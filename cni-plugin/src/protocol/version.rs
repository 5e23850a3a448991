//! CNI versions felt speaks and the per-command minimums.

use crate::error::{Error, Result};
use serde_json::Value;

pub const SUPPORTED: [&str; 5] = ["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"];
pub const LATEST: &str = "1.1.0";

/// The cniVersion the caller's config asks for, whatever it is, for
/// echoing in VERSION and error replies; LATEST when there is none.
pub fn requested(stdin: &[u8]) -> String {
    serde_json::from_slice::<Value>(stdin)
        .ok()
        .and_then(|v| {
            v.get("cniVersion")
                .and_then(Value::as_str)
                .map(str::to_string)
        })
        .filter(|v| !v.is_empty())
        .unwrap_or_else(|| LATEST.to_string())
}

/// Returns the config's cniVersion if felt supports it.
pub fn check(conf: &Value) -> Result<String> {
    let v = conf.get("cniVersion").and_then(Value::as_str).unwrap_or("");
    if v.is_empty() {
        return Err(Error::IncompatibleVersion(format!(
            "network configuration has no cniVersion; plugin supports {SUPPORTED:?}"
        )));
    }
    if !SUPPORTED.contains(&v) {
        return Err(Error::IncompatibleVersion(format!(
            "incompatible CNI versions; config is {v:?}, plugin supports {SUPPORTED:?}"
        )));
    }
    Ok(v.to_string())
}

fn triple(v: &str) -> (u32, u32, u32) {
    let mut it = v.split('.').map(|p| p.parse::<u32>().unwrap_or(0));
    (
        it.next().unwrap_or(0),
        it.next().unwrap_or(0),
        it.next().unwrap_or(0),
    )
}

/// `v >= min`, comparing numerically.
pub fn at_least(v: &str, min: &str) -> bool {
    triple(v) >= triple(min)
}

/// Fails with code 1 when `op` did not exist in the config's version.
pub fn require(v: &str, min: &str, op: &str) -> Result<()> {
    if at_least(v, min) {
        Ok(())
    } else {
        Err(Error::IncompatibleVersion(format!(
            "config version {v} does not allow {op} (needs {min} or later)"
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn version_rules() {
        assert_eq!(
            check(&serde_json::json!({"cniVersion":"0.4.0"})).unwrap(),
            "0.4.0"
        );
        assert_eq!(
            check(&serde_json::json!({"cniVersion":"0.2.0"}))
                .unwrap_err()
                .code(),
            1
        );
        assert_eq!(check(&serde_json::json!({})).unwrap_err().code(), 1);
        assert!(
            at_least("1.0.0", "0.4.0") && at_least("0.4.0", "0.4.0") && !at_least("0.3.1", "0.4.0")
        );
        assert!(at_least("0.10.0", "0.4.0"));
        assert_eq!(require("1.0.0", "1.1.0", "GC").unwrap_err().code(), 1);
    }
}
