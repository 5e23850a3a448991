//! The benchmark's one error type.

use std::time::Duration;

#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    #[error(transparent)]
    Harness(#[from] felt_cluster::HarnessError),
    #[error(transparent)]
    Netns(#[from] felt_common::netns::NetnsError),
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
    #[error("etcd {what}: {source}")]
    Etcd {
        what: String,
        #[source]
        source: etcd_client::Error,
    },
    #[error("netlink {what}: {source}")]
    Netlink {
        what: String,
        #[source]
        source: rtnetlink::Error,
    },
    #[error("cannot parse {what}: {detail}")]
    Parse { what: String, detail: String },
    #[error("timed out after {waited:?} waiting for {what}")]
    Timeout { what: String, waited: Duration },
    #[error("{0}")]
    Setup(String),
}

pub type Result<T> = std::result::Result<T, BenchError>;

pub fn io_err(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> BenchError {
    let what = what.into();
    move |source| BenchError::Io { what, source }
}

pub fn etcd_err(what: impl Into<String>) -> impl FnOnce(etcd_client::Error) -> BenchError {
    let what = what.into();
    move |source| BenchError::Etcd { what, source }
}

pub fn nl_err(what: impl Into<String>) -> impl FnOnce(rtnetlink::Error) -> BenchError {
    let what = what.into();
    move |source| BenchError::Netlink { what, source }
}

pub fn parse_err(what: impl Into<String>, detail: impl ToString) -> BenchError {
    BenchError::Parse {
        what: what.into(),
        detail: detail.to_string(),
    }
}
