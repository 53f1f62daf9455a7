//! Hand-written wire bytes for every packet type in 3.1 / 3.1.1 and 5.0: each vector
//! must decode to the expected struct AND the struct must encode to exactly those bytes.
#![allow(clippy::unwrap_used)]

mod common;

use bytes::{Bytes, BytesMut};
use common::*;
use ferromq_codec::*;

const V31: ProtocolVersion = ProtocolVersion::V3_1;
const V4: ProtocolVersion = ProtocolVersion::V3_1_1;
const V5: ProtocolVersion = ProtocolVersion::V5;

/// Decode == expected, encode == bytes, and the lengths agree.
#[track_caller]
fn vector(bytes: &[u8], v: ProtocolVersion, expected: Packet) {
    assert_eq!(decode_all(bytes, v).unwrap(), expected, "decode");
    assert_eq!(encode_vec(&expected, v), bytes, "encode");
    assert_eq!(
        encoded_len(&expected, v).unwrap(),
        bytes.len(),
        "encoded_len"
    );
}

fn bs(s: &'static str) -> ByteString {
    ByteString::from_static(s)
}

fn b(s: &'static [u8]) -> Bytes {
    Bytes::from_static(s)
}

// ------------------------------------------------------------------------ 3.1.1

/// Spec 3.1.2.10 (variable header example): "MQTT", level 4, flags 0xCE (user name,
/// password, Will QoS 1, Will Flag, Clean Session), Keep Alive 10 — completed with a
/// payload in the order of [MQTT-3.1.3-1].
#[test]
fn connect_3_1_1_spec_example() {
    #[rustfmt::skip]
    let bytes = [
        0x10, 0x22,
        0x00, 0x04, b'M', b'Q', b'T', b'T', 0x04, 0xCE, 0x00, 0x0A,
        0x00, 0x02, b'i', b'd',
        0x00, 0x03, b'w', b'/', b't',
        0x00, 0x03, b'b', b'y', b'e',
        0x00, 0x04, b'u', b's', b'e', b'r',
        0x00, 0x02, b'p', b'w',
    ];
    let expected = Packet::Connect(Box::new(Connect {
        protocol: V4,
        clean_start: true,
        keep_alive: 10,
        client_id: bs("id"),
        will: Some(LastWill {
            topic: bs("w/t"),
            payload: b(b"bye"),
            qos: QoS::AtLeastOnce,
            retain: false,
            properties: Default::default(),
        }),
        username: Some(bs("user")),
        password: Some(b(b"pw")),
        properties: Default::default(),
    }));
    vector(&bytes, V4, expected.clone());
    // A CONNECT is decoded with its own level, whatever the caller passes.
    assert_eq!(decode_all(&bytes, V5).unwrap(), expected);
}

/// MQTT 3.1: protocol name "MQIsdp", level 3.
#[test]
fn connect_3_1_mqisdp() {
    #[rustfmt::skip]
    let bytes = [
        0x10, 0x11,
        0x00, 0x06, b'M', b'Q', b'I', b's', b'd', b'p', 0x03, 0x02, 0x00, 0x3C,
        0x00, 0x03, b'c', b'i', b'd',
    ];
    vector(
        &bytes,
        V31,
        Packet::Connect(Box::new(Connect {
            protocol: V31,
            clean_start: true,
            keep_alive: 60,
            client_id: bs("cid"),
            will: None,
            username: None,
            password: None,
            properties: Default::default(),
        })),
    );
}

#[test]
fn connack_3_1_1() {
    vector(
        &[0x20, 0x02, 0x01, 0x00],
        V4,
        Packet::ConnAck(ConnAck {
            session_present: true,
            reason_code: ReasonCode::V3_ACCEPTED,
            properties: Default::default(),
        }),
    );
    vector(
        &[0x20, 0x02, 0x00, 0x05],
        V31,
        Packet::ConnAck(ConnAck {
            session_present: false,
            reason_code: ReasonCode::V3_NOT_AUTHORIZED,
            properties: Default::default(),
        }),
    );
}

#[test]
fn publish_qos1_3_1_1() {
    #[rustfmt::skip]
    let bytes = [0x32, 0x09, 0x00, 0x03, b'a', b'/', b'b', 0x00, 0x0A, b'h', b'i'];
    vector(
        &bytes,
        V4,
        Packet::Publish(Publish {
            dup: false,
            qos: QoS::AtLeastOnce,
            retain: false,
            topic: bs("a/b"),
            packet_id: 10,
            properties: Default::default(),
            payload: b(b"hi"),
        }),
    );
}

