//! Hand-encoded MQTT 3.1.1 and 5.0 packets, independent of `ferromq-codec`.
//!
//! The tests must not share the broker's codec: a bug there would otherwise be
//! encoded and decoded the same wrong way on both sides. Everything here is
//! written straight from the OASIS specs (MQTT 3.1.1 section 2-3, MQTT 5.0
//! sections 1.5, 2, 3) and kept deliberately small.
//!
//! Layout:
//! - low-level pieces that malformed-input tests combine freely: [`frame`],
//!   [`put_varint`], [`put_bytes`], [`Props`], and the `*_body` functions;
//! - well-formed packets: [`connect_v311`], [`connect_v5`], [`publish_v311`],
//!   [`publish_v5`], [`subscribe_v311`], [`subscribe_v5`], ...;
//! - decoding of what the broker sends: [`RawPacket`], [`check_frame`],
//!   [`Connack`], [`Disconnect`], [`Publish`], [`Ack`], [`Suback`].

use bytes::{Buf, Bytes};

/// Control packet types (MQTT 5.0 table 2-1; the same numbers in 3.1.1).
pub mod kind {
    pub const CONNECT: u8 = 1;
    pub const CONNACK: u8 = 2;
    pub const PUBLISH: u8 = 3;
    pub const PUBACK: u8 = 4;
    pub const PUBREC: u8 = 5;
    pub const PUBREL: u8 = 6;
    pub const PUBCOMP: u8 = 7;
    pub const SUBSCRIBE: u8 = 8;
    pub const SUBACK: u8 = 9;
    pub const UNSUBSCRIBE: u8 = 10;
    pub const UNSUBACK: u8 = 11;
    pub const PINGREQ: u8 = 12;
    pub const PINGRESP: u8 = 13;
    pub const DISCONNECT: u8 = 14;
    pub const AUTH: u8 = 15;

    /// The packet's name, for assertion messages.
    pub fn name(kind: u8) -> &'static str {
        match kind {
            CONNECT => "CONNECT",
            CONNACK => "CONNACK",
            PUBLISH => "PUBLISH",
            PUBACK => "PUBACK",
            PUBREC => "PUBREC",
            PUBREL => "PUBREL",
            PUBCOMP => "PUBCOMP",
            SUBSCRIBE => "SUBSCRIBE",
            SUBACK => "SUBACK",
            UNSUBSCRIBE => "UNSUBSCRIBE",
            UNSUBACK => "UNSUBACK",
            PINGREQ => "PINGREQ",
            PINGRESP => "PINGRESP",
            DISCONNECT => "DISCONNECT",
            AUTH => "AUTH",
            _ => "reserved(0)",
        }
    }
}

/// MQTT 5.0 property identifiers (table 2-4).
pub mod prop {
    pub const PAYLOAD_FORMAT_INDICATOR: u8 = 0x01;
    pub const MESSAGE_EXPIRY_INTERVAL: u8 = 0x02;
    pub const CONTENT_TYPE: u8 = 0x03;
    pub const RESPONSE_TOPIC: u8 = 0x08;
    pub const CORRELATION_DATA: u8 = 0x09;
    pub const SUBSCRIPTION_IDENTIFIER: u8 = 0x0B;
    pub const SESSION_EXPIRY_INTERVAL: u8 = 0x11;
    pub const ASSIGNED_CLIENT_IDENTIFIER: u8 = 0x12;
    pub const SERVER_KEEP_ALIVE: u8 = 0x13;
    pub const AUTHENTICATION_METHOD: u8 = 0x15;
    pub const AUTHENTICATION_DATA: u8 = 0x16;
    pub const REQUEST_PROBLEM_INFORMATION: u8 = 0x17;
    pub const WILL_DELAY_INTERVAL: u8 = 0x18;
    pub const REQUEST_RESPONSE_INFORMATION: u8 = 0x19;
    pub const RESPONSE_INFORMATION: u8 = 0x1A;
    pub const SERVER_REFERENCE: u8 = 0x1C;
    pub const REASON_STRING: u8 = 0x1F;
    pub const RECEIVE_MAXIMUM: u8 = 0x21;
    pub const TOPIC_ALIAS_MAXIMUM: u8 = 0x22;
    pub const TOPIC_ALIAS: u8 = 0x23;
    pub const MAXIMUM_QOS: u8 = 0x24;
    pub const RETAIN_AVAILABLE: u8 = 0x25;
    pub const USER_PROPERTY: u8 = 0x26;
    pub const MAXIMUM_PACKET_SIZE: u8 = 0x27;
    pub const WILDCARD_SUBSCRIPTION_AVAILABLE: u8 = 0x28;
    pub const SUBSCRIPTION_IDENTIFIER_AVAILABLE: u8 = 0x29;
    pub const SHARED_SUBSCRIPTION_AVAILABLE: u8 = 0x2A;
}

