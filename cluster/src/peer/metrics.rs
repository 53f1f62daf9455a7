//! The data plane's Prometheus series. Created with the plane (unregistered) so the
//! hot path never checks whether metrics are on; [`Metrics::register`] exposes them.
//! The `peer` label is a node id: bounded by the cluster's membership history, and a
//! removed peer's series are deleted on `remove_peer`.

use prometheus::{IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry};

use crate::NodeId;

/// Drop reasons (label `reason` of `ferromq_cluster_forward_dropped_total`).
pub(crate) mod reason {
    /// The peer's bounded queue was full (QoS 0 dropped, QoS 1/2 refused).
    pub const QUEUE_FULL: &str = "queue_full";
    /// QoS 0 offered while the peer's stream is down (QoS 1/2 stay queued instead).
    pub const PEER_DOWN: &str = "peer_down";
    /// Offered for a node that is not a set peer.
    pub const UNKNOWN_PEER: &str = "unknown_peer";
    /// Still queued or unacknowledged when the peer was removed.
    pub const PEER_REMOVED: &str = "peer_removed";
    /// QoS 0 in a batch that was written but not acknowledged when the stream broke
    /// (not re-sent: it may or may not have been delivered).
    pub const STREAM_LOST: &str = "stream_lost";
    pub const ALL: [&str; 5] = [
        QUEUE_FULL,
        PEER_DOWN,
        UNKNOWN_PEER,
        PEER_REMOVED,
        STREAM_LOST,
    ];
}

const SENT: &str = "sent";
const RECEIVED: &str = "received";

pub(crate) struct Metrics {
    messages: IntCounterVec,
    bytes: IntCounterVec,
    depth: IntGaugeVec,
    dropped: IntCounterVec,
    up: IntGaugeVec,
    announce_dropped: IntCounterVec,
    unawaited: IntCounterVec,
}

/// One peer's series, resolved once so the hot path does no label lookups.
pub(crate) struct PeerMetrics {
    pub sent_messages: IntCounter,
    pub sent_bytes: IntCounter,
    pub depth: IntGauge,
    pub up: IntGauge,
    pub queue_full: IntCounter,
    pub peer_down: IntCounter,
    pub peer_removed: IntCounter,
    pub stream_lost: IntCounter,
    pub announce_dropped: IntCounter,
    pub unawaited: IntCounter,
}

fn counter_vec(name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    // Names and labels are constants of this file: a failure is a programming error.
    IntCounterVec::new(Opts::new(name, help), labels).expect("valid metric definition")
}

fn gauge_vec(name: &str, help: &str, labels: &[&str]) -> IntGaugeVec {
    IntGaugeVec::new(Opts::new(name, help), labels).expect("valid metric definition")
}

impl Metrics {
    pub(crate) fn new() -> Self {
        Metrics {
            messages: counter_vec(
                "ferromq_cluster_forwarded_messages_total",
                "Messages forwarded to (sent: acknowledged by the peer) or from (received) a peer",
                &["peer", "direction"],
            ),
            bytes: counter_vec(
                "ferromq_cluster_forwarded_bytes_total",
                "Topic plus message bytes forwarded to (acknowledged) or from a peer",
                &["peer", "direction"],
            ),
            depth: gauge_vec(
                "ferromq_cluster_forward_queue_depth",
                "Messages queued for a peer and not yet written to its stream",
                &["peer"],
            ),
            dropped: counter_vec(
                "ferromq_cluster_forward_dropped_total",
                "Messages not forwarded to a peer, by reason (QoS 1/2 refusals included)",
                &["peer", "reason"],
            ),
            up: gauge_vec(
                "ferromq_cluster_peer_up",
                "1 while the forward stream to the peer is open",
                &["peer"],
            ),
            announce_dropped: counter_vec(
                "ferromq_cluster_announcements_dropped_total",
                "Clean-session connect announcements not delivered to a peer (queue full or RPC failed)",
                &["peer"],
            ),
            unawaited: counter_vec(
                "ferromq_cluster_forward_unawaited_total",
                "QoS 1/2 messages queued for a peer whose publisher was acknowledged without waiting for the peer (all its matching routes transient)",
                &["peer"],
            ),
        }
    }

    pub(crate) fn register(&self, registry: &Registry) {
        let all: [Box<dyn prometheus::core::Collector>; 7] = [
            Box::new(self.messages.clone()),
            Box::new(self.bytes.clone()),
            Box::new(self.depth.clone()),
            Box::new(self.dropped.clone()),
            Box::new(self.up.clone()),
            Box::new(self.announce_dropped.clone()),
            Box::new(self.unawaited.clone()),
        ];
        for c in all {
            if let Err(e) = registry.register(c) {
                tracing::warn!(error = %e, "cluster peer metrics: register failed");
            }
        }
    }

    pub(crate) fn peer(&self, node: NodeId) -> PeerMetrics {
        let p = node.to_string();
        let p = p.as_str();
        PeerMetrics {
            sent_messages: self.messages.with_label_values(&[p, SENT]),
            sent_bytes: self.bytes.with_label_values(&[p, SENT]),
            depth: self.depth.with_label_values(&[p]),
            up: self.up.with_label_values(&[p]),
            queue_full: self.dropped.with_label_values(&[p, reason::QUEUE_FULL]),
            peer_down: self.dropped.with_label_values(&[p, reason::PEER_DOWN]),
            peer_removed: self.dropped.with_label_values(&[p, reason::PEER_REMOVED]),
            stream_lost: self.dropped.with_label_values(&[p, reason::STREAM_LOST]),
            announce_dropped: self.announce_dropped.with_label_values(&[p]),
            unawaited: self.unawaited.with_label_values(&[p]),
        }
    }

    /// Delete a removed peer's series (handles already held keep working, detached).
    pub(crate) fn remove_peer(&self, node: NodeId) {
        let p = node.to_string();
        let p = p.as_str();
        for dir in [SENT, RECEIVED] {
            let _ = self.messages.remove_label_values(&[p, dir]);
            let _ = self.bytes.remove_label_values(&[p, dir]);
        }
        for r in reason::ALL {
            let _ = self.dropped.remove_label_values(&[p, r]);
        }
        let _ = self.depth.remove_label_values(&[p]);
        let _ = self.up.remove_label_values(&[p]);
        let _ = self.announce_dropped.remove_label_values(&[p]);
        let _ = self.unawaited.remove_label_values(&[p]);
    }

    pub(crate) fn unknown_peer_drop(&self, node: NodeId) {
        self.dropped
            .with_label_values(&[node.to_string().as_str(), reason::UNKNOWN_PEER])
            .inc();
    }

    pub(crate) fn received(&self, from: NodeId, messages: u64, bytes: u64) {
        let p = from.to_string();
        self.messages
            .with_label_values(&[p.as_str(), RECEIVED])
            .inc_by(messages);
        self.bytes
            .with_label_values(&[p.as_str(), RECEIVED])
            .inc_by(bytes);
    }
}
