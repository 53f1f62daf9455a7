//! Route ref-counting and the batched background proposer.
//!
//! The broker calls `route_add` / `route_remove` (and the shared variants) once per
//! local subscription; only a filter's 0 -> 1 and 1 -> 0 transitions concern the
//! cluster, and for routes also those of its count of persistent sessions (which
//! make the route's `transient` flag). Those transitions land in [`Pending`], a map keyed by what they change
//! (route filter, shared group, session release, node meta) holding the *latest
//! intent*: this is the queue's bound and overflow policy — a newer intent for the
//! same key replaces the older one, so the map never holds more entries than there
//! are distinct filters / sessions, and nothing is ever dropped. A background task
//! wakes on new intents, lingers [`LINGER`] to collect more, proposes up to
//! [`MAX_BATCH`] of them as one `Batch` command through the leader, and on failure
//! puts back the intents that were not superseded meanwhile and retries with
//! exponential backoff. Callers never block.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use ferromq_proto::raft::v1 as pb;
use ferromq_proto::raft::v1::command::Kind;
use parking_lot::Mutex;
use tokio::sync::Notify;

use crate::node::Inner;
use crate::raft::state::VERSION;

/// How long the proposer waits for more intents before proposing a batch.
pub const LINGER: Duration = Duration::from_millis(5);
/// Most commands in one batch.
pub const MAX_BATCH: usize = 512;

/// What an intent changes; a newer intent with the same key supersedes the older.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Key {
    Route(String),
    Shared(String, String),
    Release(String),
    Meta,
}

/// Local subscriptions of one filter (non-shared).
#[derive(Debug, Default, Clone, Copy)]
pub struct RouteRefs {
    /// All of them.
    pub all: u32,
    /// Those of persistent sessions; 0 makes the replicated route transient.
    pub persistent: u32,
}

impl RouteRefs {
    pub fn transient(&self) -> bool {
        self.persistent == 0
    }
}

/// Local subscription counts.
#[derive(Default)]
pub struct Refs {
    pub routes: HashMap<String, RouteRefs>,
    pub shared: HashMap<(String, String), u32>,
}

/// Latest intents not yet proposed.
#[derive(Default)]
pub struct Pending {
    map: Mutex<BTreeMap<Key, Kind>>,
    notify: Notify,
}

impl Pending {
    pub fn set(&self, key: Key, kind: Kind) {
        self.map.lock().insert(key, kind);
        self.notify.notify_one();
    }

    /// Drops an intent (e.g. a pending session release superseded by a claim).
    pub fn cancel(&self, key: &Key) {
        self.map.lock().remove(key);
    }

    pub fn len(&self) -> usize {
        self.map.lock().len()
    }

    fn take(&self, max: usize) -> Vec<(Key, Kind)> {
        let mut map = self.map.lock();
        let mut out = Vec::new();
        while out.len() < max {
            match map.pop_first() {
                Some(kv) => out.push(kv),
                None => break,
            }
        }
        out
    }

    fn put_back(&self, batch: Vec<(Key, Kind)>) {
        let mut map = self.map.lock();
        for (k, v) in batch {
            map.entry(k).or_insert(v);
        }
    }
}

/// The background proposer; runs until the node stops.
pub async fn run(inner: Arc<Inner>) {
    let mut backoff = Duration::from_millis(50);
    loop {
        tokio::select! {
            _ = inner.stop.cancelled() => return,
            _ = inner.pending.notify.notified() => {}
        }
        tokio::time::sleep(LINGER).await;
        loop {
            let batch = inner.pending.take(MAX_BATCH);
            if batch.is_empty() {
                break;
            }
            let cmd = pb::Command {
                version: VERSION,
                kind: Some(Kind::Batch(pb::Batch {
                    commands: batch
                        .iter()
                        .map(|(_, k)| pb::Command {
                            version: VERSION,
                            kind: Some(k.clone()),
                        })
                        .collect(),
                })),
            };
            match inner.propose(cmd).await {
                Ok(_) => backoff = Duration::from_millis(50),
                Err(e) => {
                    tracing::warn!(error = %e, n = batch.len(), "batched proposal failed; retrying");
                    inner.pending.put_back(batch);
                    tokio::select! {
                        _ = inner.stop.cancelled() => return,
                        _ = tokio::time::sleep(backoff) => {}
                    }
                    backoff = (backoff * 2).min(Duration::from_secs(2));
                }
            }
        }
    }
}
