//! The replicated state itself, as plain data: routes, shared groups, retained
//! messages, the persistent-session registry and node metadata, plus the derived
//! topic tries that make `remote_routes` / `remote_shared` a trie walk instead of a
//! scan. Pure and deterministic: applying a command never reads the clock or does I/O
//! (timestamps travel inside commands), so every replica computes the same state.

use std::collections::{BTreeMap, BTreeSet};

use bytes::Bytes;
use ferromq_proto::raft::v1 as pb;
use ferromq_proto::raft::v1::command::Kind;
use ferromq_topic::{TopicTrie, validate_topic_filter};

use super::Applied;
use crate::NodeId;

/// Current command and image version.
pub const VERSION: u32 = 1;

/// A retained message as replicated: opaque broker-encoded bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RetainedValue {
    pub message: Bytes,
    pub expires_at_ms: u64,
}

/// A persistent session's registry entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionOwner {
    pub node: NodeId,
    pub expiry_secs: u32,
    pub at_ms: u64,
}

/// A retained change to report to the local broker after the state lock is released.
pub type RetainedChange = (String, Option<Bytes>);

/// A node with routes matching a topic (see [`Cluster::remote_routes`](crate::Cluster::remote_routes)).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RouteMatch {
    pub node: NodeId,
    /// Every matching route of the node is transient: held only by sessions that end
    /// with their connection (`RouteAdd.transient`).
    pub transient: bool,
}

/// The state machine's data and indexes.
#[derive(Default)]
pub struct State {
    /// node -> filter -> transient (`RouteAdd.transient`).
    routes: BTreeMap<NodeId, BTreeMap<String, bool>>,
    shared: BTreeMap<(String, String), BTreeSet<NodeId>>,
    retained: BTreeMap<String, RetainedValue>,
    sessions: BTreeMap<String, SessionOwner>,
    nodes: BTreeMap<NodeId, pb::NodeMeta>,
    /// filter -> node: every node's routes (value: transient).
    route_index: TopicTrie<NodeId, bool>,
    /// filter -> group (value: the filter, to find the members in `shared`).
    shared_index: TopicTrie<String, String>,
}

/// Short name of a command kind, for logs and `Display`.
pub fn kind_name(k: &Kind) -> &'static str {
    match k {
        Kind::RouteAdd(_) => "route_add",
        Kind::RouteRemove(_) => "route_remove",
        Kind::SharedAdd(_) => "shared_add",
        Kind::SharedRemove(_) => "shared_remove",
        Kind::RetainedSet(_) => "retained_set",
        Kind::RetainedClear(_) => "retained_clear",
        Kind::SessionClaim(_) => "session_claim",
        Kind::SessionRelease(_) => "session_release",
        Kind::NodeMeta(_) => "node_meta",
        Kind::NodeForget(_) => "node_forget",
        Kind::Batch(_) => "batch",
    }
}

fn valid_filter(filter: &str) -> bool {
    validate_topic_filter(filter).is_ok() && !filter.starts_with("$share/")
}

