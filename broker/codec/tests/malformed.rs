//! One test per decode rule: the exact `DecodeError` variant for each malformed or
//! protocol-violating input, with the spec statement it enforces.
#![allow(clippy::unwrap_used)]

mod common;

use bytes::BytesMut;
use common::*;
use ferromq_codec::*;

const V31: ProtocolVersion = ProtocolVersion::V3_1;
const V4: ProtocolVersion = ProtocolVersion::V3_1_1;
const V5: ProtocolVersion = ProtocolVersion::V5;

fn malformed(e: DecodeError) -> bool {
    matches!(e, DecodeError::Malformed(_))
}

fn protocol(e: DecodeError) -> bool {
    matches!(e, DecodeError::Protocol(_))
}

// ------------------------------------------------------------------ fixed header

/// [MQTT-1.5.5-1]: the Remaining Length is at most four bytes.
#[test]
fn remaining_length_over_four_bytes() {
    let bytes = [0x30, 0xFF, 0xFF, 0xFF, 0xFF, 0x01];
    assert_eq!(
        check(&bytes, MAX),
        Err(DecodeError::MalformedRemainingLength)
    );
    // Detected as soon as the fourth byte still has its continuation bit.
    assert_eq!(
        check(&bytes[..5], MAX),
        Err(DecodeError::MalformedRemainingLength)
    );
    assert_eq!(
        decode_err(&bytes, V4),
        DecodeError::MalformedRemainingLength
    );
}

/// The maximum packet size is enforced from the fixed header alone, before the body is
/// buffered. `FF FF FF 07` is 16,777,215: a 16 MiB body announced in 5 bytes.
#[test]
fn packet_too_large_from_the_fixed_header() {
    let header = [0x30, 0xFF, 0xFF, 0xFF, 0x07];
    assert_eq!(
        check(&header, 1024 * 1024),
        Err(DecodeError::PacketTooLarge {
            size: 16_777_215 + 5,
            max: 1024 * 1024
        })
    );
    // The largest Remaining Length (268,435,455 = 256 MiB).
    let header = [0x30, 0xFF, 0xFF, 0xFF, 0x7F];
    assert_eq!(
        check(&header, 1024 * 1024),
        Err(DecodeError::PacketTooLarge {
            size: 268_435_455 + 5,
            max: 1024 * 1024
        })
    );
    let mut buf = BytesMut::from(&header[..]);
    assert_eq!(
        decode(&mut buf, V5, 1024),
        Err(DecodeError::PacketTooLarge {
            size: 268_435_455 + 5,
            max: 1024
        })
    );
    // The limit is inclusive: frame_len == max is accepted.
    assert!(check(&[0xC0, 0x00], 2).unwrap().is_some());
    assert_eq!(
        check(&[0xC0, 0x00], 1),
        Err(DecodeError::PacketTooLarge { size: 2, max: 1 })
    );
}

#[test]
fn packet_type_zero() {
    assert_eq!(check(&[0x00], MAX), Err(DecodeError::InvalidPacketType(0)));
    assert_eq!(
        decode_err(&[0x00, 0x00], V5),
        DecodeError::InvalidPacketType(0)
    );
}

/// AUTH (15) exists only in MQTT 5.
#[test]
fn auth_outside_v5() {
    assert_eq!(
        decode_err(&[0xF0, 0x00], V4),
        DecodeError::InvalidPacketType(15)
    );
    assert_eq!(
        decode_err(&[0xF0, 0x00], V31),
        DecodeError::InvalidPacketType(15)
    );
    // Rejected from the first byte, without waiting for the rest.
    let mut buf = BytesMut::from(&[0xF0][..]);
    assert_eq!(
        decode(&mut buf, V4, MAX),
        Err(DecodeError::InvalidPacketType(15))
    );
    assert!(decode_all(&[0xF0, 0x00], V5).is_ok());
}

