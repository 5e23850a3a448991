//! Test-only helpers: throwaway network namespaces and child processes
//! that are cleaned up on drop, also when a test fails (unwinds).
//!
//! Every privileged test works inside namespaces made here and never
//! touches the machine's own (root) namespace.

// Test helpers fail the test loudly on any setup error: that is their job.
#![allow(clippy::panic, clippy::unwrap_used, clippy::expect_used)]

use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};

/// Prefix of every namespace a felt test creates; `scripts/test.sh`
/// removes stale ones left by killed test processes.
pub const NETNS_PREFIX: &str = "felt-t";

static COUNTER: AtomicUsize = AtomicUsize::new(0);

/// Fails the test with a clear message when not root.
pub fn require_root() {
    if !nix::unistd::geteuid().is_root() {
        panic!("this test creates network namespaces and must run as root (see README)");
    }
}

/// A named network namespace (`ip netns add`), deleted on drop together
/// with every process still running inside it.
pub struct TestNetns {
    pub name: String,
}

impl TestNetns {
    /// Creates `felt-t-<tag>-<pid>-<n>`, unique across parallel tests.
    /// Loopback is brought up.
    pub fn new(tag: &str) -> Self {
        require_root();
        let n = COUNTER.fetch_add(1, Ordering::SeqCst);
        let name = format!("{NETNS_PREFIX}-{tag}-{}-{n}", std::process::id());
        assert!(name.len() < 64, "netns name too long: {name}");
        run_ok("ip", &["netns", "add", &name]);
        let ns = TestNetns { name };
        ns.exec_ok(&["ip", "link", "set", "lo", "up"]);
        ns
    }

    /// Path of the namespace file, what a runtime passes as CNI_NETNS.
    pub fn path(&self) -> PathBuf {
        PathBuf::from(format!("/run/netns/{}", self.name))
    }

    /// A command that runs inside this namespace.
    pub fn command(&self, program: &str) -> Command {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.name, program]);
        cmd
    }

    /// Runs `argv` inside the namespace and returns its output.
    pub fn exec(&self, argv: &[&str]) -> Output {
        let mut cmd = self.command(argv[0]);
        cmd.args(&argv[1..]);
        cmd.output()
            .unwrap_or_else(|e| panic!("cannot run {argv:?}: {e}"))
    }

    /// Runs `argv` inside the namespace, fails the test unless it succeeds,
    /// returns stdout.
    pub fn exec_ok(&self, argv: &[&str]) -> String {
        let out = self.exec(argv);
        assert!(
            out.status.success(),
            "in netns {}: {argv:?} failed: {}{}",
            self.name,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

impl Drop for TestNetns {
    fn drop(&mut self) {
        // Kill what still runs inside (daemons, sleepers), then delete.
        if let Ok(out) = Command::new("ip")
            .args(["netns", "pids", &self.name])
            .output()
        {
            for pid in String::from_utf8_lossy(&out.stdout).split_whitespace() {
                if let Ok(pid) = pid.parse::<i32>() {
                    let _ = nix::sys::signal::kill(
                        nix::unistd::Pid::from_raw(pid),
                        nix::sys::signal::Signal::SIGKILL,
                    );
                }
            }
        }
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .stderr(Stdio::null())
            .status();
    }
}

/// A child process killed (SIGKILL) and reaped on drop.
pub struct ChildGuard {
    pub child: Child,
    pub what: String,
}

impl ChildGuard {
    pub fn spawn(mut cmd: Command, what: &str) -> Self {
        let child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {what}: {e}"));
        ChildGuard {
            child,
            what: what.to_string(),
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs a command in the current namespace and fails the test unless it
/// succeeds. Use only for commands that do not change the root namespace
/// (`ip netns add/del`, commands with `-n <ns>`).
pub fn run_ok(program: &str, args: &[&str]) -> String {
    let out = Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {program}: {e}"));
    assert!(
        out.status.success(),
        "{program} {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}
