//! Publishers and subscribers: throughput, latency, loss and duplicates.
//!
//! One task per connection on the loader's runtime. Publishers encode a PUBLISH once
//! with the codec and patch a template per message (timestamp, sequence, publisher id
//! in the payload; packet id for QoS 1/2), many messages per `write_all`.
//!
//! Bounds (so no broker is pushed into its own queue limits, `reference/benchmarks.md`):
//! - end to end, at most `window` messages sent and not yet delivered (counted in
//!   deliveries / fan-out) across all publishers; a publisher waits on a `Notify` the
//!   subscribers ring. A message the broker dropped would hold its slot forever, so a
//!   window that makes no progress for [`STALL`] is forgiven (the loss is still counted
//!   by sequence tracking);
//! - per publisher, at most `inflight` QoS 1/2 PUBLISHes not yet PUBACKed / PUBCOMPed.
//!
//! Timeline: connect subscribers, subscribe, connect publishers (connects/s), publish
//! for `warmup + duration`, count what was sent and delivered in the `duration`
//! window, stop, drain until everything sent arrived or nothing moved for [`STALL`],
//! then count lost and duplicated per (subscriber group, publisher, sequence).

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use bytes::{Bytes, BytesMut};
use ferromq_codec::{ByteString, Packet, PubResp, Publish, QoS};
use hdrhistogram::Histogram;
use tokio::sync::{Notify, Semaphore, watch};
use tokio::task::JoinSet;

use crate::client::{Conn, ConnOpts, PROTOCOL};
use crate::procfs::{CpuWindow, Sampler};
use crate::report::Report;
use crate::tracker::SeqSet;

/// Bytes of the payload header: timestamp (8), sequence (6), publisher id (2).
pub const PAYLOAD_HEADER: usize = 16;
/// A window without progress for this long is forgiven; also the drain's idle limit.
const STALL: Duration = Duration::from_millis(1000);
/// Upper bound of the drain after publishing stopped.
const MAX_DRAIN: Duration = Duration::from_secs(15);
/// Most PUBLISHes encoded per write.
const MAX_BATCH: u64 = 64;
/// Concurrent CONNECTs in the connect phase (below Mosquitto's listen backlog of 100).
pub const CONNECT_CONCURRENCY: usize = 64;

/// Topic layout.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
pub enum Layout {
    /// Every publisher on `bench/0`; every subscriber on `bench/0`.
    OneTopic,
    /// Publisher i on `bench/i`; subscriber i on `bench/i` (needs as many of each).
    PerPublisher,
    /// Publisher i on `bench/i`; every subscriber on `bench/#`.
    Wildcard,
    /// Publisher i on `bench/i`; subscribers share `$share/bench/bench/#`.
    Shared,
}

/// What one throughput run does.
#[derive(Debug, Clone)]
pub struct Params {
    pub scenario: String,
    pub note: Option<String>,
    pub addr: SocketAddr,
    /// Where subscribers connect (another cluster node for cross-node runs); `addr`
    /// by default.
    pub sub_addr: SocketAddr,
    pub publishers: usize,
    pub subscribers: usize,
    pub layout: Layout,
    pub qos: QoS,
    pub payload: usize,
    /// Total msg/s over all publishers; `None` = as fast as the window allows.
    pub rate: Option<f64>,
    pub window: u64,
    pub inflight: usize,
    pub duration: Duration,
    pub warmup: Duration,
    pub quickack: bool,
    pub broker_pid: Option<u32>,
    /// Subscribers connect with Clean Session 0 and fixed client ids.
    pub persistent: bool,
}

impl Params {
    fn fanout(&self) -> u64 {
        match self.layout {
            Layout::OneTopic | Layout::Wildcard => self.subscribers as u64,
            Layout::PerPublisher | Layout::Shared => 1,
        }
    }

    fn pub_topic(&self, i: usize) -> String {
        match self.layout {
            Layout::OneTopic => "bench/0".into(),
            _ => format!("bench/{i}"),
        }
    }

    fn sub_filter(&self, j: usize) -> String {
        match self.layout {
            Layout::OneTopic => "bench/0".into(),
            Layout::PerPublisher => format!("bench/{j}"),
            Layout::Wildcard => "bench/#".into(),
            Layout::Shared => "$share/bench/bench/#".into(),
        }
    }

    /// The tracking group of subscriber `j` (shared-subscription members share one).
    fn group(&self, j: usize) -> usize {
        match self.layout {
            Layout::Shared => 0,
            _ => j,
        }
    }

