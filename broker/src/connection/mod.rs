//! One task per network connection (mini-redis `Handler`).
//!
//! The task owns the socket, its read and write buffers and the per-connection MQTT
//! state (negotiated limits, topic aliases). It waits on four things at once, all
//! cancel-safe: bytes from the socket (`read_buf` keeps partial frames in the buffer),
//! deliveries queued for its session (`Notify`), its keep-alive deadline, and a kick
//! (takeover, shutdown). Everything queued for the socket is written in one
//! `write_all` per wake-up, with `TCP_NODELAY` set, so batches go out without waiting
//! for Nagle (see `reference/benchmarks.md`).
//!
//! # Layout
//! - [`handshake`]: CONNECT rules and the CONNACK.
//! - [`alias`]: topic aliases in both directions.
//! - this file: the read/dispatch/write loop and packet handlers.

pub mod alias;
pub mod handshake;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use ferromq_codec::{
    AckProperties, ByteString, ConnAck, Connect, DecodeError, Disconnect, Packet, ProtocolVersion,
    PubResp, Publish, QoS, ReasonCode, RetainHandling, SubAck, Subscribe, UnsubAck, Unsubscribe,
};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::auth::{Identity, LoginError, Op, Subject};
use crate::broker::{Broker, PendingWill, PublishRefused};
use crate::limits::PublishThrottle;
use crate::message::Message;
use crate::session::state::{IncomingQos2, Outgoing};
use crate::session::{Link, Session};
use crate::stats::Stats;
use alias::{AliasError, InboundAliases, OutboundAliases, OutboundTopic};
use handshake::Accepted;

/// Initial read buffer; grows up to the maximum packet size for large packets.
const READ_BUFFER: usize = 4 * 1024;
/// Read buffer until the CONNECT arrived: most CONNECTs are far smaller, and a socket
/// that sends nothing (10,000 of them, in the abuse tests) should cost little. A larger
/// CONNECT grows it to its size (bounded by the maximum packet size).
const CONNECT_BUFFER: usize = 256;
/// A write buffer that grew beyond this is released when the connection goes idle.
const WRITE_BUFFER_KEEP: usize = 64 * 1024;
/// How long a connection we close with a DISCONNECT keeps draining the client's input.
const LINGER: Duration = Duration::from_secs(1);
/// Most packets encoded per wake-up before the batch is written.
const MAX_BATCH: usize = 1024;
/// Most message bytes (by `Message::weight`) moved from the session queue into the
/// write buffer per wake-up: with large messages, `MAX_BATCH` alone would let the
/// write buffer of a client that reads nothing hold up to 1024 × the packet size.
const MAX_BATCH_BYTES: usize = 256 * 1024;

/// Why a connection ended; decides the will and the log line.
#[derive(Debug)]
enum Close {
    /// DISCONNECT from the client; `keep_will` for v5 reason 0x04.
    ClientDisconnect { keep_will: bool },
    /// The socket closed or failed without DISCONNECT.
    Network(String),
    /// Keep alive expired [MQTT-3.1.2-24].
    KeepAlive,
    /// We detected a protocol violation: v5 gets DISCONNECT with `reason`.
    Protocol { reason: ReasonCode, problem: String },
    /// Takeover or administrative kick: v5 gets DISCONNECT with the link's reason.
    Kicked(ReasonCode),
    /// The broker is shutting down: v5 gets DISCONNECT 0x8B.
    Shutdown,
}

impl Close {
    fn protocol(reason: ReasonCode, problem: impl Into<String>) -> Close {
        Close::Protocol {
            reason,
            problem: problem.into(),
        }
    }
}

impl From<DecodeError> for Close {
    fn from(e: DecodeError) -> Close {
        Close::protocol(e.reason_code(), e.to_string())
    }
}

