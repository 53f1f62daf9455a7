//! A session's subscriptions, allocated by the first one.
//!
//! Many clients only publish (sensors, gateways that forward), and every session
//! would otherwise carry an empty `HashMap` inline (48 bytes); this is one pointer
//! until the first SUBSCRIBE, and is freed again when the last filter goes.

use std::borrow::Borrow;
use std::collections::HashMap;
use std::hash::Hash;

use ferromq_codec::ByteString;

use super::SubscriptionRecord;

/// Filter (as the client sent it, `$share/...` included) to options.
#[derive(Debug, Default)]
pub struct Subscriptions {
    #[expect(
        clippy::box_collection,
        reason = "a box is 8 bytes inline, an empty map 48: most sessions of idle clients have none"
    )]
    map: Option<Box<HashMap<ByteString, SubscriptionRecord>>>,
}

impl Subscriptions {
    pub fn len(&self) -> usize {
        self.map.as_ref().map_or(0, |m| m.len())
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn contains_key<Q>(&self, filter: &Q) -> bool
    where
        ByteString: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        self.map.as_ref().is_some_and(|m| m.contains_key(filter))
    }

    /// Adds or replaces a subscription; returns the one it replaced.
    pub fn insert(
        &mut self,
        filter: ByteString,
        record: SubscriptionRecord,
    ) -> Option<SubscriptionRecord> {
        self.map.get_or_insert_default().insert(filter, record)
    }

    /// Removes a subscription (and the table with the last one).
    pub fn remove<Q>(&mut self, filter: &Q) -> Option<SubscriptionRecord>
    where
        ByteString: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        let map = self.map.as_mut()?;
        let removed = map.remove(filter);
        if map.is_empty() {
            self.map = None;
        }
        removed
    }

    pub fn iter(&self) -> impl Iterator<Item = (&ByteString, &SubscriptionRecord)> {
        self.map.iter().flat_map(|m| m.iter())
    }

    pub fn keys(&self) -> impl Iterator<Item = &ByteString> {
        self.iter().map(|(filter, _)| filter)
    }

    /// Takes every subscription out, leaving none.
    pub fn drain(&mut self) -> impl Iterator<Item = (ByteString, SubscriptionRecord)> {
        self.map.take().into_iter().flat_map(|m| m.into_iter())
    }
}