/// MQTT 5.0 reason codes used by the tests (table 2-6), plus 3.1.1 CONNACK return codes.
pub mod reason {
    pub const SUCCESS: u8 = 0x00;
    pub const UNSPECIFIED_ERROR: u8 = 0x80;
    pub const MALFORMED_PACKET: u8 = 0x81;
    pub const PROTOCOL_ERROR: u8 = 0x82;
    pub const UNSUPPORTED_PROTOCOL_VERSION: u8 = 0x84;
    pub const SERVER_SHUTTING_DOWN: u8 = 0x8B;
    pub const TOPIC_NAME_INVALID: u8 = 0x90;
    pub const TOPIC_ALIAS_INVALID: u8 = 0x94;
    pub const PACKET_TOO_LARGE: u8 = 0x95;

    /// 3.1.1 CONNACK return code 0x01 "unacceptable protocol version".
    pub const V311_UNACCEPTABLE_PROTOCOL_VERSION: u8 = 0x01;
}

/// The largest value a Variable Byte Integer can carry (MQTT 5.0 section 1.5.5).
pub const MAX_VARINT: u32 = 268_435_455;

/// Appends `value` as a Variable Byte Integer (MQTT 5.0 section 1.5.5, 3.1.1 section 2.2.3).
///
/// # Panics
/// If `value` exceeds [`MAX_VARINT`]; malformed lengths are written by hand in the tests.
pub fn put_varint(out: &mut Vec<u8>, value: u32) {
    assert!(
        value <= MAX_VARINT,
        "{value} does not fit a Variable Byte Integer"
    );
    let mut x = value;
    loop {
        let mut byte = (x % 128) as u8;
        x /= 128;
        if x > 0 {
            byte |= 0x80;
        }
        out.push(byte);
        if x == 0 {
            break;
        }
    }
}

/// Appends a two-byte length and then `bytes` (UTF-8 String or Binary Data; the bytes
/// are not checked, so tests can send invalid UTF-8).
///
/// # Panics
/// If `bytes` is longer than 65,535.
pub fn put_bytes(out: &mut Vec<u8>, bytes: &[u8]) {
    let len = u16::try_from(bytes.len()).expect("string or binary longer than 65535 bytes");
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(bytes);
}

/// A complete packet: `first` (type and flags), the Remaining Length, then `body`.
pub fn frame(first: u8, body: &[u8]) -> Vec<u8> {
    let len = u32::try_from(body.len()).expect("body too long");
    let mut out = Vec::with_capacity(body.len() + 5);
    out.push(first);
    put_varint(&mut out, len);
    out.extend_from_slice(body);
    out
}

/// An MQTT 5.0 property list, written in the order the builder methods are called
/// (so a test can repeat a property on purpose).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Props(Vec<u8>);

impl Props {
    pub fn new() -> Props {
        Props(Vec::new())
    }

    /// A property list taken as is (no checks), for malformed input.
    pub fn raw(bytes: &[u8]) -> Props {
        Props(bytes.to_vec())
    }

    pub fn byte(mut self, id: u8, value: u8) -> Props {
        self.0.push(id);
        self.0.push(value);
        self
    }

    pub fn u16(mut self, id: u8, value: u16) -> Props {
        self.0.push(id);
        self.0.extend_from_slice(&value.to_be_bytes());
        self
    }

    pub fn u32(mut self, id: u8, value: u32) -> Props {
        self.0.push(id);
        self.0.extend_from_slice(&value.to_be_bytes());
        self
    }

    pub fn varint(mut self, id: u8, value: u32) -> Props {
        self.0.push(id);
        put_varint(&mut self.0, value);
        self
    }

    pub fn string(mut self, id: u8, value: &str) -> Props {
        self.0.push(id);
        put_bytes(&mut self.0, value.as_bytes());
        self
    }

    pub fn binary(mut self, id: u8, value: &[u8]) -> Props {
        self.0.push(id);
        put_bytes(&mut self.0, value);
        self
    }

    pub fn user(mut self, key: &str, value: &str) -> Props {
        self.0.push(prop::USER_PROPERTY);
        put_bytes(&mut self.0, key.as_bytes());
        put_bytes(&mut self.0, value.as_bytes());
        self
    }