/// [MQTT-2.2.2-2] [MQTT-3.6.1-1] [MQTT-3.8.1-1] [MQTT-3.10.1-1]: PUBREL, SUBSCRIBE and
/// UNSUBSCRIBE carry flags 0b0010, every other packet but PUBLISH 0b0000.
#[test]
fn reserved_fixed_header_flags() {
    for (first, body) in [
        (0x60u8, &[0x00, 0x01][..]),
        (0x80, &[0x00, 0x01, 0x00, 0x01, b'a', 0x00][..]),
        (0xA0, &[0x00, 0x01, 0x00, 0x01, b'a'][..]),
        (0x63, &[0x00, 0x01][..]),
    ] {
        assert_eq!(
            decode_err(&frame(first, body), V4),
            DecodeError::InvalidFlags {
                packet_type: first >> 4,
                flags: first & 0x0F
            }
        );
    }
    for first in [
        0x11u8, 0x21, 0x42, 0x58, 0x72, 0x92, 0xB1, 0xC1, 0xD2, 0xE4, 0xF1,
    ] {
        assert_eq!(
            check(&[first], MAX),
            Err(DecodeError::InvalidFlags {
                packet_type: first >> 4,
                flags: first & 0x0F
            }),
            "first byte {first:#04x}"
        );
    }
}

/// [MQTT-3.3.1-4]: PUBLISH QoS 3.
#[test]
fn publish_qos_3() {
    let bytes = frame(0x36, &cat(&[&s("t"), &[0, 1]]));
    assert_eq!(decode_err(&bytes, V4), DecodeError::InvalidQoS);
    assert_eq!(check(&[0x36], MAX), Err(DecodeError::InvalidQoS));
}

/// [MQTT-3.3.1-2]: DUP must be 0 for QoS 0.
#[test]
fn publish_dup_with_qos_0() {
    let bytes = frame(0x38, &s("t"));
    assert!(malformed(decode_err(&bytes, V4)));
    assert!(malformed(decode_err(&bytes, V5)));
}

// ------------------------------------------------------------------ strings, framing

/// [MQTT-1.5.4-1]: ill-formed UTF-8 (a lone continuation byte, an encoded surrogate).
#[test]
fn topic_not_utf8() {
    let bad = frame(0x30, &[0x00, 0x02, b'a', 0x80]);
    assert_eq!(decode_err(&bad, V4), DecodeError::InvalidUtf8);
    let surrogate = frame(0x30, &[0x00, 0x03, 0xED, 0xA0, 0x80]);
    assert_eq!(decode_err(&surrogate, V4), DecodeError::InvalidUtf8);
}

/// [MQTT-1.5.4-2]: U+0000 is not allowed in a UTF-8 string.
#[test]
fn strings_with_nul() {
    let topic = frame(0x30, &[0x00, 0x03, b'a', 0x00, b'b']);
    assert_eq!(decode_err(&topic, V4), DecodeError::InvalidUtf8);
    // In a client identifier.
    let connect = frame(
        0x10,
        &cat(&[&s("MQTT"), &[4, 0x02, 0, 10], &[0x00, 0x02, b'a', 0x00]]),
    );
    assert_eq!(decode_err(&connect, V4), DecodeError::InvalidUtf8);
    // In a property (Reason String of a v5 PUBACK).
    let ack = frame(
        0x40,
        &cat(&[&[0, 1, 0x80], &props(&[0x1F, 0x00, 0x01, 0x00])]),
    );
    assert_eq!(decode_err(&ack, V5), DecodeError::InvalidUtf8);
    // In a subscription filter.
    let sub = frame(0x82, &cat(&[&[0, 1], &[0x00, 0x01, 0x00], &[0]]));
    assert_eq!(decode_err(&sub, V4), DecodeError::InvalidUtf8);
}

