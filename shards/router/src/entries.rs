//! Subscriber list of one filter, sized for the common case of a single subscriber.

use std::collections::{hash_map, HashMap};
use std::hash::Hash;
use std::{iter, mem, slice};

/// Above this many subscribers a filter switches to a hash map, so that subscribing N clients to
/// one popular filter is O(N), not O(N^2).
const MANY_MAX: usize = 16;
/// Back to a vector when a hash map shrinks to this size (hysteresis against flapping).
const MANY_BACK: usize = MANY_MAX / 2;

/// `One` is inline (no heap allocation) because almost every exact filter (`devices/123/cmd`) has
/// exactly one subscriber. `Many(vec![])` is the empty state, so trie nodes need no `Option`.
pub(crate) enum Entries<K, V> {
    One(K, V),
    Many(Vec<(K, V)>),
    // Boxed on purpose: keeps `Entries` at 24 bytes (a bare `HashMap` is 48).
    #[allow(clippy::box_collection)]
    Large(Box<HashMap<K, V>>),
}

impl<K, V> Default for Entries<K, V> {
    fn default() -> Self {
        Entries::Many(Vec::new())
    }
}

impl<K: Copy + Eq + Hash, V> Entries<K, V> {
    pub(crate) fn is_empty(&self) -> bool {
        match self {
            Entries::One(..) => false,
            Entries::Many(v) => v.is_empty(),
            Entries::Large(m) => m.is_empty(),
        }
    }

    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        match self {
            Entries::One(..) => 1,
            Entries::Many(v) => v.len(),
            Entries::Large(m) => m.len(),
        }
    }

    pub(crate) fn get(&self, key: K) -> Option<&V> {
        match self {
            Entries::One(k, v) => (*k == key).then_some(v),
            Entries::Many(vec) => vec.iter().find(|(k, _)| *k == key).map(|(_, v)| v),
            Entries::Large(m) => m.get(&key),
        }
    }

    /// Inserts or replaces; returns the replaced value.
    pub(crate) fn insert(&mut self, key: K, value: V) -> Option<V> {
        match self {
            Entries::One(k, v) if *k == key => return Some(mem::replace(v, value)),
            Entries::One(..) => {
                if let Entries::One(k0, v0) = mem::take(self) {
                    *self = Entries::Many(vec![(k0, v0), (key, value)]);
                }
            }
            Entries::Many(vec) => {
                if let Some((_, v)) = vec.iter_mut().find(|(k, _)| *k == key) {
                    return Some(mem::replace(v, value));
                }
                if vec.is_empty() {
                    *self = Entries::One(key, value);
                } else if vec.len() < MANY_MAX {
                    vec.push((key, value));
                } else {
                    let mut m: HashMap<K, V> = mem::take(vec).into_iter().collect();
                    m.insert(key, value);
                    *self = Entries::Large(Box::new(m));
                }
            }
            Entries::Large(m) => return m.insert(key, value),
        }
        None
    }

    /// Removes `key`; leaves `self` empty (see [`Entries::is_empty`]) when it was the last one.
    pub(crate) fn remove(&mut self, key: K) -> Option<V> {
        match self {
            Entries::One(k, _) if *k == key => match mem::take(self) {
                Entries::One(_, v) => Some(v),
                _ => unreachable!(),
            },
            Entries::One(..) => None,
            Entries::Many(vec) => {
                let i = vec.iter().position(|(k, _)| *k == key)?;
                let (_, v) = vec.swap_remove(i);
                if vec.len() == 1 {
                    let (k, v1) = vec.pop().expect("len 1");
                    *self = Entries::One(k, v1);
                }
                Some(v)
            }
            Entries::Large(m) => {
                let v = m.remove(&key)?;
                if m.len() <= MANY_BACK {
                    let vec: Vec<(K, V)> = mem::take(&mut **m).into_iter().collect();
                    *self = Entries::Many(vec);
                }
                Some(v)
            }
        }
    }

    #[inline]
    pub(crate) fn for_each(&self, f: &mut impl FnMut(K, &V)) {
        match self {
            Entries::One(k, v) => f(*k, v),
            Entries::Many(vec) => vec.iter().for_each(|(k, v)| f(*k, v)),
            Entries::Large(m) => m.iter().for_each(|(k, v)| f(*k, v)),
        }
    }

    pub(crate) fn iter(&self) -> Subscribers<'_, K, V> {
        Subscribers(match self {
            Entries::One(k, v) => Iter::One(iter::once((*k, v))),
            Entries::Many(vec) => Iter::Many(vec.iter()),
            Entries::Large(m) => Iter::Large(m.iter()),
        })
    }
}

/// Iterator over the subscribers of one filter, from
/// [`SubscriptionTree::subscribers`](crate::SubscriptionTree::subscribers).
pub struct Subscribers<'a, K, V>(Iter<'a, K, V>);

enum Iter<'a, K, V> {
    None,
    One(iter::Once<(K, &'a V)>),
    Many(slice::Iter<'a, (K, V)>),
    Large(hash_map::Iter<'a, K, V>),
}

impl<K, V> Subscribers<'_, K, V> {
    pub(crate) fn empty() -> Self {
        Subscribers(Iter::None)
    }
}

impl<'a, K: Copy, V> Iterator for Subscribers<'a, K, V> {
    type Item = (K, &'a V);

    fn next(&mut self) -> Option<Self::Item> {
        match &mut self.0 {
            Iter::None => None,
            Iter::One(it) => it.next(),
            Iter::Many(it) => it.next().map(|(k, v)| (*k, v)),
            Iter::Large(it) => it.next().map(|(k, v)| (*k, v)),
        }
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        match &self.0 {
            Iter::None => (0, Some(0)),
            Iter::One(it) => it.size_hint(),
            Iter::Many(it) => it.size_hint(),
            Iter::Large(it) => it.size_hint(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grows_and_shrinks_through_all_representations() {
        let mut e: Entries<u32, u32> = Entries::default();
        assert!(e.is_empty());
        for k in 0..100 {
            assert_eq!(e.insert(k, k), None);
            assert_eq!(e.insert(k, k + 1), Some(k));
            assert_eq!(e.len(), k as usize + 1);
        }
        assert!(matches!(e, Entries::Large(_)));
        assert_eq!(e.iter().count(), 100);
        for k in 0..100 {
            assert_eq!(e.get(k), Some(&(k + 1)));
            assert_eq!(e.remove(k), Some(k + 1));
            assert_eq!(e.remove(k), None);
            assert_eq!(e.len(), 99 - k as usize);
            if k == 98 {
                assert!(matches!(e, Entries::One(99, _)));
            }
        }
        assert!(e.is_empty());
        assert!(matches!(&e, Entries::Many(v) if v.capacity() == 0));
    }
}