#[test]
fn publish_qos0_retain_dup_qos2_3_1_1() {
    vector(
        &[0x31, 0x04, 0x00, 0x01, b't', b'x'],
        V4,
        Packet::Publish(Publish {
            retain: true,
            topic: bs("t"),
            payload: b(b"x"),
            ..Default::default()
        }),
    );
    vector(
        &[0x3C, 0x05, 0x00, 0x01, b't', 0xFF, 0xFF],
        V4,
        Packet::Publish(Publish {
            dup: true,
            qos: QoS::ExactlyOnce,
            topic: bs("t"),
            packet_id: 0xFFFF,
            ..Default::default()
        }),
    );
}

#[test]
fn pub_acks_3_1_1() {
    let r = PubResp {
        packet_id: 10,
        ..Default::default()
    };
    vector(&[0x40, 0x02, 0x00, 0x0A], V4, Packet::PubAck(r.clone()));
    vector(&[0x50, 0x02, 0x00, 0x0A], V4, Packet::PubRec(r.clone()));
    vector(&[0x62, 0x02, 0x00, 0x0A], V4, Packet::PubRel(r.clone()));
    vector(&[0x70, 0x02, 0x00, 0x0A], V4, Packet::PubComp(r));
}

#[test]
fn subscribe_3_1_1() {
    #[rustfmt::skip]
    let bytes = [
        0x82, 0x0E, 0x00, 0x0A,
        0x00, 0x03, b'a', b'/', b'b', 0x01,
        0x00, 0x03, b'c', b'/', b'#', 0x02,
    ];
    let opts = |qos| SubscriptionOptions {
        qos,
        ..Default::default()
    };
    vector(
        &bytes,
        V4,
        Packet::Subscribe(Subscribe {
            packet_id: 10,
            properties: Default::default(),
            filters: vec![
                (bs("a/b"), opts(QoS::AtLeastOnce)),
                (bs("c/#"), opts(QoS::ExactlyOnce)),
            ],
        }),
    );
}

#[test]
fn suback_3_1_1() {
    vector(
        &[0x90, 0x05, 0x00, 0x0A, 0x01, 0x02, 0x80],
        V4,
        Packet::SubAck(SubAck {
            packet_id: 10,
            properties: Default::default(),
            reason_codes: vec![
                ReasonCode::GRANTED_QOS_1,
                ReasonCode::GRANTED_QOS_2,
                ReasonCode::V3_SUBACK_FAILURE,
            ],
        }),
    );
}

#[test]
fn unsubscribe_and_unsuback_3_1_1() {
    vector(
        &[0xA2, 0x07, 0x00, 0x0B, 0x00, 0x03, b'a', b'/', b'b'],
        V4,
        Packet::Unsubscribe(Unsubscribe {
            packet_id: 11,
            properties: Default::default(),
            filters: vec![bs("a/b")],
        }),
    );
    vector(
        &[0xB0, 0x02, 0x00, 0x0B],
        V4,
        Packet::UnsubAck(UnsubAck {
            packet_id: 11,
            ..Default::default()
        }),
    );
}

#[test]
fn ping_and_disconnect_3_1_1() {
    vector(&[0xC0, 0x00], V4, Packet::PingReq);
    vector(&[0xD0, 0x00], V4, Packet::PingResp);
    vector(&[0xE0, 0x00], V4, Packet::Disconnect(Disconnect::default()));
}

/// 3.1.x encoding drops v5-only fields instead of failing.
#[test]
fn v3_encoding_omits_v5_fields() {
    let ack = Packet::PubAck(PubResp {
        packet_id: 1,
        reason_code: ReasonCode::NO_MATCHING_SUBSCRIBERS,
        properties: AckProperties {
            reason_string: Some(bs("r")),
            user_properties: vec![],
        },
    });
    assert_eq!(encode_vec(&ack, V4), [0x40, 0x02, 0x00, 0x01]);
    let disc = Packet::Disconnect(Disconnect {
        reason_code: ReasonCode::SERVER_SHUTTING_DOWN,
        properties: Default::default(),
    });
    assert_eq!(encode_vec(&disc, V4), [0xE0, 0x00]);
    let auth = Packet::Auth(Auth::default());
    assert_eq!(
        encode(&auth, V4, &mut BytesMut::new()),
        Err(EncodeError::NotInVersion("AUTH"))
    );
    assert_eq!(
        encoded_len(&auth, V31),
        Err(EncodeError::NotInVersion("AUTH"))
    );
}

