//! Sessions: the state that outlives a network connection.
//!
//! A [`Session`] is shared (`Arc`) between the connection task that currently serves it,
//! the router (which holds it in subscription entries to enqueue deliveries) and the
//! offline timer (will delay, session expiry). Its mutable part sits behind one
//! `parking_lot::Mutex` that is never held across an `.await`; enqueuing a delivery is
//! a lock, a push and a `Notify`, so publishers never wait on a slow subscriber.
//!
//! # Layout
//! - [`state`]: the delivery state machine (queue, in-flight window, packet ids),
//!   free of I/O and unit-tested on its own.
//! - [`subscriptions`]: the session's filters, allocated by the first one.
//!
//! # Queues beyond the memory window
//! A persistent session's QoS 1/2 deliveries are in the store anyway; beyond
//! `queue_memory_window` of them the state machine keeps markers instead of the
//! messages. [`Session::next_outgoing`] reads the next batch back from the store's
//! `outbound` tree when a marker reaches the front, under the session lock (one range
//! read of at most a window of records; publishers to this one session wait for it,
//! nobody else does), which keeps store order and queue order trivially the same.

pub mod state;
pub mod subscriptions;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::SystemTime;

use ferromq_codec::{ByteString, ProtocolVersion, ReasonCode, SubscriptionOptions};
use parking_lot::Mutex;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::message::{Delivery, SessionId};
use crate::store::{SessionRecord, Store, SubscriptionRow};
use state::Outgoing;
pub use state::{DropReason, QueueLimits, SessionState};
pub use subscriptions::Subscriptions;

/// A subscription as the session remembers it (to re-create, list and remove it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SubscriptionRecord {
    pub options: SubscriptionOptions,
    pub identifier: Option<u32>,
}

/// Facts about the connection serving a session, for the admin API.
#[derive(Debug, Clone)]
pub struct ConnectionInfo {
    /// The client's address.
    pub addr: SocketAddr,
    /// The listener it connected through.
    pub listener: Arc<str>,
    pub protocol: ProtocolVersion,
    /// Keep alive in effect, in seconds (0 = none).
    pub keep_alive: u16,
    /// When the CONNECT was accepted (wall clock, for people).
    pub connected_at: SystemTime,
}

/// The link between a session and the connection currently serving it.
///
/// Cheap to clone (a generation and one `Arc`): the session holds one, the serving
/// connection another. Everything a link needs lives in one allocation, and the kick
/// wakes the connection through its session's [`Notify`] (see [`Session::kick`]),
/// which the connection waits on anyway: an idle connection then waits on one
/// notification instead of also holding a cancellation token of its own (~112 bytes
/// on the heap, ~72 in its future), and the detach is a `Notify` here instead of a
/// second token. The broker's shutdown reaches connections the same way
/// ([`Session::shut_down`], from `Broker::begin_shutdown`), so the loop does not
/// wait on the shutdown token either.
#[derive(Debug, Clone)]
pub struct Link {
    /// Distinguishes successive connections of one session, so a connection that was
    /// taken over does not detach its successor.
    pub generation: u64,
    shared: Arc<LinkShared>,
}

/// Why a connection is asked to close ([`Link::closing`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Closing {
    /// Takeover or administrative kick, with the v5 DISCONNECT reason.
    Kicked(ReasonCode),
    /// The broker is shutting down.
    Shutdown,
}

/// [`LinkShared::closing`] values.
const OPEN: u8 = 0;
const KICKED: u8 = 1;
const SHUTDOWN: u8 = 2;

/// The part of a [`Link`] shared between the session and its connection.
#[derive(Debug)]
struct LinkShared {
    /// [`OPEN`], or why the connection is asked to close ([`KICKED`]: takeover, admin
    /// kick, with `kick_reason` stored before; [`SHUTDOWN`]). The first request wins.
    closing: AtomicU8,
    /// The reason the connection sends in its DISCONNECT when kicked (v5).
    kick_reason: AtomicU8,
    /// Set by the connection once it has detached from the session.
    detached: AtomicBool,
    /// Wakes whoever waits for the detach (a takeover, a handover).
    detach_waiters: Notify,
    /// Set once by the connection after the session opened (admin API).
    info: OnceLock<ConnectionInfo>,
}

impl Link {
    pub fn new(generation: u64) -> Self {
        Link {
            generation,
            shared: Arc::new(LinkShared {
                closing: AtomicU8::new(OPEN),
                kick_reason: AtomicU8::new(ReasonCode::SESSION_TAKEN_OVER.0),
                detached: AtomicBool::new(false),
                detach_waiters: Notify::new(),
                info: OnceLock::new(),
            }),
        }
    }

