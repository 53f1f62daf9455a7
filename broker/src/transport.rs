//! From an accepted TCP socket to an MQTT byte stream, per listener protocol:
//!
//! | protocol | before MQTT |
//! |---|---|
//! | `mqtt`  | nothing |
//! | `mqtts` | TLS handshake |
//! | `ws`    | WebSocket upgrade |
//! | `wss`   | TLS handshake, then WebSocket upgrade |
//!
//! Each step runs in the connection's own task (never in the accept loop, so a slow
//! client delays nobody else) and is bounded by `mqtt.handshake_timeout`; the CONNECT
//! timeout starts after it. A failure closes only this socket, with one log line
//! naming the source address, the listener and what went wrong: a timeout, plaintext
//! sent to a TLS port (seen from the first byte, which for TLS is always 0x16), a
//! certificate the verifier refused, an upgrade without the `mqtt` subprotocol.

use std::net::SocketAddr;
use std::sync::Arc;

use ferromq_config::{ListenerConfig, ListenerProtocol};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;

use crate::broker::Broker;
use crate::connection::{self, ConnectionInfo};
use crate::tls::{TlsContext, x509};
use crate::ws;

/// The first byte of every TLS record that starts a handshake (ContentType
/// handshake, RFC 8446 §5.1).
const TLS_HANDSHAKE_RECORD: u8 = 0x16;

/// A listener as the accept path needs it.
#[derive(Debug)]
pub struct Listener {
    pub cfg: ListenerConfig,
    pub name: Arc<str>,
    /// For `mqtts` and `wss`.
    pub tls: Option<Arc<TlsContext>>,
    pub ws: ws::UpgradeRules,
}

impl Listener {
    pub fn new(cfg: ListenerConfig, tls: Option<Arc<TlsContext>>, max_packet_size: u32) -> Self {
        Listener {
            name: cfg.name.as_str().into(),
            ws: ws::UpgradeRules {
                path: cfg.ws_path.as_str().into(),
                max_packet_size: max_packet_size as usize,
            },
            tls,
            cfg,
        }
    }
}

/// What the first byte on a TLS port says the client is speaking, if not TLS.
fn plaintext_kind(first: u8) -> &'static str {
    match first {
        0x10 => "plaintext MQTT (a CONNECT)",
        b'A'..=b'Z' => "plaintext HTTP or text",
        _ => "something other than TLS",
    }
}

/// Runs the listener's handshakes on `socket`, then serves MQTT on it.
///
/// Not an `async fn`: the future it returns is the task's for the connection's whole
/// life, and an `async fn` keeps its arguments (the socket, the address, the
/// listener, the broker: ~90 bytes) in its state next to the futures they moved
/// into. A plain TCP listener's future is `connection::serve`'s alone (which boxes
/// its phases); the TLS and WebSocket handshakes are boxed.
pub fn serve_socket(
    socket: TcpStream,
    peer: SocketAddr,
    l: Arc<Listener>,
    broker: Broker,
) -> impl std::future::Future<Output = ()> {
    let info = ConnectionInfo {
        peer,
        listener: l.name.clone(),
        cert_cn: None,
        use_identity_as_username: l.cfg.tls.use_identity_as_username,
        allow_anonymous: l.cfg.allow_anonymous,
    };
    if l.cfg.protocol == ListenerProtocol::Mqtt {
        futures::future::Either::Left(connection::serve(socket, info, broker))
    } else {
        // The TLS and WebSocket states (rustls' connection, the upgrade, the wrapped
        // streams) make a future of ~24 KB: boxed, so that a plain MQTT socket's task
        // stays small until its CONNECT arrives (10,000 idle sockets in the abuse
        // tests).
        futures::future::Either::Right(Box::pin(serve_wrapped(socket, info, l, broker)))
    }
}

