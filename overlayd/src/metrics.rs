//! overlayd's Prometheus metrics (served on `/metrics` by `health`). One
//! `Metrics` is made at start and shared (`Arc`) by the parts that count:
//! the lease store, the reconciler, the firewall loop, the backends.
//! docs/operations.md lists every metric with its meaning.

use crate::spec::ObjectKind;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use std::sync::atomic::AtomicU64;
use std::sync::Mutex;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SubnetLabel {
    pub subnet: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct BackendLabel {
    pub backend: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PassLabel {
    /// "full" (dump of the kernel, start/resync/drift) or "incremental"
    /// (only the peers whose lease changed).
    pub pass: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KindLabel {
    pub kind: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabel {
    pub reason: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OpLabel {
    pub op: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DirectionLabel {
    /// "tx" (TUN to the underlay) or "rx" (the underlay into the TUN).
    pub direction: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct BatchLabel {
    /// tun_read, udp_send, udp_recv, tun_write.
    pub op: String,
    /// The power-of-two size class: "1", "2-3", "4-7", ..., "128+".
    pub size: String,
}

pub struct Metrics {
    registry: Registry,
    pub lease_info: Family<SubnetLabel, Gauge>,
    pub lease_expiry: Gauge<f64, AtomicU64>,
    pub peers: Family<BackendLabel, Gauge>,
    pub reconcile_runs: Family<PassLabel, Counter>,
    pub reconcile_duration: Family<PassLabel, Histogram>,
    pub corrections: Family<KindLabel, Counter>,
    pub failures: Family<KindLabel, Counter>,
    pub store_requests: Family<OpLabel, Counter>,
    pub store_errors: Family<OpLabel, Counter>,
    pub watch_reconnects: Counter,
    pub rule_repairs: Counter,
    pub leases_skipped: Family<ReasonLabel, Gauge>,
    pub udp_packets: Family<DirectionLabel, Counter>,
    pub udp_bytes: Family<DirectionLabel, Counter>,
    pub udp_drops: Family<ReasonLabel, Counter>,
    pub udp_icmp_unreachable: Counter,
    pub udp_batches: Family<BatchLabel, Counter>,
    /// The subnet the lease gauge currently names, to clear it on change.
    lease_subnet: Mutex<Option<String>>,
}

fn duration_histogram() -> Histogram {
    // 100 µs .. ~13 s: an idle incremental pass to a full pass at 65k peers.
    Histogram::new(prometheus_client::metrics::histogram::exponential_buckets(
        0.0001, 2.0, 18,
    ))
}

impl Metrics {
    pub fn new() -> Self {
        let mut m = Metrics {
            registry: Registry::with_prefix("felt"),
            lease_info: Family::default(),
            lease_expiry: Gauge::default(),
            peers: Family::default(),
            reconcile_runs: Family::default(),
            reconcile_duration: Family::new_with_constructor(duration_histogram),
            corrections: Family::default(),
            failures: Family::default(),
            store_requests: Family::default(),
            store_errors: Family::default(),
            watch_reconnects: Counter::default(),
            rule_repairs: Counter::default(),
            leases_skipped: Family::default(),
            udp_packets: Family::default(),
            udp_bytes: Family::default(),
            udp_drops: Family::default(),
            udp_icmp_unreachable: Counter::default(),
            udp_batches: Family::default(),
            lease_subnet: Mutex::new(None),
        };
        m.register();
        m
    }

    fn register(&mut self) {
        let r = &mut self.registry;
        r.register(
            "lease",
            "This node's lease (1 per subnet held)",
            self.lease_info.clone(),
        );
        r.register(
            "lease_expiry_timestamp_seconds",
            "When this node's lease expires (Unix time; 0 for a reservation or unknown)",
            self.lease_expiry.clone(),
        );
        r.register("peers", "Peers routed, by backend", self.peers.clone());
        r.register(
            "reconcile_runs",
            "Reconcile passes run",
            self.reconcile_runs.clone(),
        );
        r.register(
            "reconcile_duration_seconds",
            "How long a reconcile pass took",
            self.reconcile_duration.clone(),
        );
        r.register(
            "reconcile_corrections",
            "Kernel objects written or removed to converge, by kind (repairs of drift included)",
            self.corrections.clone(),
        );
        r.register(
            "reconcile_failures",
            "Kernel operations that failed (retried by a later pass), by kind",
            self.failures.clone(),
        );
        r.register(
            "store_requests",
            "Requests to the lease store, by operation",
            self.store_requests.clone(),
        );
        r.register(
            "store_errors",
            "Failed lease store requests, by operation",
            self.store_errors.clone(),
        );
        r.register(
            "store_watch_reconnects",
            "Times the lease watch was lost and re-established with a new listing",
            self.watch_reconnects.clone(),
        );
        r.register(
            "firewall_rule_repairs",
            "Times masquerade/forward rules were found missing or changed and re-applied",
            self.rule_repairs.clone(),
        );
        r.register(
            "leases_skipped",
            "Leases in the store that are not routed, by reason (malformed, outside the network, ...)",
            self.leases_skipped.clone(),
        );
        r.register(
            "udp_packets",
            "udp backend: packets forwarded, by direction",
            self.udp_packets.clone(),
        );
        r.register(
            "udp_bytes",
            "udp backend: bytes forwarded, by direction",
            self.udp_bytes.clone(),
        );
        r.register(
            "udp_drops",
            "udp backend: packets dropped, by reason",
            self.udp_drops.clone(),
        );
        r.register(
            "udp_icmp_unreachable",
            "udp backend: ICMP net-unreachable written back for destinations nobody leases",
            self.udp_icmp_unreachable.clone(),
        );
        r.register(
            "udp_batches",
            "udp backend: syscalls by batch size (packets moved per call), by operation",
            self.udp_batches.clone(),
        );
    }

    /// The text exposition (OpenMetrics, which Prometheus scrapes).
    pub fn encode(&self) -> String {
        let mut out = String::new();
        if prometheus_client::encoding::text::encode(&mut out, &self.registry).is_err() {
            out.clear();
        }
        out
    }

    pub fn set_lease(&self, subnet: &str, expiry_unix: Option<f64>) {
        if let Ok(mut cur) = self.lease_subnet.lock() {
            if let Some(old) = cur.take() {
                self.lease_info.remove(&SubnetLabel { subnet: old });
            }
            self.lease_info
                .get_or_create(&SubnetLabel {
                    subnet: subnet.to_string(),
                })
                .set(1);
            *cur = Some(subnet.to_string());
        }
        self.lease_expiry.set(expiry_unix.unwrap_or(0.0));
    }

    pub fn correction(&self, kind: ObjectKind) {
        self.corrections
            .get_or_create(&KindLabel {
                kind: kind.name().into(),
            })
            .inc();
    }

    pub fn failure(&self, kind: ObjectKind) {
        self.failures
            .get_or_create(&KindLabel {
                kind: kind.name().into(),
            })
            .inc();
    }

    pub fn store_request(&self, op: &str) {
        self.store_requests
            .get_or_create(&OpLabel { op: op.into() })
            .inc();
    }

    pub fn store_error(&self, op: &str) {
        self.store_errors
            .get_or_create(&OpLabel { op: op.into() })
            .inc();
    }

    /// Replaces the skipped-lease gauges with `counts` (reason -> number).
    pub fn set_skipped(&self, counts: &std::collections::BTreeMap<&'static str, i64>) {
        self.leases_skipped.clear();
        for (reason, n) in counts {
            self.leases_skipped
                .get_or_create(&ReasonLabel {
                    reason: (*reason).into(),
                })
                .set(*n);
        }
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exposition_has_prefixed_names_and_labels() {
        let m = Metrics::new();
        m.set_lease("10.244.3.0/24", Some(1.0e9));
        m.correction(ObjectKind::Route);
        m.store_request("range");
        let text = m.encode();
        for want in [
            "felt_lease{subnet=\"10.244.3.0/24\"} 1",
            "felt_reconcile_corrections_total{kind=\"route\"} 1",
            "felt_store_requests_total{op=\"range\"} 1",
            "felt_lease_expiry_timestamp_seconds 1000000000.0",
            "# EOF",
        ] {
            assert!(text.contains(want), "{want} missing in\n{text}");
        }
        m.set_lease("10.244.4.0/24", None);
        let text = m.encode();
        assert!(!text.contains("10.244.3.0/24"), "{text}");
    }
}
