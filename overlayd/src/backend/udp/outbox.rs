//! Datagrams queued for the underlay, sent in one flush: one sendmmsg for
//! the whole batch (or one sendmsg each without batching), a run of equal
//! segments to one peer as one UDP GSO message (UDP_SEGMENT cmsg).
//!
//! Entries are (offset, length) into the worker's arena, so no pointer
//! outlives the buffers it points into and nothing is copied.

use super::socket::{sockaddr, MAX_GSO_SEGMENTS};
use super::stats::{DropReason, Local};
use std::os::fd::RawFd;

/// Most datagrams one flush carries (sendmmsg's UIO_MAXIOV is 1024).
pub const MAX_MSGS: usize = 1024;

#[derive(Debug, Clone, Copy)]
struct Entry {
    off: usize,
    len: usize,
    dst: u32,
    /// Segment size when `len` holds several equal datagrams; 0 = one.
    seg: usize,
}

impl Entry {
    fn segments(&self) -> usize {
        if self.seg == 0 {
            1
        } else {
            self.len.div_ceil(self.seg)
        }
    }
}

type CmsgBuf = [u64; 4];

pub struct Outbox {
    port: u16,
    /// UDP GSO in use; turned off for good when the kernel refuses it.
    pub gso: bool,
    entries: Vec<Entry>,
    segments: usize,
    msgs: Vec<libc::mmsghdr>,
    msg_entry: Vec<usize>,
    iovs: Vec<libc::iovec>,
    names: Vec<libc::sockaddr_in>,
    cmsgs: Vec<CmsgBuf>,
}

impl Outbox {
    pub fn new(port: u16, gso: bool) -> Outbox {
        Outbox {
            port,
            gso,
            entries: Vec::with_capacity(MAX_MSGS),
            segments: 0,
            // SAFETY: plain C structs; all-zero is valid, pointers are
            // filled in before every send.
            msgs: (0..MAX_MSGS)
                .map(|_| unsafe { std::mem::zeroed() })
                .collect(),
            msg_entry: vec![0; MAX_MSGS],
            iovs: (0..MAX_MSGS)
                .map(|_| unsafe { std::mem::zeroed() })
                .collect(),
            names: (0..MAX_MSGS)
                .map(|_| unsafe { std::mem::zeroed() })
                .collect(),
            cmsgs: vec![[0; 4]; MAX_MSGS],
        }
    }

