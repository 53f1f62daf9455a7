//! The retained-message index: topic name -> value, queried by topic filter.
//!
//! The reverse of [`TopicTrie`](crate::TopicTrie): here the stored keys are concrete
//! topic names and the query carries the wildcards. A SUBSCRIBE walks the tree along
//! the filter: a literal level follows one edge, `+` fans out over the children of one
//! node, and only `#` visits a whole subtree. So `sensors/42/+` costs the children of
//! `sensors/42`, not a scan of every retained topic.
//!
//! The callback gets the topic as `&str`; the walk rebuilds it in one `String` buffer
//! per call, pushing and truncating a level at a time (so the only allocation is that
//! buffer's growth). Recursion depth is bounded by the tree depth, itself bounded by
//! [`MAX_LEVELS`](crate::MAX_LEVELS) because only validated names are inserted.
//!
//! # Layout
//! - [`RetainedTree`]: the public index.
//! - `Node`: children by level and the value of the topic ending here.
//! - `walk` / `visit_all` / `retain_in`: the recursive traversals.

use std::collections::HashMap;

use crate::trie::split_level;

/// Topic name -> value, queried by filter. `V` is typically the retained PUBLISH
/// (payload, properties, expiry instant).
///
/// Topics must have passed [`validate_topic_name`](crate::validate_topic_name). The
/// tree stays memory-safe on any input, but a name containing `+` or `#` has no
/// defined meaning.
#[derive(Debug, Clone)]
pub struct RetainedTree<V> {
    pub(crate) root: Node<V>,
    len: usize,
}

impl<V> Default for RetainedTree<V> {
    fn default() -> Self {
        Self::new()
    }
}

impl<V> RetainedTree<V> {
    /// An empty tree; allocates nothing.
    pub fn new() -> Self {
        Self {
            root: Node::default(),
            len: 0,
        }
    }

    /// Stores `value` as the retained message of `topic`, returning the one it
    /// replaces [MQTT-3.3.1-5]. (Deleting on an empty payload [MQTT-3.3.1-6] is the
    /// caller's decision: call [`remove`](Self::remove).)
    pub fn insert(&mut self, topic: &str, value: V) -> Option<V> {
        debug_assert!(
            crate::validate_topic_name(topic).is_ok(),
            "RetainedTree::insert takes validated topic names, got {topic:?}"
        );
        let mut node = &mut self.root;
        for level in topic.split('/') {
            node = node.children.entry(Box::from(level)).or_default();
        }
        let previous = node.value.replace(value);
        if previous.is_none() {
            self.len += 1;
        }
        previous
    }

    /// Removes the retained message of `topic`, dropping the nodes left empty.
    pub fn remove(&mut self, topic: &str) -> Option<V> {
        let removed = remove_in(&mut self.root, topic.split('/'))?;
        self.len -= 1;
        Some(removed)
    }

    /// The retained message of exactly `topic`.
    pub fn get(&self, topic: &str) -> Option<&V> {
        let mut node = &self.root;
        for level in topic.split('/') {
            node = node.children.get(level)?;
        }
        node.value.as_ref()
    }

    /// Calls `f(topic, value)` for every stored topic that `filter` matches, with the
    /// semantics of [`matches`](fn@crate::matches): `+` matches one level (possibly
    /// empty), `a/#` matches `a` and everything below, and a filter starting with `+`
    /// or `#` does not match topics starting with `$` [MQTT-4.7.2-1].
    ///
    /// `filter` is an ordinary filter, not `$share/...`. Order is unspecified.
    pub fn for_each_match(&self, filter: &str, mut f: impl FnMut(&str, &V)) {
        let mut buf = String::new();
        walk(&self.root, Some(filter), true, &mut buf, &mut f);
    }

    /// Keeps only the messages for which `f(topic, &mut value)` returns `true`, and
    /// prunes the nodes left empty. Visits every message (used to drop expired ones;
    /// `f` may also update a value in place).
    pub fn retain(&mut self, mut f: impl FnMut(&str, &mut V) -> bool) {
        let mut buf = String::new();
        let mut removed = 0;
        retain_in(&mut self.root, true, &mut buf, &mut f, &mut removed);
        self.len -= removed;
    }

