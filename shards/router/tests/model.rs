//! Model-based property tests: every index agrees with `topic_matches` over a plain list.

use std::collections::{BTreeMap, BTreeSet};

use proptest::prelude::*;
use ringmq_router::*;

const LEVELS: &[&str] = &["", "a", "b", "$SYS", "$x"];

fn topic() -> impl Strategy<Value = String> {
    prop::collection::vec(prop::sample::select(LEVELS), 1..5)
        .prop_map(|l| l.join("/"))
        .prop_filter("topics are non-empty", |t| !t.is_empty())
}

fn filter() -> impl Strategy<Value = String> {
    let level = prop_oneof![3 => prop::sample::select(LEVELS), 2 => Just("+")];
    (prop::collection::vec(level, 0..5), any::<bool>()).prop_map(|(mut l, hash)| {
        if hash || l.is_empty() {
            l.push("#");
        }
        let f = if l == [""] {
            "/".to_owned()
        } else {
            l.join("/")
        };
        assert_eq!(validate_topic_filter(&f, 64), Ok(()), "{f}");
        f
    })
}

#[derive(Debug, Clone)]
enum Op {
    Insert(usize, u16, u32),
    Remove(usize, u16),
    Match(String),
}

/// Filters come from a small pool so inserts and removes collide; keys 0..40 cross the
/// one/vec/map thresholds of a filter's subscriber list.
fn ops() -> impl Strategy<Value = (Vec<String>, Vec<Op>)> {
    prop::collection::vec(filter(), 1..10).prop_flat_map(|pool| {
        let n = pool.len();
        let op = prop_oneof![
            4 => (0..n, 0..40u16, any::<u32>()).prop_map(|(f, k, v)| Op::Insert(f, k, v)),
            3 => (0..n, 0..40u16).prop_map(|(f, k)| Op::Remove(f, k)),
            2 => topic().prop_map(Op::Match),
        ];
        (Just(pool), prop::collection::vec(op, 0..200))
    })
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: 512,
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    #[test]
    fn subscription_tree_matches_model((pool, ops) in ops()) {
        let mut tree = SubscriptionTree::<u16, u32>::new();
        let mut model: BTreeMap<(String, u16), u32> = BTreeMap::new();
        for op in ops {
            match op {
                Op::Insert(f, k, v) => {
                    let f = &pool[f];
                    prop_assert_eq!(tree.insert(f, k, v), model.insert((f.clone(), k), v));
                }
                Op::Remove(f, k) => {
                    let f = &pool[f];
                    prop_assert_eq!(tree.remove(f, k), model.remove(&(f.clone(), k)));
                }
                Op::Match(t) => {
                    let mut got = vec![];
                    tree.for_each_match(&t, |k, v| got.push((k, *v)));
                    got.sort();
                    let mut want: Vec<_> = model
                        .iter()
                        .filter(|((f, _), _)| topic_matches(f, &t))
                        .map(|((_, k), v)| (*k, *v))
                        .collect();
                    want.sort();
                    prop_assert_eq!(got, want, "topic {:?}", t);
                }
            }
            prop_assert_eq!(tree.len(), model.len());
            let filters: BTreeSet<_> = model.keys().map(|(f, _)| f.clone()).collect();
            prop_assert_eq!(tree.filter_count(), filters.len());
        }
        for ((f, k), v) in &model {
            prop_assert_eq!(tree.get(f, *k), Some(v));
            prop_assert!(tree.subscribers(f).any(|(k2, v2)| k2 == *k && v2 == v));
        }
        for (f, k) in model.keys() {
            prop_assert!(tree.remove(f, *k).is_some());
        }
        prop_assert!(tree.is_empty());
        prop_assert_eq!(tree.filter_count(), 0);
        prop_assert_eq!(tree.trie_node_count(), 0);
    }

    #[test]
    fn route_table_matches_model((pool, ops) in ops()) {
        let mut rt = RouteTable::new();
        let mut model: BTreeSet<(String, u16)> = BTreeSet::new();
        for op in ops {
            match op {
                // Spread keys over all 256 shard ids.
                Op::Insert(f, k, v) => {
                    let s = (k * 7 + (v % 2) as u16) % 256;
                    rt.add(&pool[f], s);
                    model.insert((pool[f].clone(), s));
                }
                Op::Remove(f, k) => {
                    let s = (k * 7) % 256;
                    rt.remove(&pool[f], s);
                    model.remove(&(pool[f].clone(), s));
                }
                Op::Match(t) => {
                    let want: ShardSet = model
                        .iter()
                        .filter(|(f, _)| topic_matches(f, &t))
                        .map(|(_, s)| *s)
                        .collect();
                    prop_assert_eq!(rt.shards_for(&t), want, "topic {:?}", t);
                }
            }
            prop_assert_eq!(rt.len(), model.len());
        }
        for (f, s) in &model {
            prop_assert!(rt.shards_of(f).contains(*s));
            rt.remove(f, *s);
        }
        prop_assert!(rt.is_empty());
        prop_assert_eq!(rt.trie_node_count(), 0);
    }

    #[test]
    fn retained_store_matches_model(
        ops in prop::collection::vec(prop_oneof![
            4 => (topic(), any::<u32>()).prop_map(|(t, v)| (0u8, t, v)),
            2 => topic().prop_map(|t| (1u8, t, 0)),
            3 => filter().prop_map(|f| (2u8, f, 0)),
            3 => topic().prop_map(|t| (2u8, t, 0)),
            1 => Just((3u8, String::new(), 0)),
        ], 0..200)
    ) {
        let mut store = RetainedStore::<u32>::new();
        let mut model: BTreeMap<String, u32> = BTreeMap::new();
        for (kind, s, v) in ops {
            match kind {
                0 => prop_assert_eq!(store.insert(&s, v), model.insert(s.clone(), v)),
                1 => prop_assert_eq!(store.remove(&s), model.remove(&s)),
                2 => {
                    let mut got = vec![];
                    store.for_each_match(&s, |t, v| got.push((t.to_owned(), *v)));
                    got.sort();
                    let want: Vec<_> = model
                        .iter()
                        .filter(|(t, _)| topic_matches(&s, t))
                        .map(|(t, v)| (t.clone(), *v))
                        .collect();
                    prop_assert_eq!(got, want, "filter {:?}", s);
                }
                _ => {
                    store.retain(|_, v| *v % 3 != 0);
                    model.retain(|_, v| *v % 3 != 0);
                }
            }
            prop_assert_eq!(store.len(), model.len());
        }
        for (t, v) in &model {
            prop_assert_eq!(store.get(t), Some(v));
            prop_assert_eq!(store.remove(t), Some(*v));
        }
        prop_assert!(store.is_empty());
        prop_assert_eq!(store.trie_node_count(), 0);
    }

    /// Validation agrees with a straightforward per-level statement of the rules.
    #[test]
    fn validation_matches_level_rules(s in "[ab/+#\u{0}$]{0,8}") {
        let levels: Vec<&str> = s.split('/').collect();
        let filter_ok = !s.is_empty()
            && !s.contains('\0')
            && levels.iter().enumerate().all(|(i, l)| {
                (!l.contains('#') || (*l == "#" && i == levels.len() - 1))
                    && (!l.contains('+') || *l == "+")
            });
        prop_assert_eq!(validate_topic_filter(&s, 64).is_ok(), filter_ok, "{:?}", s);
        let name_ok = !s.is_empty() && !s.contains(['\0', '+', '#']);
        prop_assert_eq!(validate_topic_name(&s, 64).is_ok(), name_ok, "{:?}", s);
    }
}