/// The frame body is consumed exactly: trailing bytes are malformed.
#[test]
fn trailing_bytes() {
    assert!(malformed(decode_err(&[0xC0, 0x01, 0x00], V4))); // PINGREQ
    assert!(malformed(decode_err(&[0xD0, 0x01, 0x00], V4))); // PINGRESP
    assert!(malformed(decode_err(&[0xE0, 0x01, 0x00], V4))); // 3.1.1 DISCONNECT
    assert!(malformed(decode_err(&[0x40, 0x03, 0, 1, 0], V4))); // 3.1.1 PUBACK
    assert!(malformed(decode_err(&[0x50, 0x03, 0, 1, 0], V31))); // 3.1 PUBREC
    assert!(malformed(decode_err(&[0x62, 0x03, 0, 1, 0], V4))); // 3.1.1 PUBREL
    assert!(malformed(decode_err(&[0x70, 0x03, 0, 1, 0], V4))); // 3.1.1 PUBCOMP
    assert!(malformed(decode_err(&[0x20, 0x03, 0, 0, 0], V4))); // 3.1.1 CONNACK
    assert!(malformed(decode_err(&[0xB0, 0x03, 0, 1, 0], V4))); // 3.1.1 UNSUBACK
    let connect = frame(
        0x10,
        &cat(&[&s("MQTT"), &[4, 0x02, 0, 10], &s("id"), &[0xAA]]),
    );
    assert!(malformed(decode_err(&connect, V4)));
    // v5 PUBACK: bytes after the property block.
    assert!(malformed(decode_err(
        &[0x40, 0x05, 0, 1, 0x10, 0x00, 0xAA],
        V5
    )));
    // v5 DISCONNECT: bytes after the property block.
    assert!(malformed(decode_err(&[0xE0, 0x03, 0x00, 0x00, 0xAA], V5)));
}

/// Truncated fields (a length prefix pointing past the frame) are malformed.
#[test]
fn truncated_fields() {
    assert!(malformed(decode_err(&frame(0x30, &[0x00, 0x05, b'a']), V4)));
    assert!(malformed(decode_err(&[0x40, 0x01, 0x00], V4))); // half a packet id
    assert!(malformed(decode_err(&[0x20, 0x01, 0x00], V4))); // CONNACK
    assert!(malformed(decode_err(&[0x20, 0x02, 0x00, 0x00], V5))); // v5 CONNACK without properties
    assert!(malformed(decode_err(&frame(0x32, &s("t")), V4))); // QoS 1 without packet id
    let sub = frame(0x82, &cat(&[&[0, 1], &s("a")])); // filter without options byte
    assert!(malformed(decode_err(&sub, V4)));
    let connect = frame(0x10, &cat(&[&s("MQTT"), &[4, 0x82, 0, 10], &s("id")])); // no user name
    assert!(malformed(decode_err(&connect, V4)));
}

// ------------------------------------------------------------------------ CONNECT

fn connect(name: &str, level: u8, flags: u8, rest: &[u8]) -> Vec<u8> {
    frame(0x10, &cat(&[&s(name), &[level, flags, 0, 10], rest]))
}

/// [MQTT-3.1.2-1]: protocol name "MQTT" (4, 5) or "MQIsdp" (3).
#[test]
fn connect_protocol_name() {
    let bad = connect("MQTX", 4, 0x02, &s("id"));
    assert_eq!(decode_err(&bad, V4), DecodeError::InvalidProtocolName);
    let mixed = connect("MQTT", 3, 0x02, &s("id"));
    assert_eq!(decode_err(&mixed, V4), DecodeError::InvalidProtocolName);
    let mixed = connect("MQIsdp", 4, 0x02, &s("id"));
    assert_eq!(decode_err(&mixed, V4), DecodeError::InvalidProtocolName);
    assert_eq!(
        DecodeError::InvalidProtocolName.reason_code(),
        ReasonCode::UNSUPPORTED_PROTOCOL_VERSION
    );
}

/// [MQTT-3.1.2-2]: unsupported level, reported before the rest is parsed so the broker
/// can answer CONNACK 0x01 / 0x84.
#[test]
fn connect_unsupported_level() {
    let bytes = connect("MQTT", 6, 0x02, &s("id"));
    assert_eq!(
        decode_err(&bytes, V4),
        DecodeError::UnsupportedProtocolVersion(6)
    );
    // Garbage after the level does not hide the level error.
    let bytes = frame(0x10, &cat(&[&s("MQTT"), &[7, 0xFF]]));
    assert_eq!(
        decode_err(&bytes, V4),
        DecodeError::UnsupportedProtocolVersion(7)
    );
    assert_eq!(
        DecodeError::UnsupportedProtocolVersion(7).reason_code(),
        ReasonCode::UNSUPPORTED_PROTOCOL_VERSION
    );
}

