//! MQTT 5 properties on the wire (spec 2.2.2), kept apart from `decode`/`encode` so
//! the per-packet "which property is allowed here" tables sit in one place.
//!
//! Decoding: one function per property struct. Each matches the identifiers that packet
//! allows; anything else is a protocol error if the identifier is known and malformed
//! if it is not. A second occurrence of a single-valued property is a protocol error
//! (spec 2.2.2.2); User Property (and Subscription Identifier in PUBLISH) may repeat.
//! Value rules: Receive Maximum, Maximum Packet Size, Topic Alias and Subscription
//! Identifier must not be 0; byte-valued flags must be 0 or 1 — all protocol errors.
//!
//! Encoding: [`EncodeProps::visit`] writes the properties through a [`Sink`], so the same
//! code measures (for the property-length prefix) and writes them.
//!
//! Layout: identifiers, decode helpers, one decoder per struct, `EncodeProps` impls.

use bytestring::ByteString;

use crate::error::{DecodeError, EncodeError};
use crate::primitives::{Counter, MAX_VARINT, Reader, Sink};
use crate::properties::{
    AckProperties, AuthProperties, ConnAckProperties, ConnectProperties, DisconnectProperties,
    PublishProperties, SubscribeProperties, UnsubscribeProperties, WillProperties,
};

/// Property identifiers (spec 2.2.2.2).
pub(crate) mod id {
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

    /// True for an identifier defined by MQTT 5.0.
    pub fn is_known(id: u8) -> bool {
        matches!(
            id,
            0x01..=0x03
                | 0x08
                | 0x09
                | 0x0B
                | 0x11..=0x13
                | 0x15..=0x1A
                | 0x1C
                | 0x1F
                | 0x21..=0x2A
        )
    }
}

use id::*;

type Result<T> = std::result::Result<T, DecodeError>;

/// Reads the property length, then hands each `(identifier, reader)` to `f`, which must
/// consume exactly that property's value. The block must end exactly at its length.
fn read_props(r: &mut Reader, mut f: impl FnMut(u8, &mut Reader) -> Result<()>) -> Result<()> {
    let len = r.varint()?;
    if len > r.remaining() {
        return Err(DecodeError::Malformed("property length exceeds packet"));
    }
    let mut props = r.split(len)?;
    while !props.is_empty() {
        // Identifiers are varints, but every defined one fits in one byte; a byte with
        // the continuation bit set is therefore unknown, i.e. malformed.
        let id = props.u8()?;
        f(id, &mut props)?;
    }
    Ok(())
}

/// A property this packet does not allow (spec 2.2.2.2): protocol error if the
/// identifier exists, malformed if it does not.
fn not_allowed(id: u8) -> DecodeError {
    if id::is_known(id) {
        DecodeError::Protocol("property not allowed in this packet")
    } else {
        DecodeError::Malformed("unknown property identifier")
    }
}

/// Stores a single-valued property; a second occurrence is a protocol error.
fn once<T>(slot: &mut Option<T>, v: T) -> Result<()> {
    if slot.is_some() {
        return Err(DecodeError::Protocol("duplicate property"));
    }
    *slot = Some(v);
    Ok(())
}

/// Stores a repeatable property (User Property, Subscription Identifier in PUBLISH).
fn push<T>(list: &mut Vec<T>, v: T) -> Result<()> {
    list.push(v);
    Ok(())
}

/// Byte-valued flags (Payload Format Indicator, Request * Information, Maximum QoS,
/// * Available) are 0 or 1.
fn flag(r: &mut Reader) -> Result<u8> {
    match r.u8()? {
        v @ (0 | 1) => Ok(v),
        _ => Err(DecodeError::Protocol("property value must be 0 or 1")),
    }
}

fn nonzero_u16(r: &mut Reader, what: &'static str) -> Result<u16> {
    match r.u16()? {
        0 => Err(DecodeError::Protocol(what)),
        v => Ok(v),
    }
}

fn nonzero_u32(r: &mut Reader, what: &'static str) -> Result<u32> {
    match r.u32()? {
        0 => Err(DecodeError::Protocol(what)),
        v => Ok(v),
    }
}

