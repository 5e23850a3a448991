//! Doing things inside the cluster's network namespaces from the bench
//! process, which itself stays in the machine's namespace: a socket
//! belongs to the namespace it was created in, so sockets are created by
//! a thread that entered the namespace (through felt-common's guard) and
//! used from anywhere afterwards.

use crate::error::{io_err, BenchError, Result};
use felt_common::netns::{open_netns, NetnsGuard};
use std::future::Future;
use std::path::Path;

/// Runs `f()` to completion on a current-thread tokio runtime whose
/// thread is inside `ns` the whole time: every socket the future opens
/// (etcd's gRPC connection included, whenever it reconnects) belongs to
/// `ns`. The calling thread never changes namespace.
pub fn block_on_in<T, F, Fut>(ns: &Path, f: F) -> Result<T>
where
    F: FnOnce() -> Fut + Send,
    Fut: Future<Output = Result<T>>,
    T: Send,
{
    std::thread::scope(|s| {
        let worker = s.spawn(|| {
            let file = open_netns(ns)?;
            let _inside = NetnsGuard::enter(&file, ns)?;
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(io_err("cannot build a tokio runtime"))?;
            // The runtime (and its sockets) goes before the guard.
            let out = rt.block_on(f());
            drop(rt);
            out
        });
        worker
            .join()
            .map_err(|_| BenchError::Setup(format!("thread in {} panicked", ns.display())))?
    })
}

/// Runs `f` on the current thread while it is inside `ns`, then returns
/// to the namespace it was in (for creating a socket there).
pub fn with_netns<T>(ns: &Path, f: impl FnOnce() -> T) -> Result<T> {
    let file = open_netns(ns)?;
    let _inside = NetnsGuard::enter(&file, ns)?;
    Ok(f())
}

/// An rtnetlink handle whose socket lives in `ns`; its connection task
/// runs on the current tokio runtime.
pub fn rtnetlink_in(ns: &Path) -> Result<rtnetlink::Handle> {
    let (conn, handle, _) = with_netns(ns, rtnetlink::new_connection)?
        .map_err(io_err(format!("cannot open netlink in {}", ns.display())))?;
    tokio::spawn(conn);
    Ok(handle)
}
