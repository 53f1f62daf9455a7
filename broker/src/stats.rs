//! Broker-wide counters, read by the `$SYS` publisher and the Prometheus endpoint
//! ([`crate::metrics`]).
//!
//! Plain relaxed atomics: each counter is independent and a reader only needs a recent
//! value, not a consistent snapshot across counters. Labelled counters are fixed arrays
//! indexed by small enums ([`Stats::qos_index`], [`DisconnectReason`]), so a label set
//! can never grow with client input. Connections per listener and protocol version sit
//! in a small map behind a mutex, touched once per connect and disconnect.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use ferromq_codec::{ProtocolVersion, QoS};
use parking_lot::Mutex;

/// Why a connection ended, as counted by `ferromq_disconnects_total{reason}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DisconnectReason {
    /// The client sent DISCONNECT (any v5 reason).
    Client,
    /// The socket closed or failed without DISCONNECT.
    Network,
    /// Keep alive expired [MQTT-3.1.2-24].
    KeepAlive,
    /// The broker closed it for a protocol violation or malformed packet.
    ProtocolError,
    /// Another connection took the session over [MQTT-3.1.4-3].
    TakenOver,
    /// An operator disconnected it (admin API, v5 DISCONNECT 0x98).
    Administrative,
    /// The broker is shutting down.
    Shutdown,
    /// A 3.1.x publish could not be stored (disk full, I/O error).
    Storage,
}

impl DisconnectReason {
    /// Every reason, in label order.
    pub const ALL: [DisconnectReason; 8] = [
        DisconnectReason::Client,
        DisconnectReason::Network,
        DisconnectReason::KeepAlive,
        DisconnectReason::ProtocolError,
        DisconnectReason::TakenOver,
        DisconnectReason::Administrative,
        DisconnectReason::Shutdown,
        DisconnectReason::Storage,
    ];

    /// The `reason` label value.
    pub fn label(self) -> &'static str {
        match self {
            DisconnectReason::Client => "client_disconnect",
            DisconnectReason::Network => "network",
            DisconnectReason::KeepAlive => "keep_alive_timeout",
            DisconnectReason::ProtocolError => "protocol_error",
            DisconnectReason::TakenOver => "taken_over",
            DisconnectReason::Administrative => "administrative",
            DisconnectReason::Shutdown => "shutdown",
            DisconnectReason::Storage => "storage_error",
        }
    }
}

/// The `protocol` label value of an MQTT protocol version.
pub fn protocol_label(v: ProtocolVersion) -> &'static str {
    match v {
        ProtocolVersion::V3_1 => "3.1",
        ProtocolVersion::V3_1_1 => "3.1.1",
        ProtocolVersion::V5 => "5.0",
    }
}

