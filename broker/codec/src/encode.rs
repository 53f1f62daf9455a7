//! Encoding packets for a given protocol version.
//!
//! Each packet has one `body` function written against [`Sink`]. It runs once into a
//! [`Counter`] (which yields the Remaining Length and rejects over-long fields) and
//! once into the output `BytesMut`, so `encoded_len` and `encode` cannot disagree and
//! `encode` reserves the exact size up front. Nothing is written if encoding fails.
//!
//! Version rules: for 3.1 / 3.1.1 properties and v5-only fields (reason codes on acks,
//! subscription options other than QoS, UNSUBACK reason codes) are omitted; a CONNECT
//! is encoded with its own `protocol` field (3.1 => "MQIsdp"/3). MQTT 5 acks use the
//! short forms the spec allows: PUBACK & co. with Success and no properties are 2 bytes
//! (reason code only if there are no properties), DISCONNECT / AUTH with reason 0x00 and
//! no properties have Remaining Length 0.
//!
//! The encoder trusts its input beyond lengths: it does not re-check the decoder's
//! protocol rules (packet id 0, empty filter lists, ...), so the broker can produce
//! exactly what it means to, and tests can produce invalid packets on purpose.
//!
//! Layout: public entry points, fixed header, one `body` function per packet.

use bytes::BytesMut;

use crate::decode::kind;
use crate::error::EncodeError;
use crate::packet::{
    Auth, ConnAck, Connect, Disconnect, Packet, ProtocolVersion, PubResp, Publish, PublishRef, QoS,
    SubAck, Subscribe, SubscriptionOptions, UnsubAck, Unsubscribe,
};
use crate::primitives::{Counter, MAX_VARINT, Sink, varint_len};
use crate::properties_codec::EncodeProps;
use crate::reason::ReasonCode;

type Result<T> = std::result::Result<T, EncodeError>;

/// Appends `packet`, encoded for `protocol`, to `out`.
///
/// Errors: [`EncodeError::FieldTooLong`] for a string / binary field over 65,535 bytes,
/// [`EncodeError::PacketTooLarge`] for a Remaining Length over 268,435,455 (or a
/// Subscription Identifier over 268,435,455), [`EncodeError::NotInVersion`] for AUTH in
/// 3.1.x. On error nothing is appended.
pub fn encode(packet: &Packet, protocol: ProtocolVersion, out: &mut BytesMut) -> Result<()> {
    write_frame(packet, protocol, out)
}

/// Total size on the wire (fixed header included) — used by the broker to drop a PUBLISH
/// that exceeds the client's Maximum Packet Size [MQTT-3.1.2-25].
pub fn encoded_len(packet: &Packet, protocol: ProtocolVersion) -> Result<usize> {
    frame_len(packet, protocol)
}

/// Hot path for fan-out: encode a PUBLISH without building a [`Packet`].
pub fn encode_publish(
    publish: &Publish,
    protocol: ProtocolVersion,
    out: &mut BytesMut,
) -> Result<()> {
    write_frame(&publish.view(), protocol, out)
}

/// [`encoded_len`] for a PUBLISH without building a [`Packet`].
pub fn publish_encoded_len(publish: &Publish, protocol: ProtocolVersion) -> Result<usize> {
    frame_len(&publish.view(), protocol)
}

/// [`encode_publish`] from borrowed parts: no clone of the topic and payload.
pub fn encode_publish_ref(
    publish: &PublishRef<'_>,
    protocol: ProtocolVersion,
    out: &mut BytesMut,
) -> Result<()> {
    write_frame(publish, protocol, out)
}

/// [`publish_encoded_len`] from borrowed parts.
pub fn publish_ref_encoded_len(
    publish: &PublishRef<'_>,
    protocol: ProtocolVersion,
) -> Result<usize> {
    frame_len(publish, protocol)
}

/// Something that can be framed: the first byte, and a body written through a [`Sink`].
trait Frame {
    fn first_byte(&self, protocol: ProtocolVersion) -> Result<u8>;
    fn body<S: Sink>(&self, protocol: ProtocolVersion, s: &mut S) -> Result<()>;
}

/// Remaining Length of a frame, checked against the varint maximum.
fn remaining_len<F: Frame>(frame: &F, protocol: ProtocolVersion) -> Result<usize> {
    frame.first_byte(protocol)?;
    let mut c = Counter::default();
    frame.body(protocol, &mut c)?;
    if c.len > MAX_VARINT {
        return Err(EncodeError::PacketTooLarge);
    }
    Ok(c.len)
}