    /// Whether group `g` should receive publisher `i`'s messages.
    fn expects(&self, g: usize, i: usize) -> bool {
        match self.layout {
            Layout::PerPublisher => g == i,
            _ => true,
        }
    }

    fn groups(&self) -> usize {
        match self.layout {
            Layout::Shared => 1,
            _ => self.subscribers,
        }
    }
}

/// State shared by every task of a run.
struct Shared {
    start: Instant,
    sent: AtomicU64,
    delivered: AtomicU64,
    /// Window slots given up on after a stall (dropped messages).
    forgiven: AtomicU64,
    fanout: u64,
    window: u64,
    /// Set by a publisher about to wait for window space.
    waiting: AtomicBool,
    window_freed: Notify,
    stop: AtomicBool,
    /// Latency is recorded for arrivals inside [measure_from, measure_to) (ns since start).
    measure_from: u64,
    measure_to: u64,
}

impl Shared {
    fn credit(&self) -> u64 {
        let sent = self.sent.load(Ordering::SeqCst);
        let done = self.delivered.load(Ordering::SeqCst) / self.fanout
            + self.forgiven.load(Ordering::SeqCst);
        self.window.saturating_sub(sent.saturating_sub(done))
    }

    fn now_ns(&self) -> u64 {
        self.start.elapsed().as_nanos() as u64
    }
}