/// Serves one accepted socket until it closes.
pub async fn serve<S>(mut stream: S, peer: SocketAddr, broker: Broker)
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let mut rbuf = BytesMut::with_capacity(CONNECT_BUFFER);
    let connect = match read_connect(&mut stream, &mut rbuf, peer, &broker).await {
        Some(c) => c,
        None => return,
    };
    let cfg = broker.mqtt().clone();
    let anonymous_allowed = cfg.allow_anonymous;
    let identity = match login(&broker, &connect, peer, anonymous_allowed) {
        Ok(identity) => identity,
        Err(code) => {
            let ack = ConnAck {
                reason_code: code,
                ..Default::default()
            };
            send_refusal(&mut stream, connect.protocol, ack).await;
            return;
        }
    };
    let accepted = match handshake::accept(&connect, &cfg, &identity, broker.security()) {
        Ok(a) => a,
        Err(refused) => {
            tracing::info!(client_id = %connect.client_id, addr = %peer, reason = %refused.0, "connection refused");
            let ack = handshake::refusal(connect.protocol, refused);
            send_refusal(&mut stream, connect.protocol, ack).await;
            return;
        }
    };
    let opened = broker
        .open_session(
            accepted.client_id.clone(),
            accepted.clean_start,
            accepted.session_expiry,
        )
        .await;
    // Read ACL checks of deliveries to this session use the latest login's username.
    opened.session.lock().username = identity.username.clone();
    let ack = handshake::connack(&accepted, &connect, &cfg, opened.session_present);
    let will = handshake::pending_will(&connect, opened.session.id);
    tracing::info!(
        client_id = %accepted.client_id,
        addr = %peer,
        protocol = ?connect.protocol,
        clean_start = accepted.clean_start,
        keep_alive = accepted.keep_alive,
        session_present = opened.session_present,
        "client connected"
    );
    broker.stats().client_connected();

    let mut conn = Connection {
        broker: broker.clone(),
        peer,
        protocol: connect.protocol,
        session: opened.session.clone(),
        link: opened.link.clone(),
        session_expiry: accepted.session_expiry,
        window: usize::from(
            accepted
                .client_receive_maximum
                .min(cfg.max_inflight_messages),
        )
        .max(1),
        inbound_aliases: InboundAliases::new(cfg.topic_alias_maximum),
        outbound_aliases: OutboundAliases::new(accepted.client_topic_alias_maximum),
        wbuf: BytesMut::new(),
        accepted,
        cfg,
        identity,
        throttle: PublishThrottle::new(&broker.config().limits, Instant::now()),
        quota_logged: false,
    };
    conn.encode(&Packet::ConnAck(ack));
    // Resend what was in flight when the session was last connected, then whatever
    // queued while it was offline [MQTT-4.4.0-1].
    let resend = conn.session.lock().delivery.resume(Instant::now());
    for out in resend {
        conn.encode_outgoing(out);
    }

    let close = conn.run(&mut stream, rbuf).await;
    conn.finish(&mut stream, close, will).await;
    broker.stats().client_disconnected();
}

/// Authenticates a CONNECT ([`crate::auth::Security::login`]); on failure, counts and
/// logs it (naming the address and username, never the password) and returns the
/// CONNACK code that refuses it: 0x86 / 0x87 / 0x9F for v5, 0x05 for 3.1.x, as
/// Mosquitto answers.
fn login(
    broker: &Broker,
    connect: &Connect,
    peer: SocketAddr,
    anonymous_allowed: bool,
) -> Result<Identity, ReasonCode> {
    let username = connect.username.as_deref();
    match broker.security().login(
        peer.ip(),
        username,
        connect.password.as_deref(),
        anonymous_allowed,
    ) {
        Ok(identity) => Ok(identity),
        Err(e) => {
            let stats = broker.stats();
            if e == LoginError::Blocked {
                Stats::add(&stats.auth_blocked, 1);
                tracing::info!(addr = %peer, client_id = %connect.client_id, username = ?username, "connection refused: too many failed logins from this address");
            } else {
                Stats::add(&stats.auth_failures, 1);
                tracing::warn!(addr = %peer, client_id = %connect.client_id, username = ?username, reason = ?e, "connection refused: login failed");
            }
            Err(if connect.protocol.is_v5() {
                e.reason_code()
            } else {
                e.v3_return_code()
            })
        }
    }
}

/// Writes a refusing CONNACK (best effort: the socket closes right after).
async fn send_refusal<S>(stream: &mut S, protocol: ProtocolVersion, ack: ConnAck)
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let mut out = BytesMut::new();
    if ferromq_codec::encode(&Packet::ConnAck(ack), protocol, &mut out).is_ok() {
        let _ = tokio::time::timeout(LINGER, async {
            let _ = stream.write_all(&out).await;
            let _ = stream.flush().await;
        })
        .await;
    }
}

