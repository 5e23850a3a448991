//! Test-only: the kernel's own record of what changed in a network
//! namespace. `ip -ts monitor label link address route neigh` prints one
//! event per RTM_NEW*/RTM_DEL* message (links, addresses, routes, ARP
//! neighbours and FDB entries, which are AF_BRIDGE neighbours). A test that
//! means "this changed nothing in the kernel" counts these events instead of
//! comparing dumps, whose order the kernel does not promise.

// Test helpers fail the test loudly on any setup error: that is their job.
#![allow(clippy::panic, clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime};

/// A route that only the handshake adds: outside every test network
/// (TEST-NET-2), on `lo`, so nothing else reacts to it.
const MARKER: &str = "198.51.100.0/24";

/// What kind of object an event is about (`ip monitor label`'s tag).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Link,
    Addr,
    Route,
    Neigh,
    Other,
}

/// One kernel notification.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    pub kind: Kind,
    /// An RTM_DEL* message (`Deleted ...`).
    pub deleted: bool,
    /// The event as `ip` prints it, without timestamp and label, its
    /// continuation lines joined with a space.
    pub text: String,
    /// When `ip` received it (the monitor runs with TZ=UTC, so its
    /// timestamps are UTC). A woken reader, not a spawned process: under
    /// load this stays within milliseconds of the kernel's change.
    pub at: Option<SystemTime>,
}

impl Event {
    /// The device the event names (`dev X`, or a link's own name).
    pub fn dev(&self) -> Option<&str> {
        if self.kind == Kind::Link {
            // "3: flannel.1: <BROADCAST,...> mtu ..." (peer links: "veth0@if2")
            let name = self.text.split(": ").nth(1)?;
            return Some(name.split('@').next().unwrap_or(name));
        }
        let mut words = self.text.split_whitespace();
        while let Some(w) = words.next() {
            if w == "dev" {
                return words.next();
            }
        }
        // Addresses: "2: flannel.1    inet 10.244.1.0/32 ..."
        (self.kind == Kind::Addr)
            .then(|| self.text.split_whitespace().nth(1))
            .flatten()
    }

    /// An IPv6 link-local address or its local route: the kernel's own
    /// autoconfiguration (it re-announces them when DAD completes).
    pub fn is_ipv6_link_local(&self) -> bool {
        matches!(self.kind, Kind::Addr | Kind::Route)
            && self.text.split_whitespace().any(|w| w.starts_with("fe80:"))
    }

    /// The first word after an optional "Deleted": a route's destination,
    /// a neighbour's address.
    pub fn subject(&self) -> Option<&str> {
        self.text.split_whitespace().next()
    }
}

/// Parses `ip -ts monitor label` output.
pub fn parse(text: &str) -> Vec<Event> {
    let mut events: Vec<Event> = Vec::new();
    for line in text.lines() {
        let Some(rest) = line.strip_prefix('[') else {
            // A continuation line of the previous event.
            if let Some(last) = events.last_mut() {
                last.text.push(' ');
                last.text.push_str(line.trim());
            }
            continue;
        };
        // "[2026-12-01T21:38:36.371425] [LINK]2: flannel.1: ..."
        let Some((stamp, body)) = rest.split_once("] ") else {
            continue;
        };
        let (kind, body) = match body.split_once(']') {
            Some((tag, b)) if tag.starts_with('[') => (
                match &tag[1..] {
                    "LINK" => Kind::Link,
                    "ADDR" => Kind::Addr,
                    "ROUTE" => Kind::Route,
                    "NEIGH" => Kind::Neigh,
                    _ => Kind::Other,
                },
                b,
            ),
            _ => (Kind::Other, body),
        };
        let (deleted, body) = match body.strip_prefix("Deleted ") {
            Some(b) => (true, b),
            None => (false, body),
        };
        events.push(Event {
            kind,
            deleted,
            text: body.trim().to_string(),
            at: parse_utc(stamp),
        });
    }
    events
}

/// "2026-12-01T21:38:36.371425" (UTC) as a SystemTime.
fn parse_utc(stamp: &str) -> Option<SystemTime> {
    let (date, time) = stamp.split_once('T')?;
    let mut d = date.split('-').map(|x| x.parse::<i64>().ok());
    let (y, m, day) = (d.next()??, d.next()??, d.next()??);
    let (hms, frac) = time.split_once('.').unwrap_or((time, "0"));
    let mut t = hms.split(':').map(|x| x.parse::<u64>().ok());
    let (h, min, sec) = (t.next()??, t.next()??, t.next()??);
    let micros: u64 = format!("{frac:0<6}").get(..6)?.parse().ok()?;
    // Days from 1970-01-01 to y-m-day (proleptic Gregorian).
    let (y, m) = if m <= 2 { (y - 1, m + 9) } else { (y, m - 3) };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * m + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = u64::try_from(era * 146_097 + doe - 719_468).ok()?;
    let secs = days * 86_400 + h * 3600 + min * 60 + sec;
    Some(SystemTime::UNIX_EPOCH + Duration::from_secs(secs) + Duration::from_micros(micros))
}

/// `ip monitor` running inside a namespace, killed on drop.
pub struct KernelMonitor {
    child: Child,
    log: PathBuf,
}

impl KernelMonitor {
    /// Starts the monitor in namespace `netns`, logging to `log`, and
    /// returns once it provably sees changes (a marker route added after
    /// it started was reported). Every change from then on is recorded.
    pub fn start(netns: &str, log: &Path) -> Self {
        let out = std::fs::File::create(log)
            .unwrap_or_else(|e| panic!("cannot create {}: {e}", log.display()));
        let child = Command::new("ip")
            .env("TZ", "UTC")
            .args(["netns", "exec", netns, "ip", "-ts", "monitor", "label"])
            .args(["link", "address", "route", "neigh"])
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start ip monitor in {netns}: {e}"));
        let monitor = KernelMonitor {
            child,
            log: log.to_path_buf(),
        };
        monitor.handshake(netns);
        monitor
    }

