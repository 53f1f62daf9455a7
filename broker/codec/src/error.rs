//! Codec errors. Each decode error maps to the reason code the spec names for it, so the
//! broker can answer a v5 client with the right DISCONNECT (0x81 malformed, 0x82
//! protocol error, 0x95 packet too large) before closing.

use crate::reason::ReasonCode;

/// Why a frame could not be decoded. Incomplete input is not an error: [`crate::check`]
/// and [`crate::decode`] return `Ok(None)` for it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// The Remaining Length varint is longer than 4 bytes [MQTT-1.5.5-1].
    #[error("malformed remaining length")]
    MalformedRemainingLength,
    /// The whole packet is larger than the maximum packet size; detected from the fixed
    /// header alone, before the body is buffered.
    #[error("packet of {size} bytes exceeds the maximum packet size of {max}")]
    PacketTooLarge { size: usize, max: usize },
    /// Packet type 0 or 15 in 3.1.x (AUTH is 15 and only exists in 5.0).
    #[error("invalid packet type {0}")]
    InvalidPacketType(u8),
    /// Reserved flag bits of the fixed header are not as specified [MQTT-2.2.2-2].
    #[error("invalid fixed header flags 0x{flags:X} for packet type {packet_type}")]
    InvalidFlags { packet_type: u8, flags: u8 },
    /// QoS 3 in a PUBLISH or a subscription [MQTT-3.3.1-4].
    #[error("invalid QoS 3")]
    InvalidQoS,
    /// A string is not well-formed UTF-8 or contains U+0000 [MQTT-1.5.4-1] [MQTT-1.5.4-2].
    #[error("invalid UTF-8 string or U+0000 character [MQTT-1.5.4-1] [MQTT-1.5.4-2]")]
    InvalidUtf8,
    /// The CONNECT protocol name is neither `MQTT` nor `MQIsdp` [MQTT-3.1.2-1].
    #[error("invalid protocol name")]
    InvalidProtocolName,
    /// The CONNECT protocol level is not 3, 4 or 5 [MQTT-3.1.2-2]; the broker answers
    /// with CONNACK 0x01 (3.1.x) or 0x84 (5.0) and closes.
    #[error("unsupported protocol level {0}")]
    UnsupportedProtocolVersion(u8),
    /// A structurally broken packet (truncated field, trailing bytes, bad length).
    #[error("malformed packet: {0}")]
    Malformed(&'static str),
    /// Topic Alias 0 in a PUBLISH [MQTT-3.3.2-8]: answered with DISCONNECT 0x94 (Topic
    /// Alias invalid), the code the Paho suite and HiveMQ use, rather than a generic 0x82.
    #[error("Topic Alias 0 is not permitted [MQTT-3.3.2-8]")]
    TopicAliasInvalid,
    /// A well-formed packet that breaks a protocol rule (duplicate property, property
    /// not allowed here, packet id 0, empty SUBSCRIBE, wildcard in a topic name, ...).
    #[error("protocol error: {0}")]
    Protocol(&'static str),
}

impl DecodeError {
    /// The MQTT 5 reason code for a DISCONNECT (or CONNACK) reporting this error.
    pub fn reason_code(&self) -> ReasonCode {
        match self {
            DecodeError::PacketTooLarge { .. } => ReasonCode::PACKET_TOO_LARGE,
            DecodeError::UnsupportedProtocolVersion(_) => ReasonCode::UNSUPPORTED_PROTOCOL_VERSION,
            DecodeError::Protocol(_) => ReasonCode::PROTOCOL_ERROR,
            DecodeError::TopicAliasInvalid => ReasonCode::TOPIC_ALIAS_INVALID,
            DecodeError::InvalidProtocolName => ReasonCode::UNSUPPORTED_PROTOCOL_VERSION,
            _ => ReasonCode::MALFORMED_PACKET,
        }
    }
}

/// Why a packet could not be encoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EncodeError {
    /// A string or binary field longer than 65,535 bytes.
    #[error("field of {0} bytes is longer than 65535")]
    FieldTooLong(usize),
    /// The packet's remaining length exceeds 268,435,455.
    #[error("packet too large to encode")]
    PacketTooLarge,
    /// The packet does not exist in the target protocol version (AUTH in 3.1.1).
    #[error("{0} cannot be encoded for this protocol version")]
    NotInVersion(&'static str),
}
