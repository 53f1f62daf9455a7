//! TLS, mutual TLS and WebSocket listeners, seen from the network: certificates made
//! at test time with rcgen (`ferromq_tests::certs`), a rustls client, raw HTTP.
//!
//! Each refusal must close only the offending socket, with a log line naming its
//! source address, while a well-behaved client on the same broker keeps working.
//! Real third-party clients (mosquitto_pub/sub, paho-mqtt over ws/wss) are in
//! `tests/python/test_tls_ws.py`.

use std::net::SocketAddr;
use std::time::Duration;

use ferromq_tests::certs::{CLIENT_CN, TestCerts};
use ferromq_tests::mqtt::{self, Props};
use ferromq_tests::node::EXIT_CONFIG;
use ferromq_tests::raw::REPLY_TIMEOUT;
use ferromq_tests::tls::{client_config, client_config_versions};
use ferromq_tests::{Incoming, Launch, RawClient, StartError, TestNode, Witness};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;

const LOG_WAIT: Duration = Duration::from_secs(10);

fn certs() -> (tempfile::TempDir, TestCerts) {
    let dir = tempfile::tempdir().expect("temp dir");
    let certs = TestCerts::generate(dir.path()).expect("generating test certificates");
    (dir, certs)
}

/// A plain listener (for witnesses) and an mqtts listener with the CA, the server
/// certificate and `extra` directives.
fn mqtts_config(c: &TestCerts, extra: &str) -> String {
    format!(
        "listener 0 127.0.0.1\nsys_interval 0\nlistener 0 127.0.0.1\ncafile {}\ncertfile {}\nkeyfile {}\n{extra}",
        c.cert("ca").display(),
        c.cert("server").display(),
        c.key("server").display(),
    )
}

/// TLS client trusting the test CA, presenting `client` (a certs file stem) if given.
async fn tls_client(
    addr: SocketAddr,
    c: &TestCerts,
    client: Option<&str>,
) -> std::io::Result<RawClient> {
    let (cert, key) = match client {
        Some(name) => (c.cert(name), c.key(name)),
        None => Default::default(),
    };
    let config = client_config(
        &c.cert("ca"),
        client.map(|_| (cert.as_path(), key.as_path())),
    )
    .expect("client TLS config");
    RawClient::tls(addr, config).await
}

/// Connects over TLS with MQTT 5 and expects CONNACK Success.
async fn tls_connect(addr: SocketAddr, c: &TestCerts, client: Option<&str>, id: &str) -> RawClient {
    let mut raw = tls_client(addr, c, client)
        .await
        .unwrap_or_else(|e| panic!("{id}: TLS handshake failed: {e}"));
    raw.set_v5(true);
    raw.send(&mqtt::connect_v5(id, 60, &Props::new()))
        .await
        .expect("send CONNECT");
    let ack = raw.expect_connack(REPLY_TIMEOUT).await.expect("CONNACK");
    assert_eq!(ack.code, 0, "{id}: CONNACK reason");
    raw
}

#[tokio::test]
async fn mtls_good_certificate_is_accepted_and_its_cn_is_the_username() {
    let (_dir, c) = certs();
    let node = TestNode::start(&mqtts_config(
        &c,
        "require_certificate true\nuse_identity_as_username true\n",
    ))
    .await;
    let addr = node.listener_addr("mqtts");
    let mut client = tls_connect(addr, &c, Some("client"), "cn-user").await;
    client.ping().await;
    let line = node
        .wait_log_line("of the client connecting", LOG_WAIT, |l| {
            l.contains("client connected") && l.contains("client_id=cn-user")
        })
        .await;
    assert!(
        line.contains(&format!("username=\"{CLIENT_CN}\"")),
        "the certificate's CN is the username: {line}"
    );
    assert!(line.contains("listener=listener-2"), "{line}");

    // TLS 1.2 works too.
    let config = client_config_versions(
        &c.cert("ca"),
        Some((&c.cert("client2"), &c.key("client2"))),
        &[&rustls::version::TLS12],
    )
    .expect("TLS 1.2 client config");
    let mut v12 = RawClient::tls(addr, config)
        .await
        .expect("TLS 1.2 handshake");
    v12.send(&mqtt::connect_v311("tls12", 60))
        .await
        .expect("send");
    assert_eq!(
        v12.expect_connack(REPLY_TIMEOUT)
            .await
            .expect("CONNACK")
            .code,
        0
    );
    node.wait_log_line("naming sensor-2", LOG_WAIT, |l| {
        l.contains("client_id=tls12") && l.contains("username=\"sensor-2\"")
    })
    .await;
}

