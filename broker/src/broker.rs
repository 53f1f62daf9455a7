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
use crate::retained::{OverBudget, RetainedCursor, RetainedStore};
use crate::router::{Router, Subscriber};
use crate::session::{DropReason, Link, QueueLimits, Session, SubscriptionRecord};
use crate::stats::Stats;
use crate::store::{Loaded, Store};

mod inspect;
mod registry;
pub use inspect::{SessionSnapshot, SubscriptionSnapshot};

/// How long a new connection waits for the connection it takes over to let go.
const TAKEOVER_TIMEOUT: Duration = Duration::from_secs(5);

/// Longest a handed-over session's routes stay on its previous node, relaying to the
/// new owner ([`Broker::hand_over_session`]).
pub const RELAY_GRACE: Duration = Duration::from_secs(5);

/// How long the relay stays after this node sees the new owner's routes: the other
/// nodes apply the same Raft entries a heartbeat or two later.
const RELAY_MARGIN: Duration = Duration::from_millis(500);

/// A will waiting for its connection to end, or for its delay [MQTT-3.1.3-9].
#[derive(Debug, Clone)]
pub struct PendingWill {
    pub message: Arc<Message>,
    /// Will Delay Interval in seconds (0 for 3.1.x).
    pub delay: u32,
}

/// Something the publisher's acknowledgement waits for besides the local store: a
/// peer node's acknowledgement of a forwarded QoS 1/2 message, or the Raft commit of
/// a retained message. `Err` carries the reason code a v5 publisher gets.
pub type Confirm = futures::future::BoxFuture<'static, Result<(), ReasonCode>>;

/// What routing a message did, for the publisher's acknowledgement.
#[derive(Default)]
pub struct PublishOutcome {
    /// Sessions the message was queued for (a peer node with matching routes counts
    /// as one).
    pub matched: usize,
    /// The store generation the acknowledgement must wait for (strict durability).
    pub generation: Option<u64>,
    /// A store write failed: the acknowledgement reports an error (v5 0x97).
    pub store_failed: bool,
    /// Cluster confirmations the acknowledgement waits for (empty on a single node).
    pub confirms: Vec<Confirm>,
}

impl std::fmt::Debug for PublishOutcome {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PublishOutcome")
            .field("matched", &self.matched)
            .field("generation", &self.generation)
            .field("store_failed", &self.store_failed)
            .field("confirms", &self.confirms.len())
            .finish()
    }
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
    store: Option<Arc<Store>>,
    sessions: Mutex<registry::Registry>,
    router: RwLock<Router>,
    retained: RwLock<RetainedStore>,
    stats: Stats,
    next_session_id: AtomicU64,
    next_generation: AtomicU64,
    /// Every session's queue limits (from the configuration, fixed for the broker's life).
    queue_limits: Arc<QueueLimits>,
    shutdown: CancellationToken,
    tasks: TaskTracker,
    started: Instant,
    security: Security,
    gate: ConnectionGate,
    /// Uptime second of the last "retained budget reached" log line (one per second).
    retained_budget_logged: AtomicU64,
    /// The cluster layer, set once at start when `cluster.enabled` (see
    /// [`crate::cluster_link`]); empty on a single node, whose paths then skip every
    /// cluster step at the cost of one check.
    cluster: std::sync::OnceLock<ferromq_cluster::Cluster>,
    /// Cluster node: persistent sessions handed over to another node whose routes
    /// here are kept for a while, so deliveries that still reach them are relayed to
    /// the new owner (see [`Broker::hand_over_session`]). Session id -> new owner.
    moved: Mutex<std::collections::HashMap<SessionId, u64>>,
    /// Notified whenever a session handed over by another node is imported, for
    /// relayed deliveries waiting for it ([`Broker::deliver_to_moved`]).
    imported: tokio::sync::Notify,
}

