#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use super::*;
use crate::backend::udp::offload::tests::{pattern, ref_verifies, tcp_packet};
use crate::backend::udp::offload::{self, finish_partial, VnetHdr};
use crate::backend::udp::wire::tests::Rng;

/// Pushes each packet from its own buffer; returns the coalescer and
/// the buffers (patched by `finish`).
fn run(pkts: Vec<Vec<u8>>) -> (Coalescer, Vec<Box<[u8]>>) {
    let mut bufs: Vec<Box<[u8]>> = pkts.into_iter().map(Vec::into_boxed_slice).collect();
    let mut c = Coalescer::new(bufs.len());
    for (i, b) in bufs.iter().enumerate() {
        let r = PktRef {
            buf: i as u32,
            off: 0,
            len: b.len() as u32,
        };
        c.push(&bufs, r);
    }
    c.finish(&mut bufs);
    (c, bufs)
}

/// What the kernel sees for group `g`: the parts joined, with the
/// partial checksum completed as the stack would.
fn written(c: &Coalescer, bufs: &[Box<[u8]>], g: &Group) -> (VnetHdr, Vec<u8>) {
    let mut pkt = Vec::new();
    c.for_each_part(bufs, g, |p| pkt.extend_from_slice(p));
    let h = Coalescer::vnet_hdr(g);
    if h.flags != 0 {
        finish_partial(&mut pkt, &h).unwrap();
    }
    (h, pkt)
}

fn seg(payload: &[u8], flags: u8, seq: u32, id: u16) -> Vec<u8> {
    tcp_packet(payload, flags, seq, id)
}

#[test]
fn consecutive_segments_become_one_tso_write() {
    let data = pattern(1400 * 3 + 100);
    let pkts: Vec<Vec<u8>> = data
        .chunks(1400)
        .enumerate()
        .map(|(i, c)| {
            seg(
                c,
                if i == 3 { 0x18 } else { 0x10 },
                7000 + 1400 * i as u32,
                10 + i as u16,
            )
        })
        .collect();
    let (c, bufs) = run(pkts);
    let groups = c.groups();
    assert_eq!(groups.len(), 1);
    let (h, pkt) = written(&c, &bufs, &groups[0]);
    assert_eq!(
        (
            h.gso_type,
            h.hdr_len,
            h.gso_size,
            h.csum_start,
            h.csum_offset
        ),
        (GSO_TCPV4, 52, 1400, 20, 16)
    );
    assert_eq!(wire::total_len(&pkt), pkt.len());
    assert_eq!(&pkt[52..], &data[..]);
    assert_eq!(pkt[33], 0x18, "PSH of the last member moves to the head");
    assert!(ref_verifies(&pkt), "IP and completed TCP checksum verify");
}

#[test]
fn merge_rules_keep_apart_what_must_stay_apart() {
    let p = pattern(1000);
    let s = |flags, seq, id| seg(&p, flags, seq, id);
    let count =
        |pkts: Vec<Vec<u8>>| -> Vec<u16> { run(pkts).0.groups().iter().map(|g| g.count).collect() };
    // A gap in sequence numbers.
    assert_eq!(count(vec![s(0x10, 0, 1), s(0x10, 2000, 2)]), vec![1, 1]);
    // Nothing after PSH.
    assert_eq!(count(vec![s(0x18, 0, 1), s(0x10, 1000, 2)]), vec![1, 1]);
    // SYN/FIN are no candidates.
    assert_eq!(count(vec![s(0x10, 0, 1), s(0x11, 1000, 2)]), vec![1, 1]);
    // A longer segment after the first size.
    let long = seg(&pattern(1200), 0x10, 1000, 2);
    assert_eq!(count(vec![s(0x10, 0, 1), long]), vec![1, 1]);
    // A short one ends the group.
    let short = seg(&pattern(10), 0x10, 1000, 2);
    assert_eq!(
        count(vec![s(0x10, 0, 1), short, s(0x10, 1010, 3)]),
        vec![2, 1]
    );
    // Different TTL, TOS or options.
    let mut other_ttl = s(0x10, 1000, 2);
    other_ttl[8] = 9;
    wire::fix_ipv4_checksum(&mut other_ttl[..20]);
    assert_eq!(count(vec![s(0x10, 0, 1), other_ttl]), vec![1, 1]);
    let mut other_opt = s(0x10, 1000, 2);
    other_opt[51] = 10;
    offload::fix_l4_checksum(&mut other_opt, 20, PROTO_TCP);
    assert_eq!(count(vec![s(0x10, 0, 1), other_opt]), vec![1, 1]);
    // A bad TCP checksum is never coalesced (the kernel would trust it).
    let mut bad = s(0x10, 1000, 2);
    bad[60] ^= 0xff;
    assert_eq!(count(vec![s(0x10, 0, 1), bad]), vec![1, 1]);
}

#[test]
fn interleaved_flows_coalesce_separately_in_order() {
    let p = pattern(500);
    let other = |seq: u32| {
        let mut q = seg(&p, 0x10, seq, 1);
        q[20..22].copy_from_slice(&5002u16.to_be_bytes()); // another port
        offload::fix_l4_checksum(&mut q, 20, PROTO_TCP);
        q
    };
    let pkts = vec![
        seg(&p, 0x10, 0, 1),
        other(100),
        seg(&p, 0x10, 500, 2),
        other(600),
        seg(&p, 0x10, 1000, 3),
    ];
    let (c, bufs) = run(pkts);
    let counts: Vec<u16> = c.groups().iter().map(|g| g.count).collect();
    assert_eq!(counts, vec![3, 2]);
    for g in c.groups() {
        let (_, pkt) = written(&c, &bufs, g);
        assert!(ref_verifies(&pkt));
        assert_eq!(pkt.len(), 52 + 500 * usize::from(g.count));
    }
}

#[test]
fn coalescer_survives_garbage() {
    let mut rng = Rng(0x5eed_0000_1111_2222);
    for _ in 0..20_000 {
        let n = 1 + rng.below(8);
        let pkts: Vec<Vec<u8>> = (0..n)
            .map(|i| {
                let mut q = seg(&pattern(1 + rng.below(600)), 0x10, 600 * i as u32, i as u16);
                for _ in 0..rng.below(3) {
                    let at = rng.below(q.len());
                    q[at] = rng.byte();
                }
                q
            })
            .collect();
        let total: usize = pkts.iter().map(Vec::len).sum();
        let (c, bufs) = run(pkts);
        let mut seen = 0;
        for g in c.groups() {
            c.for_each_part(&bufs, g, |part| seen += part.len());
        }
        assert!(seen <= total);
    }
}