    /// The properties without their length prefix.
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }

    /// Appends the Property Length (a Variable Byte Integer) and the properties.
    pub fn put(&self, out: &mut Vec<u8>) {
        let len = u32::try_from(self.0.len()).expect("property list too long");
        put_varint(out, len);
        out.extend_from_slice(&self.0);
    }
}

// ---------------------------------------------------------------------------
// CONNECT

/// Connect flag bits (MQTT 5.0 section 3.1.2.3).
pub mod connect_flags {
    pub const RESERVED: u8 = 0x01;
    pub const CLEAN_START: u8 = 0x02;
    pub const WILL: u8 = 0x04;
    pub const WILL_RETAIN: u8 = 0x20;
    pub const PASSWORD: u8 = 0x80;
    pub const USERNAME: u8 = 0x40;
}

/// The body of a CONNECT without Will, username or password, with every field
/// chosen by the caller: `props` is `None` for 3.1.1 and earlier.
pub fn connect_body(
    protocol_name: &[u8],
    level: u8,
    flags: u8,
    keepalive: u16,
    props: Option<&Props>,
    client_id: &[u8],
) -> Vec<u8> {
    let mut body = Vec::new();
    put_bytes(&mut body, protocol_name);
    body.push(level);
    body.push(flags);
    body.extend_from_slice(&keepalive.to_be_bytes());
    if let Some(props) = props {
        props.put(&mut body);
    }
    put_bytes(&mut body, client_id);
    body
}

/// A 3.1.1 CONNECT with Clean Session set.
pub fn connect_v311(client_id: &str, keepalive: u16) -> Vec<u8> {
    frame(
        0x10,
        &connect_body(
            b"MQTT",
            4,
            connect_flags::CLEAN_START,
            keepalive,
            None,
            client_id.as_bytes(),
        ),
    )
}

/// A 5.0 CONNECT with Clean Start set and the given CONNECT properties.
pub fn connect_v5(client_id: &str, keepalive: u16, props: &Props) -> Vec<u8> {
    frame(
        0x10,
        &connect_body(
            b"MQTT",
            5,
            connect_flags::CLEAN_START,
            keepalive,
            Some(props),
            client_id.as_bytes(),
        ),
    )
}

// ---------------------------------------------------------------------------
// PUBLISH

/// The first byte of a PUBLISH (MQTT 5.0 section 3.3.1). `qos` is not checked, so
/// `publish_first_byte(3, false, false)` gives the forbidden QoS 3.
pub fn publish_first_byte(qos: u8, retain: bool, dup: bool) -> u8 {
    0x30 | (u8::from(dup) << 3) | ((qos & 0x03) << 1) | u8::from(retain)
}

/// The body of a PUBLISH: topic (raw bytes), Packet Identifier when given,
/// properties when given (5.0), then the payload.
pub fn publish_body(
    topic: &[u8],
    packet_id: Option<u16>,
    props: Option<&Props>,
    payload: &[u8],
) -> Vec<u8> {
    let mut body = Vec::with_capacity(topic.len() + payload.len() + 8);
    put_bytes(&mut body, topic);
    if let Some(id) = packet_id {
        body.extend_from_slice(&id.to_be_bytes());
    }
    if let Some(props) = props {
        props.put(&mut body);
    }
    body.extend_from_slice(payload);
    body
}

fn qos_packet_id(qos: u8, packet_id: u16) -> Option<u16> {
    (qos > 0).then_some(packet_id)
}

/// A 3.1.1 PUBLISH; `packet_id` is only written for QoS > 0.
pub fn publish_v311(topic: &str, qos: u8, packet_id: u16, payload: &[u8]) -> Vec<u8> {
    frame(
        publish_first_byte(qos, false, false),
        &publish_body(
            topic.as_bytes(),
            qos_packet_id(qos, packet_id),
            None,
            payload,
        ),
    )
}

/// A 5.0 PUBLISH; `packet_id` is only written for QoS > 0.
pub fn publish_v5(topic: &str, qos: u8, packet_id: u16, props: &Props, payload: &[u8]) -> Vec<u8> {
    frame(
        publish_first_byte(qos, false, false),
        &publish_body(
            topic.as_bytes(),
            qos_packet_id(qos, packet_id),
            Some(props),
            payload,
        ),
    )
}

/// PUBACK for `packet_id`: the 3.1.1 form, which is also the 5.0 form for reason Success.
pub fn puback(packet_id: u16) -> Vec<u8> {
    frame(0x40, &packet_id.to_be_bytes())
}

