//! Prometheus metrics: every family the `/metrics` endpoint exposes, in one registry.
//!
//! Names follow the Prometheus conventions: everything under `ferromq_`, counters end in
//! `_total`, units are base units in the name (`_bytes`, `_seconds`), and every label
//! has a fixed, small set of values (listener names from the config, protocol
//! versions, QoS levels, drop and disconnect reasons). A client id or a topic is never
//! a label. The process metrics are the standard unprefixed `process_*` family every
//! Prometheus client library exports (RSS, CPU seconds, open fds, start time), so stock
//! dashboards and alerts work with them.
//!
//! Where the numbers come from:
//! - the hot path counts into the relaxed atomics of [`crate::stats::Stats`] (which
//!   `$SYS` reads too); [`Metrics::render`] copies them into the registry at scrape
//!   time, under one mutex so concurrent scrapes do not interleave;
//! - gauges over the whole state (sessions online/offline, queued and in-flight
//!   messages, subscriptions, retained messages, storage size) are computed at scrape
//!   time: a scrape walks every session once and the data directory once. That cost
//!   grows with the number of sessions and files and is paid by the scraper, not by
//!   message delivery;
//! - the two histograms are process-wide statics so the delivery path
//!   ([`observe_delivery`]) and the store ([`observe_flush`]) can observe into them
//!   without a handle. A histogram observation is a few atomic adds; the delivery
//!   path, one observation per subscriber per PUBLISH, observes into a per-thread
//!   local histogram instead and adds it once per written batch
//!   ([`flush_delivery_latency`]).
//!
//! # Families
//! `ferromq_build_info`, `ferromq_ready`, `ferromq_uptime_seconds`,
//! `ferromq_connections{listener,protocol}`, `ferromq_connects_total`,
//! `ferromq_disconnects_total{reason}`, `ferromq_auth_failures_total`,
//! `ferromq_protocol_errors_total`, `ferromq_sessions{state}`,
//! `ferromq_subscriptions`, `ferromq_shared_subscriptions`,
//! `ferromq_retained_messages`, `ferromq_retained_bytes`,
//! `ferromq_messages_{received,sent}_total{qos}`,
//! `ferromq_messages_{received,sent}_bytes_total{qos}`,
//! `ferromq_messages_dropped_total{reason}`, `ferromq_messages_inflight`,
//! `ferromq_messages_queued`, `ferromq_packets_{received,sent}_total`,
//! `ferromq_network_{received,sent}_bytes_total`,
//! `ferromq_delivery_latency_seconds`, `ferromq_storage_size_bytes`,
//! `ferromq_storage_available_bytes`, `ferromq_storage_capacity_bytes`,
//! `ferromq_storage_flush_seconds`, `process_*`.

use std::path::Path;
use std::sync::LazyLock;
use std::time::Duration;

use parking_lot::Mutex;
use prometheus::{
    Encoder, Gauge, Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, IntGaugeVec,
    Opts, Registry, TextEncoder, local::LocalHistogram,
};

use crate::broker::Broker;
use crate::stats::{DisconnectReason, Stats};

/// Protocol label values, pre-created per listener so a series exists at 0.
const PROTOCOLS: [&str; 3] = ["3.1", "3.1.1", "5.0"];
/// QoS label values.
const QOS: [&str; 3] = ["0", "1", "2"];

/// Publish-to-delivery latency buckets: 100 µs to 1 min (offline queues are drained
/// much later than they were published; those land in the top buckets).
const DELIVERY_BUCKETS: &[f64] = &[
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0, 30.0, 60.0,
];
/// Storage flush latency buckets: 100 µs to 5 s.
const FLUSH_BUCKETS: &[f64] = &[
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
];

static DELIVERY_LATENCY: LazyLock<Histogram> = LazyLock::new(|| {
    histogram(
        "ferromq_delivery_latency_seconds",
        "Time from receiving a PUBLISH to writing it to a subscriber (retained \
         messages sent on SUBSCRIBE and resends excluded).",
        DELIVERY_BUCKETS,
    )
});

static FLUSH_LATENCY: LazyLock<Histogram> = LazyLock::new(|| {
    histogram(
        "ferromq_storage_flush_seconds",
        "Time taken by one flush of the persistent store to disk.",
        FLUSH_BUCKETS,
    )
});