/// Runs one throughput scenario and reports.
pub async fn run(p: Params) -> Result<Report> {
    if p.payload < PAYLOAD_HEADER {
        bail!(
            "payload must be at least {PAYLOAD_HEADER} bytes (timestamp, sequence, publisher id)"
        );
    }
    if p.publishers == 0 || p.publishers > usize::from(u16::MAX) {
        bail!("publishers must be 1..=65535");
    }
    if p.layout == Layout::PerPublisher && p.publishers != p.subscribers {
        bail!("layout per-publisher needs as many subscribers as publishers");
    }
    let p = Arc::new(p);
    let rss_before = p.broker_pid.and_then(crate::procfs::rss_kib);

    // Connect phase: subscribers (with their SUBSCRIBE), then publishers.
    let connect_started = Instant::now();
    let sem = Arc::new(Semaphore::new(CONNECT_CONCURRENCY));
    let mut subs = connect_all(&p, &sem, p.subscribers, true).await?;
    let mut pubs = connect_all(&p, &sem, p.publishers, false).await?;
    let connect_elapsed = connect_started.elapsed();
    let connections = p.publishers + p.subscribers;

    let start = Instant::now();
    let shared = Arc::new(Shared {
        start,
        sent: AtomicU64::new(0),
        delivered: AtomicU64::new(0),
        forgiven: AtomicU64::new(0),
        fanout: p.fanout().max(1),
        window: p.window.max(1),
        waiting: AtomicBool::new(false),
        window_freed: Notify::new(),
        stop: AtomicBool::new(false),
        measure_from: p.warmup.as_nanos() as u64,
        measure_to: (p.warmup + p.duration).as_nanos() as u64,
    });
    let (done_tx, done_rx) = watch::channel(false);

    let mut sub_tasks = JoinSet::new();
    for (j, conn) in subs.drain(..) {
        sub_tasks.spawn(subscriber(
            j,
            conn,
            shared.clone(),
            p.clone(),
            done_rx.clone(),
        ));
    }
    let mut pub_tasks = JoinSet::new();
    for (i, conn) in pubs.drain(..) {
        pub_tasks.spawn(publisher(i, conn, shared.clone(), p.clone()));
    }

    // Warmup, then the measured window.
    tokio::time::sleep_until((start + p.warmup).into()).await;
    let sent0 = shared.sent.load(Ordering::SeqCst);
    let delivered0 = shared.delivered.load(Ordering::SeqCst);
    let broker_cpu = p.broker_pid.and_then(CpuWindow::start);
    let loader_cpu = CpuWindow::start(std::process::id());
    let sampler = p.broker_pid.map(Sampler::start);
    let window_started = Instant::now();
    tokio::time::sleep_until((start + p.warmup + p.duration).into()).await;
    let measured = window_started.elapsed().as_secs_f64();
    let sent1 = shared.sent.load(Ordering::SeqCst);
    let delivered1 = shared.delivered.load(Ordering::SeqCst);
    let broker_cpu = broker_cpu.and_then(|c| c.percent());
    let loader_cpu = loader_cpu.and_then(|c| c.percent());

    // Stop publishing; collect what each publisher sent.
    shared.stop.store(true, Ordering::SeqCst);
    shared.window_freed.notify_waiters();
    let mut sent_by = vec![0u64; p.publishers];
    let mut pub_conns = Vec::new();
    while let Some(r) = pub_tasks.join_next().await {
        let (i, sent, conn) = r.context("publisher task")??;
        sent_by[i] = sent;
        pub_conns.push(conn);
    }
    // Drain: until every expected delivery arrived or nothing moved for STALL.
    let expected: u64 = sent_by.iter().sum::<u64>() * shared.fanout;
    let drain_deadline = Instant::now() + MAX_DRAIN;
    let mut last = shared.delivered.load(Ordering::SeqCst);
    let mut last_move = Instant::now();
    while last < expected && Instant::now() < drain_deadline && last_move.elapsed() < STALL {
        tokio::time::sleep(Duration::from_millis(20)).await;
        let now = shared.delivered.load(Ordering::SeqCst);
        if now != last {
            last = now;
            last_move = Instant::now();
        }
    }
    let broker_peak = sampler.zip(p.broker_pid).map(|(s, pid)| s.finish(pid));
    let rss_after = p.broker_pid.and_then(crate::procfs::rss_kib);
    let _ = done_tx.send(true);

    let mut hist = new_histogram();
    let mut groups: Vec<Vec<SeqSet>> = vec![vec![SeqSet::default(); p.publishers]; p.groups()];
    while let Some(r) = sub_tasks.join_next().await {
        let (j, h, sets, conn) = r.context("subscriber task")??;
        hist.add(&h).ok();
        let g = p.group(j);
        for (i, set) in sets.iter().enumerate() {
            groups[g][i].merge(set);
        }
        conn.abort();
    }
    for c in pub_conns {
        c.abort();
    }
    let (mut lost, mut duplicated) = (0u64, 0u64);
    for (g, sets) in groups.iter().enumerate() {
        for (i, set) in sets.iter().enumerate() {
            if !p.expects(g, i) {
                continue;
            }
            let unique = set.unique_below(sent_by[i]);
            lost += sent_by[i].saturating_sub(unique);
            duplicated += set.received.saturating_sub(set.unique());
        }
    }

    let has_latency = !hist.is_empty();
    Ok(Report {
        scenario: p.scenario.clone(),
        note: p.note.clone(),
        publishers: p.publishers,
        subscribers: p.subscribers,
        qos: p.qos as u8,
        payload: p.payload,
        duration_s: measured,
        sent_per_s: (sent1 - sent0) as f64 / measured,
        delivered_per_s: (delivered1 - delivered0) as f64 / measured,
        sent_total: sent_by.iter().sum(),
        delivered_total: shared.delivered.load(Ordering::SeqCst),
        latency_p50_us: has_latency.then(|| hist.value_at_quantile(0.50)),
        latency_p99_us: has_latency.then(|| hist.value_at_quantile(0.99)),
        latency_max_us: has_latency.then(|| hist.max()),
        lost,
        duplicated,
        connections,
        connects_per_s: connections as f64 / connect_elapsed.as_secs_f64(),
        alive: None,
        broker_rss_before_kib: rss_before,
        broker_rss_after_kib: rss_after,
        broker_rss_peak_kib: broker_peak,
        rss_per_connection_bytes: None,
        broker_cpu_percent: broker_cpu,
        loader_cpu_percent: loader_cpu,
        retained_receive_s: None,
    })
}

fn new_histogram() -> Histogram<u64> {
    // 1 us .. 60 s at 3 significant digits; `saturating_record` clamps outliers.
    Histogram::new_with_bounds(1, 60_000_000, 3).expect("constant histogram bounds are valid")
}

/// Connects `n` clients (subscribers subscribe too), at most [`CONNECT_CONCURRENCY`]
/// at a time; returns them with their index.
async fn connect_all(
    p: &Arc<Params>,
    sem: &Arc<Semaphore>,
    n: usize,
    subscriber: bool,
) -> Result<Vec<(usize, Conn)>> {
    let mut set = JoinSet::new();
    for k in 0..n {
        let p = p.clone();
        let sem = sem.clone();
        set.spawn(async move {
            let _permit = sem.acquire_owned().await?;
            let opts = ConnOpts {
                addr: if subscriber { p.sub_addr } else { p.addr },
                source: None,
                nodelay: true,
                client_id: if subscriber {
                    format!("bench-sub-{k}")
                } else {
                    format!("bench-pub-{k}")
                },
                clean: !(subscriber && p.persistent),
                quickack: p.quickack,
                read_buffer: 64 * 1024,
            };
            let mut conn = Conn::connect(&opts).await?;
            if subscriber {
                conn.subscribe(&[p.sub_filter(k)], p.qos).await?;
            }
            anyhow::Ok((k, conn))
        });
    }
    let mut out = Vec::with_capacity(n);
    while let Some(r) = set.join_next().await {
        out.push(r??);
    }
    out.sort_by_key(|(k, _)| *k);
    Ok(out)
}