/// [MQTT-3.1.2-3]: the reserved connect flag is 0.
#[test]
fn connect_reserved_flag() {
    assert!(malformed(decode_err(
        &connect("MQTT", 4, 0x03, &s("id")),
        V4
    )));
    assert!(malformed(decode_err(
        &connect("MQTT", 5, 0x03, &cat(&[&[0], &s("id")])),
        V5
    )));
}

/// [MQTT-3.1.2-11] [MQTT-3.1.2-13]: no Will => Will QoS 0 and Will Retain 0.
#[test]
fn connect_will_qos_or_retain_without_will() {
    assert!(malformed(decode_err(
        &connect("MQTT", 4, 0x0A, &s("id")),
        V4
    )));
    assert!(malformed(decode_err(
        &connect("MQTT", 4, 0x22, &s("id")),
        V4
    )));
}

/// [MQTT-3.1.2-12]: Will QoS 3 is malformed.
#[test]
fn connect_will_qos_3() {
    let rest = cat(&[&s("id"), &s("w"), &s("x")]);
    let e = decode_err(&connect("MQTT", 4, 0x1E, &rest), V4);
    assert_eq!(e, DecodeError::Malformed("Will QoS 3"));
}

/// [MQTT-3.1.2-22]: 3.1.1 (and 3.1) forbid a password without a user name; v5 allows it.
#[test]
fn connect_password_without_username() {
    let rest = cat(&[&s("id"), &s("pw")]);
    assert!(protocol(decode_err(&connect("MQTT", 4, 0x42, &rest), V4)));
    assert!(protocol(decode_err(
        &connect("MQIsdp", 3, 0x42, &rest),
        V31
    )));
    let rest5 = cat(&[&[0], &s("id"), &s("pw")]);
    assert!(decode_all(&connect("MQTT", 5, 0x42, &rest5), V5).is_ok());
}

/// v5 CONNECT properties: allowed set, duplicates, value rules.
#[test]
fn connect_v5_property_rules() {
    let with = |raw: &[u8]| connect("MQTT", 5, 0x02, &cat(&[&props(raw), &s("id")]));
    // Topic Alias is not a CONNECT property.
    assert!(protocol(decode_err(&with(&[0x23, 0, 1]), V5)));
    // Duplicate Session Expiry Interval.
    assert!(protocol(decode_err(
        &with(&[0x11, 0, 0, 0, 1, 0x11, 0, 0, 0, 2]),
        V5
    )));
    // Receive Maximum 0 (3.1.2.11.3).
    assert!(protocol(decode_err(&with(&[0x21, 0, 0]), V5)));
    // Maximum Packet Size 0 (3.1.2.11.4).
    assert!(protocol(decode_err(&with(&[0x27, 0, 0, 0, 0]), V5)));
    // Request Problem / Response Information other than 0/1.
    assert!(protocol(decode_err(&with(&[0x17, 2]), V5)));
    assert!(protocol(decode_err(&with(&[0x19, 2]), V5)));
    // Unknown property identifier.
    assert!(malformed(decode_err(&with(&[0x7F, 0]), V5)));
    assert!(malformed(decode_err(&with(&[0x04, 0]), V5)));
    // A property block longer than the packet.
    let bytes = connect("MQTT", 5, 0x02, &[0x20, 0x11, 0, 0]);
    assert!(malformed(decode_err(&bytes, V5)));
    // Property value truncated by its own block length.
    assert!(malformed(decode_err(&with(&[0x11, 0, 0]), V5)));
    // User Property may repeat.
    let users = [0x26, 0, 1, b'a', 0, 1, b'b', 0x26, 0, 1, b'a', 0, 1, b'c'];
    let Packet::Connect(c) = decode_all(&with(&users), V5).unwrap() else {
        panic!("CONNECT expected")
    };
    assert_eq!(c.properties.user_properties.len(), 2);
}

