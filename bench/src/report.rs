//! The figures of one run, printed for people or as one JSON object (`--json`).
//!
//! Every field is optional where a scenario does not measure it, so `compare.sh` reads
//! one shape for all scenarios.

use serde::Serialize;

#[derive(Debug, Default, Serialize)]
pub struct Report {
    pub scenario: String,
    /// Free-text caveat printed with the figures (e.g. a feature not yet in the broker).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
    pub publishers: usize,
    pub subscribers: usize,
    pub qos: u8,
    pub payload: usize,
    /// Measured seconds (after warmup).
    pub duration_s: f64,
    /// PUBLISH packets sent per second in the measured window.
    pub sent_per_s: f64,
    /// Deliveries received by all subscribers per second in the measured window.
    pub delivered_per_s: f64,
    /// PUBLISH packets sent over the whole run (warmup and drain included).
    pub sent_total: u64,
    /// Deliveries received over the whole run (for per-message profiler counts).
    pub delivered_total: u64,
    pub latency_p50_us: Option<u64>,
    pub latency_p99_us: Option<u64>,
    pub latency_max_us: Option<u64>,
    /// Expected deliveries that never arrived (after a drain period).
    pub lost: u64,
    /// Deliveries of a (publisher, sequence) a subscriber group already had.
    pub duplicated: u64,
    pub connections: usize,
    /// CONNECT..CONNACK completions per second during the connect phase.
    pub connects_per_s: f64,
    /// Connections that answered PINGREQ afterwards (idle-connections).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub alive: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub broker_rss_before_kib: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub broker_rss_after_kib: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub broker_rss_peak_kib: Option<u64>,
    /// (after - before) / connections, in bytes (idle-connections).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rss_per_connection_bytes: Option<f64>,
    /// Broker CPU in percent of one core over the measured window.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub broker_cpu_percent: Option<f64>,
    /// The loader's own CPU over the measured window; near 100 % means the loader,
    /// not the broker, may be the bottleneck.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub loader_cpu_percent: Option<f64>,
    /// Seconds to receive every retained message after SUBSCRIBE (retained-100k).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub retained_receive_s: Option<f64>,
}

impl Report {
    /// Human-readable lines.
    pub fn print_human(&self) {
        println!("scenario            {}", self.scenario);
        if let Some(note) = &self.note {
            println!("note                {note}");
        }
        println!(
            "shape               {} pub -> {} sub, QoS {}, {} B payload, {:.1} s measured",
            self.publishers, self.subscribers, self.qos, self.payload, self.duration_s
        );
        println!("sent                {:.0} msg/s", self.sent_per_s);
        println!("delivered           {:.0} msg/s", self.delivered_per_s);
        if let (Some(p50), Some(p99), Some(max)) = (
            self.latency_p50_us,
            self.latency_p99_us,
            self.latency_max_us,
        ) {
            println!("latency             p50 {p50} us, p99 {p99} us, max {max} us");
        }
        println!("lost / duplicated   {} / {}", self.lost, self.duplicated);
        println!(
            "connects            {} at {:.0}/s",
            self.connections, self.connects_per_s
        );
        if let Some(alive) = self.alive {
            println!("alive (PINGREQ)     {alive}");
        }
        if let Some(t) = self.retained_receive_s {
            println!("retained received   in {t:.3} s");
        }
        if let (Some(b), Some(a)) = (self.broker_rss_before_kib, self.broker_rss_after_kib) {
            println!("broker RSS          {b} KiB before, {a} KiB after");
        }
        if let Some(per) = self.rss_per_connection_bytes {
            println!("RSS per connection  {:.0} B", per);
        }
        if let Some(peak) = self.broker_rss_peak_kib {
            println!("broker RSS peak     {peak} KiB");
        }
        if let Some(cpu) = self.broker_cpu_percent {
            println!("broker CPU          {cpu:.0} %");
        }
        if let Some(cpu) = self.loader_cpu_percent {
            let flag = if cpu >= 90.0 {
                " (loader saturated: figures are a lower bound)"
            } else {
                ""
            };
            println!("loader CPU          {cpu:.0} %{flag}");
        }
    }
}