#[allow(clippy::expect_used)]
fn histogram(name: &str, help: &str, buckets: &[f64]) -> Histogram {
    // Constant options: a failure here is a programming error caught by every test.
    Histogram::with_opts(HistogramOpts::new(name, help).buckets(buckets.to_vec()))
        .expect("static histogram options are valid")
}

thread_local! {
    /// This thread's delivery latencies not yet added to [`DELIVERY_LATENCY`].
    static DELIVERY_LATENCY_LOCAL: LocalHistogram = DELIVERY_LATENCY.local();
}

/// Records one publish-to-delivery latency (called per PUBLISH written). It reaches
/// `/metrics` at the next [`flush_delivery_latency`] on this thread: the writer of a
/// batch calls that once the batch is encoded.
pub fn observe_delivery(latency: Duration) {
    DELIVERY_LATENCY_LOCAL.with(|h| h.observe(latency.as_secs_f64()));
}

/// Adds this thread's delivery latencies observed since the last call to the
/// histogram: a few atomic adds per batch instead of per delivery.
pub fn flush_delivery_latency() {
    DELIVERY_LATENCY_LOCAL.with(LocalHistogram::flush);
}

/// Records one flush of the persistent store (called by the store after each flush).
pub fn observe_flush(duration: Duration) {
    FLUSH_LATENCY.observe(duration.as_secs_f64());
}

/// The registry and every family in it.
pub struct Metrics {
    registry: Registry,
    /// Serialises scrapes: copying counters in and gathering out is one step.
    scrape: Mutex<()>,
    listeners: Vec<String>,
    ready: IntGauge,
    uptime: Gauge,
    connections: IntGaugeVec,
    connects: IntCounter,
    disconnects: IntCounterVec,
    auth_failures: IntCounter,
    protocol_errors: IntCounter,
    sessions: IntGaugeVec,
    subscriptions: IntGauge,
    shared_subscriptions: IntGauge,
    retained_messages: IntGauge,
    retained_bytes: IntGauge,
    received: IntCounterVec,
    received_bytes: IntCounterVec,
    sent: IntCounterVec,
    sent_bytes: IntCounterVec,
    dropped: IntCounterVec,
    inflight: IntGauge,
    queued: IntGauge,
    packets_received: IntCounter,
    packets_sent: IntCounter,
    network_received: IntCounter,
    network_sent: IntCounter,
    storage_size: IntGauge,
    storage_available: IntGauge,
    storage_capacity: IntGauge,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

/// Drop reasons, in label order, with the counter each reads.
const DROP_REASONS: [&str; 7] = [
    "no_subscribers",
    "queue_full",
    "expired",
    "too_large",
    "not_authorized",
    "rate_limited",
    "offline_qos0",
];

fn drop_counts(s: &Stats) -> [u64; 7] {
    [
        Stats::get(&s.publish_dropped_no_subscribers),
        Stats::get(&s.dropped_queue_full),
        Stats::get(&s.dropped_expired),
        Stats::get(&s.dropped_too_large) + Stats::get(&s.dropped_payload_too_large),
        Stats::get(&s.dropped_not_authorized),
        Stats::get(&s.dropped_rate_limited),
        Stats::get(&s.dropped_offline_qos0),
    ]
}

/// Sets a counter that mirrors an atomic to `v` (only ever done under the scrape lock).
fn mirror(c: &IntCounter, v: u64) {
    c.reset();
    c.inc_by(v);
}

impl Metrics {
    /// Creates the registry; `listeners` are the MQTT listener names (label values).
    ///
    /// # Errors
    /// Only if two families had the same name, a programming error.
    /// Adds the cluster layer's families (Raft, forwarding) to the registry.
    pub fn register_cluster(&self, cluster: &ferromq_cluster::Cluster) {
        cluster.register_metrics(&self.registry);
    }

