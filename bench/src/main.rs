//! `ferromq-bench`: an MQTT load generator for side-by-side broker comparisons.
//!
//! It talks MQTT 3.1.1 with `ferromq-codec` straight on tokio sockets (no client
//! library in the way) so that one loader core can drive a broker core. Scenarios are
//! named presets (the rows of `docs/BENCHMARKS.md`) or a custom shape from the flags.
//! `bench/compare.sh` runs every preset against ferromq, Mosquitto and rumqttd.
//!
//! # Layout
//! - [`client`]: one MQTT connection (CONNECT, SUBSCRIBE, batched writes).
//! - [`throughput`]: publishers and subscribers, window, latency, loss/duplicates.
//! - [`tracker`]: per-publisher sequence sets.
//! - [`idle`]: `idle-connections N` (connects/s, RSS per connection).
//! - [`retained`]: the `retained-100k` scenario.
//! - [`procfs`]: broker RSS / CPU from `/proc/PID`.
//! - [`report`]: human and JSON output.

mod client;
mod idle;
mod procfs;
mod report;
mod retained;
mod throughput;
mod tracker;

use std::net::{SocketAddr, ToSocketAddrs};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::Parser;
use ferromq_codec::QoS;

use throughput::{Layout, Params};

/// Named scenarios.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Scenario {
    /// QoS 0, 1 publisher -> 1 subscriber, one topic.
    Qos0_1to1,
    /// QoS 1, 1 -> 1.
    Qos1_1to1,
    /// QoS 2, 1 -> 1.
    Qos2_1to1,
    /// QoS 0, 1 publisher -> 100 subscribers of one topic.
    Fanout1to100,
    /// QoS 0, 100 publishers on their own topics -> 1 subscriber of `bench/#`.
    Fanin100to1,
    /// QoS 0, 1 -> 1 at a steady 5,000 msg/s: latency.
    Latency5k,
    /// QoS 1, 1 -> 1 into a persistent session (Clean Session 0).
    PersistentQos1,
    /// N idle connections (`--connections`): connects/s, RSS per connection.
    IdleConnections,
    /// 100k retained messages (`--retained`), then a `#` subscribe.
    Retained100k,
    /// The shape given by --publishers, --subscribers, --layout, --qos, --rate.
    Custom,
}

impl Scenario {
    fn name(self) -> &'static str {
        match self {
            Scenario::Qos0_1to1 => "qos0-1to1",
            Scenario::Qos1_1to1 => "qos1-1to1",
            Scenario::Qos2_1to1 => "qos2-1to1",
            Scenario::Fanout1to100 => "fanout-1to100",
            Scenario::Fanin100to1 => "fanin-100to1",
            Scenario::Latency5k => "latency-5k",
            Scenario::PersistentQos1 => "persistent-qos1",
            Scenario::IdleConnections => "idle-connections",
            Scenario::Retained100k => "retained-100k",
            Scenario::Custom => "custom",
        }
    }
}

fn parse_scenario(s: &str) -> Result<Scenario, String> {
    use clap::ValueEnum;
    Scenario::value_variants()
        .iter()
        .copied()
        .find(|v| v.name() == s)
        .ok_or_else(|| {
            let names: Vec<&str> = Scenario::value_variants()
                .iter()
                .map(|v| v.name())
                .collect();
            format!("unknown scenario `{s}`; one of: {}", names.join(", "))
        })
}

fn parse_qos(s: &str) -> Result<QoS, String> {
    s.parse::<u8>()
        .ok()
        .and_then(QoS::from_u8)
        .ok_or_else(|| format!("QoS must be 0, 1 or 2, not `{s}`"))
}