// ---------------------------------------------------------------------------
// SUBSCRIBE / UNSUBSCRIBE

/// The body of a SUBSCRIBE: Packet Identifier, properties when given (5.0), then
/// each filter (raw bytes) with its options byte (3.1.1: the requested QoS).
pub fn subscribe_body(packet_id: u16, props: Option<&Props>, filters: &[(&[u8], u8)]) -> Vec<u8> {
    let mut body = Vec::new();
    body.extend_from_slice(&packet_id.to_be_bytes());
    if let Some(props) = props {
        props.put(&mut body);
    }
    for (filter, options) in filters {
        put_bytes(&mut body, filter);
        body.push(*options);
    }
    body
}

/// The first byte of SUBSCRIBE: flags 0b0010 are required [MQTT-3.8.1-1].
pub const SUBSCRIBE_FIRST_BYTE: u8 = 0x82;
/// The first byte of UNSUBSCRIBE: flags 0b0010 are required [MQTT-3.10.1-1].
pub const UNSUBSCRIBE_FIRST_BYTE: u8 = 0xA2;

/// A 3.1.1 SUBSCRIBE to `filters` with their requested QoS.
pub fn subscribe_v311(packet_id: u16, filters: &[(&str, u8)]) -> Vec<u8> {
    let filters: Vec<(&[u8], u8)> = filters.iter().map(|(f, q)| (f.as_bytes(), *q)).collect();
    frame(
        SUBSCRIBE_FIRST_BYTE,
        &subscribe_body(packet_id, None, &filters),
    )
}

/// A 5.0 SUBSCRIBE to `filters` with their Subscription Options bytes.
pub fn subscribe_v5(packet_id: u16, props: &Props, filters: &[(&str, u8)]) -> Vec<u8> {
    let filters: Vec<(&[u8], u8)> = filters.iter().map(|(f, q)| (f.as_bytes(), *q)).collect();
    frame(
        SUBSCRIBE_FIRST_BYTE,
        &subscribe_body(packet_id, Some(props), &filters),
    )
}

/// The body of an UNSUBSCRIBE: Packet Identifier, properties when given, filters.
pub fn unsubscribe_body(packet_id: u16, props: Option<&Props>, filters: &[&[u8]]) -> Vec<u8> {
    let mut body = Vec::new();
    body.extend_from_slice(&packet_id.to_be_bytes());
    if let Some(props) = props {
        props.put(&mut body);
    }
    for filter in filters {
        put_bytes(&mut body, filter);
    }
    body
}

// ---------------------------------------------------------------------------
// PINGREQ / DISCONNECT

/// PINGREQ (both versions).
pub fn pingreq() -> Vec<u8> {
    vec![0xC0, 0x00]
}

/// The 3.1.1 DISCONNECT (also a 5.0 DISCONNECT with reason Normal disconnection).
pub fn disconnect_v311() -> Vec<u8> {
    vec![0xE0, 0x00]
}

/// A 5.0 DISCONNECT with a reason code and properties.
pub fn disconnect_v5(reason: u8, props: &Props) -> Vec<u8> {
    let mut body = vec![reason];
    props.put(&mut body);
    frame(0xE0, &body)
}

// ---------------------------------------------------------------------------
// Decoding what the broker sends

