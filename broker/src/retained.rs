//! Retained messages: the last retained PUBLISH per topic [MQTT-3.3.1-5].
//!
//! Kept in a [`ferromq_topic::RetainedTree`] so a SUBSCRIBE walks only the branches its
//! filter can match. An empty payload clears the topic and is not stored
//! [MQTT-3.3.1-6] [MQTT-3.3.1-7]. Expired messages are dropped when met and by a
//! periodic sweep. This in-memory index serves persistence off; with persistence on
//! the store's `retained` tree is the index, so retained payloads are not held in RAM.
//! Either way a [`RetainedCursor`] streams the matches of a SUBSCRIBE into the
//! session as its queue has room, so a `#` subscribe to 100,000 retained messages
//! receives all of them instead of the first `max_queued_messages`.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Instant;

use ferromq_codec::QoS;
use ferromq_topic::RetainedTree;

use crate::message::{Delivery, Message};
use crate::session::Session;
use crate::session::state::Room;
use crate::store::Store;

#[derive(Debug, Default)]
pub struct RetainedStore {
    tree: RetainedTree<Arc<Message>>,
    bytes: usize,
}

/// A retained message was not stored: the store would exceed its byte budget.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OverBudget;

impl RetainedStore {
    /// Applies a retained PUBLISH: store, replace, or clear on an empty payload.
    ///
    /// Bound `limits.retained_max_bytes` (`max_bytes`, by [`Message::weight`]): a
    /// message that would take the store above it is not stored ([`OverBudget`]) and
    /// the topic keeps its previous message; replacing a message with a smaller one and
    /// clearing always succeed.
    pub fn apply(&mut self, message: &Arc<Message>, max_bytes: usize) -> Result<(), OverBudget> {
        let old = if message.payload.is_empty() {
            self.tree.remove(&message.topic)
        } else {
            let replaced = self.tree.get(&message.topic).map_or(0, |m| m.weight());
            if self.bytes - replaced + message.weight() > max_bytes {
                return Err(OverBudget);
            }
            self.bytes += message.weight();
            self.tree.insert(&message.topic, message.clone())
        };
        if let Some(old) = old {
            self.bytes -= old.weight();
        }
        Ok(())
    }

    /// The retained message of `topic`, if it has one that has not expired.
    pub fn get(&self, topic: &str, now: Instant) -> Option<Arc<Message>> {
        self.tree.get(topic).filter(|m| !m.is_expired(now)).cloned()
    }

    /// Retained messages matching `filter` that have not expired.
    pub fn matching(&self, filter: &str, now: Instant) -> Vec<Arc<Message>> {
        let mut out = Vec::new();
        self.tree.for_each_match(filter, |_, m| {
            if !m.is_expired(now) {
                out.push(m.clone());
            }
        });
        out
    }

    /// Drops expired messages; returns how many.
    pub fn sweep_expired(&mut self, now: Instant) -> usize {
        let before = self.tree.len();
        let mut freed = 0;
        self.tree.retain(|_, m| {
            let keep = !m.is_expired(now);
            if !keep {
                freed += m.weight();
            }
            keep
        });
        self.bytes -= freed;
        before - self.tree.len()
    }

    pub fn len(&self) -> usize {
        self.tree.len()
    }

    pub fn is_empty(&self) -> bool {
        self.tree.is_empty()
    }

    pub fn bytes(&self) -> usize {
        self.bytes
    }
}

/// Streams the retained messages matching one filter into one session, as its queue
/// allows (see `store` "Bounded memory").
///
/// Persistence on: the scan covers the key range of the filter's literal prefix
/// (`a/b/+/c` scans `a/b/`, `a/b/#` scans `a/b` so that `a/b` itself matches
/// [MQTT-4.7.1-2], `#` and `+/...` scan everything) and checks each key with
/// [`ferromq_topic::matches`] (which also keeps `$` topics from wildcards at the
/// first level [MQTT-4.7.2-1]). It resumes from the first key it has not delivered,
/// so a `#` subscribe to a million retained messages holds at most half a queue of
/// them in memory at a time and never overflows the session's queue.
///
/// Persistence off: the matches are taken from the in-memory index when the
/// SUBSCRIBE is handled, as references to the stored messages (one pointer each,
/// bounded by the retained store's own `retained_max_bytes`), and handed out the same
/// way: never more than the queue's room for retained messages at a time.
///
/// Known limits: a retained message set or cleared while the cursor runs is seen as
/// it is when the cursor reaches its key (persistence on) or as it was at the
/// SUBSCRIBE (persistence off); a live copy may also arrive first. The cursor belongs
/// to the connection, so what it has not delivered when the connection closes is not
/// sent (the client subscribes again on its next connection to get it).
#[derive(Debug)]
pub struct RetainedCursor {
    filter: String,
    source: Source,
    granted: QoS,
    identifier: Option<u32>,
}

