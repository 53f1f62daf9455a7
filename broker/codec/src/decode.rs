//! Decoding: `check` (fixed header only) then `decode` (one complete frame).
//!
//! Why two steps (mini-redis `Frame::check`, rumqttd `v4::check`): the connection can
//! learn the frame size, reject an oversized packet and reserve buffer space from the
//! first 2..=5 bytes, without buffering or allocating anything. Incomplete input is
//! `Ok(None)`, an expected outcome of a partial read, not an error.
//!
//! `decode` splits the complete frame off the read buffer (`split_to` + `freeze`) and
//! parses it through a bounds-checked [`Reader`]; topics, payloads and binary properties
//! are slices of that frame, so the payload is never copied. Only property lists and
//! SUBSCRIBE/UNSUBSCRIBE filter lists allocate.
//!
//! Layout: [`FrameInfo`], [`check`] (+ fixed-header flag rules), [`decode`], then one
//! parser per packet type. Property blocks are in `properties_codec`.

use bytes::{Buf, BytesMut};

use crate::error::DecodeError;
use crate::packet::{
    Auth, ConnAck, Connect, Disconnect, LastWill, Packet, ProtocolVersion, PubResp, Publish, QoS,
    RetainHandling, SubAck, Subscribe, SubscriptionOptions, UnsubAck, Unsubscribe,
};
use crate::primitives::{Reader, Varint, parse_varint};
use crate::properties_codec as props;
use crate::reason::ReasonCode;

type Result<T> = std::result::Result<T, DecodeError>;

/// Control packet type numbers (the high nibble of the first byte).
pub(crate) mod kind {
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
}

/// Fixed-header information of one frame at the front of a buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameInfo {
    /// High nibble of the first byte (1 = CONNECT .. 15 = AUTH).
    pub packet_type: u8,
    /// Low nibble of the first byte (already validated for the packet type).
    pub flags: u8,
    /// Bytes of the fixed header: 1 + the Remaining Length varint (2..=5).
    pub header_len: usize,
    /// The Remaining Length: variable header + payload.
    pub remaining_len: usize,
}

impl FrameInfo {
    /// Size of the whole packet on the wire: `header_len + remaining_len`.
    pub fn frame_len(&self) -> usize {
        self.header_len + self.remaining_len
    }

    /// True when `buffered` bytes hold the whole frame, i.e. [`decode`] will not return
    /// `Ok(None)` for it.
    pub fn is_complete(&self, buffered: usize) -> bool {
        buffered >= self.frame_len()
    }
}

/// Reads only the fixed header. `Ok(None)` = need more bytes (NOT an error).
///
/// `Ok(Some(info))` means the fixed header is complete and acceptable; the body may still
/// be partly unread (see [`FrameInfo::is_complete`]). Enforces `max_packet_size` (the
/// whole-packet size, [`FrameInfo::frame_len`]) as soon as the Remaining Length varint is
/// complete, before the body is buffered -> [`DecodeError::PacketTooLarge`]. Also
/// rejects packet type 0, bad fixed-header flags, PUBLISH QoS 3 and DUP on QoS 0, all
/// from the first byte. Allocates nothing.
///
/// Packet type 15 (AUTH) is accepted here; [`decode`] rejects it outside MQTT 5.
pub fn check(buf: &[u8], max_packet_size: usize) -> Result<Option<FrameInfo>> {
    let Some(&first) = buf.first() else {
        return Ok(None);
    };
    let packet_type = first >> 4;
    let flags = first & 0x0F;
    check_first_byte(packet_type, flags)?;
    match parse_varint(&buf[1..]) {
        Varint::Incomplete => Ok(None),
        Varint::TooLong => Err(DecodeError::MalformedRemainingLength),
        Varint::Complete(remaining_len, used) => {
            let info = FrameInfo {
                packet_type,
                flags,
                header_len: 1 + used,
                remaining_len,
            };
            if info.frame_len() > max_packet_size {
                return Err(DecodeError::PacketTooLarge {
                    size: info.frame_len(),
                    max: max_packet_size,
                });
            }
            Ok(Some(info))
        }
    }
}

/// Packet type and fixed-header flag rules (spec 2.1.3) [MQTT-2.2.2-2].
fn check_first_byte(packet_type: u8, flags: u8) -> Result<()> {
    match packet_type {
        0 => Err(DecodeError::InvalidPacketType(0)),
        kind::PUBLISH => {
            let qos = (flags >> 1) & 0b11;
            if qos == 3 {
                // [MQTT-3.3.1-4]
                return Err(DecodeError::InvalidQoS);
            }
            if qos == 0 && flags & 0b1000 != 0 {
                // [MQTT-3.3.1-2]
                return Err(DecodeError::Malformed("DUP set on a QoS 0 PUBLISH"));
            }
            Ok(())
        }
        // [MQTT-3.6.1-1] [MQTT-3.8.1-1] [MQTT-3.10.1-1]
        kind::PUBREL | kind::SUBSCRIBE | kind::UNSUBSCRIBE if flags == 0b0010 => Ok(()),
        kind::PUBREL | kind::SUBSCRIBE | kind::UNSUBSCRIBE => {
            Err(DecodeError::InvalidFlags { packet_type, flags })
        }
        _ if flags == 0 => Ok(()),
        _ => Err(DecodeError::InvalidFlags { packet_type, flags }),
    }
}