    pub fn new(listeners: Vec<String>) -> Result<Metrics, prometheus::Error> {
        let registry = Registry::new();
        fn reg<C: prometheus::core::Collector + Clone + 'static>(
            r: &Registry,
            c: C,
        ) -> Result<C, prometheus::Error> {
            r.register(Box::new(c.clone()))?;
            Ok(c)
        }
        let r = &registry;
        let build_info = reg(
            r,
            IntGaugeVec::new(
                Opts::new(
                    "ferromq_build_info",
                    "Always 1; the version is in the label.",
                ),
                &["version"],
            )?,
        )?;
        build_info
            .with_label_values(&[env!("CARGO_PKG_VERSION")])
            .set(1);
        let m = Metrics {
            listeners,
            ready: reg(
                r,
                IntGauge::new(
                    "ferromq_ready",
                    "1 when the broker is ready to serve (listeners bound, store open), else 0.",
                )?,
            )?,
            uptime: reg(
                r,
                Gauge::new(
                    "ferromq_uptime_seconds",
                    "Seconds since the broker started.",
                )?,
            )?,
            connections: reg(
                r,
                IntGaugeVec::new(
                    Opts::new(
                        "ferromq_connections",
                        "Open client connections, by listener and MQTT protocol version.",
                    ),
                    &["listener", "protocol"],
                )?,
            )?,
            connects: reg(
                r,
                IntCounter::new(
                    "ferromq_connects_total",
                    "Client connections accepted (CONNACK success).",
                )?,
            )?,
            disconnects: reg(
                r,
                IntCounterVec::new(
                    Opts::new(
                        "ferromq_disconnects_total",
                        "Client connections ended, by reason.",
                    ),
                    &["reason"],
                )?,
            )?,
            auth_failures: reg(
                r,
                IntCounter::new(
                    "ferromq_auth_failures_total",
                    "CONNECTs refused for bad credentials or as not authorised.",
                )?,
            )?,
            protocol_errors: reg(
                r,
                IntCounter::new(
                    "ferromq_protocol_errors_total",
                    "Connections closed for a protocol violation or a malformed packet.",
                )?,
            )?,
            sessions: reg(
                r,
                IntGaugeVec::new(
                    Opts::new(
                        "ferromq_sessions",
                        "Sessions, by state: online (a connection attached) or offline (kept for a disconnected client).",
                    ),
                    &["state"],
                )?,
            )?,
            subscriptions: reg(
                r,
                IntGauge::new("ferromq_subscriptions", "Non-shared subscriptions.")?,
            )?,
            shared_subscriptions: reg(
                r,
                IntGauge::new(
                    "ferromq_shared_subscriptions",
                    "Shared subscriptions ($share/group/filter members).",
                )?,
            )?,
            retained_messages: reg(
                r,
                IntGauge::new("ferromq_retained_messages", "Retained messages stored.")?,
            )?,
            retained_bytes: reg(
                r,
                IntGauge::new(
                    "ferromq_retained_bytes",
                    "Bytes held by retained messages (topic, payload and per-message overhead).",
                )?,
            )?,
            received: reg(
                r,
                IntCounterVec::new(
                    Opts::new(
                        "ferromq_messages_received_total",
                        "PUBLISH packets received from clients, by QoS.",
                    ),
                    &["qos"],
                )?,
            )?,
            received_bytes: reg(
                r,
                IntCounterVec::new(
                    Opts::new(
                        "ferromq_messages_received_bytes_total",
                        "Payload bytes of PUBLISH packets received from clients, by QoS.",
                    ),
                    &["qos"],
                )?,
            )?,
            sent: reg(
                r,
                IntCounterVec::new(
                    Opts::new(
                        "ferromq_messages_sent_total",
                        "PUBLISH packets written to subscribers, by the QoS they were sent at.",
                    ),
                    &["qos"],
                )?,
            )?,
            sent_bytes: reg(
                r,
                IntCounterVec::new(
                    Opts::new(
                        "ferromq_messages_sent_bytes_total",
                        "Payload bytes of PUBLISH packets written to subscribers, by QoS.",
                    ),
                    &["qos"],
                )?,
            )?,
            dropped: reg(
                r,
                IntCounterVec::new(
                    Opts::new(
                        "ferromq_messages_dropped_total",
                        "Messages or deliveries not delivered, by reason.",
                    ),
                    &["reason"],
                )?,
            )?,
            inflight: reg(
                r,
                IntGauge::new(
                    "ferromq_messages_inflight",
                    "QoS 1/2 messages sent to subscribers and not yet acknowledged.",
                )?,
            )?,
            queued: reg(
                r,
                IntGauge::new(
                    "ferromq_messages_queued",
                    "Deliveries waiting in session queues.",
                )?,
            )?,
            packets_received: reg(
                r,
                IntCounter::new("ferromq_packets_received_total", "MQTT packets received.")?,
            )?,
            packets_sent: reg(
                r,
                IntCounter::new("ferromq_packets_sent_total", "MQTT packets sent.")?,
            )?,
            network_received: reg(
                r,
                IntCounter::new(
                    "ferromq_network_received_bytes_total",
                    "Bytes read from client sockets.",
                )?,
            )?,
            network_sent: reg(
                r,
                IntCounter::new(
                    "ferromq_network_sent_bytes_total",
                    "Bytes written to client sockets.",
                )?,
            )?,
            storage_size: reg(
                r,
                IntGauge::new(
                    "ferromq_storage_size_bytes",
                    "Size of the data directory on disk.",
                )?,
            )?,
            storage_available: reg(
                r,
                IntGauge::new(
                    "ferromq_storage_available_bytes",
                    "Bytes available to the broker on the file system of the data directory.",
                )?,
            )?,
            storage_capacity: reg(
                r,
                IntGauge::new(
                    "ferromq_storage_capacity_bytes",
                    "Size of the file system holding the data directory.",
                )?,
            )?,
            scrape: Mutex::new(()),
            registry,
        };
        m.registry.register(Box::new(DELIVERY_LATENCY.clone()))?;
        m.registry.register(Box::new(FLUSH_LATENCY.clone()))?;
        #[cfg(target_os = "linux")]
        m.registry.register(Box::new(
            prometheus::process_collector::ProcessCollector::for_self(),
        ))?;
        // Every bounded label value exists from the start, so queries and alerts see a
        // 0 rather than no series.
        for l in &m.listeners {
            for p in PROTOCOLS {
                m.connections.with_label_values(&[l.as_str(), p]);
            }
        }
        for r in DisconnectReason::ALL {
            m.disconnects.with_label_values(&[r.label()]);
        }
        for q in QOS {
            for v in [&m.received, &m.received_bytes, &m.sent, &m.sent_bytes] {
                v.with_label_values(&[q]);
            }
        }
        for r in DROP_REASONS {
            m.dropped.with_label_values(&[r]);
        }
        for s in ["online", "offline"] {
            m.sessions.with_label_values(&[s]);
        }
        Ok(m)
    }

