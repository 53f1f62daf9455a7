//! One task per network connection (mini-redis `Handler`).
//!
//! The task owns the socket, its read and write buffers and the per-connection MQTT
//! state (negotiated limits, topic aliases). It waits on four things at once, all
//! cancel-safe: bytes from the socket (`read_buf` keeps partial frames in the buffer),
//! its session's `Notify` (deliveries queued, and close requests: a takeover, an
//! admin kick or the broker's shutdown marks the [`Link`] and wakes it), and its
//! keep-alive deadline. Everything queued for the socket is written in one
//! `write_all` per wake-up, with `TCP_NODELAY` set, so batches go out without waiting
//! for Nagle (see `reference/benchmarks.md`).
//!
//! # Layout
//! - [`handshake`]: CONNECT rules and the CONNACK.
//! - [`alias`]: topic aliases in both directions.
//! - [`rare`]: the parts most connections never use, allocated on first use.
//! - this file: the read/dispatch/write loop and packet handlers.

pub mod alias;
pub mod handshake;
mod rare;
mod tally;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use ferromq_codec::{
    AckProperties, ByteString, ConnAck, Connect, DecodeError, Disconnect, Packet, ProtocolVersion,
    PubResp, Publish, PublishProperties, PublishRef, QoS, ReasonCode, RetainHandling, SubAck,
    Subscribe, UnsubAck, Unsubscribe,
};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::auth::{Identity, LoginError, Subject};
use crate::broker::{Broker, Confirm, PendingWill, PublishRefused};
use crate::limits::PublishThrottle;
use crate::message::Message;
use crate::session::state::{IncomingQos2, Outgoing, PubRecOutcome, Stage};
use crate::session::{Closing, ConnectionInfo as ClientInfo, Link, Session};
use crate::stats::{DisconnectReason, Stats};
use crate::store::{Flushed, Store};
use alias::{AliasError, InboundAliases, OutboundTopic};
use futures::FutureExt;
use handshake::Accepted;
use rare::{Gated, Rare};
use tally::SentTally;
use tokio::sync::watch;

/// Read buffer of a busy connection; grows up to the maximum packet size for large
/// packets. Allocated on demand: see [`READ_SMALL`].
const READ_BUFFER: usize = 4 * 1024;
/// A read shorter than this that leaves nothing buffered means the connection is idle
/// or lightly used: its read buffer is freed (the next read starts with tokio's 64-byte
/// chunk and grows again once a read fills the buffer). This is what keeps an idle
/// connection's memory near 1 KB instead of carrying 4 KiB it does not use.
const READ_SMALL: usize = 256;
/// Read buffer until the CONNECT arrived: most CONNECTs are far smaller, and a socket
/// that sends nothing (10,000 of them, in the abuse tests) should cost little. A larger
/// CONNECT grows it to its size (bounded by the maximum packet size). Reading a short
/// HTTP request line and headers whole also lets the close be a FIN, not a reset.
const CONNECT_BUFFER: usize = 256;
/// A write buffer that grew beyond this is released when the connection goes idle.
const WRITE_BUFFER_KEEP: usize = 64 * 1024;
/// How long a connection we close with a DISCONNECT keeps draining the client's input.
const LINGER: Duration = Duration::from_secs(1);
/// Most packets encoded per wake-up before the batch is written.
const MAX_BATCH: usize = 1024;
/// Most retained keys a retained cursor looks at per wake-up, so that a subscribe
/// whose filter matches few of many keys does not stall the connection.
const RETAINED_SCAN_BUDGET: usize = 4096;
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
    /// A 3.1.x publish could not be stored (disk full, I/O): the connection is closed
    /// without acknowledging so the client retries later.
    Storage,
}

impl Close {
    fn protocol(reason: ReasonCode, problem: impl Into<String>) -> Close {
        Close::Protocol {
            reason,
            problem: problem.into(),
        }
    }
}

impl From<Closing> for Close {
    fn from(closing: Closing) -> Close {
        match closing {
            Closing::Kicked(reason) => Close::Kicked(reason),
            Closing::Shutdown => Close::Shutdown,
        }
    }
}

impl From<DecodeError> for Close {
    fn from(e: DecodeError) -> Close {
        Close::protocol(e.reason_code(), e.to_string())
    }
}

/// What the listener knows about a connection before its CONNECT: where it comes
/// from, which listener took it, and the transport's verified identity.
#[derive(Debug, Clone)]
pub struct ConnectionInfo {
    pub peer: SocketAddr,
    /// The listener's name, for logs.
    pub listener: Arc<str>,
    /// The subject Common Name of the client certificate verified by TLS, if any.
    pub cert_cn: Option<String>,
    /// The listener's `use_identity_as_username`: `cert_cn` replaces the CONNECT's
    /// username, and a client without one is refused (Not Authorized), as in
    /// Mosquitto.
    pub use_identity_as_username: bool,
    /// The listener's `allow_anonymous`, overriding the broker-wide setting.
    pub allow_anonymous: Option<bool>,
}

impl From<SocketAddr> for ConnectionInfo {
    /// A plain connection with no listener settings (in-process tests).
    fn from(peer: SocketAddr) -> ConnectionInfo {
        ConnectionInfo {
            peer,
            listener: Arc::from(""),
            cert_cn: None,
            use_identity_as_username: false,
            allow_anonymous: None,
        }
    }
}

/// Serves one accepted socket until it closes.
///
/// Both phases are boxed, so the task itself holds little more than the socket: the
/// CONNECT phase's state (the read, its timeout, the refusal paths) is freed once the
/// CONNECT is accepted, and the connected phase is allocated only then. A task's
/// future is sized for its largest state, for as long as the task lives: with the
/// phases inline, every idle connection carried the CONNECT phase's bytes too.
///
/// The functions here build their boxed futures before the `async` block and pass
/// values on by moving them into the next future: an `async fn` keeps its arguments
/// in its state for its whole life (moved-out or not), and a named local lives to
/// the end of its scope, so each of those would be bytes every idle connection pays.
pub fn serve<S>(
    stream: S,
    info: impl Into<ConnectionInfo>,
    broker: Broker,
) -> impl std::future::Future<Output = ()>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let connect = Box::pin(connect_phase(stream, info.into(), broker));
    async move {
        let Some((stream, phase, broker)) = connect.await else {
            return;
        };
        serve_connected(stream, phase, broker).await;
    }
}