/// Why a retained message was not applied.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum RetainError {
    /// Above `limits.retained_max_bytes`.
    OverBudget,
    /// The durable store failed (logged where it happened).
    Store,
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
    /// A broker on `config`, with `store` when persistence is enabled, and the
    /// password and ACL files of `config` (failing closed if they cannot be read: see
    /// [`Security::load_or_fail_closed`]).
    pub fn new(config: Arc<Config>, store: Option<Arc<Store>>) -> Broker {
        let security = Security::load_or_fail_closed(&config);
        Broker::with_security(config, store, security)
    }

    /// A broker with authentication state loaded by the caller.
    pub fn with_security(
        config: Arc<Config>,
        store: Option<Arc<Store>>,
        security: Security,
    ) -> Broker {
        let gate = ConnectionGate::new(&config.limits, crate::limits::fd_limit());
        let queue_limits = Arc::new(QueueLimits {
            max_messages: config.mqtt.max_queued_messages,
            max_bytes: config.mqtt.max_queued_bytes,
            queue_qos0: config.mqtt.queue_qos0_messages,
            memory_window: config.persistence.queue_memory_window,
        });
        Broker {
            shared: Arc::new(Shared {
                config,
                store,
                sessions: Mutex::new(registry::Registry::default()),
                router: RwLock::new(Router::default()),
                retained: RwLock::new(RetainedStore::default()),
                stats: Stats::default(),
                next_session_id: AtomicU64::new(1),
                next_generation: AtomicU64::new(1),
                queue_limits,
                shutdown: CancellationToken::new(),
                tasks: TaskTracker::new(),
                started: Instant::now(),
                security,
                gate,
                retained_budget_logged: AtomicU64::new(u64::MAX),
                cluster: std::sync::OnceLock::new(),
                moved: Mutex::new(std::collections::HashMap::new()),
                imported: tokio::sync::Notify::new(),
            }),
        }
    }

    /// The cluster layer, when this broker is a cluster node.
    pub fn cluster(&self) -> Option<&ferromq_cluster::Cluster> {
        self.shared.cluster.get()
    }

    /// Attaches the cluster layer (once, at start, before any listener accepts).
    pub fn set_cluster(&self, cluster: ferromq_cluster::Cluster) {
        let _ = self.shared.cluster.set(cluster);
    }

    /// The durable store, when persistence is enabled.
    pub fn store(&self) -> Option<&Arc<Store>> {
        self.shared.store.as_ref()
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
        match &self.shared.store {
            Some(store) => store.retained_count(),
            None => self.shared.retained.read().len(),
        }
    }

    /// The queue limits every session shares (one allocation, not one per session).
    fn queue_limits(&self) -> Arc<QueueLimits> {
        self.shared.queue_limits.clone()
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
                            // A session with expiry 0 ends with its connection
                            // (MQTT 5 3.1.2.11.2); one still here had its connection
                            // detached by force below, and is discarded, not resumed.
                            // So a session never becomes persistent after it was
                            // created (`Session::created_persistent`).
                            if clean_start || inner.expiry_interval == 0 {
                                inner.ended = true;
                                let will = inner.pending_will.take();
                                drop(inner);
                                registry.remove(&client_id);
                                self.delete_stored(&existing);
                                let fresh = self.new_session(&client_id, expiry_interval);
                                registry.insert(fresh.session.clone());
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
                            if let Some(store) = existing.store() {
                                let stored = if expiry_interval > 0 {
                                    existing.save_record(&inner, None);
                                    store.remove_will(&existing.client_id)
                                } else {
                                    // No longer persistent: it ends with this
                                    // connection, so nothing of it stays on disk;
                                    // its queue moves into memory first.
                                    existing.load_all_from_store(&mut inner);
                                    store.delete_session(&existing.client_id)
                                };
                                if let Err(e) = stored {
                                    tracing::warn!(client_id = %client_id, error = %e, "store update failed");
                                }
                            }
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
                        registry.insert(fresh.session.clone());
                        return fresh;
                    }
                }
            };
            if let Some((session, link)) = busy {
                session.kick(&link, ReasonCode::SESSION_TAKEN_OVER);
                let released = tokio::time::timeout(TAKEOVER_TIMEOUT, link.detached()).await;
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

    /// A fresh, offline session with a new id, the configured queue limits and the store.
    fn make_session(&self, client_id: &ByteString, persistent: bool) -> Arc<Session> {
        let id: SessionId = self.shared.next_session_id.fetch_add(1, Ordering::Relaxed);
        Session::new(
            id,
            client_id.clone(),
            self.queue_limits(),
            self.shared.store.clone(),
            persistent,
        )
    }

    fn new_session(&self, client_id: &ByteString, expiry_interval: u32) -> OpenedSession {
        let session = self.make_session(client_id, expiry_interval > 0);
        let link = Link::new(self.next_generation());
        {
            let mut inner = session.lock();
            inner.expiry_interval = expiry_interval;
            inner.link = Some(link.clone());
            session.save_record(&inner, None);
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
                self.delete_stored(session);
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
                let now_ms = crate::store::codec::now_unix_ms();
                session.save_record(&inner, Some(now_ms));
                if let (Some(store), Some(w)) = (session.persist(&inner), &later_will) {
                    let deadline = now_ms + u64::from(w.delay.min(expiry_interval)) * 1000;
                    if let Err(e) = store.put_will(&session.client_id, deadline, &w.message) {
                        tracing::warn!(client_id = %session.client_id, error = %e, "cannot store the pending will");
                    }
                }
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
        link.detach();
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
                    // Shutting down: the timer's state is on disk (will deadline, offline
                    // time) and restarts from there; waiting would hold the drain up.
                    _ = broker.shutdown_token().cancelled() => return,
                    _ = tokio::time::sleep_until(at) => {
                        let will = session.lock().pending_will.take();
                        if let Some(will) = will {
                            broker.publish(will.message);
                            if let Some(store) = session.store() {
                                let _ = store.remove_will(&session.client_id);
                            }
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
                _ = broker.shutdown_token().cancelled() => {}
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
        if let Some(cluster) = self.cluster() {
            cluster.session_release(&session.client_id);
        }
        self.remove_subscriptions(session);
        self.delete_stored(session);
    }

    /// Removes every stored record of a session that ended.
    fn delete_stored(&self, session: &Arc<Session>) {
        if let Some(store) = session.store()
            && let Err(e) = store.delete_session(&session.client_id)
        {
            tracing::warn!(client_id = %session.client_id, error = %e, "cannot delete the stored session");
        }
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
        let mut removed = Vec::new();
        for filter in &subs {
            let (group, f) = split_shared(filter);
            if router.unsubscribe(f, group, session.id) {
                removed.push(filter);
            }
        }
        drop(router);
        for filter in removed {
            let (group, f) = split_shared(filter);
            self.announce_route(session, group, f, false);
        }
    }

    /// Routes a message to every matching session and applies it to the retained
    /// store; says which store generation an acknowledgement must wait for. For the
    /// broker's own messages (wills, `$SYS`): one above the retained budget is still
    /// routed, just not stored.
    pub fn publish(&self, message: Arc<Message>) -> PublishOutcome {
        let mut outcome = PublishOutcome::default();
        if message.retain {
            match self.retain(&message) {
                Ok(g) => {
                    outcome.generation = g;
                    // Nobody waits for the commit of the broker's own messages.
                    drop(crate::cluster_link::commit_retained(self, &message));
                }
                Err(RetainError::OverBudget) => {
                    tracing::debug!(topic = %message.topic, "retained budget reached: message routed but not retained");
                }
                Err(RetainError::Store) => {
                    outcome.store_failed = true;
                    return outcome;
                }
            }
        }
        self.route(message, outcome)
    }

    /// A client's PUBLISH: as [`Broker::publish`], but a retained message above
    /// `limits.retained_max_bytes` is refused as a whole (v5 answers 0x97).
    pub fn try_publish(&self, message: Arc<Message>) -> Result<PublishOutcome, PublishRefused> {
        let mut outcome = PublishOutcome::default();
        if message.retain {
            match self.retain(&message) {
                Ok(g) => {
                    outcome.generation = g;
                    if let Some(confirm) = crate::cluster_link::commit_retained(self, &message) {
                        outcome.confirms.push(confirm);
                    }
                }
                Err(RetainError::OverBudget) => return Err(PublishRefused::RetainedBudget),
                Err(RetainError::Store) => {
                    outcome.store_failed = true;
                    return Ok(outcome);
                }
            }
        }
        Ok(self.route(message, outcome))
    }

    /// Applies a retained PUBLISH to the durable store (persistence on) or the
    /// in-memory one, within `limits.retained_max_bytes`. Returns the store
    /// generation to wait for, if any.
    fn retain(&self, message: &Arc<Message>) -> Result<Option<u64>, RetainError> {
        let max = self.config().limits.retained_max_bytes;
        let result = match &self.shared.store {
            // A cluster node never writes a retained message itself: the Raft state
            // machine applies it on every node (`apply_retained`); here only the budget
            // is checked. The commit is awaited through `PublishOutcome::confirms`.
            Some(store) if self.cluster().is_some() && !message.topic.starts_with('$') => {
                let fits = message.payload.is_empty()
                    || store.retained_bytes().saturating_add(message.weight()) <= max;
                if fits {
                    Ok(None)
                } else {
                    Err(RetainError::OverBudget)
                }
            }
            Some(store) => match store.put_retained_within(message, max) {
                Ok(Ok(g)) => Ok(Some(g)),
                Ok(Err(OverBudget)) => Err(RetainError::OverBudget),
                Err(e) => {
                    tracing::warn!(topic = %message.topic, error = %e, "cannot store a retained message");
                    return Err(RetainError::Store);
                }
            },
            None => self
                .shared
                .retained
                .write()
                .apply(message, max)
                .map(|()| None)
                .map_err(|OverBudget| RetainError::OverBudget),
        };
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

    /// Queues `message` for every matching session allowed to read it, and on a
    /// cluster node forwards it once to each other node with matching routes.
    fn route(&self, message: Arc<Message>, mut outcome: PublishOutcome) -> PublishOutcome {
        let mut deliveries = crate::fanout::take_buffer();
        let cluster = self.cluster();
        // Shared groups with a local member take the message here (a local member
        // is preferred); the cluster layer sends the others' messages to one node.
        let mut local_groups: Vec<(ByteString, ByteString)> = Vec::new();
        {
            let router = self.shared.router.read();
            match cluster {
                None => router.route(&message, &mut deliveries),
                Some(_) => router.route_noting_groups(&message, &mut deliveries, &mut local_groups),
            }
        }
        let local = self.enqueue(&message, deliveries);
        outcome.matched = local.matched;
        outcome.store_failed |= local.store_failed;
        if let Some(g) = local.generation {
            outcome.generation = Some(g.max(outcome.generation.unwrap_or(0)));
        }
        if let Some(cluster) = cluster {
            crate::cluster_link::forward(cluster, &message, &local_groups, &mut outcome);
        }
        // `$SYS` statistics nobody subscribed to are not a lost message.
        if outcome.matched == 0 && !message.topic.starts_with("$SYS/") {
            Stats::add(&self.shared.stats.publish_dropped_no_subscribers, 1);
        }
        outcome
    }

    /// Puts computed deliveries into their sessions' queues (after the read ACL),
    /// counting what was dropped and why.
    fn enqueue(
        &self,
        message: &Arc<Message>,
        mut deliveries: Vec<(Arc<Session>, Delivery)>,
    ) -> PublishOutcome {
        let mut outcome = PublishOutcome::default();
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
        outcome.matched = deliveries.len();
        for (session, delivery) in deliveries.drain(..) {
            match session.deliver(delivery) {
                Ok(Some(g)) => outcome.generation = Some(g.max(outcome.generation.unwrap_or(0))),
                Ok(None) => {}
                Err(DropReason::QueueFull) => {
                    Stats::add(&self.shared.stats.dropped_queue_full, 1);
                    if let Some(dropped) = session.note_overflow(Instant::now()) {
                        tracing::warn!(
                            client_id = %session.client_id,
                            dropped,
                            "session queue full (max_queued_messages / max_queued_bytes): newest deliveries dropped; the client reads too slowly or is offline"
                        );
                    }
                }
                Err(DropReason::StoreFailed) => outcome.store_failed = true,
                Err(DropReason::OfflineQos0) => {
                    Stats::add(&self.shared.stats.dropped_offline_qos0, 1);
                }
                Err(DropReason::Expired) => {}
                Err(DropReason::Ended) => self.relay_moved(&session, message, &mut outcome),
            }
        }
        crate::fanout::return_buffer(deliveries);
        outcome
    }

    /// Delivers a message another node forwarded: to local sessions only, never
    /// forwarded again and never applied to the retained store (the origin committed
    /// that through Raft). `shared`: only to one local member of that group. Returns
    /// the store generation that makes the deliveries durable.
    pub fn deliver_forwarded(
        &self,
        message: Arc<Message>,
        shared: Option<(&str, &str)>,
    ) -> PublishOutcome {
        let mut deliveries = crate::fanout::take_buffer();
        {
            let router = self.shared.router.read();
            match shared {
                None => router.route_direct(&message, &mut deliveries),
                Some((group, filter)) => {
                    router.route_group(&message, group, filter, &mut deliveries)
                }
            }
        }
        self.enqueue(&message, deliveries)
    }

    /// Delivers a message relayed by the previous owner of `client_id`'s session (it
    /// moved here, see [`Broker::hand_over_session`]): to that session only, matched
    /// against its own subscriptions. The relay can overtake the handover itself, so
    /// this waits up to `wait` for the session to be imported; without it by then the
    /// message is dropped (logged).
    pub async fn deliver_to_moved(
        &self,
        client_id: &str,
        message: Arc<Message>,
        wait: Duration,
    ) -> PublishOutcome {
        let id = ByteString::from(client_id);
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let imported = self.shared.imported.notified();
            tokio::pin!(imported);
            imported.as_mut().enable();
            if let Some(session) = self.session(&id) {
                let mut deliveries = crate::fanout::take_buffer();
                self.shared
                    .router
                    .read()
                    .route_direct(&message, &mut deliveries);
                deliveries.retain(|(s, _)| Arc::ptr_eq(s, &session));
                return self.enqueue(&message, deliveries);
            }
            if tokio::time::timeout_at(deadline, imported).await.is_err() {
                tracing::warn!(client_id, topic = %message.topic, "relayed message dropped: the session did not arrive here in time");
                return PublishOutcome::default();
            }
        }
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
        {
            let mut inner = session.lock();
            inner.subscriptions.insert(
                filter.clone(),
                SubscriptionRecord {
                    options,
                    identifier,
                },
            );
            session.save_record(&inner, None);
        }
        let existed = self.shared.router.write().subscribe(
            f,
            group,
            Subscriber {
                session: session.clone(),
                options,
                identifier,
            },
        );
        if !existed {
            self.announce_route(session, group, f, true);
        }
        existed
    }

    /// Tells the cluster (if any) that a session's subscription to `filter` came or
    /// went; the cluster counts them per filter and replicates only the first and
    /// the last.
    fn announce_route(&self, session: &Session, group: Option<&str>, filter: &str, added: bool) {
        let Some(cluster) = self.cluster() else {
            return;
        };
        let persistent = session.created_persistent;
        match (group, added) {
            (None, true) => cluster.route_add(filter, persistent),
            (None, false) => cluster.route_remove(filter, persistent),
            (Some(g), true) => cluster.shared_add(g, filter),
            (Some(g), false) => cluster.shared_remove(g, filter),
        }
    }

    /// A delivery reached a session that has ended here: if it was handed over to
    /// another node, relay the message there (to that client's session only), and
    /// let the acknowledgement wait for the new owner (see
    /// [`Broker::hand_over_session`]). Otherwise it is dropped, as before the end.
    fn relay_moved(&self, session: &Session, message: &Arc<Message>, outcome: &mut PublishOutcome) {
        let Some(node) = self.shared.moved.lock().get(&session.id).copied() else {
            return;
        };
        let Some(cluster) = self.cluster() else {
            return;
        };
        if let Some(confirm) =
            crate::cluster_link::relay(cluster, node, &session.client_id, message)
        {
            outcome.confirms.push(confirm);
        }
    }

    /// Removes a subscription; false if the session had none for `filter`.
    pub fn unsubscribe(&self, session: &Arc<Session>, filter: &ByteString) -> bool {
        let had = {
            let mut inner = session.lock();
            let had = inner.subscriptions.remove(filter).is_some();
            if had {
                session.save_record(&inner, None);
            }
            had
        };
        let (group, f) = split_shared(filter);
        let removed = self.shared.router.write().unsubscribe(f, group, session.id);
        if removed {
            self.announce_route(session, group, f, false);
        }
        had || removed
    }

    /// A cursor that streams the retained messages matching `filter` into a new
    /// subscription's session as its queue has room (see [`RetainedCursor`]): out of
    /// the store with persistence on, out of the in-memory index with persistence off.
    /// They go with RETAIN set [MQTT-3.3.1-9], at min(message QoS, granted QoS).
    pub fn retained_cursor(
        &self,
        filter: &str,
        granted: QoS,
        identifier: Option<u32>,
    ) -> RetainedCursor {
        match &self.shared.store {
            Some(_) => RetainedCursor::new(filter, granted, identifier),
            None => {
                let matches = self.shared.retained.read().matching(filter, Instant::now());
                RetainedCursor::from_memory(filter, matches, granted, identifier)
            }
        }
    }

    /// Drops expired retained messages (run periodically). With persistence on they
    /// are dropped when a scan meets them and on start instead (a sweep of the store
    /// would read every record).
    pub fn sweep_retained(&self) -> usize {
        self.shared.retained.write().sweep_expired(Instant::now())
    }

    /// Rebuilds sessions, subscriptions, queues and retained messages loaded from the
    /// store at start. Session expiry and will delay count from the time the client
    /// went offline (wall clock), so the downtime counts; a session whose client was
    /// connected when the broker stopped counts from now.
    pub fn restore(&self, loaded: Loaded) {
        let now_ms = crate::store::codec::now_unix_ms();
        let (mut restored, mut expired) = (0usize, 0usize);
        for ls in loaded.sessions {
            let expiry = ls.record.expiry_interval;
            let elapsed_s = ls
                .record
                .offline_since_unix_ms
                .map(|t| now_ms.saturating_sub(t) / 1000)
                .unwrap_or(0);
            let client_id = ByteString::from(ls.client_id.as_str());
            if expiry != u32::MAX && elapsed_s >= u64::from(expiry) {
                // Expired while the broker was down; its will was due no later.
                if let Some((_, will)) = ls.will {
                    self.publish(will);
                }
                if let Some(store) = &self.shared.store {
                    let _ = store.delete_session(&ls.client_id);
                }
                expired += 1;
                continue;
            }
            let remaining_expiry = if expiry == u32::MAX {
                u32::MAX
            } else {
                expiry - elapsed_s as u32
            };
            // Restored sessions are persistent: only those are stored.
            let session = self.make_session(&client_id, true);
            let timer = CancellationToken::new();
            let mut will_delay = None;
            {
                let mut inner = session.lock();
                inner.expiry_interval = expiry;
                for (seq, delivery, state) in ls.outbound {
                    match state {
                        Some((stage, pid)) => {
                            inner.delivery.restore_inflight(seq, delivery, stage, pid)
                        }
                        None => inner.delivery.restore_queued(seq, delivery),
                    }
                }
                for (seq, weight) in ls.outbound_on_disk {
                    inner.delivery.restore_on_disk(seq, weight);
                }
                for pid in ls.inbound_qos2 {
                    inner.delivery.restore_incoming_qos2(pid);
                }
                if let Some((deadline, message)) = ls.will {
                    let delay = deadline.saturating_sub(now_ms).div_ceil(1000) as u32;
                    inner.pending_will = Some(PendingWill { message, delay });
                    will_delay = Some(delay);
                }
                inner.offline_timer = Some(timer.clone());
            }
            let mut router = self.shared.router.write();
            for row in &ls.record.subscriptions {
                let options = SubscriptionOptions {
                    qos: QoS::from_u8(row.qos).unwrap_or(QoS::AtMostOnce),
                    no_local: row.no_local,
                    retain_as_published: row.retain_as_published,
                    retain_handling: match row.retain_handling {
                        1 => ferromq_codec::RetainHandling::SendIfNew,
                        2 => ferromq_codec::RetainHandling::DoNotSend,
                        _ => ferromq_codec::RetainHandling::SendAtSubscribe,
                    },
                };
                let filter = ByteString::from(row.filter.as_str());
                session.lock().subscriptions.insert(
                    filter.clone(),
                    SubscriptionRecord {
                        options,
                        identifier: row.identifier,
                    },
                );
                let (group, f) = split_shared(&filter);
                let existed = router.subscribe(
                    f,
                    group,
                    Subscriber {
                        session: session.clone(),
                        options,
                        identifier: row.identifier,
                    },
                );
                if !existed {
                    self.announce_route(&session, group, f, true);
                }
            }
            drop(router);
            self.shared.sessions.lock().insert(session.clone());
            self.start_offline_timer(session, will_delay, remaining_expiry, timer);
            restored += 1;
        }
        tracing::info!(
            sessions = restored,
            expired_sessions = expired,
            retained = loaded.retained,
            expired_messages = loaded.expired_messages,
            "state restored from the store"
        );
    }

    // ---- cluster node ---------------------------------------------------------

    /// Announces every subscription restored before the cluster layer was attached,
    /// then lets the cluster drop this node's replicated routes nobody holds any more.
    pub fn announce_all_routes(&self) {
        let Some(cluster) = self.cluster() else {
            return;
        };
        let sessions: Vec<Arc<Session>> = self.shared.sessions.lock().values().cloned().collect();
        for session in sessions {
            let filters: Vec<ByteString> = session.lock().subscriptions.keys().cloned().collect();
            for filter in filters {
                let (group, f) = split_shared(&filter);
                self.announce_route(&session, group, f, true);
            }
        }
        cluster.routes_reconcile();
    }

    /// A retained change applied by the Raft state machine: written to this node's
    /// store whatever the budget (every node must hold the same set; the budget was
    /// checked where the PUBLISH arrived).
    pub fn apply_retained(&self, topic: &str, message: Option<&bytes::Bytes>) {
        let Some(store) = &self.shared.store else {
            return;
        };
        let result = match message.and_then(|b| crate::store::codec::decode(b)) {
            Some(stored) => store
                .put_retained_within(&stored.into_message(), usize::MAX)
                .map(|_| ()),
            None => store.remove_retained(topic).map(|_| ()),
        };
        if let Err(e) = result {
            tracing::error!(topic, error = %e, "cannot apply a replicated retained message to the store");
        }
    }

    /// Installs a session handed over by another node (its store records), in place
    /// of any copy this node had.
    pub fn import_session(&self, client_id: &ByteString, blob: &[u8]) {
        let Some(store) = &self.shared.store else {
            return;
        };
        self.drop_local_session(client_id);
        match store.import_session(client_id, blob) {
            Ok(Some(loaded)) => self.restore(Loaded {
                sessions: vec![loaded],
                ..Loaded::default()
            }),
            Ok(None) => {}
            Err(e) => {
                tracing::warn!(client_id = %client_id, error = %e, "session handed over by another node is unusable: starting empty");
            }
        }
        self.shared.imported.notify_waiters();
    }

    /// Another node (`to`) takes `client_id` over: closes the connection here (v5
    /// 0x8E), exports the session's store records and removes the session from this
    /// node (no will: the session lives on elsewhere, its pending will with it).
    ///
    /// No acknowledged message may fall between the export and the new owner's
    /// routes: until the other nodes see the new owner's route, they still forward
    /// matching messages here. So the export and the session's end happen under the
    /// session lock (every earlier delivery is in the export), and the session's
    /// routes stay here, relaying what still matches to `to` ([`Broker::relay_moved`],
    /// acknowledged end to end), until this node's state shows `to` holding every one
    /// of its filters as a persistent route (publishers wait for `to`; a transient
    /// route of `to`'s clean sessions is not enough) plus [`RELAY_MARGIN`] for the
    /// other nodes to apply the same,
    /// and at most [`RELAY_GRACE`]. A message can then arrive twice (directly and
    /// relayed) during the switch: at least once, never lost.
    pub async fn hand_over_session(
        &self,
        client_id: &ByteString,
        wait: Duration,
        to: u64,
    ) -> Option<bytes::Bytes> {
        let existing = self.shared.sessions.lock().get(client_id).cloned()?;
        let link = existing.lock().link.clone();
        if let Some(link) = link {
            existing.kick(&link, ReasonCode::SESSION_TAKEN_OVER);
            let _ = tokio::time::timeout(wait, link.detached()).await;
        }
        self.shared.moved.lock().insert(existing.id, to);
        let blob = {
            let mut inner = existing.lock();
            let blob = self
                .shared
                .store
                .as_ref()
                .and_then(|store| match store.export_session(client_id) {
                    Ok(blob) => blob,
                    Err(e) => {
                        tracing::warn!(client_id = %client_id, error = %e, "cannot export the session for handover");
                        None
                    }
                });
            // From here on deliveries to it are relayed.
            inner.ended = true;
            blob
        };
        self.end_local_session(client_id, false);
        let broker = self.clone();
        tokio::spawn(async move { broker.end_relay(existing, to).await });
        blob.map(bytes::Bytes::from)
    }

    /// Ends the relay of a session handed over to `to` (see
    /// [`Broker::hand_over_session`]): removes its routes here.
    async fn end_relay(&self, session: Arc<Session>, to: u64) {
        let filters: Vec<ByteString> = session
            .lock()
            .subscriptions
            .keys()
            .filter(|f| split_shared(f).0.is_none())
            .cloned()
            .collect();
        let deadline = tokio::time::Instant::now() + RELAY_GRACE;
        if let Some(cluster) = self.cluster() {
            while tokio::time::Instant::now() < deadline
                && !filters.iter().all(|f| cluster.has_persistent_route(to, f))
            {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
        let margin = (tokio::time::Instant::now() + RELAY_MARGIN).min(deadline);
        tokio::time::sleep_until(margin).await;
        self.remove_subscriptions(&session);
        self.shared.moved.lock().remove(&session.id);
    }

    /// Sessions handed over whose routes still relay here (the drain waits for them).
    pub fn relaying(&self) -> usize {
        self.shared.moved.lock().len()
    }

    /// Ends this node's copy of a session without its will and without a trace on
    /// disk (it moved to another node, or a clean start elsewhere replaced it).
    fn drop_local_session(&self, client_id: &ByteString) {
        self.end_local_session(client_id, true);
    }

    /// [`Broker::drop_local_session`]; `unroute` false keeps its routes (a handover's
    /// relay removes them later).
    fn end_local_session(&self, client_id: &ByteString, unroute: bool) {
        let removed = {
            let mut registry = self.shared.sessions.lock();
            let Some(session) = registry.get(client_id).cloned() else {
                return;
            };
            let mut inner = session.lock();
            if let Some(link) = &inner.link {
                session.kick(link, ReasonCode::SESSION_TAKEN_OVER);
            }
            inner.link = None;
            inner.ended = true;
            inner.pending_will = None;
            if let Some(timer) = inner.offline_timer.take() {
                timer.cancel();
            }
            drop(inner);
            registry.remove(client_id);
            session
        };
        if unroute {
            self.remove_subscriptions(&removed);
        }
        self.delete_stored(&removed);
    }

    /// A clean-session CONNECT of `client_id` on node `from` at `connected_at_ms`:
    /// an older connection of that id here is closed (0x8E), and an offline session
    /// here ends (the client started clean elsewhere).
    pub fn end_older_connection(&self, from: u64, client_id: &str, connected_at_ms: u64) {
        let id = ByteString::from(client_id);
        let Some(session) = self.shared.sessions.lock().get(&id).cloned() else {
            tracing::debug!(client_id, node = from, "connect announced: no session here");
            return;
        };
        let link = session.lock().link.clone();
        tracing::debug!(
            client_id,
            node = from,
            connected_at_ms,
            online = link.is_some(),
            "connect announced"
        );
        match link {
            Some(link) => {
                let since = link
                    .info()
                    .map(|i| crate::store::codec::system_time_to_unix_ms(i.connected_at))
                    .unwrap_or(0);
                if since <= connected_at_ms {
                    tracing::info!(
                        client_id,
                        node = from,
                        "client id connected on another node: closing the older connection here"
                    );
                    session.kick(&link, ReasonCode::SESSION_TAKEN_OVER);
                }
            }
            None => self.drop_local_session(&id),
        }
    }

    /// Starts the shutdown: cancels the shutdown token (accept loops, CONNECT phases,
    /// timers) and asks every connected session's connection to close.
    ///
    /// No connection is missed: a link is installed under the registry lock, which
    /// this takes after the cancel, and a connection checks the token once its link
    /// is installed, before it first waits.
    pub fn begin_shutdown(&self) {
        self.shared.shutdown.cancel();
        let sessions: Vec<Arc<Session>> = self.shared.sessions.lock().values().cloned().collect();
        for session in sessions {
            let link = session.lock().link.clone();
            if let Some(link) = link {
                session.shut_down(&link);
            }
        }
    }

    /// Kicks every connection (shutdown): v5 clients get DISCONNECT with `reason`.
    pub fn kick_all(&self, reason: ReasonCode) {
        let sessions: Vec<Arc<Session>> = self.shared.sessions.lock().values().cloned().collect();
        for session in sessions {
            let link = session.lock().link.clone();
            if let Some(link) = link {
                session.kick(&link, reason);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    /// A session with expiry 0 whose connection had to be detached by force is not
    /// resumed by a CONNECT without Clean Start: it ended with its connection (MQTT 5
    /// 3.1.2.11.2). The new session is persistent from its creation, so a cluster
    /// counts its subscriptions as persistent routes (`Session::created_persistent`).
    #[tokio::test(start_paused = true)]
    async fn a_session_with_expiry_0_detached_by_force_is_not_resumed() {
        let broker = Broker::new(Arc::new(ferromq_config::Config::default()), None);
        let id = ByteString::from("stuck");
        let old = broker.open_session(id.clone(), true, 0).await;
        assert!(!old.session.created_persistent);
        // The old connection never lets go: the takeover waits TAKEOVER_TIMEOUT (the
        // paused clock skips it), then detaches it by force.
        let new = broker.open_session(id.clone(), false, 300).await;
        assert!(!new.session_present);
        assert!(!Arc::ptr_eq(&new.session, &old.session));
        assert!(new.session.created_persistent);
        assert!(old.session.lock().ended);
    }
}