impl State {
    /// Applies one command; retained changes are appended to `changes`.
    ///
    /// `is_member` is the membership as of this log entry: additions on behalf of a
    /// node that is not a member (a removed node's late batch arriving after its
    /// `NodeForget`) are ignored, so no ghost routes point at a node that is gone.
    pub fn apply(
        &mut self,
        cmd: &pb::Command,
        is_member: &dyn Fn(NodeId) -> bool,
        changes: &mut Vec<RetainedChange>,
    ) -> Applied {
        let mut out = Applied::default();
        if cmd.version > VERSION {
            // Written by a newer node: skipped identically on every node of this
            // version (a rolling upgrade must not start proposing new kinds early).
            tracing::warn!(version = cmd.version, "skipping command of a newer version");
            return out;
        }
        let Some(kind) = &cmd.kind else { return out };
        let adds_for = match kind {
            Kind::RouteAdd(r) => Some(r.node),
            Kind::SharedAdd(s) => Some(s.node),
            Kind::SessionClaim(c) => Some(c.node),
            Kind::NodeMeta(m) => Some(m.node),
            _ => None,
        };
        if let Some(node) = adds_for
            && !is_member(node)
        {
            tracing::debug!(
                node,
                kind = kind_name(kind),
                "ignoring a command for a non-member"
            );
            return out;
        }
        match kind {
            Kind::RouteAdd(r) => self.route_add(r.node, &r.filter, r.transient),
            Kind::RouteRemove(r) => self.route_remove(r.node, &r.filter),
            Kind::SharedAdd(s) => self.shared_add(s.node, &s.group, &s.filter),
            Kind::SharedRemove(s) => self.shared_remove(s.node, &s.group, &s.filter),
            Kind::RetainedSet(r) => {
                let message = Bytes::from(r.message.clone());
                self.retained.insert(
                    r.topic.clone(),
                    RetainedValue {
                        message: message.clone(),
                        expires_at_ms: r.expires_at_ms,
                    },
                );
                changes.push((r.topic.clone(), Some(message)));
            }
            Kind::RetainedClear(r) => {
                let clear = match self.retained.get(&r.topic) {
                    None => false,
                    Some(_) if r.if_expired_by_ms == 0 => true,
                    Some(v) => v.expires_at_ms != 0 && v.expires_at_ms <= r.if_expired_by_ms,
                };
                if clear && self.retained.remove(&r.topic).is_some() {
                    changes.push((r.topic.clone(), None));
                }
            }
            Kind::SessionClaim(c) => {
                let prev = self.sessions.insert(
                    c.client_id.clone(),
                    SessionOwner {
                        node: c.node,
                        expiry_secs: c.expiry_secs,
                        at_ms: c.at_ms,
                    },
                );
                out.prev_owner = prev.map(|p| p.node).filter(|n| *n != c.node);
            }
            Kind::SessionRelease(r) => {
                if self
                    .sessions
                    .get(&r.client_id)
                    .is_some_and(|s| s.node == r.node)
                {
                    self.sessions.remove(&r.client_id);
                }
            }
            Kind::NodeMeta(m) => {
                self.nodes.insert(m.node, m.clone());
            }
            Kind::NodeForget(f) => self.forget(f.node),
            Kind::Batch(b) => {
                for c in &b.commands {
                    let r = self.apply(c, is_member, changes);
                    out.prev_owner = out.prev_owner.or(r.prev_owner);
                }
            }
        }
        out
    }

    /// Adds a route, or updates its transient flag.
    fn route_add(&mut self, node: NodeId, filter: &str, transient: bool) {
        if !valid_filter(filter) {
            tracing::warn!(filter, "ignoring replicated route with an invalid filter");
            return;
        }
        let previous = self
            .routes
            .entry(node)
            .or_default()
            .insert(filter.to_owned(), transient);
        if previous != Some(transient) {
            self.route_index.insert(filter, node, transient);
        }
    }

    fn route_remove(&mut self, node: NodeId, filter: &str) {
        if let Some(set) = self.routes.get_mut(&node) {
            if set.remove(filter).is_some() {
                self.route_index.remove(filter, &node);
            }
            if set.is_empty() {
                self.routes.remove(&node);
            }
        }
    }

    fn shared_add(&mut self, node: NodeId, group: &str, filter: &str) {
        if !valid_filter(filter) {
            tracing::warn!(
                filter,
                "ignoring replicated shared group with an invalid filter"
            );
            return;
        }
        let members = self
            .shared
            .entry((group.to_owned(), filter.to_owned()))
            .or_default();
        if members.is_empty() {
            self.shared_index
                .insert(filter, group.to_owned(), filter.to_owned());
        }
        members.insert(node);
    }

    fn shared_remove(&mut self, node: NodeId, group: &str, filter: &str) {
        let key = (group.to_owned(), filter.to_owned());
        if let Some(members) = self.shared.get_mut(&key) {
            members.remove(&node);
            if members.is_empty() {
                self.shared.remove(&key);
                self.shared_index.remove(filter, &key.0);
            }
        }
    }

    fn forget(&mut self, node: NodeId) {
        if let Some(filters) = self.routes.remove(&node) {
            for f in filters.keys() {
                self.route_index.remove(f, &node);
            }
        }
        let groups: Vec<(String, String)> = self
            .shared
            .iter()
            .filter(|(_, m)| m.contains(&node))
            .map(|(k, _)| k.clone())
            .collect();
        for (g, f) in groups {
            self.shared_remove(node, &g, &f);
        }
        self.sessions.retain(|_, s| s.node != node);
        self.nodes.remove(&node);
    }

    // ---- queries ----

