//! Cross-shard routing: which shards want a topic, and when a shard must announce a change.

use std::collections::HashMap;
use std::fmt;

use crate::trie::shrink_if_sparse;
use crate::SubscriptionTree;

/// Largest number of shards a [`ShardSet`] can hold.
pub const MAX_SHARDS: usize = 256;

/// A set of shard ids `0..256` as a fixed 32-byte bitset: unions on the publish path are four
/// ORs, and it is `Copy` so it can travel inside a cross-shard message.
#[derive(Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct ShardSet([u64; 4]);

impl ShardSet {
    /// The empty set.
    pub const fn new() -> Self {
        ShardSet([0; 4])
    }

    #[inline]
    fn slot(shard: u16) -> (usize, u64) {
        assert!(
            (shard as usize) < MAX_SHARDS,
            "shard id {shard} >= {MAX_SHARDS}"
        );
        ((shard / 64) as usize, 1u64 << (shard % 64))
    }

    /// Adds `shard`; returns true if it was absent. Panics if `shard >= 256`.
    #[inline]
    pub fn insert(&mut self, shard: u16) -> bool {
        let (w, b) = Self::slot(shard);
        let absent = self.0[w] & b == 0;
        self.0[w] |= b;
        absent
    }

    /// Removes `shard`; returns true if it was present. Panics if `shard >= 256`.
    #[inline]
    pub fn remove(&mut self, shard: u16) -> bool {
        let (w, b) = Self::slot(shard);
        let present = self.0[w] & b != 0;
        self.0[w] &= !b;
        present
    }

    /// True if `shard` is in the set (false for ids >= 256).
    #[inline]
    pub fn contains(&self, shard: u16) -> bool {
        (shard as usize) < MAX_SHARDS && self.0[(shard / 64) as usize] & (1 << (shard % 64)) != 0
    }

    /// True if no shard is in the set.
    #[inline]
    pub fn is_empty(&self) -> bool {
        self.0 == [0; 4]
    }

    /// Number of shards in the set.
    #[inline]
    pub fn len(&self) -> usize {
        self.0.iter().map(|w| w.count_ones() as usize).sum()
    }

    /// Adds every shard of `other`.
    #[inline]
    pub fn union_with(&mut self, other: &ShardSet) {
        for (a, b) in self.0.iter_mut().zip(other.0) {
            *a |= b;
        }
    }

    /// Shard ids in ascending order.
    pub fn iter(&self) -> ShardSetIter {
        ShardSetIter {
            words: self.0,
            word: 0,
        }
    }
}

impl fmt::Debug for ShardSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_set().entries(self.iter()).finish()
    }
}

impl FromIterator<u16> for ShardSet {
    fn from_iter<I: IntoIterator<Item = u16>>(iter: I) -> Self {
        let mut s = ShardSet::new();
        iter.into_iter().for_each(|x| {
            s.insert(x);
        });
        s
    }
}

impl IntoIterator for ShardSet {
    type Item = u16;
    type IntoIter = ShardSetIter;
    fn into_iter(self) -> ShardSetIter {
        self.iter()
    }
}

/// Iterator over a [`ShardSet`], ascending.
#[derive(Clone, Debug)]
pub struct ShardSetIter {
    words: [u64; 4],
    word: usize,
}

impl Iterator for ShardSetIter {
    type Item = u16;

    fn next(&mut self) -> Option<u16> {
        while self.word < 4 {
            let w = &mut self.words[self.word];
            if *w != 0 {
                let bit = w.trailing_zeros();
                *w &= *w - 1;
                return Some((self.word * 64) as u16 + bit as u16);
            }
            self.word += 1;
        }
        None
    }
}

/// Replicated on every shard: for each filter, the shards with at least one local subscriber,
/// so a PUBLISH is forwarded only to shards that want it.
///
/// Shards announce only 0->1 and 1->0 transitions of their own count per filter (see
/// [`LocalInterest`]). Shared subscriptions are registered under their inner filter; the broker
/// handles groups. Built on [`SubscriptionTree<u16, ()>`], so a filter wanted by one shard costs
/// the same as one exact subscription.
#[derive(Default, Debug)]
pub struct RouteTable {
    tree: SubscriptionTree<u16, ()>,
}

