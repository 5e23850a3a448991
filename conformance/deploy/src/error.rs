//! The one error type of the deploy test support.

use felt_cluster::HarnessError;

#[derive(Debug, thiserror::Error)]
pub enum DeployError {
    /// Commands, daemons, namespaces (from the cluster harness).
    #[error(transparent)]
    Harness(#[from] HarnessError),
    #[error("{what}: {detail}")]
    Manifest { what: String, detail: String },
    #[error("{tool} not found ({looked}): {hint}")]
    MissingTool {
        tool: String,
        looked: String,
        hint: String,
    },
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
}

pub type Result<T> = std::result::Result<T, DeployError>;

pub(crate) fn manifest_err(what: impl Into<String>, detail: impl ToString) -> DeployError {
    DeployError::Manifest {
        what: what.into(),
        detail: detail.to_string(),
    }
}

pub(crate) fn io_err(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> DeployError {
    let what = what.into();
    move |source| DeployError::Io { what, source }
}
