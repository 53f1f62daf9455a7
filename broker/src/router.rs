//! The subscription index: which sessions want a topic.
//!
//! Built on [`ferromq_topic::TopicTrie`], keyed per subscriber so a session has at most
//! one subscription per filter [MQTT-3.8.4-3] and a shared-subscription group is one
//! entry whose members take turns. Matching appends to a caller-owned (reused) `Vec`
//! and allocates nothing per subscriber beyond `Arc` clones; the payload is shared.
//!
//! Overlapping subscriptions of one session produce **one** delivery at the highest
//! granted QoS carrying every matching Subscription Identifier: required for 3.1.1
//! ([MQTT-3.3.5-1] allows it and the Paho suite expects it) and allowed for 5.0
//! [MQTT-3.3.4-2] [MQTT-3.3.4-3], which the Paho 5.0 suite expects too.
//!
//! The cluster issue extends this index with remote nodes' routes; a remote node is then
//! one more kind of entry.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use ferromq_codec::{ByteString, QoS, SubscriptionOptions};
use ferromq_topic::TopicTrie;

use crate::message::{Delivery, Message, SessionId};
use crate::session::Session;

/// Whose entry a trie slot is: a session's own subscription or a shared group's.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum SubKey {
    Session(SessionId),
    Shared(ByteString),
}

/// One subscriber of a filter.
#[derive(Debug, Clone)]
pub struct Subscriber {
    pub session: Arc<Session>,
    pub options: SubscriptionOptions,
    pub identifier: Option<u32>,
}

/// Members of one `$share/{group}/{filter}`: each message goes to one of them
/// [MQTT-4.8.2-3], in turn, preferring members that are connected.
#[derive(Debug, Default)]
pub struct SharedGroup {
    /// The filter after `$share/{group}/`, so a cluster node can name the group it
    /// delivered to locally.
    filter: ByteString,
    members: Vec<Subscriber>,
    cursor: AtomicUsize,
}

impl SharedGroup {
    fn pick(&self) -> Option<&Subscriber> {
        let n = self.members.len();
        if n == 0 {
            return None;
        }
        let start = self.cursor.fetch_add(1, Ordering::Relaxed);
        (0..n)
            .map(|i| &self.members[(start + i) % n])
            .find(|m| m.session.is_online())
            .or_else(|| self.members.get(start % n))
    }
}

#[derive(Debug)]
pub enum SubEntry {
    Direct(Subscriber),
    Shared(SharedGroup),
}

/// The index. Guarded by an `RwLock` in the broker: publishes take it shared.
#[derive(Debug, Default)]
pub struct Router {
    trie: TopicTrie<SubKey, SubEntry>,
    subscriptions: usize,
    shared_subscriptions: usize,
}

impl Router {
    /// Adds or replaces a subscription. `shared_group` is the group of a
    /// `$share/{group}/{filter}` subscription, `filter` the part after it. Returns true
    /// if the session already had this subscription (Retain Handling 1 needs it).
    pub fn subscribe(&mut self, filter: &str, shared_group: Option<&str>, sub: Subscriber) -> bool {
        match shared_group {
            None => {
                let key = SubKey::Session(sub.session.id);
                let existed = self
                    .trie
                    .insert(filter, key, SubEntry::Direct(sub))
                    .is_some();
                if !existed {
                    self.subscriptions += 1;
                }
                existed
            }
            Some(group) => {
                let key = SubKey::Shared(ByteString::from(group));
                let mut entry = match self.trie.remove(filter, &key) {
                    Some(SubEntry::Shared(g)) => g,
                    _ => SharedGroup {
                        filter: ByteString::from(filter),
                        ..SharedGroup::default()
                    },
                };
                let existed = match entry
                    .members
                    .iter_mut()
                    .find(|m| m.session.id == sub.session.id)
                {
                    Some(m) => {
                        *m = sub;
                        true
                    }
                    None => {
                        entry.members.push(sub);
                        false
                    }
                };
                if !existed {
                    self.shared_subscriptions += 1;
                }
                self.trie.insert(filter, key, SubEntry::Shared(entry));
                existed
            }
        }
    }

    /// Removes a session's subscription; true if it existed.
    pub fn unsubscribe(
        &mut self,
        filter: &str,
        shared_group: Option<&str>,
        session: SessionId,
    ) -> bool {
        match shared_group {
            None => {
                let removed = self
                    .trie
                    .remove(filter, &SubKey::Session(session))
                    .is_some();
                if removed {
                    self.subscriptions -= 1;
                }
                removed
            }
            Some(group) => {
                let key = SubKey::Shared(ByteString::from(group));
                let Some(SubEntry::Shared(mut entry)) = self.trie.remove(filter, &key) else {
                    return false;
                };
                let before = entry.members.len();
                entry.members.retain(|m| m.session.id != session);
                let removed = entry.members.len() != before;
                if removed {
                    self.shared_subscriptions -= 1;
                }
                if !entry.members.is_empty() {
                    self.trie.insert(filter, key, SubEntry::Shared(entry));
                }
                removed
            }
        }
    }

