//! Property tests: both indexes against the naive [`matches()`], and insert / remove
//! sequences against a `BTreeMap` model, including pruning.
//!
//! Alphabets are tiny (`a`, `b`, `$`, empty levels, at most four levels) so that
//! random filters and topics collide and match often; 256 cases each run in well
//! under a second in a debug build.

use std::collections::{BTreeMap, BTreeSet};

use proptest::prelude::*;

use crate::{RetainedTree, TopicTrie, matches, validate_topic_filter, validate_topic_name};

/// One literal level: empty, or one or two of `a`, `b`, `$`.
fn literal() -> impl Strategy<Value = String> {
    "[ab$]{0,2}"
}

fn topic() -> impl Strategy<Value = String> {
    prop::collection::vec(literal(), 1..=4)
        .prop_map(|levels| levels.join("/"))
        .prop_filter("names are non-empty [MQTT-4.7.3-1]", |t| !t.is_empty())
}

fn filter() -> impl Strategy<Value = String> {
    let level = prop_oneof![3 => literal(), 1 => Just("+".to_owned())];
    (prop::collection::vec(level, 0..=4), any::<bool>())
        .prop_map(|(mut levels, hash)| {
            if hash || levels.is_empty() {
                levels.push("#".to_owned());
            }
            levels.join("/")
        })
        .prop_filter("filters are non-empty [MQTT-4.7.3-1]", |f| !f.is_empty())
}

fn trie_matches(trie: &TopicTrie<u8, String>, topic: &str) -> Vec<(String, u8)> {
    let mut out = Vec::new();
    trie.for_each_match(topic, |k, v| out.push((v.clone(), *k)));
    out.sort_unstable();
    out
}

fn retained_matches(tree: &RetainedTree<String>, filter: &str) -> Vec<String> {
    let mut out = Vec::new();
    tree.for_each_match(filter, |topic, v| {
        assert_eq!(topic, v, "reconstructed topic differs from the stored one");
        out.push(topic.to_owned());
    });
    out.sort_unstable();
    out
}

#[derive(Debug, Clone)]
enum TrieOp {
    Insert(String, u8, u32),
    Remove(String, u8),
}

fn trie_op() -> impl Strategy<Value = TrieOp> {
    prop_oneof![
        (filter(), 0..3u8, any::<u32>()).prop_map(|(f, k, v)| TrieOp::Insert(f, k, v)),
        (filter(), 0..3u8).prop_map(|(f, k)| TrieOp::Remove(f, k)),
    ]
}

#[derive(Debug, Clone)]
enum RetainedOp {
    Insert(String, u32),
    Remove(String),
    /// Drop every value divisible by this.
    Retain(u32),
}

fn retained_op() -> impl Strategy<Value = RetainedOp> {
    prop_oneof![
        4 => (topic(), any::<u32>()).prop_map(|(t, v)| RetainedOp::Insert(t, v)),
        2 => topic().prop_map(RetainedOp::Remove),
        1 => (2..5u32).prop_map(RetainedOp::Retain),
    ]
}

