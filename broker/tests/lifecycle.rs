//! Session lifecycle under paused time: keep alive, will delay, session expiry.
//!
//! The connection task is generic over its stream, so these tests drive it through an
//! in-memory duplex pipe with `tokio::time::pause()`: timers fire deterministically and
//! the elapsed virtual time is asserted exactly, without sockets or sleeps.
#![allow(clippy::unwrap_used)]

use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use ferromq::Broker;
use ferromq_codec::{
    ByteString, Connect, ConnectProperties, Disconnect, LastWill, Packet, ProtocolVersion, QoS,
    ReasonCode, Subscribe, SubscriptionOptions, WillProperties,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};
use tokio::time::Instant;

struct Client {
    io: DuplexStream,
    buf: BytesMut,
}

impl Client {
    async fn connect(broker: &Broker, connect: Connect) -> (Client, ferromq_codec::ConnAck) {
        let (client, server) = tokio::io::duplex(1 << 16);
        let b = broker.clone();
        tokio::spawn(async move {
            ferromq::connection::serve(
                server,
                "127.0.0.1:1".parse::<std::net::SocketAddr>().unwrap(),
                b,
            )
            .await;
        });
        let mut c = Client {
            io: client,
            buf: BytesMut::new(),
        };
        c.send(Packet::Connect(Box::new(connect))).await;
        match c.recv().await {
            Some(Packet::ConnAck(ack)) => (c, ack),
            other => panic!("expected CONNACK, got {other:?}"),
        }
    }

    async fn send(&mut self, p: Packet) {
        let mut out = BytesMut::new();
        ferromq_codec::encode(&p, ProtocolVersion::V5, &mut out).unwrap();
        self.io.write_all(&out).await.unwrap();
    }

    /// The next packet, or `None` once the broker closed the stream.
    async fn recv(&mut self) -> Option<Packet> {
        loop {
            if let Some(p) =
                ferromq_codec::decode(&mut self.buf, ProtocolVersion::V5, 1 << 20).unwrap()
            {
                return Some(p);
            }
            if self.io.read_buf(&mut self.buf).await.unwrap_or(0) == 0 {
                return None;
            }
        }
    }
}

fn broker() -> Broker {
    let mut config = ferromq_config::Config::default();
    config.sys.interval = Duration::ZERO;
    Broker::new(Arc::new(config), None)
}

fn connect(id: &str, keep_alive: u16, expiry: u32, will: Option<LastWill>) -> Connect {
    Connect {
        protocol: ProtocolVersion::V5,
        clean_start: false,
        keep_alive,
        client_id: ByteString::from(id),
        will,
        username: None,
        password: None,
        properties: ConnectProperties {
            session_expiry_interval: Some(expiry),
            ..Default::default()
        },
    }
}

fn will(delay: u32) -> LastWill {
    LastWill {
        topic: ByteString::from("wills/a"),
        payload: Bytes::from_static(b"gone"),
        qos: QoS::AtLeastOnce,
        retain: false,
        properties: WillProperties {
            will_delay_interval: Some(delay),
            ..Default::default()
        },
    }
}

async fn watcher(broker: &Broker) -> Client {
    let (mut c, _) = Client::connect(broker, connect("watcher", 0, 0, None)).await;
    c.send(Packet::Subscribe(Subscribe {
        packet_id: 1,
        properties: Default::default(),
        filters: vec![(ByteString::from("wills/#"), SubscriptionOptions::default())],
    }))
    .await;
    assert!(matches!(c.recv().await, Some(Packet::SubAck(_))));
    c
}

