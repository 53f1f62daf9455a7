//! MQTT over WebSocket (MQTT 5 §6, 3.1.1 §6) for `ws` and `wss` listeners.
//!
//! The upgrade is tungstenite's server handshake with a check of our own: the
//! request must ask for the listener's path (default `/mqtt`, else 404) and offer the
//! `mqtt` subprotocol, which the answer then selects [MQTT-6.0.0-3] [MQTT-6.0.0-4];
//! an upgrade without it is refused with 400 and a log line naming the source. After
//! the upgrade, [`WsStream`] turns the binary messages back into the byte stream
//! that `connection::serve` reads, so the MQTT code is the same for every transport:
//!
//! - reads: each binary message's payload (a `Bytes`, not copied) is handed out as
//!   the caller's buffer allows; a message may hold part of a packet or several
//!   [MQTT-6.0.0-2]; pings are answered by tungstenite; a close frame is end of
//!   stream; a text frame is an error that closes the connection [MQTT-6.0.0-1];
//! - writes: each `poll_write` (the connection writes one batch of packets per
//!   wake-up) becomes one binary message; `poll_flush` sends it.
//!
//! Bound: a message (or frame) larger than the maximum packet size plus 64 KiB is
//! refused by tungstenite before it is buffered whole, and the connection closes with
//! a log line.

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use bytes::{Buf, Bytes};
use futures::{Sink, Stream};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::handshake::server::{ErrorResponse, Request, Response};
use tokio_tungstenite::tungstenite::http::{HeaderValue, StatusCode};
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::{Error as WsError, Message};

/// The subprotocol MQTT clients offer and the broker selects.
pub const SUBPROTOCOL: &str = "mqtt";
/// Room above the maximum packet size for one WebSocket message.
const MESSAGE_SLACK: usize = 64 * 1024;

/// Why an upgrade was refused, for the caller's log line.
#[derive(Debug, thiserror::Error)]
pub enum UpgradeError {
    #[error("{0}")]
    Refused(String),
    #[error("WebSocket handshake failed: {0}")]
    Handshake(WsError),
}

/// What the upgrade checks.
#[derive(Debug, Clone)]
pub struct UpgradeRules {
    pub path: Arc<str>,
    pub max_packet_size: usize,
}

fn refuse(status: StatusCode, why: &str) -> ErrorResponse {
    let mut r = ErrorResponse::new(Some(format!("{why}\n")));
    *r.status_mut() = status;
    r.headers_mut()
        .insert("content-type", HeaderValue::from_static("text/plain"));
    r
}

/// Whether a `Sec-WebSocket-Protocol` header list offers `mqtt`.
fn offers_mqtt(req: &Request) -> bool {
    req.headers()
        .get_all("sec-websocket-protocol")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|p| p.trim() == SUBPROTOCOL)
}

/// Checks path and subprotocol; selects `mqtt` in the answer.
fn check(rules: &UpgradeRules, req: &Request, mut resp: Response) -> Result<Response, String> {
    let path = req.uri().path();
    if path != &*rules.path {
        return Err(format!(
            "404 path `{path}` (this listener serves `{}`)",
            rules.path
        ));
    }
    if !offers_mqtt(req) {
        return Err("400 no `mqtt` in Sec-WebSocket-Protocol [MQTT-6.0.0-3]".to_owned());
    }
    resp.headers_mut().insert(
        "sec-websocket-protocol",
        HeaderValue::from_static(SUBPROTOCOL),
    );
    Ok(resp)
}