/// Subscription Identifier: varint 1..=268,435,455; 0 is a protocol error.
fn subscription_identifier(r: &mut Reader) -> Result<u32> {
    match r.varint()? {
        0 => Err(DecodeError::Protocol("Subscription Identifier 0")),
        // A varint is at most 268,435,455 so this never fails; no panic path either way.
        v => u32::try_from(v).map_err(|_| DecodeError::Malformed("Subscription Identifier")),
    }
}

fn user_property(r: &mut Reader) -> Result<(ByteString, ByteString)> {
    Ok((r.string()?, r.string()?))
}

pub(crate) fn connect(r: &mut Reader) -> Result<ConnectProperties> {
    let mut p = ConnectProperties::default();
    read_props(r, |id, r| match id {
        SESSION_EXPIRY_INTERVAL => once(&mut p.session_expiry_interval, r.u32()?),
        RECEIVE_MAXIMUM => once(&mut p.receive_maximum, nonzero_u16(r, "Receive Maximum 0")?),
        MAXIMUM_PACKET_SIZE => once(
            &mut p.maximum_packet_size,
            nonzero_u32(r, "Maximum Packet Size 0")?,
        ),
        TOPIC_ALIAS_MAXIMUM => once(&mut p.topic_alias_maximum, r.u16()?),
        REQUEST_RESPONSE_INFORMATION => once(&mut p.request_response_information, flag(r)?),
        REQUEST_PROBLEM_INFORMATION => once(&mut p.request_problem_information, flag(r)?),
        USER_PROPERTY => push(&mut p.user_properties, user_property(r)?),
        AUTHENTICATION_METHOD => once(&mut p.authentication_method, r.string()?),
        AUTHENTICATION_DATA => once(&mut p.authentication_data, r.binary()?),
        other => Err(not_allowed(other)),
    })?;
    Ok(p)
}

pub(crate) fn will(r: &mut Reader) -> Result<WillProperties> {
    let mut p = WillProperties::default();
    read_props(r, |id, r| match id {
        WILL_DELAY_INTERVAL => once(&mut p.will_delay_interval, r.u32()?),
        PAYLOAD_FORMAT_INDICATOR => once(&mut p.payload_format_indicator, flag(r)?),
        MESSAGE_EXPIRY_INTERVAL => once(&mut p.message_expiry_interval, r.u32()?),
        CONTENT_TYPE => once(&mut p.content_type, r.string()?),
        RESPONSE_TOPIC => once(&mut p.response_topic, r.string()?),
        CORRELATION_DATA => once(&mut p.correlation_data, r.binary()?),
        USER_PROPERTY => push(&mut p.user_properties, user_property(r)?),
        other => Err(not_allowed(other)),
    })?;
    Ok(p)
}

pub(crate) fn connack(r: &mut Reader) -> Result<ConnAckProperties> {
    let mut p = ConnAckProperties::default();
    read_props(r, |id, r| match id {
        SESSION_EXPIRY_INTERVAL => once(&mut p.session_expiry_interval, r.u32()?),
        RECEIVE_MAXIMUM => once(&mut p.receive_maximum, nonzero_u16(r, "Receive Maximum 0")?),
        MAXIMUM_QOS => once(&mut p.maximum_qos, flag(r)?),
        RETAIN_AVAILABLE => once(&mut p.retain_available, flag(r)?),
        MAXIMUM_PACKET_SIZE => once(
            &mut p.maximum_packet_size,
            nonzero_u32(r, "Maximum Packet Size 0")?,
        ),
        ASSIGNED_CLIENT_IDENTIFIER => once(&mut p.assigned_client_identifier, r.string()?),
        TOPIC_ALIAS_MAXIMUM => once(&mut p.topic_alias_maximum, r.u16()?),
        REASON_STRING => once(&mut p.reason_string, r.string()?),
        USER_PROPERTY => push(&mut p.user_properties, user_property(r)?),
        WILDCARD_SUBSCRIPTION_AVAILABLE => once(&mut p.wildcard_subscription_available, flag(r)?),
        SUBSCRIPTION_IDENTIFIER_AVAILABLE => {
            once(&mut p.subscription_identifiers_available, flag(r)?)
        }
        SHARED_SUBSCRIPTION_AVAILABLE => once(&mut p.shared_subscription_available, flag(r)?),
        SERVER_KEEP_ALIVE => once(&mut p.server_keep_alive, r.u16()?),
        RESPONSE_INFORMATION => once(&mut p.response_information, r.string()?),
        SERVER_REFERENCE => once(&mut p.server_reference, r.string()?),
        AUTHENTICATION_METHOD => once(&mut p.authentication_method, r.string()?),
        AUTHENTICATION_DATA => once(&mut p.authentication_data, r.binary()?),
        other => Err(not_allowed(other)),
    })?;
    Ok(p)
}