proptest! {
    #[test]
    fn generators_produce_valid_input(f in filter(), t in topic()) {
        prop_assert_eq!(validate_topic_filter(&f), Ok(()));
        prop_assert_eq!(validate_topic_name(&t), Ok(()));
    }

    /// `TopicTrie::for_each_match` reports exactly the (filter, key) pairs that
    /// `matches` accepts, each once.
    #[test]
    fn trie_agrees_with_naive_matches(
        subs in prop::collection::vec((filter(), 0..3u8), 0..40),
        topics in prop::collection::vec(topic(), 1..20),
    ) {
        let mut trie = TopicTrie::new();
        let mut model = BTreeSet::new();
        for (f, k) in &subs {
            trie.insert(f, *k, f.clone());
            model.insert((f.clone(), *k));
        }
        for t in &topics {
            let expected: Vec<_> = model.iter().filter(|(f, _)| matches(f, t)).cloned().collect();
            prop_assert_eq!(trie_matches(&trie, t), expected, "topic {:?}", t);
        }
    }

    /// `RetainedTree::for_each_match` reports exactly the stored topics that `matches`
    /// accepts, each once, with the topic string rebuilt correctly.
    #[test]
    fn retained_agrees_with_naive_matches(
        topics in prop::collection::vec(topic(), 0..40),
        filters in prop::collection::vec(filter(), 1..20),
    ) {
        let mut tree = RetainedTree::new();
        let mut model = BTreeSet::new();
        for t in &topics {
            tree.insert(t, t.clone());
            model.insert(t.clone());
        }
        prop_assert_eq!(tree.len(), model.len());
        for f in &filters {
            let expected: Vec<_> = model.iter().filter(|t| matches(f, t)).cloned().collect();
            prop_assert_eq!(retained_matches(&tree, f), expected, "filter {:?}", f);
        }
    }

    /// Insert / remove sequences keep `len`, `filter_count`, `get` and the return
    /// values in line with a map, and prune: the trie has exactly the nodes a fresh
    /// trie with the same entries has, and none once everything is removed.
    #[test]
    fn trie_insert_remove_sequences(ops in prop::collection::vec(trie_op(), 0..60)) {
        let mut trie = TopicTrie::new();
        let mut model: BTreeMap<(String, u8), u32> = BTreeMap::new();
        for op in &ops {
            match op {
                TrieOp::Insert(f, k, v) => {
                    prop_assert_eq!(trie.insert(f, *k, *v), model.insert((f.clone(), *k), *v));
                }
                TrieOp::Remove(f, k) => {
                    prop_assert_eq!(trie.remove(f, k), model.remove(&(f.clone(), *k)));
                }
            }
            prop_assert_eq!(trie.len(), model.len());
            let filters: BTreeSet<_> = model.keys().map(|(f, _)| f).collect();
            prop_assert_eq!(trie.filter_count(), filters.len());
        }
        let mut fresh = TopicTrie::new();
        for ((f, k), v) in &model {
            prop_assert_eq!(trie.get(f, k), Some(v));
            fresh.insert(f, *k, *v);
        }
        prop_assert_eq!(trie.root.node_count(), fresh.root.node_count(), "not pruned");
        for (f, k) in model.keys() {
            prop_assert!(trie.remove(f, k).is_some());
            prop_assert_eq!(trie.get(f, k), None);
        }
        prop_assert!(trie.is_empty());
        prop_assert_eq!(trie.filter_count(), 0);
        prop_assert_eq!(trie.root.node_count(), 1, "only the root is left");
    }

    /// The same for the retained tree, with `retain` in the mix.
    #[test]
    fn retained_insert_remove_retain_sequences(ops in prop::collection::vec(retained_op(), 0..60)) {
        let mut tree = RetainedTree::new();
        let mut model: BTreeMap<String, u32> = BTreeMap::new();
        for op in &ops {
            match op {
                RetainedOp::Insert(t, v) => {
                    prop_assert_eq!(tree.insert(t, *v), model.insert(t.clone(), *v));
                }
                RetainedOp::Remove(t) => {
                    prop_assert_eq!(tree.remove(t), model.remove(t));
                }
                RetainedOp::Retain(d) => {
                    let mut visited = BTreeMap::new();
                    tree.retain(|t, v| {
                        visited.insert(t.to_owned(), *v);
                        *v % d != 0
                    });
                    prop_assert_eq!(&visited, &model, "retain visits every (topic, value)");
                    model.retain(|_, v| *v % d != 0);
                }
            }
            prop_assert_eq!(tree.len(), model.len());
        }
        let mut fresh = RetainedTree::new();
        for (t, v) in &model {
            prop_assert_eq!(tree.get(t), Some(v));
            fresh.insert(t, *v);
        }
        prop_assert_eq!(tree.root.node_count(), fresh.root.node_count(), "not pruned");
        for t in model.keys() {
            prop_assert!(tree.remove(t).is_some());
        }
        prop_assert!(tree.is_empty());
        prop_assert_eq!(tree.root.node_count(), 1, "only the root is left");
    }
}