    /// Non-shared subscriptions in the index.
    pub fn subscription_count(&self) -> usize {
        self.subscriptions
    }

    /// Shared-subscription memberships in the index.
    pub fn shared_subscription_count(&self) -> usize {
        self.shared_subscriptions
    }

    /// Computes the deliveries of `message`: one per interested session, appended to
    /// `out`. Allocates nothing per subscriber beyond what `out` already holds (the
    /// caller reuses it) and the `Arc` clones; a Subscription Identifier list is only
    /// allocated when the subscription has one.
    pub fn route(&self, message: &Arc<Message>, out: &mut Vec<(Arc<Session>, Delivery)>) {
        self.route_matching(message, out, |_, _| true);
    }

    /// As [`Router::route`], also naming every shared group (`group`, `filter`) that
    /// took the message here, so the cluster does not send it to another node's
    /// member too.
    pub fn route_noting_groups(
        &self,
        message: &Arc<Message>,
        out: &mut Vec<(Arc<Session>, Delivery)>,
        groups: &mut Vec<(ByteString, ByteString)>,
    ) {
        self.route_matching(message, out, |key, group| {
            if let SubKey::Shared(name) = key {
                groups.push((name.clone(), group.filter.clone()));
            }
            true
        });
    }

    /// A message forwarded by another node: to the non-shared subscribers only (the
    /// sender chose one node per shared group and says so with [`Router::route_group`]).
    pub fn route_direct(&self, message: &Arc<Message>, out: &mut Vec<(Arc<Session>, Delivery)>) {
        self.route_matching(message, out, |key, _| matches!(key, SubKey::Session(_)));
    }

    /// A message forwarded by another node for one shared group: one local member.
    pub fn route_group(
        &self,
        message: &Arc<Message>,
        group: &str,
        filter: &str,
        out: &mut Vec<(Arc<Session>, Delivery)>,
    ) {
        let key = SubKey::Shared(ByteString::from(group));
        if let Some(SubEntry::Shared(g)) = self.trie.get(filter, &key)
            && let Some(sub) = g.pick()
        {
            out.push((sub.session.clone(), Self::delivery(message, sub)));
        }
    }

    fn delivery(message: &Arc<Message>, sub: &Subscriber) -> Delivery {
        Delivery {
            message: message.clone(),
            qos: message.qos.min(sub.options.qos),
            retain: sub.options.retain_as_published && message.retain,
            subscription_ids: sub.identifier.into_iter().collect(),
        }
    }

    /// Matching entries for which `take(key, group)` holds (it is asked only for
    /// shared groups with a member to pick, and for direct entries with a dummy
    /// group), merged per session.
    fn route_matching(
        &self,
        message: &Arc<Message>,
        out: &mut Vec<(Arc<Session>, Delivery)>,
        mut take: impl FnMut(&SubKey, &SharedGroup) -> bool,
    ) {
        static NO_GROUP: SharedGroup = SharedGroup {
            filter: ByteString::from_static(""),
            members: Vec::new(),
            cursor: AtomicUsize::new(0),
        };
        let start = out.len();
        self.trie.for_each_match(&message.topic, |key, entry| {
            let sub = match entry {
                SubEntry::Direct(sub) => {
                    // No Local: not to the publisher's own session [MQTT-3.8.3-3].
                    if sub.options.no_local && message.origin == Some(sub.session.id) {
                        return;
                    }
                    if !take(key, &NO_GROUP) {
                        return;
                    }
                    sub
                }
                SubEntry::Shared(group) => {
                    if group.members.is_empty() || !take(key, group) {
                        return;
                    }
                    match group.pick() {
                        Some(sub) => sub,
                        None => return,
                    }
                }
            };
            out.push((sub.session.clone(), Self::delivery(message, sub)));
        });
        if out.len() - start < 2 {
            return;
        }
        // Overlapping subscriptions of one session: merge into one delivery at the
        // highest QoS with every identifier (sorted, so the order is deterministic).
        out[start..].sort_unstable_by_key(|(session, _)| session.id);
        let mut write = start;
        for read in start + 1..out.len() {
            if out[read].0.id == out[write].0.id {
                let (merged, rest) = out.split_at_mut(read);
                let (into, from) = (&mut merged[write].1, &mut rest[0].1);
                into.qos = into.qos.max(from.qos);
                into.retain |= from.retain;
                into.subscription_ids.append(&mut from.subscription_ids);
                into.subscription_ids.sort_unstable();
            } else {
                write += 1;
                out.swap(write, read);
            }
        }
        out.truncate(write + 1);
    }
}

/// The QoS of a delivery: the smaller of the published and the granted QoS
/// [MQTT-3.8.4-8].
pub fn delivery_qos(published: QoS, granted: QoS) -> QoS {
    published.min(granted)
}