#[derive(Debug)]
enum Source {
    /// A key range of the store's `retained` tree.
    Store {
        prefix: Vec<u8>,
        /// First key not yet delivered.
        next: Vec<u8>,
    },
    /// Matches of the in-memory index not yet delivered, in topic order.
    Memory(VecDeque<Arc<Message>>),
}

/// What one [`RetainedCursor::pump`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Pumped {
    /// Deliveries queued.
    pub queued: usize,
    /// Messages dropped because they alone exceed the session's byte limit.
    pub too_large: usize,
    /// Nothing is left: the cursor can be dropped.
    pub done: bool,
    /// Stopped for its key budget, with room left: pump again soon.
    pub more: bool,
    /// Matching messages the client may not read (ACL), skipped.
    pub denied: usize,
}

/// The literal part of a filter before its first wildcard level.
pub fn literal_prefix(filter: &str) -> &str {
    match filter.find(['+', '#']) {
        None => filter,
        Some(i) if filter[i..].starts_with('#') && i > 0 => &filter[..i - 1],
        Some(i) => &filter[..i],
    }
}

impl RetainedCursor {
    /// A cursor over the store's `retained` tree (persistence on).
    pub fn new(filter: &str, granted: QoS, identifier: Option<u32>) -> Self {
        let prefix = literal_prefix(filter).as_bytes().to_vec();
        RetainedCursor {
            filter: filter.to_owned(),
            source: Source::Store {
                next: prefix.clone(),
                prefix,
            },
            granted,
            identifier,
        }
    }

    /// A cursor over matches already taken from the in-memory index (persistence off).
    pub fn from_memory(
        filter: &str,
        matches: Vec<Arc<Message>>,
        granted: QoS,
        identifier: Option<u32>,
    ) -> Self {
        RetainedCursor {
            filter: filter.to_owned(),
            source: Source::Memory(matches.into()),
            granted,
            identifier,
        }
    }

    /// Queues matching retained messages into `session` until its queue has no room
    /// for retained messages, the matches end, or `max_keys` keys were looked at.
    /// Topics `may_read` refuses (the read ACL) are skipped. `store` is the broker's
    /// store (`None` with persistence off, where the cursor was made from memory).
    pub fn pump(
        &mut self,
        store: Option<&Store>,
        session: &Session,
        max_keys: usize,
        may_read: &dyn Fn(&str) -> bool,
    ) -> Pumped {
        let RetainedCursor {
            filter,
            source,
            granted,
            identifier,
        } = self;
        let mut pumped = Pumped::default();
        let mut blocked = false;
        // Offers one match; false once the queue has no room (the match stays).
        let mut offer = |topic: &str, message: Arc<Message>| -> bool {
            if !may_read(topic) {
                pumped.denied += 1;
                return true;
            }
            let delivery = Delivery {
                qos: message.qos.min(*granted),
                retain: true,
                subscription_ids: identifier.iter().copied().collect(),
                message,
            };
            match session.deliver_retained(delivery) {
                Room::Yes => pumped.queued += 1,
                Room::Never => pumped.too_large += 1,
                Room::Later => {
                    blocked = true;
                    return false;
                }
            }
            true
        };
        match source {
            Source::Memory(pending) => {
                for _ in 0..max_keys {
                    let Some(message) = pending.front() else {
                        break;
                    };
                    if !offer(&message.topic, message.clone()) {
                        break;
                    }
                    pending.pop_front();
                }
                pumped.done = pending.is_empty();
                pumped.more = !pumped.done && !blocked;
            }
            Source::Store { prefix, next } => {
                let Some(store) = store else {
                    pumped.done = true;
                    return pumped;
                };
                let result = store.scan_retained(prefix, next, max_keys, |topic, stored| {
                    !ferromq_topic::matches(filter, topic) || offer(topic, stored.into_message())
                });
                match result {
                    Ok(Some(resume)) => {
                        *next = resume;
                        pumped.more = !blocked;
                    }
                    Ok(None) => pumped.done = true,
                    Err(e) => {
                        tracing::warn!(client_id = %session.client_id, filter = %filter, error = %e, "cannot read retained messages from the store");
                        pumped.done = true;
                    }
                }
            }
        }
        pumped
    }
}

#[cfg(test)]
mod tests {
    use super::literal_prefix;

    #[test]
    fn literal_prefix_stops_at_the_first_wildcard() {
        assert_eq!(literal_prefix("a/b/+/c"), "a/b/");
        // `a/b/#` also matches `a/b` [MQTT-4.7.1-2].
        assert_eq!(literal_prefix("a/b/#"), "a/b");
        assert_eq!(literal_prefix("#"), "");
        assert_eq!(literal_prefix("+/x"), "");
        assert_eq!(literal_prefix("a/b"), "a/b");
    }
}
