//! TCP GRO for TUN writes: consecutive segments of one TCP flow received
//! in a batch are written to the TUN as one super-packet with a virtio
//! header (NEEDS_CSUM, GSO TCPv4), the rules of wireguard-go's tcpGRO.
//!
//! Members are linked, not copied: the head keeps its headers (patched
//! in place) and each member contributes its payload as one iovec.
//!
//! A packet is a candidate when it is IPv4 without options, unfragmented,
//! TCP with flags exactly ACK or ACK|PSH, carries payload and its TCP
//! checksum verifies (the kernel trusts a NEEDS_CSUM packet). It joins
//! the open group of its flow (addresses, ports, ACK number) only if the
//! TCP header length and options, TOS, TTL and DF match, its sequence
//! number follows, and the group has no PSH yet, no short segment yet,
//! fewer than 64 members and room under 65535 bytes.

use super::offload::{l4_checksum_ok, VnetHdr, F_NEEDS_CSUM, GSO_TCPV4};
use super::wire::{self, PROTO_TCP};

/// Where a packet lives: buffer index, offset, length.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PktRef {
    pub buf: u32,
    pub off: u32,
    pub len: u32,
}

impl PktRef {
    pub fn bytes<'a>(&self, bufs: &'a [Box<[u8]>]) -> &'a [u8] {
        let off = self.off as usize;
        &bufs[self.buf as usize][off..off + self.len as usize]
    }
    fn bytes_mut<'a>(&self, bufs: &'a mut [Box<[u8]>]) -> &'a mut [u8] {
        let off = self.off as usize;
        &mut bufs[self.buf as usize][off..off + self.len as usize]
    }
}

const END: u32 = u32::MAX;
const MAX_MEMBERS: u16 = 64;
const OPEN_FLOWS: usize = 16;
const IP_HDR: usize = 20;

/// One TUN write: a single packet or a coalesced run.
#[derive(Debug, Clone, Copy)]
pub struct Group {
    pub head: u32,
    tail: u32,
    pub count: u16,
    /// IPv4 total length of the coalesced packet.
    total: usize,
    tcp_hl: usize,
    gso: usize,
    next_seq: u32,
    psh: bool,
    open: bool,
}

#[derive(Clone, Copy, PartialEq, Eq)]
struct FlowKey([u8; 16]);

struct Tcp {
    hl: usize,
    payload: usize,
    seq: u32,
    psh: bool,
    key: FlowKey,
}

fn candidate(p: &[u8]) -> Option<Tcp> {
    if p.len() < IP_HDR + 20 || p[0] != 0x45 || p[9] != PROTO_TCP {
        return None;
    }
    if u16::from_be_bytes([p[6], p[7]]) & 0x3fff != 0 {
        return None; // fragment (MF or offset)
    }
    let t = &p[IP_HDR..];
    let hl = usize::from(t[12] >> 4) * 4;
    let flags = t[13];
    if hl < 20 || IP_HDR + hl >= p.len() || (flags != 0x10 && flags != 0x18) {
        return None;
    }
    if !l4_checksum_ok(p, IP_HDR, PROTO_TCP) {
        return None;
    }
    let mut key = [0u8; 16];
    key[..12].copy_from_slice(&p[12..24]); // addresses + ports
    key[12..].copy_from_slice(&t[8..12]); // ACK number
    Some(Tcp {
        hl,
        payload: p.len() - IP_HDR - hl,
        seq: u32::from_be_bytes([t[4], t[5], t[6], t[7]]),
        psh: flags & 0x08 != 0,
        key: FlowKey(key),
    })
}

pub struct Coalescer {
    pkts: Vec<PktRef>,
    next: Vec<u32>,
    groups: Vec<Group>,
    flows: [(FlowKey, u32); OPEN_FLOWS],
    nflows: usize,
}

impl Coalescer {
    pub fn new(cap: usize) -> Coalescer {
        Coalescer {
            pkts: Vec::with_capacity(cap),
            next: Vec::with_capacity(cap),
            groups: Vec::with_capacity(cap),
            flows: [(FlowKey([0; 16]), 0); OPEN_FLOWS],
            nflows: 0,
        }
    }

    pub fn clear(&mut self) {
        self.pkts.clear();
        self.next.clear();
        self.groups.clear();
        self.nflows = 0;
    }

    /// Adds a validated packet (TTL already decremented) in arrival order.
    pub fn push(&mut self, bufs: &[Box<[u8]>], r: PktRef) {
        let idx = self.pkts.len() as u32;
        self.pkts.push(r);
        self.next.push(END);
        let p = r.bytes(bufs);
        let Some(tcp) = candidate(p) else {
            self.new_group(idx, None);
            return;
        };
        let slot = self.flows[..self.nflows]
            .iter()
            .position(|f| f.0 == tcp.key);
        if let Some(s) = slot {
            let g = self.flows[s].1 as usize;
            if self.mergeable(bufs, g, p, &tcp) {
                self.append(g, idx, &tcp);
                return;
            }
            self.groups[g].open = false;
            let g = self.new_group(idx, Some(&tcp));
            self.flows[s].1 = g;
            return;
        }
        let g = self.new_group(idx, Some(&tcp));
        if self.nflows < OPEN_FLOWS {
            self.flows[self.nflows] = (tcp.key, g);
            self.nflows += 1;
        } else {
            // Table full: forget the oldest open flow (its group stays).
            let old = self.flows[0].1 as usize;
            self.groups[old].open = false;
            self.flows.rotate_left(1);
            self.flows[OPEN_FLOWS - 1] = (tcp.key, g);
        }
    }

