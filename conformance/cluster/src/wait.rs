//! Polling with a deadline.

use crate::error::{HarnessError, Result};
use std::path::Path;
use std::time::{Duration, Instant};

/// How often conditions are re-checked.
pub const POLL: Duration = Duration::from_millis(20);

/// Polls `check` every 20 ms until it returns true; returns how long that
/// took. An error from `check` ends the wait at once.
pub fn wait_for(
    what: &str,
    timeout: Duration,
    mut check: impl FnMut() -> Result<bool>,
) -> Result<Duration> {
    let start = Instant::now();
    loop {
        if check()? {
            return Ok(start.elapsed());
        }
        if start.elapsed() > timeout {
            return Err(HarnessError::Timeout {
                what: what.to_string(),
                waited: timeout,
            });
        }
        std::thread::sleep(POLL);
    }
}

/// Waits for `path` to exist.
pub fn wait_for_file(path: &Path, timeout: Duration) -> Result<Duration> {
    wait_for(&format!("{} to appear", path.display()), timeout, || {
        Ok(path.exists())
    })
}