#[tokio::test]
async fn tls_version_sets_the_lowest_version_accepted() {
    let (_dir, c) = certs();
    let node = TestNode::start(&mqtts_config(&c, "tls_version tlsv1.3\n")).await;
    let addr = node.listener_addr("mqtts");
    let v12 = client_config_versions(&c.cert("ca"), None, &[&rustls::version::TLS12])
        .expect("TLS 1.2 client config");
    assert!(
        RawClient::tls(addr, v12).await.is_err(),
        "a TLS 1.2-only client must be refused by a tlsv1.3 listener"
    );
    node.wait_log_contains("TLS handshake failed", LOG_WAIT)
        .await;
    let mut v13 = tls_connect(addr, &c, None, "tls13").await;
    v13.ping().await;
}

/// The client's CONNECT must not be answered: the handshake fails (TLS 1.2), or the
/// server's alert arrives instead of a CONNACK (TLS 1.3).
async fn expect_refused(
    addr: SocketAddr,
    c: &TestCerts,
    client: Option<&str>,
) -> Option<SocketAddr> {
    let mut raw = match tls_client(addr, c, client).await {
        Ok(raw) => raw,
        Err(_) => return None,
    };
    let local = raw.local_addr();
    let _ = raw.send(&mqtt::connect_v311("refused", 60)).await;
    match raw.read_packet(REPLY_TIMEOUT).await {
        Incoming::Packet(p) => panic!("{client:?}: a refused certificate got {p}"),
        Incoming::TimedOut => panic!("{client:?}: connection still open, no answer"),
        Incoming::Closed(_) | Incoming::Garbage(_) => Some(local),
    }
}

#[tokio::test]
async fn mtls_refuses_missing_expired_other_ca_and_self_signed_certificates() {
    let (_dir, c) = certs();
    let node = TestNode::start(&mqtts_config(&c, "require_certificate true\n")).await;
    let addr = node.listener_addr("mqtts");
    let mut witness = Witness::connect(node.mqtt_addr(), "mtls").await;
    let mut good = tls_connect(addr, &c, Some("client"), "good").await;

    for (client, problem) in [
        (None, "peer sent no certificates"),
        (Some("expired"), "expired"),
        (Some("other-client"), "UnknownIssuer"),
        (Some("selfsigned"), "UnknownIssuer"),
    ] {
        let local = expect_refused(addr, &c, client).await;
        let line = node
            .wait_log_line(&format!("refusing {client:?}"), LOG_WAIT, |l| {
                l.contains("TLS handshake failed")
                    && l.contains(problem)
                    && local.is_none_or(|a| l.contains(&format!("addr={a}")))
            })
            .await;
        assert!(line.contains("listener=listener-2"), "{line}");
        witness.round_trip(&format!("{client:?}")).await;
        good.ping().await;
    }
}

#[tokio::test]
async fn use_identity_as_username_refuses_a_client_without_certificate() {
    let (_dir, c) = certs();
    // Certificates optional, identity required: Mosquitto answers Not Authorized.
    let node = TestNode::start(&mqtts_config(&c, "use_identity_as_username true\n")).await;
    let addr = node.listener_addr("mqtts");
    let mut anon = tls_client(addr, &c, None)
        .await
        .expect("handshake without a certificate");
    anon.send(&mqtt::connect_v311("anon", 60))
        .await
        .expect("send");
    let ack = anon.expect_connack(REPLY_TIMEOUT).await.expect("CONNACK");
    assert_eq!(ack.code, 0x05, "3.1.1 Not Authorized");
    let mut with_cert = tls_connect(addr, &c, Some("client"), "with-cert").await;
    with_cert.ping().await;
}

#[tokio::test]
async fn plaintext_mqtt_to_the_tls_port_is_refused_while_tls_clients_work() {
    let (_dir, c) = certs();
    let node = TestNode::start(&mqtts_config(&c, "")).await;
    let addr = node.listener_addr("mqtts");
    let mut tls = tls_connect(addr, &c, None, "tls-ok").await;

    let mut plain = RawClient::tcp(addr).await.expect("TCP connect");
    let local = plain.local_addr();
    plain
        .send(&mqtt::connect_v311("plain", 60))
        .await
        .expect("send");
    plain.expect_closed_silently(REPLY_TIMEOUT).await;
    node.wait_log_line("naming the plaintext client", LOG_WAIT, |l| {
        l.contains("plaintext MQTT (a CONNECT) sent to a TLS listener")
            && l.contains(&format!("addr={local}"))
    })
    .await;
    tls.ping().await;
    let mut again = tls_connect(addr, &c, None, "tls-after").await;
    again.ping().await;
}

