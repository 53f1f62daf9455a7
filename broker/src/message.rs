//! An application message as the broker holds it after receipt.
//!
//! One `Message` is created per received PUBLISH and shared by reference count between
//! every subscriber queue, the retained store and the will machinery: fan-out to N
//! subscribers clones an `Arc`, never the payload (STYLE.md item 2).

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use ferromq_codec::{ByteString, PublishProperties, QoS};

/// Identifies the session a message came from, for No Local [MQTT-3.8.3-3].
pub type SessionId = u64;

/// A received application message.
#[derive(Debug, Clone)]
pub struct Message {
    pub topic: ByteString,
    pub payload: Bytes,
    /// QoS the publisher sent it with; each delivery is downgraded to the subscription's.
    pub qos: QoS,
    /// The RETAIN flag as published (Retain As Published needs it).
    pub retain: bool,
    /// Properties forwarded to subscribers unchanged [MQTT-3.3.2-17] [MQTT-3.3.2-20]:
    /// topic alias and subscription identifiers are stripped on receipt because they
    /// are per-connection.
    pub properties: PublishProperties,
    /// The publishing session; `None` for wills of ended sessions and `$SYS` messages.
    pub origin: Option<SessionId>,
    /// When the broker received it; the Message Expiry Interval counts from here.
    pub received_at: Instant,
    /// Absolute expiry, from Message Expiry Interval [MQTT-3.3.2-5].
    pub expires_at: Option<Instant>,
}

impl Message {
    /// Builds a message, deriving its expiry from the properties.
    pub fn new(
        topic: ByteString,
        payload: Bytes,
        qos: QoS,
        retain: bool,
        mut properties: PublishProperties,
        origin: Option<SessionId>,
    ) -> Arc<Message> {
        properties.topic_alias = None;
        properties.subscription_identifiers.clear();
        let received_at = Instant::now();
        let expires_at = properties
            .message_expiry_interval
            .map(|secs| received_at + Duration::from_secs(u64::from(secs)));
        Arc::new(Message {
            topic,
            payload,
            qos,
            retain,
            properties,
            origin,
            received_at,
            expires_at,
        })
    }

    /// A message loaded from the store or forwarded by a peer, with its expiry already
    /// absolute, received here at `received_at`.
    pub fn restore(
        topic: ByteString,
        payload: Bytes,
        qos: QoS,
        retain: bool,
        properties: PublishProperties,
        expires_at: Option<Instant>,
        received_at: Instant,
    ) -> Arc<Message> {
        Arc::new(Message {
            topic,
            payload,
            qos,
            retain,
            properties,
            origin: None,
            received_at,
            expires_at,
        })
    }

    /// True once the Message Expiry Interval has passed.
    pub fn is_expired(&self, now: Instant) -> bool {
        self.expires_at.is_some_and(|at| now >= at)
    }

    /// The Message Expiry Interval to forward: the original minus the time spent in the
    /// broker [MQTT-3.3.2-6]; at least 1 s while the message is still alive.
    pub fn remaining_expiry(&self, now: Instant) -> Option<u32> {
        self.expires_at.map(|at| {
            let left = at.saturating_duration_since(now).as_secs_f64().ceil() as u64;
            left.clamp(1, u64::from(u32::MAX)) as u32
        })
    }

    /// Approximate bytes this message holds, for queue byte limits.
    pub fn weight(&self) -> usize {
        self.topic.len() + self.payload.len() + 64
    }
}

/// One message on its way to one session.
#[derive(Debug, Clone)]
pub struct Delivery {
    pub message: Arc<Message>,
    /// min(publish QoS, subscription QoS) [MQTT-3.8.4-8].
    pub qos: QoS,
    /// The RETAIN flag to send: 1 for retained messages sent because of a subscribe
    /// [MQTT-3.3.1-8], otherwise the publisher's flag only with Retain As Published
    /// [MQTT-3.3.1-12] [MQTT-3.3.1-13].
    pub retain: bool,
    /// Subscription identifiers of every matching subscription [MQTT-3.3.4-3].
    pub subscription_ids: Vec<u32>,
}
