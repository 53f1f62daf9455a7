//! The broker's shared state and the operations connections perform on it.
//!
//! [`Broker`] is a cheap-clone handle (`Arc`) given to every connection task
//! (mini-redis `Db`). It owns the session registry, the subscription router and the
//! retained store.
//!
//! # Lock order
//! Locks are taken in this order and never the other way round; none is held across an
//! `.await` (all are `parking_lot` locks):
//! 1. `sessions` (the registry),
//! 2. a session's own mutex ([`Session::lock`]),
//! 3. `router`,
//! 4. `retained`.
//!
//! Publishing takes `router` (shared) to compute deliveries, releases it, then locks each
//! target session briefly to enqueue: a publisher never holds two locks at once.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use ferromq_codec::{ByteString, QoS, ReasonCode, SubscriptionOptions};
use ferromq_config::{Config, MqttConfig};
use parking_lot::{Mutex, RwLock};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::auth::Security;
use crate::limits::{Admission, ConnectionGate, Refusal};
use crate::message::{Delivery, Message, SessionId};
use crate::retained::{OverBudget, RetainedStore};
use crate::router::{Router, Subscriber};
use crate::session::{DropReason, Link, QueueLimits, Session, SubscriptionRecord};
use crate::stats::Stats;

/// How long a new connection waits for the connection it takes over to let go.
const TAKEOVER_TIMEOUT: Duration = Duration::from_secs(5);

/// A will waiting for its connection to end, or for its delay [MQTT-3.1.3-9].
#[derive(Debug, Clone)]
pub struct PendingWill {
    pub message: Arc<Message>,
    /// Will Delay Interval in seconds (0 for 3.1.x).
    pub delay: u32,
}

/// What [`Broker::open_session`] hands back to the connection.
#[derive(Debug)]
pub struct OpenedSession {
    pub session: Arc<Session>,
    pub link: Link,
    /// CONNACK Session Present [MQTT-3.2.2-2] [MQTT-3.2.2-3].
    pub session_present: bool,
}

struct Shared {
    config: Arc<Config>,
    sessions: Mutex<HashMap<ByteString, Arc<Session>>>,
    router: RwLock<Router>,
    retained: RwLock<RetainedStore>,
    stats: Stats,
    next_session_id: AtomicU64,
    next_generation: AtomicU64,
    shutdown: CancellationToken,
    tasks: TaskTracker,
    started: Instant,
    security: Security,
    gate: ConnectionGate,
    /// Uptime second of the last "retained budget reached" log line (one per second).
    retained_budget_logged: AtomicU64,
}

/// Why a PUBLISH was refused as a whole (neither stored nor routed).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PublishRefused {
    /// A retained message above `limits.retained_max_bytes`.
    RetainedBudget,
}

/// Handle to the broker's shared state.
#[derive(Clone)]
pub struct Broker {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for Broker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Broker").finish_non_exhaustive()
    }
}

/// Splits `$share/{group}/{filter}` into its group and filter.
pub fn split_shared(filter: &str) -> (Option<&str>, &str) {
    match ferromq_topic::parse_shared(filter) {
        Ok(Some(shared)) => (Some(shared.group), shared.filter),
        _ => (None, filter),
    }
}

impl Broker {
    /// A broker with the password and ACL files of `config` (failing closed if they
    /// cannot be read: see [`Security::load_or_fail_closed`]).
    pub fn new(config: Arc<Config>) -> Broker {
        let security = Security::load_or_fail_closed(&config);
        Broker::with_security(config, security)
    }

    /// A broker with authentication state loaded by the caller.
    pub fn with_security(config: Arc<Config>, security: Security) -> Broker {
        let gate = ConnectionGate::new(&config.limits, crate::limits::fd_limit());
        Broker {
            shared: Arc::new(Shared {
                config,
                sessions: Mutex::new(HashMap::new()),
                router: RwLock::new(Router::default()),
                retained: RwLock::new(RetainedStore::default()),
                stats: Stats::default(),
                next_session_id: AtomicU64::new(1),
                next_generation: AtomicU64::new(1),
                shutdown: CancellationToken::new(),
                tasks: TaskTracker::new(),
                started: Instant::now(),
                security,
                gate,
                retained_budget_logged: AtomicU64::new(u64::MAX),
            }),
        }
    }

    /// Authentication and ACLs.
    pub fn security(&self) -> &Security {
        &self.shared.security
    }

    /// Whether a socket just accepted from `peer` on `listener` may become a
    /// connection (`limits.max_connections`, `limits.connection_rate_per_ip`). Keep the
    /// [`Admission`] for the connection's lifetime; a refused socket is to be closed at
    /// once (the refusal is logged and counted here).
    pub fn admit(&self, peer: std::net::SocketAddr, listener: &str) -> Option<Admission> {
        match self.shared.gate.admit(peer, listener) {
            Ok(a) => Some(a),
            Err(Refusal::MaxConnections) => {
                Stats::add(&self.shared.stats.connections_refused_max, 1);
                None
            }
            Err(Refusal::RateExceeded) => {
                Stats::add(&self.shared.stats.connections_refused_rate, 1);
                None
            }
        }
    }