/// Why bytes from the broker are not a valid packet.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("Remaining Length uses more than four bytes")]
    RemainingLengthTooLong,
    #[error("packet of {0} bytes is larger than the client accepts")]
    TooLarge(usize),
    #[error("{0} is truncated")]
    Truncated(&'static str),
    #[error("expected {expected}, got {got}")]
    WrongType {
        expected: &'static str,
        got: &'static str,
    },
    #[error("{0} has invalid flags {1:#06b}")]
    BadFlags(&'static str, u8),
    #[error("invalid UTF-8 in {0}")]
    Utf8(&'static str),
    #[error("unknown property identifier {0:#04x}")]
    UnknownProperty(u8),
    #[error("{0} has {1} unexpected trailing bytes")]
    Trailing(&'static str, usize),
}

/// One packet as read off the wire: the first byte and the body after the
/// Remaining Length.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawPacket {
    pub first: u8,
    pub body: Bytes,
}

impl RawPacket {
    /// The packet type (upper four bits).
    pub fn kind(&self) -> u8 {
        self.first >> 4
    }

    /// The flags (lower four bits).
    pub fn flags(&self) -> u8 {
        self.first & 0x0F
    }

    pub fn name(&self) -> &'static str {
        kind::name(self.kind())
    }

    fn expect_kind(&self, want: u8) -> Result<(), DecodeError> {
        if self.kind() == want {
            Ok(())
        } else {
            Err(DecodeError::WrongType {
                expected: kind::name(want),
                got: self.name(),
            })
        }
    }
}

impl std::fmt::Display for RawPacket {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} (first byte {:#04x}, body ", self.name(), self.first)?;
        for b in self.body.iter().take(64) {
            write!(f, "{b:02x}")?;
        }
        if self.body.len() > 64 {
            write!(f, "... {} bytes", self.body.len())?;
        }
        write!(f, ")")
    }
}

/// Looks for a complete packet at the start of `buf` without consuming it.
///
/// Returns `Ok(Some((header_len, total_len)))` for a complete packet,
/// `Ok(None)` when more bytes are needed, and an error for a Remaining Length
/// of five bytes or a packet larger than `max_packet`.
pub fn check_frame(buf: &[u8], max_packet: usize) -> Result<Option<(usize, usize)>, DecodeError> {
    let mut value: usize = 0;
    let mut multiplier: usize = 1;
    for i in 1..=4 {
        let Some(&byte) = buf.get(i) else {
            return Ok(None);
        };
        value += usize::from(byte & 0x7F) * multiplier;
        if byte & 0x80 == 0 {
            let header = i + 1;
            let total = header + value;
            if total > max_packet {
                return Err(DecodeError::TooLarge(total));
            }
            return Ok((buf.len() >= total).then_some((header, total)));
        }
        multiplier *= 128;
    }
    Err(DecodeError::RemainingLengthTooLong)
}

fn take_u8(buf: &mut Bytes, what: &'static str) -> Result<u8, DecodeError> {
    if buf.remaining() < 1 {
        return Err(DecodeError::Truncated(what));
    }
    Ok(buf.get_u8())
}

fn take_u16(buf: &mut Bytes, what: &'static str) -> Result<u16, DecodeError> {
    if buf.remaining() < 2 {
        return Err(DecodeError::Truncated(what));
    }
    Ok(buf.get_u16())
}

fn take_u32(buf: &mut Bytes, what: &'static str) -> Result<u32, DecodeError> {
    if buf.remaining() < 4 {
        return Err(DecodeError::Truncated(what));
    }
    Ok(buf.get_u32())
}

fn take_varint(buf: &mut Bytes, what: &'static str) -> Result<u32, DecodeError> {
    let mut value: u32 = 0;
    for i in 0..4 {
        let byte = take_u8(buf, what)?;
        value += u32::from(byte & 0x7F) << (7 * i);
        if byte & 0x80 == 0 {
            return Ok(value);
        }
    }
    Err(DecodeError::RemainingLengthTooLong)
}

fn take_binary(buf: &mut Bytes, what: &'static str) -> Result<Bytes, DecodeError> {
    let len = usize::from(take_u16(buf, what)?);
    if buf.remaining() < len {
        return Err(DecodeError::Truncated(what));
    }
    Ok(buf.split_to(len))
}

fn take_string(buf: &mut Bytes, what: &'static str) -> Result<String, DecodeError> {
    let bytes = take_binary(buf, what)?;
    String::from_utf8(bytes.to_vec()).map_err(|_| DecodeError::Utf8(what))
}

/// A decoded property value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PropValue {
    Byte(u8),
    U16(u16),
    U32(u32),
    Varint(u32),
    String(String),
    Binary(Bytes),
    Pair(String, String),
}

/// A decoded MQTT 5.0 property list, in wire order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Properties(pub Vec<(u8, PropValue)>);

