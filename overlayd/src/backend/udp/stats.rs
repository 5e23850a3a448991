//! Counters of the datapath: packets and bytes each way, drops by reason,
//! batch-size histograms. Each worker thread counts into its own plain
//! `Local` and adds it to its shared atomics once per batch, so the hot
//! path does no atomic read-modify-write per packet.

use std::sync::atomic::{AtomicU64, Ordering};

/// Why a packet was not forwarded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DropReason {
    /// Datagram or TUN read shorter than an IPv4 header.
    Runt,
    /// Datagram whose IP version is not 4.
    NotIpv4,
    /// IHL < 5, or a header longer than the datagram.
    BadHeaderLen,
    /// IPv4 total length differs from the datagram length.
    BadTotalLen,
    /// IPv4 header checksum does not verify.
    BadChecksum,
    /// Inner destination outside our own subnet (UDP->TUN).
    NotOurSubnet,
    /// Datagram source IP is no peer's public IP.
    UnknownSender,
    /// Datagram larger than the receive buffer (MSG_TRUNC).
    Oversize,
    /// TTL reached 0 (either direction).
    TtlExpired,
    /// TUN->UDP: not IPv4 (the kernel's IPv6 link-local chatter on flannel0).
    TunNotIpv4,
    /// TUN->UDP: destination in our own subnet (it belongs on cni0).
    OwnSubnet,
    /// TUN->UDP: destination outside the Network.
    OutsideNetwork,
    /// TUN->UDP: destination in a subnet nobody leases (ICMP sent back).
    NoRoute,
    /// TUN read with a virtio header we cannot segment (TCPv6, ECN,
    /// inconsistent offsets, more segments than the buffers hold).
    BadOffload,
    /// sendmsg/sendmmsg failed for this datagram.
    SendError,
    /// write to the TUN failed.
    TunWriteError,
}

impl DropReason {
    pub const ALL: [DropReason; 16] = [
        DropReason::Runt,
        DropReason::NotIpv4,
        DropReason::BadHeaderLen,
        DropReason::BadTotalLen,
        DropReason::BadChecksum,
        DropReason::NotOurSubnet,
        DropReason::UnknownSender,
        DropReason::Oversize,
        DropReason::TtlExpired,
        DropReason::TunNotIpv4,
        DropReason::OwnSubnet,
        DropReason::OutsideNetwork,
        DropReason::NoRoute,
        DropReason::BadOffload,
        DropReason::SendError,
        DropReason::TunWriteError,
    ];

