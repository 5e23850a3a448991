//! flannel's udp wire format: one raw inner IPv4 packet per UDP datagram.
//!
//! Pure functions on packet bytes: the Internet checksum, the TTL
//! decrement with flannel's incremental checksum patch, the checks an
//! untrusted datagram must pass before it reaches our TUN, and the ICMP
//! net-unreachable flannel writes back for a destination nobody leases.

use super::stats::DropReason;
use std::net::Ipv4Addr;

/// IPv4 header without options.
pub const IPV4_MIN_HDR: usize = 20;
pub const PROTO_ICMP: u8 = 1;
pub const PROTO_TCP: u8 = 6;
pub const PROTO_UDP: u8 = 17;
/// flannel writes its ICMP errors with this TTL (`send_net_unreachable`).
pub const ICMP_ERROR_TTL: u8 = 8;
/// flannel's quote buffer holds at most a 60-byte header; it refuses
/// headers of 60 bytes and more (`off_iph_len >= sizeof(iphdr) + MAX_IPOPTLEN`).
const ICMP_QUOTE_MAX_IHL: usize = 60;
/// Largest ICMP error we build: 20 + 8 + 56 + 8.
pub const ICMP_UNREACH_MAX: usize = 20 + 8 + ICMP_QUOTE_MAX_IHL - 4 + 8;

/// Ones'-complement sum of `data` (RFC 1071), added to `initial`, not
/// folded. Words are read in native order; `fold` turns the result into
/// the network-order value (the sum is byte-order independent).
pub fn sum(data: &[u8], initial: u64) -> u64 {
    let mut acc = initial;
    let mut chunks = data.chunks_exact(8);
    for c in &mut chunks {
        let w = u64::from_ne_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]);
        let (s, carry) = acc.overflowing_add(w);
        acc = s + u64::from(carry);
    }
    let rest = chunks.remainder();
    if !rest.is_empty() {
        // Zero padding at the end, as RFC 1071 pads an odd last byte.
        let mut tail = [0u8; 8];
        tail[..rest.len()].copy_from_slice(rest);
        let (s, carry) = acc.overflowing_add(u64::from_ne_bytes(tail));
        acc = s + u64::from(carry);
    }
    acc
}

/// Folds a native-order sum to 16 bits, returned as the big-endian value.
pub fn fold(mut acc: u64) -> u16 {
    while acc > 0xffff {
        acc = (acc & 0xffff) + (acc >> 16);
    }
    // Truncation is exact: the loop leaves at most 16 bits.
    u16::from_be(acc as u16)
}

/// Adds a big-endian 16-bit value to a native-order sum.
pub fn add_be16(acc: u64, v: u16) -> u64 {
    acc + u64::from(u16::from_ne_bytes(v.to_be_bytes()))
}

/// The Internet checksum of `data`: the value to store, big-endian.
pub fn checksum(data: &[u8]) -> u16 {
    !fold(sum(data, 0))
}

/// Native-order sum of the IPv4 pseudo-header (RFC 793/768).
pub fn pseudo_sum(src: [u8; 4], dst: [u8; 4], proto: u8, len: u16) -> u64 {
    let mut acc = sum(&src, 0);
    acc = sum(&dst, acc);
    acc = add_be16(acc, u16::from(proto));
    add_be16(acc, len)
}

/// Rewrites the IPv4 header checksum of `hdr` (the first IHL*4 bytes).
pub fn fix_ipv4_checksum(hdr: &mut [u8]) {
    hdr[10] = 0;
    hdr[11] = 0;
    let c = checksum(hdr);
    hdr[10..12].copy_from_slice(&c.to_be_bytes());
}

pub fn ihl(pkt: &[u8]) -> usize {
    usize::from(pkt[0] & 0x0f) * 4
}

pub fn total_len(pkt: &[u8]) -> usize {
    usize::from(u16::from_be_bytes([pkt[2], pkt[3]]))
}

pub fn src(pkt: &[u8]) -> [u8; 4] {
    [pkt[12], pkt[13], pkt[14], pkt[15]]
}

pub fn dst(pkt: &[u8]) -> [u8; 4] {
    [pkt[16], pkt[17], pkt[18], pkt[19]]
}

pub fn dst_u32(pkt: &[u8]) -> u32 {
    u32::from_be_bytes(dst(pkt))
}