#[tokio::test]
async fn silent_socket_on_the_tls_port_is_closed_at_the_handshake_timeout() {
    let (_dir, c) = certs();
    let node = TestNode::launch(Launch {
        env: vec![("FERROMQ_MQTT_HANDSHAKE_TIMEOUT".into(), "1s".into())],
        ..Launch::new(&mqtts_config(&c, ""))
    })
    .await
    .expect("broker starts");
    let addr = node.listener_addr("mqtts");
    let mut silent = RawClient::tcp(addr).await.expect("TCP connect");
    let local = silent.local_addr();
    let start = Instant::now();
    silent.expect_closed_silently(Duration::from_secs(8)).await;
    let waited = start.elapsed();
    assert!(
        waited >= Duration::from_millis(900),
        "closed after {waited:?}, before the timeout"
    );
    node.wait_log_line("about the handshake timeout", LOG_WAIT, |l| {
        l.contains("TLS handshake not completed within the handshake timeout")
            && l.contains(&format!("addr={local}"))
    })
    .await;
    let mut ok = tls_connect(addr, &c, None, "after-timeout").await;
    ok.ping().await;
}

#[tokio::test]
async fn http_request_to_the_mqtt_port_is_refused() {
    let node = TestNode::start("listener 0 127.0.0.1\nsys_interval 0\n").await;
    let mut witness = Witness::connect(node.mqtt_addr(), "http").await;
    let mut http = RawClient::tcp(node.mqtt_addr()).await.expect("TCP connect");
    let local = http.local_addr();
    http.send(b"GET / HTTP/1.1\r\nHost: localhost\r\nAccept: */*\r\n\r\n")
        .await
        .expect("send");
    http.expect_closed_silently(REPLY_TIMEOUT).await;
    node.wait_log_line("naming the HTTP client", LOG_WAIT, |l| {
        l.contains("HTTP request on an MQTT listener") && l.contains(&format!("addr={local}"))
    })
    .await;
    witness.round_trip("an HTTP request").await;
}

/// Sends an HTTP upgrade request and returns the response head.
async fn upgrade_request(
    addr: SocketAddr,
    path: &str,
    protocol: Option<&str>,
) -> (String, SocketAddr) {
    let mut s = TcpStream::connect(addr).await.expect("TCP connect");
    let local = s.local_addr().expect("local addr");
    let protocol =
        protocol.map_or_else(String::new, |p| format!("Sec-WebSocket-Protocol: {p}\r\n"));
    let req = format!(
        "GET {path} HTTP/1.1\r\nHost: localhost\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n{protocol}\r\n"
    );
    s.write_all(req.as_bytes()).await.expect("send");
    let mut head = Vec::new();
    let deadline = Instant::now() + REPLY_TIMEOUT;
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        let mut buf = [0u8; 1024];
        match tokio::time::timeout_at(deadline, s.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) | Err(_) => break,
            Ok(Ok(n)) => head.extend_from_slice(&buf[..n]),
        }
    }
    (String::from_utf8_lossy(&head).into_owned(), local)
}

#[tokio::test]
async fn websocket_upgrade_needs_the_mqtt_subprotocol_and_the_path() {
    let node = TestNode::start(
        "listener 0 127.0.0.1\nsys_interval 0\nlistener 0 127.0.0.1\nprotocol websockets\n",
    )
    .await;
    let ws = node.listener_addr("ws");
    let mut witness = Witness::connect(node.mqtt_addr(), "ws").await;

    let (head, local) = upgrade_request(ws, "/mqtt", None).await;
    assert!(head.starts_with("HTTP/1.1 400"), "{head}");
    node.wait_log_line("naming the client without subprotocol", LOG_WAIT, |l| {
        l.contains("WebSocket upgrade refused")
            && l.contains("no `mqtt`")
            && l.contains(&format!("addr={local}"))
    })
    .await;

    let (head, local) = upgrade_request(ws, "/mqtt", Some("chat")).await;
    assert!(head.starts_with("HTTP/1.1 400"), "{head}");
    node.wait_log_contains(&format!("addr={local}"), LOG_WAIT)
        .await;

    let (head, _) = upgrade_request(ws, "/other", Some("mqtt")).await;
    assert!(head.starts_with("HTTP/1.1 404"), "{head}");

    let (head, _) = upgrade_request(ws, "/mqtt", Some("mqtt")).await;
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    assert!(
        head.to_ascii_lowercase()
            .contains("sec-websocket-protocol: mqtt\r\n"),
        "the answer selects mqtt [MQTT-6.0.0-4]: {head}"
    );
    witness.round_trip("refused upgrades").await;
}

fn replace_server_cert(c: &TestCerts, from: &str) {
    std::fs::copy(c.cert(from), c.cert("server")).expect("copy certificate");
    std::fs::copy(c.key(from), c.key("server")).expect("copy key");
}

