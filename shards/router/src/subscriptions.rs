//! Subscription index of one shard: exact filters in a hash map, wildcard filters in a trie.

use compact_str::CompactString;
use std::collections::HashMap;
use std::fmt;
use std::hash::Hash;

use crate::entries::{Entries, Subscribers};
use crate::topic::{has_wildcards, level_at};
use crate::trie::{shrink_if_sparse, Edge, Payload, Trie, NIL, ROOT};

/// Subscriptions of a wildcard-trie node.
struct WildSubs<K, V> {
    /// Filters that end at this node (`a/+`).
    here: Entries<K, V>,
    /// Filters that are this node's path plus `/#` (`a/+/#`), or `#` at the root.
    hash: Entries<K, V>,
}

impl<K, V> Default for WildSubs<K, V> {
    fn default() -> Self {
        WildSubs {
            here: Entries::default(),
            hash: Entries::default(),
        }
    }
}

impl<K: Copy + Eq + Hash, V> Payload for WildSubs<K, V> {
    fn is_empty(&self) -> bool {
        self.here.is_empty() && self.hash.is_empty()
    }
}

/// Subscriptions of one shard: topic filter -> (subscriber key `K` -> value `V`).
///
/// Filters are assumed validated ([`validate_topic_filter`](crate::validate_topic_filter)) and
/// topics validated ([`validate_topic_name`](crate::validate_topic_name)); invalid input gives
/// unspecified matches but never panics or corrupts the structure.
///
/// Cost of a publish: one SipHash lookup of the whole topic in the exact map, plus, only if any
/// wildcard filter exists, a trie walk visiting each matching trie node once.
pub struct SubscriptionTree<K, V> {
    /// Keys inline up to 24 bytes: most device filters cost no allocation of their own.
    exact: HashMap<CompactString, Entries<K, V>>,
    wild: Trie<WildSubs<K, V>>,
    /// Distinct wildcard filters with at least one subscriber.
    wild_filters: usize,
    /// Total (filter, key) pairs.
    subs: usize,
}

impl<K: Copy + Eq + Hash, V> Default for SubscriptionTree<K, V> {
    fn default() -> Self {
        Self::new()
    }
}

impl<K, V> fmt::Debug for SubscriptionTree<K, V> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SubscriptionTree")
            .field("exact_filters", &self.exact.len())
            .field("wildcard_filters", &self.wild_filters)
            .field("subscriptions", &self.subs)
            .finish_non_exhaustive()
    }
}

/// Splits a wildcard filter into the trie path and whether it ends in `#`.
/// `#` -> (no edges, true); `a/+/#` -> (`a`,`+`; true); `a/+` -> (`a`,`+`; false).
fn wild_path(filter: &str) -> (impl Iterator<Item = Edge<'_>>, bool) {
    let (prefix, hash) = if filter == "#" {
        (None, true)
    } else if let Some(p) = filter.strip_suffix("/#") {
        (Some(p), true)
    } else {
        (Some(filter), false)
    };
    let edges = prefix.into_iter().flat_map(|p| p.split('/')).map(|l| {
        if l == "+" {
            Edge::Plus
        } else {
            Edge::Lit(l)
        }
    });
    (edges, hash)
}

impl<K: Copy + Eq + Hash, V> SubscriptionTree<K, V> {
    /// An empty tree; allocates only the trie root.
    pub fn new() -> Self {
        SubscriptionTree {
            exact: HashMap::new(),
            wild: Trie::default(),
            wild_filters: 0,
            subs: 0,
        }
    }

    /// Inserts or replaces `key`'s subscription to `filter`; returns the old value if replaced.
    pub fn insert(&mut self, filter: &str, key: K, value: V) -> Option<V> {
        let old = if !has_wildcards(filter) {
            match self.exact.get_mut(filter) {
                Some(e) => e.insert(key, value),
                None => {
                    self.exact.insert(filter.into(), Entries::One(key, value));
                    None
                }
            }
        } else {
            let (edges, hash) = wild_path(filter);
            let id = self.wild.find_or_create(edges);
            let data = &mut self.wild.node_mut(id).data;
            let e = if hash { &mut data.hash } else { &mut data.here };
            if e.is_empty() {
                self.wild_filters += 1;
            }
            e.insert(key, value)
        };
        if old.is_none() {
            self.subs += 1;
        }
        old
    }