/// Runs the server side of the upgrade on `stream`.
///
/// # Errors
/// A refused upgrade (the client got a 4xx answer) or a failed handshake (not
/// HTTP, not an upgrade, I/O error); the caller logs it with the source address.
pub async fn accept<S>(stream: S, rules: &UpgradeRules) -> Result<WsStream<S>, UpgradeError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let mut refused = None;
    // The callback's signature is tungstenite's: its error is the HTTP answer.
    #[allow(clippy::result_large_err)]
    let callback = |req: &Request, resp: Response| match check(rules, req, resp) {
        Ok(resp) => Ok(resp),
        Err(why) => {
            let status = if why.starts_with("404") {
                StatusCode::NOT_FOUND
            } else {
                StatusCode::BAD_REQUEST
            };
            let answer = refuse(status, &why);
            refused = Some(why);
            Err(answer)
        }
    };
    let limit = rules.max_packet_size.saturating_add(MESSAGE_SLACK);
    let config = WebSocketConfig::default()
        .max_message_size(Some(limit))
        .max_frame_size(Some(limit));
    match tokio_tungstenite::accept_hdr_async_with_config(stream, callback, Some(config)).await {
        Ok(ws) => Ok(WsStream {
            ws,
            pending: Bytes::new(),
        }),
        Err(e) => Err(match refused {
            Some(why) => UpgradeError::Refused(format!("WebSocket upgrade refused: {why}")),
            None => UpgradeError::Handshake(e),
        }),
    }
}

/// Logs a failed upgrade: one line naming the source and the listener.
pub fn log_refusal(e: &UpgradeError, peer: SocketAddr, listener: &str) {
    tracing::warn!(addr = %peer, listener = %listener, "connection refused: {e}");
}

/// A WebSocket connection as a byte stream (see the module docs).
pub struct WsStream<S> {
    ws: WebSocketStream<S>,
    /// The unread rest of the last binary message.
    pending: Bytes,
}