    /// Nodes other than `me` with a route matching `topic`, one entry per node
    /// (transient only when all its matching routes are), appended.
    pub fn remote_routes(&self, me: NodeId, topic: &str, out: &mut Vec<RouteMatch>) {
        let start = out.len();
        self.route_index.for_each_match(topic, |node, transient| {
            if *node == me {
                return;
            }
            match out[start..].iter_mut().find(|m| m.node == *node) {
                Some(m) => m.transient &= *transient,
                None => out.push(RouteMatch {
                    node: *node,
                    transient: *transient,
                }),
            }
        });
    }

    /// Whether `node` holds a persistent (not transient) route for exactly `filter`
    /// (non-shared).
    pub fn has_persistent_route(&self, node: NodeId, filter: &str) -> bool {
        self.routes
            .get(&node)
            .and_then(|f| f.get(filter))
            .is_some_and(|transient| !transient)
    }

    /// (group, filter, nodes other than `me`) for shared groups matching `topic`.
    pub fn remote_shared(
        &self,
        me: NodeId,
        topic: &str,
        out: &mut Vec<(String, String, Vec<NodeId>)>,
    ) {
        self.shared_index.for_each_match(topic, |group, filter| {
            if let Some(members) = self.shared.get(&(group.clone(), filter.clone())) {
                let nodes: Vec<NodeId> = members.iter().copied().filter(|n| *n != me).collect();
                if !nodes.is_empty() {
                    out.push((group.clone(), filter.clone(), nodes));
                }
            }
        });
    }

    /// `node`'s routes: filter -> transient.
    pub fn routes_of(&self, node: NodeId) -> BTreeMap<String, bool> {
        self.routes.get(&node).cloned().unwrap_or_default()
    }

    pub fn shared_of(&self, node: NodeId) -> Vec<(String, String)> {
        self.shared
            .iter()
            .filter(|(_, m)| m.contains(&node))
            .map(|(k, _)| k.clone())
            .collect()
    }

    pub fn session_owner(&self, client_id: &str) -> Option<NodeId> {
        self.sessions.get(client_id).map(|s| s.node)
    }

    pub fn node_meta(&self, node: NodeId) -> Option<&pb::NodeMeta> {
        self.nodes.get(&node)
    }

    pub fn retained(&self) -> impl Iterator<Item = (&String, &RetainedValue)> {
        self.retained.iter()
    }

    /// Topics whose retained message expired at `now_ms` (at most `max`).
    pub fn retained_expired(&self, now_ms: u64, max: usize) -> Vec<String> {
        self.retained
            .iter()
            .filter(|(_, v)| v.expires_at_ms != 0 && v.expires_at_ms <= now_ms)
            .take(max)
            .map(|(t, _)| t.clone())
            .collect()
    }

    pub fn retained_get(&self, topic: &str) -> Option<&RetainedValue> {
        self.retained.get(topic)
    }

    // ---- image (snapshot payload) ----

    pub fn to_image(&self) -> pb::StateImage {
        pb::StateImage {
            version: VERSION,
            routes: self
                .routes
                .iter()
                .map(|(n, f)| pb::RouteSet {
                    node: *n,
                    filters: f.keys().cloned().collect(),
                    transient_filters: f
                        .iter()
                        .filter(|(_, transient)| **transient)
                        .map(|(f, _)| f.clone())
                        .collect(),
                })
                .collect(),
            shared: self
                .shared
                .iter()
                .map(|((g, f), m)| pb::SharedGroup {
                    group: g.clone(),
                    filter: f.clone(),
                    nodes: m.iter().copied().collect(),
                })
                .collect(),
            retained: self
                .retained
                .iter()
                .map(|(t, v)| pb::Retained {
                    topic: t.clone(),
                    message: v.message.to_vec(),
                    expires_at_ms: v.expires_at_ms,
                })
                .collect(),
            sessions: self
                .sessions
                .iter()
                .map(|(c, s)| pb::SessionEntry {
                    client_id: c.clone(),
                    node: s.node,
                    expiry_secs: s.expiry_secs,
                    at_ms: s.at_ms,
                })
                .collect(),
            nodes: self.nodes.values().cloned().collect(),
        }
    }