    /// Queues `len` bytes at `off` of the arena for `dst`: one datagram,
    /// or `len / seg` (last shorter) datagrams of `seg` bytes. False when
    /// full: flush, then push again.
    pub fn push(&mut self, off: usize, len: usize, dst: u32, seg: usize) -> bool {
        let whole = Entry { off, len, dst, seg };
        if self.segments + whole.segments() > MAX_MSGS {
            return false;
        }
        self.segments += whole.segments();
        if seg == 0 {
            self.entries.push(whole);
            return true;
        }
        // One GSO send carries at most 64 segments and 65507 bytes.
        let chunk = gso_chunk(seg);
        let mut at = 0;
        while at < len {
            let n = chunk.min(len - at);
            self.entries.push(Entry {
                off: off + at,
                len: n,
                dst,
                seg,
            });
            at += n;
        }
        true
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Builds mmsghdrs for entries[from..]; returns how many.
    fn build(&mut self, arena: &[u8], from: usize) -> usize {
        let mut m = 0;
        for (ei, e) in self.entries.iter().enumerate().skip(from) {
            let gso = self.gso && e.seg != 0 && e.len > e.seg;
            let (step, count) = if gso || e.seg == 0 {
                (e.len, 1)
            } else {
                (e.seg, e.segments())
            };
            for k in 0..count {
                let off = e.off + k * step;
                let len = step.min(e.off + e.len - off);
                self.iovs[m] = libc::iovec {
                    iov_base: arena[off..].as_ptr() as *mut libc::c_void,
                    iov_len: len,
                };
                self.names[m] = sockaddr(e.dst, self.port);
                self.msg_entry[m] = ei;
                let h = &mut self.msgs[m].msg_hdr;
                h.msg_name = (&mut self.names[m] as *mut libc::sockaddr_in).cast();
                h.msg_namelen = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
                h.msg_iov = &mut self.iovs[m];
                h.msg_iovlen = 1;
                h.msg_flags = 0;
                if gso {
                    set_segment_cmsg(h, &mut self.cmsgs[m], e.seg);
                } else {
                    h.msg_control = std::ptr::null_mut();
                    h.msg_controllen = 0;
                }
                m += 1;
            }
        }
        m
    }

    /// Sends everything queued and empties the box.
    pub fn flush(&mut self, fd: RawFd, arena: &[u8], batched: bool, st: &mut Local) {
        let mut n = self.build(arena, 0);
        let mut i = 0;
        while i < n {
            let r = send(fd, &mut self.msgs[i..n], batched);
            if r > 0 {
                let r = r as usize;
                let mut datagrams = 0;
                for m in &self.msgs[i..i + r] {
                    datagrams += self.account(m, st);
                }
                st.udp_send.record(datagrams);
                i += r;
                continue;
            }
            let err = std::io::Error::last_os_error();
            let errno = err.raw_os_error().unwrap_or(0);
            let is_gso = self.msgs[i].msg_hdr.msg_controllen != 0;
            if is_gso && matches!(errno, libc::EIO | libc::EINVAL) {
                // EIO: the egress device has no checksum offload; EINVAL:
                // the kernel refuses the segmentation. Send plainly.
                tracing::warn!(error = %err, "UDP GSO refused by the kernel; sending datagrams one by one from now on");
                self.gso = false;
                st.gso_fallbacks += 1;
                let from = self.msg_entry[i];
                let built = self.build(arena, from);
                // Rebuilt messages start at 0; shift the window.
                n = built;
                i = 0;
                continue;
            }
            if errno == libc::EINTR {
                continue;
            }
            let e = &self.entries[self.msg_entry[i]];
            let dropped = if is_gso { e.segments() } else { 1 };
            for _ in 0..dropped {
                st.drop(DropReason::SendError);
            }
            i += 1;
        }
        self.entries.clear();
        self.segments = 0;
    }

    fn account(&self, m: &libc::mmsghdr, st: &mut Local) -> usize {
        // SAFETY: msg_iov points at our own iovec built for this message.
        let len = unsafe { (*m.msg_hdr.msg_iov).iov_len };
        let dgrams = if m.msg_hdr.msg_controllen != 0 {
            // SAFETY: msg_control is one of our cmsg buffers with a u16.
            let seg = unsafe { segment_of(&m.msg_hdr) };
            len.div_ceil(seg.max(1))
        } else {
            1
        };
        st.tx_packets += dgrams as u64;
        st.tx_bytes += len as u64;
        dgrams
    }
}

fn send(fd: RawFd, msgs: &mut [libc::mmsghdr], batched: bool) -> isize {
    if batched {
        // SAFETY: every msghdr points into live buffers of the Outbox
        // and the arena borrowed for the duration of flush.
        unsafe { libc::sendmmsg(fd, msgs.as_mut_ptr(), msgs.len() as libc::c_uint, 0) as isize }
    } else {
        // SAFETY: as above, the first message only.
        let r = unsafe { libc::sendmsg(fd, &msgs[0].msg_hdr, 0) };
        if r < 0 {
            -1
        } else {
            1
        }
    }
}

fn set_segment_cmsg(h: &mut libc::msghdr, buf: &mut CmsgBuf, seg: usize) {
    h.msg_control = buf.as_mut_ptr().cast();
    // SAFETY: CMSG_SPACE of a u16 fits the 32-byte buffer; the CMSG
    // macros stay within it.
    unsafe {
        h.msg_controllen = libc::CMSG_SPACE(2) as usize;
        let c = libc::CMSG_FIRSTHDR(h);
        (*c).cmsg_level = libc::SOL_UDP;
        (*c).cmsg_type = libc::UDP_SEGMENT;
        (*c).cmsg_len = libc::CMSG_LEN(2) as usize;
        // Segment sizes are at most the TUN MTU, far below u16::MAX.
        std::ptr::write_unaligned(libc::CMSG_DATA(c).cast::<u16>(), seg as u16);
    }
}

/// # Safety
/// `h.msg_control` must hold a UDP_SEGMENT cmsg built by `set_segment_cmsg`.
unsafe fn segment_of(h: &libc::msghdr) -> usize {
    let c = libc::CMSG_FIRSTHDR(h);
    usize::from(std::ptr::read_unaligned(libc::CMSG_DATA(c).cast::<u16>()))
}

/// Splits a run of `total` bytes of `seg`-byte datagrams into GSO sends
/// within the kernel's limits: at most 64 segments and 65507 bytes each.
pub fn gso_chunk(seg: usize) -> usize {
    let by_bytes = super::socket::MAX_UDP_PAYLOAD / seg.max(1);
    by_bytes.clamp(1, MAX_GSO_SEGMENTS) * seg
}