    /// Number of retained messages.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether no message is retained.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

/// One level of the tree. The topic of a node is the path of edges from the root; the
/// root itself stands for no topic (every topic has at least one level) and never
/// holds a value.
#[derive(Debug, Clone)]
pub(crate) struct Node<V> {
    children: HashMap<Box<str>, Node<V>>,
    value: Option<V>,
}

impl<V> Default for Node<V> {
    fn default() -> Self {
        Self {
            children: HashMap::new(),
            value: None,
        }
    }
}

impl<V> Node<V> {
    /// Nodes in this subtree, this one included (tests check pruning with it).
    #[cfg(test)]
    pub(crate) fn node_count(&self) -> usize {
        1 + self.children.values().map(Node::node_count).sum::<usize>()
    }

    fn is_empty(&self) -> bool {
        self.value.is_none() && self.children.is_empty()
    }
}

/// Appends level `level` to the topic in `buf`, returning the length to truncate
/// back to.
#[inline]
fn push_level(buf: &mut String, at_root: bool, level: &str) -> usize {
    let mark = buf.len();
    if !at_root {
        buf.push('/');
    }
    buf.push_str(level);
    mark
}

/// Whether a root child is hidden from a filter starting with a wildcard
/// [MQTT-4.7.2-1].
#[inline]
fn hidden_from_wildcard(at_root: bool, level: &str) -> bool {
    at_root && level.starts_with('$')
}

/// Reports the values at and below `node` matched by the remaining filter levels
/// `rest` (`None`: the filter ended at `node`). `buf` holds the topic of `node`.
fn walk<V, F: FnMut(&str, &V)>(
    node: &Node<V>,
    rest: Option<&str>,
    at_root: bool,
    buf: &mut String,
    f: &mut F,
) {
    let Some(rest) = rest else {
        if let Some(value) = &node.value {
            f(buf, value);
        }
        return;
    };
    let (level, rest) = split_level(rest);
    match level {
        "#" => {
            // "a/#" matches "a" itself [§4.7.1.2]; the root has no value. Any levels
            // after '#' (an invalid filter) are ignored, as `matches` does.
            if let Some(value) = &node.value {
                f(buf, value);
            }
            for (level, child) in &node.children {
                if hidden_from_wildcard(at_root, level) {
                    continue;
                }
                let mark = push_level(buf, at_root, level);
                visit_all(child, buf, f);
                buf.truncate(mark);
            }
        }
        "+" => {
            for (level, child) in &node.children {
                if hidden_from_wildcard(at_root, level) {
                    continue;
                }
                let mark = push_level(buf, at_root, level);
                walk(child, rest, false, buf, f);
                buf.truncate(mark);
            }
        }
        literal => {
            if let Some(child) = node.children.get(literal) {
                let mark = push_level(buf, at_root, literal);
                walk(child, rest, false, buf, f);
                buf.truncate(mark);
            }
        }
    }
}

/// Reports every value at and below `node` (never called on the root).
fn visit_all<V, F: FnMut(&str, &V)>(node: &Node<V>, buf: &mut String, f: &mut F) {
    if let Some(value) = &node.value {
        f(buf, value);
    }
    for (level, child) in &node.children {
        let mark = push_level(buf, false, level);
        visit_all(child, buf, f);
        buf.truncate(mark);
    }
}

fn remove_in<'a, V>(node: &mut Node<V>, mut levels: impl Iterator<Item = &'a str>) -> Option<V> {
    let Some(level) = levels.next() else {
        return node.value.take();
    };
    let child = node.children.get_mut(level)?;
    let removed = remove_in(child, levels)?;
    if child.is_empty() {
        node.children.remove(level);
    }
    Some(removed)
}

