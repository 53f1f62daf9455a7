//! MQTT 5 property sets, one struct per packet kind (spec 2.2.2.2).
//!
//! A property that is not allowed in a packet is a protocol error on decode, and a
//! property that appears twice (other than User Property and, in PUBLISH, Subscription
//! Identifier) is a protocol error too; keeping one struct per packet makes "allowed"
//! a matter of the type. Property identifiers:
//!
//! | id | name | type |
//! |---|---|---|
//! | 0x01 | Payload Format Indicator | byte |
//! | 0x02 | Message Expiry Interval | u32 |
//! | 0x03 | Content Type | UTF-8 string |
//! | 0x08 | Response Topic | UTF-8 string |
//! | 0x09 | Correlation Data | binary |
//! | 0x0B | Subscription Identifier | varint (1..=268,435,455) |
//! | 0x11 | Session Expiry Interval | u32 |
//! | 0x12 | Assigned Client Identifier | UTF-8 string |
//! | 0x13 | Server Keep Alive | u16 |
//! | 0x15 | Authentication Method | UTF-8 string |
//! | 0x16 | Authentication Data | binary |
//! | 0x17 | Request Problem Information | byte (0/1) |
//! | 0x18 | Will Delay Interval | u32 |
//! | 0x19 | Request Response Information | byte (0/1) |
//! | 0x1A | Response Information | UTF-8 string |
//! | 0x1C | Server Reference | UTF-8 string |
//! | 0x1F | Reason String | UTF-8 string |
//! | 0x21 | Receive Maximum | u16 (not 0) |
//! | 0x22 | Topic Alias Maximum | u16 |
//! | 0x23 | Topic Alias | u16 (not 0) |
//! | 0x24 | Maximum QoS | byte (0/1) |
//! | 0x25 | Retain Available | byte (0/1) |
//! | 0x26 | User Property | UTF-8 string pair |
//! | 0x27 | Maximum Packet Size | u32 (not 0) |
//! | 0x28 | Wildcard Subscription Available | byte (0/1) |
//! | 0x29 | Subscription Identifier Available | byte (0/1) |
//! | 0x2A | Shared Subscription Available | byte (0/1) |

use bytes::Bytes;
use bytestring::ByteString;

/// User Property pairs, in order; keys may repeat [MQTT-3.3.2-18].
pub type UserProperties = Vec<(ByteString, ByteString)>;

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ConnectProperties {
    pub session_expiry_interval: Option<u32>,
    pub receive_maximum: Option<u16>,
    pub maximum_packet_size: Option<u32>,
    pub topic_alias_maximum: Option<u16>,
    pub request_response_information: Option<u8>,
    pub request_problem_information: Option<u8>,
    pub user_properties: UserProperties,
    pub authentication_method: Option<ByteString>,
    pub authentication_data: Option<Bytes>,
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct WillProperties {
    pub will_delay_interval: Option<u32>,
    pub payload_format_indicator: Option<u8>,
    pub message_expiry_interval: Option<u32>,
    pub content_type: Option<ByteString>,
    pub response_topic: Option<ByteString>,
    pub correlation_data: Option<Bytes>,
    pub user_properties: UserProperties,
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ConnAckProperties {
    pub session_expiry_interval: Option<u32>,
    pub receive_maximum: Option<u16>,
    pub maximum_qos: Option<u8>,
    pub retain_available: Option<u8>,
    pub maximum_packet_size: Option<u32>,
    pub assigned_client_identifier: Option<ByteString>,
    pub topic_alias_maximum: Option<u16>,
    pub reason_string: Option<ByteString>,
    pub user_properties: UserProperties,
    pub wildcard_subscription_available: Option<u8>,
    pub subscription_identifiers_available: Option<u8>,
    pub shared_subscription_available: Option<u8>,
    pub server_keep_alive: Option<u16>,
    pub response_information: Option<ByteString>,
    pub server_reference: Option<ByteString>,
    pub authentication_method: Option<ByteString>,
    pub authentication_data: Option<Bytes>,
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct PublishProperties {
    pub payload_format_indicator: Option<u8>,
    pub message_expiry_interval: Option<u32>,
    pub topic_alias: Option<u16>,
    pub response_topic: Option<ByteString>,
    pub correlation_data: Option<Bytes>,
    pub user_properties: UserProperties,
    /// Several allowed from server to client; a client must not send any [MQTT-3.3.4-6].
    pub subscription_identifiers: Vec<u32>,
    pub content_type: Option<ByteString>,
}

/// Properties of PUBACK, PUBREC, PUBREL, PUBCOMP, SUBACK and UNSUBACK.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct AckProperties {
    pub reason_string: Option<ByteString>,
    pub user_properties: UserProperties,
}

impl AckProperties {
    pub fn is_empty(&self) -> bool {
        self.reason_string.is_none() && self.user_properties.is_empty()
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct SubscribeProperties {
    pub subscription_identifier: Option<u32>,
    pub user_properties: UserProperties,
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct UnsubscribeProperties {
    pub user_properties: UserProperties,
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct DisconnectProperties {
    pub session_expiry_interval: Option<u32>,
    pub reason_string: Option<ByteString>,
    pub user_properties: UserProperties,
    pub server_reference: Option<ByteString>,
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct AuthProperties {
    pub authentication_method: Option<ByteString>,
    pub authentication_data: Option<Bytes>,
    pub reason_string: Option<ByteString>,
    pub user_properties: UserProperties,
}