/// v5 Will properties: only the Will set is allowed.
#[test]
fn connect_v5_will_property_rules() {
    let with = |raw: &[u8]| {
        connect(
            "MQTT",
            5,
            0x06,
            &cat(&[&props(&[]), &s("id"), &props(raw), &s("w"), &s("x")]),
        )
    };
    assert!(decode_all(&with(&[0x18, 0, 0, 0, 9]), V5).is_ok());
    // Session Expiry Interval is a CONNECT property, not a Will property.
    assert!(protocol(decode_err(&with(&[0x11, 0, 0, 0, 9]), V5)));
    // Payload Format Indicator 2.
    assert!(protocol(decode_err(&with(&[0x01, 2]), V5)));
    // Duplicate Content Type.
    assert!(protocol(decode_err(
        &with(&[0x03, 0, 1, b'a', 0x03, 0, 1, b'b']),
        V5
    )));
}

// ------------------------------------------------------------------------ PUBLISH

/// [MQTT-3.3.2-2]: no wildcards in a topic name.
#[test]
fn publish_topic_with_wildcards() {
    assert!(protocol(decode_err(&frame(0x30, &s("a/+")), V4)));
    assert!(protocol(decode_err(&frame(0x30, &s("a/#")), V4)));
    assert!(protocol(decode_err(
        &frame(0x30, &cat(&[&s("#"), &[0]])),
        V5
    )));
}

/// [MQTT-2.2.1-3]: QoS > 0 needs a non-zero packet identifier.
#[test]
fn publish_packet_id_zero() {
    assert!(protocol(decode_err(
        &frame(0x32, &cat(&[&s("t"), &[0, 0]])),
        V4
    )));
    assert!(protocol(decode_err(
        &frame(0x34, &cat(&[&s("t"), &[0, 0]])),
        V4
    )));
    assert!(protocol(decode_err(
        &frame(0x32, &cat(&[&s("t"), &[0, 0, 0]])),
        V5
    )));
}

/// [MQTT-4.7.3-1]: empty topic in 3.1.1; allowed in v5 (Topic Alias case, checked by the
/// broker).
#[test]
fn publish_empty_topic() {
    assert!(protocol(decode_err(&frame(0x30, &s("")), V4)));
    assert!(protocol(decode_err(&frame(0x30, &s("")), V31)));
    assert!(decode_all(&frame(0x30, &cat(&[&s(""), &[0]])), V5).is_ok());
}

/// v5 PUBLISH properties.
#[test]
fn publish_v5_property_rules() {
    let with = |raw: &[u8]| frame(0x30, &cat(&[&s("t"), &props(raw)]));
    // Topic Alias 0 [MQTT-3.3.2-8]: its own error, DISCONNECT 0x94.
    let e = decode_err(&with(&[0x23, 0, 0]), V5);
    assert_eq!(e, DecodeError::TopicAliasInvalid);
    assert_eq!(e.reason_code(), ReasonCode::TOPIC_ALIAS_INVALID);
    // Duplicate Topic Alias.
    assert!(protocol(decode_err(&with(&[0x23, 0, 1, 0x23, 0, 2]), V5)));
    // Subscription Identifier 0.
    assert!(protocol(decode_err(&with(&[0x0B, 0]), V5)));
    // Payload Format Indicator 2.
    assert!(protocol(decode_err(&with(&[0x01, 2]), V5)));
    // Not a PUBLISH property.
    assert!(protocol(decode_err(&with(&[0x11, 0, 0, 0, 1]), V5)));
    // Subscription Identifier varint over 4 bytes.
    assert!(malformed(decode_err(
        &with(&[0x0B, 0x80, 0x80, 0x80, 0x80, 0x01]),
        V5
    )));
    // Several Subscription Identifiers are accepted (server -> client).
    let Packet::Publish(p) = decode_all(&with(&[0x0B, 1, 0x0B, 0xFF, 0x7F]), V5).unwrap() else {
        panic!("PUBLISH expected")
    };
    assert_eq!(p.properties.subscription_identifiers, vec![1, 16_383]);
    // Property length varint truncated.
    assert!(malformed(decode_err(
        &frame(0x30, &cat(&[&s("t"), &[0x80]])),
        V5
    )));
}