pub(crate) fn publish(r: &mut Reader) -> Result<PublishProperties> {
    let mut p = PublishProperties::default();
    read_props(r, |id, r| match id {
        PAYLOAD_FORMAT_INDICATOR => once(&mut p.payload_format_indicator, flag(r)?),
        MESSAGE_EXPIRY_INTERVAL => once(&mut p.message_expiry_interval, r.u32()?),
        // Topic Alias 0 is not permitted [MQTT-3.3.2-8]: its own error, answered 0x94.
        TOPIC_ALIAS => once(
            &mut p.topic_alias,
            match r.u16()? {
                0 => return Err(DecodeError::TopicAliasInvalid),
                v => v,
            },
        ),
        RESPONSE_TOPIC => once(&mut p.response_topic, r.string()?),
        CORRELATION_DATA => once(&mut p.correlation_data, r.binary()?),
        USER_PROPERTY => push(&mut p.user_properties, user_property(r)?),
        // May repeat server -> client; a client must send none [MQTT-3.3.4-6], which the
        // broker checks (the codec is also used as a client).
        SUBSCRIPTION_IDENTIFIER => {
            push(&mut p.subscription_identifiers, subscription_identifier(r)?)
        }
        CONTENT_TYPE => once(&mut p.content_type, r.string()?),
        other => Err(not_allowed(other)),
    })?;
    Ok(p)
}

pub(crate) fn ack(r: &mut Reader) -> Result<AckProperties> {
    let mut p = AckProperties::default();
    read_props(r, |id, r| match id {
        REASON_STRING => once(&mut p.reason_string, r.string()?),
        USER_PROPERTY => push(&mut p.user_properties, user_property(r)?),
        other => Err(not_allowed(other)),
    })?;
    Ok(p)
}

pub(crate) fn subscribe(r: &mut Reader) -> Result<SubscribeProperties> {
    let mut p = SubscribeProperties::default();
    read_props(r, |id, r| match id {
        SUBSCRIPTION_IDENTIFIER => {
            once(&mut p.subscription_identifier, subscription_identifier(r)?)
        }
        USER_PROPERTY => push(&mut p.user_properties, user_property(r)?),
        other => Err(not_allowed(other)),
    })?;
    Ok(p)
}

pub(crate) fn unsubscribe(r: &mut Reader) -> Result<UnsubscribeProperties> {
    let mut p = UnsubscribeProperties::default();
    read_props(r, |id, r| match id {
        USER_PROPERTY => push(&mut p.user_properties, user_property(r)?),
        other => Err(not_allowed(other)),
    })?;
    Ok(p)
}

pub(crate) fn disconnect(r: &mut Reader) -> Result<DisconnectProperties> {
    let mut p = DisconnectProperties::default();
    read_props(r, |id, r| match id {
        SESSION_EXPIRY_INTERVAL => once(&mut p.session_expiry_interval, r.u32()?),
        REASON_STRING => once(&mut p.reason_string, r.string()?),
        USER_PROPERTY => push(&mut p.user_properties, user_property(r)?),
        SERVER_REFERENCE => once(&mut p.server_reference, r.string()?),
        other => Err(not_allowed(other)),
    })?;
    Ok(p)
}