/// A PUBLISH encoded once; each message patches its payload header (and packet id).
struct Template {
    bytes: Vec<u8>,
    payload_at: usize,
    packet_id_at: Option<usize>,
}

impl Template {
    fn new(topic: &str, qos: QoS, payload: usize) -> Result<Template> {
        let publish = Publish {
            dup: false,
            qos,
            retain: false,
            topic: ByteString::from(topic),
            packet_id: if qos == QoS::AtMostOnce { 0 } else { 1 },
            properties: Default::default(),
            payload: Bytes::from(vec![0u8; payload]),
        };
        let mut buf = BytesMut::new();
        ferromq_codec::encode_publish(&publish, PROTOCOL, &mut buf)?;
        let payload_at = buf.len() - payload;
        // MQTT 3.1.1: the packet id sits right before the payload (no properties).
        let packet_id_at = (qos != QoS::AtMostOnce).then(|| payload_at - 2);
        Ok(Template {
            bytes: buf.to_vec(),
            payload_at,
            packet_id_at,
        })
    }

    fn append(&self, out: &mut BytesMut, ts_ns: u64, seq: u64, publisher: u16, packet_id: u16) {
        let at = out.len();
        out.extend_from_slice(&self.bytes);
        let frame = &mut out[at..];
        let h = &mut frame[self.payload_at..self.payload_at + PAYLOAD_HEADER];
        h[0..8].copy_from_slice(&ts_ns.to_le_bytes());
        h[8..14].copy_from_slice(&seq.to_le_bytes()[..6]);
        h[14..16].copy_from_slice(&publisher.to_le_bytes());
        if let Some(pid_at) = self.packet_id_at {
            frame[pid_at..pid_at + 2].copy_from_slice(&packet_id.to_be_bytes());
        }
    }
}

/// Reads the payload header: (timestamp ns, sequence, publisher id).
fn parse_header(payload: &[u8]) -> Option<(u64, u64, u16)> {
    let h = payload.get(..PAYLOAD_HEADER)?;
    let mut ts = [0u8; 8];
    ts.copy_from_slice(&h[0..8]);
    let mut seq = [0u8; 8];
    seq[..6].copy_from_slice(&h[8..14]);
    Some((
        u64::from_le_bytes(ts),
        u64::from_le_bytes(seq),
        u16::from_le_bytes([h[14], h[15]]),
    ))
}

async fn publisher(
    idx: usize,
    mut conn: Conn,
    shared: Arc<Shared>,
    p: Arc<Params>,
) -> Result<(usize, u64, Conn)> {
    let template = Template::new(&p.pub_topic(idx), p.qos, p.payload)?;
    let qos = p.qos;
    let per_pub_rate = p.rate.map(|r| r / p.publishers as f64);
    let mut seq: u64 = 0;
    let mut unacked: usize = 0;
    let begun = Instant::now();
    let publisher_id = idx as u16;
    loop {
        if shared.stop.load(Ordering::Relaxed) {
            break;
        }
        // Acknowledgements already read.
        while let Some(pkt) = conn.try_decode()? {
            match pkt {
                Packet::PubAck(_) | Packet::PubComp(_) => unacked = unacked.saturating_sub(1),
                Packet::PubRec(r) => conn.encode(&Packet::PubRel(PubResp {
                    packet_id: r.packet_id,
                    ..Default::default()
                }))?,
                _ => {}
            }
        }
        let mut n = MAX_BATCH;
        if qos != QoS::AtMostOnce {
            n = n.min(p.inflight.saturating_sub(unacked) as u64);
        }
        let mut next_due = None;
        if let Some(rate) = per_pub_rate {
            let due = (begun.elapsed().as_secs_f64() * rate) as u64;
            n = n.min(due.saturating_sub(seq));
            next_due = Some(begun + Duration::from_secs_f64((seq + 1) as f64 / rate));
        }
        if n > 0 {
            n = n.min(shared.credit());
        }
        if n > 0 {
            let ts = shared.now_ns();
            conn.wbuf.reserve(template.bytes.len() * n as usize);
            for _ in 0..n {
                let pid = if qos == QoS::AtMostOnce {
                    0
                } else {
                    conn.packet_id()
                };
                template.append(&mut conn.wbuf, ts, seq, publisher_id, pid);
                seq += 1;
            }
            if qos != QoS::AtMostOnce {
                unacked += n as usize;
            }
            shared.sent.fetch_add(n, Ordering::SeqCst);
            conn.flush().await?;
            continue;
        }
        conn.flush().await?; // PUBRELs
        // Nothing may be sent now: wait for an ack, window space, or the next due time.
        let freed = shared.window_freed.notified();
        tokio::pin!(freed);
        freed.as_mut().enable();
        shared.waiting.store(true, Ordering::SeqCst);
        let window_bound = shared.credit() == 0;
        let before = shared.delivered.load(Ordering::SeqCst);
        let wait = match next_due {
            Some(at) => at.saturating_duration_since(Instant::now()),
            None if window_bound => STALL,
            None => Duration::from_millis(100),
        };
        if wait.is_zero() && !window_bound {
            continue;
        }
        tokio::select! {
            biased;
            r = conn.fill() => { r?; }
            _ = &mut freed => {}
            _ = tokio::time::sleep(wait) => {
                if window_bound && next_due.is_none() && shared.delivered.load(Ordering::SeqCst) == before {
                    // No delivery for STALL: the broker dropped what is outstanding.
                    let outstanding = shared.window.saturating_sub(shared.credit());
                    shared.forgiven.fetch_add(outstanding, Ordering::SeqCst);
                }
            }
        }
    }
    Ok((idx, seq, conn))
}