/// Reads the first packet, which must be a CONNECT [MQTT-3.1.0-1], within the connect
/// timeout. Answers an unsupported protocol level with CONNACK 0x01 / 0x84
/// [MQTT-3.1.2-2] and logs every refusal with the peer address.
async fn read_connect<S>(
    stream: &mut S,
    rbuf: &mut BytesMut,
    peer: SocketAddr,
    broker: &Broker,
) -> Option<Box<Connect>>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let max = broker.mqtt().max_packet_size as usize;
    let deadline = tokio::time::Instant::now() + broker.mqtt().connect_timeout;
    loop {
        if looks_like_http(rbuf) {
            tracing::warn!(addr = %peer, "closing connection: HTTP request on an MQTT port (first packet is not CONNECT) [MQTT-3.1.0-1]");
            return None;
        }
        // Judge the packet type from the fixed header alone, before parsing a body
        // whose format depends on a protocol version not negotiated yet.
        if let Ok(Some(info)) = ferromq_codec::check(rbuf, max) {
            if info.packet_type != 1 {
                tracing::warn!(addr = %peer, packet_type = info.packet_type, "closing connection: first packet is not CONNECT [MQTT-3.1.0-1]");
                return None;
            }
            rbuf.reserve(info.frame_len().saturating_sub(rbuf.len()));
        }
        match ferromq_codec::decode(rbuf, ProtocolVersion::V5, max) {
            Ok(Some(Packet::Connect(c))) => {
                Stats::add(&broker.stats().packets_received, 1);
                return Some(c);
            }
            Ok(Some(other)) => {
                tracing::warn!(addr = %peer, packet = other.name(), "closing connection: first packet is not CONNECT");
                return None;
            }
            Ok(None) => {}
            Err(DecodeError::UnsupportedProtocolVersion(level)) => {
                tracing::warn!(addr = %peer, level, "closing connection: unsupported protocol level");
                // A future version probably reads a v5 CONNACK; older ones read 3.1.1.
                let (version, code) = if level > 5 {
                    (
                        ProtocolVersion::V5,
                        ReasonCode::UNSUPPORTED_PROTOCOL_VERSION,
                    )
                } else {
                    (
                        ProtocolVersion::V3_1_1,
                        ReasonCode::V3_UNACCEPTABLE_PROTOCOL_VERSION,
                    )
                };
                let ack = ferromq_codec::ConnAck {
                    reason_code: code,
                    ..Default::default()
                };
                let mut out = BytesMut::new();
                if ferromq_codec::encode(&Packet::ConnAck(ack), version, &mut out).is_ok() {
                    let _ = stream.write_all(&out).await;
                }
                return None;
            }
            Err(e) => {
                tracing::warn!(addr = %peer, error = %e, "closing connection: bad CONNECT");
                return None;
            }
        }
        let read = tokio::select! {
            r = stream.read_buf(rbuf) => r,
            _ = tokio::time::sleep_until(deadline) => {
                tracing::info!(addr = %peer, "closing connection: no CONNECT within the connect timeout");
                return None;
            }
            _ = broker.shutdown_token().cancelled() => return None,
        };
        match read {
            Ok(0) if rbuf.is_empty() => return None,
            Ok(0) => {
                tracing::info!(addr = %peer, bytes = rbuf.len(), "closing connection: closed by peer mid-packet (truncated CONNECT)");
                return None;
            }
            Err(e) => {
                tracing::info!(addr = %peer, error = %e, "closing connection: read failed before CONNECT");
                return None;
            }
            Ok(n) => Stats::add(&broker.stats().bytes_received, n as u64),
        }
    }
}

/// Whether the first bytes of a connection are an HTTP request line (a browser, a
/// health check or a WebSocket client pointed at a plain MQTT port), so the log can
/// say so. No CONNECT starts like this: `G`, `P`, `H`, ... are not packet type 1.
fn looks_like_http(buf: &[u8]) -> bool {
    const METHODS: [&[u8]; 9] = [
        b"GET ",
        b"POST ",
        b"HEAD ",
        b"PUT ",
        b"DELETE ",
        b"OPTIONS ",
        b"PATCH ",
        b"CONNECT ",
        b"TRACE ",
    ];
    METHODS.iter().any(|m| buf.starts_with(m))
}

struct Connection {
    broker: Broker,
    peer: SocketAddr,
    protocol: ProtocolVersion,
    session: Arc<Session>,
    link: Link,
    accepted: Accepted,
    cfg: ferromq_config::MqttConfig,
    /// Current Session Expiry Interval (a v5 DISCONNECT may change it).
    session_expiry: u32,
    /// Outbound in-flight window: min(client Receive Maximum, max_inflight_messages).
    window: usize,
    inbound_aliases: InboundAliases,
    outbound_aliases: OutboundAliases,
    wbuf: BytesMut,
    /// Who logged in, for ACL checks.
    identity: Identity,
    /// `limits.publish_rate_*`: while in debt, the socket is not read.
    throttle: PublishThrottle,
    /// The subscription quota refusal was logged for this connection.
    quota_logged: bool,
}

impl Connection {
    fn v5(&self) -> bool {
        self.protocol.is_v5()
    }