#[tokio::test]
async fn sighup_reloads_certificates_without_dropping_clients() {
    let (_dir, c) = certs();
    let mut node = TestNode::start(&mqtts_config(&c, "")).await;
    let addr = node.listener_addr("mqtts");
    let mut old = tls_connect(addr, &c, None, "before-reload").await;

    // A broken file: the reload fails and the old certificate stays.
    std::fs::write(c.key("server"), "not a key\n").expect("write");
    node.signal("HUP");
    node.wait_log_contains("TLS certificate reload failed", LOG_WAIT)
        .await;
    let mut still = tls_connect(addr, &c, None, "after-failed-reload").await;
    still.ping().await;

    // The server certificate of another CA: new clients see it, old ones stay.
    replace_server_cert(&c, "other-server");
    node.signal("HUP");
    node.wait_log_line("of a successful reload", LOG_WAIT, |l| {
        l.contains("TLS certificates reloaded") && l.contains("SIGHUP")
    })
    .await;
    old.ping().await;
    assert!(
        expect_refused(addr, &c, None).await.is_none(),
        "a client trusting only the old CA must fail the handshake"
    );
    let config = client_config(&c.cert("other-ca"), None).expect("client config");
    let mut new = RawClient::tls(addr, config)
        .await
        .expect("handshake with the new certificate");
    new.send(&mqtt::connect_v311("after-reload", 60))
        .await
        .expect("send");
    assert_eq!(
        new.expect_connack(REPLY_TIMEOUT)
            .await
            .expect("CONNACK")
            .code,
        0
    );
    old.ping().await;
    node.assert_running();
}

#[tokio::test]
async fn changed_certificate_files_are_reloaded_without_a_signal() {
    let (_dir, c) = certs();
    let node = TestNode::start(&mqtts_config(&c, "")).await;
    let addr = node.listener_addr("mqtts");
    let mut old = tls_connect(addr, &c, None, "watching").await;
    replace_server_cert(&c, "other-server");
    node.wait_log_line("of a reload on file change", LOG_WAIT, |l| {
        l.contains("TLS certificates reloaded") && l.contains("certificate files changed")
    })
    .await;
    let config = client_config(&c.cert("other-ca"), None).expect("client config");
    let mut new = RawClient::tls(addr, config)
        .await
        .expect("handshake with the new certificate");
    new.send(&mqtt::connect_v311("new-cert", 60))
        .await
        .expect("send");
    assert_eq!(
        new.expect_connack(REPLY_TIMEOUT)
            .await
            .expect("CONNACK")
            .code,
        0
    );
    old.ping().await;
}

/// Starts a broker that must refuse its TLS files with exit 78 and a message naming
/// each of `names`, before binding.
async fn refuse_tls(config: &str, names: &[&str]) {
    let err = match TestNode::launch(Launch::new(config)).await {
        Ok(mut node) => {
            let log = node.log();
            node.kill9();
            panic!("broker started with bad TLS files; log:\n{log}");
        }
        Err(e) => e,
    };
    let StartError::Exited {
        status,
        stderr,
        ready_file_written,
        ..
    } = err
    else {
        panic!("broker neither refused nor started: {err}");
    };
    assert_eq!(status.code(), Some(EXIT_CONFIG), "stderr:\n{stderr}");
    assert!(!ready_file_written, "ready file written; stderr:\n{stderr}");
    for name in names {
        assert!(
            stderr.contains(name),
            "stderr does not name {name:?}:\n{stderr}"
        );
    }
}

#[tokio::test]
async fn missing_or_unusable_tls_files_stop_the_broker_naming_them() {
    let (dir, c) = certs();
    let missing = dir.path().join("no-such-cert.pem");
    refuse_tls(
        &format!(
            "listener 0 127.0.0.1\ncertfile {}\nkeyfile {}\n",
            missing.display(),
            c.key("server").display()
        ),
        &[&missing.display().to_string(), "cannot read certfile"],
    )
    .await;

    // Every bad listener is reported at once: a certificate where the key should be,
    // a key in place of the CA, a key that belongs to another certificate.
    refuse_tls(
        &format!(
            "listener 0 127.0.0.1\ncertfile {server}\nkeyfile {cert_as_key}\n\
             listener 0 127.0.0.1\ncafile {key_as_ca}\ncertfile {server}\nkeyfile {key}\n\
             listener 0 127.0.0.1\ncertfile {server}\nkeyfile {wrong_key}\n",
            server = c.cert("server").display(),
            cert_as_key = c.cert("client").display(),
            key_as_ca = c.key("client").display(),
            key = c.key("server").display(),
            wrong_key = c.key("client").display(),
        ),
        &[
            &format!("listener `listener-1`: keyfile {} is not a usable PEM file: no private key", c.cert("client").display()),
            &format!("listener `listener-2`: cafile {} is not a usable PEM file: no `-----BEGIN CERTIFICATE-----`", c.key("client").display()),
            "listener `listener-3`: certfile",
            "are not a usable pair",
        ],
    )
    .await;
}