type SubResult = (usize, Histogram<u64>, Vec<SeqSet>, Conn);

async fn subscriber(
    idx: usize,
    mut conn: Conn,
    shared: Arc<Shared>,
    p: Arc<Params>,
    mut done: watch::Receiver<bool>,
) -> Result<SubResult> {
    let mut hist = new_histogram();
    let mut sets = vec![SeqSet::default(); p.publishers];
    loop {
        tokio::select! {
            biased;
            r = conn.fill() => { r?; }
            _ = done.changed() => break,
        }
        let now = shared.now_ns();
        let in_window = now >= shared.measure_from && now < shared.measure_to;
        let now_us = now / 1000;
        let mut got = 0u64;
        while let Some(pkt) = conn.try_decode()? {
            match pkt {
                Packet::Publish(publish) => {
                    got += 1;
                    if let Some((ts, seq, pubid)) = parse_header(&publish.payload) {
                        if in_window {
                            hist.saturating_record(now_us.saturating_sub(ts / 1000).max(1));
                        }
                        if let Some(set) = sets.get_mut(usize::from(pubid)) {
                            set.mark(seq);
                        }
                    }
                    match publish.qos {
                        QoS::AtMostOnce => {}
                        QoS::AtLeastOnce => conn.encode(&Packet::PubAck(PubResp {
                            packet_id: publish.packet_id,
                            ..Default::default()
                        }))?,
                        QoS::ExactlyOnce => conn.encode(&Packet::PubRec(PubResp {
                            packet_id: publish.packet_id,
                            ..Default::default()
                        }))?,
                    }
                }
                Packet::PubRel(r) => conn.encode(&Packet::PubComp(PubResp {
                    packet_id: r.packet_id,
                    ..Default::default()
                }))?,
                _ => {}
            }
        }
        if got > 0 {
            shared.delivered.fetch_add(got, Ordering::SeqCst);
            if shared.waiting.swap(false, Ordering::SeqCst) {
                shared.window_freed.notify_waiters();
            }
        }
        conn.flush().await?;
    }
    Ok((idx, hist, sets, conn))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn template_round_trips_through_the_codec() {
        for qos in [QoS::AtMostOnce, QoS::AtLeastOnce, QoS::ExactlyOnce] {
            let t = Template::new("bench/7", qos, 64).unwrap();
            let mut buf = BytesMut::new();
            t.append(&mut buf, 123_456_789, 42, 7, 9);
            let pkt = ferromq_codec::decode(&mut buf, PROTOCOL, 1 << 20)
                .unwrap()
                .unwrap();
            let Packet::Publish(p) = pkt else {
                panic!("not a PUBLISH")
            };
            assert_eq!(&p.topic[..], "bench/7");
            assert_eq!(p.payload.len(), 64);
            assert_eq!(parse_header(&p.payload), Some((123_456_789, 42, 7)));
            if qos != QoS::AtMostOnce {
                assert_eq!(p.packet_id, 9);
            }
        }
    }
}
