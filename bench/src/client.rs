//! A bare MQTT 3.1.1 client connection for the load generator.
//!
//! Built on `ferromq-codec` and a tokio `TcpStream` with `TCP_NODELAY`: callers encode
//! many packets into [`Conn::wbuf`] and write them with one `write_all` per batch.
//! MQTT 3.1.1 because every broker under comparison speaks it (rumqttd's `v4`
//! listener). `TCP_QUICKACK` is optional (`--quickack`): it must be re-armed after
//! every read, and it decides whether a broker that leaves Nagle on is measured or
//! the kernel's delayed-ACK timer is (`reference/benchmarks.md`, the Nagle trap).

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use bytes::BytesMut;
use ferromq_codec::{
    ByteString, Connect, ConnectProperties, Packet, ProtocolVersion, QoS, Subscribe,
    SubscriptionOptions,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

/// The protocol every loader connection speaks.
pub const PROTOCOL: ProtocolVersion = ProtocolVersion::V3_1_1;
/// Largest packet the loader accepts (retained bursts, large payloads).
pub const MAX_PACKET: usize = 16 * 1024 * 1024;
/// How long a CONNACK or SUBACK may take.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(30);
/// Keep alive the loader announces; long, so idle connections are not dropped while
/// the loader is busy connecting thousands of others.
pub const KEEP_ALIVE: u16 = 600;

/// How a connection is opened.
#[derive(Debug, Clone)]
pub struct ConnOpts {
    pub addr: SocketAddr,
    /// Local address to bind (spreads ephemeral ports over 127.0.0.x); `None` lets
    /// `connect` choose, which spares a `bind` (and its port search) per connection.
    pub source: Option<IpAddr>,
    /// Set `TCP_NODELAY`. Off for idle connections, which write one packet at a time
    /// (Nagle never holds back a segment when nothing is unacknowledged), to spare a
    /// system call per connection on the loader's saturated core.
    pub nodelay: bool,
    pub client_id: String,
    pub clean: bool,
    pub quickack: bool,
    /// Read buffer size; small for idle connections.
    pub read_buffer: usize,
}

/// One open MQTT connection.
pub struct Conn {
    pub stream: TcpStream,
    pub rbuf: BytesMut,
    pub wbuf: BytesMut,
    pub quickack: bool,
    next_packet_id: u16,
}

impl Conn {
    /// Opens the socket, sends CONNECT and waits for a successful CONNACK.
    pub async fn connect(opts: &ConnOpts) -> Result<Conn> {
        let socket = if opts.addr.is_ipv4() {
            TcpSocket::new_v4()?
        } else {
            TcpSocket::new_v6()?
        };
        if let Some(src) = opts.source {
            socket
                .bind(SocketAddr::new(src, 0))
                .with_context(|| format!("bind {src}"))?;
        }
        let stream = socket
            .connect(opts.addr)
            .await
            .with_context(|| format!("connect {}", opts.addr))?;
        if opts.nodelay {
            stream.set_nodelay(true)?;
        }
        let mut conn = Conn {
            stream,
            rbuf: BytesMut::with_capacity(opts.read_buffer),
            wbuf: BytesMut::with_capacity(256),
            quickack: opts.quickack,
            next_packet_id: 0,
        };
        conn.rearm_quickack();
        let connect = Connect {
            protocol: PROTOCOL,
            clean_start: opts.clean,
            keep_alive: KEEP_ALIVE,
            client_id: ByteString::from(opts.client_id.as_str()),
            will: None,
            username: None,
            password: None,
            properties: ConnectProperties::default(),
        };
        conn.send(&Packet::Connect(Box::new(connect))).await?;
        match tokio::time::timeout(HANDSHAKE_TIMEOUT, conn.read_packet()).await {
            Ok(Ok(Packet::ConnAck(ack))) if ack.reason_code.0 == 0 => Ok(conn),
            Ok(Ok(Packet::ConnAck(ack))) => bail!("CONNACK refused: {}", ack.reason_code.0),
            Ok(Ok(other)) => bail!("expected CONNACK, got {}", other.name()),
            Ok(Err(e)) => Err(e),
            Err(_) => bail!("no CONNACK within {HANDSHAKE_TIMEOUT:?}"),
        }
    }

    /// A fresh non-zero packet identifier.
    pub fn packet_id(&mut self) -> u16 {
        self.next_packet_id = self.next_packet_id.wrapping_add(1);
        if self.next_packet_id == 0 {
            self.next_packet_id = 1;
        }
        self.next_packet_id
    }

    /// Encodes one packet into the write buffer.
    pub fn encode(&mut self, packet: &Packet) -> Result<()> {
        ferromq_codec::encode(packet, PROTOCOL, &mut self.wbuf)?;
        Ok(())
    }

    /// Writes everything buffered in one `write_all`.
    pub async fn flush(&mut self) -> Result<()> {
        if !self.wbuf.is_empty() {
            self.stream.write_all(&self.wbuf).await?;
            self.wbuf.clear();
        }
        Ok(())
    }

    /// Encodes and writes one packet.
    pub async fn send(&mut self, packet: &Packet) -> Result<()> {
        self.encode(packet)?;
        self.flush().await
    }

    /// The next complete packet already in the read buffer, if any.
    pub fn try_decode(&mut self) -> Result<Option<Packet>> {
        Ok(ferromq_codec::decode(&mut self.rbuf, PROTOCOL, MAX_PACKET)?)
    }

    /// Reads more bytes into the buffer; error on EOF.
    pub async fn fill(&mut self) -> Result<usize> {
        if self.rbuf.capacity() - self.rbuf.len() < 4096 {
            self.rbuf.reserve(64 * 1024);
        }
        let n = self.stream.read_buf(&mut self.rbuf).await?;
        if n == 0 {
            bail!("connection closed by the broker");
        }
        self.rearm_quickack();
        Ok(n)
    }

    /// Reads until one complete packet is decoded.
    pub async fn read_packet(&mut self) -> Result<Packet> {
        loop {
            if let Some(p) = self.try_decode()? {
                return Ok(p);
            }
            self.fill().await?;
        }
    }

    /// TCP_QUICKACK is cleared by the kernel after use; set it again after each read.
    pub fn rearm_quickack(&self) {
        if self.quickack {
            let _ = socket2::SockRef::from(&self.stream).set_tcp_quickack(true);
        }
    }

    /// Subscribes to `filters` and waits for the SUBACK; fails on a refused filter.
    pub async fn subscribe(&mut self, filters: &[String], qos: QoS) -> Result<()> {
        let packet_id = self.packet_id();
        let sub = Subscribe {
            packet_id,
            properties: Default::default(),
            filters: filters
                .iter()
                .map(|f| {
                    (
                        ByteString::from(f.as_str()),
                        SubscriptionOptions {
                            qos,
                            ..Default::default()
                        },
                    )
                })
                .collect(),
        };
        self.send(&Packet::Subscribe(sub)).await?;
        let deadline = tokio::time::Instant::now() + HANDSHAKE_TIMEOUT;
        loop {
            let p = tokio::time::timeout_at(deadline, self.read_packet())
                .await
                .map_err(|_| anyhow::anyhow!("no SUBACK within {HANDSHAKE_TIMEOUT:?}"))??;
            if let Packet::SubAck(ack) = p {
                if ack.reason_codes.iter().any(|c| c.0 >= 0x80) {
                    bail!("subscription refused: {:?}", ack.reason_codes);
                }
                return Ok(());
            }
        }
    }

    /// Closes with RST (SO_LINGER 0) so no socket lingers in TIME_WAIT.
    pub fn abort(self) {
        let _ = socket2::SockRef::from(&self.stream).set_linger(Some(Duration::ZERO));
        drop(self.stream);
    }
}
