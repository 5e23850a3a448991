//! Running commands and long-lived daemons (etcd, overlayd, iperf3).
//!
//! Daemons get their own process group (a Ctrl-C in the demo's terminal
//! must reach the demo, which then tears down in order, not the daemons)
//! and die with their parent (PDEATHSIG), so a killed test run leaves no
//! etcd or overlayd behind.

use crate::error::{io_err, HarnessError, Result};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use std::fs::{File, OpenOptions};
use std::io::Read;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::time::{Duration, Instant};

/// Renders a command for error messages.
pub fn describe(cmd: &Command) -> String {
    let mut s = cmd.get_program().to_string_lossy().into_owned();
    for a in cmd.get_args() {
        s.push(' ');
        s.push_str(&a.to_string_lossy());
    }
    s
}

/// Runs `cmd`, fails unless it exits 0, returns stdout.
pub fn run(cmd: &mut Command) -> Result<String> {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .map_err(io_err(format!("cannot run {}", describe(cmd))))?;
    stdout_if_success(out, describe(cmd))
}

/// The command's stdout when it succeeded, else an error carrying `cmd`
/// and everything it printed.
pub fn stdout_if_success(out: Output, cmd: String) -> Result<String> {
    if !out.status.success() {
        return Err(HarnessError::Command {
            cmd,
            status: out.status.to_string(),
            output: format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ),
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// `ip <args>` in the harness's own namespace; callers only pass
/// commands aimed at other namespaces (`-n <ns>`, `netns add/del`).
pub fn ip(args: &[&str]) -> Result<String> {
    run(Command::new("ip").args(args))
}

/// Makes a spawned child a group leader that dies with its parent.
fn detach(cmd: &mut Command) {
    // SAFETY: only async-signal-safe calls (setpgid, prctl) between fork
    // and exec.
    unsafe {
        cmd.pre_exec(|| {
            nix::unistd::setpgid(Pid::from_raw(0), Pid::from_raw(0))?;
            nix::sys::prctl::set_pdeathsig(Signal::SIGKILL)?;
            Ok(())
        });
    }
}

/// A long-running child whose stdout and stderr go to a log file; killed
/// (and reaped) on drop.
pub struct Daemon {
    child: Child,
    what: String,
    log: PathBuf,
}

impl Daemon {
    /// Starts `cmd`, appending its output to `log`.
    pub fn spawn(mut cmd: Command, what: &str, log: &Path) -> Result<Self> {
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .map_err(io_err(format!("cannot open log {}", log.display())))?;
        let err = file
            .try_clone()
            .map_err(io_err(format!("cannot open log {}", log.display())))?;
        cmd.stdin(Stdio::null()).stdout(file).stderr(err);
        detach(&mut cmd);
        let child = cmd
            .spawn()
            .map_err(io_err(format!("cannot start {what}: {}", describe(&cmd))))?;
        Ok(Daemon {
            child,
            what: what.to_string(),
            log: log.to_path_buf(),
        })
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn what(&self) -> &str {
        &self.what
    }

    pub fn log_path(&self) -> &Path {
        &self.log
    }

    /// The log so far.
    pub fn log(&self) -> String {
        read_log(&self.log)
    }

    /// Exit status if it has exited.
    pub fn try_wait(&mut self) -> Result<Option<ExitStatus>> {
        self.child
            .try_wait()
            .map_err(io_err(format!("cannot wait for {}", self.what)))
    }

    /// Waits up to `timeout` for the process to exit by itself.
    pub fn wait_exit(&mut self, timeout: Duration) -> Result<ExitStatus> {
        let start = Instant::now();
        loop {
            if let Some(status) = self.try_wait()? {
                return Ok(status);
            }
            if start.elapsed() > timeout {
                return Err(HarnessError::Timeout {
                    what: format!("{} to exit", self.what),
                    waited: timeout,
                });
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Sends `signal`; waits up to `grace` for exit, then SIGKILLs.
    /// Returns the exit status.
    pub fn stop(mut self, signal: Signal, grace: Duration) -> Result<ExitStatus> {
        self.signal(signal);
        match self.wait_exit(grace) {
            Ok(status) => Ok(status),
            Err(_) => {
                self.signal(Signal::SIGKILL);
                self.child
                    .wait()
                    .map_err(io_err(format!("cannot wait for {}", self.what)))
            }
        }
    }

    fn signal(&self, signal: Signal) {
        if let Ok(pid) = i32::try_from(self.child.id()) {
            // ESRCH: already gone, which is what we want anyway.
            let _ = kill(Pid::from_raw(pid), signal);
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            self.signal(Signal::SIGKILL);
        }
        let _ = self.child.wait();
    }
}

/// Whether an exit status means "killed by a signal", for messages.
pub fn status_text(status: &ExitStatus) -> String {
    match (status.code(), status.signal()) {
        (Some(c), _) => format!("exit code {c}"),
        (None, Some(s)) => format!("killed by signal {s}"),
        _ => status.to_string(),
    }
}

/// Reads a log file; an unreadable log reads as a note saying so.
pub fn read_log(path: &Path) -> String {
    let mut s = String::new();
    match File::open(path).and_then(|mut f| f.read_to_string(&mut s)) {
        Ok(_) => s,
        Err(e) => format!("(cannot read {}: {e})", path.display()),
    }
}

/// The last `n` lines of `text`.
pub fn tail(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// Finds the `felt` / `overlayd` binary: `$<env>`, else next to the running
/// executable or in one of its parent directories (`target/<profile>/`).
pub fn locate_binary(name: &str, env: &str) -> Result<PathBuf> {
    if let Some(path) = std::env::var_os(env) {
        let path = PathBuf::from(path);
        if path.is_file() {
            return Ok(path);
        }
        return Err(HarnessError::MissingBinary {
            name: name.to_string(),
            env: env.to_string(),
            looked: path.display().to_string(),
        });
    }
    let exe = std::env::current_exe().map_err(io_err("cannot find the current executable"))?;
    let mut looked = Vec::new();
    for dir in exe.ancestors().skip(1).take(4) {
        let candidate = dir.join(name);
        if candidate.is_file() {
            return Ok(candidate);
        }
        looked.push(candidate.display().to_string());
    }
    Err(HarnessError::MissingBinary {
        name: name.to_string(),
        env: env.to_string(),
        looked: looked.join(", "),
    })
}

/// Fails with a clear message when a system tool is missing.
pub fn require_tool(name: &str) -> Result<()> {
    let found = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).any(|d| d.join(name).is_file()))
        .unwrap_or(false);
    if found {
        Ok(())
    } else {
        Err(HarnessError::Setup(format!(
            "`{name}` is not installed; run scripts/setup.sh"
        )))
    }
}