/// Decodes one packet from the front of `buf`, advancing it past the frame.
///
/// `Ok(None)` if the frame is incomplete (`buf` untouched). `protocol` is the version
/// negotiated by CONNECT; a CONNECT frame is always decoded with its own protocol level.
/// Topics, payloads and binary data are cut from `buf` (`split_to` + `freeze`), zero-copy.
///
/// On an error found in the fixed header `buf` is untouched; on an error in the body the
/// frame has been consumed. Either way the connection is expected to close.
pub fn decode(
    buf: &mut BytesMut,
    protocol: ProtocolVersion,
    max_packet_size: usize,
) -> Result<Option<Packet>> {
    // AUTH only exists in MQTT 5; reject it from the first byte, before waiting for a body.
    if let Some(&first) = buf.first()
        && first >> 4 == kind::AUTH
        && !protocol.is_v5()
    {
        return Err(DecodeError::InvalidPacketType(kind::AUTH));
    }
    let Some(info) = check(buf, max_packet_size)? else {
        return Ok(None);
    };
    if !info.is_complete(buf.len()) {
        return Ok(None);
    }
    let mut frame = buf.split_to(info.frame_len()).freeze();
    frame.advance(info.header_len);
    parse(info, Reader::new(frame), protocol).map(Some)
}

/// Parses one complete frame body. `info` has passed [`check`].
fn parse(info: FrameInfo, r: Reader, protocol: ProtocolVersion) -> Result<Packet> {
    let v5 = protocol.is_v5();
    Ok(match info.packet_type {
        kind::CONNECT => Packet::Connect(Box::new(connect(r)?)),
        kind::CONNACK => Packet::ConnAck(connack(r, protocol)?),
        kind::PUBLISH => Packet::Publish(publish(info.flags, r, v5)?),
        kind::PUBACK => Packet::PubAck(pub_resp(r, v5)?),
        kind::PUBREC => Packet::PubRec(pub_resp(r, v5)?),
        kind::PUBREL => Packet::PubRel(pub_resp(r, v5)?),
        kind::PUBCOMP => Packet::PubComp(pub_resp(r, v5)?),
        kind::SUBSCRIBE => Packet::Subscribe(subscribe(r, v5)?),
        kind::SUBACK => Packet::SubAck(suback(r, v5)?),
        kind::UNSUBSCRIBE => Packet::Unsubscribe(unsubscribe(r, v5)?),
        kind::UNSUBACK => Packet::UnsubAck(unsuback(r, v5)?),
        kind::PINGREQ => {
            r.finish()?;
            Packet::PingReq
        }
        kind::PINGRESP => {
            r.finish()?;
            Packet::PingResp
        }
        kind::DISCONNECT => Packet::Disconnect(disconnect(r, v5)?),
        kind::AUTH if v5 => Packet::Auth(auth(r)?),
        other => return Err(DecodeError::InvalidPacketType(other)),
    })
}

/// A packet identifier that must be non-zero [MQTT-2.2.1-3].
fn packet_id(r: &mut Reader) -> Result<u16> {
    match r.u16()? {
        0 => Err(DecodeError::Protocol("packet identifier 0")),
        id => Ok(id),
    }
}