/// Reads, authenticates and checks the CONNECT; `None` once the socket was refused
/// (and answered where the protocol says so).
async fn connect_phase<S>(
    mut stream: S,
    info: ConnectionInfo,
    broker: Broker,
) -> Option<(S, Connected, Broker)>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let peer = info.peer;
    let mut rbuf = BytesMut::with_capacity(CONNECT_BUFFER);
    let mut connect = read_connect(&mut stream, &mut rbuf, peer, &broker).await?;
    let cfg = broker.mqtt().clone();
    let anonymous_allowed = info.allow_anonymous.unwrap_or(cfg.allow_anonymous);
    let identity = match login(&broker, &mut connect, &info, anonymous_allowed) {
        Ok(identity) => identity,
        Err(code) => {
            let ack = ConnAck {
                reason_code: code,
                ..Default::default()
            };
            send_refusal(&mut stream, connect.protocol, ack).await;
            return None;
        }
    };
    let accepted = match handshake::accept(&connect, &cfg, &identity, broker.security()) {
        Ok(a) => a,
        Err(refused) => {
            tracing::info!(client_id = %connect.client_id, addr = %peer, listener = %info.listener, reason = %refused.0, "connection refused");
            if matches!(
                refused.0,
                ReasonCode::BAD_USER_NAME_OR_PASSWORD | ReasonCode::NOT_AUTHORIZED
            ) {
                Stats::add(&broker.stats().auth_failures, 1);
            }
            let ack = handshake::refusal(connect.protocol, refused);
            send_refusal(&mut stream, connect.protocol, ack).await;
            return None;
        }
    };
    let phase = Connected {
        info,
        connect,
        cfg,
        accepted,
        identity,
        rbuf,
    };
    Some((stream, phase, broker))
}

/// What the CONNECT phase of [`serve`] hands to the connected phase.
struct Connected {
    info: ConnectionInfo,
    connect: Box<Connect>,
    cfg: ferromq_config::MqttConfig,
    accepted: Accepted,
    identity: Identity,
    rbuf: BytesMut,
}

/// Serves an accepted CONNECT: opens the session, sends CONNACK, runs the connection.
/// The returned future is boxed: it is allocated only once a CONNECT was accepted.
fn serve_connected<S>(
    stream: S,
    phase: Connected,
    broker: Broker,
) -> std::pin::Pin<Box<impl std::future::Future<Output = ()>>>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let open = Box::pin(open_connection(stream, phase, broker));
    Box::pin(async move {
        let Some(Opened {
            mut stream,
            mut conn,
            rbuf,
            will,
            listener,
            protocol,
        }) = open.await
        else {
            return;
        };
        let close = conn.run(&mut stream, rbuf).await;
        let reason = disconnect_reason(&close);
        // Boxed: the closing steps (timeouts, the lingering read) run once, at the end.
        Box::pin(conn.finish(&mut stream, close, will)).await;
        let stats = conn.broker.stats();
        stats.client_disconnected();
        stats.connection_closed(&listener, protocol, reason);
    })
}

/// What [`open_connection`] hands to the connection's loop.
struct Opened<S> {
    stream: S,
    conn: Connection,
    rbuf: BytesMut,
    will: Option<PendingWill>,
    listener: Arc<str>,
    protocol: ProtocolVersion,
}

/// Opens (or takes over) the session and queues the CONNACK and the resends.
async fn open_connection<S>(mut stream: S, phase: Connected, broker: Broker) -> Option<Opened<S>>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let Connected {
        info,
        connect,
        cfg,
        mut accepted,
        mut identity,
        rbuf,
    } = phase;
    let peer = info.peer;
    let listener = info.listener.clone();
    // Boxed, and only on a cluster node: its gRPC calls would otherwise size every
    // connection's future.
    let claimed = match broker.cluster() {
        Some(_) => {
            Box::pin(crate::cluster_link::before_open(
                &broker,
                &accepted.client_id,
                accepted.clean_start,
                accepted.session_expiry,
            ))
            .await
        }
        None => Ok(()),
    };
    if let Err(e) = claimed {
        // No Raft leader reachable: a minority node does not take sessions over.
        tracing::warn!(client_id = %accepted.client_id, addr = %peer, error = %e, "connection refused: the cluster's session registry is unavailable");
        let ack = handshake::refusal(
            connect.protocol,
            handshake::Refused(ReasonCode::SERVER_UNAVAILABLE),
        );
        Box::pin(send_refusal(&mut stream, connect.protocol, ack)).await;
        return None;
    }
    // The decoded strings are slices of the CONNECT's read buffer: copies, so that
    // the session and the login do not keep that whole buffer alive for the
    // connection's life (~256 bytes per idle connection). The username is one
    // `Arc<str>` that the connection and the session share.
    accepted.client_id = ByteString::from(&*accepted.client_id);
    let username: Option<Arc<str>> = identity.username.take().as_deref().map(Arc::from);
    let opened = broker
        .open_session(
            accepted.client_id.clone(),
            accepted.clean_start,
            accepted.session_expiry,
        )
        .await;
    // Read ACL checks of deliveries to this session use the latest login's username.
    opened.session.lock().username = username.clone();
    let ack = handshake::connack(&accepted, &connect, &cfg, opened.session_present);
    let will = handshake::pending_will(&connect, opened.session.id);
    tracing::info!(
        client_id = %accepted.client_id,
        addr = %peer,
        listener = %info.listener,
        username = connect.username.as_deref().unwrap_or(""),
        protocol = ?connect.protocol,
        clean_start = accepted.clean_start,
        keep_alive = accepted.keep_alive,
        session_present = opened.session_present,
        "client connected"
    );
    broker.stats().client_connected();
    broker
        .stats()
        .connection_opened(&listener, connect.protocol);
    opened.link.set_info(ClientInfo {
        addr: peer,
        listener: listener.clone(),
        protocol: connect.protocol,
        keep_alive: accepted.keep_alive,
        connected_at: std::time::SystemTime::now(),
    });

    let mut conn = Connection {
        broker: broker.clone(),
        protocol: connect.protocol,
        session: opened.session.clone(),
        link: opened.link.clone(),
        session_expiry: accepted.session_expiry,
        window: accepted
            .client_receive_maximum
            .min(cfg.max_inflight_messages)
            .max(1),
        wbuf: BytesMut::new(),
        store: if accepted.session_expiry > 0 {
            broker.store().cloned()
        } else {
            None
        },
        flushed: broker.store().filter(|s| s.strict()).map(|s| s.flushed()),
        rare: None,
        keep_alive: accepted.keep_alive,
        client_max_packet_size: accepted.client_max_packet_size,
        client_topic_alias_maximum: accepted.client_topic_alias_maximum,
        username,
        throttle: Some(PublishThrottle::new(
            &broker.config().limits,
            Instant::now(),
        ))
        .filter(PublishThrottle::is_active)
        .map(Box::new),
        quota_logged: false,
    };
    conn.encode(&Packet::ConnAck(ack));
    // Resend what was in flight when the session was last connected, then whatever
    // queued while it was offline [MQTT-4.4.0-1].
    let now = Instant::now();
    let resend = conn.session.lock().delivery.resume(now);
    let mut tally = SentTally::default();
    for out in resend {
        conn.encode_outgoing(out, None, now, &mut tally);
    }
    tally.add_to(conn.broker.stats());

    // The decoded CONNECT is not needed any more: do not keep it for the connection's
    // lifetime (it is ~440 bytes and pins part of the first read buffer).
    let protocol = connect.protocol;
    drop(connect);
    Some(Opened {
        stream,
        conn,
        rbuf,
        will,
        listener,
        protocol,
    })
}

