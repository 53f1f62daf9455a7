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

pub mod state;

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, Ordering};

use ferromq_codec::{ByteString, ReasonCode, SubscriptionOptions};
use parking_lot::Mutex;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::message::{Delivery, SessionId};
pub use state::{DropReason, QueueLimits, SessionState};

/// A subscription as the session remembers it (to re-create, list and remove it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SubscriptionRecord {
    pub options: SubscriptionOptions,
    pub identifier: Option<u32>,
}

/// The link between a session and the connection currently serving it.
#[derive(Debug, Clone)]
pub struct Link {
    /// Distinguishes successive connections of one session, so a connection that was
    /// taken over does not detach its successor.
    pub generation: u64,
    /// Cancelled to make the connection close (takeover, admin kick).
    pub kick: CancellationToken,
    /// The reason the connection sends in its DISCONNECT when kicked (v5).
    pub kick_reason: Arc<AtomicU8>,
    /// Cancelled by the connection once it has detached from the session.
    pub detached: CancellationToken,
}

impl Link {
    pub fn new(generation: u64) -> Self {
        Link {
            generation,
            kick: CancellationToken::new(),
            kick_reason: Arc::new(AtomicU8::new(ReasonCode::SESSION_TAKEN_OVER.0)),
            detached: CancellationToken::new(),
        }
    }

    /// Asks the connection to close with `reason`.
    pub fn kick(&self, reason: ReasonCode) {
        self.kick_reason.store(reason.0, Ordering::Relaxed);
        self.kick.cancel();
    }

    pub fn kick_reason(&self) -> ReasonCode {
        ReasonCode(self.kick_reason.load(Ordering::Relaxed))
    }
}

/// The mutable part of a session.
#[derive(Debug)]
pub struct SessionInner {
    pub delivery: SessionState,
    /// Filter (as the client sent it, `$share/...` included) to options.
    pub subscriptions: HashMap<ByteString, SubscriptionRecord>,
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
    pub username: Option<ByteString>,
    /// Deliveries dropped on a full queue since the last log line about it.
    overflow_dropped: u64,
    /// When that log line was written.
    overflow_logged: Option<std::time::Instant>,
}

/// A client session.
#[derive(Debug)]
pub struct Session {
    pub id: SessionId,
    pub client_id: ByteString,
    inner: Mutex<SessionInner>,
    /// Wakes the serving connection when deliveries were queued.
    notify: Notify,
}

impl Session {
    pub fn new(id: SessionId, client_id: ByteString, limits: QueueLimits) -> Arc<Session> {
        Arc::new(Session {
            id,
            client_id,
            inner: Mutex::new(SessionInner {
                delivery: SessionState::new(limits),
                subscriptions: HashMap::new(),
                link: None,
                expiry_interval: 0,
                offline_timer: None,
                pending_will: None,
                ended: false,
                username: None,
                overflow_dropped: 0,
                overflow_logged: None,
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
    pub fn deliver(&self, delivery: Delivery) -> Result<(), DropReason> {
        let mut inner = self.inner.lock();
        if inner.ended {
            return Ok(());
        }
        let online = inner.link.is_some();
        inner.delivery.enqueue(delivery, online)?;
        drop(inner);
        if online {
            self.notify.notify_one();
        }
        Ok(())
    }

    /// Resolves when deliveries may be waiting (a stored permit makes this
    /// level-triggered: a wake-up between two polls is not lost).
    pub async fn wait_for_work(&self) {
        self.notify.notified().await
    }

    /// Wakes the connection without a new delivery (e.g. after an ack freed the window).
    pub fn wake(&self) {
        self.notify.notify_one();
    }

    /// Counts a delivery dropped on a full queue. Returns the number dropped since the
    /// last report when a log line is due: at the first drop, then at most every 10 s,
    /// so a client that reads nothing is named in the log without flooding it.
    pub fn note_overflow(&self, now: std::time::Instant) -> Option<u64> {
        let mut inner = self.inner.lock();
        inner.overflow_dropped += 1;
        let due = inner
            .overflow_logged
            .is_none_or(|t| now.saturating_duration_since(t) >= std::time::Duration::from_secs(10));
        if due {
            inner.overflow_logged = Some(now);
            Some(std::mem::take(&mut inner.overflow_dropped))
        } else {
            None
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
