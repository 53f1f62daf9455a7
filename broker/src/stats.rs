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