fn io_error(e: WsError) -> io::Error {
    match e {
        WsError::Io(e) => e,
        WsError::ConnectionClosed | WsError::AlreadyClosed => {
            io::Error::new(io::ErrorKind::NotConnected, e)
        }
        e => io::Error::new(io::ErrorKind::InvalidData, e),
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncRead for WsStream<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        loop {
            if !this.pending.is_empty() {
                let n = this.pending.len().min(buf.remaining());
                buf.put_slice(&this.pending[..n]);
                this.pending.advance(n);
                return Poll::Ready(Ok(()));
            }
            match ready!(Pin::new(&mut this.ws).poll_next(cx)) {
                Some(Ok(Message::Binary(data))) => this.pending = data,
                Some(Ok(Message::Ping(_) | Message::Pong(_) | Message::Frame(_))) => {}
                Some(Ok(Message::Text(_))) => {
                    return Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        "text frame: MQTT over WebSocket uses binary frames [MQTT-6.0.0-1]",
                    )));
                }
                // A close frame or the end of the stream: end of file.
                Some(Ok(Message::Close(_))) | None => return Poll::Ready(Ok(())),
                Some(Err(WsError::ConnectionClosed | WsError::AlreadyClosed)) => {
                    return Poll::Ready(Ok(()));
                }
                Some(Err(e)) => return Poll::Ready(Err(io_error(e))),
            }
        }
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncWrite for WsStream<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        ready!(Pin::new(&mut this.ws).poll_ready(cx)).map_err(io_error)?;
        Pin::new(&mut this.ws)
            .start_send(Message::Binary(Bytes::copy_from_slice(buf)))
            .map_err(io_error)?;
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().ws)
            .poll_flush(cx)
            .map_err(io_error)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match ready!(Pin::new(&mut self.get_mut().ws).poll_close(cx)) {
            Ok(()) | Err(WsError::ConnectionClosed | WsError::AlreadyClosed) => Poll::Ready(Ok(())),
            Err(e) => Poll::Ready(Err(io_error(e))),
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use futures::{SinkExt, StreamExt};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;

    fn rules() -> UpgradeRules {
        UpgradeRules {
            path: "/mqtt".into(),
            max_packet_size: 1024,
        }
    }

    async fn upgrade(
        path: &str,
        protocol: Option<&str>,
    ) -> (
        Result<WsStream<tokio::io::DuplexStream>, UpgradeError>,
        Result<
            (
                WebSocketStream<tokio::io::DuplexStream>,
                tokio_tungstenite::tungstenite::handshake::client::Response,
            ),
            WsError,
        >,
    ) {
        let (client, server) = tokio::io::duplex(1 << 16);
        let mut req = format!("ws://localhost{path}")
            .into_client_request()
            .unwrap();
        if let Some(p) = protocol {
            req.headers_mut()
                .insert("sec-websocket-protocol", HeaderValue::from_str(p).unwrap());
        }
        let rules = rules();
        tokio::join!(
            accept(server, &rules),
            tokio_tungstenite::client_async(req, client)
        )
    }

    #[tokio::test]
    async fn upgrade_selects_mqtt_and_carries_bytes_both_ways() {
        let (server, client) = upgrade("/mqtt", Some("mqttv3.1, mqtt")).await;
        let mut server = server.unwrap();
        let (mut client, resp) = client.unwrap();
        assert_eq!(resp.headers()["sec-websocket-protocol"], "mqtt");

        // One message split across reads, two messages read as one stream.
        client
            .send(Message::Binary(Bytes::from_static(b"\x10\x02ab")))
            .await
            .unwrap();
        client
            .send(Message::Binary(Bytes::from_static(b"cd")))
            .await
            .unwrap();
        let mut got = [0u8; 3];
        server.read_exact(&mut got).await.unwrap();
        assert_eq!(&got, b"\x10\x02a");
        let mut got = [0u8; 3];
        server.read_exact(&mut got).await.unwrap();
        assert_eq!(&got, b"bcd");

        server.write_all(b"\x20\x02\x00\x00").await.unwrap();
        server.flush().await.unwrap();
        match client.next().await.unwrap().unwrap() {
            Message::Binary(b) => assert_eq!(&b[..], b"\x20\x02\x00\x00"),
            other => panic!("expected a binary message, got {other:?}"),
        }

        // Text frames are refused [MQTT-6.0.0-1]; a close is end of stream.
        client.send(Message::Text("hi".into())).await.unwrap();
        let err = server.read(&mut got).await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidData);
    }

    #[tokio::test]
    async fn close_frame_is_end_of_stream() {
        let (server, client) = upgrade("/mqtt", Some("mqtt")).await;
        let mut server = server.unwrap();
        let (mut client, _) = client.unwrap();
        client.close(None).await.unwrap();
        let mut buf = [0u8; 8];
        assert_eq!(server.read(&mut buf).await.unwrap(), 0);
    }

    #[tokio::test]
    async fn upgrade_without_mqtt_subprotocol_is_refused_with_400() {
        for protocol in [None, Some("chat, superchat")] {
            let (server, client) = upgrade("/mqtt", protocol).await;
            match server {
                Err(UpgradeError::Refused(why)) => assert!(why.contains("400"), "{why}"),
                Err(e) => panic!("expected a refusal, got {e}"),
                Ok(_) => panic!("upgrade without `mqtt` accepted"),
            }
            match client {
                Err(WsError::Http(resp)) => assert_eq!(resp.status(), 400),
                other => panic!("client expected HTTP 400, got {:?}", other.map(|_| ())),
            }
        }
    }

    #[tokio::test]
    async fn wrong_path_is_refused_with_404() {
        let (server, client) = upgrade("/ws", Some("mqtt")).await;
        assert!(matches!(server, Err(UpgradeError::Refused(ref why)) if why.contains("404")));
        match client {
            Err(WsError::Http(resp)) => assert_eq!(resp.status(), 404),
            other => panic!("client expected HTTP 404, got {:?}", other.map(|_| ())),
        }
    }

    #[tokio::test]
    async fn oversized_message_fails_the_read() {
        let (server, client) = upgrade("/mqtt", Some("mqtt")).await;
        let mut server = server.unwrap();
        let (mut client, _) = client.unwrap();
        let big = Bytes::from(vec![0u8; 1024 + MESSAGE_SLACK + 1]);
        let send = tokio::spawn(async move {
            let _ = client.send(Message::Binary(big)).await;
            client
        });
        let mut buf = [0u8; 64];
        assert!(server.read(&mut buf).await.is_err());
        // Closing our end lets a client still writing the rest finish with an error.
        drop(server);
        drop(send.await);
    }
}
