//! One file per CNI verb.

pub mod add;
pub mod check;
pub mod del;
pub mod gc;
pub mod status;
pub mod version;

use crate::error::{Error, Result};
use felt_common::netns::{open_netns, NetnsError};
use std::fs::File;
use std::path::Path;

/// Opens the pod netns: a missing path is "container unknown" (3), a path
/// that is not a network namespace an invalid CNI_NETNS (4).
pub fn open_pod_netns(path: &Path) -> Result<File> {
    open_netns(path).map_err(|e| match e {
        NetnsError::Open { source, .. } if source.kind() == std::io::ErrorKind::NotFound => {
            Error::ContainerUnknown(format!(
                "CNI_NETNS: network namespace {} does not exist",
                path.display()
            ))
        }
        NetnsError::NotNetns { .. } => Error::InvalidEnv(format!(
            "CNI_NETNS: {} is not a network namespace",
            path.display()
        )),
        other => Error::InvalidEnv(format!("CNI_NETNS: {other}")),
    })
}

/// Joins the errors of a keep-going teardown into one (code of the first).
pub fn join_errors(mut errors: Vec<Error>) -> Result<()> {
    match errors.len() {
        0 => Ok(()),
        1 => Err(errors.remove(0)),
        _ => {
            let msg = errors
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join("; ");
            let first = errors.remove(0);
            Err(match first {
                Error::Io { source, .. } => Error::Io { what: msg, source },
                Error::Kernel { source, .. } => Error::Kernel { what: msg, source },
                _ => Error::Kernel {
                    what: msg,
                    source: std::io::Error::other("several teardown steps failed"),
                },
            })
        }
    }
}