    pub fn config(&self) -> &Config {
        &self.shared.config
    }

    pub fn mqtt(&self) -> &MqttConfig {
        &self.shared.config.mqtt
    }

    pub fn stats(&self) -> &Stats {
        &self.shared.stats
    }

    /// Cancelled when the broker shuts down.
    pub fn shutdown_token(&self) -> &CancellationToken {
        &self.shared.shutdown
    }

    /// Tracks connection and timer tasks so shutdown can wait for them.
    pub fn tasks(&self) -> &TaskTracker {
        &self.shared.tasks
    }

    pub fn uptime(&self) -> Duration {
        self.shared.started.elapsed()
    }

    pub fn session_count(&self) -> usize {
        self.shared.sessions.lock().len()
    }

    pub fn subscription_count(&self) -> usize {
        let r = self.shared.router.read();
        r.subscription_count() + r.shared_subscription_count()
    }

    pub fn retained_count(&self) -> usize {
        self.shared.retained.read().len()
    }

    fn queue_limits(&self) -> QueueLimits {
        let m = self.mqtt();
        QueueLimits {
            max_messages: m.max_queued_messages,
            max_bytes: m.max_queued_bytes,
            queue_qos0: m.queue_qos0_messages,
        }
    }

    /// Finds or creates the session of `client_id` and attaches a new connection to it.
    ///
    /// If another connection serves the session it is told to close (v5 DISCONNECT
    /// 0x8E) and this waits until it has detached [MQTT-3.1.4-3]. With Clean Start the
    /// old session is discarded [MQTT-3.1.2-4]; otherwise it is resumed
    /// [MQTT-3.1.2-5]. A delayed will of a resumed session is cancelled
    /// [MQTT-3.1.3-9]; one of a discarded session is published now (its session ends).
    pub async fn open_session(
        &self,
        client_id: ByteString,
        clean_start: bool,
        expiry_interval: u32,
    ) -> OpenedSession {
        loop {
            let busy = {
                let mut registry = self.shared.sessions.lock();
                let existing = registry.get(&client_id).cloned();
                match existing {
                    Some(existing) => {
                        let mut inner = existing.lock();
                        if let Some(link) = inner.link.clone() {
                            Some((existing.clone(), link))
                        } else {
                            if let Some(timer) = inner.offline_timer.take() {
                                timer.cancel();
                            }
                            if clean_start {
                                inner.ended = true;
                                let will = inner.pending_will.take();
                                drop(inner);
                                registry.remove(&client_id);
                                let fresh = self.new_session(&client_id, expiry_interval);
                                registry.insert(client_id.clone(), fresh.session.clone());
                                drop(registry);
                                self.remove_subscriptions(&existing);
                                if let Some(will) = will {
                                    self.publish(will.message);
                                }
                                return fresh;
                            }
                            inner.pending_will = None;
                            inner.expiry_interval = expiry_interval;
                            let link = Link::new(self.next_generation());
                            inner.link = Some(link.clone());
                            drop(inner);
                            return OpenedSession {
                                session: existing,
                                link,
                                session_present: true,
                            };
                        }
                    }
                    None => {
                        let fresh = self.new_session(&client_id, expiry_interval);
                        registry.insert(client_id.clone(), fresh.session.clone());
                        return fresh;
                    }
                }
            };
            if let Some((session, link)) = busy {
                link.kick(ReasonCode::SESSION_TAKEN_OVER);
                let released =
                    tokio::time::timeout(TAKEOVER_TIMEOUT, link.detached.cancelled()).await;
                if released.is_err() {
                    // The old connection is stuck (e.g. blocked writing to a peer that
                    // reads nothing): detach it by force; its task notices the kick.
                    tracing::warn!(client_id = %client_id, "takeover: old connection did not release in time");
                    let mut inner = session.lock();
                    if inner.link.as_ref().map(|l| l.generation) == Some(link.generation) {
                        inner.link = None;
                    }
                }
            }
        }
    }

    fn next_generation(&self) -> u64 {
        self.shared.next_generation.fetch_add(1, Ordering::Relaxed)
    }

    fn new_session(&self, client_id: &ByteString, expiry_interval: u32) -> OpenedSession {
        let id: SessionId = self.shared.next_session_id.fetch_add(1, Ordering::Relaxed);
        let session = Session::new(id, client_id.clone(), self.queue_limits());
        let link = Link::new(self.next_generation());
        {
            let mut inner = session.lock();
            inner.expiry_interval = expiry_interval;
            inner.link = Some(link.clone());
        }
        OpenedSession {
            session,
            link,
            session_present: false,
        }
    }

