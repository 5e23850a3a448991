//! The persistent TUN device (`flannel0`): IFF_TUN|IFF_NO_PI, optionally
//! IFF_MULTI_QUEUE (one fd per queue) and IFF_VNET_HDR with offloads.
//!
//! TUNSETPERSIST keeps the netdev, its address and its routes when the
//! engine stops, so a restarted engine re-attaches to the same ifindex.
//! The offload mask is per device and outlives the fds, so every attach
//! sets it again (or clears it when offloads are off).

use super::UdpError;
use std::fs::{File, OpenOptions};
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::fs::OpenOptionsExt;

/// TUN txqueuelen we raise the device to (the kernel default is 500).
pub const TX_QUEUE_LEN: i32 = 10_000;

const OFFLOAD_TSO: libc::c_uint = libc::TUN_F_CSUM | libc::TUN_F_TSO4 | libc::TUN_F_TSO6;
const OFFLOAD_USO: libc::c_uint = libc::TUN_F_USO4 | libc::TUN_F_USO6;

/// `struct ifreq`: the name, then a 24-byte union we fill by hand.
#[repr(C)]
struct IfReq {
    name: [u8; libc::IFNAMSIZ],
    data: [u8; 24],
}

impl IfReq {
    fn new(name: &str) -> Result<IfReq, UdpError> {
        let bytes = name.as_bytes();
        if bytes.is_empty() || bytes.len() >= libc::IFNAMSIZ || bytes.contains(&0) {
            return Err(UdpError::BadConfig(format!("invalid TUN name {name:?}")));
        }
        let mut req = IfReq {
            name: [0; libc::IFNAMSIZ],
            data: [0; 24],
        };
        req.name[..bytes.len()].copy_from_slice(bytes);
        Ok(req)
    }
}

/// What attaching gave us.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TunInfo {
    pub ifindex: u32,
    pub multiqueue: bool,
    pub vnet_hdr: bool,
    /// TSO4/TSO6 + CSUM accepted by TUNSETOFFLOAD.
    pub tso: bool,
    /// USO4/USO6 accepted as well (Linux >= 6.2).
    pub uso: bool,
}

/// The attached queues of the TUN device.
pub struct Tun {
    pub queues: Vec<File>,
    pub info: TunInfo,
}

