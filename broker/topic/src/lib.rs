//! MQTT topics: validation, the subscription trie and the retained-message tree.
//!
//! Pure data structures: no tokio, no I/O, no clocks, no locks. The broker's router
//! uses them on the publish hot path, and the cluster state machine uses the same
//! trie for its route table (node -> filters), so both agree on matching by
//! construction. Callers own synchronisation.
//!
//! The semantics live in one place, [`matches()`], a deliberately naive matcher; the two
//! indexes are property-tested to return exactly what it accepts. Everything takes
//! `&str`, which `bytestring::ByteString` topics from the codec deref to.
//!
//! # Layout
//! - [`validate`]: [`validate_topic_name`], [`validate_topic_filter`], shared
//!   subscriptions ([`parse_shared`]), the reference [`matches()`], and the limits
//!   [`MAX_TOPIC_LEN`] and [`MAX_LEVELS`].
//! - [`trie`]: [`TopicTrie`], filter -> entries per key, matched by a topic name
//!   (fan-out of a PUBLISH). Matching does not allocate.
//! - [`retained`]: [`RetainedTree`], topic name -> value, matched by a filter
//!   (retained messages for a new SUBSCRIBE), with [`RetainedTree::retain`] for
//!   expiry.
//!
//! # Preconditions
//! Both indexes take only validated input: filters that passed
//! [`validate_topic_filter`] (and, for `$share/{group}/{filter}`, only the inner
//! filter) and names that passed [`validate_topic_name`]. The [`MAX_LEVELS`] bound is
//! what keeps their recursive walks shallow; debug builds assert it.
//!
//! # Example
//! ```
//! use ferromq_topic::{RetainedTree, TopicTrie, parse_shared, validate_topic_filter};
//!
//! let mut subs: TopicTrie<&str, u8> = TopicTrie::new();
//! for (client, filter) in [("c1", "sport/#"), ("c2", "sport/+/player1"), ("c3", "#")] {
//!     validate_topic_filter(filter).expect("valid");
//!     subs.insert(filter, client, 1); // value: e.g. the granted QoS
//! }
//! let shared = parse_shared("$share/g/sport/tennis/+").unwrap().unwrap();
//! subs.insert(shared.filter, "group:g", 0);
//!
//! let mut hit = Vec::new();
//! subs.for_each_match("sport/tennis/player1", |client, _qos| hit.push(*client));
//! hit.sort();
//! assert_eq!(hit, ["c1", "c2", "c3", "group:g"]);
//!
//! // '$' topics are not matched by a leading wildcard [MQTT-4.7.2-1].
//! let mut n = 0;
//! subs.for_each_match("$SYS/uptime", |_, _| n += 1);
//! assert_eq!(n, 0);
//!
//! let mut retained = RetainedTree::new();
//! retained.insert("sport/tennis/player1", "15-30");
//! retained.insert("sport/golf", "par");
//! let mut got = Vec::new();
//! retained.for_each_match("sport/+/player1", |topic, msg| got.push((topic.to_owned(), *msg)));
//! assert_eq!(got, [("sport/tennis/player1".to_owned(), "15-30")]);
//! ```
#![forbid(unsafe_code)]

pub mod retained;
pub mod trie;
pub mod validate;

#[cfg(test)]
mod proptests;

pub use retained::RetainedTree;
pub use trie::TopicTrie;
pub use validate::{
    MAX_LEVELS, MAX_TOPIC_LEN, SharedFilter, TopicError, level_count, matches, parse_shared,
    validate_topic_filter, validate_topic_name,
};
