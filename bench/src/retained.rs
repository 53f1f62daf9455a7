//! `retained-100k`: store N retained messages, then time a `#` subscribe receiving them.
//!
//! The messages are published at QoS 1 with at most `inflight` unacknowledged, so
//! every one is stored before the subscriber arrives (at QoS 0 a broker may drop some
//! on the way in). Each goes to its own topic `bench/retained/{i}`. The subscriber
//! counts PUBLISHes with the RETAIN flag until it has N or none came for [`STALL`].

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use anyhow::{Result, bail};
use bytes::Bytes;
use ferromq_codec::{ByteString, Packet, Publish, QoS, Subscribe, SubscriptionOptions};

use crate::client::{Conn, ConnOpts};
use crate::procfs::Sampler;
use crate::report::Report;

const STALL: Duration = Duration::from_secs(5);

pub async fn run(
    addr: SocketAddr,
    count: usize,
    payload: usize,
    inflight: usize,
    broker_pid: Option<u32>,
    quickack: bool,
) -> Result<Report> {
    let opts = |id: &str| ConnOpts {
        addr,
        source: None,
        nodelay: true,
        client_id: id.into(),
        clean: true,
        quickack,
        read_buffer: 64 * 1024,
    };
    let rss_before = broker_pid.and_then(crate::procfs::rss_kib);
    let sampler = broker_pid.map(Sampler::start);
    let mut publisher = Conn::connect(&opts("bench-retain-pub")).await?;
    let body = Bytes::from(vec![0x5au8; payload]);
    let started = Instant::now();
    let (mut sent, mut acked) = (0usize, 0usize);
    while acked < count {
        while sent < count && sent - acked < inflight.max(1) {
            let packet_id = publisher.packet_id();
            publisher.encode(&Packet::Publish(Publish {
                dup: false,
                qos: QoS::AtLeastOnce,
                retain: true,
                topic: ByteString::from(format!("bench/retained/{sent}")),
                packet_id,
                properties: Default::default(),
                payload: body.clone(),
            }))?;
            sent += 1;
        }
        publisher.flush().await?;
        match tokio::time::timeout(STALL, publisher.read_packet()).await {
            Ok(Ok(Packet::PubAck(_))) => acked += 1,
            Ok(Ok(_)) => {}
            Ok(Err(e)) => return Err(e),
            Err(_) => bail!("no PUBACK for {STALL:?} after {acked} retained messages"),
        }
        while let Some(p) = publisher.try_decode()? {
            if matches!(p, Packet::PubAck(_)) {
                acked += 1;
            }
        }
    }
    let store_elapsed = started.elapsed();

    let mut sub = Conn::connect(&opts("bench-retain-sub")).await?;
    let t0 = Instant::now();
    // SUBSCRIBE by hand: retained PUBLISHes may arrive in the same read as the SUBACK.
    let packet_id = sub.packet_id();
    sub.send(&Packet::Subscribe(Subscribe {
        packet_id,
        properties: Default::default(),
        filters: vec![(ByteString::from("#"), SubscriptionOptions::default())],
    }))
    .await?;
    let mut received = 0usize;
    let mut last = Instant::now();
    loop {
        while let Some(p) = sub.try_decode()? {
            if let Packet::Publish(p) = p
                && p.retain
            {
                received += 1;
                last = Instant::now();
            }
        }
        if received >= count {
            break;
        }
        match tokio::time::timeout(STALL, sub.fill()).await {
            Ok(r) => {
                r?;
            }
            Err(_) => break,
        }
    }
    let receive_s = last.saturating_duration_since(t0).as_secs_f64();
    let rss_after = broker_pid.and_then(crate::procfs::rss_kib);
    let peak = sampler.zip(broker_pid).map(|(s, pid)| s.finish(pid));
    publisher.abort();
    sub.abort();
    Ok(Report {
        scenario: "retained-100k".into(),
        note: Some(format!(
            "{count} retained stored in {:.2} s ({:.0} msg/s, QoS 1); delivered/s is the `#` receive rate",
            store_elapsed.as_secs_f64(),
            count as f64 / store_elapsed.as_secs_f64()
        )),
        publishers: 1,
        subscribers: 1,
        qos: 0,
        payload,
        duration_s: receive_s,
        sent_per_s: count as f64 / store_elapsed.as_secs_f64(),
        delivered_per_s: if receive_s > 0.0 {
            received as f64 / receive_s
        } else {
            0.0
        },
        sent_total: count as u64,
        delivered_total: received as u64,
        lost: (count - received) as u64,
        connections: 2,
        broker_rss_before_kib: rss_before,
        broker_rss_after_kib: rss_after,
        broker_rss_peak_kib: peak,
        retained_receive_s: Some(receive_s),
        ..Default::default()
    })
}