fn ioctl_ptr<T>(fd: RawFd, req: libc::Ioctl, arg: *mut T) -> std::io::Result<()> {
    // SAFETY: `arg` points to a live, correctly sized value for `req`.
    let rc = unsafe { libc::ioctl(fd, req, arg) };
    if rc < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

fn ioctl_val(fd: RawFd, req: libc::Ioctl, arg: libc::c_ulong) -> std::io::Result<()> {
    // SAFETY: these TUN ioctls take an integer argument by value.
    let rc = unsafe { libc::ioctl(fd, req, arg) };
    if rc < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

fn attach_one(name: &str, multiqueue: bool, vnet: bool) -> std::io::Result<File> {
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
        .open("/dev/net/tun")?;
    let mut flags = libc::IFF_TUN | libc::IFF_NO_PI;
    if multiqueue {
        flags |= libc::IFF_MULTI_QUEUE;
    }
    if vnet {
        flags |= libc::IFF_VNET_HDR;
    }
    let mut req = IfReq::new(name).map_err(std::io::Error::other)?;
    // Flag values fit in the short the kernel reads.
    req.data[..2].copy_from_slice(&(flags as i16).to_ne_bytes());
    ioctl_ptr(file.as_raw_fd(), libc::TUNSETIFF, &mut req)?;
    Ok(file)
}

impl Tun {
    /// Creates or attaches `name` with `queues` queues. An existing
    /// persistent device keeps its queue mode (the kernel refuses a
    /// different IFF_MULTI_QUEUE with EINVAL), so on EINVAL we attach in
    /// the other mode and say so.
    pub fn open(name: &str, queues: usize, vnet: bool) -> Result<Tun, UdpError> {
        let err = |what: &'static str| {
            move |source| UdpError::Tun {
                name: name.to_string(),
                what,
                source,
            }
        };
        let want_mq = queues > 1;
        let (first, multiqueue) = match attach_one(name, want_mq, vnet) {
            Ok(f) => (f, want_mq),
            Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {
                tracing::warn!(
                    device = name,
                    multiqueue = !want_mq,
                    "existing TUN has the other queue mode; attaching in that mode"
                );
                (
                    attach_one(name, !want_mq, vnet).map_err(err("attach"))?,
                    !want_mq,
                )
            }
            Err(e) => return Err(err("attach")(e)),
        };
        ioctl_val(first.as_raw_fd(), libc::TUNSETPERSIST, 1).map_err(err("TUNSETPERSIST"))?;
        let mut files = vec![first];
        let n = if multiqueue { queues.max(1) } else { 1 };
        while files.len() < n {
            files.push(attach_one(name, multiqueue, vnet).map_err(err("attach queue"))?);
        }
        let (tso, uso) = set_offload(&files[0], vnet).map_err(err("TUNSETOFFLOAD"))?;
        let ifindex = if_index(name).map_err(err("SIOCGIFINDEX"))?;
        if let Err(e) = raise_txqueuelen(name) {
            tracing::warn!(device = name, error = %e, "cannot raise txqueuelen");
        }
        let info = TunInfo {
            ifindex,
            multiqueue,
            vnet_hdr: vnet,
            tso,
            uso,
        };
        Ok(Tun {
            queues: files,
            info,
        })
    }
}

/// Sets CSUM|TSO4|TSO6 (+USO4|USO6 when the kernel takes them) with a
/// virtio header, or clears the sticky mask without one.
fn set_offload(fd: &File, vnet: bool) -> std::io::Result<(bool, bool)> {
    let fd = fd.as_raw_fd();
    if !vnet {
        ioctl_val(fd, libc::TUNSETOFFLOAD, 0)?;
        return Ok((false, false));
    }
    let with_uso = libc::c_ulong::from(OFFLOAD_TSO | OFFLOAD_USO);
    if ioctl_val(fd, libc::TUNSETOFFLOAD, with_uso).is_ok() {
        return Ok((true, true));
    }
    match ioctl_val(fd, libc::TUNSETOFFLOAD, libc::c_ulong::from(OFFLOAD_TSO)) {
        Ok(()) => Ok((true, false)),
        Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {
            // Keep the virtio header (we still parse it) but no offloads.
            ioctl_val(fd, libc::TUNSETOFFLOAD, 0)?;
            Ok((false, false))
        }
        Err(e) => Err(e),
    }
}

fn inet_socket() -> std::io::Result<File> {
    // SAFETY: plain socket(2); the fd is owned by the File below.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: fd is a fresh descriptor nobody else owns.
    Ok(unsafe { <File as std::os::fd::FromRawFd>::from_raw_fd(fd) })
}

fn if_index(name: &str) -> std::io::Result<u32> {
    let sock = inet_socket()?;
    let mut req = IfReq::new(name).map_err(std::io::Error::other)?;
    ioctl_ptr(sock.as_raw_fd(), libc::SIOCGIFINDEX, &mut req)?;
    let idx = i32::from_ne_bytes([req.data[0], req.data[1], req.data[2], req.data[3]]);
    u32::try_from(idx).map_err(std::io::Error::other)
}

/// Raises txqueuelen to [`TX_QUEUE_LEN`] unless it is already higher.
fn raise_txqueuelen(name: &str) -> std::io::Result<()> {
    let sock = inet_socket()?;
    let mut req = IfReq::new(name).map_err(std::io::Error::other)?;
    ioctl_ptr(sock.as_raw_fd(), libc::SIOCGIFTXQLEN, &mut req)?;
    let cur = i32::from_ne_bytes([req.data[0], req.data[1], req.data[2], req.data[3]]);
    if cur >= TX_QUEUE_LEN {
        return Ok(());
    }
    req.data[..4].copy_from_slice(&TX_QUEUE_LEN.to_ne_bytes());
    ioctl_ptr(sock.as_raw_fd(), libc::SIOCSIFTXQLEN, &mut req)
}

/// Turns off persistence so the device disappears with its last fd.
/// For the daemon's "remove the backend" path and for tests.
pub fn remove_persistent(name: &str) -> Result<(), UdpError> {
    let err = |what: &'static str| {
        move |source| UdpError::Tun {
            name: name.to_string(),
            what,
            source,
        }
    };
    // Attach in whichever mode the device has, then clear persist.
    let f = attach_one(name, false, false)
        .or_else(|_| attach_one(name, true, false))
        .map_err(err("attach"))?;
    ioctl_val(f.as_raw_fd(), libc::TUNSETPERSIST, 0).map_err(err("TUNSETPERSIST 0"))
}
