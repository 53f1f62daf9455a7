//! Shared helpers for the codec's integration tests: frame builders for hand-written
//! byte vectors, and proptest strategies for packets that are valid per version (the v3
//! strategies never produce v5-only fields, so an encode -> decode round trip is exact).
#![allow(dead_code, clippy::unwrap_used)]

use bytes::{Bytes, BytesMut};
use ferromq_codec::*;
use proptest::collection::vec;
use proptest::option::of;
use proptest::prelude::*;

pub const VERSIONS: [ProtocolVersion; 3] = [
    ProtocolVersion::V3_1,
    ProtocolVersion::V3_1_1,
    ProtocolVersion::V5,
];

/// Generous limit for tests that are not about the maximum packet size.
pub const MAX: usize = 1 << 28;

/// A Variable Byte Integer.
pub fn varint(mut v: usize) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let mut b = (v % 128) as u8;
        v /= 128;
        if v > 0 {
            b |= 0x80;
        }
        out.push(b);
        if v == 0 {
            return out;
        }
    }
}

/// Fixed header (`first` byte + Remaining Length) followed by `body`.
pub fn frame(first: u8, body: &[u8]) -> Vec<u8> {
    let mut out = vec![first];
    out.extend(varint(body.len()));
    out.extend_from_slice(body);
    out
}

/// A v5 property block: length varint then the raw properties.
pub fn props(raw: &[u8]) -> Vec<u8> {
    let mut out = varint(raw.len());
    out.extend_from_slice(raw);
    out
}

/// A u16-length-prefixed string / binary field.
pub fn s(v: &str) -> Vec<u8> {
    let mut out = (v.len() as u16).to_be_bytes().to_vec();
    out.extend_from_slice(v.as_bytes());
    out
}

pub fn cat(parts: &[&[u8]]) -> Vec<u8> {
    parts.concat()
}

/// Decodes one packet and asserts it used the whole input.
pub fn decode_all(bytes: &[u8], v: ProtocolVersion) -> Result<Packet, DecodeError> {
    let mut buf = BytesMut::from(bytes);
    let p = decode(&mut buf, v, MAX)?.expect("complete frame expected");
    assert!(buf.is_empty(), "frame not fully consumed");
    Ok(p)
}

pub fn decode_err(bytes: &[u8], v: ProtocolVersion) -> DecodeError {
    match decode_all(bytes, v) {
        Ok(p) => panic!("expected an error, decoded {p:?}"),
        Err(e) => e,
    }
}

pub fn encode_vec(p: &Packet, v: ProtocolVersion) -> Vec<u8> {
    let mut out = BytesMut::new();
    encode(p, v, &mut out).unwrap();
    out.to_vec()
}

// ------------------------------------------------------------------- strategies

fn text(min: usize, max: usize, forbidden: &'static [char]) -> impl Strategy<Value = ByteString> {
    // Mix ASCII (the common case) with arbitrary scalar values (multi-byte UTF-8).
    let ch = prop_oneof![3 => proptest::char::range('!', '~'), 1 => any::<char>()];
    vec(ch, min..max).prop_map(move |chars| {
        let s: String = chars
            .into_iter()
            .filter(|c| *c != '\0' && !forbidden.contains(c))
            .collect();
        ByteString::from(s)
    })
}

pub fn string() -> impl Strategy<Value = ByteString> {
    text(0, 12, &[])
}

/// A topic name: no wildcards; non-empty unless `v5` (empty + Topic Alias).
pub fn topic(v5: bool) -> impl Strategy<Value = ByteString> {
    text(0, 12, &['+', '#']).prop_map(move |t| {
        if t.is_empty() && !v5 {
            ByteString::from_static("t")
        } else {
            t
        }
    })
}

pub fn binary() -> impl Strategy<Value = Bytes> {
    vec(any::<u8>(), 0..24).prop_map(Bytes::from)
}

fn users() -> impl Strategy<Value = UserProperties> {
    vec((string(), string()), 0..3)
}

fn flag() -> impl Strategy<Value = Option<u8>> {
    of(0u8..=1)
}

fn sub_id() -> impl Strategy<Value = u32> {
    1u32..=268_435_455
}

fn qos() -> impl Strategy<Value = QoS> {
    prop_oneof![
        Just(QoS::AtMostOnce),
        Just(QoS::AtLeastOnce),
        Just(QoS::ExactlyOnce)
    ]
}

fn packet_id() -> impl Strategy<Value = u16> {
    1u16..
}

fn reason() -> impl Strategy<Value = ReasonCode> {
    any::<u8>().prop_map(ReasonCode)
}

fn connect_props() -> impl Strategy<Value = ConnectProperties> {
    (
        of(any::<u32>()),
        of(1u16..),
        of(1u32..),
        of(any::<u16>()),
        flag(),
        flag(),
        users(),
        of(string()),
        of(binary()),
    )
        .prop_map(|(a, b, c, d, e, f, g, h, i)| ConnectProperties {
            session_expiry_interval: a,
            receive_maximum: b,
            maximum_packet_size: c,
            topic_alias_maximum: d,
            request_response_information: e,
            request_problem_information: f,
            user_properties: g,
            authentication_method: h,
            authentication_data: i,
        })
}