    /// Adds the marker until the monitor reports it (it may subscribe
    /// after the first addition), then removes it.
    fn handshake(&self, netns: &str) {
        let route = |verb: &str| {
            Command::new("ip")
                .args(["-n", netns, "route", verb, MARKER, "dev", "lo"])
                .stderr(Stdio::null())
                .status()
        };
        let start = Instant::now();
        loop {
            let _ = route("del");
            let _ = route("add");
            let deadline = Instant::now() + Duration::from_millis(500);
            while Instant::now() < deadline {
                if self.all_events().iter().any(is_marker) {
                    let _ = route("del");
                    return;
                }
                std::thread::sleep(Duration::from_millis(10));
            }
            assert!(
                start.elapsed() < Duration::from_secs(20),
                "ip monitor in {netns} never reported the marker route"
            );
        }
    }

    fn all_events(&self) -> Vec<Event> {
        parse(&std::fs::read_to_string(&self.log).unwrap_or_default())
    }

    /// Every event recorded so far, the handshake's marker left out.
    pub fn events(&self) -> Vec<Event> {
        self.all_events()
            .into_iter()
            .filter(|e| !is_marker(e))
            .collect()
    }
}

fn is_marker(e: &Event) -> bool {
    e.kind == Kind::Route && e.subject() == Some(MARKER)
}

impl Drop for KernelMonitor {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `nft monitor ruleset` running inside a namespace, killed on drop: every
/// change to its nftables ruleset, iptables-nft's tables included.
pub struct NftMonitor {
    child: Child,
    log: PathBuf,
}

impl NftMonitor {
    /// Starts it and returns once it provably sees changes (a marker
    /// table added after it started was reported).
    pub fn start(netns: &str, log: &Path) -> Self {
        let out = std::fs::File::create(log)
            .unwrap_or_else(|e| panic!("cannot create {}: {e}", log.display()));
        let child = Command::new("ip")
            .args(["netns", "exec", netns, "nft", "monitor", "ruleset"])
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start nft monitor in {netns}: {e}"));
        let m = NftMonitor {
            child,
            log: log.to_path_buf(),
        };
        let nft = |verb: &str| {
            Command::new("ip")
                .args([
                    "netns", "exec", netns, "nft", verb, "table", "inet", NFT_MARKER,
                ])
                .stderr(Stdio::null())
                .status()
        };
        let start = Instant::now();
        while !m.all().iter().any(|l| l.contains(NFT_MARKER)) {
            let _ = nft("add");
            let _ = nft("delete");
            std::thread::sleep(Duration::from_millis(50));
            assert!(
                start.elapsed() < Duration::from_secs(20),
                "nft monitor in {netns} never reported the marker table"
            );
        }
        m
    }

    fn all(&self) -> Vec<String> {
        std::fs::read_to_string(&self.log)
            .unwrap_or_default()
            .lines()
            .filter(|l| !l.trim().is_empty())
            .map(String::from)
            .collect()
    }

    /// Every change reported so far, the marker's left out.
    pub fn changes(&self) -> Vec<String> {
        self.all()
            .into_iter()
            .filter(|l| !l.contains(NFT_MARKER))
            .collect()
    }
}

const NFT_MARKER: &str = "felt_monitor_marker";

impl Drop for NftMonitor {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_labels_deletions_and_continuations() {
        let text = "\
[2026-12-01T21:38:36.371425] [LINK]2: flannel.1: <BROADCAST,MULTICAST> mtu 1500 qdisc noop state DOWN group default 
    link/ether ea:b8:f2:f6:97:01 brd ff:ff:ff:ff:ff:ff
[2026-12-01T21:38:36.377064] [NEIGH]10.244.2.0 dev flannel.1 lladdr 02:00:00:00:00:02 PERMANENT 
[2026-12-01T21:38:36.379929] [ROUTE]Deleted 10.244.2.0/24 via 10.244.2.0 dev flannel.1 onlink 
[2026-12-01T21:38:36.389940] [ADDR]2: flannel.1    inet 10.244.1.0/32 scope global flannel.1
       valid_lft forever preferred_lft forever
";
        let ev = parse(text);
        assert_eq!(ev.len(), 4);
        assert_eq!(ev[0].kind, Kind::Link);
        assert_eq!(ev[0].dev(), Some("flannel.1"));
        assert!(
            ev[0].text.ends_with("brd ff:ff:ff:ff:ff:ff"),
            "{}",
            ev[0].text
        );
        assert_eq!((ev[1].kind, ev[1].dev()), (Kind::Neigh, Some("flannel.1")));
        assert!(ev[2].deleted && ev[2].kind == Kind::Route);
        assert_eq!(ev[2].subject(), Some("10.244.2.0/24"));
        assert_eq!((ev[3].kind, ev[3].dev()), (Kind::Addr, Some("flannel.1")));
        // `date -u -d 2026-12-01T21:38:36 +%s` = 1796161116
        assert_eq!(
            ev[0].at,
            Some(SystemTime::UNIX_EPOCH + Duration::from_micros(1_796_161_116_371_425))
        );
        assert_eq!(
            parse_utc("2000-02-29T00:00:00.5"),
            Some(SystemTime::UNIX_EPOCH + Duration::from_millis(951_782_400_500))
        );
    }
}