impl Properties {
    /// Reads a Property Length and the properties it covers.
    pub fn take(buf: &mut Bytes) -> Result<Properties, DecodeError> {
        let len = take_varint(buf, "property length")? as usize;
        if buf.remaining() < len {
            return Err(DecodeError::Truncated("properties"));
        }
        let mut props = buf.split_to(len);
        let mut out = Vec::new();
        while props.has_remaining() {
            let id = take_varint(&mut props, "property identifier")?;
            let id = u8::try_from(id).map_err(|_| DecodeError::UnknownProperty(0xFF))?;
            let what = "property";
            let value = match id {
                prop::PAYLOAD_FORMAT_INDICATOR
                | prop::REQUEST_PROBLEM_INFORMATION
                | prop::REQUEST_RESPONSE_INFORMATION
                | prop::MAXIMUM_QOS
                | prop::RETAIN_AVAILABLE
                | prop::WILDCARD_SUBSCRIPTION_AVAILABLE
                | prop::SUBSCRIPTION_IDENTIFIER_AVAILABLE
                | prop::SHARED_SUBSCRIPTION_AVAILABLE => {
                    PropValue::Byte(take_u8(&mut props, what)?)
                }
                prop::SERVER_KEEP_ALIVE
                | prop::RECEIVE_MAXIMUM
                | prop::TOPIC_ALIAS_MAXIMUM
                | prop::TOPIC_ALIAS => PropValue::U16(take_u16(&mut props, what)?),
                prop::MESSAGE_EXPIRY_INTERVAL
                | prop::SESSION_EXPIRY_INTERVAL
                | prop::WILL_DELAY_INTERVAL
                | prop::MAXIMUM_PACKET_SIZE => PropValue::U32(take_u32(&mut props, what)?),
                prop::SUBSCRIPTION_IDENTIFIER => PropValue::Varint(take_varint(&mut props, what)?),
                prop::CONTENT_TYPE
                | prop::RESPONSE_TOPIC
                | prop::ASSIGNED_CLIENT_IDENTIFIER
                | prop::AUTHENTICATION_METHOD
                | prop::RESPONSE_INFORMATION
                | prop::SERVER_REFERENCE
                | prop::REASON_STRING => PropValue::String(take_string(&mut props, what)?),
                prop::CORRELATION_DATA | prop::AUTHENTICATION_DATA => {
                    PropValue::Binary(take_binary(&mut props, what)?)
                }
                prop::USER_PROPERTY => PropValue::Pair(
                    take_string(&mut props, what)?,
                    take_string(&mut props, what)?,
                ),
                other => return Err(DecodeError::UnknownProperty(other)),
            };
            out.push((id, value));
        }
        Ok(Properties(out))
    }

    pub fn get(&self, id: u8) -> Option<&PropValue> {
        self.0.iter().find(|(i, _)| *i == id).map(|(_, v)| v)
    }

    pub fn get_u16(&self, id: u8) -> Option<u16> {
        match self.get(id) {
            Some(PropValue::U16(v)) => Some(*v),
            _ => None,
        }
    }

    pub fn get_u32(&self, id: u8) -> Option<u32> {
        match self.get(id) {
            Some(PropValue::U32(v)) => Some(*v),
            _ => None,
        }
    }

    pub fn get_string(&self, id: u8) -> Option<&str> {
        match self.get(id) {
            Some(PropValue::String(v)) => Some(v),
            _ => None,
        }
    }
}

fn no_trailing(buf: &Bytes, what: &'static str) -> Result<(), DecodeError> {
    if buf.has_remaining() {
        Err(DecodeError::Trailing(what, buf.remaining()))
    } else {
        Ok(())
    }
}

/// A CONNACK (3.1.1 section 3.2, 5.0 section 3.2).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Connack {
    pub session_present: bool,
    /// The 5.0 Reason Code or the 3.1.1 Return Code.
    pub code: u8,
    /// Empty for 3.1.1.
    pub props: Properties,
}

impl Connack {
    /// Decodes a CONNACK; `v5` selects the 5.0 form (with properties).
    pub fn parse(packet: &RawPacket, v5: bool) -> Result<Connack, DecodeError> {
        packet.expect_kind(kind::CONNACK)?;
        if packet.flags() != 0 {
            return Err(DecodeError::BadFlags("CONNACK", packet.flags()));
        }
        let mut buf = packet.body.clone();
        let ack_flags = take_u8(&mut buf, "CONNACK flags")?;
        let code = take_u8(&mut buf, "CONNACK reason code")?;
        let props = if v5 {
            Properties::take(&mut buf)?
        } else {
            Properties::default()
        };
        no_trailing(&buf, "CONNACK")?;
        Ok(Connack {
            session_present: ack_flags & 0x01 != 0,
            code,
            props,
        })
    }
}

/// A 5.0 DISCONNECT (section 3.14). A 3.1.1 server never sends one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Disconnect {
    pub reason: u8,
    pub props: Properties,
}

