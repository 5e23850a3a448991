//! The underlay UDP socket: big buffers, optional UDP GRO on receive,
//! UDP GSO (UDP_SEGMENT) on send, and recvmmsg/sendmmsg batches.
//!
//! The fd stays blocking (sends wait for buffer space instead of
//! dropping); receives pass MSG_DONTWAIT and the worker polls when idle.

use super::UdpError;
use std::fs::File;
use std::net::SocketAddrV4;
use std::os::fd::{FromRawFd, RawFd};

/// Requested SO_RCVBUF/SO_SNDBUF (the kernel doubles it).
pub const SOCK_BUF: libc::c_int = 8 << 20;
/// The kernel's UDP_MAX_SEGMENTS on the kernels we target.
pub const MAX_GSO_SEGMENTS: usize = 64;
/// Largest UDP payload of one send (65535 - IPv4 - UDP headers).
pub const MAX_UDP_PAYLOAD: usize = 65_535 - 28;

fn setsockopt_int(fd: RawFd, level: libc::c_int, opt: libc::c_int, v: libc::c_int) -> bool {
    // SAFETY: passes a pointer to a live c_int and its size.
    let rc = unsafe {
        libc::setsockopt(
            fd,
            level,
            opt,
            (&v as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    rc == 0
}

fn getsockopt_int(fd: RawFd, level: libc::c_int, opt: libc::c_int) -> Option<libc::c_int> {
    let mut v: libc::c_int = 0;
    let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: v and len are live and sized for an int option.
    let rc = unsafe {
        libc::getsockopt(
            fd,
            level,
            opt,
            (&mut v as *mut libc::c_int).cast(),
            &mut len,
        )
    };
    (rc == 0).then_some(v)
}

pub fn sockaddr(addr: u32, port: u16) -> libc::sockaddr_in {
    libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: port.to_be(),
        sin_addr: libc::in_addr {
            s_addr: addr.to_be(),
        },
        sin_zero: [0; 8],
    }
}

/// What the socket ended up with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SockInfo {
    pub gso: bool,
    pub gro: bool,
    pub rcvbuf: i32,
    pub sndbuf: i32,
}

pub struct UdpSock {
    pub file: File,
    pub info: SockInfo,
}

impl UdpSock {
    /// Binds `local`; enables GRO when `want_gro`, probes GSO when `want_gso`.
    pub fn bind(local: SocketAddrV4, want_gso: bool, want_gro: bool) -> Result<UdpSock, UdpError> {
        let err = |what: &'static str| {
            move |source| UdpError::Socket {
                local,
                what,
                source,
            }
        };
        // SAFETY: plain socket(2); the fd is owned by the File below.
        let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
        if fd < 0 {
            return Err(err("socket")(std::io::Error::last_os_error()));
        }
        // SAFETY: fd is fresh and owned by nobody else.
        let file = unsafe { File::from_raw_fd(fd) };
        let sa = sockaddr(u32::from(*local.ip()), local.port());
        // SAFETY: sa is a valid sockaddr_in of the given size.
        let rc = unsafe {
            libc::bind(
                fd,
                (&sa as *const libc::sockaddr_in).cast(),
                std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t,
            )
        };
        if rc < 0 {
            return Err(err("bind")(std::io::Error::last_os_error()));
        }
        // FORCE passes rmem_max/wmem_max (needs CAP_NET_ADMIN); else the
        // capped request is the best we get. Failure only costs speed.
        for (force, plain) in [
            (libc::SO_RCVBUFFORCE, libc::SO_RCVBUF),
            (libc::SO_SNDBUFFORCE, libc::SO_SNDBUF),
        ] {
            if !setsockopt_int(fd, libc::SOL_SOCKET, force, SOCK_BUF) {
                setsockopt_int(fd, libc::SOL_SOCKET, plain, SOCK_BUF);
            }
        }
        let gro = want_gro
            && setsockopt_int(fd, libc::SOL_UDP, libc::UDP_GRO, 1)
            && getsockopt_int(fd, libc::SOL_UDP, libc::UDP_GRO) == Some(1);
        // A kernel without UDP GSO does not know the option at all.
        let gso = want_gso && getsockopt_int(fd, libc::SOL_UDP, libc::UDP_SEGMENT).is_some();
        let info = SockInfo {
            gso,
            gro,
            rcvbuf: getsockopt_int(fd, libc::SOL_SOCKET, libc::SO_RCVBUF).unwrap_or(0),
            sndbuf: getsockopt_int(fd, libc::SOL_SOCKET, libc::SO_SNDBUF).unwrap_or(0),
        };
        Ok(UdpSock { file, info })
    }
}

/// One received datagram (or GRO batch of datagrams).
#[derive(Debug, Clone, Copy, Default)]
pub struct RecvMeta {
    pub len: usize,
    /// Source IPv4 (host order).
    pub src: u32,
    /// GRO segment size; equal to `len` when not coalesced.
    pub stride: usize,
    /// The datagram did not fit the buffer (MSG_TRUNC).
    pub truncated: bool,
}

/// cmsg space for one int (UDP_GRO / UDP_SEGMENT), 8-byte aligned.
type CmsgBuf = [u64; 4];