    /// Marks the link kicked; [`Session::kick`] also wakes the connection.
    fn mark_kicked(&self, reason: ReasonCode) {
        self.shared.kick_reason.store(reason.0, Ordering::Relaxed);
        self.request_close(KICKED);
    }

    /// Records the first close request ([`KICKED`], [`SHUTDOWN`]).
    fn request_close(&self, why: u8) {
        let _ =
            self.shared
                .closing
                .compare_exchange(OPEN, why, Ordering::AcqRel, Ordering::Acquire);
    }

    /// Whether, and why, the connection was asked to close.
    pub fn closing(&self) -> Option<Closing> {
        match self.shared.closing.load(Ordering::Acquire) {
            OPEN => None,
            SHUTDOWN => Some(Closing::Shutdown),
            _ => Some(Closing::Kicked(self.kick_reason())),
        }
    }

    pub fn kick_reason(&self) -> ReasonCode {
        ReasonCode(self.shared.kick_reason.load(Ordering::Relaxed))
    }

    /// Called by the connection once it has detached from the session.
    pub fn detach(&self) {
        self.shared.detached.store(true, Ordering::Release);
        self.shared.detach_waiters.notify_waiters();
    }

    /// Resolves once the connection has detached ([`Link::detach`]).
    pub async fn detached(&self) {
        let notified = self.shared.detach_waiters.notified();
        let mut notified = std::pin::pin!(notified);
        // Registered before the flag is read: a detach in between still wakes us.
        notified.as_mut().enable();
        if self.shared.detached.load(Ordering::Acquire) {
            return;
        }
        notified.await;
    }

    /// Facts about the serving connection, once it has set them.
    pub fn info(&self) -> Option<&ConnectionInfo> {
        self.shared.info.get()
    }

    /// Sets [`Link::info`] (once; a second call is ignored).
    pub fn set_info(&self, info: ConnectionInfo) {
        let _ = self.shared.info.set(info);
    }
}

/// The mutable part of a session.
#[derive(Debug)]
pub struct SessionInner {
    pub delivery: SessionState,
    /// Filter (as the client sent it, `$share/...` included) to options.
    pub subscriptions: Subscriptions,
    /// The serving connection; `None` while offline.
    pub link: Option<Link>,
    /// Session Expiry Interval in seconds; `u32::MAX` never expires [MQTT-3.1.2-23].
    pub expiry_interval: u32,
    /// Cancels the offline timer (delayed will, expiry) when the client comes back.
    pub offline_timer: Option<CancellationToken>,
    /// A will waiting for its delay while the session is offline [MQTT-3.1.3-9].
    pub pending_will: Option<crate::broker::PendingWill>,
    /// Set once the session has ended and left the registry; a late enqueue is ignored.
    pub ended: bool,
    /// The username its current (or last) connection logged in with, for read ACL
    /// checks of deliveries (`user` blocks, `%u`).
    /// An `Arc<str>` (16 bytes) rather than a `ByteString` (32): read far less often
    /// than every session carries it.
    pub username: Option<Arc<str>>,
    /// Deliveries dropped on a full queue since the last log line about it, and when
    /// that line was written; allocated by the first drop (most sessions never
    /// overflow).
    overflow: Option<Box<(u64, std::time::Instant)>>,
}

/// A client session.
#[derive(Debug)]
pub struct Session {
    pub id: SessionId,
    pub client_id: ByteString,
    /// The durable store, written while the session is persistent (expiry > 0).
    store: Option<Arc<Store>>,
    /// Whether the session was persistent (expiry > 0) when it was created. On a
    /// cluster node its subscriptions count as persistent routes for its whole life
    /// (`Cluster::route_add`), so every add and remove agree. Only a resumed session
    /// can change, and only from persistent: one with expiry 0 is never resumed
    /// (`Broker::open_session`), and one resumed with expiry 0 still counting as
    /// persistent only makes publishers elsewhere wait for this node.
    pub created_persistent: bool,
    inner: Mutex<SessionInner>,
    /// Wakes the serving connection when deliveries were queued.
    notify: Notify,
}