    /// Removes `key`'s subscription to `filter`; prunes trie nodes left empty.
    pub fn remove(&mut self, filter: &str, key: K) -> Option<V> {
        let old = if !has_wildcards(filter) {
            let e = self.exact.get_mut(filter)?;
            let old = e.remove(key)?;
            if e.is_empty() {
                self.exact.remove(filter);
                shrink_if_sparse(&mut self.exact);
            }
            old
        } else {
            let (edges, hash) = wild_path(filter);
            let mut emptied = false;
            let old = self.wild.remove_with(edges, |data| {
                let e = if hash { &mut data.hash } else { &mut data.here };
                let old = e.remove(key)?;
                emptied = e.is_empty();
                Some(old)
            })?;
            if emptied {
                self.wild_filters -= 1;
            }
            old
        };
        self.subs -= 1;
        Some(old)
    }

    fn entries(&self, filter: &str) -> Option<&Entries<K, V>> {
        if !has_wildcards(filter) {
            self.exact.get(filter)
        } else {
            let (edges, hash) = wild_path(filter);
            let data = &self.wild.node(self.wild.find(edges)?).data;
            Some(if hash { &data.hash } else { &data.here })
        }
    }

    /// `key`'s value for exactly `filter` (no matching).
    pub fn get(&self, filter: &str, key: K) -> Option<&V> {
        self.entries(filter)?.get(key)
    }

    /// Subscribers of exactly `filter` (no matching): for shared-subscription groups and for
    /// deciding route-table announcements.
    pub fn subscribers(&self, filter: &str) -> Subscribers<'_, K, V> {
        self.entries(filter)
            .map_or_else(Subscribers::empty, Entries::iter)
    }

    /// Calls `f(key, &value)` for every subscription whose filter matches the topic name
    /// `topic`, once per (filter, key) pair: a client with two overlapping filters is visited
    /// twice and the broker merges (MQTT 5 section 4.7.1 leaves this to the server).
    ///
    /// Iterative with an explicit stack that only grows where a node has both a literal and a
    /// '+' child, so the common publish allocates nothing and deep topics cannot overflow the
    /// call stack.
    pub fn for_each_match(&self, topic: &str, mut f: impl FnMut(K, &V)) {
        if let Some(e) = self.exact.get(topic) {
            e.for_each(&mut f);
        }
        if self.wild.is_empty() {
            return;
        }
        // [MQTT-4.7.2-1]: '+' or '#' as the first filter level never matches a '$' topic.
        let dollar = topic.starts_with('$');
        let mut stack: Vec<(u32, usize)> = Vec::new();
        let mut next = Some((ROOT, 0usize));
        while let Some((id, off)) = next.take().or_else(|| stack.pop()) {
            let node = self.wild.node(id);
            let guarded = dollar && id == ROOT;
            if !guarded {
                // `prefix/#` matches the prefix itself and everything below [MQTT-4.7.1-1].
                node.data.hash.for_each(&mut f);
            }
            if off > topic.len() {
                node.data.here.for_each(&mut f);
                continue;
            }
            let (level, after) = level_at(topic, off);
            if let Some(c) = node.children.get(level) {
                next = Some((c, after));
            }
            if node.plus != NIL && !guarded {
                if next.is_none() {
                    next = Some((node.plus, after));
                } else {
                    stack.push((node.plus, after));
                }
            }
        }
    }

    /// Number of distinct filters with at least one subscriber.
    pub fn filter_count(&self) -> usize {
        self.exact.len() + self.wild_filters
    }

    /// Total number of (filter, key) subscriptions.
    pub fn len(&self) -> usize {
        self.subs
    }

    /// True if there are no subscriptions.
    pub fn is_empty(&self) -> bool {
        self.subs == 0
    }

    /// Live wildcard-trie nodes (excluding the root); 0 once every wildcard filter is removed.
    /// Exposed for leak tests and metrics.
    pub fn trie_node_count(&self) -> usize {
        self.wild.node_count()
    }
}
