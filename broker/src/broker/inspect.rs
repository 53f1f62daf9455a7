//! Read-only views of the broker's state and the few operator actions, for the admin
//! API and the metrics endpoint (`crate::http`).
//!
//! Every view copies what it needs out of the locks and releases them at once; the
//! lock order of [`crate::broker`] holds (the registry is released before any session
//! is locked, the router and the retained store are taken alone). Listing walks every
//! session, so its cost grows with the number of sessions; callers bound what they
//! return (see `crate::http::admin`), not what they walk.

use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use ferromq_codec::{ByteString, PublishProperties, QoS, ReasonCode, SubscriptionOptions};

use super::{Broker, split_shared};
use crate::message::Message;
use crate::session::{ConnectionInfo, Session};

/// One session as the admin API shows it.
#[derive(Debug, Clone)]
pub struct SessionSnapshot {
    pub client_id: ByteString,
    /// The serving connection; `None` while the session is offline.
    pub connection: Option<ConnectionInfo>,
    /// Whether a connection is attached (it may not have published its info yet).
    pub online: bool,
    pub subscriptions: Vec<SubscriptionSnapshot>,
    /// Deliveries waiting to be sent.
    pub queued: usize,
    /// QoS 1/2 messages sent and not yet acknowledged.
    pub inflight: usize,
    /// Session Expiry Interval in seconds (`u32::MAX` never expires).
    pub expiry_interval: u32,
}

/// One subscription of one session.
#[derive(Debug, Clone)]
pub struct SubscriptionSnapshot {
    pub client_id: ByteString,
    /// The filter without a `$share/{group}/` prefix.
    pub filter: String,
    /// The shared-subscription group, if any.
    pub share_group: Option<String>,
    pub options: SubscriptionOptions,
    pub identifier: Option<u32>,
}

/// Totals over every session, computed at scrape time.
#[derive(Debug, Clone, Copy, Default)]
pub struct SessionTotals {
    pub online: u64,
    pub offline: u64,
    pub queued: u64,
    pub inflight: u64,
}

impl Broker {
    /// Every session in the registry (a copy of the handles, lock released).
    pub fn sessions(&self) -> Vec<Arc<Session>> {
        self.shared.sessions.lock().values().cloned().collect()
    }

    /// The session of `client_id`, if there is one.
    pub fn session(&self, client_id: &str) -> Option<Arc<Session>> {
        self.shared.sessions.lock().get(client_id).cloned()
    }

    /// A copy of one session's state.
    pub fn snapshot(&self, session: &Session) -> SessionSnapshot {
        let inner = session.lock();
        let mut subscriptions: Vec<SubscriptionSnapshot> = inner
            .subscriptions
            .iter()
            .map(|(filter, record)| {
                let (group, f) = split_shared(filter);
                SubscriptionSnapshot {
                    client_id: session.client_id.clone(),
                    filter: f.to_owned(),
                    share_group: group.map(str::to_owned),
                    options: record.options,
                    identifier: record.identifier,
                }
            })
            .collect();
        subscriptions.sort_by(|a, b| (&a.share_group, &a.filter).cmp(&(&b.share_group, &b.filter)));
        SessionSnapshot {
            client_id: session.client_id.clone(),
            connection: inner.link.as_ref().and_then(|l| l.info().cloned()),
            online: inner.link.is_some(),
            subscriptions,
            queued: inner.delivery.queued(),
            inflight: inner.delivery.inflight(),
            expiry_interval: inner.expiry_interval,
        }
    }

    /// Online/offline sessions and queued/in-flight messages summed over all sessions.
    pub fn session_totals(&self) -> SessionTotals {
        let mut t = SessionTotals::default();
        for session in self.sessions() {
            let inner = session.lock();
            if inner.link.is_some() {
                t.online += 1;
            } else {
                t.offline += 1;
            }
            t.queued += inner.delivery.queued() as u64;
            t.inflight += inner.delivery.inflight() as u64;
        }
        t
    }

    /// Direct and shared subscriptions in the router, separately.
    pub fn subscription_counts(&self) -> (usize, usize) {
        let r = self.shared.router.read();
        (r.subscription_count(), r.shared_subscription_count())
    }

