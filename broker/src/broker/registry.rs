//! The session registry: client id to session.
//!
//! A set of the sessions themselves, looked up by the client id each one carries,
//! rather than a map from a copy of that id: a `HashMap<ByteString, Arc<Session>>`
//! bucket is 40 bytes (and a registry keeps up to twice as many buckets as
//! sessions), one of this set 8.

use std::borrow::Borrow;
use std::collections::HashSet;
use std::hash::{Hash, Hasher};
use std::sync::Arc;

use crate::session::Session;

/// See the module docs.
#[derive(Default)]
pub(super) struct Registry {
    sessions: HashSet<Entry>,
}

/// A session, hashed and compared by its client id.
struct Entry(Arc<Session>);

impl Hash for Entry {
    fn hash<H: Hasher>(&self, state: &mut H) {
        // As `str` hashes: lookups hash the `&str` they are given.
        self.client_id().hash(state);
    }
}

impl PartialEq for Entry {
    fn eq(&self, other: &Entry) -> bool {
        self.client_id() == other.client_id()
    }
}

impl Eq for Entry {}

impl Borrow<str> for Entry {
    fn borrow(&self) -> &str {
        self.client_id()
    }
}

impl Entry {
    fn client_id(&self) -> &str {
        &self.0.client_id
    }
}

impl Registry {
    pub fn get(&self, client_id: &str) -> Option<&Arc<Session>> {
        self.sessions.get(client_id).map(|e| &e.0)
    }

    /// Adds `session` under its client id, replacing the session registered there.
    pub fn insert(&mut self, session: Arc<Session>) {
        self.sessions.replace(Entry(session));
    }

    pub fn remove(&mut self, client_id: &str) -> Option<Arc<Session>> {
        self.sessions.take(client_id).map(|e| e.0)
    }

    pub fn len(&self) -> usize {
        self.sessions.len()
    }

    pub fn values(&self) -> impl Iterator<Item = &Arc<Session>> {
        self.sessions.iter().map(|e| &e.0)
    }
}