impl Disconnect {
    pub fn parse(packet: &RawPacket) -> Result<Disconnect, DecodeError> {
        packet.expect_kind(kind::DISCONNECT)?;
        if packet.flags() != 0 {
            return Err(DecodeError::BadFlags("DISCONNECT", packet.flags()));
        }
        let mut buf = packet.body.clone();
        // A Remaining Length of 0 means Normal disconnection; a Remaining Length
        // of 1 means no properties (section 3.14.2.1/3.14.2.2).
        if !buf.has_remaining() {
            return Ok(Disconnect {
                reason: reason::SUCCESS,
                props: Properties::default(),
            });
        }
        let reason = take_u8(&mut buf, "DISCONNECT reason code")?;
        let props = if buf.has_remaining() {
            Properties::take(&mut buf)?
        } else {
            Properties::default()
        };
        no_trailing(&buf, "DISCONNECT")?;
        Ok(Disconnect { reason, props })
    }
}

/// A PUBLISH from the broker.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Publish {
    pub topic: String,
    pub qos: u8,
    pub retain: bool,
    pub dup: bool,
    pub packet_id: Option<u16>,
    pub props: Properties,
    pub payload: Bytes,
}

impl Publish {
    pub fn parse(packet: &RawPacket, v5: bool) -> Result<Publish, DecodeError> {
        packet.expect_kind(kind::PUBLISH)?;
        let flags = packet.flags();
        let qos = (flags >> 1) & 0x03;
        if qos == 3 {
            return Err(DecodeError::BadFlags("PUBLISH", flags));
        }
        let mut buf = packet.body.clone();
        let topic = take_string(&mut buf, "topic name")?;
        let packet_id = if qos > 0 {
            Some(take_u16(&mut buf, "packet identifier")?)
        } else {
            None
        };
        let props = if v5 {
            Properties::take(&mut buf)?
        } else {
            Properties::default()
        };
        Ok(Publish {
            topic,
            qos,
            retain: flags & 0x01 != 0,
            dup: flags & 0x08 != 0,
            packet_id,
            props,
            payload: buf,
        })
    }
}

/// PUBACK, PUBREC, PUBREL, PUBCOMP or UNSUBACK-like acknowledgements that start
/// with a Packet Identifier and, in 5.0, may carry a reason code and properties.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ack {
    pub kind: u8,
    pub packet_id: u16,
    /// `SUCCESS` when omitted (5.0 section 3.4.2.1) and always for 3.1.1.
    pub reason: u8,
    pub props: Properties,
}

impl Ack {
    /// Decodes PUBACK, PUBREC, PUBREL or PUBCOMP.
    pub fn parse(packet: &RawPacket, v5: bool) -> Result<Ack, DecodeError> {
        let kind = packet.kind();
        if !matches!(
            kind,
            kind::PUBACK | kind::PUBREC | kind::PUBREL | kind::PUBCOMP
        ) {
            return Err(DecodeError::WrongType {
                expected: "PUBACK/PUBREC/PUBREL/PUBCOMP",
                got: packet.name(),
            });
        }
        let want_flags = if kind == kind::PUBREL { 0x02 } else { 0x00 };
        if packet.flags() != want_flags {
            return Err(DecodeError::BadFlags(packet.name(), packet.flags()));
        }
        let mut buf = packet.body.clone();
        let packet_id = take_u16(&mut buf, "packet identifier")?;
        let mut reason = reason::SUCCESS;
        let mut props = Properties::default();
        if v5 && buf.has_remaining() {
            reason = take_u8(&mut buf, "reason code")?;
            if buf.has_remaining() {
                props = Properties::take(&mut buf)?;
            }
        }
        no_trailing(&buf, packet.name())?;
        Ok(Ack {
            kind,
            packet_id,
            reason,
            props,
        })
    }
}

/// A SUBACK or UNSUBACK: Packet Identifier, properties (5.0), one code per filter.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Suback {
    pub packet_id: u16,
    pub props: Properties,
    pub codes: Vec<u8>,
}