// ------------------------------------------------------------------------ 5.0

/// CONNECT v5 with Session Expiry Interval 120 and Receive Maximum 10.
#[test]
fn connect_v5_with_properties() {
    #[rustfmt::skip]
    let bytes = [
        0x10, 0x17,
        0x00, 0x04, b'M', b'Q', b'T', b'T', 0x05, 0x02, 0x00, 0x3C,
        0x08, 0x11, 0x00, 0x00, 0x00, 0x78, 0x21, 0x00, 0x0A,
        0x00, 0x02, b'c', b'1',
    ];
    vector(
        &bytes,
        V5,
        Packet::Connect(Box::new(Connect {
            protocol: V5,
            clean_start: true,
            keep_alive: 60,
            client_id: bs("c1"),
            will: None,
            username: None,
            password: None,
            properties: ConnectProperties {
                session_expiry_interval: Some(120),
                receive_maximum: Some(10),
                ..Default::default()
            },
        })),
    );
}

/// CONNECT v5 with a User Property, an empty client id, and a retained QoS 1 Will with
/// Will Delay Interval and Payload Format Indicator.
#[test]
fn connect_v5_with_will_properties() {
    #[rustfmt::skip]
    let bytes = [
        0x10, 0x22,
        0x00, 0x04, b'M', b'Q', b'T', b'T', 0x05, 0x2E, 0x00, 0x00,
        0x07, 0x26, 0x00, 0x01, b'k', 0x00, 0x01, b'v',
        0x00, 0x00,
        0x07, 0x18, 0x00, 0x00, 0x00, 0x05, 0x01, 0x01,
        0x00, 0x01, b'w',
        0x00, 0x01, b'x',
    ];
    vector(
        &bytes,
        V5,
        Packet::Connect(Box::new(Connect {
            protocol: V5,
            clean_start: true,
            keep_alive: 0,
            client_id: bs(""),
            will: Some(LastWill {
                topic: bs("w"),
                payload: b(b"x"),
                qos: QoS::AtLeastOnce,
                retain: true,
                properties: WillProperties {
                    will_delay_interval: Some(5),
                    payload_format_indicator: Some(1),
                    ..Default::default()
                },
            }),
            username: None,
            password: None,
            properties: ConnectProperties {
                user_properties: vec![(bs("k"), bs("v"))],
                ..Default::default()
            },
        })),
    );
}

/// MQTT 5 allows a password without a user name (3.1.2.9).
#[test]
fn connect_v5_password_without_username() {
    #[rustfmt::skip]
    let bytes = [
        0x10, 0x11,
        0x00, 0x04, b'M', b'Q', b'T', b'T', 0x05, 0x40, 0x00, 0x00, 0x00,
        0x00, 0x00,
        0x00, 0x02, b'p', b'w',
    ];
    let Packet::Connect(c) = decode_all(&bytes, V5).unwrap() else {
        panic!("CONNECT expected")
    };
    assert_eq!(c.username, None);
    assert_eq!(c.password, Some(b(b"pw")));
    assert_eq!(encode_vec(&Packet::Connect(c), V5), bytes);
}

#[test]
fn connack_v5() {
    #[rustfmt::skip]
    let bytes = [
        0x20, 0x0B, 0x00, 0x00,
        0x08, 0x12, 0x00, 0x02, b'i', b'd', 0x22, 0x00, 0x0A,
    ];
    vector(
        &bytes,
        V5,
        Packet::ConnAck(ConnAck {
            session_present: false,
            reason_code: ReasonCode::SUCCESS,
            properties: ConnAckProperties {
                assigned_client_identifier: Some(bs("id")),
                topic_alias_maximum: Some(10),
                ..Default::default()
            },
        }),
    );
    vector(
        &[0x20, 0x03, 0x00, 0x84, 0x00],
        V5,
        Packet::ConnAck(ConnAck {
            reason_code: ReasonCode::UNSUPPORTED_PROTOCOL_VERSION,
            ..Default::default()
        }),
    );
}

