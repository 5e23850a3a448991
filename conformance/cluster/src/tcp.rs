//! TCP between pods without external tools: a socket belongs to the
//! network namespace it was created in, so the listener is created on a
//! thread that briefly enters the pod's namespace and then serves from
//! anywhere; a client connects the same way.

use crate::error::{io_err, HarnessError, Result};
use crate::netns::Netns;
use felt_common::netns::{open_netns, NetnsGuard};
use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

/// Runs `f` on a fresh thread inside the namespace at `path`; the calling
/// thread never changes namespace.
pub fn in_netns<T: Send + 'static>(
    path: &Path,
    f: impl FnOnce() -> Result<T> + Send + 'static,
) -> Result<T> {
    let path = path.to_path_buf();
    let handle = std::thread::spawn(move || -> Result<T> {
        let file = open_netns(&path)?;
        let _guard = NetnsGuard::enter(&file, &path)?;
        f()
    });
    handle
        .join()
        .map_err(|_| HarnessError::Setup("namespace thread panicked".into()))?
}

/// A TCP echo server listening on `<addr>:<port>` inside a pod.
pub struct EchoServer {
    pub addr: SocketAddr,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl EchoServer {
    /// Listens on `ip` (port chosen by the kernel) in namespace `ns`.
    pub fn start(ns: &Netns, ip: Ipv4Addr) -> Result<Self> {
        let listener = in_netns(&ns.path(), move || {
            TcpListener::bind((ip, 0)).map_err(io_err(format!("cannot listen on {ip}")))
        })?;
        let addr = listener.local_addr().map_err(io_err("listener address"))?;
        listener
            .set_nonblocking(true)
            .map_err(io_err("nonblocking listener"))?;
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::spawn(move || serve(listener, flag));
        Ok(EchoServer {
            addr,
            stop,
            thread: Some(thread),
        })
    }
}

fn serve(listener: TcpListener, stop: Arc<AtomicBool>) {
    while !stop.load(Ordering::SeqCst) {
        match listener.accept() {
            Ok((stream, _)) => {
                std::thread::spawn(move || echo(stream));
            }
            Err(_) => std::thread::sleep(Duration::from_millis(5)),
        }
    }
}

fn echo(mut stream: TcpStream) {
    let _ = stream.set_nonblocking(false);
    let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
    let mut buf = [0u8; 4096];
    while let Ok(n) = stream.read(&mut buf) {
        if n == 0 || stream.write_all(&buf[..n]).is_err() {
            break;
        }
    }
}

impl Drop for EchoServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Connects from namespace `ns` to `to`, sends `payload`, and returns what
/// came back (read until as many bytes arrived or 3 s passed).
pub fn tcp_roundtrip(ns: &Netns, to: SocketAddr, payload: &[u8]) -> Result<Vec<u8>> {
    let payload = payload.to_vec();
    let stream = in_netns(&ns.path(), move || {
        TcpStream::connect_timeout(&to, Duration::from_secs(3))
            .map_err(io_err(format!("cannot connect to {to}")))
    })?;
    exchange(stream, to, &payload)
}

fn exchange(mut stream: TcpStream, to: SocketAddr, payload: &[u8]) -> Result<Vec<u8>> {
    let what = format!("TCP to {to}");
    stream
        .set_read_timeout(Some(Duration::from_secs(3)))
        .map_err(io_err(what.clone()))?;
    stream.write_all(payload).map_err(io_err(what.clone()))?;
    let mut got = vec![0u8; payload.len()];
    stream.read_exact(&mut got).map_err(io_err(what))?;
    Ok(got)
}
