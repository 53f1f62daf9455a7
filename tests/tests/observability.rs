//! The operators' HTTP listener seen from the wire: the ready file lists it, an
//! admin kick reaches a 5.0 client as DISCONNECT 0x98 (Administrative action) byte
//! for byte, and `/readyz` turns 503 while the broker drains at shutdown. (The
//! metrics, the Prometheus server, `ferromq ctl` and the token checks are covered
//! by `tests/python/test_observability.py`.)

#![allow(clippy::unwrap_used)]

use std::net::SocketAddr;
use std::time::Duration;

use ferromq_tests::mqtt::Props;
use ferromq_tests::wait::POLL_INTERVAL;
use ferromq_tests::{RawClient, TestNode};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;

const CONFIG: &str = "listener 0 127.0.0.1\nsys_interval 0\n";
const ADMINISTRATIVE_ACTION: u8 = 0x98;
const SERVER_SHUTTING_DOWN: u8 = 0x8B;

/// One HTTP/1.1 request with `Connection: close`; returns (status, body).
async fn http(addr: SocketAddr, method: &str, path: &str) -> std::io::Result<(u16, String)> {
    let mut s = TcpStream::connect(addr).await?;
    let req = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Length: 0\r\n\r\n"
    );
    s.write_all(req.as_bytes()).await?;
    let mut raw = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut raw))
        .await
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "http read"))??;
    let text = String::from_utf8_lossy(&raw).into_owned();
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    Ok((status, body))
}

fn http_addr(node: &TestNode) -> SocketAddr {
    node.http_addr()
        .unwrap_or_else(|| panic!("no http listener in {:?}", node.listeners()))
}

#[tokio::test]
async fn ready_file_lists_http_and_health_answers() {
    let node = TestNode::start(CONFIG).await;
    let http_listener = node
        .listeners()
        .iter()
        .find(|l| l.protocol == "http")
        .expect("an http entry in the ready file");
    assert_eq!(http_listener.name, "http");
    assert_ne!(http_listener.addr.port(), 0);
    let addr = http_addr(&node);
    assert_eq!(http(addr, "GET", "/healthz").await.unwrap().0, 200);
    let (status, body) = http(addr, "GET", "/readyz").await.unwrap();
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("\"ready\":true"), "{body}");
}

#[tokio::test]
async fn admin_kick_sends_v5_disconnect_administrative_action() {
    let node = TestNode::start(CONFIG).await;
    // Session Expiry Interval 300 s: the session outlives the connection.
    let props = Props::new().u32(0x11, 300);
    let (mut client, _) = RawClient::connect_v5(node.mqtt_addr(), "kick-me", &props)
        .await
        .unwrap();
    let (status, body) = http(http_addr(&node), "POST", "/api/v1/clients/kick-me/kick")
        .await
        .unwrap();
    assert_eq!(status, 200, "{body}");
    let reason = client
        .expect_disconnect_then_close(&[ADMINISTRATIVE_ACTION], Duration::from_secs(10))
        .await;
    assert_eq!(reason, ADMINISTRATIVE_ACTION);
    node.wait_log_contains("kicked 0x98", Duration::from_secs(10))
        .await;
    // The session stays (offline), as after any disconnect.
    let (status, body) = http(http_addr(&node), "GET", "/api/v1/clients/kick-me")
        .await
        .unwrap();
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("\"connected\":false"), "{body}");
}

#[tokio::test]
async fn readyz_reports_draining_during_shutdown() {
    let mut node = TestNode::start(CONFIG).await;
    let addr = http_addr(&node);
    // A 5.0 client that keeps its socket open: the broker lingers on it (up to 1 s)
    // after sending DISCONNECT 0x8B, so the drain lasts long enough to observe.
    let (mut client, _) = RawClient::connect_v5(node.mqtt_addr(), "lingerer", &Props::new())
        .await
        .unwrap();
    node.sigterm();
    let saw_503 = async {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            if let Ok((503, body)) = http(addr, "GET", "/readyz").await
                && body.contains("draining")
            {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(POLL_INTERVAL).await;
        }
    };
    let (saw, reason) = tokio::join!(
        saw_503,
        client.expect_disconnect_then_close(&[SERVER_SHUTTING_DOWN], Duration::from_secs(10))
    );
    assert!(
        saw,
        "/readyz never answered 503 while draining; log:\n{}",
        node.log()
    );
    assert_eq!(reason, SERVER_SHUTTING_DOWN);
    let status = node.wait_exit(Duration::from_secs(10)).await;
    assert_eq!(status.and_then(|s| s.code()), Some(0), "{}", node.log());
}