/// MQTT load generator: throughput, latency, loss, connects/s, broker RSS/CPU.
#[derive(Debug, Parser)]
#[command(name = "ferromq-bench", version, about)]
struct Cli {
    /// Scenario: qos0-1to1, qos1-1to1, qos2-1to1, fanout-1to100, fanin-100to1,
    /// latency-5k, persistent-qos1, idle-connections, retained-100k, custom.
    #[arg(value_parser = parse_scenario, default_value = "qos0-1to1")]
    scenario: Scenario,
    /// For idle-connections: how many (also `--connections`).
    #[arg(value_name = "N")]
    count: Option<usize>,
    /// Broker address.
    #[arg(long, default_value = "127.0.0.1:1883")]
    addr: String,
    /// Subscribers' broker address (another node of a cluster: cross-node runs);
    /// default: `--addr`.
    #[arg(long = "sub-addr")]
    sub_addr: Option<String>,
    /// Broker process id, for RSS and CPU from /proc.
    #[arg(long = "broker-pid")]
    broker_pid: Option<u32>,
    /// Measured seconds.
    #[arg(long, default_value_t = 10.0)]
    duration: f64,
    /// Seconds of load before measuring.
    #[arg(long, default_value_t = 2.0)]
    warmup: f64,
    /// Payload bytes (>= 16: timestamp, sequence, publisher id).
    #[arg(long, default_value_t = 64)]
    payload: usize,
    /// End-to-end window: messages sent and not yet delivered, all publishers together.
    #[arg(long, default_value_t = 500)]
    window: u64,
    /// Unacknowledged QoS 1/2 PUBLISHes per publisher.
    #[arg(long, default_value_t = 16)]
    inflight: usize,
    /// Set TCP_QUICKACK on loader sockets (re-armed after every read).
    #[arg(long)]
    quickack: bool,
    /// Print one JSON object instead of text.
    #[arg(long)]
    json: bool,
    /// Loader threads; 0 = one (current-thread runtime, fits `taskset -c 1`).
    #[arg(long, default_value_t = 0)]
    threads: usize,
    /// idle-connections: number of connections.
    #[arg(long)]
    connections: Option<usize>,
    /// retained-100k: number of retained messages.
    #[arg(long, default_value_t = 100_000)]
    retained: usize,
    /// custom: publishers.
    #[arg(long, default_value_t = 1)]
    publishers: usize,
    /// custom: subscribers.
    #[arg(long, default_value_t = 1)]
    subscribers: usize,
    /// custom: topic layout.
    #[arg(long, value_enum, default_value = "one-topic")]
    layout: Layout,
    /// custom: QoS of publishes and subscriptions.
    #[arg(long, value_parser = parse_qos, default_value = "0")]
    qos: QoS,
    /// custom: total msg/s over all publishers (default: as fast as the window allows).
    #[arg(long)]
    rate: Option<f64>,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = if cli.threads == 0 {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
    } else {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(cli.threads)
            .enable_all()
            .build()
    };
    let runtime = match runtime {
        Ok(r) => r,
        Err(e) => {
            eprintln!("ferromq-bench: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(&cli)) {
        Ok(report) => {
            if cli.json {
                match serde_json::to_string(&report) {
                    Ok(s) => println!("{s}"),
                    Err(e) => {
                        eprintln!("ferromq-bench: {e}");
                        return ExitCode::FAILURE;
                    }
                }
            } else {
                report.print_human();
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("ferromq-bench: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: &Cli) -> Result<report::Report> {
    let addr: SocketAddr = cli
        .addr
        .to_socket_addrs()
        .with_context(|| format!("bad --addr {}", cli.addr))?
        .next()
        .with_context(|| format!("--addr {} resolves to nothing", cli.addr))?;
    let sub_addr: SocketAddr = match &cli.sub_addr {
        None => addr,
        Some(a) => a
            .to_socket_addrs()
            .with_context(|| format!("bad --sub-addr {a}"))?
            .next()
            .with_context(|| format!("--sub-addr {a} resolves to nothing"))?,
    };
    let base = Params {
        scenario: cli.scenario.name().into(),
        note: None,
        addr,
        sub_addr,
        publishers: 1,
        subscribers: 1,
        layout: Layout::OneTopic,
        qos: QoS::AtMostOnce,
        payload: cli.payload,
        rate: None,
        window: cli.window,
        inflight: cli.inflight,
        duration: Duration::from_secs_f64(cli.duration),
        warmup: Duration::from_secs_f64(cli.warmup),
        quickack: cli.quickack,
        broker_pid: cli.broker_pid,
        persistent: false,
    };
    let params = match cli.scenario {
        Scenario::Qos0_1to1 => base,
        Scenario::Qos1_1to1 => Params {
            qos: QoS::AtLeastOnce,
            ..base
        },
        Scenario::Qos2_1to1 => Params {
            qos: QoS::ExactlyOnce,
            ..base
        },
        Scenario::Fanout1to100 => Params {
            subscribers: 100,
            ..base
        },
        Scenario::Fanin100to1 => Params {
            publishers: 100,
            layout: Layout::Wildcard,
            ..base
        },
        Scenario::Latency5k => Params {
            rate: Some(5000.0),
            ..base
        },
        Scenario::PersistentQos1 => Params {
            qos: QoS::AtLeastOnce,
            persistent: true,
            note: Some(
                "persistent session (Clean Session 0): with ferromq's persistence on, every \
                 delivery is stored in sled before it is acknowledged (strict durability)"
                    .into(),
            ),
            ..base
        },
        Scenario::Custom => Params {
            publishers: cli.publishers,
            subscribers: cli.subscribers,
            layout: cli.layout,
            qos: cli.qos,
            rate: cli.rate,
            ..base
        },
        Scenario::IdleConnections => {
            let n = cli.count.or(cli.connections).unwrap_or(10_000);
            return idle::run(addr, n, cli.broker_pid, cli.quickack).await;
        }
        Scenario::Retained100k => {
            return retained::run(
                addr,
                cli.count.unwrap_or(cli.retained),
                cli.payload,
                cli.inflight,
                cli.broker_pid,
                cli.quickack,
            )
            .await;
        }
    };
    throughput::run(params).await
}
