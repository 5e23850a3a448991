//! felt-deploy: what the tests of `deploy/` need. The manifests as parsed
//! documents ([`manifest`]), rendered by the real kustomize of kubectl 1.20
//! ([`tools`]); a real kube-apiserver with etcd in a throwaway network
//! namespace ([`apiserver`]); a throwaway containerd that imports and runs
//! the image ([`containerd`]). Tests live in `tests/`.

pub mod apiserver;
pub mod containerd;
pub mod error;
pub mod manifest;
pub mod repo;
pub mod tempdir;
pub mod tools;

pub use error::{DeployError, Result};
pub use manifest::Manifest;
pub use repo::{variants, Variant};
