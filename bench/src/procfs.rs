//! Broker (and loader) resource figures from `/proc/PID`.
//!
//! RSS from `/proc/PID/status` (`VmRSS`), CPU from `/proc/PID/stat` (utime + stime in
//! clock ticks; 100 per second on every Linux we run on). A [`Sampler`] polls the
//! broker while a scenario runs to find its peak RSS; CPU is the tick delta over the
//! measured window divided by its length (100 % = one core).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// Clock ticks per second of `/proc/PID/stat` times.
const TICKS_PER_SEC: f64 = 100.0;
/// How often the sampler reads RSS.
const SAMPLE_EVERY: Duration = Duration::from_millis(100);

/// Resident set size in KiB, if the process exists.
pub fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
}

/// utime + stime in clock ticks.
pub fn cpu_ticks(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the parenthesised command name; utime and stime are fields 14 and 15.
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some(utime + stime)
}

/// CPU use of a process between two tick readings, in percent of one core.
pub fn cpu_percent(ticks_before: u64, ticks_after: u64, elapsed: Duration) -> f64 {
    let secs = elapsed.as_secs_f64();
    if secs <= 0.0 {
        return 0.0;
    }
    (ticks_after.saturating_sub(ticks_before) as f64 / TICKS_PER_SEC) / secs * 100.0
}

/// Polls a process's RSS in the background and keeps the peak.
pub struct Sampler {
    peak_kib: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
}

impl Sampler {
    pub fn start(pid: u32) -> Sampler {
        let peak_kib = Arc::new(AtomicU64::new(rss_kib(pid).unwrap_or(0)));
        let stop = Arc::new(AtomicBool::new(false));
        let (p, s) = (peak_kib.clone(), stop.clone());
        tokio::spawn(async move {
            while !s.load(Ordering::Relaxed) {
                if let Some(rss) = rss_kib(pid) {
                    p.fetch_max(rss, Ordering::Relaxed);
                }
                tokio::time::sleep(SAMPLE_EVERY).await;
            }
        });
        Sampler { peak_kib, stop }
    }

    /// Stops polling and returns the peak RSS in KiB.
    pub fn finish(self, pid: u32) -> u64 {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(rss) = rss_kib(pid) {
            self.peak_kib.fetch_max(rss, Ordering::Relaxed);
        }
        self.peak_kib.load(Ordering::Relaxed)
    }
}

/// CPU of a process (the broker or the loader itself) over a window.
pub struct CpuWindow {
    pid: u32,
    ticks: u64,
    at: Instant,
}

impl CpuWindow {
    pub fn start(pid: u32) -> Option<CpuWindow> {
        Some(CpuWindow {
            pid,
            ticks: cpu_ticks(pid)?,
            at: Instant::now(),
        })
    }

    /// Percent of one core since `start`.
    pub fn percent(&self) -> Option<f64> {
        let now = cpu_ticks(self.pid)?;
        Some(cpu_percent(self.ticks, now, self.at.elapsed()))
    }
}