    /// Bytes held by retained messages (topic + payload + overhead per message).
    pub fn retained_bytes(&self) -> usize {
        match &self.shared.store {
            Some(store) => store.retained_bytes(),
            None => self.shared.retained.read().bytes(),
        }
    }

    /// Disconnects the client's connection (v5 clients get DISCONNECT with `reason`);
    /// the session itself stays, as after any disconnect. False if the client has no
    /// session or is not connected.
    pub fn kick(&self, client_id: &str, reason: ReasonCode) -> bool {
        let Some(session) = self.session(client_id) else {
            return false;
        };
        let link = session.lock().link.clone();
        match link {
            Some(link) => {
                session.kick(&link, reason);
                true
            }
            None => false,
        }
    }

    /// The retained message of `topic`, if any.
    pub fn retained_get(&self, topic: &str) -> Option<Arc<Message>> {
        match &self.shared.store {
            // Persistence on: retained messages live only in the store.
            Some(_) => self
                .store_retained(topic, 1)
                .0
                .into_iter()
                .find(|m| *m.topic == *topic),
            None => self.shared.retained.read().get(topic, Instant::now()),
        }
    }

    /// Up to `limit` retained messages in the store matching `filter` (key order), and
    /// whether more matched. A read error is logged and ends the list.
    fn store_retained(&self, filter: &str, limit: usize) -> (Vec<Arc<Message>>, bool) {
        let mut out = Vec::new();
        let mut more = false;
        let Some(store) = &self.shared.store else {
            return (out, more);
        };
        let prefix = crate::retained::literal_prefix(filter).as_bytes().to_vec();
        let mut from = prefix.clone();
        loop {
            let scanned = store.scan_retained(&prefix, &from, 4096, |topic, stored| {
                if !ferromq_topic::matches(filter, topic) {
                    return true;
                }
                if out.len() == limit {
                    more = true;
                    return false;
                }
                out.push(stored.into_message());
                true
            });
            match scanned {
                Ok(Some(next)) if !more => from = next,
                Ok(_) => break,
                Err(e) => {
                    tracing::warn!(filter, error = %e, "cannot read retained messages from the store");
                    break;
                }
            }
        }
        (out, more)
    }

    /// Up to `limit` retained messages matching `filter`, and whether more matched.
    pub fn retained_list(&self, filter: &str, limit: usize) -> (Vec<Arc<Message>>, bool) {
        if self.shared.store.is_some() {
            return self.store_retained(filter, limit);
        }
        let mut all = self.shared.retained.read().matching(filter, Instant::now());
        all.sort_by(|a, b| a.topic.cmp(&b.topic));
        let more = all.len() > limit;
        all.truncate(limit);
        (all, more)
    }

    /// Clears the retained message of `topic` without publishing anything to
    /// subscribers: the store applies an empty retained message, exactly as for a
    /// client's empty retained PUBLISH [MQTT-3.3.1-6]. False if there was none.
    pub fn retained_delete(&self, topic: &str) -> bool {
        if let Some(cluster) = self.cluster()
            && !topic.starts_with('$')
        {
            // Every node holds the retained set: the clear goes through Raft.
            let existed = self.retained_get(topic).is_some();
            let (cluster, topic) = (cluster.clone(), topic.to_owned());
            tokio::spawn(async move {
                if let Err(e) = cluster.retained_set(&topic, None, 0).await {
                    tracing::warn!(topic, error = %e, "cannot delete a retained message in the cluster");
                }
            });
            return existed;
        }
        if let Some(store) = &self.shared.store {
            let existed = self.retained_get(topic).is_some();
            if let Err(e) = store.remove_retained(topic) {
                tracing::warn!(topic, error = %e, "cannot delete a retained message from the store");
                return false;
            }
            return existed;
        }
        let clear = Message::new(
            ByteString::from(topic),
            Bytes::new(),
            QoS::AtMostOnce,
            true,
            PublishProperties::default(),
            None,
        );
        let mut store = self.shared.retained.write();
        if store.get(topic, Instant::now()).is_none() {
            // Also drop an expired leftover, so it does not count in the totals.
            let _ = store.apply(&clear, usize::MAX);
            return false;
        }
        let _ = store.apply(&clear, usize::MAX);
        true
    }
}
