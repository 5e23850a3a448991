//! The harness's one error type.

use std::time::Duration;

#[derive(Debug, thiserror::Error)]
pub enum HarnessError {
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
    #[error("`{cmd}` failed ({status}): {output}")]
    Command {
        cmd: String,
        status: String,
        output: String,
    },
    #[error("timed out after {waited:?} waiting for {what}")]
    Timeout { what: String, waited: Duration },
    #[error("{name} binary not found (looked at {looked}); run `cargo build --workspace` first, or set {env}")]
    MissingBinary {
        name: String,
        env: String,
        looked: String,
    },
    #[error("cannot parse {what}: {detail}")]
    Parse { what: String, detail: String },
    #[error(transparent)]
    Netns(#[from] felt_common::netns::NetnsError),
    #[error("{0}")]
    Setup(String),
    #[error("interrupted")]
    Interrupted,
}

pub type Result<T> = std::result::Result<T, HarnessError>;

/// Wraps an io::Error with what was being done.
pub(crate) fn io_err(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> HarnessError {
    let what = what.into();
    move |source| HarnessError::Io { what, source }
}

pub(crate) fn parse_err(what: impl Into<String>, detail: impl ToString) -> HarnessError {
    HarnessError::Parse {
        what: what.into(),
        detail: detail.to_string(),
    }
}