/// Authenticates a CONNECT; on failure, counts and logs it (naming the address and
/// username, never the password) and returns the CONNACK code that refuses it:
/// 0x86 / 0x87 / 0x9F for v5, 0x05 for 3.1.x, as Mosquitto answers.
///
/// On a listener with `use_identity_as_username` the client is authenticated by its
/// certificate: the CN becomes the username (the client's own username and password
/// are not used, no password file is consulted); without a client certificate it is
/// refused as not authorised. Otherwise [`crate::auth::Security::login`] decides, with
/// the listener's `allow_anonymous` (`anonymous_allowed`).
fn login(
    broker: &Broker,
    connect: &mut Connect,
    info: &ConnectionInfo,
    anonymous_allowed: bool,
) -> Result<Identity, ReasonCode> {
    let peer = info.peer;
    let result = if info.use_identity_as_username {
        match &info.cert_cn {
            Some(cn) => {
                connect.username = Some(ByteString::from(cn.as_str()));
                connect.password = None;
                Ok(Identity {
                    username: connect.username.clone(),
                })
            }
            None => Err(LoginError::NotAuthorized),
        }
    } else {
        broker.security().login(
            peer.ip(),
            connect.username.as_deref(),
            connect.password.as_deref(),
            anonymous_allowed,
        )
    };
    match result {
        Ok(identity) => Ok(identity),
        Err(e) => {
            let stats = broker.stats();
            let username = connect.username.as_deref();
            if e == LoginError::Blocked {
                Stats::add(&stats.auth_blocked, 1);
                tracing::info!(addr = %peer, listener = %info.listener, client_id = %connect.client_id, username = ?username, "connection refused: too many failed logins from this address");
            } else {
                Stats::add(&stats.auth_failures, 1);
                tracing::warn!(addr = %peer, listener = %info.listener, client_id = %connect.client_id, username = ?username, reason = ?e, "connection refused: login failed");
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
        // Judge the packet type from the fixed header alone, before parsing a body
        // whose format depends on a protocol version not negotiated yet.
        if looks_like_http(rbuf) {
            tracing::warn!(addr = %peer, "closing connection: an HTTP request on an MQTT listener (first packet is not CONNECT [MQTT-3.1.0-1])");
            return None;
        }
        if let Ok(Some(info)) = ferromq_codec::check(rbuf, max)
            && info.packet_type != 1
        {
            tracing::warn!(addr = %peer, packet_type = info.packet_type, "closing connection: first packet is not CONNECT [MQTT-3.1.0-1]");
            return None;
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
                    let _ = stream.flush().await;
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
    protocol: ProtocolVersion,
    session: Arc<Session>,
    link: Link,
    /// The keep alive the broker enforces (seconds, 0 = none).
    keep_alive: u16,
    /// The client's Maximum Packet Size [MQTT-3.1.2-24].
    client_max_packet_size: Option<u32>,
    /// How many topic aliases the client accepts from us.
    client_topic_alias_maximum: u16,
    /// The MQTT settings are read from `broker.mqtt()` (shared, fixed for the
    /// broker's life), not copied into every connection.
    /// Current Session Expiry Interval (a v5 DISCONNECT may change it).
    session_expiry: u32,
    /// Outbound in-flight window: min(client Receive Maximum, max_inflight_messages).
    window: u16,
    wbuf: BytesMut,
    /// The store, while this session is persistent.
    store: Option<Arc<Store>>,
    /// Group-commit progress, in strict durability mode.
    flushed: Option<watch::Receiver<Flushed>>,
    /// Topic aliases, held acknowledgements, retained cursors: see [`rare`].
    rare: Option<Box<Rare>>,
    /// Who logged in ([`Identity::username`]), for ACL checks.
    username: Option<Arc<str>>,
    /// `limits.publish_rate_*`: while in debt, the socket is not read.
    /// Boxed, and only when a rate is configured: most connections have none.
    throttle: Option<Box<PublishThrottle>>,
    /// The subscription quota refusal was logged for this connection.
    quota_logged: bool,
}

impl Connection {
    fn v5(&self) -> bool {
        self.protocol.is_v5()
    }

    /// The rarely used parts, allocated on first use (see [`rare`]).
    fn rare(&mut self) -> &mut Rare {
        let inbound = self.broker.mqtt().topic_alias_maximum;
        let outbound = self.client_topic_alias_maximum;
        self.rare
            .get_or_insert_with(|| Box::new(Rare::new(inbound, outbound)))
    }

    /// No packet is held back for the disk or a confirmation.
    fn gated_is_empty(&self) -> bool {
        self.rare.as_ref().is_none_or(|r| r.gated.is_empty())
    }

    /// The client's address, for logs (kept once, in the link's info).
    fn peer(&self) -> SocketAddr {
        self.link
            .info()
            .map_or(SocketAddr::from(([0, 0, 0, 0], 0)), |i| i.addr)
    }

    /// This client, for ACL checks.
    fn subject(&self) -> Subject<'_> {
        Subject {
            username: self.username.as_deref(),
            client_id: &self.session.client_id,
        }
    }

    /// The connection's loop, until it closes.
    ///
    /// Not an `async fn`: one keeps a copy of each argument in its state next to the
    /// locals they move into; the `async move` block uses its captures in place.
    #[expect(
        clippy::manual_async_fn,
        reason = "an async fn would keep a second copy of the read buffer in every connection"
    )]
    fn run<'a, S>(
        &'a mut self,
        stream: &'a mut S,
        mut rbuf: BytesMut,
    ) -> impl std::future::Future<Output = Close> + 'a
    where
        S: AsyncRead + AsyncWrite + Unpin,
    {
        async move {
            // 1.5 times the keep alive [MQTT-3.1.2-24]; without one, a year.
            let keep_alive = match self.keep_alive {
                0 => Duration::from_secs(86_400 * 365),
                k => Duration::from_millis(u64::from(k) * 1500),
            };
            // The keep-alive deadline moves with every packet received; the timer does not
            // (re-arming a timer is a lock on the timer wheel): it fires at the deadline it
            // was armed with and is re-armed then if the deadline has moved since.
            let mut deadline = tokio::time::Instant::now() + keep_alive;
            let mut keep_alive_timer = std::pin::pin!(tokio::time::sleep_until(deadline));
            // The other waits that last for the whole connection are created once too:
            // each creation registers a waiter under a lock, each drop unregisters it.
            // A kick (takeover, admin) or the shutdown wakes `work`: the link is checked on
            // every wake-up. A shutdown that began before this link was installed did not
            // see it (see `Broker::begin_shutdown`): checked here, once.
            if self.broker.shutdown_token().is_cancelled() {
                return Close::Shutdown;
            }
            let session = self.session.clone();
            let mut work = std::pin::pin!(session.work_notified());
            let mut was_paused = false;
            let mut yield_after = false;
            // Packets handled since the last yield (cluster nodes only, see below).
            let mut unyielded = 0u64;
            let max_in = self.broker.mqtt().max_packet_size as usize;
            // Anything that arrived together with the CONNECT.
            if !rbuf.is_empty()
                && let Err(close) = self.process_input(&mut rbuf, max_in)
            {
                return close;
            }
            if rbuf.is_empty() {
                // The CONNECT's buffer: freed until data comes (as after any small read).
                rbuf = BytesMut::new();
            }
            loop {
                if let Err(close) = self.release_gated() {
                    return close;
                }
                self.pump_retained();
                self.drain_session();
                if !self.wbuf.is_empty() {
                    // The flush matters for TLS and WebSocket streams, which may hold
                    // bytes back until flushed; on TCP it is a no-op.
                    if let Some(closing) = self.link.closing() {
                        return Close::from(closing);
                    }
                    let mut write = std::pin::pin!(async {
                        stream.write_all(&self.wbuf).await?;
                        stream.flush().await
                    });
                    // A wake-up while the write waits (a peer that reads slowly) may be a
                    // kick; other wake-ups are for deliveries, which the next loop picks
                    // up: the permit it used is given back once the write is done, or
                    // the loop would sleep with deliveries (or a retained cursor)
                    // waiting. The write is kept across them (`write_all` is not
                    // cancel-safe).
                    let mut woken = false;
                    let written = loop {
                        tokio::select! {
                            biased;
                            _ = work.as_mut() => {
                                work.set(session.work_notified());
                                if let Some(closing) = self.link.closing() {
                                    return Close::from(closing);
                                }
                                woken = true;
                            }
                            r = write.as_mut() => break r,
                        }
                    };
                    if woken {
                        self.session.wake();
                    }
                    if let Err(e) = written {
                        return Close::Network(e.to_string());
                    }
                    Stats::add(&self.broker.stats().bytes_sent, self.wbuf.len() as u64);
                    self.wbuf.clear();
                    if self.wbuf.capacity() > WRITE_BUFFER_KEEP {
                        self.wbuf = BytesMut::new();
                    }
                }
                if let Some(closing) = self.link.closing() {
                    return self.closing(closing, stream, &mut rbuf, max_in);
                }
                // `read_buf` reserves 64 bytes itself when the buffer is full or unallocated.
                let spare = (rbuf.capacity() - rbuf.len()).max(64);
                // Publish rate limit: while in debt, do not read the socket (TCP flow control
                // then slows the client down); deliveries to it go on.
                let pause = match &mut self.throttle {
                    Some(throttle) => throttle.pause(Instant::now()),
                    None => Duration::ZERO,
                };
                let paused = !pause.is_zero();
                if paused && !was_paused {
                    Stats::add(&self.broker.stats().publish_throttled, 1);
                    tracing::debug!(client_id = %self.session.client_id, pause_ms = pause.as_millis() as u64, "publish rate limit: pausing reads");
                }
                was_paused = paused;
                // Rare: the timer is allocated only while a pause runs.
                let mut pause_timer = paused.then(|| Box::pin(tokio::time::sleep(pause)));
                // Only while acknowledgements wait for the disk (strict durability, where
                // the flush costs far more than the allocation) or a cluster confirmation,
                // or retained messages for a read barrier: boxed, so that its state is not
                // in every connection's future.
                let flushing = self.flushed.is_some();
                let rare_wait = self
                    .rare
                    .as_deref_mut()
                    .filter(|r| r.waiting(flushing))
                    .map(|r| Box::pin(rare::wait(r, &mut self.flushed)));
                let rare_waiting = rare_wait.is_some();
                tokio::select! {
                    biased;
                    _ = sleep_opt(&mut pause_timer), if paused => {
                        // The client's PINGREQs waited unread in the socket: its keep alive
                        // starts again now.
                        deadline = deadline.max(tokio::time::Instant::now() + keep_alive);
                        // Packets already read and held back by the limit.
                        if !rbuf.is_empty()
                            && let Err(close) = self.process_input(&mut rbuf, max_in)
                        {
                            return close;
                        }
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
                                deadline = tokio::time::Instant::now() + keep_alive;
                                if let Some(cluster) = self.broker.cluster() {
                                    unyielded += after - before;
                                    if unyielded >= cluster.packets_per_yield() {
                                        unyielded = 0;
                                        yield_after = true;
                                    }
                                }
                            }
                            if rbuf.is_empty() && n < READ_SMALL {
                                // Idle or light traffic: free the buffer until data comes.
                                rbuf = BytesMut::new();
                            } else if n >= spare {
                                // The read filled the buffer: more is probably waiting.
                                rbuf.reserve(READ_BUFFER);
                            } else if rbuf.is_empty() && rbuf.capacity() > READ_BUFFER * 16 {
                                rbuf = BytesMut::with_capacity(READ_BUFFER);
                            }
                        }
                        Err(e) => return Close::Network(e.to_string()),
                    },
                    _ = work.as_mut() => {
                        // Fired: a fresh one for the next wake-up (a notification that
                        // comes meanwhile is kept as a permit, so none is lost).
                        work.set(session.work_notified());
                        if let Some(closing) = self.link.closing() {
                            return self.closing(closing, stream, &mut rbuf, max_in);
                        }
                    }
                    event = boxed_opt(rare_wait), if rare_waiting => {
                        if let Some(rare) = self.rare.as_deref_mut() {
                            rare.on_event(event);
                        }
                    }
                    _ = keep_alive_timer.as_mut(), if !paused => {
                        if tokio::time::Instant::now() >= deadline {
                            return Close::KeepAlive;
                        }
                        keep_alive_timer.as_mut().reset(deadline);
                    }
                }
                // On a cluster node the publishes handled so far went to the peers'
                // forward queues: let their writers send them before this loop reads
                // (and handles) more, so a publisher's burst travels to the peer in
                // parts and the peer works on one part while this node handles the
                // next. Without it the loop keeps the worker for as long as the socket
                // has data and the whole burst leaves at once. How often: after every
                // read on one runtime worker, every 128 packets with more
                // (`ferromq_cluster::Cluster::packets_per_yield`).
                if std::mem::take(&mut yield_after) {
                    tokio::task::yield_now().await;
                }
            }
        }
    }

    /// Asked to close while waiting: a kick goes through [`Connection::kicked`].
    fn closing<S>(
        &mut self,
        closing: Closing,
        stream: &mut S,
        rbuf: &mut BytesMut,
        max_in: usize,
    ) -> Close
    where
        S: AsyncRead + AsyncWrite + Unpin,
    {
        match closing {
            Closing::Shutdown => Close::Shutdown,
            Closing::Kicked(_) => self.kicked(stream, rbuf, max_in),
        }
    }

    /// Kicked (takeover, admin): packets the client already sent are handled first,
    /// so a DISCONNECT that raced with the takeover still discards the will
    /// [MQTT-3.1.2-10].
    fn kicked<S>(&mut self, stream: &mut S, rbuf: &mut BytesMut, max_in: usize) -> Close
    where
        S: AsyncRead + AsyncWrite + Unpin,
    {
        use futures::FutureExt;
        if let Some(Ok(n)) = stream.read_buf(rbuf).now_or_never()
            && n > 0
            && let Err(close @ Close::ClientDisconnect { .. }) = self.process_input(rbuf, max_in)
        {
            return close;
        }
        Close::Kicked(self.link.kick_reason())
    }

    /// Decodes and handles every complete packet in the buffer.
    fn process_input(&mut self, rbuf: &mut BytesMut, max_in: usize) -> Result<(), Close> {
        loop {
            match ferromq_codec::decode(rbuf, self.protocol, max_in)? {
                Some(packet) => {
                    Stats::add(&self.broker.stats().packets_received, 1);
                    self.handle(packet)?;
                    // Publish rate limit: once in debt, the rest of the buffer waits
                    // too (the read loop processes it after the pause), so one large
                    // read cannot carry a burst past the limit.
                    if self
                        .throttle
                        .as_mut()
                        .is_some_and(|t| !t.pause(Instant::now()).is_zero())
                    {
                        return Ok(());
                    }
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
                let seq = self.session.lock().delivery.on_puback(ack.packet_id);
                match seq {
                    Some(seq) => {
                        self.store_write(|s, c| s.remove_outbound(c, seq));
                    }
                    None => {
                        tracing::debug!(client_id = %self.session.client_id, packet_id = ack.packet_id, "PUBACK for unknown packet id");
                    }
                }
                Ok(())
            }
            Packet::PubRec(rec) => {
                let outcome = self
                    .session
                    .lock()
                    .delivery
                    .on_pubrec(rec.packet_id, rec.reason_code.is_success());
                let pubrel = Packet::PubRel(PubResp {
                    packet_id: rec.packet_id,
                    ..Default::default()
                });
                if let PubRecOutcome::Released(seq) = outcome {
                    // PUBREL only once "released" is durable: a restart must resend
                    // PUBREL, never the PUBLISH of a flow the client may have completed.
                    let pid = rec.packet_id;
                    let generation = self
                        .store_write(|s, c| s.set_outbound_state(c, seq, Stage::AwaitPubComp, pid));
                    self.send_after(generation, pubrel);
                } else if let PubRecOutcome::Ended(seq) = outcome {
                    self.store_write(|s, c| s.remove_outbound(c, seq));
                } else if outcome == PubRecOutcome::AlreadyReleased {
                    self.send_after(None, pubrel);
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
                let seq = self.session.lock().delivery.on_pubcomp(comp.packet_id);
                if let Some(seq) = seq {
                    self.store_write(|s, c| s.remove_outbound(c, seq));
                }
                Ok(())
            }
            Packet::PubRel(rel) => {
                let known = self.session.lock().delivery.on_pubrel(rel.packet_id);
                // PUBCOMP only once the id's release is durable: after a restart the
                // client may reuse the id for a new message, which must not be taken
                // for a duplicate of the old one.
                let mut released = None;
                if known {
                    let pid = rel.packet_id;
                    released = self.store_write(|s, c| s.remove_inbound(c, pid));
                }
                // Unknown id: v5 says so with 0x92 [MQTT-3.7.2-1]; 3.1.1 just completes.
                let reason = if known || !self.v5() {
                    ReasonCode::SUCCESS
                } else {
                    ReasonCode::PACKET_IDENTIFIER_NOT_FOUND
                };
                self.send_after(
                    released,
                    Packet::PubComp(PubResp {
                        packet_id: rel.packet_id,
                        reason_code: reason,
                        ..Default::default()
                    }),
                );
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
        self.broker.stats().publish_in(p.qos, p.payload.len());
        Stats::add(&self.broker.stats().publish_received, 1);
        Stats::add(
            &self.broker.stats().publish_bytes_received,
            p.payload.len() as u64,
        );
        let topic = if self.v5() {
            let resolved = match p.properties.topic_alias {
                None => InboundAliases::plain(&p.topic),
                Some(_) => self
                    .rare()
                    .inbound_aliases
                    .resolve(&p.topic, p.properties.topic_alias),
            };
            match resolved {
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
        if ferromq_topic::level_count(&topic) > self.broker.mqtt().max_topic_levels {
            return Err(Close::protocol(
                ReasonCode::TOPIC_NAME_INVALID,
                "too many topic levels",
            ));
        }
        if topic.len() > self.broker.mqtt().max_topic_length {
            return Err(Close::protocol(
                ReasonCode::TOPIC_NAME_INVALID,
                format!(
                    "topic name of {} bytes is longer than mqtt.max_topic_length",
                    topic.len()
                ),
            ));
        }
        if let Some(throttle) = &mut self.throttle {
            throttle.charge(p.payload.len(), Instant::now());
        }
        if !p.properties.subscription_identifiers.is_empty() {
            return Err(Close::protocol(
                ReasonCode::PROTOCOL_ERROR,
                "PUBLISH from a client carries a Subscription Identifier [MQTT-3.3.4-6]",
            ));
        }
        if p.qos as u8 > self.broker.mqtt().max_qos {
            return Err(Close::protocol(
                ReasonCode::QOS_NOT_SUPPORTED,
                "QoS above the server's Maximum QoS [MQTT-3.2.2-11]",
            ));
        }
        if p.retain && !self.broker.mqtt().retain_available {
            return Err(Close::protocol(
                ReasonCode::RETAIN_NOT_SUPPORTED,
                "retain is not available [MQTT-3.2.2-14]",
            ));
        }
        let too_big = self
            .broker
            .mqtt()
            .max_payload_size
            .is_some_and(|max| p.payload.len() > max as usize);

        // Publish ACL: v5 learns it from PUBACK / PUBREC 0x87 (the QoS 2 flow ends
        // there [MQTT-4.3.3-?]); 3.1.1 cannot be told, so the message is acknowledged
        // and dropped, as Mosquitto does. Nothing is stored or routed either way.
        if !self.broker.security().can_publish(self.subject(), &topic) {
            Stats::add(&self.broker.stats().acl_publish_denied, 1);
            Stats::add(&self.broker.stats().dropped_not_authorized, 1);
            tracing::debug!(client_id = %self.session.client_id, topic = %topic, "PUBLISH denied by the ACL");
            let reason = if self.v5() {
                ReasonCode::NOT_AUTHORIZED
            } else {
                ReasonCode::SUCCESS
            };
            self.ack_publish(p.qos, p.packet_id, reason, None);
            return Ok(());
        }

        let route = match p.qos {
            QoS::AtMostOnce | QoS::AtLeastOnce => !too_big,
            QoS::ExactlyOnce => {
                let outcome = self
                    .session
                    .lock()
                    .delivery
                    .on_incoming_qos2(p.packet_id, self.broker.mqtt().receive_maximum);
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
        let mut generation = None;
        let mut outcome = crate::broker::PublishOutcome {
            matched: 1,
            ..Default::default()
        };
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
            match (&self.store, p.qos) {
                (Some(store), QoS::ExactlyOnce) => {
                    // The packet id is durable before PUBREC, together with the
                    // deliveries it stands for (one sled transaction), so a PUBLISH
                    // resent after a restart is neither lost nor delivered twice
                    // [MQTT-4.3.3-9].
                    let store = store.clone();
                    let broker = self.broker.clone();
                    let (routed, written) =
                        store.route_qos2_atomically(&self.session.client_id, p.packet_id, || {
                            broker.try_publish(message)
                        });
                    match routed {
                        Ok(o) => outcome = o,
                        Err(PublishRefused::RetainedBudget) => {
                            refused = Some(ReasonCode::QUOTA_EXCEEDED)
                        }
                    }
                    match written {
                        Ok(g) => generation = Some(g),
                        Err(e) => {
                            tracing::warn!(client_id = %self.session.client_id, error = %e, "cannot store a QoS 2 message");
                            outcome.store_failed = true;
                        }
                    }
                }
                _ => match self.broker.try_publish(message) {
                    Ok(o) => outcome = o,
                    // `limits.retained_max_bytes`: neither stored nor routed (the broker
                    // logged it); v5 learns it from 0x97, 3.1.1 cannot be told.
                    Err(PublishRefused::RetainedBudget) => {
                        refused = Some(ReasonCode::QUOTA_EXCEEDED)
                    }
                },
            }
        } else if too_big {
            Stats::add(&self.broker.stats().dropped_payload_too_large, 1);
            tracing::info!(client_id = %self.session.client_id, "PUBLISH payload above message_size_limit dropped");
        }
        if outcome.store_failed && p.qos != QoS::AtMostOnce && !self.v5() {
            // 3.1.x has no negative acknowledgement: close unacknowledged so the
            // client retries once the disk has room.
            tracing::warn!(client_id = %self.session.client_id, "closing connection: cannot store the message (disk full or I/O error)");
            return Err(Close::Storage);
        }
        let reason = match refused {
            _ if too_big => ReasonCode::PACKET_TOO_LARGE,
            Some(code) if self.v5() => code,
            Some(_) => ReasonCode::SUCCESS,
            None if outcome.store_failed => {
                tracing::warn!(client_id = %self.session.client_id, "publish refused with 0x97: cannot store the message (disk full or I/O error)");
                ReasonCode::QUOTA_EXCEEDED
            }
            None if outcome.matched == 0 => ReasonCode::NO_MATCHING_SUBSCRIBERS,
            None => ReasonCode::SUCCESS,
        };
        let generation = generation.max(outcome.generation);
        if p.qos == QoS::ExactlyOnce && !reason.is_success() {
            // An error PUBREC ends the flow: forget the id.
            self.forget_inbound_qos2(p.packet_id);
        }
        self.ack_publish_confirmed(p.qos, p.packet_id, reason, generation, outcome.confirms);
        Ok(())
    }

    /// Runs a store write for this session if it is persistent; returns the store
    /// generation to wait for. A failed write is logged: the state it records is only
    /// needed to avoid a redelivery after a crash.
    fn store_write(
        &self,
        write: impl FnOnce(&Store, &str) -> Result<u64, crate::store::StoreError>,
    ) -> Option<u64> {
        let store = self.store.as_ref()?;
        match write(store, &self.session.client_id) {
            Ok(g) => Some(g),
            Err(e) => {
                tracing::warn!(client_id = %self.session.client_id, error = %e, "store write failed");
                None
            }
        }
    }

    /// Sends `packet` once the store generation `generation` is flushed (strict
    /// durability), keeping acknowledgements in order.
    fn send_after(&mut self, generation: Option<u64>, packet: Packet) {
        self.send_confirmed(generation, None, packet);
    }

    /// As [`Connection::send_after`], also waiting for `confirm` (cluster: peers'
    /// acknowledgements, a retained message's Raft commit) when there is one.
    fn send_confirmed(
        &mut self,
        generation: Option<u64>,
        confirm: Option<Confirm>,
        packet: Packet,
    ) {
        let done = self.flushed.as_ref().map(|f| f.borrow().done);
        let wait = generation.filter(|g| done.is_some_and(|done| *g > done));
        if wait.is_none() && confirm.is_none() && self.gated_is_empty() {
            self.encode(&packet);
            return;
        }
        if wait.is_some()
            && let Some(store) = self.broker.store()
        {
            store.request_flush();
        }
        self.rare().gated.push_back(Gated {
            generation: wait.unwrap_or(0),
            confirm,
            failure: None,
            packet,
        });
    }

    /// Moves acknowledgements whose writes are on disk (and whose cluster
    /// confirmation came) into the write buffer. One whose flush or confirmation
    /// failed becomes an error: v5 the reason code (0x97 for the disk), 3.1.x a
    /// closed connection.
    fn release_gated(&mut self) -> Result<(), Close> {
        let state = match &self.flushed {
            Some(flushed) => *flushed.borrow(),
            None => Flushed {
                done: u64::MAX,
                failed: 0,
            },
        };
        while let Some(rare) = self.rare.as_deref_mut()
            && let Some(front) = rare.gated.front_mut()
        {
            let g = front.generation;
            if g > state.done && g > state.failed {
                break;
            }
            // A confirmation that already came is taken here rather than through
            // `rare::wait`: a peer acknowledges a whole batch at once, and taking its
            // confirmations one wake-up each meant one write per PUBACK.
            if let Some(confirm) = front.confirm.as_mut() {
                match confirm.as_mut().now_or_never() {
                    Some(result) => {
                        front.confirm = None;
                        front.failure = result.err();
                    }
                    None => break,
                }
            }
            let Some(Gated {
                mut packet,
                failure,
                ..
            }) = rare.gated.pop_front()
            else {
                break;
            };
            let failure = if g > state.done {
                Some(ReasonCode::QUOTA_EXCEEDED)
            } else {
                failure
            };
            if let Some(code) = failure {
                if !self.v5() && !matches!(packet, Packet::PubRel(_)) {
                    return Err(Close::Storage);
                }
                match &mut packet {
                    Packet::PubAck(r) | Packet::PubRec(r) => r.reason_code = code,
                    _ => {}
                }
            }
            self.encode(&packet);
        }
        Ok(())
    }

    /// Ends a QoS 2 flow refused with an error PUBREC: the id is forgotten, in memory
    /// and in the store.
    fn forget_inbound_qos2(&mut self, packet_id: u16) {
        self.session.lock().delivery.on_pubrel(packet_id);
        self.store_write(|s, c| s.remove_inbound(c, packet_id));
    }

    /// PUBACK (QoS 1) or PUBREC (QoS 2) with `reason`, once `generation` is on disk
    /// (see [`Connection::send_after`]); nothing for QoS 0.
    fn ack_publish(
        &mut self,
        qos: QoS,
        packet_id: u16,
        reason: ReasonCode,
        generation: Option<u64>,
    ) {
        self.ack_publish_confirmed(qos, packet_id, reason, generation, Vec::new());
    }

    /// As [`Connection::ack_publish`], also after every cluster confirmation.
    fn ack_publish_confirmed(
        &mut self,
        qos: QoS,
        packet_id: u16,
        reason: ReasonCode,
        generation: Option<u64>,
        confirms: Vec<Confirm>,
    ) {
        let resp = PubResp {
            packet_id,
            reason_code: reason,
            ..Default::default()
        };
        let confirm = match confirms.len() {
            0 => None,
            1 => confirms.into_iter().next(),
            _ => Some(
                futures::future::join_all(confirms)
                    .map(|all| all.into_iter().find_map(Result::err).map_or(Ok(()), Err))
                    .boxed(),
            ),
        };
        match qos {
            QoS::AtMostOnce => {}
            QoS::AtLeastOnce => self.send_confirmed(generation, confirm, Packet::PubAck(resp)),
            QoS::ExactlyOnce => self.send_confirmed(generation, confirm, Packet::PubRec(resp)),
        }
    }

    fn on_subscribe(&mut self, s: Subscribe) -> Result<(), Close> {
        let identifier = s.properties.subscription_identifier;
        let mut codes = Vec::with_capacity(s.filters.len());
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
                || ferromq_topic::level_count(bare) > self.broker.mqtt().max_topic_levels
                || filter.len() > self.broker.mqtt().max_topic_length
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
                    tracing::warn!(client_id = %self.session.client_id, addr = %self.peer(), limit = max_subscriptions, "SUBSCRIBE refused: limits.max_subscriptions_per_client reached");
                }
                Stats::add(&self.broker.stats().subscription_quota_exceeded, 1);
                codes.push(self.subscribe_failure(ReasonCode::QUOTA_EXCEEDED));
                continue;
            }
            let mut granted_options = *options;
            granted_options.qos = handshake::granted_qos(options.qos, self.broker.mqtt().max_qos);
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
                // Each message is checked for `read` as the cursor reaches it.
                let cursor = self
                    .broker
                    .retained_cursor(bare, granted_options.qos, identifier);
                self.rare().retained_cursors.push_back(cursor);
                if let Some(cluster) = self.broker.cluster() {
                    // A fresh barrier covers the earlier ones too.
                    let (tx, rx) = tokio::sync::oneshot::channel();
                    let cluster = cluster.clone();
                    tokio::spawn(async move {
                        if let Err(e) = cluster.read_barrier().await {
                            tracing::debug!(error = %e, "read barrier failed: retained messages served from this node's state");
                        }
                        let _ = tx.send(());
                    });
                    self.rare().retained_barrier = Some(rx);
                }
            }
            codes.push(ReasonCode(granted_options.qos as u8));
        }
        self.encode(&Packet::SubAck(SubAck {
            packet_id: s.packet_id,
            properties: AckProperties::default(),
            reason_codes: codes,
        }));
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
            self.session_expiry = expiry.min(self.broker.mqtt().max_session_expiry_interval);
        }
        Err(Close::ClientDisconnect {
            keep_will: d.reason_code == ReasonCode::DISCONNECT_WITH_WILL,
        })
    }

    /// Moves deliveries from the session queue into the write buffer, within the
    /// in-flight window.
    fn drain_session(&mut self) {
        let now = Instant::now();
        let mut batch = crate::fanout::take_outgoing();
        let mut bytes = 0;
        {
            let mut inner = self.session.lock();
            while batch.len() < MAX_BATCH && bytes < MAX_BATCH_BYTES {
                match self
                    .session
                    .next_outgoing(&mut inner, usize::from(self.window), now)
                {
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
        // Only a persistent session has store generations to wait for: a clean one
        // allocates nothing here per wake-up.
        let mut generations = Vec::new();
        if let Some(store) = &self.store {
            generations.resize(batch.len(), None);
            // Record which packet id each stored delivery went out with, so a restart
            // resends it as a DUP with the same id.
            for (out, generation) in batch.iter().zip(generations.iter_mut()) {
                if let Outgoing::Publish {
                    seq,
                    packet_id,
                    dup: false,
                    delivery,
                } = out
                    && *packet_id != 0
                {
                    let stage = if delivery.qos == QoS::AtLeastOnce {
                        Stage::AwaitPubAck
                    } else {
                        Stage::AwaitPubRec
                    };
                    match store.set_outbound_state(&self.session.client_id, *seq, stage, *packet_id)
                    {
                        // A QoS 2 PUBLISH goes out only once its packet id is durable:
                        // a restart must resend it with the same id (and DUP), which
                        // the client recognises, never under a new id [MQTT-4.3.3-?].
                        Ok(g) if stage == Stage::AwaitPubRec => *generation = Some(g),
                        Ok(_) => {}
                        Err(e) => {
                            tracing::warn!(client_id = %self.session.client_id, error = %e, "store write failed");
                        }
                    }
                }
            }
        }
        if batch.len() == MAX_BATCH || bytes >= MAX_BATCH_BYTES {
            // More may be waiting: come back after this batch is written.
            self.session.wake();
        }
        let mut generations = generations.into_iter();
        let mut tally = SentTally::default();
        for out in batch.drain(..) {
            self.encode_outgoing(out, generations.next().flatten(), now, &mut tally);
        }
        tally.add_to(self.broker.stats());
        crate::fanout::return_outgoing(batch);
    }

    /// Moves retained messages of earlier SUBSCRIBEs into the session queue as far as
    /// the queue has room (see `retained::RetainedCursor`). Wakes the loop again while
    /// progress is made; a cursor waiting for room is pumped again on the next
    /// acknowledgement or wake-up.
    fn pump_retained(&mut self) {
        let Some(rare) = self.rare.as_deref_mut() else {
            return;
        };
        if rare.retained_cursors.is_empty() || rare.retained_barrier.is_some() {
            return;
        }
        let store = self.broker.store().cloned();
        // Each retained message is checked for `read`, like a live delivery.
        let acl = self.broker.security().acl();
        let session = &self.session;
        let may_read = |topic: &str| acl.as_ref().is_none_or(|acl| session.may_read(acl, topic));
        while let Some(cursor) = rare.retained_cursors.front_mut() {
            let pumped = cursor.pump(store.as_deref(), session, RETAINED_SCAN_BUDGET, &may_read);
            if pumped.denied > 0 {
                Stats::add(&self.broker.stats().acl_read_denied, pumped.denied as u64);
            }
            if pumped.too_large > 0 {
                Stats::add(
                    &self.broker.stats().dropped_queue_full,
                    pumped.too_large as u64,
                );
            }
            if pumped.done {
                rare.retained_cursors.pop_front();
                continue;
            }
            if pumped.queued > 0 || pumped.more {
                self.session.wake();
            }
            break;
        }
    }

    /// `now` is the time of the batch being written (one clock read per batch, not per
    /// delivery: at 100 subscribers per PUBLISH the per-delivery reads were 8 % of
    /// the broker's time). The counters go into `tally`, which the caller adds to the
    /// broker's once per batch ([`SentTally::add_to`]).
    fn encode_outgoing(
        &mut self,
        out: Outgoing,
        generation: Option<u64>,
        now: Instant,
        tally: &mut SentTally,
    ) {
        match out {
            Outgoing::PubRel { packet_id } => self.encode(&Packet::PubRel(PubResp {
                packet_id,
                ..Default::default()
            })),
            Outgoing::Publish {
                packet_id,
                dup,
                delivery,
                ..
            } => {
                let msg = &delivery.message;
                let (qos, retain) = (delivery.qos, delivery.retain);
                // Written from borrowed parts: the message's topic and payload are not
                // cloned per subscriber (see `PublishRef`). Properties are per
                // subscriber on v5 (subscription ids, remaining expiry, topic alias);
                // 3.1.x carries none.
                let mut properties = PublishProperties::default();
                if self.v5() {
                    properties = msg.properties.clone();
                    properties.subscription_identifiers = delivery.subscription_ids;
                    properties.message_expiry_interval = msg.remaining_expiry(now);
                }
                let encoded_len = |topic: &'_ str, properties: &'_ PublishProperties| -> usize {
                    let publish = PublishRef {
                        dup,
                        qos,
                        retain,
                        topic,
                        packet_id,
                        properties,
                        payload: &msg.payload,
                    };
                    ferromq_codec::publish_ref_encoded_len(&publish, self.protocol)
                        .unwrap_or(usize::MAX)
                };
                // [MQTT-3.1.2-25] a packet above the client's Maximum Packet Size is
                // discarded as if sent.
                if let Some(max) = self.client_max_packet_size
                    && encoded_len(&msg.topic, &properties) > max as usize
                {
                    Stats::add(&self.broker.stats().dropped_too_large, 1);
                    if packet_id != 0 {
                        let seq = self.session.lock().delivery.forget(packet_id);
                        if let Some(seq) = seq {
                            self.store_write(|s, c| s.remove_outbound(c, seq));
                        }
                    }
                    return;
                }
                // An alias the client already knows replaces the topic with "".
                let mut aliased = false;
                if self.v5() && !dup && self.client_topic_alias_maximum > 0 {
                    match self.rare().outbound_aliases.lookup(&msg.topic) {
                        OutboundTopic::Plain => {}
                        OutboundTopic::Assign(a) => properties.topic_alias = Some(a),
                        OutboundTopic::Reuse(a) => {
                            properties.topic_alias = Some(a);
                            aliased = true;
                        }
                    }
                }
                tally.publish(qos, msg.payload.len());
                // Publish-to-delivery latency; not for retained messages sent because
                // of a SUBSCRIBE (their age is storage time) nor for resends.
                if !dup && !retain {
                    crate::metrics::observe_delivery(
                        now.saturating_duration_since(msg.received_at),
                    );
                }
                if self.flushed.is_some() && (generation.is_some() || !self.gated_is_empty()) {
                    // Behind a durability gate: keep the order of everything sent.
                    let publish = Publish {
                        dup,
                        qos,
                        retain,
                        topic: if aliased {
                            ByteString::new()
                        } else {
                            msg.topic.clone()
                        },
                        packet_id,
                        properties,
                        payload: msg.payload.clone(),
                    };
                    self.send_after(generation, Packet::Publish(publish));
                    return;
                }
                tally.packets += 1;
                let publish = PublishRef {
                    dup,
                    qos,
                    retain,
                    topic: if aliased { "" } else { &msg.topic },
                    packet_id,
                    properties: &properties,
                    payload: &msg.payload,
                };
                if let Err(e) =
                    ferromq_codec::encode_publish_ref(&publish, self.protocol, &mut self.wbuf)
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
                tracing::warn!(client_id = %client_id, addr = %self.peer(), reason = %reason, "closing connection: {problem}");
                Some(*reason)
            }
            Close::KeepAlive => {
                tracing::info!(client_id = %client_id, addr = %self.peer(), "closing connection: keep alive timeout");
                Some(ReasonCode::KEEP_ALIVE_TIMEOUT)
            }
            Close::Kicked(reason) => Some(*reason),
            Close::Shutdown => Some(ReasonCode::SERVER_SHUTTING_DOWN),
            Close::ClientDisconnect { .. } | Close::Network(_) | Close::Storage => None,
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
        let will = match &close {
            Close::ClientDisconnect { keep_will } => will.filter(|_| *keep_will),
            // Shutting down: the broker is going away with every client; no wills.
            Close::Shutdown => None,
            _ => will,
        };
        tracing::info!(client_id = %client_id, addr = %self.peer(), reason = %describe(&close), "client disconnected");
        self.broker
            .close_connection(&self.session, &self.link, will, self.session_expiry);
        // Detached first, linger after: a takeover waits for the detach, and the new
        // connection's CONNACK must not wait for the old socket's lingering close.
        if disconnect_reason.is_some() {
            // Lingering close: after our FIN, read and discard what the client still
            // sends (briefly) instead of closing at once. Closing a socket with unread
            // input makes the kernel send RST, and a RST makes the client drop the
            // DISCONNECT it has not read yet, so it would never learn the reason.
            let _ = tokio::time::timeout(LINGER, async {
                // On the heap: an array here would sit in every connection's future.
                let mut sink = vec![0u8; 1024];
                while let Ok(n) = stream.read(&mut sink).await {
                    if n == 0 {
                        break;
                    }
                }
            })
            .await;
        }
    }
}

/// The `reason` label of `ferromq_disconnects_total` for a close.
fn disconnect_reason(close: &Close) -> DisconnectReason {
    match close {
        Close::ClientDisconnect { .. } => DisconnectReason::Client,
        Close::Network(_) => DisconnectReason::Network,
        Close::KeepAlive => DisconnectReason::KeepAlive,
        Close::Protocol { .. } => DisconnectReason::ProtocolError,
        Close::Kicked(reason) if *reason == ReasonCode::SESSION_TAKEN_OVER => {
            DisconnectReason::TakenOver
        }
        Close::Kicked(_) => DisconnectReason::Administrative,
        Close::Shutdown => DisconnectReason::Shutdown,
        Close::Storage => DisconnectReason::Storage,
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
        Close::Storage => "cannot store a message (disk full or I/O error)".into(),
    }
}

/// Awaits `fut` if there is one (never resolves otherwise).
async fn boxed_opt<F: std::future::Future>(fut: Option<std::pin::Pin<Box<F>>>) -> F::Output {
    match fut {
        Some(f) => f.await,
        None => std::future::pending().await,
    }
}

/// The publish rate limit's pause, if one is running (never resolves otherwise).
async fn sleep_opt(timer: &mut Option<std::pin::Pin<Box<tokio::time::Sleep>>>) {
    match timer {
        Some(t) => t.as_mut().await,
        None => std::future::pending().await,
    }
}
