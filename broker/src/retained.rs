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

impl RetainedStore {
    /// Applies a retained PUBLISH: store, replace, or clear on an empty payload.
    pub fn apply(&mut self, message: &Arc<Message>) {
        let old = if message.payload.is_empty() {
            self.tree.remove(&message.topic)
        } else {
            self.bytes += message.weight();
            self.tree.insert(&message.topic, message.clone())
        };
        if let Some(old) = old {
            self.bytes -= old.weight();
        }
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
