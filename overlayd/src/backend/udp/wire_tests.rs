#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use super::*;

fn hex(s: &str) -> Vec<u8> {
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
        .collect()
}

/// Tiny deterministic PRNG (xorshift64*) for bounded random inputs.
pub struct Rng(pub u64);
impl Rng {
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    pub fn byte(&mut self) -> u8 {
        (self.next() >> 56) as u8
    }
    pub fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

/// The classic sample header (Wikipedia, "IPv4 header checksum"):
/// 192.168.0.1 -> 192.168.0.199, UDP, TTL 64, checksum 0xb861.
const SAMPLE: &str = "45000073000040004011b861c0a80001c0a800c7";

/// A TCP SYN 10.244.1.2:40000 -> 10.244.7.9:80, TTL 64, DF.
const SYN: &str =
    "450000281c464000400600980af401020af407099c40005001020304000000005002faf000000000";

#[test]
fn checksum_of_a_real_header() {
    let mut h = hex(SAMPLE);
    assert_eq!(fold(sum(&h, 0)), 0xffff, "sample verifies");
    h[10] = 0;
    h[11] = 0;
    assert_eq!(checksum(&h), 0xb861);
    // Odd lengths pad with a zero byte at the end (RFC 1071).
    assert_eq!(checksum(&[0x01]), !0x0100);
    assert_eq!(checksum(&[0x12, 0x34, 0x56]), !(0x1234u16 + 0x5600));
}

#[test]
fn ttl_decrement_patches_like_a_full_recompute() {
    let mut h = hex(SAMPLE);
    assert!(decrement_ttl(&mut h));
    assert_eq!(h[8], 0x3f);
    assert_eq!(&h[10..12], &[0xb9, 0x61]);
    // Random valid headers: the incremental patch equals recomputing.
    let mut rng = Rng(0x1234_5678_9abc_def1);
    for _ in 0..200_000 {
        let mut h: Vec<u8> = (0..20).map(|_| rng.byte()).collect();
        h[0] = 0x45;
        h[8] = 2 + rng.below(254) as u8;
        fix_ipv4_checksum(&mut h);
        assert!(decrement_ttl(&mut h));
        let patched = [h[10], h[11]];
        fix_ipv4_checksum(&mut h);
        assert_eq!(patched, [h[10], h[11]], "header {h:02x?}");
    }
}

#[test]
fn ttl_reaching_zero_is_refused() {
    let mut h = hex(SAMPLE);
    h[8] = 1;
    assert!(!decrement_ttl(&mut h));
}

const OWN: (u32, u32) = (0x0af4_0100, 0xffff_ff00); // 10.244.1.0/24

fn inbound(dst: [u8; 4]) -> Vec<u8> {
    let mut p = hex(SYN);
    p[16..20].copy_from_slice(&dst);
    fix_ipv4_checksum(&mut p[..20]);
    p
}

#[test]
fn inbound_checks_name_each_reason() {
    let good = inbound([10, 244, 1, 9]);
    assert_eq!(check_inbound(&good, OWN), Ok(()));
    let case = |f: &dyn Fn(&mut Vec<u8>)| {
        let mut p = good.clone();
        f(&mut p);
        check_inbound(&p, OWN)
    };
    assert_eq!(case(&|p| p.truncate(19)), Err(DropReason::Runt));
    assert_eq!(case(&|p| p[0] = 0x65), Err(DropReason::NotIpv4));
    assert_eq!(case(&|p| p[0] = 0x44), Err(DropReason::BadHeaderLen));
    assert_eq!(case(&|p| p[0] = 0x4f), Err(DropReason::BadHeaderLen));
    assert_eq!(case(&|p| p.push(0)), Err(DropReason::BadTotalLen));
    assert_eq!(case(&|p| p.truncate(39)), Err(DropReason::BadTotalLen));
    assert_eq!(case(&|p| p[12] ^= 1), Err(DropReason::BadChecksum));
    let outside = inbound([10, 244, 2, 9]);
    assert_eq!(check_inbound(&outside, OWN), Err(DropReason::NotOurSubnet));
    let far = inbound([8, 8, 8, 8]);
    assert_eq!(check_inbound(&far, OWN), Err(DropReason::NotOurSubnet));
}

#[test]
fn net_unreachable_is_byte_for_byte_flannels() {
    let offender = hex(SYN);
    assert!(wants_unreachable(&offender));
    let mut out = [0u8; ICMP_UNREACH_MAX];
    let n = build_net_unreachable(&offender, Ipv4Addr::new(10, 244, 1, 0), &mut out);
    // Built independently (Python struct + RFC 1071): TTL 8, id 0, no
    // DF, 10.244.1.0 -> 10.244.1.2, type 3 code 0, quote = 20 + 8 bytes.
    let want = hex(concat!(
        "450000380000000008019adc0af401000af40102",
        "03005c6900000000",
        "450000281c464000400600980af401020af407099c40005001020304"
    ));
    assert_eq!(&out[..n], &want[..]);
}

#[test]
fn net_unreachable_follows_flannels_exceptions() {
    let syn = hex(SYN);
    let with = |f: &dyn Fn(&mut Vec<u8>)| {
        let mut p = syn.clone();
        f(&mut p);
        wants_unreachable(&p)
    };
    let icmp = |t: u8| {
        with(&|p: &mut Vec<u8>| {
            p[9] = PROTO_ICMP;
            p[20] = t;
        })
    };
    assert!(icmp(8), "echo request is answered (flannel: not)");
    assert!(
        !icmp(0) && !icmp(3) && !icmp(11),
        "never about ICMP replies or errors"
    );
    assert!(!with(&|p| {
        p[9] = PROTO_ICMP;
        p.truncate(20);
    }));
    assert!(!with(&|p| p[7] = 1), "not for a non-first fragment");
    assert!(with(&|p| p[6] = 0x20), "first fragment (MF) is answered");
    // 60-byte headers are refused by flannel; 56 is answered.
    let mut long = syn.clone();
    long.splice(20..20, [1u8; 40]);
    long[0] = 0x4f;
    assert!(!wants_unreachable(&long));
    long[0] = 0x4e;
    assert!(wants_unreachable(&long));
    // A header longer than the packet is not quoted at all.
    let mut short = syn.clone();
    short[0] = 0x4e;
    assert!(!wants_unreachable(&short));
}

#[test]
fn quote_of_a_short_packet_is_zero_padded() {
    // 24 bytes: a full header and 4 payload bytes; flannel copies 28.
    let mut p = hex(SYN);
    p.truncate(24);
    let mut out = [0xaau8; ICMP_UNREACH_MAX];
    let n = build_net_unreachable(&p, Ipv4Addr::new(10, 244, 1, 0), &mut out);
    assert_eq!(n, 56);
    assert_eq!(&out[28..52], &p[..]);
    assert_eq!(&out[52..56], &[0, 0, 0, 0]);
    assert_eq!(fold(sum(&out[20..n], 0)), 0xffff, "ICMP checksum verifies");
    assert_eq!(fold(sum(&out[..20], 0)), 0xffff, "IP checksum verifies");
}

/// Random bytes and mutated real packets through every parser: nothing
/// may panic, and whatever passes the inbound checks is a sane packet.
#[test]
fn parsers_survive_garbage() {
    let mut rng = Rng(0xdead_beef_cafe_f00d);
    let base = inbound([10, 244, 1, 9]);
    let mut out = [0u8; ICMP_UNREACH_MAX];
    for i in 0..300_000 {
        let mut p: Vec<u8> = if i % 2 == 0 {
            (0..rng.below(80)).map(|_| rng.byte()).collect()
        } else {
            let mut p = base.clone();
            for _ in 0..1 + rng.below(3) {
                let at = rng.below(p.len());
                p[at] = rng.byte();
            }
            p.truncate(rng.below(p.len() + 1));
            p
        };
        if check_inbound(&p, OWN).is_ok() {
            assert!(p.len() >= 20 && total_len(&p) == p.len() && ihl(&p) <= p.len());
            decrement_ttl(&mut p);
        }
        if wants_unreachable(&p) {
            let n = build_net_unreachable(&p, Ipv4Addr::new(10, 244, 1, 0), &mut out);
            assert!(n <= ICMP_UNREACH_MAX);
        }
    }
}
