//! Retained messages: the last retained PUBLISH per topic [MQTT-3.3.1-5].
//!
//! Kept in a [`ferromq_topic::RetainedTree`] so a SUBSCRIBE walks only the branches its
//! filter can match. An empty payload clears the topic and is not stored
//! [MQTT-3.3.1-6] [MQTT-3.3.1-7]. Expired messages are dropped when met and by a
//! periodic sweep. The sled-backed store of the durability issue replaces the map
//! behind the same methods.

use std::sync::Arc;
use std::time::Instant;

use ferromq_topic::RetainedTree;

use crate::message::Message;

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
