//! `idle-connections N`: connect rate and broker memory per idle connection.
//!
//! Raises the loader's RLIMIT_NOFILE to its hard limit, connects N clients with at
//! most [`CONNECT_CONCURRENCY`] CONNECTs in flight (below Mosquitto's listen backlog),
//! spreading source addresses over 127.0.0.1, .2, ... every [`PER_SOURCE`]
//! connections so ephemeral ports (about 28k per source address) do not run out
//! (only addresses beyond 127.0.0.1 are bound explicitly: a `bind` per connection
//! costs the loader's core, which also carries the kernel's side of every handshake
//! and is the first to saturate; its CPU over the connect phase is reported).
//! Broker RSS is read before and after (after a settle pause), every connection then
//! sends a PINGREQ and must answer, and all are closed with RST (SO_LINGER 0) so the
//! next run does not meet a pile of TIME_WAIT sockets.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Result, bail};
use ferromq_codec::Packet;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;

use crate::client::{Conn, ConnOpts};
use crate::procfs::CpuWindow;
use crate::report::Report;
use crate::throughput::CONNECT_CONCURRENCY;

/// Connections per 127.0.0.x source address.
const PER_SOURCE: usize = 20_000;
/// Pause before reading RSS after the last CONNACK (lets allocators settle).
const SETTLE: Duration = Duration::from_millis(500);
/// Read buffer of an idle loader connection (CONNACK and PINGRESP are tiny).
const IDLE_READ_BUFFER: usize = 64;

/// Raises the soft RLIMIT_NOFILE to the hard limit; returns the new soft limit.
pub fn raise_nofile() -> u64 {
    match rlimit::getrlimit(rlimit::Resource::NOFILE) {
        Ok((soft, hard)) => {
            if soft < hard && rlimit::setrlimit(rlimit::Resource::NOFILE, hard, hard).is_ok() {
                hard
            } else {
                soft
            }
        }
        Err(_) => 1024,
    }
}

pub async fn run(
    addr: SocketAddr,
    connections: usize,
    broker_pid: Option<u32>,
    quickack: bool,
) -> Result<Report> {
    let limit = raise_nofile();
    if connections as u64 + 64 > limit {
        bail!(
            "{connections} connections need more file descriptors than RLIMIT_NOFILE allows ({limit}); \
             raise the hard limit (ulimit -Hn) or ask for fewer"
        );
    }
    let rss_before = broker_pid.and_then(crate::procfs::rss_kib);
    let sem = Arc::new(Semaphore::new(CONNECT_CONCURRENCY));
    // CPU over the connect phase: on loopback the loader's core also carries the
    // kernel's side of every handshake, so it is the first to saturate; the report
    // says so (`loader_cpu_percent`) rather than pass the loader's limit off as the
    // broker's.
    let broker_cpu = broker_pid.and_then(CpuWindow::start);
    let loader_cpu = CpuWindow::start(std::process::id());
    let started = Instant::now();
    let mut set = JoinSet::new();
    let loopback = addr.ip().is_loopback() && addr.is_ipv4();
    for k in 0..connections {
        let sem = sem.clone();
        // 127.0.0.1 is what `connect` picks by itself: bind only beyond it.
        let block = (k / PER_SOURCE) as u8;
        let source =
            (loopback && block > 0).then(|| IpAddr::V4(Ipv4Addr::new(127, 0, 0, 1 + block)));
        set.spawn(async move {
            let _permit = sem.acquire_owned().await?;
            let opts = ConnOpts {
                addr,
                source,
                client_id: format!("bench-idle-{k}"),
                clean: true,
                quickack,
                nodelay: false,
                read_buffer: IDLE_READ_BUFFER,
            };
            Conn::connect(&opts).await
        });
    }
    let mut conns = Vec::with_capacity(connections);
    let mut failures = 0usize;
    let mut first_error = None;
    while let Some(r) = set.join_next().await {
        match r? {
            Ok(c) => conns.push(c),
            Err(e) => {
                failures += 1;
                first_error.get_or_insert(e);
            }
        }
    }
    let connect_elapsed = started.elapsed();
    let broker_cpu = broker_cpu.and_then(|c| c.percent());
    let loader_cpu = loader_cpu.and_then(|c| c.percent());
    if let Some(e) = first_error {
        eprintln!("ferromq-bench: {failures} of {connections} connections failed; first: {e:#}");
    }
    tokio::time::sleep(SETTLE).await;
    let rss_after = broker_pid.and_then(crate::procfs::rss_kib);

    // Prove they are alive: PINGREQ on every connection, then wait for every PINGRESP.
    let mut alive = 0usize;
    let mut set = JoinSet::new();
    for mut c in conns {
        let sem = sem.clone();
        set.spawn(async move {
            let _permit = sem.acquire_owned().await?;
            c.send(&Packet::PingReq).await?;
            let resp = tokio::time::timeout(Duration::from_secs(30), c.read_packet()).await;
            let ok = matches!(resp, Ok(Ok(Packet::PingResp)));
            anyhow::Ok((ok, c))
        });
    }
    let mut closing = Vec::new();
    while let Some(r) = set.join_next().await {
        if let Ok((ok, c)) = r? {
            alive += usize::from(ok);
            closing.push(c);
        }
    }
    for c in closing {
        c.abort();
    }

    let connected = connections - failures;
    let per_conn = match (rss_before, rss_after) {
        (Some(b), Some(a)) if connected > 0 => {
            Some((a.saturating_sub(b) as f64 * 1024.0) / connected as f64)
        }
        _ => None,
    };
    Ok(Report {
        scenario: "idle-connections".into(),
        connections: connected,
        connects_per_s: connected as f64 / connect_elapsed.as_secs_f64(),
        duration_s: connect_elapsed.as_secs_f64(),
        alive: Some(alive),
        lost: failures as u64,
        broker_rss_before_kib: rss_before,
        broker_rss_after_kib: rss_after,
        rss_per_connection_bytes: per_conn,
        broker_cpu_percent: broker_cpu,
        loader_cpu_percent: loader_cpu,
        ..Default::default()
    })
}
