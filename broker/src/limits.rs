//! Limits against misbehaving and hostile clients, and the small tools that enforce
//! them: a token bucket, a bounded per-address table, the connection gate.
//!
//! Every bound here has its overflow policy written where it is enforced:
//! - connections over all listeners (`limits.max_connections`, default: the file
//!   descriptor limit minus [`FD_RESERVE`]): a socket above it is closed at once, with
//!   a log line ([`ConnectionGate::admit`]);
//! - new connections per second per source IP (`limits.connection_rate_per_ip`): the
//!   excess socket is closed at once; one log line per address per second says how many
//!   were refused ([`ConnectionGate::admit`]);
//! - per-address tables ([`AddressTable`]) hold at most [`MAX_TRACKED_ADDRESSES`]
//!   entries: when full, stale entries are dropped, then the least recently seen one;
//! - per-connection publish rate ([`PublishThrottle`]): over the limit the connection
//!   stops reading its socket until the bucket refills; nothing is dropped and TCP flow
//!   control pushes back on the client.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ferromq_config::LimitsConfig;
use parking_lot::Mutex;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// File descriptors kept free for listeners, data files and logs when
/// `limits.max_connections` is derived from the descriptor limit.
pub const FD_RESERVE: usize = 100;

/// Most slots [`reserve_fd_table`] grows the descriptor table to at startup. The
/// kernel keeps about 8.3 bytes per slot (a pointer and three bitmap bits), so this is
/// about 0.5 MiB of kernel memory, charged to the broker's cgroup; beyond it the table
/// grows on demand as before.
pub const FD_TABLE_RESERVE_MAX: u64 = 65_536;

/// Most source addresses a per-address table remembers.
pub const MAX_TRACKED_ADDRESSES: usize = 65_536;

/// Raises the soft `RLIMIT_NOFILE` to the hard limit, so the broker can hold as many
/// connections as the system allows. Returns the soft limit now in force.
pub fn raise_fd_limit() -> Option<u64> {
    use rustix::process::{Resource, getrlimit, setrlimit};
    let mut limit = getrlimit(Resource::Nofile);
    if let Some(hard) = limit.maximum
        && limit.current.is_none_or(|soft| soft < hard)
    {
        limit.current = Some(hard);
        if let Err(e) = setrlimit(Resource::Nofile, limit) {
            tracing::warn!(error = %e, "cannot raise the open-file limit to its hard limit {hard}");
        }
    }
    fd_limit()
}

/// Grows the process's file-descriptor table once, at startup, to the slots the
/// connections can use: `limits.max_connections` (or the descriptor limit) plus
/// [`FD_RESERVE`], at most [`FD_TABLE_RESERVE_MAX`] and below `fd_limit`. Returns the
/// slots reserved, or `None` when nothing was reserved (the error is logged).
///
/// Why: the kernel grows the table by doubling when a new descriptor does not fit (at
/// 256, 512, 1024, ... open files). In a multi-threaded process each growth waits for
/// an RCU grace period (`synchronize_rcu` in `expand_fdtable`), 10-30 ms during which
/// the runtime worker that called `accept` runs nothing else: every connection on it
/// stands still. Single-threaded Mosquitto does not pay that. Under a connection storm
/// (10,000 clients reconnecting) that was six stalls and about a tenth of the connect
/// rate (docs/BENCHMARKS.md). Duplicating a descriptor into the last slot and closing
/// it grows the table here, before the runtime starts; the table never shrinks.
pub fn reserve_fd_table(limits: &LimitsConfig, fd_limit: Option<u64>) -> Option<u64> {
    use std::os::fd::AsFd;
    let wanted = limits
        .max_connections
        .map_or(u64::MAX, |n| u64::try_from(n).unwrap_or(u64::MAX))
        .saturating_add(FD_RESERVE as u64)
        .min(FD_TABLE_RESERVE_MAX);
    let slots = fd_limit.map_or(wanted, |limit| wanted.min(limit));
    // The kernel's table starts with 64 slots (NR_OPEN_DEFAULT): nothing to gain below.
    if slots <= 64 {
        return None;
    }
    let last = rustix::fd::RawFd::try_from(slots - 1).ok()?;
    let stderr = std::io::stderr();
    match rustix::io::fcntl_dupfd_cloexec(stderr.as_fd(), last) {
        // Dropping the duplicate closes it; the grown table stays.
        Ok(_duplicate) => Some(slots),
        Err(e) => {
            tracing::warn!(error = %e, slots, "cannot reserve the file-descriptor table; it grows on demand (short accept stalls at 256, 512, 1024, ... connections)");
            None
        }
    }
}