/// [`serve_socket`] for the TLS and WebSocket listeners.
async fn serve_wrapped(
    socket: TcpStream,
    mut info: ConnectionInfo,
    l: Arc<Listener>,
    broker: Broker,
) {
    let peer = info.peer;
    match (l.cfg.protocol, &l.tls) {
        (ListenerProtocol::Mqtt, _) => connection::serve(socket, info, broker).await,
        (ListenerProtocol::Ws, _) => {
            if let Some(ws) = upgrade(socket, &l, peer, &broker).await {
                connection::serve(ws, info, broker).await;
            }
        }
        (ListenerProtocol::Mqtts | ListenerProtocol::Wss, Some(tls)) => {
            let Some(stream) = tls_handshake(socket, tls, peer, &broker).await else {
                return;
            };
            info.cert_cn = stream
                .get_ref()
                .1
                .peer_certificates()
                .and_then(|chain| chain.first())
                .and_then(|leaf| x509::subject_common_name(leaf));
            if l.cfg.protocol == ListenerProtocol::Wss {
                if let Some(ws) = upgrade(stream, &l, peer, &broker).await {
                    connection::serve(ws, info, broker).await;
                }
            } else {
                connection::serve(stream, info, broker).await;
            }
        }
        (ListenerProtocol::Mqtts | ListenerProtocol::Wss, None) => {
            // Server::bind builds a context for every TLS listener; never reached.
            tracing::error!(listener = %l.name, addr = %peer, "TLS listener without certificates");
        }
    }
}

/// Races `fut` against the handshake timeout and shutdown; `None` (logged) if it
/// lost.
async fn bounded<T>(
    fut: impl std::future::Future<Output = T>,
    what: &str,
    peer: SocketAddr,
    listener: &str,
    broker: &Broker,
) -> Option<T> {
    let timeout = broker.mqtt().handshake_timeout;
    tokio::select! {
        r = tokio::time::timeout(timeout, fut) => match r {
            Ok(v) => Some(v),
            Err(_) => {
                tracing::warn!(addr = %peer, listener = %listener, timeout = ?timeout, "connection refused: {what} not completed within the handshake timeout");
                None
            }
        },
        _ = broker.shutdown_token().cancelled() => None,
    }
}

async fn tls_handshake(
    socket: TcpStream,
    tls: &TlsContext,
    peer: SocketAddr,
    broker: &Broker,
) -> Option<tokio_rustls::server::TlsStream<TcpStream>> {
    let listener = tls.listener();
    let acceptor = tls.acceptor();
    let handshake = async {
        // A TLS client speaks first, with a handshake record. Anything else is a
        // client on the wrong port: say what it sent instead of a TLS decode error.
        let mut first = [0u8; 1];
        match socket.peek(&mut first).await {
            Ok(0) => return Err("closed before the TLS handshake".to_owned()),
            Ok(_) if first[0] != TLS_HANDSHAKE_RECORD => {
                return Err(format!(
                    "{} sent to a TLS listener",
                    plaintext_kind(first[0])
                ));
            }
            Ok(_) => {}
            Err(e) => return Err(format!("read failed before the TLS handshake: {e}")),
        }
        acceptor
            .accept(socket)
            .await
            .map_err(|e| format!("TLS handshake failed: {e}"))
    };
    match bounded(handshake, "TLS handshake", peer, listener, broker).await? {
        Ok(stream) => Some(stream),
        Err(why) => {
            tracing::warn!(addr = %peer, listener = %listener, "connection refused: {why}");
            None
        }
    }
}

async fn upgrade<S>(
    stream: S,
    l: &Listener,
    peer: SocketAddr,
    broker: &Broker,
) -> Option<ws::WsStream<S>>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    match bounded(
        ws::accept(stream, &l.ws),
        "WebSocket upgrade",
        peer,
        &l.name,
        broker,
    )
    .await?
    {
        Ok(ws) => Some(ws),
        Err(e) => {
            ws::log_refusal(&e, peer, &l.name);
            None
        }
    }
}