#[derive(Debug, Default)]
pub struct Stats {
    pub clients_connected: AtomicU64,
    pub clients_maximum: AtomicU64,
    pub connects_total: AtomicU64,
    /// All MQTT packets received / sent (Mosquitto `$SYS/broker/messages/*`).
    pub packets_received: AtomicU64,
    pub packets_sent: AtomicU64,
    pub bytes_received: AtomicU64,
    pub bytes_sent: AtomicU64,
    pub publish_received: AtomicU64,
    pub publish_sent: AtomicU64,
    pub publish_bytes_received: AtomicU64,
    pub publish_bytes_sent: AtomicU64,
    /// PUBLISHes that matched no subscriber.
    pub publish_dropped_no_subscribers: AtomicU64,
    /// Deliveries dropped because a session queue was full.
    pub dropped_queue_full: AtomicU64,
    /// Deliveries dropped because the message expired before it was sent.
    pub dropped_expired: AtomicU64,
    /// Deliveries dropped because they exceed the client's Maximum Packet Size.
    pub dropped_too_large: AtomicU64,
    /// Connections closed for a protocol violation or malformed packet.
    pub protocol_errors: AtomicU64,
    /// PUBLISHes received, by QoS (index 0, 1, 2), and their payload bytes.
    pub publish_received_qos: [AtomicU64; 3],
    pub publish_bytes_received_qos: [AtomicU64; 3],
    /// PUBLISHes written to subscribers, by the QoS they were sent at, and their
    /// payload bytes.
    pub publish_sent_qos: [AtomicU64; 3],
    pub publish_bytes_sent_qos: [AtomicU64; 3],
    /// Inbound PUBLISHes above `message_size_limit`, not routed.
    pub dropped_payload_too_large: AtomicU64,
    /// QoS 0 deliveries to offline sessions (dropped unless `queue_qos0_messages`).
    pub dropped_offline_qos0: AtomicU64,
    /// PUBLISHes refused by authorisation (ACL write), not routed; counted with
    /// `acl_publish_denied`.
    pub dropped_not_authorized: AtomicU64,
    /// Messages refused by rate limiting; counted by the rate limiter.
    pub dropped_rate_limited: AtomicU64,
    /// CONNECTs refused for bad credentials or because the client is not authorised
    /// (CONNACK 0x86 / 0x87, 3.1.1 return codes 4 / 5).
    pub auth_failures: AtomicU64,
    /// Connections ended, by [`DisconnectReason`] (index = position in `ALL`).
    pub disconnects: [AtomicU64; DisconnectReason::ALL.len()],
    /// Open connections by (listener name, protocol label). Entries stay at 0 once
    /// seen, so a gauge drops to 0 rather than disappearing. Bounded by listeners x 3.
    pub connections: Mutex<BTreeMap<(Arc<str>, &'static str), u64>>,
    /// CONNECTs refused at once because their address had too many failed logins.
    pub auth_blocked: AtomicU64,
    /// PUBLISHes the ACL refused (write).
    pub acl_publish_denied: AtomicU64,
    /// Subscriptions the ACL refused.
    pub acl_subscribe_denied: AtomicU64,
    /// Deliveries (live and retained) the ACL refused (read).
    pub acl_read_denied: AtomicU64,
    /// Retained PUBLISHes refused because `limits.retained_max_bytes` was reached.
    pub retained_over_budget: AtomicU64,
    /// Subscriptions refused by `limits.max_subscriptions_per_client`.
    pub subscription_quota_exceeded: AtomicU64,
    /// Sockets closed at accept by `limits.max_connections`.
    pub connections_refused_max: AtomicU64,
    /// Sockets closed at accept by `limits.connection_rate_per_ip`.
    pub connections_refused_rate: AtomicU64,
    /// Times a connection stopped reading because of its publish rate limit.
    pub publish_throttled: AtomicU64,
}

impl Stats {
    pub fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }

    pub fn get(counter: &AtomicU64) -> u64 {
        counter.load(Ordering::Relaxed)
    }

    pub fn client_connected(&self) {
        let now = self.clients_connected.fetch_add(1, Ordering::Relaxed) + 1;
        self.clients_maximum.fetch_max(now, Ordering::Relaxed);
        self.connects_total.fetch_add(1, Ordering::Relaxed);
    }

    pub fn client_disconnected(&self) {
        self.clients_connected.fetch_sub(1, Ordering::Relaxed);
    }

    /// Array index of a QoS in the `*_qos` counters.
    pub fn qos_index(qos: QoS) -> usize {
        match qos {
            QoS::AtMostOnce => 0,
            QoS::AtLeastOnce => 1,
            QoS::ExactlyOnce => 2,
        }
    }

    /// A PUBLISH received from a client, by QoS.
    pub fn publish_in(&self, qos: QoS, payload_len: usize) {
        let i = Self::qos_index(qos);
        Self::add(&self.publish_received_qos[i], 1);
        Self::add(&self.publish_bytes_received_qos[i], payload_len as u64);
    }

    /// A connection on `listener` finished its handshake.
    pub fn connection_opened(&self, listener: &Arc<str>, protocol: ProtocolVersion) {
        *self
            .connections
            .lock()
            .entry((listener.clone(), protocol_label(protocol)))
            .or_insert(0) += 1;
    }

    /// A connection counted by [`Stats::connection_opened`] ended.
    pub fn connection_closed(
        &self,
        listener: &Arc<str>,
        protocol: ProtocolVersion,
        reason: DisconnectReason,
    ) {
        if let Some(n) = self
            .connections
            .lock()
            .get_mut(&(listener.clone(), protocol_label(protocol)))
        {
            *n = n.saturating_sub(1);
        }
        if let Some(i) = DisconnectReason::ALL.iter().position(|r| *r == reason) {
            Self::add(&self.disconnects[i], 1);
        }
    }
}