    /// Called by a connection when it ends. `will` is `None` after a normal DISCONNECT
    /// [MQTT-3.1.2-10]. `expiry_interval` is the final Session Expiry Interval (a v5
    /// DISCONNECT may have changed it [MQTT-3.14.2-2]).
    pub fn close_connection(
        &self,
        session: &Arc<Session>,
        link: &Link,
        will: Option<PendingWill>,
        expiry_interval: u32,
    ) {
        let ends_now = expiry_interval == 0;
        if ends_now {
            let mut registry = self.shared.sessions.lock();
            let mut inner = session.lock();
            if inner.link.as_ref().map(|l| l.generation) == Some(link.generation) {
                inner.link = None;
                inner.ended = true;
                drop(inner);
                if registry
                    .get(&session.client_id)
                    .is_some_and(|s| Arc::ptr_eq(s, session))
                {
                    registry.remove(&session.client_id);
                }
                drop(registry);
                self.remove_subscriptions(session);
                // The session ends with the connection: the will goes now, whatever
                // its delay [MQTT-3.1.3-9].
                if let Some(will) = will {
                    self.publish(will.message);
                }
            }
        } else {
            let mut inner = session.lock();
            if inner.link.as_ref().map(|l| l.generation) == Some(link.generation) {
                inner.link = None;
                inner.expiry_interval = expiry_interval;
                inner.delivery.on_offline();
                let will_now = will.as_ref().is_some_and(|w| w.delay == 0);
                let timer = CancellationToken::new();
                inner.offline_timer = Some(timer.clone());
                let (now_will, later_will) = if will_now { (will, None) } else { (None, will) };
                inner.pending_will = later_will.clone();
                drop(inner);
                if let Some(will) = now_will {
                    self.publish(will.message);
                }
                self.start_offline_timer(
                    session.clone(),
                    later_will.map(|w| w.delay),
                    expiry_interval,
                    timer,
                );
            }
        }
        link.detached.cancel();
    }

    /// While a session is offline: publish its delayed will at the smaller of the Will
    /// Delay Interval and the Session Expiry Interval, and end the session at its
    /// expiry [MQTT-3.1.2-23]. Cancelled when the client reconnects.
    fn start_offline_timer(
        &self,
        session: Arc<Session>,
        will_delay: Option<u32>,
        expiry_interval: u32,
        cancel: CancellationToken,
    ) {
        let broker = self.clone();
        self.shared.tasks.spawn(async move {
            let start = tokio::time::Instant::now();
            if let Some(delay) = will_delay {
                let at = start + Duration::from_secs(u64::from(delay.min(expiry_interval)));
                tokio::select! {
                    _ = tokio::time::sleep_until(at) => {
                        let will = session.lock().pending_will.take();
                        if let Some(will) = will {
                            broker.publish(will.message);
                        }
                    }
                    _ = cancel.cancelled() => return,
                }
            }
            if expiry_interval == u32::MAX {
                return;
            }
            let at = start + Duration::from_secs(u64::from(expiry_interval));
            tokio::select! {
                _ = tokio::time::sleep_until(at) => broker.expire_session(&session),
                _ = cancel.cancelled() => {}
            }
        });
    }

    /// Ends an offline session whose expiry passed.
    fn expire_session(&self, session: &Arc<Session>) {
        {
            let mut registry = self.shared.sessions.lock();
            let mut inner = session.lock();
            if inner.link.is_some() || inner.ended {
                return;
            }
            inner.ended = true;
            inner.offline_timer = None;
            drop(inner);
            if registry
                .get(&session.client_id)
                .is_some_and(|s| Arc::ptr_eq(s, session))
            {
                registry.remove(&session.client_id);
            }
        }
        tracing::debug!(client_id = %session.client_id, "session expired");
        self.remove_subscriptions(session);
    }

    fn remove_subscriptions(&self, session: &Arc<Session>) {
        let subs: Vec<ByteString> = session
            .lock()
            .subscriptions
            .drain()
            .map(|(f, _)| f)
            .collect();
        if subs.is_empty() {
            return;
        }
        let mut router = self.shared.router.write();
        for filter in &subs {
            let (group, f) = split_shared(filter);
            router.unsubscribe(f, group, session.id);
        }
    }

    /// Routes a message to every matching session and applies it to the retained store.
    /// Returns the number of sessions it was queued for. For the broker's own messages
    /// (wills, `$SYS`): one above the retained budget is still routed, just not stored.
    pub fn publish(&self, message: Arc<Message>) -> usize {
        if message.retain && self.retain(&message).is_err() {
            tracing::debug!(topic = %message.topic, "retained budget reached: message routed but not retained");
        }
        self.route(message)
    }