    /// Brings every family up to date from `broker` and renders the text format.
    /// Blocking (walks sessions and the data directory): call it off the async
    /// workers.
    ///
    /// # Errors
    /// If encoding fails (it does not for well-formed families).
    pub fn render(&self, broker: &Broker, ready: bool) -> Result<String, prometheus::Error> {
        let _guard = self.scrape.lock();
        self.update(broker, ready);
        let families = self.registry.gather();
        let mut out = Vec::new();
        TextEncoder::new().encode(&families, &mut out)?;
        String::from_utf8(out).map_err(|e| prometheus::Error::Msg(e.to_string()))
    }

    fn update(&self, broker: &Broker, ready: bool) {
        let s = broker.stats();
        self.ready.set(i64::from(ready));
        self.uptime.set(broker.uptime().as_secs_f64());
        for ((listener, protocol), n) in s.connections.lock().iter() {
            self.connections
                .with_label_values(&[listener.as_ref(), protocol])
                .set(*n as i64);
        }
        mirror(&self.connects, Stats::get(&s.connects_total));
        for (i, r) in DisconnectReason::ALL.iter().enumerate() {
            mirror(
                &self.disconnects.with_label_values(&[r.label()]),
                Stats::get(&s.disconnects[i]),
            );
        }
        mirror(&self.auth_failures, Stats::get(&s.auth_failures));
        mirror(&self.protocol_errors, Stats::get(&s.protocol_errors));

        let totals = broker.session_totals();
        self.sessions
            .with_label_values(&["online"])
            .set(totals.online as i64);
        self.sessions
            .with_label_values(&["offline"])
            .set(totals.offline as i64);
        self.queued.set(totals.queued as i64);
        self.inflight.set(totals.inflight as i64);
        let (direct, shared) = broker.subscription_counts();
        self.subscriptions.set(direct as i64);
        self.shared_subscriptions.set(shared as i64);
        self.retained_messages.set(broker.retained_count() as i64);
        self.retained_bytes.set(broker.retained_bytes() as i64);

        for (i, q) in QOS.iter().enumerate() {
            let pairs = [
                (&self.received, &s.publish_received_qos[i]),
                (&self.received_bytes, &s.publish_bytes_received_qos[i]),
                (&self.sent, &s.publish_sent_qos[i]),
                (&self.sent_bytes, &s.publish_bytes_sent_qos[i]),
            ];
            for (family, counter) in pairs {
                mirror(&family.with_label_values(&[q]), Stats::get(counter));
            }
        }
        for (reason, n) in DROP_REASONS.iter().zip(drop_counts(s)) {
            mirror(&self.dropped.with_label_values(&[reason]), n);
        }
        mirror(&self.packets_received, Stats::get(&s.packets_received));
        mirror(&self.packets_sent, Stats::get(&s.packets_sent));
        mirror(&self.network_received, Stats::get(&s.bytes_received));
        mirror(&self.network_sent, Stats::get(&s.bytes_sent));
        let data = &broker.config().persistence.path;
        self.storage_size.set(dir_size(data) as i64);
        if let Some((available, capacity)) = fs_space(data) {
            self.storage_available.set(available as i64);
            self.storage_capacity.set(capacity as i64);
        }
    }
}

