#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use super::*;
use crate::backend::udp::wire::tests::Rng;

/// Reference Internet checksum, written independently of `wire::sum`:
/// big-endian 16-bit words, one at a time.
pub fn ref_sum(data: &[u8]) -> u32 {
    let mut s: u32 = 0;
    for c in data.chunks(2) {
        let w = u32::from(c[0]) << 8 | u32::from(*c.get(1).unwrap_or(&0));
        s += w;
    }
    while s > 0xffff {
        s = (s & 0xffff) + (s >> 16);
    }
    s
}

/// Whether the IPv4 header and the TCP/UDP checksum of `p` verify.
pub fn ref_verifies(p: &[u8]) -> bool {
    let ihl = usize::from(p[0] & 15) * 4;
    let l4 = p.len() - ihl;
    let mut pseudo = p[12..20].to_vec();
    pseudo.extend_from_slice(&[0, p[9], (l4 >> 8) as u8, l4 as u8]);
    pseudo.extend_from_slice(&p[ihl..]);
    ref_sum(&p[..ihl]) == 0xffff && ref_sum(&pseudo) == 0xffff
}

/// A TCP packet 10.244.1.2:5001 -> 10.244.2.3:40000 with a timestamp
/// option (header 32 bytes), `payload`, flags, seq; checksums final.
pub fn tcp_packet(payload: &[u8], flags: u8, seq: u32, id: u16) -> Vec<u8> {
    let total = 20 + 32 + payload.len();
    let mut p = vec![0u8; total];
    p[0] = 0x45;
    p[2..4].copy_from_slice(&(total as u16).to_be_bytes());
    p[4..6].copy_from_slice(&id.to_be_bytes());
    p[6] = 0x40; // DF
    p[8] = 64;
    p[9] = 6;
    p[12..16].copy_from_slice(&[10, 244, 1, 2]);
    p[16..20].copy_from_slice(&[10, 244, 2, 3]);
    let t = &mut p[20..52];
    t[0..2].copy_from_slice(&5001u16.to_be_bytes());
    t[2..4].copy_from_slice(&40000u16.to_be_bytes());
    t[4..8].copy_from_slice(&seq.to_be_bytes());
    t[8..12].copy_from_slice(&0x0a0b_0c0du32.to_be_bytes());
    t[12] = 8 << 4;
    t[13] = flags;
    t[14..16].copy_from_slice(&502u16.to_be_bytes());
    t[20..32].copy_from_slice(&[1, 1, 8, 10, 0, 0, 0, 7, 0, 0, 0, 9]);
    p[52..].copy_from_slice(payload);
    wire::fix_ipv4_checksum(&mut p[..20]);
    fix_l4_checksum(&mut p, 20, PROTO_TCP);
    p
}

pub fn pattern(n: usize) -> Vec<u8> {
    (0..n).map(|i| (i * 7 + i / 251) as u8).collect()
}

fn tso_hdr(gso: u16) -> VnetHdr {
    VnetHdr {
        flags: F_NEEDS_CSUM,
        gso_type: GSO_TCPV4,
        hdr_len: 9999, // never trusted
        gso_size: gso,
        csum_start: 20,
        csum_offset: 16,
    }
}

#[test]
fn vnet_header_round_trips() {
    let h = tso_hdr(1400);
    let mut b = [0u8; VNET_HDR_LEN];
    h.write(&mut b);
    assert_eq!(VnetHdr::parse(&b), h);
    assert_eq!(b[0..2], [1, 1]);
}

#[test]
fn tso_frame_splits_into_mtu_packets_with_fixed_headers() {
    let payload = pattern(3000);
    let frame = tcp_packet(&payload, 0x19, 1_000_000, 0x4242); // ACK|PSH|FIN
    let mut out = vec![0u8; 8192];
    let s = split(&frame, &tso_hdr(1400), &mut out).unwrap();
    assert_eq!(
        s,
        Split {
            seg: 52 + 1400,
            count: 3,
            total: 3 * 52 + 3000
        }
    );
    let mut at = 0;
    let mut joined = Vec::new();
    for (i, want) in [1400usize, 1400, 200].iter().enumerate() {
        let p = &out[at..at + 52 + want];
        assert!(ref_verifies(p), "segment {i} checksums");
        assert_eq!(wire::total_len(p), 52 + want);
        assert_eq!(u16::from_be_bytes([p[4], p[5]]), 0x4242 + i as u16);
        let seq = u32::from_be_bytes([p[24], p[25], p[26], p[27]]);
        assert_eq!(seq, 1_000_000 + 1400 * i as u32);
        let last = i == 2;
        assert_eq!(
            p[33],
            if last { 0x19 } else { 0x10 },
            "FIN/PSH on the last only"
        );
        assert_eq!(&p[40..52], &frame[40..52], "options kept");
        joined.extend_from_slice(&p[52..]);
        at += p.len();
    }
    assert_eq!(joined, payload);
}