    /// Stable name for metrics labels.
    pub fn name(self) -> &'static str {
        match self {
            DropReason::Runt => "runt",
            DropReason::NotIpv4 => "not_ipv4",
            DropReason::BadHeaderLen => "bad_header_len",
            DropReason::BadTotalLen => "bad_total_len",
            DropReason::BadChecksum => "bad_checksum",
            DropReason::NotOurSubnet => "not_our_subnet",
            DropReason::UnknownSender => "unknown_sender",
            DropReason::Oversize => "oversize",
            DropReason::TtlExpired => "ttl_expired",
            DropReason::TunNotIpv4 => "tun_not_ipv4",
            DropReason::OwnSubnet => "own_subnet",
            DropReason::OutsideNetwork => "outside_network",
            DropReason::NoRoute => "no_route",
            DropReason::BadOffload => "bad_offload",
            DropReason::SendError => "send_error",
            DropReason::TunWriteError => "tun_write_error",
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

/// Histogram buckets by powers of two: 1, 2-3, 4-7, ..., 64-127, 128+.
pub const BUCKETS: usize = 8;

/// Lower bound of each bucket.
pub const BUCKET_LOW: [u64; BUCKETS] = [1, 2, 4, 8, 16, 32, 64, 128];

fn bucket(n: usize) -> usize {
    let b = usize::BITS - n.max(1).leading_zeros() - 1;
    (b as usize).min(BUCKETS - 1)
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Histogram {
    pub buckets: [u64; BUCKETS],
}

impl Histogram {
    pub fn record(&mut self, n: usize) {
        self.buckets[bucket(n)] += 1;
    }
    pub fn count(&self) -> u64 {
        self.buckets.iter().sum()
    }
}

/// Per-thread counts of one batch (plain integers).
#[derive(Debug, Clone, Default)]
pub struct Local {
    /// Datagrams sent to / bytes of inner packets sent over the underlay.
    pub tx_packets: u64,
    pub tx_bytes: u64,
    /// Inner packets / bytes written to the TUN.
    pub rx_packets: u64,
    pub rx_bytes: u64,
    pub icmp_unreachable: u64,
    /// Times a sender turned UDP GSO off because the kernel refused it.
    pub gso_fallbacks: u64,
    pub drops: [u64; DropReason::ALL.len()],
    /// Inner packets per TUN read (1, or the segments of a TSO frame).
    pub tun_read: Histogram,
    /// Datagrams per UDP send syscall.
    pub udp_send: Histogram,
    /// Datagrams per UDP receive syscall (GRO segments included).
    pub udp_recv: Histogram,
    /// Inner packets per TUN write (> 1 when TCP segments were coalesced).
    pub tun_write: Histogram,
}

impl Local {
    pub fn drop(&mut self, reason: DropReason) {
        self.drops[reason.index()] += 1;
    }
}

/// Shared per-thread counters; written by one worker, read by `stats()`.
#[derive(Debug, Default)]
pub struct Shared {
    tx_packets: AtomicU64,
    tx_bytes: AtomicU64,
    rx_packets: AtomicU64,
    rx_bytes: AtomicU64,
    icmp_unreachable: AtomicU64,
    gso_fallbacks: AtomicU64,
    drops: [AtomicU64; DropReason::ALL.len()],
    hists: [[AtomicU64; BUCKETS]; 4],
}

fn add(a: &AtomicU64, v: u64) {
    if v != 0 {
        a.fetch_add(v, Ordering::Relaxed);
    }
}

impl Shared {
    /// Adds `l` and resets it.
    pub fn flush(&self, l: &mut Local) {
        add(&self.tx_packets, l.tx_packets);
        add(&self.tx_bytes, l.tx_bytes);
        add(&self.rx_packets, l.rx_packets);
        add(&self.rx_bytes, l.rx_bytes);
        add(&self.icmp_unreachable, l.icmp_unreachable);
        add(&self.gso_fallbacks, l.gso_fallbacks);
        for (a, v) in self.drops.iter().zip(l.drops) {
            add(a, v);
        }
        let hists = [&l.tun_read, &l.udp_send, &l.udp_recv, &l.tun_write];
        for (shared, local) in self.hists.iter().zip(hists) {
            for (a, v) in shared.iter().zip(local.buckets) {
                add(a, v);
            }
        }
        *l = Local::default();
    }

    fn add_to(&self, s: &mut StatsSnapshot) {
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        s.tx_packets += get(&self.tx_packets);
        s.tx_bytes += get(&self.tx_bytes);
        s.rx_packets += get(&self.rx_packets);
        s.rx_bytes += get(&self.rx_bytes);
        s.icmp_unreachable += get(&self.icmp_unreachable);
        s.gso_fallbacks += get(&self.gso_fallbacks);
        for (d, a) in s.drops.iter_mut().zip(&self.drops) {
            *d += get(a);
        }
        let hists = [
            &mut s.tun_read,
            &mut s.udp_send,
            &mut s.udp_recv,
            &mut s.tun_write,
        ];
        for (h, shared) in hists.into_iter().zip(&self.hists) {
            for (b, a) in h.buckets.iter_mut().zip(shared) {
                *b += get(a);
            }
        }
    }
}

/// The engine's counters summed over its threads since start.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StatsSnapshot {
    pub tx_packets: u64,
    pub tx_bytes: u64,
    pub rx_packets: u64,
    pub rx_bytes: u64,
    pub icmp_unreachable: u64,
    pub gso_fallbacks: u64,
    drops: [u64; DropReason::ALL.len()],
    pub tun_read: Histogram,
    pub udp_send: Histogram,
    pub udp_recv: Histogram,
    pub tun_write: Histogram,
}

impl StatsSnapshot {
    pub fn sum(threads: &[std::sync::Arc<Shared>]) -> Self {
        let mut s = StatsSnapshot::default();
        for t in threads {
            t.add_to(&mut s);
        }
        s
    }

    pub fn dropped(&self, reason: DropReason) -> u64 {
        self.drops[reason.index()]
    }

    /// Every reason with its count (zeros included), for metrics export.
    pub fn drops(&self) -> impl Iterator<Item = (DropReason, u64)> + '_ {
        DropReason::ALL.iter().map(|r| (*r, self.drops[r.index()]))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reasons_index_their_own_slot() {
        for (i, r) in DropReason::ALL.iter().enumerate() {
            assert_eq!(r.index(), i, "{}", r.name());
        }
    }

    #[test]
    fn buckets_are_powers_of_two() {
        let got: Vec<usize> = [0, 1, 2, 3, 4, 7, 8, 64, 127, 128, 5000]
            .iter()
            .map(|n| bucket(*n))
            .collect();
        assert_eq!(got, vec![0, 0, 1, 1, 2, 2, 3, 6, 6, 7, 7]);
    }

    #[test]
    fn flush_adds_and_resets() {
        let shared = std::sync::Arc::new(Shared::default());
        let mut l = Local {
            tx_packets: 3,
            ..Local::default()
        };
        l.drop(DropReason::Runt);
        l.drop(DropReason::Runt);
        l.udp_send.record(40);
        shared.flush(&mut l);
        assert_eq!(l.tx_packets, 0);
        l.tx_packets = 2;
        shared.flush(&mut l);
        let s = StatsSnapshot::sum(&[shared.clone(), shared]);
        assert_eq!(s.tx_packets, 10);
        assert_eq!(s.dropped(DropReason::Runt), 4);
        assert_eq!(s.udp_send.buckets[5], 2);
    }
}
