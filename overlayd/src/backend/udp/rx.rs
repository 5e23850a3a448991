//! UDP -> TUN: receive datagrams (GRO batches split by their segment
//! size), check each as untrusted input, decrement the TTL and write the
//! inner packets to this thread's TUN queue; with a virtio header,
//! same-flow TCP segments are coalesced into one write.

use super::gro::{Coalescer, PktRef};
use super::offload::VNET_HDR_LEN;
use super::peers::{PeerTable, PeerView};
use super::socket::{RecvBatch, RecvMeta};
use super::stats::{DropReason, Local};
use super::wire;
use super::worker::{iov, writev_all, Ctx};
use std::fs::File;
use std::os::fd::{AsRawFd, RawFd};
use std::sync::Arc;

/// Datagrams (or GRO batches) per recvmmsg.
const BATCH: usize = 16;
/// Receive buffer: a whole GRO batch (64 KiB) or any single datagram,
/// so oversize is seen (MSG_TRUNC) instead of silently cut.
const RECV_BUF: usize = 65_536;
/// Segments one GRO batch can hold (kernel limit).
const GRO_SEGMENTS: usize = 64;
const MAX_IOV: usize = 66;

/// Runs until stop. Each inner flow is written to one TUN queue, chosen
/// by a hash of its addresses and ports: the kernel then steers the
/// flow's packets towards us to that queue's reader (it remembers which
/// queue last wrote a flow, with a symmetric hash), spreading flows over
/// the TX threads without reordering any.
pub fn run(ctx: Ctx, tuns: Vec<Arc<File>>, sock: Arc<File>) {
    let n = if ctx.mode.batched { BATCH } else { 1 };
    let mut w = Writer {
        batch: RecvBatch::new(n, RECV_BUF),
        gro: Coalescer::new(n * GRO_SEGMENTS),
        iov: Vec::with_capacity(MAX_IOV),
        tfds: tuns.iter().map(|t| t.as_raw_fd()).collect(),
        vnet: ctx.mode.vnet,
        own: ctx.topo.own(),
        st: Local::default(),
    };
    let mut view = PeerView::new(ctx.peers.clone());
    let sfd = sock.as_raw_fd();
    while !ctx.stop.is_set() {
        let got = match w.batch.recv(sfd, n, ctx.mode.batched) {
            Ok(g) => g,
            Err(e) if transient(&e) => continue,
            Err(e) => {
                tracing::error!(error = %e, "UDP receive failed; the receiver stops");
                return;
            }
        };
        if got == 0 {
            if !ctx.stop.wait_readable(sfd) {
                break;
            }
            continue;
        }
        w.handle(view.get(), got);
        ctx.stats.flush(&mut w.st);
    }
}

struct Writer {
    batch: RecvBatch,
    gro: Coalescer,
    iov: Vec<libc::iovec>,
    tfds: Vec<RawFd>,
    vnet: bool,
    own: (u32, u32),
    st: Local,
}

impl Writer {
    fn handle(&mut self, table: &PeerTable, got: usize) {
        let mut datagrams = 0;
        for i in 0..got {
            let meta = self.batch.meta[i];
            datagrams += self.accept(table, i, meta);
        }
        self.st.udp_recv.record(datagrams);
        if self.vnet {
            self.write_groups();
        }
    }

    /// Checks datagram `i` (one or a GRO batch); returns how many
    /// datagrams it held.
    fn accept(&mut self, table: &PeerTable, i: usize, meta: RecvMeta) -> usize {
        if meta.truncated {
            self.st.drop(DropReason::Oversize);
            return 1;
        }
        if meta.len == 0 {
            self.st.drop(DropReason::Runt);
            return 1;
        }
        let stride = meta.stride.max(1);
        let segments = meta.len.div_ceil(stride);
        if !table.is_peer(meta.src) {
            for _ in 0..segments {
                self.st.drop(DropReason::UnknownSender);
            }
            return segments;
        }
        let mut off = 0;
        while off < meta.len {
            let len = stride.min(meta.len - off);
            self.one(i, off, len);
            off += len;
        }
        segments
    }

    fn one(&mut self, i: usize, off: usize, len: usize) {
        let pkt = &mut self.batch.bufs[i][off..off + len];
        if let Err(reason) = wire::check_inbound(pkt, self.own) {
            self.st.drop(reason);
            return;
        }
        if !wire::decrement_ttl(pkt) {
            self.st.drop(DropReason::TtlExpired);
            return;
        }
        if self.vnet {
            let r = PktRef {
                buf: i as u32,
                off: off as u32,
                len: len as u32,
            };
            self.gro.push(&self.batch.bufs, r);
            return;
        }
        // Without a virtio header the TUN takes the bare packet.
        let fd = self.tfds[queue_for(pkt, self.tfds.len())];
        if writev_all(fd, &[iov(pkt)]) {
            self.st.rx_packets += 1;
            self.st.rx_bytes += len as u64;
            self.st.tun_write.record(1);
        } else {
            self.st.drop(DropReason::TunWriteError);
        }
    }

    fn write_groups(&mut self) {
        self.gro.finish(&mut self.batch.bufs);
        let mut hdr = [0u8; VNET_HDR_LEN];
        for gi in 0..self.gro.groups().len() {
            let g = &self.gro.groups()[gi];
            Coalescer::vnet_hdr(g).write(&mut hdr);
            self.iov.clear();
            self.iov.push(iov(&hdr));
            let mut bytes = 0;
            let iovs = &mut self.iov;
            self.gro.for_each_part(&self.batch.bufs, g, |part| {
                bytes += part.len();
                iovs.push(iov(part));
            });
            let count = u64::from(g.count);
            let head = self.gro.head(&self.batch.bufs, g);
            let fd = self.tfds[queue_for(head, self.tfds.len())];
            if writev_all(fd, &self.iov) {
                self.st.rx_packets += count;
                self.st.rx_bytes += bytes as u64;
                self.st.tun_write.record(g.count.into());
            } else {
                for _ in 0..count {
                    self.st.drop(DropReason::TunWriteError);
                }
            }
        }
        self.gro.clear();
    }
}

/// The TUN queue of a packet's flow: addresses, and ports for TCP/UDP,
/// combined symmetrically so both directions pick the same queue.
fn queue_for(pkt: &[u8], queues: usize) -> usize {
    if queues < 2 {
        return 0;
    }
    let ihl = wire::ihl(pkt);
    let mut h = u32::from_be_bytes(wire::src(pkt)) ^ u32::from_be_bytes(wire::dst(pkt));
    if matches!(pkt[9], wire::PROTO_TCP | wire::PROTO_UDP) && pkt.len() >= ihl + 4 {
        let sp = u16::from_be_bytes([pkt[ihl], pkt[ihl + 1]]);
        let dp = u16::from_be_bytes([pkt[ihl + 2], pkt[ihl + 3]]);
        h ^= u32::from(sp ^ dp);
    }
    (h.wrapping_mul(0x9e37_79b1) >> 16) as usize % queues
}

/// Receive errors worth another try (memory pressure, signals, ICMP
/// errors queued on the socket); anything else means the socket is gone.
fn transient(e: &std::io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(
            libc::EINTR
                | libc::ENOBUFS
                | libc::ENOMEM
                | libc::ECONNREFUSED
                | libc::EHOSTUNREACH
                | libc::ENETUNREACH
        )
    )
}