fn connect(mut r: Reader) -> Result<Connect> {
    // Protocol name and level first, so an unsupported level is reported as such
    // (CONNACK 0x01 / 0x84) whatever follows [MQTT-3.1.2-1] [MQTT-3.1.2-2].
    let name = r.binary()?;
    let level = r.u8()?;
    let mqisdp = match &name[..] {
        b"MQTT" => false,
        b"MQIsdp" => true,
        _ => return Err(DecodeError::InvalidProtocolName),
    };
    let protocol = match level {
        3 => ProtocolVersion::V3_1,
        4 => ProtocolVersion::V3_1_1,
        5 => ProtocolVersion::V5,
        other => return Err(DecodeError::UnsupportedProtocolVersion(other)),
    };
    // "MQIsdp" goes with level 3 only, "MQTT" with 4 and 5 only.
    if mqisdp != (protocol == ProtocolVersion::V3_1) {
        return Err(DecodeError::InvalidProtocolName);
    }
    let v5 = protocol.is_v5();

    let flags = r.u8()?;
    if flags & 0x01 != 0 {
        return Err(DecodeError::Malformed("CONNECT reserved flag set")); // [MQTT-3.1.2-3]
    }
    let clean_start = flags & 0x02 != 0;
    let will_flag = flags & 0x04 != 0;
    let will_qos_bits = (flags >> 3) & 0b11;
    let will_retain = flags & 0x20 != 0;
    let password_flag = flags & 0x40 != 0;
    let username_flag = flags & 0x80 != 0;
    if !will_flag && (will_qos_bits != 0 || will_retain) {
        // [MQTT-3.1.2-11] [MQTT-3.1.2-13]
        return Err(DecodeError::Malformed(
            "Will QoS/Retain set without Will Flag",
        ));
    }
    // [MQTT-3.1.2-12]: Will QoS 3 is malformed.
    let will_qos = QoS::from_u8(will_qos_bits).ok_or(DecodeError::Malformed("Will QoS 3"))?;
    if password_flag && !username_flag && !v5 {
        // 3.1 / 3.1.1 only; MQTT 5 allows a password without a user name.
        return Err(DecodeError::Protocol("password without user name")); // [MQTT-3.1.2-22]
    }

    let keep_alive = r.u16()?;
    let properties = if v5 {
        props::connect(&mut r)?
    } else {
        Default::default()
    };
    let client_id = r.string()?; // [MQTT-3.1.3-4]
    let will = if will_flag {
        let properties = if v5 {
            props::will(&mut r)?
        } else {
            Default::default()
        };
        Some(LastWill {
            topic: r.string()?,
            payload: r.binary()?,
            qos: will_qos,
            retain: will_retain,
            properties,
        })
    } else {
        None
    };
    let username = if username_flag {
        Some(r.string()?)
    } else {
        None
    };
    let password = if password_flag {
        Some(r.binary()?)
    } else {
        None
    };
    r.finish()?;
    Ok(Connect {
        protocol,
        clean_start,
        keep_alive,
        client_id,
        will,
        username,
        password,
        properties,
    })
}

fn connack(mut r: Reader, protocol: ProtocolVersion) -> Result<ConnAck> {
    let flags = r.u8()?;
    // 3.1 has no Session Present bit (the byte is unused); 3.1.1 and 5.0 reserve bits 7-1
    // [MQTT-3.2.2-1].
    let session_present = match protocol {
        ProtocolVersion::V3_1 => false,
        _ if flags & 0xFE != 0 => {
            return Err(DecodeError::Malformed("CONNACK reserved flags set"));
        }
        _ => flags & 0x01 != 0,
    };
    let reason_code = ReasonCode(r.u8()?);
    let properties = if protocol.is_v5() {
        props::connack(&mut r)?
    } else {
        Default::default()
    };
    r.finish()?;
    Ok(ConnAck {
        session_present,
        reason_code,
        properties,
    })
}

fn publish(flags: u8, mut r: Reader, v5: bool) -> Result<Publish> {
    let qos = QoS::from_u8((flags >> 1) & 0b11).ok_or(DecodeError::InvalidQoS)?; // [MQTT-3.3.1-4]
    let topic = r.string()?;
    if topic.bytes().any(|b| b == b'+' || b == b'#') {
        return Err(DecodeError::Protocol("wildcard in topic name")); // [MQTT-3.3.2-2]
    }
    if topic.is_empty() && !v5 {
        // MQTT 5 allows an empty topic with a Topic Alias; the broker checks the alias.
        return Err(DecodeError::Protocol("empty topic name")); // [MQTT-4.7.3-1]
    }
    let packet_id = if qos == QoS::AtMostOnce {
        0
    } else {
        packet_id(&mut r)? // [MQTT-2.2.1-3]
    };
    let properties = if v5 {
        props::publish(&mut r)?
    } else {
        Default::default()
    };
    Ok(Publish {
        dup: flags & 0b1000 != 0,
        qos,
        retain: flags & 0b0001 != 0,
        topic,
        packet_id,
        properties,
        payload: r.rest(),
    })
}

/// PUBACK, PUBREC, PUBREL, PUBCOMP. 3.1.x: exactly the packet id. 5.0: remaining length
/// 2 => Success without properties, 3 => reason code only (spec 3.4.2.1, 3.4.2.2.1).
fn pub_resp(mut r: Reader, v5: bool) -> Result<PubResp> {
    let packet_id = packet_id(&mut r)?;
    let (reason_code, properties) = if !v5 || r.is_empty() {
        (ReasonCode::SUCCESS, Default::default())
    } else {
        let reason = ReasonCode(r.u8()?);
        let properties = if r.is_empty() {
            Default::default()
        } else {
            props::ack(&mut r)?
        };
        (reason, properties)
    };
    r.finish()?;
    Ok(PubResp {
        packet_id,
        reason_code,
        properties,
    })
}

