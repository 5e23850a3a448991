//! The virtio_net_hdr that precedes every TUN read and write with
//! IFF_VNET_HDR, finishing partial checksums, and splitting a TSO/USO
//! super-packet read from the TUN into MTU-sized IPv4 packets with their
//! own headers and full checksums (what a flannel peer expects on the
//! wire: one complete inner packet per datagram).

use super::stats::DropReason;
use super::wire::{self, IPV4_MIN_HDR, PROTO_TCP, PROTO_UDP};

pub const VNET_HDR_LEN: usize = 10;
pub const F_NEEDS_CSUM: u8 = 1;
pub const GSO_NONE: u8 = 0;
pub const GSO_TCPV4: u8 = 1;
pub const GSO_UDP_L4: u8 = 5;

/// virtio_net_hdr (legacy layout, host byte order as the TUN uses it).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct VnetHdr {
    pub flags: u8,
    pub gso_type: u8,
    pub hdr_len: u16,
    pub gso_size: u16,
    pub csum_start: u16,
    pub csum_offset: u16,
}

impl VnetHdr {
    pub fn parse(b: &[u8]) -> VnetHdr {
        let u = |i: usize| u16::from_ne_bytes([b[i], b[i + 1]]);
        VnetHdr {
            flags: b[0],
            gso_type: b[1],
            hdr_len: u(2),
            gso_size: u(4),
            csum_start: u(6),
            csum_offset: u(8),
        }
    }

    pub fn write(&self, b: &mut [u8]) {
        b[0] = self.flags;
        b[1] = self.gso_type;
        b[2..4].copy_from_slice(&self.hdr_len.to_ne_bytes());
        b[4..6].copy_from_slice(&self.gso_size.to_ne_bytes());
        b[6..8].copy_from_slice(&self.csum_start.to_ne_bytes());
        b[8..10].copy_from_slice(&self.csum_offset.to_ne_bytes());
    }
}

/// Completes a CHECKSUM_PARTIAL packet: the field at csum_start +
/// csum_offset holds the pseudo-header sum; sum from csum_start to the
/// end and store the complement.
pub fn finish_partial(pkt: &mut [u8], h: &VnetHdr) -> Result<(), DropReason> {
    let start = usize::from(h.csum_start);
    let field = start + usize::from(h.csum_offset);
    if start >= pkt.len() || field + 2 > pkt.len() {
        return Err(DropReason::BadOffload);
    }
    let c = !wire::fold(wire::sum(&pkt[start..], 0));
    pkt[field..field + 2].copy_from_slice(&c.to_be_bytes());
    Ok(())
}

/// The result of a split: `count` packets of `seg` bytes (the last may be
/// shorter), `total` bytes, contiguous at the start of `out`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Split {
    pub seg: usize,
    pub count: usize,
    pub total: usize,
}

/// Transport header length and protocol of a GSO frame, recomputed from
/// the packet (the kernel's hdr_len cannot be trusted when forwarding).
fn gso_headers(frame: &[u8], h: &VnetHdr) -> Result<(usize, u8), DropReason> {
    if frame.len() < IPV4_MIN_HDR || frame[0] >> 4 != 4 {
        return Err(DropReason::NotIpv4);
    }
    let ihl = wire::ihl(frame);
    if ihl < IPV4_MIN_HDR || usize::from(h.csum_start) != ihl {
        return Err(DropReason::BadOffload);
    }
    let (proto, l4) = match h.gso_type {
        GSO_TCPV4 if frame[9] == PROTO_TCP && frame.len() >= ihl + 20 => {
            (PROTO_TCP, usize::from(frame[ihl + 12] >> 4) * 4)
        }
        GSO_UDP_L4 if frame[9] == PROTO_UDP => (PROTO_UDP, 8),
        _ => return Err(DropReason::BadOffload),
    };
    if l4 < 8 || ihl + l4 > frame.len() {
        return Err(DropReason::BadOffload);
    }
    Ok((ihl + l4, proto))
}