#[test]
fn publish_v5() {
    #[rustfmt::skip]
    let bytes = [
        0x34, 0x12,
        0x00, 0x03, b'a', b'/', b'b', 0x00, 0x01,
        0x08, 0x02, 0x00, 0x00, 0x00, 0x3C, 0x23, 0x00, 0x05,
        b'h', b'i',
    ];
    vector(
        &bytes,
        V5,
        Packet::Publish(Publish {
            qos: QoS::ExactlyOnce,
            topic: bs("a/b"),
            packet_id: 1,
            properties: PublishProperties {
                message_expiry_interval: Some(60),
                topic_alias: Some(5),
                ..Default::default()
            },
            payload: b(b"hi"),
            ..Default::default()
        }),
    );
    // Empty topic name with a Topic Alias (3.3.2.3.4).
    vector(
        &[0x30, 0x07, 0x00, 0x00, 0x03, 0x23, 0x00, 0x05, b'x'],
        V5,
        Packet::Publish(Publish {
            topic: bs(""),
            properties: PublishProperties {
                topic_alias: Some(5),
                ..Default::default()
            },
            payload: b(b"x"),
            ..Default::default()
        }),
    );
    // Server -> client: several Subscription Identifiers [MQTT-3.3.4-3].
    vector(
        &[0x30, 0x08, 0x00, 0x01, b't', 0x04, 0x0B, 0x01, 0x0B, 0x02],
        V5,
        Packet::Publish(Publish {
            topic: bs("t"),
            properties: PublishProperties {
                subscription_identifiers: vec![1, 2],
                ..Default::default()
            },
            ..Default::default()
        }),
    );
}

#[test]
fn pub_acks_v5_short_and_long_forms() {
    // Remaining length 2: Success, no properties (3.4.2.1).
    vector(
        &[0x40, 0x02, 0x00, 0x0A],
        V5,
        Packet::PubAck(PubResp {
            packet_id: 10,
            ..Default::default()
        }),
    );
    // Remaining length 3: reason code only.
    vector(
        &[0x50, 0x03, 0x00, 0x0A, 0x10],
        V5,
        Packet::PubRec(PubResp {
            packet_id: 10,
            reason_code: ReasonCode::NO_MATCHING_SUBSCRIBERS,
            properties: Default::default(),
        }),
    );
    // Reason code and a Reason String.
    #[rustfmt::skip]
    let bytes = [
        0x62, 0x0B, 0x00, 0x0A, 0x92,
        0x07, 0x1F, 0x00, 0x04, b'n', b'o', b'n', b'e',
    ];
    vector(
        &bytes,
        V5,
        Packet::PubRel(PubResp {
            packet_id: 10,
            reason_code: ReasonCode::PACKET_IDENTIFIER_NOT_FOUND,
            properties: AckProperties {
                reason_string: Some(bs("none")),
                user_properties: vec![],
            },
        }),
    );
    // Success with an empty property block is accepted on decode (3.4.2.2.1).
    assert_eq!(
        decode_all(&[0x70, 0x04, 0x00, 0x0A, 0x00, 0x00], V5).unwrap(),
        Packet::PubComp(PubResp {
            packet_id: 10,
            ..Default::default()
        })
    );
}

#[test]
fn subscribe_v5() {
    #[rustfmt::skip]
    let bytes = [
        0x82, 0x0B, 0x00, 0x01,
        0x02, 0x0B, 0x07,
        0x00, 0x03, b'a', b'/', b'b', 0x2D,
    ];
    vector(
        &bytes,
        V5,
        Packet::Subscribe(Subscribe {
            packet_id: 1,
            properties: SubscribeProperties {
                subscription_identifier: Some(7),
                user_properties: vec![],
            },
            filters: vec![(
                bs("a/b"),
                SubscriptionOptions {
                    qos: QoS::AtLeastOnce,
                    no_local: true,
                    retain_as_published: true,
                    retain_handling: RetainHandling::DoNotSend,
                },
            )],
        }),
    );
}

#[test]
fn suback_unsubscribe_unsuback_v5() {
    vector(
        &[0x90, 0x05, 0x00, 0x01, 0x00, 0x01, 0x80],
        V5,
        Packet::SubAck(SubAck {
            packet_id: 1,
            properties: Default::default(),
            reason_codes: vec![ReasonCode::GRANTED_QOS_1, ReasonCode::UNSPECIFIED_ERROR],
        }),
    );
    vector(
        &[0xA2, 0x06, 0x00, 0x02, 0x00, 0x00, 0x01, b'x'],
        V5,
        Packet::Unsubscribe(Unsubscribe {
            packet_id: 2,
            properties: Default::default(),
            filters: vec![bs("x")],
        }),
    );
    vector(
        &[0xB0, 0x05, 0x00, 0x02, 0x00, 0x00, 0x11],
        V5,
        Packet::UnsubAck(UnsubAck {
            packet_id: 2,
            properties: Default::default(),
            reason_codes: vec![ReasonCode::SUCCESS, ReasonCode::NO_SUBSCRIPTION_EXISTED],
        }),
    );
}