    pub fn from_image(img: pb::StateImage) -> State {
        let mut s = State::default();
        for r in img.routes {
            let transient: BTreeSet<String> = r.transient_filters.into_iter().collect();
            for f in r.filters {
                let t = transient.contains(&f);
                s.route_add(r.node, &f, t);
            }
        }
        for g in img.shared {
            for n in g.nodes {
                s.shared_add(n, &g.group, &g.filter);
            }
        }
        for r in img.retained {
            s.retained.insert(
                r.topic,
                RetainedValue {
                    message: Bytes::from(r.message),
                    expires_at_ms: r.expires_at_ms,
                },
            );
        }
        for e in img.sessions {
            s.sessions.insert(
                e.client_id,
                SessionOwner {
                    node: e.node,
                    expiry_secs: e.expiry_secs,
                    at_ms: e.at_ms,
                },
            );
        }
        for n in img.nodes {
            s.nodes.insert(n.node, n);
        }
        s
    }

    /// Retained changes turning `self` into `new`.
    pub fn retained_diff(&self, new: &State) -> Vec<RetainedChange> {
        let mut out = Vec::new();
        for (t, v) in &new.retained {
            if self.retained.get(t) != Some(v) {
                out.push((t.clone(), Some(v.message.clone())));
            }
        }
        for t in self.retained.keys() {
            if !new.retained.contains_key(t) {
                out.push((t.clone(), None));
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn cmd(kind: Kind) -> pb::Command {
        pb::Command {
            version: VERSION,
            kind: Some(kind),
        }
    }

    #[test]
    fn routes_exclude_self_and_dedupe() {
        let mut s = State::default();
        let mut ch = Vec::new();
        for (n, f) in [(1, "a/+"), (2, "a/#"), (2, "a/b"), (3, "x")] {
            s.apply(
                &cmd(Kind::RouteAdd(pb::RouteAdd {
                    node: n,
                    filter: f.into(),
                    transient: false,
                })),
                &|_| true,
                &mut ch,
            );
        }
        let mut out = Vec::new();
        s.remote_routes(1, "a/b", &mut out);
        assert_eq!(out, vec![persistent(2)]);
        s.apply(
            &cmd(Kind::RouteRemove(pb::RouteRemove {
                node: 2,
                filter: "a/#".into(),
            })),
            &|_| true,
            &mut ch,
        );
        s.apply(
            &cmd(Kind::RouteRemove(pb::RouteRemove {
                node: 2,
                filter: "a/b".into(),
            })),
            &|_| true,
            &mut ch,
        );
        out.clear();
        s.remote_routes(1, "a/b", &mut out);
        assert!(out.is_empty());
        out.clear();
        s.remote_routes(3, "a/b", &mut out);
        assert_eq!(out, vec![persistent(1)]);
    }

    fn persistent(node: NodeId) -> RouteMatch {
        RouteMatch {
            node,
            transient: false,
        }
    }

    fn route_add(node: NodeId, filter: &str, transient: bool) -> pb::Command {
        cmd(Kind::RouteAdd(pb::RouteAdd {
            node,
            filter: filter.into(),
            transient,
        }))
    }

    /// A node counts as transient for a topic only when every route of it matching
    /// the topic is; a newer RouteAdd updates the flag; snapshots keep it.
    #[test]
    fn transient_routes_are_tracked_per_node_and_filter() {
        let mut s = State::default();
        let mut ch = Vec::new();
        s.apply(&route_add(2, "a/+", true), &|_| true, &mut ch);
        s.apply(&route_add(2, "a/b", true), &|_| true, &mut ch);
        s.apply(&route_add(3, "a/#", false), &|_| true, &mut ch);
        let matches = |s: &State, topic: &str| {
            let mut out = Vec::new();
            s.remote_routes(1, topic, &mut out);
            out.sort_by_key(|m| m.node);
            out
        };
        let transient = |node| RouteMatch {
            node,
            transient: true,
        };
        assert_eq!(matches(&s, "a/b"), vec![transient(2), persistent(3)]);
        assert!(!s.has_persistent_route(2, "a/b"));
        assert!(s.has_persistent_route(3, "a/#"));
        // A persistent session on node 2 subscribed to a/b.
        s.apply(&route_add(2, "a/b", false), &|_| true, &mut ch);
        assert!(s.has_persistent_route(2, "a/b"));
        assert!(!s.has_persistent_route(2, "a/x"));
        assert_eq!(matches(&s, "a/b"), vec![persistent(2), persistent(3)]);
        assert_eq!(matches(&s, "a/c"), vec![transient(2), persistent(3)]);
        let image = s.to_image();
        let copy = State::from_image(image.clone());
        assert_eq!(matches(&copy, "a/b"), vec![persistent(2), persistent(3)]);
        assert_eq!(matches(&copy, "a/c"), vec![transient(2), persistent(3)]);
        // A node that predates the flag reads every route, transient ones as persistent.
        let mut old = image;
        for r in &mut old.routes {
            r.transient_filters.clear();
        }
        let copy = State::from_image(old);
        assert_eq!(matches(&copy, "a/c"), vec![persistent(2), persistent(3)]);
        // ... and left again.
        s.apply(&route_add(2, "a/b", true), &|_| true, &mut ch);
        assert_eq!(matches(&s, "a/b"), vec![transient(2), persistent(3)]);
        assert_eq!(
            s.routes_of(2),
            BTreeMap::from([("a/+".to_string(), true), ("a/b".to_string(), true)])
        );
    }

    #[test]
    fn additions_for_non_members_are_ignored() {
        let mut s = State::default();
        let mut ch = Vec::new();
        let add = route_add(9, "a", false);
        s.apply(&add, &|n| n != 9, &mut ch);
        let mut out = Vec::new();
        s.remote_routes(1, "a", &mut out);
        assert!(out.is_empty());
        s.apply(&add, &|_| true, &mut ch);
        s.remote_routes(1, "a", &mut out);
        assert_eq!(out, vec![persistent(9)]);
    }

    #[test]
    fn image_round_trip_and_diff() {
        let mut s = State::default();
        let mut ch = Vec::new();
        s.apply(
            &cmd(Kind::SharedAdd(pb::SharedAdd {
                node: 2,
                group: "g".into(),
                filter: "t/#".into(),
            })),
            &|_| true,
            &mut ch,
        );
        s.apply(
            &cmd(Kind::RetainedSet(pb::RetainedSet {
                topic: "t/1".into(),
                message: b"m".to_vec(),
                expires_at_ms: 0,
            })),
            &|_| true,
            &mut ch,
        );
        assert_eq!(ch.len(), 1);
        let r = s.apply(
            &cmd(Kind::SessionClaim(pb::SessionClaim {
                client_id: "c".into(),
                node: 2,
                expiry_secs: 5,
                at_ms: 1,
            })),
            &|_| true,
            &mut ch,
        );
        assert_eq!(r.prev_owner, None);
        let r = s.apply(
            &cmd(Kind::SessionClaim(pb::SessionClaim {
                client_id: "c".into(),
                node: 3,
                expiry_secs: 5,
                at_ms: 2,
            })),
            &|_| true,
            &mut ch,
        );
        assert_eq!(r.prev_owner, Some(2));
        let exp = |topic: &str, by: u64| {
            cmd(Kind::RetainedClear(pb::RetainedClear {
                topic: topic.into(),
                if_expired_by_ms: by,
            }))
        };
        s.apply(
            &cmd(Kind::RetainedSet(pb::RetainedSet {
                topic: "e".into(),
                message: b"x".to_vec(),
                expires_at_ms: 100,
            })),
            &|_| true,
            &mut ch,
        );
        assert_eq!(s.retained_expired(99, 10), Vec::<String>::new());
        assert_eq!(s.retained_expired(100, 10), vec!["e".to_string()]);
        s.apply(&exp("e", 99), &|_| true, &mut ch);
        assert!(s.retained_get("e").is_some(), "not expired yet");
        s.apply(&exp("t/1", 1000), &|_| true, &mut ch);
        assert!(s.retained_get("t/1").is_some(), "never expires");
        s.apply(&exp("e", 100), &|_| true, &mut ch);
        assert!(s.retained_get("e").is_none());
        let copy = State::from_image(s.to_image());
        let mut shared = Vec::new();
        copy.remote_shared(1, "t/x", &mut shared);
        assert_eq!(shared, vec![("g".to_string(), "t/#".to_string(), vec![2])]);
        assert_eq!(copy.session_owner("c"), Some(3));
        let empty = State::default();
        assert_eq!(
            empty.retained_diff(&copy),
            vec![("t/1".to_string(), Some(Bytes::from_static(b"m")))]
        );
        assert_eq!(copy.retained_diff(&empty), vec![("t/1".to_string(), None)]);
    }
}