/// Decrements the TTL of the IPv4 header at the start of `pkt` and
/// patches its checksum incrementally (RFC 1624: the TTL is the high byte
/// of its 16-bit word, so the sum rises by 0x0100, with end-around carry).
/// The arithmetic is flannel's `decrement_ttl`, so the bytes match its
/// output exactly, including its 0x0000 for a sum that lands on 0xffff.
/// Returns false (packet to drop) when the TTL reaches 0.
pub fn decrement_ttl(pkt: &mut [u8]) -> bool {
    let ttl = pkt[8].wrapping_sub(1);
    pkt[8] = ttl;
    if ttl == 0 {
        return false;
    }
    // flannel adds htons(0x100) to the checksum read as a little-endian
    // u16, carrying once more at the top: that is a ones'-complement add
    // in the byte-swapped domain.
    let le = u16::from_le_bytes([pkt[10], pkt[11]]);
    let le = if le >= 0xfffe {
        le.wrapping_add(2)
    } else {
        le + 1
    };
    pkt[10..12].copy_from_slice(&le.to_le_bytes());
    true
}

/// The checks every datagram from the underlay must pass before its
/// payload may be written to our TUN. `own` is our subnet (network
/// address, mask). flannel only rejects < 20 bytes; the rest is ours.
pub fn check_inbound(pkt: &[u8], own: (u32, u32)) -> Result<(), DropReason> {
    if pkt.len() < IPV4_MIN_HDR {
        return Err(DropReason::Runt);
    }
    if pkt[0] >> 4 != 4 {
        return Err(DropReason::NotIpv4);
    }
    let hl = ihl(pkt);
    if hl < IPV4_MIN_HDR || hl > pkt.len() {
        return Err(DropReason::BadHeaderLen);
    }
    // Strict both ways: a flannel peer sends exactly what its TUN read
    // (the datagram is the packet); padding or a short datagram means a
    // forged or broken sender.
    if total_len(pkt) != pkt.len() {
        return Err(DropReason::BadTotalLen);
    }
    if fold(sum(&pkt[..hl], 0)) != 0xffff {
        return Err(DropReason::BadChecksum);
    }
    // flannel writes any destination into its TUN; we only accept our
    // own subnet, else a datagram could inject packets for any address
    // through our TUN into the node's routing.
    if dst_u32(pkt) & own.1 != own.0 {
        return Err(DropReason::NotOurSubnet);
    }
    Ok(())
}

/// Whether this offending packet is answered with net-unreachable.
/// flannel's rule: not for non-first fragments, not for a header of 60
/// bytes or more (its quote buffer), and never about ICMP. We differ in
/// one point: ICMP queries (echo, timestamp, information, address mask
/// requests) are answered, so `ping` reports "Destination Net
/// Unreachable"; ICMP errors and replies never are (RFC 1122 3.2.2).
/// Also not for a header longer than the packet (flannel would quote
/// stale buffer bytes).
pub fn wants_unreachable(pkt: &[u8]) -> bool {
    if pkt.len() < IPV4_MIN_HDR {
        return false;
    }
    let hl = ihl(pkt);
    let frag_offset = u16::from_be_bytes([pkt[6], pkt[7]]) & 0x1fff;
    if !(IPV4_MIN_HDR..ICMP_QUOTE_MAX_IHL).contains(&hl) || hl > pkt.len() || frag_offset != 0 {
        return false;
    }
    pkt[9] != PROTO_ICMP || pkt.get(hl).is_some_and(|t| ICMP_QUERIES.contains(t))
}

/// ICMP request types: echo, timestamp, information, address mask.
const ICMP_QUERIES: [u8; 4] = [8, 13, 15, 17];

/// Builds flannel's ICMP type 3 code 0 for `offender` into `out` and
/// returns its length: IPv4 header (TTL 8, id 0, no DF, source = the TUN
/// address, destination = the offender's source), ICMP header with zero
/// "unused" word, then the offender's IP header and 8 payload bytes
/// (zeros past its end, where flannel would copy stale buffer bytes).
/// Call only when [`wants_unreachable`] holds.
pub fn build_net_unreachable(offender: &[u8], tun_addr: Ipv4Addr, out: &mut [u8]) -> usize {
    let quote = ihl(offender) + 8;
    let len = IPV4_MIN_HDR + 8 + quote;
    let out = &mut out[..len];
    out.fill(0);
    out[0] = 0x45;
    out[2..4].copy_from_slice(&(len as u16).to_be_bytes());
    out[8] = ICMP_ERROR_TTL;
    out[9] = PROTO_ICMP;
    out[12..16].copy_from_slice(&tun_addr.octets());
    out[16..20].copy_from_slice(&src(offender));
    fix_ipv4_checksum(&mut out[..IPV4_MIN_HDR]);
    let icmp = &mut out[IPV4_MIN_HDR..];
    icmp[0] = 3; // destination unreachable
    icmp[1] = 0; // net unreachable
    let have = quote.min(offender.len());
    icmp[8..8 + have].copy_from_slice(&offender[..have]);
    let c = checksum(icmp);
    icmp[2..4].copy_from_slice(&c.to_be_bytes());
    len
}

#[cfg(test)]
#[path = "wire_tests.rs"]
pub(crate) mod tests;