/// The soft `RLIMIT_NOFILE` in force, if finite.
pub fn fd_limit() -> Option<u64> {
    rustix::process::getrlimit(rustix::process::Resource::Nofile).current
}

/// A token bucket: `rate` tokens per second, holding at most `capacity`. `take` may
/// overdraw (the debt is paid before tokens are available again), so a caller can
/// account for work already done and then wait.
#[derive(Debug, Clone)]
pub struct TokenBucket {
    rate: f64,
    capacity: f64,
    tokens: f64,
    last: Instant,
}

impl TokenBucket {
    /// A full bucket of `capacity` tokens refilling at `rate` per second.
    pub fn new(rate: f64, capacity: f64, now: Instant) -> TokenBucket {
        TokenBucket {
            rate,
            capacity,
            tokens: capacity,
            last: now,
        }
    }

    fn refill(&mut self, now: Instant) {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.tokens = (self.tokens + elapsed * self.rate).min(self.capacity);
        self.last = now;
    }

    /// Takes `n` tokens if available.
    pub fn try_take(&mut self, n: f64, now: Instant) -> bool {
        self.refill(now);
        if self.tokens >= n {
            self.tokens -= n;
            true
        } else {
            false
        }
    }

    /// Takes `n` tokens, going into debt if needed.
    pub fn take(&mut self, n: f64, now: Instant) {
        self.refill(now);
        self.tokens -= n;
    }

    /// How long until the balance is back to zero (no debt).
    pub fn wait(&mut self, now: Instant) -> Duration {
        self.refill(now);
        if self.tokens >= 0.0 {
            Duration::ZERO
        } else {
            Duration::from_secs_f64(-self.tokens / self.rate)
        }
    }

    /// Whether the bucket is full again (its entry can be forgotten).
    pub fn is_full(&mut self, now: Instant) -> bool {
        self.refill(now);
        self.tokens >= self.capacity
    }
}

/// What a per-address table needs to know about its entries to evict them.
pub trait Tracked {
    /// The entry carries no information any more (its windows and blocks are over).
    fn is_stale(&mut self, now: Instant) -> bool;
    /// When the address was last seen.
    fn last_seen(&self) -> Instant;
}

/// A map from source IP to `T`, bounded by [`MAX_TRACKED_ADDRESSES`] (or the capacity
/// given): when full, stale entries are dropped, then the least recently seen one. An
/// attacker rotating addresses can therefore make the table forget an address early,
/// never grow it.
#[derive(Debug)]
pub struct AddressTable<T> {
    map: HashMap<IpAddr, T>,
    capacity: usize,
}

impl<T: Tracked> AddressTable<T> {
    pub fn new(capacity: usize) -> AddressTable<T> {
        AddressTable {
            map: HashMap::new(),
            capacity: capacity.max(1),
        }
    }

    pub fn get_mut(&mut self, ip: &IpAddr) -> Option<&mut T> {
        self.map.get_mut(ip)
    }

    /// The entry of `ip`, created with `new` if absent (evicting if full).
    pub fn entry(&mut self, ip: IpAddr, now: Instant, new: impl FnOnce() -> T) -> &mut T {
        if !self.map.contains_key(&ip) && self.map.len() >= self.capacity {
            self.map.retain(|_, v| !v.is_stale(now));
            if self.map.len() >= self.capacity
                && let Some(oldest) = self
                    .map
                    .iter()
                    .min_by_key(|(_, v)| v.last_seen())
                    .map(|(k, _)| *k)
            {
                self.map.remove(&oldest);
            }
        }
        self.map.entry(ip).or_insert_with(new)
    }

    pub fn len(&self) -> usize {
        self.map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }
}

/// Per-address connection rate state.
#[derive(Debug)]
struct RateEntry {
    bucket: TokenBucket,
    last_seen: Instant,
    /// Refused since the last log line for this address.
    refused: u64,
    last_logged: Option<Instant>,
}

impl Tracked for RateEntry {
    fn is_stale(&mut self, now: Instant) -> bool {
        self.refused == 0 && self.bucket.is_full(now)
    }
    fn last_seen(&self) -> Instant {
        self.last_seen
    }
}

/// Why a new socket was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// `limits.max_connections` connections are open.
    MaxConnections,
    /// The source address opened more than `limits.connection_rate_per_ip` this second.
    RateExceeded,
}

/// Held by a connection task for its lifetime; releases the global slot on drop.
#[derive(Debug)]
pub struct Admission {
    _permit: OwnedSemaphorePermit,
}

/// Decides, at accept time, whether a new socket may become a connection.
#[derive(Debug)]
pub struct ConnectionGate {
    slots: Arc<Semaphore>,
    max: usize,
    rate_per_ip: u32,
    rates: Mutex<AddressTable<RateEntry>>,
}

