//! TUN -> UDP: read inner packets (or TSO super-packets) from one TUN
//! queue, route each by its destination, decrement the TTL and queue it
//! for the peer's public IP; one flush per wakeup.

use super::offload::{self, VnetHdr, F_NEEDS_CSUM, GSO_NONE, VNET_HDR_LEN};
use super::outbox::Outbox;
use super::peers::{PeerTable, PeerView};
use super::stats::{DropReason, Local};
use super::wire::{self, ICMP_UNREACH_MAX, IPV4_MIN_HDR};
use super::worker::{iov, read_nb, writev_all, Ctx};
use std::fs::File;
use std::os::fd::{AsRawFd, RawFd};
use std::sync::Arc;

/// TUN reads per wakeup with batching: plain packets / TSO frames.
const READS_PLAIN: usize = 64;
const READS_VNET: usize = 8;
/// Room for one split TSO frame: 64 KiB payload plus the headers of
/// every segment.
const SPLIT_AREA: usize = 96 * 1024;
const VNET_READ: usize = VNET_HDR_LEN + 65_535;

struct Layout {
    reads: usize,
    slot: usize,
    split: usize,
}

impl Layout {
    fn new(ctx: &Ctx) -> Layout {
        let reads = match (ctx.mode.batched, ctx.mode.vnet) {
            (false, _) => 1,
            (true, false) => READS_PLAIN,
            (true, true) => READS_VNET,
        };
        // Without a virtio header the kernel segments before the TUN, so
        // a read is at most the MTU; a bit more lets us see oversize.
        let slot = if ctx.mode.vnet {
            VNET_READ
        } else {
            ctx.mtu + 64
        };
        let split = if ctx.mode.vnet { SPLIT_AREA } else { 0 };
        Layout { reads, slot, split }
    }
    fn read_off(&self, r: usize) -> usize {
        r * (self.slot + self.split)
    }
    fn split_off(&self, r: usize) -> usize {
        self.read_off(r) + self.slot
    }
}

/// Runs until stop, or until the TUN fails (the device was deleted):
/// then the thread ends and [`super::Engine::healthy`] turns false.
pub fn run(ctx: Ctx, tun: Arc<File>, sock: Arc<File>) {
    let rd = Reader {
        lay: Layout::new(&ctx),
        tfd: tun.as_raw_fd(),
        ctx: &ctx,
    };
    let lay = &rd.lay;
    let mut arena = vec![0u8; lay.reads * (lay.slot + lay.split)];
    let mut out = Outbox::new(ctx.port, ctx.mode.gso);
    let mut view = PeerView::new(ctx.peers.clone());
    let mut st = Local::default();
    let sfd = sock.as_raw_fd();
    while !ctx.stop.is_set() {
        let table = view.get();
        let mut got = 0;
        for r in 0..lay.reads {
            let off = lay.read_off(r);
            let n = match read_nb(rd.tfd, &mut arena[off..off + lay.slot]) {
                Ok(Some(n)) => n,
                Ok(None) => break,
                Err(e) => {
                    tracing::error!(error = %e, "TUN read failed; this queue stops");
                    return;
                }
            };
            got += 1;
            if let Some((at, len, seg, dst)) = rd.handle(table, &mut arena, r, n, &mut st) {
                if !out.push(at, len, dst, seg) {
                    out.flush(sfd, &arena, ctx.mode.batched, &mut st);
                    out.push(at, len, dst, seg);
                }
            }
            if !ctx.mode.batched {
                out.flush(sfd, &arena, false, &mut st);
            }
        }
        if !out.is_empty() {
            out.flush(sfd, &arena, ctx.mode.batched, &mut st);
        }
        ctx.stats.flush(&mut st);
        if got == 0 && !ctx.stop.wait_readable(rd.tfd) {
            break;
        }
    }
}

struct Reader<'a> {
    ctx: &'a Ctx,
    lay: Layout,
    tfd: RawFd,
}

