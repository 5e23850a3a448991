//! What both directions' worker threads share: their context, waiting for
//! readability (or stop), raw read/write.

use super::peers::{PeerCell, Topology};
use super::stats::Shared;
use std::fs::File;
use std::net::Ipv4Addr;
use std::os::fd::{AsRawFd, RawFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

/// Which techniques a worker uses (after probing).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Mode {
    /// recvmmsg/sendmmsg and several TUN reads per wakeup.
    pub batched: bool,
    /// IFF_VNET_HDR on the TUN: TSO split on read, TCP GRO on write.
    pub vnet: bool,
    /// UDP_SEGMENT sends.
    pub gso: bool,
}

/// Set when the engine stops; the eventfd wakes threads blocked in poll.
pub struct Stop {
    flag: AtomicBool,
    event: File,
}

impl Stop {
    pub fn new() -> std::io::Result<Stop> {
        // SAFETY: eventfd(2) returns a fresh fd we own.
        let fd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK) };
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        // SAFETY: fd is fresh and owned by nobody else.
        let event = unsafe { <File as std::os::fd::FromRawFd>::from_raw_fd(fd) };
        Ok(Stop {
            flag: AtomicBool::new(false),
            event,
        })
    }

    pub fn is_set(&self) -> bool {
        self.flag.load(Ordering::Relaxed)
    }

    /// Sets the flag and leaves the eventfd readable for every poller.
    pub fn set(&self) {
        self.flag.store(true, Ordering::Relaxed);
        let one: u64 = 1;
        // SAFETY: writes 8 bytes from a live u64 to our eventfd. A full
        // counter (EAGAIN) still leaves it readable, which is all we need.
        unsafe { libc::write(self.event.as_raw_fd(), (&one as *const u64).cast(), 8) };
    }

    /// Blocks until `fd` is readable (true) or stop was requested (false).
    pub fn wait_readable(&self, fd: RawFd) -> bool {
        let mut fds = [
            libc::pollfd {
                fd,
                events: libc::POLLIN,
                revents: 0,
            },
            libc::pollfd {
                fd: self.event.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            },
        ];
        loop {
            if self.is_set() {
                return false;
            }
            // SAFETY: fds is a live array of two pollfds.
            let rc = unsafe { libc::poll(fds.as_mut_ptr(), 2, -1) };
            if rc < 0 && std::io::Error::last_os_error().raw_os_error() == Some(libc::EINTR) {
                continue;
            }
            return !self.is_set() && fds[1].revents == 0;
        }
    }
}

/// Everything a worker needs besides its fds and buffers.
pub struct Ctx {
    pub topo: Topology,
    /// The TUN's address (our subnet's network address), the source of
    /// ICMP errors.
    pub tun_addr: Ipv4Addr,
    pub port: u16,
    pub mtu: usize,
    pub mode: Mode,
    pub stop: Arc<Stop>,
    pub peers: Arc<PeerCell>,
    pub stats: Arc<Shared>,
}

/// read(2); Ok(None) when nothing is there.
pub fn read_nb(fd: RawFd, buf: &mut [u8]) -> std::io::Result<Option<usize>> {
    loop {
        // SAFETY: reads into a live mutable buffer of buf.len() bytes.
        let n = unsafe { libc::read(fd, buf.as_mut_ptr().cast(), buf.len()) };
        if n >= 0 {
            return Ok(Some(n as usize));
        }
        let e = std::io::Error::last_os_error();
        match e.kind() {
            std::io::ErrorKind::WouldBlock => return Ok(None),
            std::io::ErrorKind::Interrupted => continue,
            _ => return Err(e),
        }
    }
}

/// writev(2) of the parts; true when all bytes went out.
pub fn writev_all(fd: RawFd, iov: &[libc::iovec]) -> bool {
    let want: usize = iov.iter().map(|v| v.iov_len).sum();
    // SAFETY: every iovec points into a live buffer borrowed by the caller.
    let n = unsafe { libc::writev(fd, iov.as_ptr(), iov.len() as libc::c_int) };
    n >= 0 && n as usize == want
}

pub fn iov(b: &[u8]) -> libc::iovec {
    libc::iovec {
        iov_base: b.as_ptr() as *mut libc::c_void,
        iov_len: b.len(),
    }
}
