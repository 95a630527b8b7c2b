//! Retained messages of one shard, looked up by topic filter on SUBSCRIBE [MQTT-3.3.1-9].

use std::collections::HashMap;
use std::fmt;

use crate::topic::{has_wildcards, level_at};
use crate::trie::{shrink_if_sparse, Edge, Trie, ROOT};

/// Retained messages keyed by topic name.
///
/// Values live in a hash map (exact filters and PUBLISH replacement: one lookup); a level trie
/// whose nodes only flag "a retained topic ends here" serves wildcard filters. The walk
/// rebuilds the topic text in a scratch buffer and fetches the value from the map, so the trie
/// stores no values and no full topic strings.
pub struct RetainedStore<V> {
    map: HashMap<Box<str>, V>,
    trie: Trie<bool>,
}

impl<V> Default for RetainedStore<V> {
    fn default() -> Self {
        Self::new()
    }
}

impl<V> fmt::Debug for RetainedStore<V> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RetainedStore")
            .field("len", &self.map.len())
            .field("trie_nodes", &self.trie.node_count())
            .finish_non_exhaustive()
    }
}

/// Retained topics are names: '+' is never a wildcard here, so every level is a literal edge.
fn edges(topic: &str) -> impl Iterator<Item = Edge<'_>> {
    topic.split('/').map(Edge::Lit)
}

/// `#` state: every node below matches.
const SUBTREE: usize = usize::MAX;

/// A pending trie visit: node, filter offset (or `SUBTREE`), and how to rebuild its topic text.
struct Frame<'a> {
    id: u32,
    foff: usize,
    parent_len: usize,
    label: &'a str,
    /// Parent is not the root, so a '/' precedes `label`.
    sep: bool,
}

impl<V> RetainedStore<V> {
    /// An empty store.
    pub fn new() -> Self {
        RetainedStore {
            map: HashMap::new(),
            trie: Trie::default(),
        }
    }

    /// Stores `value` as the retained message of `topic` (a valid topic name), replacing and
    /// returning any previous one [MQTT-3.3.1-5]. (A zero-length payload means delete: the
    /// broker calls [`remove`](Self::remove) instead [MQTT-3.3.1-6].)
    pub fn insert(&mut self, topic: &str, value: V) -> Option<V> {
        if let Some(v) = self.map.get_mut(topic) {
            return Some(std::mem::replace(v, value));
        }
        self.map.insert(topic.into(), value);
        let id = self.trie.find_or_create(edges(topic));
        self.trie.node_mut(id).data = true;
        None
    }

    /// Deletes the retained message of `topic`.
    pub fn remove(&mut self, topic: &str) -> Option<V> {
        let v = self.map.remove(topic)?;
        shrink_if_sparse(&mut self.map);
        self.trie
            .remove_with(edges(topic), |t| Some(std::mem::take(t)));
        Some(v)
    }

    /// The retained message of exactly `topic`.
    pub fn get(&self, topic: &str) -> Option<&V> {
        self.map.get(topic)
    }

    /// Every retained message, `$` topics included, in no particular order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &V)> {
        self.map.iter().map(|(k, v)| (k.as_ref(), v))
    }

    /// Number of retained messages.
    pub fn len(&self) -> usize {
        self.map.len()
    }

    /// True if nothing is retained.
    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    /// Live trie nodes (excluding the root); 0 when empty. For leak tests and metrics.
    pub fn trie_node_count(&self) -> usize {
        self.trie.node_count()
    }

    /// Calls `f(topic, &value)` for every retained message whose topic matches the (valid)
    /// `filter` [MQTT-3.3.1-9], honouring the '$' rule [MQTT-4.7.2-1]. Order is unspecified.
    ///
    /// Exact filter: one hash lookup. Wildcards: iterative trie walk (explicit stack), so
    /// `#` over a 100,000-level topic cannot overflow the call stack.
    pub fn for_each_match(&self, filter: &str, mut f: impl FnMut(&str, &V)) {
        if !has_wildcards(filter) {
            if let Some((k, v)) = self.map.get_key_value(filter) {
                f(k, v);
            }
            return;
        }
        if self.map.is_empty() {
            return;
        }
        let mut path = String::new();
        let mut stack = vec![Frame {
            id: ROOT,
            foff: 0,
            parent_len: 0,
            label: "",
            sep: false,
        }];
        while let Some(fr) = stack.pop() {
            // DFS order keeps the parent's text a prefix of `path` (see `Frame`).
            path.truncate(fr.parent_len);
            if fr.sep {
                path.push('/');
            }
            path.push_str(fr.label);
            let node = self.trie.node(fr.id);
            let is_root = fr.id == ROOT;
            let mut foff = fr.foff;
            let mut level = "";
            let mut after = 0;
            if foff != SUBTREE {
                if foff > filter.len() {
                    if node.data {
                        self.emit(&path, &mut f);
                    }
                    continue;
                }
                (level, after) = level_at(filter, foff);
                if level == "#" {
                    foff = SUBTREE;
                }
            }
            let plen = path.len();
            if foff == SUBTREE {
                // `a/#` matches `a` itself and everything below [MQTT-4.7.1-1].
                if node.data {
                    self.emit(&path, &mut f);
                }
                node.children.for_each(|label, id| {
                    if !(is_root && label.starts_with('$')) {
                        stack.push(Frame {
                            id,
                            foff: SUBTREE,
                            parent_len: plen,
                            label,
                            sep: !is_root,
                        });
                    }
                });
            } else if level == "+" {
                node.children.for_each(|label, id| {
                    // [MQTT-4.7.2-1]: no '$' topic under a leading wildcard.
                    if !(is_root && label.starts_with('$')) {
                        stack.push(Frame {
                            id,
                            foff: after,
                            parent_len: plen,
                            label,
                            sep: !is_root,
                        });
                    }
                });
            } else if let Some(id) = node.children.get(level) {
                stack.push(Frame {
                    id,
                    foff: after,
                    parent_len: plen,
                    label: level,
                    sep: !is_root,
                });
            }
        }
    }

    fn emit(&self, topic: &str, f: &mut impl FnMut(&str, &V)) {
        if let Some((k, v)) = self.map.get_key_value(topic) {
            f(k, v);
        }
    }

    /// Keeps only the messages for which `f` returns true (message-expiry sweeps), pruning the
    /// trie for the ones dropped.
    pub fn retain(&mut self, mut f: impl FnMut(&str, &mut V) -> bool) {
        let trie = &mut self.trie;
        self.map.retain(|k, v| {
            let keep = f(k, v);
            if !keep {
                trie.remove_with(edges(k), |t| Some(std::mem::take(t)));
            }
            keep
        });
        shrink_if_sparse(&mut self.map);
    }
}