// ---------------------------------------------------------------------- SUBSCRIBE

fn subscribe(packet_id: u16, props_and_payload: &[u8]) -> Vec<u8> {
    frame(0x82, &cat(&[&packet_id.to_be_bytes(), props_and_payload]))
}

/// [MQTT-2.2.1-3]: SUBSCRIBE and UNSUBSCRIBE need a non-zero packet identifier.
#[test]
fn subscribe_packet_id_zero() {
    assert!(protocol(decode_err(
        &subscribe(0, &cat(&[&s("a"), &[0]])),
        V4
    )));
    let unsub = frame(0xA2, &cat(&[&[0, 0], &s("a")]));
    assert!(protocol(decode_err(&unsub, V4)));
}

/// [MQTT-3.8.3-3]: at least one topic filter.
#[test]
fn subscribe_without_filters() {
    assert!(protocol(decode_err(&subscribe(1, &[]), V4)));
    assert!(protocol(decode_err(&subscribe(1, &[0]), V5)));
}

/// Requested QoS 3 is malformed (3.1.1 [MQTT-3-8.3-4], 5.0 3.8.3.1).
#[test]
fn subscribe_qos_3() {
    assert_eq!(
        decode_err(&subscribe(1, &cat(&[&s("a"), &[3]])), V4),
        DecodeError::InvalidQoS
    );
    assert_eq!(
        decode_err(&subscribe(1, &cat(&[&[0], &s("a"), &[3]])), V5),
        DecodeError::InvalidQoS
    );
}

/// Retain Handling 3 is a protocol error (3.8.3.1).
#[test]
fn subscribe_retain_handling_3() {
    assert!(protocol(decode_err(
        &subscribe(1, &cat(&[&[0], &s("a"), &[0x30]])),
        V5
    )));
}

/// [MQTT-3.8.3-5]: reserved option bits are 0 (bits 6-7 in v5, bits 2-7 in 3.1.1).
#[test]
fn subscribe_reserved_option_bits() {
    assert!(malformed(decode_err(
        &subscribe(1, &cat(&[&[0], &s("a"), &[0x40]])),
        V5
    )));
    assert!(malformed(decode_err(
        &subscribe(1, &cat(&[&[0], &s("a"), &[0x80]])),
        V5
    )));
    for bit in [0x04u8, 0x08, 0x10, 0x20, 0x40, 0x80] {
        assert!(malformed(decode_err(
            &subscribe(1, &cat(&[&s("a"), &[bit]])),
            V4
        )));
    }
}

/// v5 SUBSCRIBE properties: Subscription Identifier 0 and duplicates.
#[test]
fn subscribe_v5_property_rules() {
    let with = |raw: &[u8]| subscribe(1, &cat(&[&props(raw), &s("a"), &[1]]));
    assert!(protocol(decode_err(&with(&[0x0B, 0]), V5)));
    assert!(protocol(decode_err(&with(&[0x0B, 1, 0x0B, 2]), V5)));
    assert!(protocol(decode_err(&with(&[0x1F, 0, 1, b'r']), V5)));
    assert!(decode_all(&with(&[0x0B, 0xFF, 0xFF, 0xFF, 0x7F]), V5).is_ok());
}

/// [MQTT-3.10.3-2]: UNSUBSCRIBE carries at least one filter.
#[test]
fn unsubscribe_without_filters() {
    assert!(protocol(decode_err(&frame(0xA2, &[0, 1]), V4)));
    assert!(protocol(decode_err(&frame(0xA2, &[0, 1, 0]), V5)));
    // UNSUBSCRIBE allows only User Property.
    let bytes = frame(0xA2, &cat(&[&[0, 1], &props(&[0x0B, 1]), &s("a")]));
    assert!(protocol(decode_err(&bytes, V5)));
}

// ------------------------------------------------------------------- acks, others