impl ConnectionGate {
    /// `fd_limit` is the open-file limit in force; it sets the default maximum.
    pub fn new(limits: &LimitsConfig, fd_limit: Option<u64>) -> ConnectionGate {
        let derived = fd_limit
            .and_then(|n| usize::try_from(n).ok())
            .map_or(Semaphore::MAX_PERMITS, |n| {
                n.saturating_sub(FD_RESERVE).max(1)
            });
        let max = limits
            .max_connections
            .unwrap_or(derived)
            .min(Semaphore::MAX_PERMITS);
        ConnectionGate {
            slots: Arc::new(Semaphore::new(max)),
            max,
            rate_per_ip: limits.connection_rate_per_ip,
            rates: Mutex::new(AddressTable::new(MAX_TRACKED_ADDRESSES)),
        }
    }

    /// The broker-wide connection limit in force.
    pub fn max_connections(&self) -> usize {
        self.max
    }

    /// Admits a new socket from `peer`, or says why not and logs it (the rate
    /// refusals at most once per address per second, with their count).
    pub fn admit(&self, peer: SocketAddr, listener: &str) -> Result<Admission, Refusal> {
        if self.rate_per_ip > 0 {
            let now = Instant::now();
            let rate = f64::from(self.rate_per_ip);
            let mut rates = self.rates.lock();
            let entry = rates.entry(peer.ip(), now, || RateEntry {
                bucket: TokenBucket::new(rate, rate, now),
                last_seen: now,
                refused: 0,
                last_logged: None,
            });
            entry.last_seen = now;
            if !entry.bucket.try_take(1.0, now) {
                entry.refused += 1;
                let due = entry
                    .last_logged
                    .is_none_or(|t| now.duration_since(t) >= Duration::from_secs(1));
                if due {
                    tracing::warn!(
                        listener,
                        addr = %peer,
                        refused = entry.refused,
                        limit = self.rate_per_ip,
                        "connection refused: connection rate per address exceeded"
                    );
                    entry.refused = 0;
                    entry.last_logged = Some(now);
                }
                return Err(Refusal::RateExceeded);
            }
        }
        match self.slots.clone().try_acquire_owned() {
            Ok(permit) => Ok(Admission { _permit: permit }),
            Err(_) => {
                tracing::warn!(listener, addr = %peer, max = self.max, "connection refused: limits.max_connections reached");
                Err(Refusal::MaxConnections)
            }
        }
    }
}

/// The per-connection publish rate limit (`limits.publish_rate_messages` and
/// `limits.publish_rate_bytes`), consulted by the connection's read loop: each PUBLISH
/// is charged when handled; while either bucket is in debt the loop does not read
/// the socket and sleeps until it is paid off.
#[derive(Debug, Default)]
pub struct PublishThrottle {
    messages: Option<TokenBucket>,
    bytes: Option<TokenBucket>,
}

impl PublishThrottle {
    /// One second of burst in each bucket.
    pub fn new(limits: &LimitsConfig, now: Instant) -> PublishThrottle {
        let bucket = |rate: f64| (rate > 0.0).then(|| TokenBucket::new(rate, rate, now));
        PublishThrottle {
            messages: bucket(f64::from(limits.publish_rate_messages)),
            bytes: bucket(limits.publish_rate_bytes as f64),
        }
    }

    pub fn is_active(&self) -> bool {
        self.messages.is_some() || self.bytes.is_some()
    }

    /// Charges one PUBLISH of `payload` bytes.
    pub fn charge(&mut self, payload: usize, now: Instant) {
        if let Some(b) = &mut self.messages {
            b.take(1.0, now);
        }
        if let Some(b) = &mut self.bytes {
            b.take(payload as f64, now);
        }
    }

