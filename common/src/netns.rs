//! Entering a network namespace, only through a guard that switches back.
//!
//! `setns(2)` changes the namespace of the calling *thread*; the guard
//! restores the original one on drop (also when unwinding), so a failure
//! half-way never leaves the caller inside a pod's namespace.

use nix::sched::{setns, CloneFlags};
use std::fs::File;
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum NetnsError {
    #[error("cannot open network namespace {path}: {source}")]
    Open {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path} is not a network namespace")]
    NotNetns { path: PathBuf },
    #[error("cannot enter network namespace {path}: {source}")]
    Enter {
        path: PathBuf,
        #[source]
        source: nix::Error,
    },
}

/// Opens `path` and checks that it really is a network namespace
/// (an `nsfs` file whose namespace type is NET), not any other file.
pub fn open_netns(path: &Path) -> Result<File, NetnsError> {
    let file = File::open(path).map_err(|source| NetnsError::Open {
        path: path.to_path_buf(),
        source,
    })?;
    // NS_GET_NSTYPE = _IO(0xb7, 0x3); answers CLONE_NEWNET for a netns and
    // fails (ENOTTY) for anything that is not an nsfs file.
    const NS_GET_NSTYPE: libc_ioctl_req = 0xb703;
    // SAFETY: ioctl on an fd we own, no pointer argument.
    let kind = unsafe { nix::libc::ioctl(std::os::fd::AsRawFd::as_raw_fd(&file), NS_GET_NSTYPE) };
    if kind != CloneFlags::CLONE_NEWNET.bits() {
        return Err(NetnsError::NotNetns {
            path: path.to_path_buf(),
        });
    }
    Ok(file)
}

#[allow(non_camel_case_types)]
type libc_ioctl_req = nix::libc::Ioctl;

/// While alive, the current thread is inside the target namespace.
pub struct NetnsGuard {
    original: File,
}

impl NetnsGuard {
    /// Enters the namespace behind `target` (an fd from [`open_netns`]).
    pub fn enter(target: &File, path: &Path) -> Result<Self, NetnsError> {
        let self_path = Path::new("/proc/thread-self/ns/net");
        let original = File::open(self_path).map_err(|source| NetnsError::Open {
            path: self_path.to_path_buf(),
            source,
        })?;
        setns(target.as_fd(), CloneFlags::CLONE_NEWNET).map_err(|source| NetnsError::Enter {
            path: path.to_path_buf(),
            source,
        })?;
        Ok(NetnsGuard { original })
    }
}

impl Drop for NetnsGuard {
    fn drop(&mut self) {
        if let Err(e) = setns(self.original.as_fd(), CloneFlags::CLONE_NEWNET) {
            // Continuing in the wrong namespace would corrupt whatever
            // comes next; abort is the only safe reaction.
            eprintln!("felt: cannot return to the original network namespace: {e}");
            std::process::abort();
        }
    }
}
