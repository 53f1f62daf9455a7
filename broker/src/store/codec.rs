//! On-disk encoding of stored messages and records.
//!
//! A stored message is an envelope around the message as an MQTT 5 PUBLISH packet
//! (the wire codec is already fuzzed and round-trip tested, and carries every
//! property), plus the wall-clock expiry so Message Expiry counts across downtime:
//!
//! ```text
//! [version = 1][expires_at_unix_ms: u64 BE, 0 = never][PUBLISH packet, v5 encoding]
//! ```
//! Keys: `client_id 0x00 suffix` (a client id never contains U+0000
//! [MQTT-1.5.4-2]), so every key of a session shares the prefix `client_id 0x00`.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::{BufMut, Bytes, BytesMut};
use ferromq_codec::{Packet, ProtocolVersion, Publish, QoS};

use crate::message::{Delivery, Message};

const ENVELOPE_VERSION: u8 = 1;

/// Milliseconds since the Unix epoch, now.
pub fn now_unix_ms() -> u64 {
    system_time_to_unix_ms(SystemTime::now())
}

/// Milliseconds since the Unix epoch of a wall-clock time (0 before the epoch).
pub fn system_time_to_unix_ms(at: SystemTime) -> u64 {
    at.duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// The wall-clock time (Unix ms) of a monotonic instant.
pub fn instant_to_unix_ms(at: Instant) -> u64 {
    let now = Instant::now();
    let wall = now_unix_ms();
    if at >= now {
        wall + at.duration_since(now).as_millis() as u64
    } else {
        wall.saturating_sub(now.duration_since(at).as_millis() as u64)
    }
}

/// The monotonic instant of a wall-clock time (Unix ms); past times map to now.
pub fn unix_ms_to_instant(ms: u64) -> Instant {
    let wall = now_unix_ms();
    Instant::now() + Duration::from_millis(ms.saturating_sub(wall))
}

/// The key prefix of every record of a session.
pub fn session_prefix(client_id: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(client_id.len() + 1);
    k.extend_from_slice(client_id.as_bytes());
    k.push(0);
    k
}

pub fn session_key(client_id: &str, suffix: &[u8]) -> Vec<u8> {
    let mut k = session_prefix(client_id);
    k.extend_from_slice(suffix);
    k
}

/// Splits a key into client id and suffix.
pub fn split_key(key: &[u8]) -> Option<(&str, &[u8])> {
    let nul = key.iter().position(|b| *b == 0)?;
    let id = std::str::from_utf8(&key[..nul]).ok()?;
    Some((id, &key[nul + 1..]))
}

/// Encodes a delivery (the message as it will be sent: delivery QoS, retain flag,
/// subscription identifiers).
pub fn encode_delivery(d: &Delivery) -> Vec<u8> {
    let m = &d.message;
    let mut properties = m.properties.clone();
    properties.subscription_identifiers = d.subscription_ids.clone();
    let publish = Publish {
        dup: false,
        qos: d.qos,
        retain: d.retain,
        topic: m.topic.clone(),
        packet_id: if d.qos == QoS::AtMostOnce { 0 } else { 1 },
        properties,
        payload: m.payload.clone(),
    };
    envelope(m.expires_at, &publish).to_vec()
}

/// Encodes a message (retained store, wills): its own QoS and retain flag.
pub fn encode_message(m: &Message) -> Vec<u8> {
    message_envelope(m).to_vec()
}

/// [`encode_message`] as `Bytes`, without the copy into a `Vec` (the cluster's
/// forwarded messages, encoded once per PUBLISH on the hot path).
pub fn encode_message_bytes(m: &Message) -> Bytes {
    message_envelope(m).freeze()
}

fn message_envelope(m: &Message) -> BytesMut {
    let publish = Publish {
        dup: false,
        qos: m.qos,
        retain: m.retain,
        topic: m.topic.clone(),
        packet_id: if m.qos == QoS::AtMostOnce { 0 } else { 1 },
        properties: m.properties.clone(),
        payload: m.payload.clone(),
    };
    envelope(m.expires_at, &publish)
}

fn envelope(expires_at: Option<Instant>, publish: &Publish) -> BytesMut {
    let mut out = BytesMut::with_capacity(publish.payload.len() + publish.topic.len() + 32);
    out.put_u8(ENVELOPE_VERSION);
    out.put_u64(expires_at.map(instant_to_unix_ms).unwrap_or(0));
    // Encoding only fails for fields above the protocol's limits, which a decoded
    // message cannot have; an empty record is then rejected on load.
    let _ = ferromq_codec::encode_publish(publish, ProtocolVersion::V5, &mut out);
    out
}

/// Whether `bytes` starts with an envelope header this version reads.
pub fn header_ok(bytes: &[u8]) -> bool {
    bytes.len() >= 9 && bytes[0] == ENVELOPE_VERSION
}

/// Whether the envelope's expiry (wall clock) has passed, read from the header alone.
pub fn header_expired(bytes: &[u8], now_ms: u64) -> bool {
    header_ok(bytes)
        && bytes[1..9]
            .try_into()
            .map(u64::from_be_bytes)
            .is_ok_and(|at| at != 0 && now_ms >= at)
}

/// A decoded envelope: the PUBLISH and its absolute expiry.
pub struct Stored {
    pub publish: Publish,
    pub expires_at_unix_ms: Option<u64>,
}

/// Decodes an envelope; `None` for a record this version cannot read (corrupt).
pub fn decode(bytes: &[u8]) -> Option<Stored> {
    if bytes.len() < 9 || bytes[0] != ENVELOPE_VERSION {
        return None;
    }
    let expires = u64::from_be_bytes(bytes[1..9].try_into().ok()?);
    let mut buf = BytesMut::from(&bytes[9..]);
    match ferromq_codec::decode(&mut buf, ProtocolVersion::V5, usize::MAX) {
        Ok(Some(Packet::Publish(publish))) if buf.is_empty() => Some(Stored {
            publish,
            expires_at_unix_ms: (expires != 0).then_some(expires),
        }),
        _ => None,
    }
}

impl Stored {
    /// True when the message expired (wall clock), e.g. while the broker was down.
    pub fn expired(&self, now_ms: u64) -> bool {
        self.expires_at_unix_ms.is_some_and(|at| now_ms >= at)
    }

    /// The message, with its expiry mapped back onto the monotonic clock.
    pub fn into_message(self) -> Arc<Message> {
        self.into_message_received(Instant::now())
    }

    /// [`Stored::into_message`] with the time it was received here, read once for a
    /// whole batch (a clock read per message shows in the cluster's profiles).
    pub fn into_message_received(self, now: Instant) -> Arc<Message> {
        let expires = self.expires_at_unix_ms.map(unix_ms_to_instant);
        let mut properties = self.publish.properties;
        properties.subscription_identifiers.clear();
        Message::restore(
            self.publish.topic,
            self.publish.payload,
            self.publish.qos,
            self.publish.retain,
            properties,
            expires,
            now,
        )
    }

    /// The delivery it encodes.
    pub fn into_delivery(self) -> Delivery {
        let qos = self.publish.qos;
        let retain = self.publish.retain;
        let ids = self.publish.properties.subscription_identifiers.clone();
        Delivery {
            message: self.into_message(),
            qos,
            retain,
            subscription_ids: ids,
        }
    }
}