    /// How long the connection must stop reading; zero when it may read.
    pub fn pause(&mut self, now: Instant) -> Duration {
        let m = self
            .messages
            .as_mut()
            .map_or(Duration::ZERO, |b| b.wait(now));
        let b = self.bytes.as_mut().map_or(Duration::ZERO, |b| b.wait(now));
        m.max(b)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    /// `FDSize` in /proc/self/status: the slots of this process's descriptor table.
    fn fd_table_size() -> u64 {
        let status = std::fs::read_to_string("/proc/self/status").unwrap();
        let line = status.lines().find(|l| l.starts_with("FDSize:")).unwrap();
        line["FDSize:".len()..].trim().parse().unwrap()
    }

    #[test]
    fn descriptor_table_is_grown_once_for_the_configured_connections() {
        // Within this process's real limit, whatever the machine allows.
        let limit = fd_limit().unwrap_or(u64::MAX).min(FD_TABLE_RESERVE_MAX);
        let limits = LimitsConfig {
            max_connections: Some(usize::try_from(limit / 2).unwrap() - FD_RESERVE),
            ..Default::default()
        };
        assert_eq!(reserve_fd_table(&limits, fd_limit()), Some(limit / 2));
        assert!(fd_table_size() >= limit / 2, "FDSize {}", fd_table_size());
        // Never more than the descriptor limit given, never more than the cap.
        let unlimited = LimitsConfig::default();
        let lower = limit / 4 * 3;
        assert_eq!(reserve_fd_table(&unlimited, Some(lower)), Some(lower));
        assert_eq!(reserve_fd_table(&unlimited, fd_limit()), Some(limit));
        assert!(fd_table_size() >= limit);
        // Below the kernel's initial table nothing is done.
        assert_eq!(reserve_fd_table(&unlimited, Some(64)), None);
    }

    #[test]
    fn bucket_overdraws_and_refills() {
        let t0 = Instant::now();
        let mut b = TokenBucket::new(10.0, 10.0, t0);
        assert!(b.try_take(10.0, t0));
        assert!(!b.try_take(1.0, t0));
        b.take(5.0, t0);
        assert_eq!(b.wait(t0), Duration::from_millis(500));
        assert_eq!(b.wait(t0 + Duration::from_millis(500)), Duration::ZERO);
        assert!(b.is_full(t0 + Duration::from_secs(5)));
    }

    #[derive(Debug)]
    struct E(Instant, bool);
    impl Tracked for E {
        fn is_stale(&mut self, _: Instant) -> bool {
            self.1
        }
        fn last_seen(&self) -> Instant {
            self.0
        }
    }

    #[test]
    fn address_table_is_bounded() {
        let t0 = Instant::now();
        let ip = |n: u8| IpAddr::from([10, 0, 0, n]);
        let mut t = AddressTable::new(3);
        for n in 0..3 {
            t.entry(ip(n), t0, || {
                E(t0 + Duration::from_secs(u64::from(n)), n == 1)
            });
        }
        // Full: the stale entry (1) goes first.
        t.entry(ip(9), t0, || E(t0 + Duration::from_secs(9), false));
        assert!(t.get_mut(&ip(1)).is_none() && t.len() == 3);
        // Full, nothing stale: the least recently seen (0) goes.
        t.entry(ip(10), t0, || E(t0 + Duration::from_secs(10), false));
        assert!(t.get_mut(&ip(0)).is_none() && t.len() == 3);
        assert!(t.get_mut(&ip(2)).is_some());
    }

    #[test]
    fn gate_limits_total_and_rate() {
        let limits = LimitsConfig {
            max_connections: Some(2),
            connection_rate_per_ip: 3,
            ..LimitsConfig::default()
        };
        let gate = ConnectionGate::new(&limits, Some(1024));
        let a: SocketAddr = "10.0.0.1:1000".parse().unwrap();
        let b: SocketAddr = "10.0.0.2:1000".parse().unwrap();
        let first = gate.admit(a, "l").unwrap();
        let _second = gate.admit(a, "l").unwrap();
        assert_eq!(gate.admit(b, "l").unwrap_err(), Refusal::MaxConnections);
        drop(first);
        let third = gate.admit(b, "l").unwrap();
        drop(third);
        // a's third connection this second is its last one.
        let _fourth = gate.admit(a, "l").unwrap();
        drop(_second);
        assert_eq!(gate.admit(a, "l").unwrap_err(), Refusal::RateExceeded);
        let _b_again = gate.admit(b, "l").unwrap();

        let gate = ConnectionGate::new(&LimitsConfig::default(), Some(1124));
        assert_eq!(gate.max_connections(), 1024);
    }

    #[test]
    fn throttle_pauses_after_the_burst() {
        let t0 = Instant::now();
        let limits = LimitsConfig {
            publish_rate_messages: 2,
            publish_rate_bytes: 100,
            ..LimitsConfig::default()
        };
        let mut t = PublishThrottle::new(&limits, t0);
        t.charge(10, t0);
        t.charge(10, t0);
        assert_eq!(t.pause(t0), Duration::ZERO);
        t.charge(10, t0);
        assert_eq!(t.pause(t0), Duration::from_millis(500));
        t.charge(300, t0 + Duration::from_millis(500));
        assert_eq!(
            t.pause(t0 + Duration::from_millis(500)),
            Duration::from_secs(2)
        );
        assert!(!PublishThrottle::new(&LimitsConfig::default(), t0).is_active());
    }
}