fn will_props() -> impl Strategy<Value = WillProperties> {
    (
        of(any::<u32>()),
        flag(),
        of(any::<u32>()),
        of(string()),
        of(string()),
        of(binary()),
        users(),
    )
        .prop_map(|(a, b, c, d, e, f, g)| WillProperties {
            will_delay_interval: a,
            payload_format_indicator: b,
            message_expiry_interval: c,
            content_type: d,
            response_topic: e,
            correlation_data: f,
            user_properties: g,
        })
}

fn connack_props() -> impl Strategy<Value = ConnAckProperties> {
    (
        (
            of(any::<u32>()),
            of(1u16..),
            flag(),
            flag(),
            of(1u32..),
            of(string()),
            of(any::<u16>()),
            of(string()),
            users(),
        ),
        (
            flag(),
            flag(),
            flag(),
            of(any::<u16>()),
            of(string()),
            of(string()),
            of(string()),
            of(binary()),
        ),
    )
        .prop_map(|((a, b, c, d, e, f, g, h, i), (j, k, l, m, n, o, p, q))| {
            ConnAckProperties {
                session_expiry_interval: a,
                receive_maximum: b,
                maximum_qos: c,
                retain_available: d,
                maximum_packet_size: e,
                assigned_client_identifier: f,
                topic_alias_maximum: g,
                reason_string: h,
                user_properties: i,
                wildcard_subscription_available: j,
                subscription_identifiers_available: k,
                shared_subscription_available: l,
                server_keep_alive: m,
                response_information: n,
                server_reference: o,
                authentication_method: p,
                authentication_data: q,
            }
        })
}

fn publish_props() -> impl Strategy<Value = PublishProperties> {
    (
        flag(),
        of(any::<u32>()),
        of(1u16..),
        of(string()),
        of(binary()),
        users(),
        vec(sub_id(), 0..3),
        of(string()),
    )
        .prop_map(|(a, b, c, d, e, f, g, h)| PublishProperties {
            payload_format_indicator: a,
            message_expiry_interval: b,
            topic_alias: c,
            response_topic: d,
            correlation_data: e,
            user_properties: f,
            subscription_identifiers: g,
            content_type: h,
        })
}

fn ack_props() -> impl Strategy<Value = AckProperties> {
    (of(string()), users()).prop_map(|(reason_string, user_properties)| AckProperties {
        reason_string,
        user_properties,
    })
}

/// Properties for v5, defaults otherwise.
fn v5_or_default<T: Default + std::fmt::Debug + Clone + 'static>(
    v5: bool,
    s: impl Strategy<Value = T> + 'static,
) -> BoxedStrategy<T> {
    if v5 {
        s.boxed()
    } else {
        Just(T::default()).boxed()
    }
}

fn will(v5: bool) -> impl Strategy<Value = LastWill> {
    (
        string(),
        binary(),
        qos(),
        any::<bool>(),
        v5_or_default(v5, will_props()),
    )
        .prop_map(|(topic, payload, qos, retain, properties)| LastWill {
            topic,
            payload,
            qos,
            retain,
            properties,
        })
}

fn connect(v: ProtocolVersion) -> impl Strategy<Value = Packet> {
    let v5 = v.is_v5();
    (
        any::<bool>(),
        any::<u16>(),
        string(),
        of(will(v5)),
        of(string()),
        of(binary()),
        v5_or_default(v5, connect_props()),
    )
        .prop_map(
            move |(clean_start, keep_alive, client_id, will, username, password, properties)| {
                // 3.1.x: no password without a user name [MQTT-3.1.2-22].
                let password = if v5 || username.is_some() {
                    password
                } else {
                    None
                };
                Packet::Connect(Box::new(Connect {
                    protocol: v,
                    clean_start,
                    keep_alive,
                    client_id,
                    will,
                    username,
                    password,
                    properties,
                }))
            },
        )
}

pub fn publish(v: ProtocolVersion) -> impl Strategy<Value = Publish> {
    let v5 = v.is_v5();
    (
        any::<bool>(),
        qos(),
        any::<bool>(),
        topic(v5),
        packet_id(),
        v5_or_default(v5, publish_props()),
        vec(any::<u8>(), 0..64),
    )
        .prop_map(
            |(dup, qos, retain, topic, packet_id, properties, payload)| Publish {
                dup: dup && qos != QoS::AtMostOnce,
                qos,
                retain,
                topic,
                packet_id: if qos == QoS::AtMostOnce { 0 } else { packet_id },
                properties,
                payload: Bytes::from(payload),
            },
        )
}

fn pub_resp(v: ProtocolVersion) -> impl Strategy<Value = PubResp> {
    let v5 = v.is_v5();
    (
        packet_id(),
        v5_or_default(v5, reason()),
        v5_or_default(v5, ack_props()),
    )
        .prop_map(|(packet_id, reason_code, properties)| PubResp {
            packet_id,
            reason_code,
            properties,
        })
}

