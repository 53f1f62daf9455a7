//! The subscription index: topic filter -> one entry per subscriber key.
//!
//! A PUBLISH is matched by walking the trie along the topic's levels, never by
//! scanning all filters (the rumqttd `DataLog::matches` trap). At each node the walk
//! follows at most two edges, the literal child named like the topic level and the
//! `+` child, and reports the node's `#` entries on the way. So the cost is
//! O(levels × branching on `+`) and independent of the number of unrelated filters.
//!
//! Matching does not allocate: levels are cut from the topic with `find('/')`, the
//! literal child is looked up by `&str`, and the walk is a recursion whose depth is
//! bounded by the trie depth, itself bounded by [`MAX_LEVELS`](crate::MAX_LEVELS)
//! because only validated filters are inserted.
//!
//! # Layout
//! - [`TopicTrie`]: the public index.
//! - `Node`: literal children by level, a dedicated `+` child, the entries of the
//!   filter ending here (`entries`) and of the filter ending here with `/#` (`hash`).
//! - `Entries`: a subscriber map that is a `Vec` while small and a `HashMap` beyond.
//!
//! Keys are typically a session or client id, or, in the cluster's route table, a
//! node id; the value carries the subscription options.

use std::collections::HashMap;
use std::hash::Hash;

/// Filter -> (key -> value) index, matched by topic.
///
/// Each `(filter, key)` pair holds at most one value: subscribing again with the same
/// filter replaces the options, as SUBSCRIBE requires [MQTT-3.8.4-3]. A key with
/// several overlapping filters (`a/+` and `a/#`) is reported once per matching filter;
/// collapsing those into one delivery is the router's job [MQTT-3.3.4-2].
///
/// Filters must have passed [`validate_topic_filter`](crate::validate_topic_filter)
/// and be ordinary filters: for `$share/{group}/{filter}` insert the inner
/// [`SharedFilter::filter`](crate::SharedFilter) under a key naming the group. The
/// index itself stays memory-safe on any input, but an invalid filter has no defined
/// meaning (`a/#/b` is stored as `a/#`) and a filter deeper than
/// [`MAX_LEVELS`](crate::MAX_LEVELS) makes matching recurse that deep.
#[derive(Debug, Clone)]
pub struct TopicTrie<K, V> {
    pub(crate) root: Node<K, V>,
    /// Number of (filter, key) entries.
    len: usize,
    /// Number of filters with at least one entry.
    filters: usize,
}

impl<K: Eq + Hash + Clone, V> Default for TopicTrie<K, V> {
    fn default() -> Self {
        Self::new()
    }
}

impl<K: Eq + Hash + Clone, V> TopicTrie<K, V> {
    /// An empty trie; allocates nothing.
    pub fn new() -> Self {
        Self {
            root: Node::default(),
            len: 0,
            filters: 0,
        }
    }

    /// Inserts or replaces the entry of `key` under `filter`; returns the previous value.
    pub fn insert(&mut self, filter: &str, key: K, value: V) -> Option<V> {
        debug_assert!(
            crate::validate_topic_filter(filter).is_ok() && !filter.starts_with("$share/"),
            "TopicTrie::insert takes validated, non-shared filters, got {filter:?}"
        );
        let mut node = &mut self.root;
        let mut hash = false;
        for level in filter.split('/') {
            match level {
                "#" => {
                    // '#' is the last level of a valid filter; see the type docs.
                    hash = true;
                    break;
                }
                "+" => node = node.plus.get_or_insert_with(Box::default),
                _ => node = node.children.entry(Box::from(level)).or_default(),
            }
        }
        let entries = if hash {
            &mut node.hash
        } else {
            &mut node.entries
        };
        let was_empty = entries.is_empty();
        let previous = entries.insert(key, value);
        if previous.is_none() {
            self.len += 1;
            if was_empty {
                self.filters += 1;
            }
        }
        previous
    }

    /// Removes the entry of `key` under `filter` and returns its value. Nodes left
    /// without entries or children are dropped, so a trie that had every entry
    /// removed holds no memory beyond the root.
    pub fn remove(&mut self, filter: &str, key: &K) -> Option<V> {
        let mut emptied = false;
        let removed = remove_in(&mut self.root, filter.split('/'), key, &mut emptied)?;
        self.len -= 1;
        if emptied {
            self.filters -= 1;
        }
        Some(removed)
    }

    /// The value of `key` under exactly `filter` (no matching).
    pub fn get(&self, filter: &str, key: &K) -> Option<&V> {
        let mut node = &self.root;
        for level in filter.split('/') {
            node = match level {
                "#" => return node.hash.get(key),
                "+" => node.plus.as_deref()?,
                _ => node.children.get(level)?,
            };
        }
        node.entries.get(key)
    }