#[test]
fn disconnect_v5() {
    // Remaining length 0: Normal disconnection (3.14.2.1).
    vector(&[0xE0, 0x00], V5, Packet::Disconnect(Disconnect::default()));
    // Reason code only.
    vector(
        &[0xE0, 0x01, 0x04],
        V5,
        Packet::Disconnect(Disconnect {
            reason_code: ReasonCode::DISCONNECT_WITH_WILL,
            properties: Default::default(),
        }),
    );
    // Reason code + Session Expiry Interval 0.
    vector(
        &[0xE0, 0x07, 0x8B, 0x05, 0x11, 0x00, 0x00, 0x00, 0x00],
        V5,
        Packet::Disconnect(Disconnect {
            reason_code: ReasonCode::SERVER_SHUTTING_DOWN,
            properties: DisconnectProperties {
                session_expiry_interval: Some(0),
                ..Default::default()
            },
        }),
    );
    // The long form of a reason-only DISCONNECT decodes to the same value.
    assert_eq!(
        decode_all(&[0xE0, 0x02, 0x04, 0x00], V5).unwrap(),
        Packet::Disconnect(Disconnect {
            reason_code: ReasonCode::DISCONNECT_WITH_WILL,
            properties: Default::default(),
        })
    );
}

#[test]
fn auth_v5() {
    vector(&[0xF0, 0x00], V5, Packet::Auth(Auth::default()));
    #[rustfmt::skip]
    let bytes = [
        0xF0, 0x0D, 0x18,
        0x0B, 0x15, 0x00, 0x04, b'S', b'C', b'R', b'M', 0x16, 0x00, 0x01, b'x',
    ];
    vector(
        &bytes,
        V5,
        Packet::Auth(Auth {
            reason_code: ReasonCode::CONTINUE_AUTHENTICATION,
            properties: AuthProperties {
                authentication_method: Some(bs("SCRM")),
                authentication_data: Some(b(b"x")),
                ..Default::default()
            },
        }),
    );
}

#[test]
fn ping_v5() {
    vector(&[0xC0, 0x00], V5, Packet::PingReq);
    vector(&[0xD0, 0x00], V5, Packet::PingResp);
}

/// `check` reads only the fixed header and reports the frame geometry.
#[test]
fn check_reports_frame_info() {
    let bytes = frame(0x32, &[0u8; 200]);
    assert_eq!(
        check(&bytes[..3], MAX).unwrap(),
        Some(FrameInfo {
            packet_type: 3,
            flags: 2,
            header_len: 3,
            remaining_len: 200
        })
    );
    assert_eq!(check(&bytes[..2], MAX).unwrap(), None);
    assert_eq!(check(&[], MAX).unwrap(), None);
    let info = check(&bytes, MAX).unwrap().unwrap();
    assert_eq!(info.frame_len(), 203);
    assert!(!info.is_complete(202));
    assert!(info.is_complete(203));
}

/// Largest encodable packet length boundary: Remaining Length 268,435,455.
#[test]
fn encode_rejects_oversized_fields() {
    let long = ByteString::from("x".repeat(65_536));
    let p = Packet::Publish(Publish {
        topic: long,
        ..Default::default()
    });
    assert_eq!(encoded_len(&p, V4), Err(EncodeError::FieldTooLong(65_536)));
    let mut out = BytesMut::new();
    assert_eq!(
        encode(&p, V4, &mut out),
        Err(EncodeError::FieldTooLong(65_536))
    );
    assert!(out.is_empty(), "nothing written on error");

    let p = Publish {
        topic: bs("t"),
        payload: Bytes::from(vec![0u8; 268_435_455]),
        ..Default::default()
    };
    assert_eq!(
        publish_encoded_len(&p, V4),
        Err(EncodeError::PacketTooLarge)
    );
    let p = Publish {
        topic: bs("t"),
        payload: Bytes::from(vec![0u8; 268_435_455 - 3]),
        ..Default::default()
    };
    assert_eq!(publish_encoded_len(&p, V4), Ok(268_435_455 + 5));
}
