//! The kernel side of the datapath, over rtnetlink: the VXLAN device and
//! its address (`link`), and dumping / writing the peer objects felt owns
//! (`objects`). Nothing here decides *what* should exist; the backends and
//! the reconciler do.

pub mod link;
pub mod objects;
pub mod watch;

use rtnetlink::Handle;

#[derive(Debug, thiserror::Error)]
pub enum KernelError {
    #[error("cannot open a netlink socket: {0}")]
    Connect(#[source] std::io::Error),
    /// The object does not exist (ENOENT, ENODEV, ESRCH).
    #[error("{what}: not found")]
    NotFound { what: String },
    /// An exclusive create met an existing object (EEXIST).
    #[error("{what}: something else is already there")]
    Exists { what: String },
    #[error("{what}: {source}")]
    Netlink {
        what: String,
        #[source]
        source: rtnetlink::Error,
    },
    #[error("{what}: unexpected answer from the kernel: {detail}")]
    Unexpected { what: String, detail: String },
}

impl KernelError {
    /// Wraps a netlink error with the object it concerns; "not found"
    /// errnos get their own variant because callers branch on it.
    pub(crate) fn netlink(what: impl Into<String>, source: rtnetlink::Error) -> Self {
        let what = what.into();
        match errno(&source) {
            Some(libc::ENOENT | libc::ENODEV | libc::ESRCH) => KernelError::NotFound { what },
            Some(libc::EEXIST) => KernelError::Exists { what },
            _ => KernelError::Netlink { what, source },
        }
    }

    pub fn is_not_found(&self) -> bool {
        matches!(self, KernelError::NotFound { .. })
    }
}

/// The positive errno of a netlink NACK, if that is what `e` is.
pub(crate) fn errno(e: &rtnetlink::Error) -> Option<i32> {
    match e {
        rtnetlink::Error::NetlinkError(msg) => Some(-msg.raw_code()),
        _ => None,
    }
}

/// One rtnetlink connection, bound to the network namespace of the thread
/// that opened it (the socket keeps that namespace for its whole life).
#[derive(Clone)]
pub struct Kernel {
    handle: Handle,
}

impl Kernel {
    /// Opens the socket and spawns its driver on the current tokio runtime.
    pub fn connect() -> Result<Self, KernelError> {
        let (conn, handle, _) = rtnetlink::new_connection().map_err(KernelError::Connect)?;
        tokio::spawn(conn);
        Ok(Kernel { handle })
    }

    pub(crate) fn handle(&self) -> &Handle {
        &self.handle
    }
}