    /// Calls `f(key, value)` for every entry whose filter matches `topic`, with the
    /// semantics of [`matches`](fn@crate::matches): `+` matches one level (possibly
    /// empty), `a/#` matches `a` and everything below, and a topic starting with `$`
    /// is not matched by a filter starting with `+` or `#` [MQTT-4.7.2-1].
    ///
    /// Order is unspecified. Does not allocate.
    pub fn for_each_match<'a>(&'a self, topic: &str, mut f: impl FnMut(&'a K, &'a V)) {
        let root = &self.root;
        // [MQTT-4.7.2-1]: the root's `#` and `+` edges are the filters starting with a
        // wildcard; a `$` topic skips both.
        let dollar = topic.starts_with('$');
        if !dollar {
            root.hash.for_each(&mut f);
        }
        let (level, rest) = split_level(topic);
        if let Some(child) = root.children.get(level) {
            visit(child, rest, &mut f);
        }
        if !dollar && let Some(plus) = root.plus.as_deref() {
            visit(plus, rest, &mut f);
        }
    }

    /// Number of (filter, key) entries.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the trie holds no entry.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Number of distinct filters with at least one entry.
    pub fn filter_count(&self) -> usize {
        self.filters
    }
}

/// Splits off the first level: `"a/b/c"` -> `("a", Some("b/c"))`, `"a"` -> `("a", None)`,
/// `"a/"` -> `("a", Some(""))` (one more, empty, level).
#[inline]
pub(crate) fn split_level(s: &str) -> (&str, Option<&str>) {
    match s.find('/') {
        Some(i) => (&s[..i], Some(&s[i + 1..])),
        None => (s, None),
    }
}

/// Reports the entries of `node` and below that match the remaining topic levels
/// `rest` (`None`: the topic ended at `node`).
fn visit<'a, K: Eq + Hash, V, F: FnMut(&'a K, &'a V)>(
    node: &'a Node<K, V>,
    rest: Option<&str>,
    f: &mut F,
) {
    // "prefix/#" matches "prefix" itself and anything below it.
    node.hash.for_each(f);
    let Some(rest) = rest else {
        node.entries.for_each(f);
        return;
    };
    let (level, rest) = split_level(rest);
    if let Some(child) = node.children.get(level) {
        visit(child, rest, f);
    }
    if let Some(plus) = node.plus.as_deref() {
        visit(plus, rest, f);
    }
}

/// Removes `key` at the filter `levels` below `node`, pruning children left empty.
/// Sets `emptied` when the filter's entry set became empty.
fn remove_in<'a, K: Eq + Hash, V>(
    node: &mut Node<K, V>,
    mut levels: impl Iterator<Item = &'a str>,
    key: &K,
    emptied: &mut bool,
) -> Option<V> {
    let entries = match levels.next() {
        None => &mut node.entries,
        // Levels after '#' are ignored, as in `insert`.
        Some("#") => &mut node.hash,
        Some("+") => {
            let plus = node.plus.as_deref_mut()?;
            let removed = remove_in(plus, levels, key, emptied)?;
            if plus.is_empty() {
                node.plus = None;
            }
            return Some(removed);
        }
        Some(level) => {
            let child = node.children.get_mut(level)?;
            let removed = remove_in(child, levels, key, emptied)?;
            if child.is_empty() {
                node.children.remove(level);
            }
            return Some(removed);
        }
    };
    let removed = entries.remove(key)?;
    *emptied = entries.is_empty();
    Some(removed)
}

/// One level of the trie. The filter of a node is the path of edges from the root;
/// `entries` belong to that filter, `hash` to that filter followed by `/#` (or to `#`
/// at the root).
#[derive(Debug, Clone)]
pub(crate) struct Node<K, V> {
    /// Hashed on every match: foldhash, seeded per map (SipHash was ~9 % of a
    /// QoS 0 delivery's instructions). Keys are levels of subscribed filters.
    children: HashMap<Box<str>, Node<K, V>, foldhash::fast::RandomState>,
    plus: Option<Box<Node<K, V>>>,
    hash: Entries<K, V>,
    entries: Entries<K, V>,
}

impl<K, V> Default for Node<K, V> {
    fn default() -> Self {
        Self {
            children: HashMap::default(),
            plus: None,
            hash: Entries::default(),
            entries: Entries::default(),
        }
    }
}

impl<K, V> Node<K, V> {
    /// Nodes in this subtree, this one included (tests check pruning with it).
    #[cfg(test)]
    pub(crate) fn node_count(&self) -> usize {
        1 + self.children.values().map(Node::node_count).sum::<usize>()
            + self.plus.as_deref().map_or(0, Node::node_count)
    }