pub(crate) fn auth(r: &mut Reader) -> Result<AuthProperties> {
    let mut p = AuthProperties::default();
    read_props(r, |id, r| match id {
        AUTHENTICATION_METHOD => once(&mut p.authentication_method, r.string()?),
        AUTHENTICATION_DATA => once(&mut p.authentication_data, r.binary()?),
        REASON_STRING => once(&mut p.reason_string, r.string()?),
        USER_PROPERTY => push(&mut p.user_properties, user_property(r)?),
        other => Err(not_allowed(other)),
    })?;
    Ok(p)
}

// ---------------------------------------------------------------------------- encode

type EResult = std::result::Result<(), EncodeError>;

/// A property set that can be written through a [`Sink`] (without its length prefix).
pub(crate) trait EncodeProps {
    fn visit<S: Sink>(&self, s: &mut S) -> EResult;

    /// Byte length of the properties, without the length prefix.
    fn len(&self) -> std::result::Result<usize, EncodeError> {
        let mut c = Counter::default();
        self.visit(&mut c)?;
        Ok(c.len)
    }

    /// Writes the property length varint, then the properties.
    fn write<S: Sink>(&self, s: &mut S) -> EResult {
        s.varint(self.len()?)?;
        self.visit(s)
    }
}

fn put_u8<S: Sink>(s: &mut S, id: u8, v: Option<u8>) {
    if let Some(v) = v {
        s.u8(id);
        s.u8(v);
    }
}

fn put_u16<S: Sink>(s: &mut S, id: u8, v: Option<u16>) {
    if let Some(v) = v {
        s.u8(id);
        s.u16(v);
    }
}

fn put_u32<S: Sink>(s: &mut S, id: u8, v: Option<u32>) {
    if let Some(v) = v {
        s.u8(id);
        s.u32(v);
    }
}

fn put_str<S: Sink>(s: &mut S, id: u8, v: &Option<ByteString>) -> EResult {
    if let Some(v) = v {
        s.u8(id);
        s.string(v)?;
    }
    Ok(())
}

fn put_bin<S: Sink>(s: &mut S, id: u8, v: &Option<bytes::Bytes>) -> EResult {
    if let Some(v) = v {
        s.u8(id);
        s.binary(v)?;
    }
    Ok(())
}

fn put_users<S: Sink>(s: &mut S, users: &[(ByteString, ByteString)]) -> EResult {
    for (k, v) in users {
        s.u8(USER_PROPERTY);
        s.string(k)?;
        s.string(v)?;
    }
    Ok(())
}

fn put_sub_id<S: Sink>(s: &mut S, v: u32) -> EResult {
    s.u8(SUBSCRIPTION_IDENTIFIER);
    // u32 -> usize is lossless on every target we build for (>= 32-bit); values above
    // 268,435,455 are rejected by `varint`.
    s.varint(usize::try_from(v).unwrap_or(MAX_VARINT + 1))
}

impl EncodeProps for ConnectProperties {
    fn visit<S: Sink>(&self, s: &mut S) -> EResult {
        put_u32(s, SESSION_EXPIRY_INTERVAL, self.session_expiry_interval);
        put_u16(s, RECEIVE_MAXIMUM, self.receive_maximum);
        put_u32(s, MAXIMUM_PACKET_SIZE, self.maximum_packet_size);
        put_u16(s, TOPIC_ALIAS_MAXIMUM, self.topic_alias_maximum);
        put_u8(
            s,
            REQUEST_RESPONSE_INFORMATION,
            self.request_response_information,
        );
        put_u8(
            s,
            REQUEST_PROBLEM_INFORMATION,
            self.request_problem_information,
        );
        put_users(s, &self.user_properties)?;
        put_str(s, AUTHENTICATION_METHOD, &self.authentication_method)?;
        put_bin(s, AUTHENTICATION_DATA, &self.authentication_data)
    }
}

impl EncodeProps for WillProperties {
    fn visit<S: Sink>(&self, s: &mut S) -> EResult {
        put_u32(s, WILL_DELAY_INTERVAL, self.will_delay_interval);
        put_u8(s, PAYLOAD_FORMAT_INDICATOR, self.payload_format_indicator);
        put_u32(s, MESSAGE_EXPIRY_INTERVAL, self.message_expiry_interval);
        put_str(s, CONTENT_TYPE, &self.content_type)?;
        put_str(s, RESPONSE_TOPIC, &self.response_topic)?;
        put_bin(s, CORRELATION_DATA, &self.correlation_data)?;
        put_users(s, &self.user_properties)
    }
}

