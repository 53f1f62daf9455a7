//! Broker-wide counters, read by the `$SYS` publisher (and later the metrics endpoint).
//!
//! Plain relaxed atomics: each counter is independent and a reader only needs a recent
//! value, not a consistent snapshot across counters.

use std::sync::atomic::{AtomicU64, Ordering};

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
    /// CONNECTs refused for bad credentials or missing authorisation.
    pub auth_failures: AtomicU64,
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
}
