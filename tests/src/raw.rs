//! A minimal MQTT client over a raw `TcpStream`, for sending exactly the bytes a
//! test wants (including malformed ones) and seeing exactly what comes back.
//!
//! It does no protocol work on its own: no keepalive, no automatic acks. Reads
//! keep partial packets in the client's buffer, so [`RawClient::read_packet`] is
//! cancel-safe and can be used with a timeout.
//!
//! Layout: [`RawClient`] (connect, send, read), [`Incoming`] (what a read saw),
//! and helpers that assert common outcomes: [`RawClient::expect_packet`],
//! [`RawClient::expect_closed`], [`RawClient::expect_disconnect_then_close`].

use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use bytes::BytesMut;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;

use crate::mqtt::{self, Connack, Disconnect, Props, RawPacket, check_frame, kind};

/// How long the helpers wait for an answer the broker should give at once.
pub const REPLY_TIMEOUT: Duration = Duration::from_secs(5);

/// The largest packet the client accepts from the broker; larger is a test failure.
const MAX_INCOMING: usize = 16 * 1024 * 1024;

/// What one [`RawClient::read_packet`] call saw.
#[derive(Debug)]
pub enum Incoming {
    /// A complete packet.
    Packet(RawPacket),
    /// The broker closed the connection (EOF, or a reset) on a packet boundary.
    Closed(CloseKind),
    /// Nothing complete arrived before the timeout.
    TimedOut,
    /// The broker sent bytes that are not MQTT framing, or a packet cut by EOF.
    Garbage(String),
}

/// How the connection ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CloseKind {
    /// Orderly close: read returned 0.
    Eof,
    /// Connection reset or aborted.
    Reset,
}

/// The byte stream under a [`RawClient`]: TCP, or TLS over TCP.
pub trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

/// A raw MQTT connection. `v5` records which protocol the client spoke in its
/// CONNECT, so decoders pick the right packet forms.
pub struct RawClient {
    stream: Box<dyn Io>,
    buf: BytesMut,
    local: SocketAddr,
    label: String,
    v5: bool,
}