/// One SUBSCRIBE options byte (spec 3.8.3.1).
fn subscription_options(b: u8, v5: bool) -> Result<SubscriptionOptions> {
    let reserved = if v5 { 0b1100_0000 } else { 0b1111_1100 };
    if b & reserved != 0 {
        return Err(DecodeError::Malformed(
            "subscription options reserved bits set",
        )); // [MQTT-3.8.3-5]
    }
    let qos = QoS::from_u8(b & 0b11).ok_or(DecodeError::InvalidQoS)?;
    let retain_handling = match (b >> 4) & 0b11 {
        0 => RetainHandling::SendAtSubscribe,
        1 => RetainHandling::SendIfNew,
        2 => RetainHandling::DoNotSend,
        _ => return Err(DecodeError::Protocol("Retain Handling 3")),
    };
    Ok(SubscriptionOptions {
        qos,
        no_local: b & 0b0100 != 0,
        retain_as_published: b & 0b1000 != 0,
        retain_handling,
    })
}

fn subscribe(mut r: Reader, v5: bool) -> Result<Subscribe> {
    let packet_id = packet_id(&mut r)?; // [MQTT-2.2.1-3]
    let properties = if v5 {
        props::subscribe(&mut r)?
    } else {
        Default::default()
    };
    let mut filters = Vec::new();
    while !r.is_empty() {
        let filter = r.string()?;
        let options = subscription_options(r.u8()?, v5)?;
        filters.push((filter, options));
    }
    if filters.is_empty() {
        return Err(DecodeError::Protocol("SUBSCRIBE without topic filters")); // [MQTT-3.8.3-3]
    }
    Ok(Subscribe {
        packet_id,
        properties,
        filters,
    })
}

fn reason_codes(r: &mut Reader) -> Result<Vec<ReasonCode>> {
    let codes: Vec<ReasonCode> = r.rest().iter().map(|&b| ReasonCode(b)).collect();
    if codes.is_empty() {
        // One per filter, and a SUBSCRIBE/UNSUBSCRIBE has at least one [MQTT-3.9.3-1].
        return Err(DecodeError::Protocol(
            "acknowledgement without reason codes",
        ));
    }
    Ok(codes)
}

fn suback(mut r: Reader, v5: bool) -> Result<SubAck> {
    let packet_id = packet_id(&mut r)?;
    let properties = if v5 {
        props::ack(&mut r)?
    } else {
        Default::default()
    };
    Ok(SubAck {
        packet_id,
        properties,
        reason_codes: reason_codes(&mut r)?,
    })
}

fn unsubscribe(mut r: Reader, v5: bool) -> Result<Unsubscribe> {
    let packet_id = packet_id(&mut r)?; // [MQTT-2.2.1-3]
    let properties = if v5 {
        props::unsubscribe(&mut r)?
    } else {
        Default::default()
    };
    let mut filters = Vec::new();
    while !r.is_empty() {
        filters.push(r.string()?);
    }
    if filters.is_empty() {
        return Err(DecodeError::Protocol("UNSUBSCRIBE without topic filters")); // [MQTT-3.10.3-2]
    }
    Ok(Unsubscribe {
        packet_id,
        properties,
        filters,
    })
}

/// 3.1.x UNSUBACK is exactly the packet id; 5.0 adds properties and one reason per filter.
fn unsuback(mut r: Reader, v5: bool) -> Result<UnsubAck> {
    let packet_id = packet_id(&mut r)?;
    if !v5 {
        r.finish()?;
        return Ok(UnsubAck {
            packet_id,
            ..Default::default()
        });
    }
    let properties = props::ack(&mut r)?;
    Ok(UnsubAck {
        packet_id,
        properties,
        reason_codes: reason_codes(&mut r)?,
    })
}

/// DISCONNECT: empty in 3.1.x. In 5.0 remaining length 0 => Normal disconnection,
/// 1 => reason code only (spec 3.14.2.1, 3.14.2.2.1).
fn disconnect(mut r: Reader, v5: bool) -> Result<Disconnect> {
    let mut d = Disconnect::default();
    if v5 && !r.is_empty() {
        d.reason_code = ReasonCode(r.u8()?);
        if !r.is_empty() {
            d.properties = props::disconnect(&mut r)?;
        }
    }
    r.finish()?;
    Ok(d)
}

/// AUTH (5.0 only): remaining length 0 => Success without properties (spec 3.15.2.1).
fn auth(mut r: Reader) -> Result<Auth> {
    let mut a = Auth::default();
    if !r.is_empty() {
        a.reason_code = ReasonCode(r.u8()?);
        if !r.is_empty() {
            a.properties = props::auth(&mut r)?;
        }
    }
    r.finish()?;
    Ok(a)
}