fn frame_len<F: Frame>(frame: &F, protocol: ProtocolVersion) -> Result<usize> {
    let rem = remaining_len(frame, protocol)?;
    Ok(1 + varint_len(rem) + rem)
}

/// Length pass, then the write pass into `out`. The write pass cannot fail once the
/// length pass succeeded (same checks, same input), so nothing partial is ever appended.
fn write_frame<F: Frame>(frame: &F, protocol: ProtocolVersion, out: &mut BytesMut) -> Result<()> {
    let rem = remaining_len(frame, protocol)?;
    out.reserve(1 + varint_len(rem) + rem);
    out.u8(frame.first_byte(protocol)?);
    out.varint(rem)?;
    frame.body(protocol, out)
}

impl Frame for Packet {
    fn first_byte(&self, protocol: ProtocolVersion) -> Result<u8> {
        let (kind, flags) = match self {
            Packet::Connect(_) => (kind::CONNECT, 0),
            Packet::ConnAck(_) => (kind::CONNACK, 0),
            Packet::Publish(p) => return p.view().first_byte(protocol),
            Packet::PubAck(_) => (kind::PUBACK, 0),
            Packet::PubRec(_) => (kind::PUBREC, 0),
            Packet::PubRel(_) => (kind::PUBREL, 0b0010), // [MQTT-3.6.1-1]
            Packet::PubComp(_) => (kind::PUBCOMP, 0),
            Packet::Subscribe(_) => (kind::SUBSCRIBE, 0b0010), // [MQTT-3.8.1-1]
            Packet::SubAck(_) => (kind::SUBACK, 0),
            Packet::Unsubscribe(_) => (kind::UNSUBSCRIBE, 0b0010), // [MQTT-3.10.1-1]
            Packet::UnsubAck(_) => (kind::UNSUBACK, 0),
            Packet::PingReq => (kind::PINGREQ, 0),
            Packet::PingResp => (kind::PINGRESP, 0),
            Packet::Disconnect(_) => (kind::DISCONNECT, 0),
            Packet::Auth(_) if protocol.is_v5() => (kind::AUTH, 0),
            Packet::Auth(_) => return Err(EncodeError::NotInVersion("AUTH")),
        };
        Ok(kind << 4 | flags)
    }

    fn body<S: Sink>(&self, protocol: ProtocolVersion, s: &mut S) -> Result<()> {
        let v5 = protocol.is_v5();
        match self {
            Packet::Connect(c) => connect(c, s),
            Packet::ConnAck(c) => connack(c, protocol, s),
            Packet::Publish(p) => p.view().body(protocol, s),
            Packet::PubAck(p) | Packet::PubRec(p) | Packet::PubRel(p) | Packet::PubComp(p) => {
                pub_resp(p, v5, s)
            }
            Packet::Subscribe(p) => subscribe(p, v5, s),
            Packet::SubAck(p) => suback(p, v5, s),
            Packet::Unsubscribe(p) => unsubscribe(p, v5, s),
            Packet::UnsubAck(p) => unsuback(p, v5, s),
            Packet::PingReq | Packet::PingResp => Ok(()),
            Packet::Disconnect(d) => disconnect(d, v5, s),
            Packet::Auth(a) => auth(a, s),
        }
    }
}

impl Frame for PublishRef<'_> {
    fn first_byte(&self, _: ProtocolVersion) -> Result<u8> {
        let dup = if self.dup { 0b1000 } else { 0 };
        let retain = if self.retain { 0b0001 } else { 0 };
        Ok(kind::PUBLISH << 4 | dup | (self.qos as u8) << 1 | retain)
    }

    fn body<S: Sink>(&self, protocol: ProtocolVersion, s: &mut S) -> Result<()> {
        s.string(self.topic)?;
        if self.qos != QoS::AtMostOnce {
            s.u16(self.packet_id);
        }
        if protocol.is_v5() {
            self.properties.write(s)?;
        }
        s.raw(self.payload);
        Ok(())
    }
}

