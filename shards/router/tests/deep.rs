//! 100,000-level topics and filters on a 64 KiB stack: proves every path is iterative.

use ringmq_router::*;

const N: usize = 100_000;

fn on_small_stack(f: impl FnOnce() + Send + 'static) {
    std::thread::Builder::new()
        .stack_size(64 * 1024)
        .spawn(f)
        .expect("spawn")
        .join()
        .expect("no stack overflow");
}

fn levels(level: &str, n: usize) -> String {
    vec![level; n].join("/")
}

#[test]
fn deep_topics_and_filters_use_no_recursion() {
    on_small_stack(|| {
        let topic = levels("a", N);
        let exact = topic.clone();
        let plus = levels("+", N);
        let mixed = format!("{}/#", levels("a", N - 1));
        let alt = (0..N)
            .map(|i| if i % 2 == 0 { "a" } else { "+" })
            .collect::<Vec<_>>()
            .join("/");
        // 100,000 levels exceed 65,535 bytes, so the wire can't carry them; the indexes don't
        // re-validate, so this still exercises their loops. The deepest valid topic is
        // 65,536 empty levels.
        assert_eq!(validate_topic_name(&topic, N), Err(TopicError::TooLong));
        let slashes = "/".repeat(MAX_TOPIC_LEN);
        assert_eq!(validate_topic_name(&slashes, 65_536), Ok(()));
        assert_eq!(
            validate_topic_filter(&slashes, 65_535),
            Err(TopicError::TooManyLevels)
        );
        for f in [&exact, &plus, &mixed, &alt] {
            assert!(topic_matches(f, &topic));
        }

        let mut tree = SubscriptionTree::<u32, ()>::new();
        for (k, f) in [&exact, &plus, &mixed, &alt].into_iter().enumerate() {
            tree.insert(f, k as u32, ());
        }
        tree.insert("#", 9, ());
        let mut n = 0;
        tree.for_each_match(&topic, |_, _| n += 1);
        assert_eq!(n, 5);
        assert!(tree.trie_node_count() >= 2 * N);

        let mut rt = RouteTable::new();
        rt.add(&plus, 3);
        rt.add(&alt, 4);
        assert_eq!(rt.shards_for(&topic).len(), 2);

        let mut ret = RetainedStore::new();
        ret.insert(&topic, 1);
        ret.insert(&levels("b", N), 2);
        for f in [
            "#",
            plus.as_str(),
            mixed.as_str(),
            alt.as_str(),
            exact.as_str(),
        ] {
            let mut got = 0;
            ret.for_each_match(f, |t, v| {
                assert_eq!(t.len(), topic.len());
                got += *v;
            });
            assert_eq!(
                got,
                if f == "#" || f == plus { 3 } else { 1 },
                "filter of len {}",
                f.len()
            );
        }

        // Removal prunes 100,000-node chains without recursion.
        for (k, f) in [&exact, &plus, &mixed, &alt].into_iter().enumerate() {
            assert_eq!(tree.remove(f, k as u32), Some(()));
        }
        tree.remove("#", 9);
        assert_eq!((tree.len(), tree.trie_node_count()), (0, 0));
        ret.retain(|_, v| *v == 2);
        assert_eq!(ret.len(), 1);
        // Drop of the remaining deep structures must not recurse either.
        drop((ret, rt));
    });
}