    fn new_group(&mut self, idx: u32, tcp: Option<&Tcp>) -> u32 {
        let len = self.pkts[idx as usize].len as usize;
        let (tcp_hl, gso, next_seq, open) = match tcp {
            Some(t) => (
                t.hl,
                t.payload,
                t.seq.wrapping_add(t.payload as u32),
                !t.psh,
            ),
            None => (0, 0, 0, false),
        };
        self.groups.push(Group {
            head: idx,
            tail: idx,
            count: 1,
            total: len,
            tcp_hl,
            gso,
            next_seq,
            psh: false,
            open,
        });
        (self.groups.len() - 1) as u32
    }

    fn mergeable(&self, bufs: &[Box<[u8]>], g: usize, p: &[u8], t: &Tcp) -> bool {
        let grp = &self.groups[g];
        if !grp.open || grp.count >= MAX_MEMBERS || t.hl != grp.tcp_hl {
            return false;
        }
        if t.seq != grp.next_seq || t.payload > grp.gso || grp.total + t.payload > 65_535 {
            return false;
        }
        let head = self.pkts[grp.head as usize].bytes(bufs);
        // TOS, TTL, DF and the TCP options must be identical.
        head[1] == p[1]
            && head[8] == p[8]
            && head[6] & 0x40 == p[6] & 0x40
            && head[IP_HDR + 20..IP_HDR + t.hl] == p[IP_HDR + 20..IP_HDR + t.hl]
    }

    fn append(&mut self, g: usize, idx: u32, t: &Tcp) {
        let grp = &mut self.groups[g];
        self.next[grp.tail as usize] = idx;
        grp.tail = idx;
        grp.count += 1;
        grp.total += t.payload;
        grp.next_seq = t.seq.wrapping_add(t.payload as u32);
        if t.psh {
            grp.psh = true;
            grp.open = false;
        }
        if t.payload < grp.gso {
            grp.open = false;
        }
    }

    /// Patches the head of every coalesced group (total length, IP
    /// checksum, PSH, TCP pseudo-header seed).
    pub fn finish(&mut self, bufs: &mut [Box<[u8]>]) {
        for g in &self.groups {
            if g.count < 2 {
                continue;
            }
            let p = self.pkts[g.head as usize].bytes_mut(bufs);
            p[2..4].copy_from_slice(&(g.total as u16).to_be_bytes());
            wire::fix_ipv4_checksum(&mut p[..IP_HDR]);
            if g.psh {
                p[IP_HDR + 13] |= 0x08;
            }
            let l4 = (g.total - IP_HDR) as u16;
            // The seed is the folded pseudo-header sum, not complemented:
            // the kernel adds the segment bytes (CHECKSUM_PARTIAL).
            let seed = wire::fold(wire::pseudo_sum(wire::src(p), wire::dst(p), PROTO_TCP, l4));
            p[IP_HDR + 16..IP_HDR + 18].copy_from_slice(&seed.to_be_bytes());
        }
    }

    /// The TUN writes, in order of their first packet.
    pub fn groups(&self) -> &[Group] {
        &self.groups
    }

    /// The virtio header for a group (zeros for a single packet).
    pub fn vnet_hdr(g: &Group) -> VnetHdr {
        if g.count < 2 {
            return VnetHdr::default();
        }
        VnetHdr {
            flags: F_NEEDS_CSUM,
            gso_type: GSO_TCPV4,
            hdr_len: (IP_HDR + g.tcp_hl) as u16,
            gso_size: g.gso as u16,
            csum_start: IP_HDR as u16,
            csum_offset: 16,
        }
    }

    /// The first packet of a group (headers already patched).
    pub fn head<'a>(&self, bufs: &'a [Box<[u8]>], g: &Group) -> &'a [u8] {
        self.pkts[g.head as usize].bytes(bufs)
    }

    /// Calls `f(bytes)` for the head (whole packet) and then for each
    /// member's payload.
    pub fn for_each_part(&self, bufs: &[Box<[u8]>], g: &Group, mut f: impl FnMut(&[u8])) {
        let head = self.pkts[g.head as usize];
        f(head.bytes(bufs));
        let skip = IP_HDR + g.tcp_hl;
        let mut i = self.next[g.head as usize];
        while i != END {
            f(&self.pkts[i as usize].bytes(bufs)[skip..]);
            i = self.next[i as usize];
        }
    }
}

#[cfg(test)]
#[path = "gro_tests.rs"]
mod tests;