fn options(v5: bool) -> impl Strategy<Value = SubscriptionOptions> {
    let rh = prop_oneof![
        Just(RetainHandling::SendAtSubscribe),
        Just(RetainHandling::SendIfNew),
        Just(RetainHandling::DoNotSend),
    ];
    (qos(), any::<bool>(), any::<bool>(), rh).prop_map(move |(qos, nl, rap, rh)| {
        if v5 {
            SubscriptionOptions {
                qos,
                no_local: nl,
                retain_as_published: rap,
                retain_handling: rh,
            }
        } else {
            SubscriptionOptions {
                qos,
                ..Default::default()
            }
        }
    })
}

fn subscribe(v: ProtocolVersion) -> impl Strategy<Value = Packet> {
    let v5 = v.is_v5();
    let props = (of(sub_id()), users()).prop_map(|(subscription_identifier, user_properties)| {
        SubscribeProperties {
            subscription_identifier,
            user_properties,
        }
    });
    (
        packet_id(),
        v5_or_default(v5, props),
        vec((string(), options(v5)), 1..4),
    )
        .prop_map(|(packet_id, properties, filters)| {
            Packet::Subscribe(Subscribe {
                packet_id,
                properties,
                filters,
            })
        })
}

fn unsubscribe(v: ProtocolVersion) -> impl Strategy<Value = Packet> {
    let v5 = v.is_v5();
    let props = users().prop_map(|user_properties| UnsubscribeProperties { user_properties });
    (packet_id(), v5_or_default(v5, props), vec(string(), 1..4)).prop_map(
        |(packet_id, properties, filters)| {
            Packet::Unsubscribe(Unsubscribe {
                packet_id,
                properties,
                filters,
            })
        },
    )
}

fn disconnect_props() -> impl Strategy<Value = DisconnectProperties> {
    (of(any::<u32>()), of(string()), users(), of(string())).prop_map(|(a, b, c, d)| {
        DisconnectProperties {
            session_expiry_interval: a,
            reason_string: b,
            user_properties: c,
            server_reference: d,
        }
    })
}

fn auth_props() -> impl Strategy<Value = AuthProperties> {
    (of(string()), of(binary()), of(string()), users()).prop_map(|(a, b, c, d)| AuthProperties {
        authentication_method: a,
        authentication_data: b,
        reason_string: c,
        user_properties: d,
    })
}

/// Any packet that is valid for `v` (both directions).
pub fn packet(v: ProtocolVersion) -> BoxedStrategy<Packet> {
    let v5 = v.is_v5();
    let connack = (any::<bool>(), reason(), v5_or_default(v5, connack_props())).prop_map(
        move |(session_present, reason_code, properties)| {
            Packet::ConnAck(ConnAck {
                // 3.1 has no Session Present flag.
                session_present: session_present && v != ProtocolVersion::V3_1,
                reason_code,
                properties,
            })
        },
    );
    let suback = (
        packet_id(),
        v5_or_default(v5, ack_props()),
        vec(reason(), 1..4),
    )
        .prop_map(|(packet_id, properties, reason_codes)| {
            Packet::SubAck(SubAck {
                packet_id,
                properties,
                reason_codes,
            })
        });
    let unsuback = (
        packet_id(),
        v5_or_default(v5, ack_props()),
        vec(reason(), 1..4),
    )
        .prop_map(move |(packet_id, properties, reason_codes)| {
            Packet::UnsubAck(UnsubAck {
                packet_id,
                properties,
                reason_codes: if v5 { reason_codes } else { Vec::new() },
            })
        });
    let disconnect = (
        v5_or_default(v5, reason()),
        v5_or_default(v5, disconnect_props()),
    )
        .prop_map(|(reason_code, properties)| {
            Packet::Disconnect(Disconnect {
                reason_code,
                properties,
            })
        });
    let common = prop_oneof![
        connect(v),
        connack,
        publish(v).prop_map(Packet::Publish),
        pub_resp(v).prop_map(Packet::PubAck),
        pub_resp(v).prop_map(Packet::PubRec),
        pub_resp(v).prop_map(Packet::PubRel),
        pub_resp(v).prop_map(Packet::PubComp),
        subscribe(v),
        suback,
        unsubscribe(v),
        unsuback,
        Just(Packet::PingReq),
        Just(Packet::PingResp),
        disconnect,
    ];
    if v5 {
        let auth = (reason(), auth_props()).prop_map(|(reason_code, properties)| {
            Packet::Auth(Auth {
                reason_code,
                properties,
            })
        });
        prop_oneof![14 => common, 1 => auth].boxed()
    } else {
        common.boxed()
    }
}

/// A version and a packet valid for it.
pub fn versioned_packet() -> impl Strategy<Value = (ProtocolVersion, Packet)> {
    prop_oneof![
        packet(ProtocolVersion::V3_1).prop_map(|p| (ProtocolVersion::V3_1, p)),
        packet(ProtocolVersion::V3_1_1).prop_map(|p| (ProtocolVersion::V3_1_1, p)),
        packet(ProtocolVersion::V5).prop_map(|p| (ProtocolVersion::V5, p)),
    ]
}