fn retain_in<V, F: FnMut(&str, &mut V) -> bool>(
    node: &mut Node<V>,
    at_root: bool,
    buf: &mut String,
    f: &mut F,
    removed: &mut usize,
) {
    if let Some(value) = &mut node.value
        && !f(buf, value)
    {
        node.value = None;
        *removed += 1;
    }
    node.children.retain(|level, child| {
        let mark = push_level(buf, at_root, level);
        retain_in(child, false, buf, f, removed);
        buf.truncate(mark);
        !child.is_empty()
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tree_of(topics: &[&'static str]) -> RetainedTree<&'static str> {
        let mut tree = RetainedTree::new();
        for t in topics {
            assert_eq!(tree.insert(t, *t), None);
        }
        tree
    }

    fn matched(tree: &RetainedTree<&'static str>, filter: &str) -> Vec<String> {
        let mut out = Vec::new();
        tree.for_each_match(filter, |topic, value| {
            assert_eq!(topic, *value, "reconstructed topic");
            out.push(topic.to_owned());
        });
        out.sort_unstable();
        out
    }

    const TOPICS: &[&str] = &[
        "sport",
        "sport/",
        "sport/tennis/player1",
        "sport/tennis/player1/ranking",
        "sport/tennis/player1/score/wimbledon",
        "sport/tennis/player2",
        "/finance",
        "finance",
        "a//b",
        "$SYS/monitor/Clients",
        "$SYS",
    ];

    #[test]
    fn spec_examples_4_7() {
        let tree = tree_of(TOPICS);
        assert_eq!(
            matched(&tree, "sport/tennis/player1/#"),
            [
                "sport/tennis/player1",
                "sport/tennis/player1/ranking",
                "sport/tennis/player1/score/wimbledon"
            ]
        );
        assert_eq!(matched(&tree, "sport/#").len(), 6);
        assert_eq!(
            matched(&tree, "sport/tennis/+"),
            ["sport/tennis/player1", "sport/tennis/player2"]
        );
        assert_eq!(matched(&tree, "sport/+"), ["sport/"]);
        assert_eq!(matched(&tree, "+/+"), ["/finance", "sport/"]);
        assert_eq!(matched(&tree, "/+"), ["/finance"]);
        assert_eq!(matched(&tree, "+"), ["finance", "sport"]);
        assert_eq!(matched(&tree, "a/+/b"), ["a//b"]);
        // [MQTT-4.7.2-1]
        assert_eq!(matched(&tree, "#").len(), TOPICS.len() - 2);
        assert_eq!(matched(&tree, "+/monitor/Clients"), Vec::<String>::new());
        assert_eq!(matched(&tree, "$SYS/#"), ["$SYS", "$SYS/monitor/Clients"]);
        assert_eq!(matched(&tree, "$SYS/monitor/+"), ["$SYS/monitor/Clients"]);
        assert_eq!(matched(&tree, "finance"), ["finance"]);
        assert_eq!(matched(&tree, "nothing/#"), Vec::<String>::new());
    }

    #[test]
    fn insert_replace_remove_prune() {
        let mut tree = RetainedTree::new();
        assert_eq!(tree.insert("a/b", 1), None);
        assert_eq!(tree.insert("a/b", 2), Some(1));
        assert_eq!(tree.insert("a", 3), None);
        assert_eq!(tree.len(), 2);
        assert_eq!(tree.get("a/b"), Some(&2));
        assert_eq!(tree.get("a/b/c"), None);
        assert_eq!(tree.get("a/"), None);
        assert_eq!(tree.remove("a/b/c"), None);
        assert_eq!(tree.remove("a/b"), Some(2));
        assert_eq!(tree.remove("a/b"), None);
        assert_eq!(tree.len(), 1);
        assert_eq!(tree.remove("a"), Some(3));
        assert!(tree.is_empty());
        assert!(tree.root.is_empty());
    }

    #[test]
    fn retain_drops_and_prunes() {
        let mut tree = RetainedTree::new();
        for (i, t) in TOPICS.iter().enumerate() {
            tree.insert(t, i);
        }
        let mut seen = Vec::new();
        tree.retain(|topic, v| {
            seen.push(topic.to_owned());
            *v += 100;
            !topic.starts_with("sport")
        });
        seen.sort_unstable();
        let mut all: Vec<String> = TOPICS.iter().map(|t| t.to_string()).collect();
        all.sort_unstable();
        assert_eq!(seen, all, "retain visits every topic with its full name");
        assert_eq!(tree.len(), TOPICS.len() - 6);
        assert_eq!(tree.get("finance"), Some(&107));
        assert!(!tree.root.children.contains_key("sport"), "pruned");
        tree.retain(|_, _| false);
        assert!(tree.is_empty() && tree.root.is_empty());
    }
}