impl RawClient {
    /// Opens a TCP connection and sends nothing.
    pub async fn tcp(addr: SocketAddr) -> io::Result<RawClient> {
        let stream = tokio::time::timeout(REPLY_TIMEOUT, TcpStream::connect(addr))
            .await
            .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "TCP connect timed out"))??;
        stream.set_nodelay(true)?;
        let local = stream.local_addr()?;
        Ok(RawClient {
            stream: Box::new(stream),
            buf: BytesMut::with_capacity(8 * 1024),
            local,
            label: local.to_string(),
            v5: false,
        })
    }

    /// Opens a TCP connection, completes a TLS handshake for `localhost` with
    /// `config` (see [`crate::tls`]) and sends nothing. A refused client
    /// certificate may surface here or, with TLS 1.3, at the first read.
    pub async fn tls(
        addr: SocketAddr,
        config: std::sync::Arc<rustls::ClientConfig>,
    ) -> io::Result<RawClient> {
        let stream = tokio::time::timeout(REPLY_TIMEOUT, TcpStream::connect(addr))
            .await
            .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "TCP connect timed out"))??;
        stream.set_nodelay(true)?;
        let local = stream.local_addr()?;
        let name = rustls_pki_types::ServerName::try_from("localhost")
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
        let connector = tokio_rustls::TlsConnector::from(config);
        let stream = tokio::time::timeout(REPLY_TIMEOUT, connector.connect(name, stream))
            .await
            .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "TLS handshake timed out"))??;
        Ok(RawClient {
            stream: Box::new(stream),
            buf: BytesMut::with_capacity(8 * 1024),
            local,
            label: format!("{local} (TLS)"),
            v5: false,
        })
    }

    /// Connects with MQTT 3.1.1 (Clean Session) and asserts CONNACK return code 0.
    pub async fn connect_v311(
        addr: SocketAddr,
        client_id: &str,
        keepalive: u16,
    ) -> anyhow::Result<RawClient> {
        let mut client = RawClient::tcp(addr).await?;
        client.label = format!("{client_id} ({})", client.local);
        client
            .send(&mqtt::connect_v311(client_id, keepalive))
            .await?;
        let connack = client.expect_connack(REPLY_TIMEOUT).await?;
        anyhow::ensure!(
            connack.code == 0,
            "{client_id}: CONNACK return code {:#04x}",
            connack.code
        );
        Ok(client)
    }

    /// Connects with MQTT 5.0 (Clean Start, the given CONNECT properties) and
    /// asserts CONNACK reason Success. Returns the CONNACK for its properties
    /// (Topic Alias Maximum, Maximum Packet Size, ...).
    pub async fn connect_v5(
        addr: SocketAddr,
        client_id: &str,
        props: &Props,
    ) -> anyhow::Result<(RawClient, Connack)> {
        let mut client = RawClient::tcp(addr).await?;
        client.label = format!("{client_id} ({})", client.local);
        client.v5 = true;
        client.send(&mqtt::connect_v5(client_id, 60, props)).await?;
        let connack = client.expect_connack(REPLY_TIMEOUT).await?;
        anyhow::ensure!(
            connack.code == 0,
            "{client_id}: CONNACK reason code {:#04x}",
            connack.code
        );
        Ok((client, connack))
    }

    /// The client's own address: what the broker sees as the peer address and
    /// names in its log before a client id is known.
    pub fn local_addr(&self) -> SocketAddr {
        self.local
    }

    /// Whether the packets this client reads are decoded in their 5.0 forms.
    pub fn is_v5(&self) -> bool {
        self.v5
    }

    /// Decode the broker's packets in their 5.0 (`true`) or 3.1.1 forms, for
    /// clients that sent their CONNECT by hand.
    pub fn set_v5(&mut self, v5: bool) {
        self.v5 = v5;
    }

    /// Writes `bytes` as they are.
    pub async fn send(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.stream.write_all(bytes).await?;
        self.stream.flush().await
    }

    /// Half-closes the connection: the broker reads EOF, we can still read.
    pub async fn shutdown_write(&mut self) -> io::Result<()> {
        self.stream.shutdown().await
    }

    /// Reads the next packet, waiting at most `timeout`.
    pub async fn read_packet(&mut self, timeout: Duration) -> Incoming {
        let deadline = Instant::now() + timeout;
        loop {
            match check_frame(&self.buf, MAX_INCOMING) {
                Ok(Some((header, total))) => {
                    let mut packet = self.buf.split_to(total);
                    let first = packet[0];
                    let body = packet.split_off(header).freeze();
                    return Incoming::Packet(RawPacket { first, body });
                }
                Ok(None) => {}
                Err(e) => return Incoming::Garbage(format!("{e}: {}", hex(&self.buf))),
            }
            match tokio::time::timeout_at(deadline, self.stream.read_buf(&mut self.buf)).await {
                Err(_) => return Incoming::TimedOut,
                Ok(Ok(0)) if self.buf.is_empty() => return Incoming::Closed(CloseKind::Eof),
                Ok(Ok(0)) => {
                    return Incoming::Garbage(format!(
                        "EOF inside a packet after {}",
                        hex(&self.buf)
                    ));
                }
                Ok(Ok(_)) => {}
                Ok(Err(e)) if is_reset(&e) => return Incoming::Closed(CloseKind::Reset),
                Ok(Err(e)) => return Incoming::Garbage(format!("read error: {e}")),
            }
        }
    }

    /// Reads the next packet; panics if the connection closed or nothing came.
    pub async fn expect_packet(&mut self, timeout: Duration) -> RawPacket {
        match self.read_packet(timeout).await {
            Incoming::Packet(p) => p,
            other => panic!("{}: expected a packet, got {other:?}", self.label),
        }
    }

    /// Reads the CONNACK that must answer a CONNECT.
    pub async fn expect_connack(&mut self, timeout: Duration) -> anyhow::Result<Connack> {
        match self.read_packet(timeout).await {
            Incoming::Packet(p) => Ok(Connack::parse(&p, self.v5)
                .map_err(|e| anyhow::anyhow!("{}: bad CONNACK {p}: {e}", self.label))?),
            other => anyhow::bail!("{}: expected CONNACK, got {other:?}", self.label),
        }
    }

    /// Reads until the broker closes the connection and returns the packets that
    /// came before the close. Panics if the connection is still open after
    /// `timeout` or the broker sent something that is not MQTT framing.
    pub async fn expect_closed(&mut self, timeout: Duration) -> Vec<RawPacket> {
        let deadline = Instant::now() + timeout;
        let mut seen = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.read_packet(left).await {
                Incoming::Packet(p) => seen.push(p),
                Incoming::Closed(_) => return seen,
                Incoming::TimedOut => panic!(
                    "{}: connection still open after {timeout:?}; packets received: {}",
                    self.label,
                    describe(&seen)
                ),
                Incoming::Garbage(g) => panic!(
                    "{}: expected the connection to close, got garbage {g}; packets before: {}",
                    self.label,
                    describe(&seen)
                ),
            }
        }
    }

    /// Asserts the broker closes the connection without sending any packet: the
    /// only outcome 3.1.1 allows for a protocol violation, and the outcome for
    /// anything before a valid CONNECT.
    pub async fn expect_closed_silently(&mut self, timeout: Duration) {
        let seen = self.expect_closed(timeout).await;
        assert!(
            seen.is_empty(),
            "{}: expected the connection to close with no packet, got {}",
            self.label,
            describe(&seen)
        );
    }

    /// Asserts the broker sends exactly one DISCONNECT whose reason is one of
    /// `allowed` and then closes the connection. Returns the reason it sent.
    pub async fn expect_disconnect_then_close(&mut self, allowed: &[u8], timeout: Duration) -> u8 {
        let seen = self.expect_closed(timeout).await;
        let [packet] = seen.as_slice() else {
            panic!(
                "{}: expected exactly one DISCONNECT (reason one of {}) before the close, got {}",
                self.label,
                codes(allowed),
                describe(&seen)
            );
        };
        let disconnect = Disconnect::parse(packet)
            .unwrap_or_else(|e| panic!("{}: expected DISCONNECT, got {packet}: {e}", self.label));
        assert!(
            allowed.contains(&disconnect.reason),
            "{}: DISCONNECT reason {:#04x}, expected one of {} (reason string: {:?})",
            self.label,
            disconnect.reason,
            codes(allowed),
            disconnect.props.get_string(mqtt::prop::REASON_STRING)
        );
        disconnect.reason
    }

    /// Sends PINGREQ and waits for PINGRESP: proves the connection is alive.
    pub async fn ping(&mut self) {
        self.send(&mqtt::pingreq())
            .await
            .unwrap_or_else(|e| panic!("{}: send PINGREQ: {e}", self.label));
        let p = self.expect_packet(REPLY_TIMEOUT).await;
        assert_eq!(
            p.kind(),
            kind::PINGRESP,
            "{}: expected PINGRESP, got {p}",
            self.label
        );
    }
}

impl std::fmt::Debug for RawClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RawClient")
            .field("label", &self.label)
            .field("v5", &self.v5)
            .field("buffered", &self.buf.len())
            .finish()
    }
}

fn is_reset(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionReset
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::BrokenPipe
    )
}

/// Lower-case hex of at most the first 64 bytes.
pub fn hex(bytes: &[u8]) -> String {
    let mut s: String = bytes.iter().take(64).map(|b| format!("{b:02x}")).collect();
    if bytes.len() > 64 {
        s.push_str(&format!("... ({} bytes)", bytes.len()));
    }
    s
}

fn describe(packets: &[RawPacket]) -> String {
    if packets.is_empty() {
        return "none".to_owned();
    }
    packets
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}

fn codes(allowed: &[u8]) -> String {
    allowed
        .iter()
        .map(|c| format!("{c:#04x}"))
        .collect::<Vec<_>>()
        .join("/")
}