/// Splits the GSO `frame` (IPv4 TCP or UDP, TTL already decremented)
/// into `out`. Each packet gets IPv4 id + i, its own total length and
/// header checksum; TCP: seq + i*gso_size, FIN/PSH only on the last, CWR
/// only on the first; UDP: its own length. Transport checksums are
/// computed in full.
pub fn split(frame: &[u8], h: &VnetHdr, out: &mut [u8]) -> Result<Split, DropReason> {
    let (hdr_len, proto) = gso_headers(frame, h)?;
    let gso = usize::from(h.gso_size);
    let payload = &frame[hdr_len..];
    if gso == 0 || payload.is_empty() {
        return Err(DropReason::BadOffload);
    }
    let count = payload.len().div_ceil(gso);
    let total = count * hdr_len + payload.len();
    if total > out.len() {
        return Err(DropReason::BadOffload);
    }
    let ihl = wire::ihl(frame);
    let id = u16::from_be_bytes([frame[4], frame[5]]);
    let seq = u32::from_be_bytes([
        frame[ihl + 4],
        frame[ihl + 5],
        frame[ihl + 6],
        frame[ihl + 7],
    ]);
    let mut at = 0;
    for (i, chunk) in payload.chunks(gso).enumerate() {
        let pkt = &mut out[at..at + hdr_len + chunk.len()];
        pkt[..hdr_len].copy_from_slice(&frame[..hdr_len]);
        pkt[hdr_len..].copy_from_slice(chunk);
        let len = pkt.len();
        pkt[2..4].copy_from_slice(&(len as u16).to_be_bytes());
        pkt[4..6].copy_from_slice(&id.wrapping_add(i as u16).to_be_bytes());
        wire::fix_ipv4_checksum(&mut pkt[..ihl]);
        let last = i + 1 == count;
        if proto == PROTO_TCP {
            let s = seq.wrapping_add((i * gso) as u32);
            pkt[ihl + 4..ihl + 8].copy_from_slice(&s.to_be_bytes());
            if !last {
                pkt[ihl + 13] &= !0x09; // FIN, PSH
            }
            if i > 0 {
                pkt[ihl + 13] &= !0x80; // CWR
            }
        }
        fix_l4_checksum(pkt, ihl, proto);
        at += len;
    }
    Ok(Split {
        seg: hdr_len + gso,
        count,
        total,
    })
}

/// Computes the full TCP or UDP checksum of an IPv4 packet in place (UDP
/// also gets its length field).
pub fn fix_l4_checksum(pkt: &mut [u8], ihl: usize, proto: u8) {
    let l4_len = pkt.len() - ihl;
    let field = ihl + if proto == PROTO_TCP { 16 } else { 6 };
    if proto == PROTO_UDP {
        pkt[ihl + 4..ihl + 6].copy_from_slice(&(l4_len as u16).to_be_bytes());
    }
    pkt[field] = 0;
    pkt[field + 1] = 0;
    let pseudo = wire::pseudo_sum(wire::src(pkt), wire::dst(pkt), proto, l4_len as u16);
    let mut c = !wire::fold(wire::sum(&pkt[ihl..], pseudo));
    if proto == PROTO_UDP && c == 0 {
        c = 0xffff; // 0 means "no checksum" in UDP
    }
    pkt[field..field + 2].copy_from_slice(&c.to_be_bytes());
}

/// Whether the TCP or UDP checksum of an IPv4 packet verifies.
pub fn l4_checksum_ok(pkt: &[u8], ihl: usize, proto: u8) -> bool {
    let l4_len = pkt.len() - ihl;
    let pseudo = wire::pseudo_sum(wire::src(pkt), wire::dst(pkt), proto, l4_len as u16);
    wire::fold(wire::sum(&pkt[ihl..], pseudo)) == 0xffff
}

#[cfg(test)]
#[path = "offload_tests.rs"]
pub(crate) mod tests;