impl Suback {
    pub fn parse(packet: &RawPacket, v5: bool) -> Result<Suback, DecodeError> {
        if !matches!(packet.kind(), kind::SUBACK | kind::UNSUBACK) {
            return Err(DecodeError::WrongType {
                expected: "SUBACK/UNSUBACK",
                got: packet.name(),
            });
        }
        let mut buf = packet.body.clone();
        let packet_id = take_u16(&mut buf, "packet identifier")?;
        let props = if v5 {
            Properties::take(&mut buf)?
        } else {
            Properties::default()
        };
        Ok(Suback {
            packet_id,
            props,
            codes: buf.to_vec(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn varint_matches_spec_table_1_1() {
        // MQTT 5.0 table 1-1: the boundaries of each length.
        let cases: &[(u32, &[u8])] = &[
            (0, &[0x00]),
            (127, &[0x7F]),
            (128, &[0x80, 0x01]),
            (16_383, &[0xFF, 0x7F]),
            (16_384, &[0x80, 0x80, 0x01]),
            (2_097_151, &[0xFF, 0xFF, 0x7F]),
            (2_097_152, &[0x80, 0x80, 0x80, 0x01]),
            (MAX_VARINT, &[0xFF, 0xFF, 0xFF, 0x7F]),
        ];
        for (value, bytes) in cases {
            let mut out = Vec::new();
            put_varint(&mut out, *value);
            assert_eq!(out, *bytes, "{value}");
            let mut buf = Bytes::copy_from_slice(bytes);
            assert_eq!(take_varint(&mut buf, "t"), Ok(*value));
        }
    }

    #[test]
    fn connect_v311_matches_hand_assembled_bytes() {
        let expected: &[u8] = &[
            0x10, 0x0E, // CONNECT, remaining length 14
            0x00, 0x04, b'M', b'Q', b'T', b'T', 0x04, // protocol name and level
            0x02, 0x00, 0x3C, // clean session, keepalive 60
            0x00, 0x02, b'c', b'1', // client id
        ];
        assert_eq!(connect_v311("c1", 60), expected);
    }

    #[test]
    fn connect_v5_has_properties_after_keepalive() {
        let bytes = connect_v5(
            "c1",
            60,
            &Props::new().u32(prop::SESSION_EXPIRY_INTERVAL, 10),
        );
        let expected: &[u8] = &[
            0x10, 0x14, // CONNECT, remaining length 20
            0x00, 0x04, b'M', b'Q', b'T', b'T', 0x05, 0x02, 0x00, 0x3C, // header
            0x05, 0x11, 0x00, 0x00, 0x00, 0x0A, // properties
            0x00, 0x02, b'c', b'1',
        ];
        assert_eq!(bytes, expected);
    }

    #[test]
    fn publish_and_subscribe_encode_as_the_spec_lays_out() {
        assert_eq!(
            publish_v311("a/b", 1, 7, b"hi"),
            [
                0x32, 0x09, 0x00, 0x03, b'a', b'/', b'b', 0x00, 0x07, b'h', b'i'
            ]
        );
        assert_eq!(
            publish_v5("a", 0, 7, &Props::new(), b"x"),
            [0x30, 0x05, 0x00, 0x01, b'a', 0x00, b'x']
        );
        assert_eq!(
            subscribe_v5(1, &Props::new(), &[("a/#", 1)]),
            [
                0x82, 0x09, 0x00, 0x01, 0x00, 0x00, 0x03, b'a', b'/', b'#', 0x01
            ]
        );
        assert_eq!(disconnect_v5(0x8B, &Props::new()), [0xE0, 0x02, 0x8B, 0x00]);
    }

    #[test]
    fn check_frame_reports_incomplete_complete_and_bad_lengths() {
        assert_eq!(check_frame(&[0x20], 1024), Ok(None));
        assert_eq!(check_frame(&[0x20, 0x02, 0x00], 1024), Ok(None));
        assert_eq!(
            check_frame(&[0x20, 0x02, 0x00, 0x00], 1024),
            Ok(Some((2, 4)))
        );
        assert_eq!(
            check_frame(&[0x30, 0xFF, 0xFF, 0xFF, 0xFF, 0x01], 1024),
            Err(DecodeError::RemainingLengthTooLong)
        );
        assert!(matches!(
            check_frame(&[0x30, 0xFF, 0xFF, 0xFF, 0x07], 1024),
            Err(DecodeError::TooLarge(_))
        ));
    }

    #[test]
    fn decodes_v5_connack_and_disconnect() {
        let connack = RawPacket {
            first: 0x20,
            body: Bytes::from_static(&[0x00, 0x00, 0x03, 0x22, 0x00, 0x0A]),
        };
        let c = Connack::parse(&connack, true).expect("valid CONNACK");
        assert_eq!(c.code, 0);
        assert_eq!(c.props.get_u16(prop::TOPIC_ALIAS_MAXIMUM), Some(10));

        let empty = RawPacket {
            first: 0xE0,
            body: Bytes::new(),
        };
        assert_eq!(Disconnect::parse(&empty).map(|d| d.reason), Ok(0));
        let with_reason = RawPacket {
            first: 0xE0,
            body: Bytes::from_static(&[0x81]),
        };
        assert_eq!(Disconnect::parse(&with_reason).map(|d| d.reason), Ok(0x81));
    }
}