#[test]
fn uso_frame_splits_into_udp_datagrams() {
    let mut frame = vec![0u8; 28 + 2500];
    frame[0] = 0x45;
    frame[2..4].copy_from_slice(&((28 + 2500) as u16).to_be_bytes());
    frame[8] = 63;
    frame[9] = PROTO_UDP;
    frame[12..20].copy_from_slice(&[10, 244, 1, 2, 10, 244, 2, 3]);
    frame[20..22].copy_from_slice(&4433u16.to_be_bytes());
    frame[22..24].copy_from_slice(&443u16.to_be_bytes());
    frame[28..].copy_from_slice(&pattern(2500));
    let h = VnetHdr {
        flags: F_NEEDS_CSUM,
        gso_type: GSO_UDP_L4,
        gso_size: 1200,
        csum_start: 20,
        csum_offset: 6,
        ..VnetHdr::default()
    };
    let mut out = vec![0u8; 8192];
    let s = split(&frame, &h, &mut out).unwrap();
    assert_eq!((s.seg, s.count), (1228, 3));
    let last = &out[2 * 1228..s.total];
    assert_eq!(last.len(), 28 + 100);
    assert_eq!(u16::from_be_bytes([last[24], last[25]]), 108, "UDP length");
    assert!(ref_verifies(&out[..1228]) && ref_verifies(last));
}

#[test]
fn partial_checksum_is_finished() {
    let mut p = tcp_packet(&pattern(999), 0x18, 5, 1);
    assert!(ref_verifies(&p));
    // What the kernel hands over for CHECKSUM_PARTIAL: the pseudo sum.
    let seed = wire::fold(wire::pseudo_sum(
        wire::src(&p),
        wire::dst(&p),
        PROTO_TCP,
        (p.len() - 20) as u16,
    ));
    p[36..38].copy_from_slice(&seed.to_be_bytes());
    assert!(!ref_verifies(&p));
    finish_partial(&mut p, &tso_hdr(0)).unwrap();
    assert!(ref_verifies(&p));
}

#[test]
fn unsplittable_frames_are_refused() {
    let frame = tcp_packet(&pattern(3000), 0x10, 1, 1);
    let mut out = vec![0u8; 8192];
    let bad = |h: VnetHdr, f: &[u8], out: &mut [u8]| split(f, &h, out).unwrap_err();
    let mut h = tso_hdr(1400);
    h.csum_start = 24;
    assert_eq!(bad(h, &frame, &mut out), DropReason::BadOffload);
    let mut h = tso_hdr(1400);
    h.gso_type = 4; // TCPv6
    assert_eq!(bad(h, &frame, &mut out), DropReason::BadOffload);
    assert_eq!(bad(tso_hdr(0), &frame, &mut out), DropReason::BadOffload);
    // More segments than the output area holds.
    assert_eq!(bad(tso_hdr(10), &frame, &mut out), DropReason::BadOffload);
    let mut v6 = frame.clone();
    v6[0] = 0x60;
    assert_eq!(bad(tso_hdr(1400), &v6, &mut out), DropReason::NotIpv4);
    let mut h = tso_hdr(0);
    h.csum_offset = 60_000;
    assert_eq!(
        finish_partial(&mut frame.clone(), &h),
        Err(DropReason::BadOffload)
    );
}

#[test]
fn split_and_finish_survive_garbage() {
    let mut rng = Rng(0x0ff1_0ad5_9111_7777);
    let base = tcp_packet(&pattern(2000), 0x10, 9, 9);
    let mut out = vec![0u8; 16 * 1024];
    for _ in 0..100_000 {
        let mut f = base.clone();
        for _ in 0..rng.below(4) {
            let at = rng.below(f.len());
            f[at] = rng.byte();
        }
        f.truncate(rng.below(f.len() + 1));
        let mut hb = [0u8; VNET_HDR_LEN];
        hb.iter_mut().for_each(|b| *b = rng.byte());
        let mut h = VnetHdr::parse(&hb);
        if rng.below(2) == 0 {
            h.gso_type = [GSO_TCPV4, GSO_UDP_L4, GSO_NONE][rng.below(3)];
            h.csum_start = 20;
        }
        if let Ok(s) = split(&f, &h, &mut out) {
            assert!(s.total <= out.len() && s.count >= 1);
        }
        let _ = finish_partial(&mut f, &h);
    }
}