/// Acknowledgements of packet id 0 can never match anything in flight.
#[test]
fn acks_with_packet_id_zero() {
    for first in [0x40u8, 0x50, 0x62, 0x70, 0xB0] {
        assert!(
            protocol(decode_err(&[first, 0x02, 0, 0], V4)),
            "{first:#04x}"
        );
    }
    assert!(protocol(decode_err(&[0x90, 0x03, 0, 0, 0], V4)));
}

/// SUBACK / v5 UNSUBACK carry one reason code per filter, so at least one.
#[test]
fn suback_without_reason_codes() {
    assert!(protocol(decode_err(&[0x90, 0x02, 0, 1], V4)));
    assert!(protocol(decode_err(&[0x90, 0x03, 0, 1, 0], V5)));
    assert!(protocol(decode_err(&[0xB0, 0x03, 0, 1, 0], V5)));
}

/// Ack properties: only Reason String and User Property.
#[test]
fn ack_property_rules() {
    let bytes = [0x40, 0x06, 0, 1, 0x00, 0x02, 0x1F, 0x00];
    assert!(malformed(decode_err(&bytes, V5))); // Reason String length cut by the block
    let bytes = [0x40, 0x07, 0, 1, 0x00, 0x03, 0x23, 0x00, 0x01];
    assert!(protocol(decode_err(&bytes, V5))); // Topic Alias not allowed in PUBACK
    let raw = [0x1F, 0, 1, b'a', 0x1F, 0, 1, b'b'];
    let bytes = frame(0x40, &cat(&[&[0, 1, 0x00], &props(&raw)]));
    assert!(protocol(decode_err(&bytes, V5))); // duplicate Reason String
}

/// CONNACK: reserved acknowledge flags [MQTT-3.2.2-1] (3.1.1 and 5.0), v5 values.
#[test]
fn connack_rules() {
    assert!(malformed(decode_err(&[0x20, 0x02, 0x02, 0x00], V4)));
    assert!(malformed(decode_err(&[0x20, 0x03, 0x80, 0x00, 0x00], V5)));
    // 3.1 has no Session Present bit: the byte is ignored.
    assert!(decode_all(&[0x20, 0x02, 0x01, 0x00], V31).is_ok());
    // Maximum QoS 2 is not a valid CONNACK property value (only 0 or 1 may be sent).
    assert!(protocol(decode_err(
        &[0x20, 0x05, 0, 0, 0x02, 0x24, 0x02],
        V5
    )));
    // Receive Maximum 0.
    assert!(protocol(decode_err(
        &[0x20, 0x06, 0, 0, 0x03, 0x21, 0, 0],
        V5
    )));
}

/// DISCONNECT / AUTH property rules.
#[test]
fn disconnect_and_auth_property_rules() {
    // Will Delay Interval is not a DISCONNECT property.
    assert!(protocol(decode_err(
        &[0xE0, 0x07, 0x00, 0x05, 0x18, 0, 0, 0, 1],
        V5
    )));
    // Session Expiry Interval is not an AUTH property.
    assert!(protocol(decode_err(
        &[0xF0, 0x07, 0x18, 0x05, 0x11, 0, 0, 0, 1],
        V5
    )));
    // Duplicate Authentication Method.
    let raw = [0x15, 0, 1, b'a', 0x15, 0, 1, b'b'];
    let bytes = frame(0xF0, &cat(&[&[0x18], &props(&raw)]));
    assert!(protocol(decode_err(&bytes, V5)));
}

/// Each error maps to the reason code the spec names for it.
#[test]
fn reason_codes_of_errors() {
    assert_eq!(
        DecodeError::Malformed("x").reason_code(),
        ReasonCode::MALFORMED_PACKET
    );
    assert_eq!(
        DecodeError::InvalidQoS.reason_code(),
        ReasonCode::MALFORMED_PACKET
    );
    assert_eq!(
        DecodeError::Protocol("x").reason_code(),
        ReasonCode::PROTOCOL_ERROR
    );
    assert_eq!(
        DecodeError::PacketTooLarge { size: 2, max: 1 }.reason_code(),
        ReasonCode::PACKET_TOO_LARGE
    );
}
