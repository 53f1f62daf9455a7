//! `$SYS/broker/...` statistics under Mosquitto's topic names, so MQTT Explorer and
//! existing `$SYS` exporters work unchanged.
//!
//! Published as retained messages every `sys.interval` (0 disables them). `$SYS`
//! topics are not matched by `#` or `+` at the first level [MQTT-4.7.2-1]; subscribe to
//! `$SYS/#` to see them.

use std::time::{Duration, Instant};

use bytes::Bytes;
use ferromq_codec::{ByteString, PublishProperties, QoS};

use crate::broker::Broker;
use crate::message::Message;
use crate::stats::Stats;

/// Load averages over 1, 5 and 15 minutes, as Mosquitto computes them.
struct Load {
    last: Instant,
    last_values: [u64; 4],
    averages: [[f64; 3]; 4],
}

pub fn spawn(broker: &Broker) {
    let interval = broker.config().sys.interval;
    let b = broker.clone();
    broker.tasks().spawn(async move {
        let sweep = Duration::from_secs(10);
        let period = if interval.is_zero() {
            sweep
        } else {
            interval.min(sweep)
        };
        let mut ticker = tokio::time::interval(period);
        let mut last_sys = Instant::now() - interval;
        let mut load = Load {
            last: Instant::now(),
            last_values: [0; 4],
            averages: [[0.0; 3]; 4],
        };
        loop {
            tokio::select! {
                _ = ticker.tick() => {}
                _ = b.shutdown_token().cancelled() => return,
            }
            b.sweep_retained();
            if !interval.is_zero() && last_sys.elapsed() >= interval {
                last_sys = Instant::now();
                publish_all(&b, &mut load);
            }
        }
    });
}

fn publish(broker: &Broker, topic: &str, value: String) {
    let message = Message::new(
        ByteString::from(topic),
        Bytes::from(value),
        QoS::AtMostOnce,
        true,
        PublishProperties::default(),
        None,
    );
    broker.publish(message);
}

fn publish_all(b: &Broker, load: &mut Load) {
    let s = b.stats();
    let connected = Stats::get(&s.clients_connected);
    let sessions = b.session_count() as u64;
    let values = [
        Stats::get(&s.packets_received),
        Stats::get(&s.packets_sent),
        Stats::get(&s.publish_received),
        Stats::get(&s.publish_sent),
    ];
    let dt = load.last.elapsed().as_secs_f64().max(0.001);
    load.last = Instant::now();
    for (i, v) in values.iter().enumerate() {
        let rate_per_min = (v - load.last_values[i]) as f64 / dt * 60.0;
        load.last_values[i] = *v;
        for (j, window) in [60.0, 300.0, 900.0].iter().enumerate() {
            let k = (-dt / window).exp();
            load.averages[i][j] = load.averages[i][j] * k + rate_per_min * (1.0 - k);
        }
    }
    let entries: Vec<(&str, String)> = vec![
        (
            "$SYS/broker/version",
            format!("ferromq version {}", env!("CARGO_PKG_VERSION")),
        ),
        (
            "$SYS/broker/uptime",
            format!("{} seconds", b.uptime().as_secs()),
        ),
        ("$SYS/broker/clients/connected", connected.to_string()),
        ("$SYS/broker/clients/active", connected.to_string()),
        (
            "$SYS/broker/clients/total",
            sessions.max(connected).to_string(),
        ),
        (
            "$SYS/broker/clients/disconnected",
            sessions.saturating_sub(connected).to_string(),
        ),
        (
            "$SYS/broker/clients/inactive",
            sessions.saturating_sub(connected).to_string(),
        ),
        (
            "$SYS/broker/clients/maximum",
            Stats::get(&s.clients_maximum).to_string(),
        ),
        ("$SYS/broker/messages/received", values[0].to_string()),
        ("$SYS/broker/messages/sent", values[1].to_string()),
        (
            "$SYS/broker/publish/messages/received",
            values[2].to_string(),
        ),
        ("$SYS/broker/publish/messages/sent", values[3].to_string()),
        (
            "$SYS/broker/publish/messages/dropped",
            (Stats::get(&s.dropped_queue_full)
                + Stats::get(&s.dropped_expired)
                + Stats::get(&s.dropped_too_large))
            .to_string(),
        ),
        (
            "$SYS/broker/publish/bytes/received",
            Stats::get(&s.publish_bytes_received).to_string(),
        ),
        (
            "$SYS/broker/publish/bytes/sent",
            Stats::get(&s.publish_bytes_sent).to_string(),
        ),
        (
            "$SYS/broker/bytes/received",
            Stats::get(&s.bytes_received).to_string(),
        ),
        (
            "$SYS/broker/bytes/sent",
            Stats::get(&s.bytes_sent).to_string(),
        ),
        (
            "$SYS/broker/retained messages/count",
            b.retained_count().to_string(),
        ),
        (
            "$SYS/broker/subscriptions/count",
            b.subscription_count().to_string(),
        ),
        (
            "$SYS/broker/store/messages/count",
            b.retained_count().to_string(),
        ),
    ];
    for (topic, value) in entries {
        publish(b, topic, value);
    }
    let names = [
        "messages/received",
        "messages/sent",
        "publish/received",
        "publish/sent",
    ];
    for (i, name) in names.iter().enumerate() {
        for (j, window) in ["1min", "5min", "15min"].iter().enumerate() {
            publish(
                b,
                &format!("$SYS/broker/load/{name}/{window}"),
                format!("{:.2}", load.averages[i][j]),
            );
        }
    }
}