/// Deepest directory level [`dir_size`] descends to (a bound on a symlink-free walk
/// of a data directory that someone pointed at `/`).
const MAX_DEPTH: usize = 16;

/// Bytes of the regular files under `path` (symlinks are not followed); 0 if it does
/// not exist. Unreadable entries are skipped.
pub fn dir_size(path: &Path) -> u64 {
    fn walk(path: &Path, depth: usize) -> u64 {
        let Ok(meta) = std::fs::symlink_metadata(path) else {
            return 0;
        };
        if meta.is_file() {
            return meta.len();
        }
        if !meta.is_dir() || depth >= MAX_DEPTH {
            return 0;
        }
        let Ok(entries) = std::fs::read_dir(path) else {
            return 0;
        };
        entries.flatten().map(|e| walk(&e.path(), depth + 1)).sum()
    }
    walk(path, 0)
}

/// (available, total) bytes of the file system holding `path`, or of its nearest
/// existing ancestor (the data directory may not exist yet).
#[cfg(unix)]
pub fn fs_space(path: &Path) -> Option<(u64, u64)> {
    let existing = path
        .ancestors()
        .find(|p| !p.as_os_str().is_empty() && p.exists())
        .unwrap_or(Path::new("."));
    let st = rustix::fs::statvfs(existing).ok()?;
    Some((
        st.f_bavail.saturating_mul(st.f_frsize),
        st.f_blocks.saturating_mul(st.f_frsize),
    ))
}

#[cfg(not(unix))]
pub fn fs_space(_path: &Path) -> Option<(u64, u64)> {
    None
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use std::sync::Arc;

    #[test]
    fn families_render_with_bounded_labels() {
        let broker = Broker::new(Arc::new(ferromq_config::Config::default()), None);
        let m = Metrics::new(vec!["default".into()]).unwrap();
        Stats::add(&broker.stats().dropped_queue_full, 3);
        broker
            .stats()
            .publish_in(ferromq_codec::QoS::AtLeastOnce, 10);
        observe_flush(Duration::from_millis(2));
        let text = m.render(&broker, true).unwrap();
        for line in [
            "ferromq_ready 1",
            "ferromq_messages_dropped_total{reason=\"queue_full\"} 3",
            "ferromq_messages_received_total{qos=\"1\"} 1",
            "ferromq_messages_received_bytes_total{qos=\"1\"} 10",
            "ferromq_connections{listener=\"default\",protocol=\"5.0\"} 0",
            "ferromq_disconnects_total{reason=\"administrative\"} 0",
        ] {
            assert!(text.lines().any(|l| l == line), "{line} missing in\n{text}");
        }
        assert!(text.contains("ferromq_storage_flush_seconds_bucket"));
        // Rendering twice gives the same counters (mirroring, not adding).
        let again = m.render(&broker, true).unwrap();
        assert!(
            again
                .lines()
                .any(|l| l == "ferromq_messages_dropped_total{reason=\"queue_full\"} 3")
        );
    }

    #[test]
    fn dir_size_counts_files_and_tolerates_absence() {
        let dir = std::env::temp_dir().join(format!("ferromq-dirsize-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        assert_eq!(dir_size(&dir), 0);
        std::fs::create_dir_all(dir.join("a/b")).unwrap();
        std::fs::write(dir.join("x"), [0u8; 100]).unwrap();
        std::fs::write(dir.join("a/b/y"), [0u8; 23]).unwrap();
        assert_eq!(dir_size(&dir), 123);
        let (available, capacity) = fs_space(&dir.join("not/yet")).unwrap();
        assert!(capacity > 0 && available <= capacity);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
