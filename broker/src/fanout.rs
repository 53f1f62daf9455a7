//! Reused per-thread buffers for the fan-out path, so a PUBLISH costs no allocation
//! beyond its `Message` (and a batch of deliveries written to a socket none at all).
//!
//! The routing step collects `(session, delivery)` pairs and the connection's drain
//! step collects outgoing packets; both used to allocate a fresh `Vec` per message or
//! per wake-up. Each worker thread keeps one of each and lends it out: take, fill,
//! drain, give back. Nothing is held across an `.await` (the callers are synchronous),
//! so a buffer never moves between threads mid-use.
//!
//! Bound: a buffer that grew beyond [`KEEP`] entries (a fan-out to many thousands of
//! sessions) is freed instead of kept, so an idle worker holds at most a few hundred
//! KB here.

use std::cell::RefCell;
use std::sync::Arc;

use crate::message::Delivery;
use crate::session::Session;
use crate::session::state::Outgoing;

/// Largest buffer kept for reuse, in entries.
const KEEP: usize = 4096;

thread_local! {
    static DELIVERIES: RefCell<Vec<(Arc<Session>, Delivery)>> = const { RefCell::new(Vec::new()) };
    static OUTGOING: RefCell<Vec<Outgoing>> = const { RefCell::new(Vec::new()) };
}

/// An empty deliveries buffer (this thread's reused one when available).
pub fn take_buffer() -> Vec<(Arc<Session>, Delivery)> {
    DELIVERIES.with(|b| std::mem::take(&mut *b.borrow_mut()))
}

/// Returns a drained deliveries buffer for reuse.
pub fn return_buffer(mut buf: Vec<(Arc<Session>, Delivery)>) {
    buf.clear();
    if buf.capacity() <= KEEP {
        DELIVERIES.with(|b| *b.borrow_mut() = buf);
    }
}

/// An empty outgoing-packet buffer (this thread's reused one when available).
pub fn take_outgoing() -> Vec<Outgoing> {
    OUTGOING.with(|b| std::mem::take(&mut *b.borrow_mut()))
}

/// Returns a drained outgoing buffer for reuse.
pub fn return_outgoing(mut buf: Vec<Outgoing>) {
    buf.clear();
    if buf.capacity() <= KEEP {
        OUTGOING.with(|b| *b.borrow_mut() = buf);
    }
}