    fn is_empty(&self) -> bool {
        self.children.is_empty()
            && self.plus.is_none()
            && self.hash.is_empty()
            && self.entries.is_empty()
    }
}

/// Above this many entries a filter's subscribers move from a `Vec` to a `HashMap`.
///
/// Most filters have one subscriber (per-device topics), where a `Vec` needs no
/// hashing of the key and no table. Popular filters (`alerts/#` on a whole fleet)
/// need O(1) insert and remove, or re-subscribing N clients costs O(N²).
const SMALL_MAX: usize = 8;

/// The subscribers of one filter.
#[derive(Debug, Clone)]
enum Entries<K, V> {
    Small(Vec<(K, V)>),
    Large(HashMap<K, V>),
}

impl<K, V> Default for Entries<K, V> {
    fn default() -> Self {
        Entries::Small(Vec::new())
    }
}

impl<K, V> Entries<K, V> {
    fn is_empty(&self) -> bool {
        match self {
            Entries::Small(v) => v.is_empty(),
            Entries::Large(m) => m.is_empty(),
        }
    }
}

impl<K: Eq + Hash, V> Entries<K, V> {
    fn get(&self, key: &K) -> Option<&V> {
        match self {
            Entries::Small(v) => v.iter().find(|(k, _)| k == key).map(|(_, v)| v),
            Entries::Large(m) => m.get(key),
        }
    }

    fn insert(&mut self, key: K, value: V) -> Option<V> {
        match self {
            Entries::Small(v) => {
                if let Some((_, slot)) = v.iter_mut().find(|(k, _)| *k == key) {
                    return Some(std::mem::replace(slot, value));
                }
                if v.len() < SMALL_MAX {
                    v.push((key, value));
                } else {
                    let mut m: HashMap<K, V> = std::mem::take(v).into_iter().collect();
                    m.insert(key, value);
                    *self = Entries::Large(m);
                }
                None
            }
            Entries::Large(m) => m.insert(key, value),
        }
    }

    fn remove(&mut self, key: &K) -> Option<V> {
        match self {
            Entries::Small(v) => {
                let i = v.iter().position(|(k, _)| k == key)?;
                let (_, removed) = v.swap_remove(i);
                if v.is_empty() {
                    // Give the allocation back: an emptied filter is usually pruned,
                    // but a `hash` set can sit beside live children.
                    *v = Vec::new();
                }
                Some(removed)
            }
            Entries::Large(m) => {
                let removed = m.remove(key)?;
                // Hysteresis: back to a Vec only well below the threshold, so a filter
                // hovering around it does not convert on every change.
                if m.len() <= SMALL_MAX / 2 {
                    *self = Entries::Small(std::mem::take(m).into_iter().collect());
                }
                Some(removed)
            }
        }
    }

