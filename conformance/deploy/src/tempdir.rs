//! Scratch directories of the tests.

use crate::error::{io_err, Result};
use std::path::{Path, PathBuf};

/// A directory removed on drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(path: &Path) -> Result<Self> {
        let _ = std::fs::remove_dir_all(path);
        std::fs::create_dir_all(path).map_err(io_err(format!("create {}", path.display())))?;
        Ok(TempDir(path.to_path_buf()))
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