/// Preallocated recvmmsg state: `n` buffers of `cap` bytes.
pub struct RecvBatch {
    pub bufs: Vec<Box<[u8]>>,
    pub meta: Vec<RecvMeta>,
    msgs: Vec<libc::mmsghdr>,
    iovs: Vec<libc::iovec>,
    names: Vec<libc::sockaddr_in>,
    cmsgs: Vec<CmsgBuf>,
}

impl RecvBatch {
    pub fn new(n: usize, cap: usize) -> RecvBatch {
        RecvBatch {
            bufs: (0..n).map(|_| vec![0u8; cap].into_boxed_slice()).collect(),
            meta: vec![RecvMeta::default(); n],
            // SAFETY: mmsghdr/iovec/sockaddr_in are plain C structs for
            // which all-zero is a valid value; pointers are set per call.
            msgs: (0..n).map(|_| unsafe { std::mem::zeroed() }).collect(),
            iovs: (0..n).map(|_| unsafe { std::mem::zeroed() }).collect(),
            names: (0..n).map(|_| unsafe { std::mem::zeroed() }).collect(),
            cmsgs: vec![[0; 4]; n],
        }
    }

    /// Receives up to `max` datagrams without blocking (`batched`:
    /// recvmmsg, else one recvmsg). Ok(0) = nothing there.
    pub fn recv(&mut self, fd: RawFd, max: usize, batched: bool) -> std::io::Result<usize> {
        let n = max.min(self.bufs.len());
        for i in 0..n {
            self.iovs[i] = libc::iovec {
                iov_base: self.bufs[i].as_mut_ptr().cast(),
                iov_len: self.bufs[i].len(),
            };
            let h = &mut self.msgs[i].msg_hdr;
            h.msg_name = (&mut self.names[i] as *mut libc::sockaddr_in).cast();
            h.msg_namelen = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
            h.msg_iov = &mut self.iovs[i];
            h.msg_iovlen = 1;
            h.msg_control = self.cmsgs[i].as_mut_ptr().cast();
            h.msg_controllen = std::mem::size_of::<CmsgBuf>();
            h.msg_flags = 0;
        }
        let got = if batched {
            // SAFETY: msgs[..n] point into buffers owned by self.
            unsafe {
                libc::recvmmsg(
                    fd,
                    self.msgs.as_mut_ptr(),
                    n as libc::c_uint,
                    libc::MSG_DONTWAIT,
                    std::ptr::null_mut(),
                )
            }
        } else {
            // SAFETY: as above, one message.
            let r = unsafe { libc::recvmsg(fd, &mut self.msgs[0].msg_hdr, libc::MSG_DONTWAIT) };
            if r >= 0 {
                self.msgs[0].msg_len = r as libc::c_uint;
                1
            } else {
                -1
            }
        };
        if got < 0 {
            let e = std::io::Error::last_os_error();
            if e.kind() == std::io::ErrorKind::WouldBlock {
                return Ok(0);
            }
            return Err(e);
        }
        let got = got as usize;
        for i in 0..got {
            self.meta[i] = self.parse(i);
        }
        Ok(got)
    }

    fn parse(&self, i: usize) -> RecvMeta {
        let m = &self.msgs[i];
        let len = m.msg_len as usize;
        let mut stride = len;
        let h = &m.msg_hdr;
        // SAFETY: walks the control buffer the kernel filled, within
        // msg_controllen, via the libc CMSG macros.
        unsafe {
            let mut c = libc::CMSG_FIRSTHDR(h);
            while !c.is_null() {
                if (*c).cmsg_level == libc::SOL_UDP && (*c).cmsg_type == libc::UDP_GRO {
                    let v = std::ptr::read_unaligned(libc::CMSG_DATA(c).cast::<libc::c_int>());
                    if v > 0 {
                        stride = v as usize;
                    }
                }
                c = libc::CMSG_NXTHDR(h, c);
            }
        }
        RecvMeta {
            len,
            src: u32::from_be(self.names[i].sin_addr.s_addr),
            stride,
            truncated: h.msg_flags & libc::MSG_TRUNC != 0,
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use std::net::{Ipv4Addr, UdpSocket};
    use std::os::fd::AsRawFd;

    #[test]
    fn recv_batch_reads_source_and_flags_truncation() {
        let local = SocketAddrV4::new(Ipv4Addr::LOCALHOST, 0);
        let sock = UdpSock::bind(local, false, false).unwrap();
        // SAFETY-free way to learn the port: getsockname through std.
        let std_sock = sock.file.try_clone().unwrap();
        let std_sock = UdpSocket::from(std::os::fd::OwnedFd::from(std_sock));
        let port = std_sock.local_addr().unwrap().port();
        let peer = UdpSocket::bind("127.0.0.1:0").unwrap();
        peer.send_to(&[7u8; 100], ("127.0.0.1", port)).unwrap();
        peer.send_to(&[8u8; 300], ("127.0.0.1", port)).unwrap();
        let mut batch = RecvBatch::new(4, 200);
        let mut got = 0;
        while got < 2 {
            let n = batch.recv(sock.file.as_raw_fd(), 4, true).unwrap();
            for m in &batch.meta[..n] {
                if got == 0 {
                    assert_eq!((m.len, m.truncated), (100, false));
                } else {
                    assert!(m.truncated);
                }
                assert_eq!(m.src, u32::from(Ipv4Addr::LOCALHOST));
                got += 1;
            }
        }
    }
}