    /// A client's PUBLISH: as [`Broker::publish`], but a retained message above
    /// `limits.retained_max_bytes` is refused as a whole (v5 answers 0x97).
    pub fn try_publish(&self, message: Arc<Message>) -> Result<usize, PublishRefused> {
        if message.retain && self.retain(&message).is_err() {
            return Err(PublishRefused::RetainedBudget);
        }
        Ok(self.route(message))
    }

    fn retain(&self, message: &Arc<Message>) -> Result<(), OverBudget> {
        let max = self.config().limits.retained_max_bytes;
        let result = self.shared.retained.write().apply(message, max);
        if result.is_err() {
            Stats::add(&self.shared.stats.retained_over_budget, 1);
            // One log line per second at most: a flood must not become a log flood.
            let now = self.uptime().as_secs();
            if self
                .shared
                .retained_budget_logged
                .swap(now, Ordering::Relaxed)
                != now
            {
                tracing::warn!(
                    topic = %message.topic,
                    bytes = message.weight(),
                    limit = max,
                    "retained message not stored: limits.retained_max_bytes reached"
                );
            }
        }
        result
    }

    /// Queues `message` for every matching session allowed to read it.
    fn route(&self, message: Arc<Message>) -> usize {
        let mut deliveries = Vec::new();
        self.shared.router.read().route(&message, &mut deliveries);
        // Read ACL (Mosquitto checks it per delivery, so wildcard subscriptions only
        // get what the client may read). Nothing to do, and no lock, without an ACL.
        if let Some(acl) = self.shared.security.acl() {
            let before = deliveries.len();
            deliveries.retain(|(session, _)| session.may_read(&acl, &message.topic));
            let denied = before - deliveries.len();
            if denied > 0 {
                Stats::add(&self.shared.stats.acl_read_denied, denied as u64);
            }
        }
        let matched = deliveries.len();
        if matched == 0 {
            Stats::add(&self.shared.stats.publish_dropped_no_subscribers, 1);
        }
        for (session, delivery) in deliveries {
            if let Err(DropReason::QueueFull) = session.deliver(delivery) {
                Stats::add(&self.shared.stats.dropped_queue_full, 1);
                if let Some(dropped) = session.note_overflow(Instant::now()) {
                    tracing::warn!(
                        client_id = %session.client_id,
                        dropped,
                        "session queue full (max_queued_messages / max_queued_bytes): newest deliveries dropped; the client reads too slowly or is offline"
                    );
                }
            }
        }
        matched
    }

    /// Adds or replaces a subscription of `session`. Returns whether it existed before
    /// (for Retain Handling 1) [MQTT-3.8.4-3].
    pub fn subscribe(
        &self,
        session: &Arc<Session>,
        filter: &ByteString,
        options: SubscriptionOptions,
        identifier: Option<u32>,
    ) -> bool {
        let (group, f) = split_shared(filter);
        session.lock().subscriptions.insert(
            filter.clone(),
            SubscriptionRecord {
                options,
                identifier,
            },
        );
        self.shared.router.write().subscribe(
            f,
            group,
            Subscriber {
                session: session.clone(),
                options,
                identifier,
            },
        )
    }

    /// Removes a subscription; false if the session had none for `filter`.
    pub fn unsubscribe(&self, session: &Arc<Session>, filter: &ByteString) -> bool {
        let had = session.lock().subscriptions.remove(filter).is_some();
        let (group, f) = split_shared(filter);
        let removed = self.shared.router.write().unsubscribe(f, group, session.id);
        had || removed
    }

    /// Retained messages for a new subscription, as deliveries with RETAIN set
    /// [MQTT-3.3.1-9], at min(message QoS, granted QoS).
    pub fn retained_deliveries(
        &self,
        filter: &str,
        granted: QoS,
        identifier: Option<u32>,
    ) -> Vec<Delivery> {
        let matches = self.shared.retained.read().matching(filter, Instant::now());
        matches
            .into_iter()
            .map(|message| Delivery {
                qos: message.qos.min(granted),
                retain: true,
                subscription_ids: identifier.into_iter().collect(),
                message,
            })
            .collect()
    }

    /// Drops expired retained messages (run periodically).
    pub fn sweep_retained(&self) -> usize {
        self.shared.retained.write().sweep_expired(Instant::now())
    }

    /// Kicks every connection (shutdown): v5 clients get DISCONNECT with `reason`.
    pub fn kick_all(&self, reason: ReasonCode) {
        let sessions: Vec<Arc<Session>> = self.shared.sessions.lock().values().cloned().collect();
        for session in sessions {
            if let Some(link) = session.lock().link.clone() {
                link.kick(reason);
            }
        }
    }
}