impl Reader<'_> {
    /// One TUN read in slot `r`: returns what to send (offset, length,
    /// segment size or 0, peer IP) or None when dropped/answered.
    fn handle(
        &self,
        table: &PeerTable,
        arena: &mut [u8],
        r: usize,
        n: usize,
        st: &mut Local,
    ) -> Option<(usize, usize, usize, u32)> {
        let (ctx, lay, tfd) = (self.ctx, &self.lay, self.tfd);
        let off = lay.read_off(r);
        let (hdr, start) = if ctx.mode.vnet {
            if n < VNET_HDR_LEN {
                st.drop(DropReason::Runt);
                return None;
            }
            (
                VnetHdr::parse(&arena[off..off + VNET_HDR_LEN]),
                off + VNET_HDR_LEN,
            )
        } else {
            (VnetHdr::default(), off)
        };
        let end = off + n;
        let pkt = &mut arena[start..end];
        let dst = match route(ctx, table, pkt, tfd, st) {
            Ok(d) => d,
            Err(reason) => {
                st.drop(reason);
                return None;
            }
        };
        if !wire::decrement_ttl(pkt) {
            st.drop(DropReason::TtlExpired);
            return None;
        }
        if hdr.gso_type == GSO_NONE {
            if hdr.flags & F_NEEDS_CSUM != 0 {
                if let Err(reason) = offload::finish_partial(pkt, &hdr) {
                    st.drop(reason);
                    return None;
                }
            }
            st.tun_read.record(1);
            if pkt.len() > ctx.mtu {
                st.drop(DropReason::Oversize);
                return None;
            }
            return Some((start, pkt.len(), 0, dst));
        }
        let split_off = lay.split_off(r);
        let (head, area) = arena.split_at_mut(split_off);
        let split = match offload::split(&head[start..end], &hdr, &mut area[..lay.split]) {
            Ok(s) => s,
            Err(reason) => {
                st.drop(reason);
                return None;
            }
        };
        st.tun_read.record(split.count);
        if split.seg > ctx.mtu {
            st.drop(DropReason::Oversize);
            return None;
        }
        Some((split_off, split.total, split.seg, dst))
    }
}

/// The peer for this packet's destination, or why not. A destination in
/// the Network that nobody leases is answered with ICMP net-unreachable
/// (flannel's rule). flannel also answers our own subnet and addresses
/// outside the Network that way (its route list has neither); we drop
/// them silently, as the kernel never routes them to flannel0 unless the
/// node's routes are broken.
fn route(
    ctx: &Ctx,
    table: &PeerTable,
    pkt: &[u8],
    tfd: RawFd,
    st: &mut Local,
) -> Result<u32, DropReason> {
    if pkt.len() < IPV4_MIN_HDR {
        return Err(DropReason::Runt);
    }
    if pkt[0] >> 4 != 4 {
        return Err(DropReason::TunNotIpv4);
    }
    let d = wire::dst_u32(pkt);
    let own = ctx.topo.own();
    let net = ctx.topo.net();
    if d & own.1 == own.0 {
        return Err(DropReason::OwnSubnet);
    }
    if d & net.1 != net.0 {
        return Err(DropReason::OutsideNetwork);
    }
    match table.route(d) {
        Some(peer) => Ok(peer),
        None => {
            if wire::wants_unreachable(pkt) && send_unreachable(ctx, pkt, tfd) {
                st.icmp_unreachable += 1;
            }
            Err(DropReason::NoRoute)
        }
    }
}

fn send_unreachable(ctx: &Ctx, pkt: &[u8], tfd: RawFd) -> bool {
    let mut buf = [0u8; VNET_HDR_LEN + ICMP_UNREACH_MAX];
    let len = wire::build_net_unreachable(pkt, ctx.tun_addr, &mut buf[VNET_HDR_LEN..]);
    // A zeroed virtio header: a plain packet whose checksums are final.
    let from = if ctx.mode.vnet { 0 } else { VNET_HDR_LEN };
    writev_all(tfd, &[iov(&buf[from..VNET_HDR_LEN + len])])
}
