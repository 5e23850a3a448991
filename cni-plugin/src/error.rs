//! The plugin's one error type and its mapping to CNI error codes.
//!
//! Codes 1-7, 11, 50, 51 are the spec's; 100+ are felt's own and listed in
//! docs/cni-plugin.md (runtimes only log them, so the message carries the
//! detail an operator needs).

use std::io;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{0}")]
    IncompatibleVersion(String),
    #[error("{0}")]
    Unsupported(String),
    #[error("{0}")]
    ContainerUnknown(String),
    #[error("{0}")]
    InvalidEnv(String),
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: io::Error,
    },
    #[error("{0}")]
    Decode(String),
    #[error("{0}")]
    InvalidConfig(String),
    #[error("{0}")]
    TryAgain(String),
    #[error("{0}")]
    NotReady(String),
    #[error("no IP addresses available in range set: {0}")]
    Exhausted(String),
    #[error("{0}")]
    Duplicate(String),
    #[error("interface {ifname} already exists in {netns}")]
    IfaceExists { ifname: String, netns: String },
    #[error("{0}")]
    CheckFailed(String),
    #[error("{0}")]
    IpUnavailable(String),
    #[error("{what}: already exists")]
    Exists { what: String },
    #[error("{what}: not found")]
    NotFound { what: String },
    #[error("{what}: {source}")]
    Kernel {
        what: String,
        #[source]
        source: io::Error,
    },
    #[error(transparent)]
    Netns(#[from] felt_common::netns::NetnsError),
    #[error("{0}")]
    Internal(String),
    #[error("injected test failure after step {0} (FELT_TEST_FAIL_AFTER)")]
    TestFault(String),
}

pub type Result<T> = std::result::Result<T, Error>;

impl Error {
    /// The CNI error code for this error (spec codes first, then felt's).
    pub fn code(&self) -> u32 {
        match self {
            Error::IncompatibleVersion(_) => 1,
            Error::Unsupported(_) => 2,
            Error::ContainerUnknown(_) => 3,
            Error::InvalidEnv(_) => 4,
            Error::Io { .. } => 5,
            Error::Decode(_) => 6,
            Error::InvalidConfig(_) => 7,
            Error::TryAgain(_) => 11,
            Error::NotReady(_) => 50,
            Error::Exhausted(_) => 100,
            Error::Duplicate(_) => 101,
            Error::IfaceExists { .. } => 102,
            Error::CheckFailed(_) => 103,
            Error::IpUnavailable(_) => 105,
            Error::Exists { .. }
            | Error::NotFound { .. }
            | Error::Kernel { .. }
            | Error::Netns(_) => 110,
            Error::TestFault(_) => 199,
            Error::Internal(_) => 999,
        }
    }

    /// True for netlink "not found" style failures (DEL/GC treat them as done).
    pub fn is_not_found(&self) -> bool {
        matches!(self, Error::NotFound { .. })
    }

    pub fn is_exists(&self) -> bool {
        matches!(self, Error::Exists { .. })
    }

    /// Adds the object being worked on to an I/O error.
    pub fn io(what: impl Into<String>) -> impl FnOnce(io::Error) -> Error {
        let what = what.into();
        move |source| Error::Io { what, source }
    }

    pub fn io_path(verb: &str, path: &std::path::Path) -> impl FnOnce(io::Error) -> Error {
        Error::io(format!("{verb} {}", path.display()))
    }
}

/// Maps an errno from the kernel to the typed variants callers branch on.
pub fn kernel_error(what: impl Into<String>, source: io::Error) -> Error {
    let what = what.into();
    match source.raw_os_error() {
        Some(libc::EEXIST) => Error::Exists { what },
        Some(libc::ENODEV) | Some(libc::ENOENT) | Some(libc::ESRCH) | Some(libc::EADDRNOTAVAIL) => {
            Error::NotFound { what }
        }
        _ => Error::Kernel { what, source },
    }
}