impl Session {
    pub fn new(
        id: SessionId,
        client_id: ByteString,
        limits: impl Into<Arc<QueueLimits>>,
        store: Option<Arc<Store>>,
        created_persistent: bool,
    ) -> Arc<Session> {
        Arc::new(Session {
            id,
            client_id,
            store,
            created_persistent,
            inner: Mutex::new(SessionInner {
                delivery: SessionState::new(limits),
                subscriptions: Subscriptions::default(),
                link: None,
                expiry_interval: 0,
                offline_timer: None,
                pending_will: None,
                ended: false,
                username: None,
                overflow: None,
            }),
            notify: Notify::new(),
        })
    }

    /// Locks the session's mutable state. Never hold the guard across an `.await`.
    pub fn lock(&self) -> parking_lot::MutexGuard<'_, SessionInner> {
        self.inner.lock()
    }

    /// Queues a delivery and wakes the connection. Overflow policy: see
    /// [`state`] (newest dropped when full; QoS 0 dropped while offline).
    ///
    /// A QoS 1/2 delivery to a persistent session is written to the store under the
    /// session lock (so store order is queue order); the returned generation is what
    /// the publisher's acknowledgement waits for. A failed write takes the delivery
    /// back and reports [`DropReason::StoreFailed`].
    pub fn deliver(&self, delivery: Delivery) -> Result<Option<u64>, DropReason> {
        let mut inner = self.inner.lock();
        if inner.ended {
            return Err(DropReason::Ended);
        }
        let online = inner.link.is_some();
        let generation = self.deliver_locked(&mut inner, delivery)?;
        drop(inner);
        if online {
            self.notify.notify_one();
        }
        Ok(generation)
    }

    /// Queues a retained message sent because of a SUBSCRIBE if the queue has room
    /// for it now ([`state::SessionState::room_for_retained`]); otherwise hands it
    /// back untouched (`Room::Later`) or drops it (`Room::Never`, counted as a full
    /// queue).
    pub fn deliver_retained(&self, delivery: Delivery) -> state::Room {
        let mut inner = self.inner.lock();
        let room = inner.delivery.room_for_retained(delivery.message.weight());
        if room == state::Room::Yes {
            let _ = self.deliver_locked(&mut inner, delivery);
            let online = inner.link.is_some();
            drop(inner);
            if online {
                self.notify.notify_one();
            }
        }
        room
    }

    fn deliver_locked(
        &self,
        inner: &mut SessionInner,
        delivery: Delivery,
    ) -> Result<Option<u64>, DropReason> {
        if inner.ended {
            return Ok(None);
        }
        let online = inner.link.is_some();
        let durable = delivery.qos != ferromq_codec::QoS::AtMostOnce;
        let stored = durable && self.persist(inner).is_some();
        // The state machine keeps the delivery (in memory) or only a marker (then the
        // store holds the only copy); either way a stored one is written below.
        let stored_copy = stored.then(|| delivery.clone());
        let seq = inner.delivery.enqueue(delivery, online, stored)?.seq();
        let mut generation = None;
        if let (Some(store), Some(d)) = (self.persist(inner), stored_copy) {
            match store.put_outbound(&self.client_id, seq, &d) {
                Ok(g) => generation = Some(g),
                Err(e) => {
                    inner.delivery.unqueue_last(seq);
                    tracing::warn!(client_id = %self.client_id, error = %e, "cannot store a queued message");
                    return Err(DropReason::StoreFailed);
                }
            }
        }
        Ok(generation)
    }

    /// The next packet to send within `window` (see [`SessionState::next_outgoing`]),
    /// first reading queued deliveries back from the store when the queue's front is
    /// on disk only. A record that cannot be read drops its entry (logged).
    pub fn next_outgoing(
        &self,
        inner: &mut SessionInner,
        window: usize,
        now: std::time::Instant,
    ) -> Option<Outgoing> {
        loop {
            if let Some(out) = inner.delivery.next_outgoing(window, now) {
                return Some(out);
            }
            let wanted = inner.delivery.wanted(window);
            if wanted.is_empty() {
                return None;
            }
            self.load_from_store(inner, &wanted);
        }
    }

    /// Reads the deliveries of `wanted` markers from the store into the queue.
    fn load_from_store(&self, inner: &mut SessionInner, wanted: &[u64]) {
        let found = match &self.store {
            Some(store) => match store.read_outbound(&self.client_id, wanted) {
                Ok(found) => found,
                Err(e) => {
                    tracing::warn!(client_id = %self.client_id, error = %e, "cannot read queued messages back from the store: they are dropped");
                    Vec::new()
                }
            },
            None => Vec::new(),
        };
        let missing = inner.delivery.load(wanted, found);
        if missing > 0 {
            tracing::warn!(client_id = %self.client_id, missing, "queued messages missing from the store were dropped");
        }
    }

    /// Reads every queued delivery held only in the store back into memory, before
    /// the session's records are deleted (it stops being persistent).
    pub fn load_all_from_store(&self, inner: &mut SessionInner) {
        let wanted = inner.delivery.all_on_disk();
        if !wanted.is_empty() {
            self.load_from_store(inner, &wanted);
        }
    }

    /// The store, when this session is persistent (Session Expiry Interval > 0).
    pub fn persist<'a>(&'a self, inner: &SessionInner) -> Option<&'a Arc<Store>> {
        self.store.as_ref().filter(|_| inner.expiry_interval > 0)
    }

    /// The store regardless of persistence (to delete what an earlier persistent
    /// incarnation left).
    pub fn store(&self) -> Option<&Arc<Store>> {
        self.store.as_ref()
    }

    /// Writes the session record (expiry, subscriptions, offline time) if persistent.
    pub fn save_record(
        &self,
        inner: &SessionInner,
        offline_since_unix_ms: Option<u64>,
    ) -> Option<u64> {
        let store = self.persist(inner)?;
        let record = SessionRecord {
            expiry_interval: inner.expiry_interval,
            offline_since_unix_ms,
            subscriptions: inner
                .subscriptions
                .iter()
                .map(|(filter, r)| SubscriptionRow {
                    filter: filter.to_string(),
                    qos: r.options.qos as u8,
                    no_local: r.options.no_local,
                    retain_as_published: r.options.retain_as_published,
                    retain_handling: r.options.retain_handling as u8,
                    identifier: r.identifier,
                })
                .collect(),
        };
        match store.put_session(&self.client_id, &record) {
            Ok(g) => Some(g),
            Err(e) => {
                tracing::warn!(client_id = %self.client_id, error = %e, "cannot store the session record");
                None
            }
        }
    }

    /// Resolves when deliveries may be waiting (a stored permit makes this
    /// level-triggered: a wake-up between two polls is not lost).
    ///
    /// The connection keeps one such future pinned across wake-ups and replaces it
    /// only after it fired: creating and dropping one per wake-up costs a lock on the
    /// waiter list each time.
    pub fn work_notified(&self) -> tokio::sync::futures::Notified<'_> {
        self.notify.notified()
    }

    /// Wakes the connection without a new delivery (e.g. after an ack freed the window).
    pub fn wake(&self) {
        self.notify.notify_one();
    }

    /// Asks the connection serving `link` to close with `reason` (v5 DISCONNECT):
    /// marks the link and wakes the connection, which checks its link whenever it
    /// wakes. `link` is this session's current or a former link.
    pub fn kick(&self, link: &Link, reason: ReasonCode) {
        link.mark_kicked(reason);
        self.notify.notify_one();
    }

    /// Asks the connection serving `link` to close because the broker shuts down
    /// (v5 DISCONNECT 0x8B, no will), as [`Session::kick`] does.
    pub fn shut_down(&self, link: &Link) {
        link.request_close(SHUTDOWN);
        self.notify.notify_one();
    }

    /// Counts a delivery dropped on a full queue. Returns the number dropped since the
    /// last report when a log line is due: at the first drop, then at most every 10 s,
    /// so a client that reads nothing is named in the log without flooding it.
    pub fn note_overflow(&self, now: std::time::Instant) -> Option<u64> {
        let mut inner = self.inner.lock();
        match inner.overflow.as_deref_mut() {
            None => {
                inner.overflow = Some(Box::new((0, now)));
                Some(1)
            }
            Some((dropped, logged)) => {
                *dropped += 1;
                if now.saturating_duration_since(*logged) >= std::time::Duration::from_secs(10) {
                    *logged = now;
                    Some(std::mem::take(dropped))
                } else {
                    None
                }
            }
        }
    }

    /// Whether this session's client may read `topic` under `acl` (its username as
    /// of its latest login, its client id).
    pub fn may_read(&self, acl: &crate::auth::Acl, topic: &str) -> bool {
        let username = self.inner.lock().username.clone();
        acl.check(
            crate::auth::Subject {
                username: username.as_deref(),
                client_id: &self.client_id,
            },
            topic,
            crate::auth::Op::Read,
        )
    }

    pub fn is_online(&self) -> bool {
        self.inner.lock().link.is_some()
    }
}
