//! What `/readyz` reports: one condition per thing a node needs before
//! pods can use it, each set by the part that owns it. Ready when every
//! condition holds; otherwise the body says which do not, and why.

use std::collections::BTreeMap;
use std::sync::Mutex;

/// The conditions, in the order `/readyz` lists them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Condition {
    /// The lease is held (and, when renewal is due, renewable).
    Lease,
    /// The backend's device is in place (vxlan VTEP, udp TUN).
    Backend,
    /// The masquerade/forward rules are installed (or not wanted).
    Rules,
    /// subnet.env is written for the CNI plugin.
    SubnetFile,
}

impl Condition {
    pub fn name(self) -> &'static str {
        match self {
            Condition::Lease => "lease",
            Condition::Backend => "backend",
            Condition::Rules => "rules",
            Condition::SubnetFile => "subnet-file",
        }
    }

    const ALL: [Condition; 4] = [
        Condition::Lease,
        Condition::Backend,
        Condition::Rules,
        Condition::SubnetFile,
    ];
}

/// The shared readiness state. Every condition starts as not met.
#[derive(Debug, Default)]
pub struct Readiness {
    state: Mutex<BTreeMap<Condition, Result<String, String>>>,
    /// Things worth showing that do not make the node unready (etcd
    /// unreachable while the lease is still good).
    notes: Mutex<BTreeMap<&'static str, String>>,
}

impl Readiness {
    pub fn new() -> Self {
        Self::default()
    }

    /// Marks `c` met, with what it is (shown in the body).
    pub fn ok(&self, c: Condition, what: impl Into<String>) {
        self.set(c, Ok(what.into()));
    }

    /// Marks `c` not met, with the reason.
    pub fn not(&self, c: Condition, why: impl Into<String>) {
        self.set(c, Err(why.into()));
    }

    fn set(&self, c: Condition, v: Result<String, String>) {
        if let Ok(mut s) = self.state.lock() {
            s.insert(c, v);
        }
    }

    pub fn note(&self, key: &'static str, text: Option<String>) {
        if let Ok(mut n) = self.notes.lock() {
            match text {
                Some(t) => n.insert(key, t),
                None => n.remove(key),
            };
        }
    }

    /// Whether every condition is met, and the body for `/readyz`.
    pub fn report(&self) -> (bool, String) {
        let state = self.state.lock().map(|s| s.clone()).unwrap_or_default();
        let mut ready = true;
        let mut body = String::new();
        for c in Condition::ALL {
            match state.get(&c) {
                Some(Ok(what)) => body.push_str(&format!("[+] {}: {what}\n", c.name())),
                Some(Err(why)) => {
                    ready = false;
                    body.push_str(&format!("[-] {}: {why}\n", c.name()));
                }
                None => {
                    ready = false;
                    body.push_str(&format!("[-] {}: not yet\n", c.name()));
                }
            }
        }
        if let Ok(notes) = self.notes.lock() {
            for (k, v) in notes.iter() {
                body.push_str(&format!("[!] {k}: {v}\n"));
            }
        }
        body.insert_str(0, if ready { "ok\n" } else { "not ready\n" });
        (ready, body)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ready_only_when_every_condition_holds() {
        let r = Readiness::new();
        assert!(!r.report().0);
        r.ok(Condition::Lease, "10.244.3.0/24");
        r.ok(Condition::Backend, "flannel.1");
        r.ok(Condition::Rules, "nftables");
        assert!(!r.report().0, "{}", r.report().1);
        r.ok(Condition::SubnetFile, "/run/flannel/subnet.env");
        assert!(r.report().0);
        r.not(
            Condition::Lease,
            "etcd unreachable for 40s; renewal overdue",
        );
        let (ready, body) = r.report();
        assert!(!ready);
        assert!(body.starts_with("not ready\n"), "{body}");
        assert!(body.contains("[-] lease: etcd unreachable"), "{body}");
        r.note("store", Some("etcd unreachable since 3s".into()));
        assert!(r.report().1.contains("[!] store: etcd unreachable"));
    }
}