#[tokio::test(start_paused = true)]
async fn keep_alive_is_enforced_at_one_and_a_half_times() {
    // [MQTT-3.1.2-24] no packet within 1.5 x Keep Alive: the server disconnects.
    let b = broker();
    let (mut c, _) = Client::connect(&b, connect("ka", 2, 0, None)).await;
    let start = Instant::now();
    match c.recv().await {
        Some(Packet::Disconnect(d)) => assert_eq!(d.reason_code, ReasonCode::KEEP_ALIVE_TIMEOUT),
        other => panic!("expected DISCONNECT 0x8D, got {other:?}"),
    }
    let elapsed = start.elapsed();
    assert!(
        elapsed >= Duration::from_secs(3) && elapsed < Duration::from_millis(3100),
        "{elapsed:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn pings_keep_the_connection_alive() {
    let b = broker();
    let (mut c, _) = Client::connect(&b, connect("pinger", 2, 0, None)).await;
    for _ in 0..5 {
        tokio::time::sleep(Duration::from_secs(2)).await;
        c.send(Packet::PingReq).await;
        assert_eq!(c.recv().await, Some(Packet::PingResp));
    }
}

#[tokio::test(start_paused = true)]
async fn will_is_published_after_its_delay() {
    // [MQTT-3.1.3-9] the will waits for the Will Delay Interval.
    let b = broker();
    let mut w = watcher(&b).await;
    let (c, _) = Client::connect(&b, connect("a", 0, 100, Some(will(5)))).await;
    let start = Instant::now();
    drop(c);
    match w.recv().await {
        Some(Packet::Publish(p)) => assert_eq!(&p.payload[..], b"gone"),
        other => panic!("expected the will, got {other:?}"),
    }
    let elapsed = start.elapsed();
    assert!(
        elapsed >= Duration::from_secs(5) && elapsed < Duration::from_millis(5100),
        "{elapsed:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn will_goes_when_the_session_ends_before_the_delay() {
    // The will is sent at the smaller of Will Delay and Session Expiry [MQTT-3.1.3-9].
    let b = broker();
    let mut w = watcher(&b).await;
    let (c, _) = Client::connect(&b, connect("a", 0, 2, Some(will(30)))).await;
    let start = Instant::now();
    drop(c);
    assert!(matches!(w.recv().await, Some(Packet::Publish(_))));
    let elapsed = start.elapsed();
    assert!(
        elapsed >= Duration::from_secs(2) && elapsed < Duration::from_millis(2100),
        "{elapsed:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn reconnect_within_the_delay_cancels_the_will() {
    let b = broker();
    let mut w = watcher(&b).await;
    let (c, _) = Client::connect(&b, connect("a", 0, 100, Some(will(5)))).await;
    drop(c);
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (mut c2, ack) = Client::connect(&b, connect("a", 0, 100, None)).await;
    assert!(ack.session_present);
    tokio::time::sleep(Duration::from_secs(10)).await;
    // Nothing arrived: a marker published now is the first thing the watcher sees.
    c2.send(Packet::Publish(ferromq_codec::Publish {
        topic: ByteString::from("wills/marker"),
        payload: Bytes::from_static(b"marker"),
        ..Default::default()
    }))
    .await;
    match w.recv().await {
        Some(Packet::Publish(p)) => assert_eq!(&p.payload[..], b"marker"),
        other => panic!("expected the marker, got {other:?}"),
    }
}

#[tokio::test(start_paused = true)]
async fn normal_disconnect_discards_the_will_and_expiry_ends_the_session() {
    // [MQTT-3.1.2-10] DISCONNECT 0x00 deletes the will; the session lives for its
    // expiry and is gone after it [MQTT-3.1.2-23].
    let b = broker();
    let (mut c, _) = Client::connect(&b, connect("exp", 0, 3, Some(will(0)))).await;
    c.send(Packet::Disconnect(Disconnect::default())).await;
    assert_eq!(c.recv().await, None);
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (mut c, ack) = Client::connect(&b, connect("exp", 0, 3, None)).await;
    assert!(
        ack.session_present,
        "session must survive within its expiry"
    );
    c.send(Packet::Disconnect(Disconnect::default())).await;
    assert_eq!(c.recv().await, None);
    tokio::time::sleep(Duration::from_secs(4)).await;
    let (_c, ack) = Client::connect(&b, connect("exp", 0, 3, None)).await;
    assert!(
        !ack.session_present,
        "session must be gone after its expiry"
    );
}

#[tokio::test(start_paused = true)]
async fn takeover_sends_0x8e_to_the_old_connection() {
    // [MQTT-3.1.4-3] the existing connection is closed, v5 with DISCONNECT 0x8E.
    let b = broker();
    let (mut old, _) = Client::connect(&b, connect("dup", 0, 60, None)).await;
    let (_new, ack) = Client::connect(&b, connect("dup", 0, 60, None)).await;
    assert!(ack.session_present);
    match old.recv().await {
        Some(Packet::Disconnect(d)) => assert_eq!(d.reason_code, ReasonCode::SESSION_TAKEN_OVER),
        other => panic!("expected DISCONNECT 0x8E, got {other:?}"),
    }
    assert_eq!(old.recv().await, None);
}