fn connect<S: Sink>(c: &Connect, s: &mut S) -> Result<()> {
    // A CONNECT carries its own version, like on decode.
    let v5 = c.protocol.is_v5();
    s.string(if c.protocol == ProtocolVersion::V3_1 {
        "MQIsdp"
    } else {
        "MQTT"
    })?;
    s.u8(c.protocol.level());
    let mut flags = 0u8;
    if c.clean_start {
        flags |= 0x02;
    }
    if let Some(w) = &c.will {
        flags |= 0x04 | (w.qos as u8) << 3;
        if w.retain {
            flags |= 0x20;
        }
    }
    if c.password.is_some() {
        flags |= 0x40;
    }
    if c.username.is_some() {
        flags |= 0x80;
    }
    s.u8(flags);
    s.u16(c.keep_alive);
    if v5 {
        c.properties.write(s)?;
    }
    s.string(&c.client_id)?;
    if let Some(w) = &c.will {
        if v5 {
            w.properties.write(s)?;
        }
        s.string(&w.topic)?;
        s.binary(&w.payload)?;
    }
    if let Some(u) = &c.username {
        s.string(u)?;
    }
    if let Some(p) = &c.password {
        s.binary(p)?;
    }
    Ok(())
}

fn connack<S: Sink>(c: &ConnAck, protocol: ProtocolVersion, s: &mut S) -> Result<()> {
    // MQTT 3.1 has no Session Present flag.
    let session_present = c.session_present && protocol != ProtocolVersion::V3_1;
    s.u8(u8::from(session_present));
    s.u8(c.reason_code.0);
    if protocol.is_v5() {
        c.properties.write(s)?;
    }
    Ok(())
}

fn pub_resp<S: Sink>(p: &PubResp, v5: bool, s: &mut S) -> Result<()> {
    s.u16(p.packet_id);
    if v5 {
        let props_empty = p.properties.is_empty();
        if p.reason_code != ReasonCode::SUCCESS || !props_empty {
            s.u8(p.reason_code.0);
        }
        if !props_empty {
            p.properties.write(s)?;
        }
    }
    Ok(())
}

fn options_byte(o: &SubscriptionOptions, v5: bool) -> u8 {
    let mut b = o.qos as u8;
    if v5 {
        if o.no_local {
            b |= 0b0100;
        }
        if o.retain_as_published {
            b |= 0b1000;
        }
        b |= (o.retain_handling as u8) << 4;
    }
    b
}

fn subscribe<S: Sink>(p: &Subscribe, v5: bool, s: &mut S) -> Result<()> {
    s.u16(p.packet_id);
    if v5 {
        p.properties.write(s)?;
    }
    for (filter, options) in &p.filters {
        s.string(filter)?;
        s.u8(options_byte(options, v5));
    }
    Ok(())
}

fn suback<S: Sink>(p: &SubAck, v5: bool, s: &mut S) -> Result<()> {
    s.u16(p.packet_id);
    if v5 {
        p.properties.write(s)?;
    }
    for code in &p.reason_codes {
        s.u8(code.0);
    }
    Ok(())
}

fn unsubscribe<S: Sink>(p: &Unsubscribe, v5: bool, s: &mut S) -> Result<()> {
    s.u16(p.packet_id);
    if v5 {
        p.properties.write(s)?;
    }
    for filter in &p.filters {
        s.string(filter)?;
    }
    Ok(())
}

fn unsuback<S: Sink>(p: &UnsubAck, v5: bool, s: &mut S) -> Result<()> {
    s.u16(p.packet_id);
    if v5 {
        p.properties.write(s)?;
        for code in &p.reason_codes {
            s.u8(code.0);
        }
    }
    Ok(())
}

/// Shared by DISCONNECT and AUTH in 5.0: nothing for (0x00, no properties), the reason
/// code alone for (code, no properties), else reason code + properties.
fn reason_and_props<S: Sink, P: EncodeProps>(
    reason: ReasonCode,
    props: &P,
    s: &mut S,
) -> Result<()> {
    let props_empty = props.len()? == 0;
    if reason != ReasonCode::SUCCESS || !props_empty {
        s.u8(reason.0);
    }
    if !props_empty {
        props.write(s)?;
    }
    Ok(())
}

fn disconnect<S: Sink>(d: &Disconnect, v5: bool, s: &mut S) -> Result<()> {
    if v5 {
        reason_and_props(d.reason_code, &d.properties, s)?;
    }
    Ok(())
}

fn auth<S: Sink>(a: &Auth, s: &mut S) -> Result<()> {
    reason_and_props(a.reason_code, &a.properties, s)
}