    /// This client, for ACL checks.
    fn subject(&self) -> Subject<'_> {
        Subject {
            username: self.identity.username.as_deref(),
            client_id: &self.session.client_id,
        }
    }

    async fn run<S>(&mut self, stream: &mut S, mut rbuf: BytesMut) -> Close
    where
        S: AsyncRead + AsyncWrite + Unpin,
    {
        // From the small CONNECT buffer to the connection's working size.
        rbuf.reserve(READ_BUFFER.saturating_sub(rbuf.capacity()));
        let keep_alive = (self.accepted.keep_alive > 0)
            .then(|| Duration::from_millis(u64::from(self.accepted.keep_alive) * 1500));
        let far = Duration::from_secs(86_400 * 365);
        let mut deadline = tokio::time::Instant::now() + keep_alive.unwrap_or(far);
        let mut was_paused = false;
        let max_in = self.cfg.max_packet_size as usize;
        // Anything that arrived together with the CONNECT.
        if !rbuf.is_empty()
            && let Err(close) = self.process_input(&mut rbuf, max_in)
        {
            return close;
        }
        loop {
            self.drain_session();
            if !self.wbuf.is_empty() {
                let written = tokio::select! {
                    r = stream.write_all(&self.wbuf) => r,
                    _ = self.link.kick.cancelled() => return Close::Kicked(self.link.kick_reason()),
                    _ = self.broker.shutdown_token().cancelled() => return Close::Shutdown,
                };
                if let Err(e) = written {
                    return Close::Network(e.to_string());
                }
                Stats::add(&self.broker.stats().bytes_sent, self.wbuf.len() as u64);
                self.wbuf.clear();
                if self.wbuf.capacity() > WRITE_BUFFER_KEEP {
                    self.wbuf = BytesMut::new();
                }
            }
            // Publish rate limit: while in debt, do not read the socket (TCP flow control
            // then slows the client down); deliveries to it go on.
            let pause = if self.throttle.is_active() {
                self.throttle.pause(Instant::now())
            } else {
                Duration::ZERO
            };
            let paused = !pause.is_zero();
            if paused && !was_paused {
                Stats::add(&self.broker.stats().publish_throttled, 1);
                tracing::debug!(client_id = %self.session.client_id, pause_ms = pause.as_millis() as u64, "publish rate limit: pausing reads");
            }
            was_paused = paused;
            tokio::select! {
                biased;
                _ = self.link.kick.cancelled() => return Close::Kicked(self.link.kick_reason()),
                _ = self.broker.shutdown_token().cancelled() => return Close::Shutdown,
                _ = tokio::time::sleep(pause), if paused => {
                    // The client's PINGREQs waited unread in the socket: its keep alive
                    // starts again now.
                    deadline = deadline.max(tokio::time::Instant::now() + keep_alive.unwrap_or(far));
                }
                read = stream.read_buf(&mut rbuf), if !paused => match read {
                    Ok(0) if rbuf.is_empty() => return Close::Network("connection closed by peer".into()),
                    Ok(0) => return Close::Network(format!("connection closed by peer mid-packet ({} bytes of a truncated packet unread)", rbuf.len())),
                    Ok(n) => {
                        Stats::add(&self.broker.stats().bytes_received, n as u64);
                        let before = self.broker.stats().packets_received.load(std::sync::atomic::Ordering::Relaxed);
                        if let Err(close) = self.process_input(&mut rbuf, max_in) {
                            return close;
                        }
                        let after = self.broker.stats().packets_received.load(std::sync::atomic::Ordering::Relaxed);
                        if after != before {
                            deadline = tokio::time::Instant::now() + keep_alive.unwrap_or(far);
                        }
                        if rbuf.is_empty() && rbuf.capacity() > READ_BUFFER * 16 {
                            rbuf = BytesMut::with_capacity(READ_BUFFER);
                        }
                    }
                    Err(e) => return Close::Network(e.to_string()),
                },
                _ = self.session.wait_for_work() => {}
                _ = tokio::time::sleep_until(deadline), if !paused => return Close::KeepAlive,
            }
        }
    }

    /// Decodes and handles every complete packet in the buffer.
    fn process_input(&mut self, rbuf: &mut BytesMut, max_in: usize) -> Result<(), Close> {
        loop {
            match ferromq_codec::decode(rbuf, self.protocol, max_in)? {
                Some(packet) => {
                    Stats::add(&self.broker.stats().packets_received, 1);
                    self.handle(packet)?;
                }
                None => {
                    // Room for the rest of a large packet, bounded by the maximum
                    // packet size that `check` already enforced.
                    if let Ok(Some(info)) = ferromq_codec::check(rbuf, max_in) {
                        rbuf.reserve(info.frame_len().saturating_sub(rbuf.len()));
                    }
                    return Ok(());
                }
            }
        }
    }

    fn handle(&mut self, packet: Packet) -> Result<(), Close> {
        match packet {
            Packet::Publish(p) => self.on_publish(p),
            Packet::PubAck(ack) => {
                if self.session.lock().delivery.on_puback(ack.packet_id) {
                    Ok(())
                } else {
                    tracing::debug!(client_id = %self.session.client_id, packet_id = ack.packet_id, "PUBACK for unknown packet id");
                    Ok(())
                }
            }
            Packet::PubRec(rec) => {
                let send_rel = self
                    .session
                    .lock()
                    .delivery
                    .on_pubrec(rec.packet_id, rec.reason_code.is_success());
                if send_rel {
                    self.encode(&Packet::PubRel(PubResp {
                        packet_id: rec.packet_id,
                        ..Default::default()
                    }));
                } else if rec.reason_code.is_success() {
                    // [MQTT-4.3.3-?] unknown id: answer so the client can clean up.
                    self.encode(&Packet::PubRel(PubResp {
                        packet_id: rec.packet_id,
                        reason_code: ReasonCode::PACKET_IDENTIFIER_NOT_FOUND,
                        ..Default::default()
                    }));
                }
                Ok(())
            }
            Packet::PubComp(comp) => {
                self.session.lock().delivery.on_pubcomp(comp.packet_id);
                Ok(())
            }
            Packet::PubRel(rel) => {
                let known = self.session.lock().delivery.on_pubrel(rel.packet_id);
                // Unknown id: v5 says so with 0x92 [MQTT-3.7.2-1]; 3.1.1 just completes.
                let reason = if known || !self.v5() {
                    ReasonCode::SUCCESS
                } else {
                    ReasonCode::PACKET_IDENTIFIER_NOT_FOUND
                };
                self.encode(&Packet::PubComp(PubResp {
                    packet_id: rel.packet_id,
                    reason_code: reason,
                    ..Default::default()
                }));
                Ok(())
            }
            Packet::Subscribe(s) => self.on_subscribe(s),
            Packet::Unsubscribe(u) => self.on_unsubscribe(u),
            Packet::PingReq => {
                self.encode(&Packet::PingResp);
                Ok(())
            }
            Packet::Disconnect(d) => self.on_disconnect(d),
            Packet::Connect(_) => Err(Close::protocol(
                ReasonCode::PROTOCOL_ERROR,
                "second CONNECT on a connection [MQTT-3.1.0-2]",
            )),
            Packet::Auth(_) => Err(Close::protocol(
                ReasonCode::PROTOCOL_ERROR,
                "AUTH without an authentication method [MQTT-4.12.0-1]",
            )),
            other => Err(Close::protocol(
                ReasonCode::PROTOCOL_ERROR,
                format!("{} is a server-to-client packet", other.name()),
            )),
        }
    }

    fn on_publish(&mut self, p: Publish) -> Result<(), Close> {
        Stats::add(&self.broker.stats().publish_received, 1);
        Stats::add(
            &self.broker.stats().publish_bytes_received,
            p.payload.len() as u64,
        );
        let topic = if self.v5() {
            match self
                .inbound_aliases
                .resolve(&p.topic, p.properties.topic_alias)
            {
                Ok(t) => t,
                Err(AliasError::Invalid) => {
                    return Err(Close::protocol(
                        ReasonCode::TOPIC_ALIAS_INVALID,
                        format!(
                            "topic alias {:?} is 0 or above the maximum [MQTT-3.3.2-8]",
                            p.properties.topic_alias
                        ),
                    ));
                }
                Err(AliasError::Unknown) => {
                    return Err(Close::protocol(
                        ReasonCode::PROTOCOL_ERROR,
                        "unknown topic alias",
                    ));
                }
                Err(AliasError::MissingTopic) => {
                    return Err(Close::protocol(
                        ReasonCode::PROTOCOL_ERROR,
                        "empty topic without a topic alias",
                    ));
                }
            }
        } else {
            p.topic.clone()
        };
        if let Err(e) = ferromq_topic::validate_topic_name(&topic) {
            return Err(Close::protocol(
                ReasonCode::TOPIC_NAME_INVALID,
                format!("invalid topic name: {e}"),
            ));
        }
        if ferromq_topic::level_count(&topic) > self.cfg.max_topic_levels {
            return Err(Close::protocol(
                ReasonCode::TOPIC_NAME_INVALID,
                "too many topic levels",
            ));
        }
        if topic.len() > self.cfg.max_topic_length {
            return Err(Close::protocol(
                ReasonCode::TOPIC_NAME_INVALID,
                format!(
                    "topic name of {} bytes is longer than mqtt.max_topic_length",
                    topic.len()
                ),
            ));
        }
        if self.throttle.is_active() {
            self.throttle.charge(p.payload.len(), Instant::now());
        }
        if !p.properties.subscription_identifiers.is_empty() {
            return Err(Close::protocol(
                ReasonCode::PROTOCOL_ERROR,
                "PUBLISH from a client carries a Subscription Identifier [MQTT-3.3.4-6]",
            ));
        }
        if p.qos as u8 > self.cfg.max_qos {
            return Err(Close::protocol(
                ReasonCode::QOS_NOT_SUPPORTED,
                "QoS above the server's Maximum QoS [MQTT-3.2.2-11]",
            ));
        }
        if p.retain && !self.cfg.retain_available {
            return Err(Close::protocol(
                ReasonCode::RETAIN_NOT_SUPPORTED,
                "retain is not available [MQTT-3.2.2-14]",
            ));
        }
        let too_big = self
            .cfg
            .max_payload_size
            .is_some_and(|max| p.payload.len() > max as usize);

        // Publish ACL: v5 learns it from PUBACK / PUBREC 0x87 (the QoS 2 flow ends
        // there [MQTT-4.3.3-?]); 3.1.1 cannot be told, so the message is acknowledged
        // and dropped, as Mosquitto does. Nothing is stored or routed either way.
        if !self.broker.security().can_publish(self.subject(), &topic) {
            Stats::add(&self.broker.stats().acl_publish_denied, 1);
            tracing::debug!(client_id = %self.session.client_id, topic = %topic, "PUBLISH denied by the ACL");
            let reason = if self.v5() {
                ReasonCode::NOT_AUTHORIZED
            } else {
                ReasonCode::SUCCESS
            };
            self.ack_publish(p.qos, p.packet_id, reason);
            return Ok(());
        }

        let route = match p.qos {
            QoS::AtMostOnce | QoS::AtLeastOnce => !too_big,
            QoS::ExactlyOnce => {
                let outcome = self
                    .session
                    .lock()
                    .delivery
                    .on_incoming_qos2(p.packet_id, self.cfg.receive_maximum);
                match outcome {
                    IncomingQos2::New => !too_big,
                    IncomingQos2::Duplicate => false,
                    IncomingQos2::ReceiveMaximumExceeded => {
                        return Err(Close::protocol(
                            ReasonCode::RECEIVE_MAXIMUM_EXCEEDED,
                            "more unacknowledged QoS 2 PUBLISHes than the Receive Maximum [MQTT-3.3.4-9]",
                        ));
                    }
                }
            }
        };
        let (qos, packet_id) = (p.qos, p.packet_id);
        let mut matched = 1;
        let mut refused = None;
        if route {
            let message = Message::new(
                topic,
                p.payload,
                p.qos,
                p.retain,
                p.properties,
                Some(self.session.id),
            );
            match self.broker.try_publish(message) {
                Ok(n) => matched = n,
                // `limits.retained_max_bytes`: neither stored nor routed (the broker
                // logged it); v5 learns it from 0x97, 3.1.1 cannot be told.
                Err(PublishRefused::RetainedBudget) => refused = Some(ReasonCode::QUOTA_EXCEEDED),
            }
        } else if too_big {
            tracing::info!(client_id = %self.session.client_id, "PUBLISH payload above message_size_limit dropped");
        }
        let reason = match refused {
            _ if too_big => ReasonCode::PACKET_TOO_LARGE,
            Some(code) if self.v5() => code,
            Some(_) => ReasonCode::SUCCESS,
            None if matched == 0 => ReasonCode::NO_MATCHING_SUBSCRIBERS,
            None => ReasonCode::SUCCESS,
        };
        if qos == QoS::ExactlyOnce && !reason.is_success() {
            // An error PUBREC ends the flow: forget the id [MQTT-4.3.3-?].
            self.session.lock().delivery.on_pubrel(packet_id);
        }
        self.ack_publish(qos, packet_id, reason);
        Ok(())
    }

    /// PUBACK (QoS 1) or PUBREC (QoS 2) with `reason`; nothing for QoS 0.
    fn ack_publish(&mut self, qos: QoS, packet_id: u16, reason: ReasonCode) {
        let resp = PubResp {
            packet_id,
            reason_code: reason,
            ..Default::default()
        };
        match qos {
            QoS::AtMostOnce => {}
            QoS::AtLeastOnce => self.encode(&Packet::PubAck(resp)),
            QoS::ExactlyOnce => self.encode(&Packet::PubRec(resp)),
        }
    }

    fn on_subscribe(&mut self, s: Subscribe) -> Result<(), Close> {
        let identifier = s.properties.subscription_identifier;
        let mut codes = Vec::with_capacity(s.filters.len());
        let mut retained = Vec::new();
        let acl = self.broker.security().acl();
        let max_subscriptions = self.broker.config().limits.max_subscriptions_per_client;
        for (filter, options) in &s.filters {
            let (group, bare) = match ferromq_topic::parse_shared(filter) {
                Ok(Some(sh)) => (Some(sh.group), sh.filter),
                Ok(None) => (None, &filter[..]),
                Err(_) => {
                    codes.push(self.subscribe_failure(ReasonCode::TOPIC_FILTER_INVALID));
                    continue;
                }
            };
            if ferromq_topic::validate_topic_filter(bare).is_err()
                || ferromq_topic::level_count(bare) > self.cfg.max_topic_levels
                || filter.len() > self.cfg.max_topic_length
            {
                codes.push(self.subscribe_failure(ReasonCode::TOPIC_FILTER_INVALID));
                continue;
            }
            if group.is_some() && options.no_local {
                return Err(Close::protocol(
                    ReasonCode::PROTOCOL_ERROR,
                    "No Local on a shared subscription [MQTT-3.8.3-4]",
                ));
            }
            if let Some(acl) = &acl
                && !acl.check_subscribe(self.subject(), bare)
            {
                Stats::add(&self.broker.stats().acl_subscribe_denied, 1);
                tracing::debug!(client_id = %self.session.client_id, filter = %filter, "SUBSCRIBE denied by the ACL");
                let code = self.broker.security().subscribe_failure_code();
                codes.push(self.subscribe_failure(code));
                continue;
            }
            // `limits.max_subscriptions_per_client`: a new filter beyond it is refused
            // (0x97 Quota exceeded; 3.1.1 0x80); replacing an existing one is not new.
            let over_quota = {
                let inner = self.session.lock();
                inner.subscriptions.len() >= max_subscriptions
                    && !inner.subscriptions.contains_key(filter)
            };
            if over_quota {
                if !self.quota_logged {
                    // Once per connection: a client looping on SUBSCRIBE must not
                    // flood the log.
                    self.quota_logged = true;
                    tracing::warn!(client_id = %self.session.client_id, addr = %self.peer, limit = max_subscriptions, "SUBSCRIBE refused: limits.max_subscriptions_per_client reached");
                }
                Stats::add(&self.broker.stats().subscription_quota_exceeded, 1);
                codes.push(self.subscribe_failure(ReasonCode::QUOTA_EXCEEDED));
                continue;
            }
            let mut granted_options = *options;
            granted_options.qos = handshake::granted_qos(options.qos, self.cfg.max_qos);
            let existed = self
                .broker
                .subscribe(&self.session, filter, granted_options, identifier);
            // Retained messages on subscribe, per Retain Handling [MQTT-3.3.1-9]
            // [MQTT-3.3.1-10] [MQTT-3.3.1-11]; never for shared subscriptions.
            let send_retained = group.is_none()
                && match options.retain_handling {
                    RetainHandling::SendAtSubscribe => true,
                    RetainHandling::SendIfNew => !existed,
                    RetainHandling::DoNotSend => false,
                };
            if send_retained {
                let mut matches =
                    self.broker
                        .retained_deliveries(bare, granted_options.qos, identifier);
                // Each retained message is checked for `read`, like a live delivery.
                if let Some(acl) = &acl {
                    let subject = self.subject();
                    let before = matches.len();
                    matches.retain(|d| acl.check(subject, &d.message.topic, Op::Read));
                    let denied = (before - matches.len()) as u64;
                    Stats::add(&self.broker.stats().acl_read_denied, denied);
                }
                retained.extend(matches);
            }
            codes.push(ReasonCode(granted_options.qos as u8));
        }
        self.encode(&Packet::SubAck(SubAck {
            packet_id: s.packet_id,
            properties: AckProperties::default(),
            reason_codes: codes,
        }));
        for delivery in retained {
            if self.session.deliver(delivery).is_err() {
                Stats::add(&self.broker.stats().dropped_queue_full, 1);
            }
        }
        Ok(())
    }

    fn subscribe_failure(&self, v5_code: ReasonCode) -> ReasonCode {
        if self.v5() {
            v5_code
        } else {
            ReasonCode::V3_SUBACK_FAILURE
        }
    }

    fn on_unsubscribe(&mut self, u: Unsubscribe) -> Result<(), Close> {
        let mut codes = Vec::with_capacity(u.filters.len());
        for filter in &u.filters {
            let existed = self.broker.unsubscribe(&self.session, filter);
            codes.push(if existed {
                ReasonCode::SUCCESS
            } else {
                ReasonCode::NO_SUBSCRIPTION_EXISTED
            });
        }
        self.encode(&Packet::UnsubAck(UnsubAck {
            packet_id: u.packet_id,
            properties: AckProperties::default(),
            reason_codes: codes,
        }));
        Ok(())
    }

    fn on_disconnect(&mut self, d: Disconnect) -> Result<(), Close> {
        if let Some(expiry) = d.properties.session_expiry_interval {
            // Setting a non-zero expiry when the CONNECT had zero is a protocol error
            // [MQTT-3.14.2-2].
            if self.session_expiry == 0 && expiry != 0 {
                return Err(Close::protocol(
                    ReasonCode::PROTOCOL_ERROR,
                    "DISCONNECT sets a Session Expiry Interval after CONNECT had 0 [MQTT-3.14.2-2]",
                ));
            }
            self.session_expiry = expiry.min(self.cfg.max_session_expiry_interval);
        }
        Err(Close::ClientDisconnect {
            keep_will: d.reason_code == ReasonCode::DISCONNECT_WITH_WILL,
        })
    }

    /// Moves deliveries from the session queue into the write buffer, within the
    /// in-flight window.
    fn drain_session(&mut self) {
        let now = Instant::now();
        let mut batch = Vec::new();
        let mut bytes = 0;
        {
            let mut inner = self.session.lock();
            while batch.len() < MAX_BATCH && bytes < MAX_BATCH_BYTES {
                match inner.delivery.next_outgoing(self.window, now) {
                    Some(out) => {
                        if let Outgoing::Publish { delivery, .. } = &out {
                            bytes += delivery.message.weight();
                        }
                        batch.push(out);
                    }
                    None => break,
                }
            }
            let (_, expired) = inner.delivery.take_dropped();
            if expired > 0 {
                Stats::add(&self.broker.stats().dropped_expired, expired);
            }
        }
        if batch.len() == MAX_BATCH || bytes >= MAX_BATCH_BYTES {
            // More may be waiting: come back after this batch is written.
            self.session.wake();
        }
        for out in batch {
            self.encode_outgoing(out);
        }
    }

    fn encode_outgoing(&mut self, out: Outgoing) {
        match out {
            Outgoing::PubRel { packet_id } => self.encode(&Packet::PubRel(PubResp {
                packet_id,
                ..Default::default()
            })),
            Outgoing::Publish {
                packet_id,
                dup,
                delivery,
            } => {
                let msg = &delivery.message;
                let mut publish = Publish {
                    dup,
                    qos: delivery.qos,
                    retain: delivery.retain,
                    topic: msg.topic.clone(),
                    packet_id,
                    properties: Default::default(),
                    payload: msg.payload.clone(),
                };
                if self.v5() {
                    publish.properties = msg.properties.clone();
                    publish.properties.subscription_identifiers = delivery.subscription_ids;
                    publish.properties.message_expiry_interval =
                        msg.remaining_expiry(Instant::now());
                }
                // [MQTT-3.1.2-25] a packet above the client's Maximum Packet Size is
                // discarded as if sent.
                if let Some(max) = self.accepted.client_max_packet_size {
                    let len = ferromq_codec::publish_encoded_len(&publish, self.protocol)
                        .unwrap_or(usize::MAX);
                    if len > max as usize {
                        Stats::add(&self.broker.stats().dropped_too_large, 1);
                        if packet_id != 0 {
                            self.session.lock().delivery.forget(packet_id);
                        }
                        return;
                    }
                }
                if self.v5() && !dup {
                    match self.outbound_aliases.lookup(&publish.topic) {
                        OutboundTopic::Plain => {}
                        OutboundTopic::Assign(a) => publish.properties.topic_alias = Some(a),
                        OutboundTopic::Reuse(a) => {
                            publish.properties.topic_alias = Some(a);
                            publish.topic = ByteString::new();
                        }
                    }
                }
                Stats::add(&self.broker.stats().publish_sent, 1);
                Stats::add(
                    &self.broker.stats().publish_bytes_sent,
                    publish.payload.len() as u64,
                );
                Stats::add(&self.broker.stats().packets_sent, 1);
                if let Err(e) =
                    ferromq_codec::encode_publish(&publish, self.protocol, &mut self.wbuf)
                {
                    tracing::warn!(client_id = %self.session.client_id, error = %e, "cannot encode PUBLISH");
                }
            }
        }
    }

    fn encode(&mut self, packet: &Packet) {
        Stats::add(&self.broker.stats().packets_sent, 1);
        if let Err(e) = ferromq_codec::encode(packet, self.protocol, &mut self.wbuf) {
            tracing::warn!(client_id = %self.session.client_id, error = %e, packet = packet.name(), "cannot encode packet");
        }
    }

    /// Sends the closing DISCONNECT where one is due, flushes, detaches the session and
    /// decides the will.
    async fn finish<S>(&mut self, stream: &mut S, close: Close, will: Option<PendingWill>)
    where
        S: AsyncRead + AsyncWrite + Unpin,
    {
        let client_id = self.session.client_id.clone();
        let disconnect_reason = match &close {
            Close::Protocol { reason, problem } => {
                Stats::add(&self.broker.stats().protocol_errors, 1);
                tracing::warn!(client_id = %client_id, addr = %self.peer, reason = %reason, "closing connection: {problem}");
                Some(*reason)
            }
            Close::KeepAlive => {
                tracing::info!(client_id = %client_id, addr = %self.peer, "closing connection: keep alive timeout");
                Some(ReasonCode::KEEP_ALIVE_TIMEOUT)
            }
            Close::Kicked(reason) => Some(*reason),
            Close::Shutdown => Some(ReasonCode::SERVER_SHUTTING_DOWN),
            Close::ClientDisconnect { .. } | Close::Network(_) => None,
        };
        if let Some(reason) = disconnect_reason
            && self.v5()
        {
            self.encode(&Packet::Disconnect(Disconnect {
                reason_code: reason,
                properties: Default::default(),
            }));
        }
        if !self.wbuf.is_empty() {
            let _ = tokio::time::timeout(Duration::from_secs(1), async {
                let _ = stream.write_all(&self.wbuf).await;
                let _ = stream.flush().await;
            })
            .await;
        }
        let _ = tokio::time::timeout(Duration::from_secs(1), stream.shutdown()).await;
        if disconnect_reason.is_some() {
            // Lingering close: after our FIN, read and discard what the client still
            // sends (briefly) instead of closing at once. Closing a socket with unread
            // input makes the kernel send RST, and a RST makes the client drop the
            // DISCONNECT it has not read yet, so it would never learn the reason.
            let _ = tokio::time::timeout(LINGER, async {
                let mut sink = [0u8; 4096];
                while let Ok(n) = stream.read(&mut sink).await {
                    if n == 0 {
                        break;
                    }
                }
            })
            .await;
        }

        let will = match &close {
            Close::ClientDisconnect { keep_will } => will.filter(|_| *keep_will),
            // Shutting down: the broker is going away with every client; no wills.
            Close::Shutdown => None,
            _ => will,
        };
        tracing::info!(client_id = %client_id, addr = %self.peer, reason = %describe(&close), "client disconnected");
        self.broker
            .close_connection(&self.session, &self.link, will, self.session_expiry);
    }
}

fn describe(close: &Close) -> String {
    match close {
        Close::ClientDisconnect { keep_will: false } => "disconnect".into(),
        Close::ClientDisconnect { keep_will: true } => "disconnect with will".into(),
        Close::Network(e) => format!("network: {e}"),
        Close::KeepAlive => "keep alive timeout".into(),
        Close::Protocol { reason, .. } => format!("protocol error {reason}"),
        Close::Kicked(reason) if *reason == ReasonCode::SESSION_TAKEN_OVER => {
            "session taken over".into()
        }
        Close::Kicked(reason) => format!("kicked {reason}"),
        Close::Shutdown => "server shutting down".into(),
    }
}