    #[inline]
    fn for_each<'a, F: FnMut(&'a K, &'a V)>(&'a self, f: &mut F) {
        match self {
            Entries::Small(v) => v.iter().for_each(|(k, v)| f(k, v)),
            Entries::Large(m) => m.iter().for_each(|(k, v)| f(k, v)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn matched(trie: &TopicTrie<u32, &'static str>, topic: &str) -> Vec<(u32, &'static str)> {
        let mut out = Vec::new();
        trie.for_each_match(topic, |k, v| out.push((*k, *v)));
        out.sort_unstable();
        out
    }

    fn trie_of(filters: &[&'static str]) -> TopicTrie<u32, &'static str> {
        let mut trie = TopicTrie::new();
        for (i, f) in filters.iter().enumerate() {
            assert_eq!(trie.insert(f, i as u32, *f), None);
        }
        trie
    }

    fn filters_matching(trie: &TopicTrie<u32, &'static str>, topic: &str) -> Vec<&'static str> {
        let mut v: Vec<_> = matched(trie, topic).into_iter().map(|(_, f)| f).collect();
        v.sort_unstable();
        v
    }

    #[test]
    fn spec_examples_4_7() {
        let trie = trie_of(&[
            "sport/tennis/player1/#",
            "sport/tennis/+",
            "sport/#",
            "sport/+",
            "+/+",
            "/+",
            "+",
            "#",
            "$SYS/#",
            "$SYS/monitor/+",
            "+/monitor/Clients",
        ]);
        assert_eq!(
            filters_matching(&trie, "sport/tennis/player1"),
            vec!["#", "sport/#", "sport/tennis/+", "sport/tennis/player1/#"]
        );
        assert_eq!(
            filters_matching(&trie, "sport/tennis/player1/score/wimbledon"),
            vec!["#", "sport/#", "sport/tennis/player1/#"]
        );
        assert_eq!(filters_matching(&trie, "sport"), vec!["#", "+", "sport/#"]);
        assert_eq!(
            filters_matching(&trie, "sport/"),
            vec!["#", "+/+", "sport/#", "sport/+"]
        );
        assert_eq!(filters_matching(&trie, "/finance"), vec!["#", "+/+", "/+"]);
        // [MQTT-4.7.2-1]
        assert_eq!(
            filters_matching(&trie, "$SYS/monitor/Clients"),
            vec!["$SYS/#", "$SYS/monitor/+"]
        );
        assert_eq!(filters_matching(&trie, "$SYS"), vec!["$SYS/#"]);
        assert_eq!(filters_matching(&trie, "$other"), Vec::<&str>::new());
    }

    #[test]
    fn plus_matches_empty_level() {
        let trie = trie_of(&["a/+/b", "+", "a/+"]);
        assert_eq!(filters_matching(&trie, "a//b"), vec!["a/+/b"]);
        assert_eq!(filters_matching(&trie, ""), vec!["+"]);
        assert_eq!(filters_matching(&trie, "a/"), vec!["a/+"]);
    }

    #[test]
    fn insert_replaces_per_key_and_counts() {
        let mut trie = TopicTrie::new();
        assert_eq!(trie.insert("a/+", 1u32, 10), None);
        assert_eq!(trie.insert("a/+", 1, 11), Some(10));
        assert_eq!(trie.insert("a/+", 2, 20), None);
        assert_eq!(trie.insert("a/#", 1, 12), None);
        assert_eq!((trie.len(), trie.filter_count()), (3, 2));
        assert_eq!(trie.get("a/+", &1), Some(&11));
        assert_eq!(trie.get("a/#", &1), Some(&12));
        assert_eq!(trie.get("a", &1), None);
        assert_eq!(trie.get("a/+", &3), None);

        assert_eq!(trie.remove("a/+", &3), None);
        assert_eq!(trie.remove("a/b", &1), None);
        assert_eq!(trie.remove("a/+", &1), Some(11));
        assert_eq!((trie.len(), trie.filter_count()), (2, 2));
        assert_eq!(trie.remove("a/+", &2), Some(20));
        assert_eq!((trie.len(), trie.filter_count()), (1, 1));
        assert_eq!(trie.remove("a/#", &1), Some(12));
        assert!(trie.is_empty());
        assert_eq!(trie.filter_count(), 0);
        assert!(trie.root.is_empty(), "everything pruned: {:?}", trie.root);
    }

    #[test]
    fn entries_switch_between_vec_and_map() {
        let mut trie = TopicTrie::new();
        let n = (SMALL_MAX * 3) as u32;
        for k in 0..n {
            assert_eq!(trie.insert("alerts/#", k, k), None);
        }
        assert_eq!(trie.insert("alerts/#", 0, 100), Some(0));
        assert_eq!(trie.insert("alerts/#", 0, 0), Some(100));
        assert_eq!((trie.len(), trie.filter_count()), (n as usize, 1));
        assert_eq!(matched_count(&trie, "alerts/x"), n as usize);
        for k in 0..n {
            assert_eq!(trie.get("alerts/#", &k), Some(&k));
            assert!(trie.remove("alerts/#", &k).is_some());
            assert_eq!(matched_count(&trie, "alerts"), (n - k - 1) as usize);
        }
        assert!(trie.is_empty() && trie.root.is_empty());
    }

    fn matched_count<K: Eq + Hash + Clone, V>(trie: &TopicTrie<K, V>, topic: &str) -> usize {
        let mut n = 0;
        trie.for_each_match(topic, |_, _| n += 1);
        n
    }

    #[test]
    fn prune_keeps_shared_prefixes() {
        let mut trie = TopicTrie::new();
        trie.insert("a/b/c", 1u8, ());
        trie.insert("a/b", 1, ());
        trie.insert("a/+/c", 1, ());
        trie.remove("a/b/c", &1);
        assert_eq!(trie.get("a/b", &1), Some(&()));
        assert_eq!(trie.get("a/+/c", &1), Some(&()));
        trie.remove("a/b", &1);
        assert!(trie.root.children.contains_key("a"));
        trie.remove("a/+/c", &1);
        assert!(trie.root.is_empty());
    }

    #[test]
    fn deepest_valid_filter_matches() {
        let filter = "a/".repeat(crate::MAX_LEVELS - 1) + "+";
        let topic = "a/".repeat(crate::MAX_LEVELS - 1) + "b";
        let mut trie = TopicTrie::new();
        trie.insert(&filter, 1u8, ());
        assert_eq!(matched_count(&trie, &topic), 1);
        // A topic far deeper than any filter stops at the trie's depth.
        let flood = "a/".repeat(30_000);
        assert_eq!(matched_count(&trie, &flood), 0);
    }
}