impl RouteTable {
    /// An empty table.
    pub fn new() -> Self {
        RouteTable {
            tree: SubscriptionTree::new(),
        }
    }

    /// Records that `shard` has subscribers for `filter`. Idempotent. Panics if `shard >= 256`.
    pub fn add(&mut self, filter: &str, shard: u16) {
        assert!(
            (shard as usize) < MAX_SHARDS,
            "shard id {shard} >= {MAX_SHARDS}"
        );
        self.tree.insert(filter, shard, ());
    }

    /// Records that `shard` no longer has subscribers for `filter`. Idempotent.
    pub fn remove(&mut self, filter: &str, shard: u16) {
        self.tree.remove(filter, shard);
    }

    /// Union of the shards having a filter that matches the topic name `topic`.
    pub fn shards_for(&self, topic: &str) -> ShardSet {
        let mut set = ShardSet::new();
        self.tree.for_each_match(topic, |shard, _| {
            set.insert(shard);
        });
        set
    }

    /// Shards registered for exactly `filter` (no matching).
    pub fn shards_of(&self, filter: &str) -> ShardSet {
        self.tree.subscribers(filter).map(|(s, _)| s).collect()
    }

    /// Number of distinct filters with at least one shard.
    pub fn filter_count(&self) -> usize {
        self.tree.filter_count()
    }

    /// Total (filter, shard) pairs.
    pub fn len(&self) -> usize {
        self.tree.len()
    }

    /// True if no shard wants anything.
    pub fn is_empty(&self) -> bool {
        self.tree.is_empty()
    }

    /// Live wildcard-trie nodes; 0 when no wildcard filter is registered.
    pub fn trie_node_count(&self) -> usize {
        self.tree.trie_node_count()
    }
}

/// Per-shard reference count of local subscriptions per filter: tells the shard when to
/// announce to the other shards' [`RouteTable`]s (only on 0->1 and 1->0, so a million clients
/// subscribing to the same filter cause one announcement, not a million).
#[derive(Default, Debug)]
pub struct LocalInterest {
    counts: HashMap<Box<str>, u32>,
}

impl LocalInterest {
    /// Empty: no filter is wanted.
    pub fn new() -> Self {
        Self::default()
    }

    /// One more local subscription to `filter`; true on 0->1 (announce "add").
    pub fn incr(&mut self, filter: &str) -> bool {
        if let Some(c) = self.counts.get_mut(filter) {
            *c = c.checked_add(1).expect("LocalInterest count overflow");
            return false;
        }
        self.counts.insert(filter.into(), 1);
        true
    }

    /// One fewer local subscription to `filter`; true on 1->0 (announce "remove"). A `decr`
    /// without a matching `incr` is ignored and returns false.
    pub fn decr(&mut self, filter: &str) -> bool {
        let Some(c) = self.counts.get_mut(filter) else {
            return false;
        };
        *c -= 1;
        if *c == 0 {
            self.counts.remove(filter);
            shrink_if_sparse(&mut self.counts);
            true
        } else {
            false
        }
    }

    /// Local subscription count of `filter`.
    pub fn count(&self, filter: &str) -> u32 {
        self.counts.get(filter).copied().unwrap_or(0)
    }

    /// Filters with a non-zero count, in unspecified order (e.g. to announce everything to a
    /// restarted shard).
    pub fn filters(&self) -> impl Iterator<Item = &str> {
        self.counts.keys().map(|k| &**k)
    }

    /// Number of filters with a non-zero count.
    pub fn len(&self) -> usize {
        self.counts.len()
    }

    /// True if no filter is wanted.
    pub fn is_empty(&self) -> bool {
        self.counts.is_empty()
    }
}