impl EncodeProps for ConnAckProperties {
    fn visit<S: Sink>(&self, s: &mut S) -> EResult {
        put_u32(s, SESSION_EXPIRY_INTERVAL, self.session_expiry_interval);
        put_u16(s, RECEIVE_MAXIMUM, self.receive_maximum);
        put_u8(s, MAXIMUM_QOS, self.maximum_qos);
        put_u8(s, RETAIN_AVAILABLE, self.retain_available);
        put_u32(s, MAXIMUM_PACKET_SIZE, self.maximum_packet_size);
        put_str(
            s,
            ASSIGNED_CLIENT_IDENTIFIER,
            &self.assigned_client_identifier,
        )?;
        put_u16(s, TOPIC_ALIAS_MAXIMUM, self.topic_alias_maximum);
        put_str(s, REASON_STRING, &self.reason_string)?;
        put_users(s, &self.user_properties)?;
        put_u8(
            s,
            WILDCARD_SUBSCRIPTION_AVAILABLE,
            self.wildcard_subscription_available,
        );
        put_u8(
            s,
            SUBSCRIPTION_IDENTIFIER_AVAILABLE,
            self.subscription_identifiers_available,
        );
        put_u8(
            s,
            SHARED_SUBSCRIPTION_AVAILABLE,
            self.shared_subscription_available,
        );
        put_u16(s, SERVER_KEEP_ALIVE, self.server_keep_alive);
        put_str(s, RESPONSE_INFORMATION, &self.response_information)?;
        put_str(s, SERVER_REFERENCE, &self.server_reference)?;
        put_str(s, AUTHENTICATION_METHOD, &self.authentication_method)?;
        put_bin(s, AUTHENTICATION_DATA, &self.authentication_data)
    }
}

impl EncodeProps for PublishProperties {
    fn visit<S: Sink>(&self, s: &mut S) -> EResult {
        put_u8(s, PAYLOAD_FORMAT_INDICATOR, self.payload_format_indicator);
        put_u32(s, MESSAGE_EXPIRY_INTERVAL, self.message_expiry_interval);
        put_u16(s, TOPIC_ALIAS, self.topic_alias);
        put_str(s, RESPONSE_TOPIC, &self.response_topic)?;
        put_bin(s, CORRELATION_DATA, &self.correlation_data)?;
        put_users(s, &self.user_properties)?;
        for &v in &self.subscription_identifiers {
            put_sub_id(s, v)?;
        }
        put_str(s, CONTENT_TYPE, &self.content_type)
    }
}

impl EncodeProps for AckProperties {
    fn visit<S: Sink>(&self, s: &mut S) -> EResult {
        put_str(s, REASON_STRING, &self.reason_string)?;
        put_users(s, &self.user_properties)
    }
}

impl EncodeProps for SubscribeProperties {
    fn visit<S: Sink>(&self, s: &mut S) -> EResult {
        if let Some(v) = self.subscription_identifier {
            put_sub_id(s, v)?;
        }
        put_users(s, &self.user_properties)
    }
}

impl EncodeProps for UnsubscribeProperties {
    fn visit<S: Sink>(&self, s: &mut S) -> EResult {
        put_users(s, &self.user_properties)
    }
}

impl EncodeProps for DisconnectProperties {
    fn visit<S: Sink>(&self, s: &mut S) -> EResult {
        put_u32(s, SESSION_EXPIRY_INTERVAL, self.session_expiry_interval);
        put_str(s, REASON_STRING, &self.reason_string)?;
        put_users(s, &self.user_properties)?;
        put_str(s, SERVER_REFERENCE, &self.server_reference)
    }
}

impl EncodeProps for AuthProperties {
    fn visit<S: Sink>(&self, s: &mut S) -> EResult {
        put_str(s, AUTHENTICATION_METHOD, &self.authentication_method)?;
        put_bin(s, AUTHENTICATION_DATA, &self.authentication_data)?;
        put_str(s, REASON_STRING, &self.reason_string)?;
        put_users(s, &self.user_properties)
    }
}
