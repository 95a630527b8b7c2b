//! Examples from MQTT 3.1.1 / MQTT 5 sections 4.7 and 4.8.2, each naming its statement.

use ringmq_router::*;

const L: usize = 128;

fn matches_all(filter: &str, topic: &str) -> bool {
    // The reference matcher and all three indexes must agree on every spec example.
    let reference = topic_matches(filter, topic);
    let mut t = SubscriptionTree::<u32, ()>::new();
    t.insert(filter, 1, ());
    let mut n = 0;
    t.for_each_match(topic, |_, _| n += 1);
    assert_eq!(n == 1, reference, "SubscriptionTree {filter:?} {topic:?}");
    let mut r = RetainedStore::new();
    r.insert(topic, ());
    let mut m = 0;
    r.for_each_match(filter, |_, _| m += 1);
    assert_eq!(m == 1, reference, "RetainedStore {filter:?} {topic:?}");
    let mut rt = RouteTable::new();
    rt.add(filter, 7);
    assert_eq!(
        rt.shards_for(topic).contains(7),
        reference,
        "RouteTable {filter:?} {topic:?}"
    );
    reference
}

/// [MQTT-4.7.1-1] '#' must be the last character and alone in its level; it matches the
/// parent and any number of child levels.
#[test]
fn mqtt_4_7_1_1_multi_level_wildcard() {
    for t in [
        "sport/tennis/player1",
        "sport/tennis/player1/ranking",
        "sport/tennis/player1/score/wimbledon",
    ] {
        assert!(matches_all("sport/tennis/player1/#", t), "{t}");
    }
    assert!(matches_all("sport/#", "sport"));
    assert!(matches_all("#", "sport/tennis"));
    assert!(matches_all("#", "/"));
    assert!(!matches_all("sport/tennis/#", "sport/tennisplayer1"));
    assert_eq!(validate_topic_filter("#", L), Ok(()));
    assert_eq!(validate_topic_filter("sport/tennis/#", L), Ok(()));
    assert_eq!(
        validate_topic_filter("sport/tennis#", L),
        Err(TopicError::InvalidWildcard)
    );
    assert_eq!(
        validate_topic_filter("sport/#/ranking", L),
        Err(TopicError::InvalidWildcard)
    );
    assert_eq!(
        validate_topic_filter("#/", L),
        Err(TopicError::InvalidWildcard)
    );
    assert_eq!(
        validate_topic_filter("##", L),
        Err(TopicError::InvalidWildcard)
    );
}

/// [MQTT-4.7.1-2] '+' must occupy an entire level; it matches exactly one level, which may be
/// empty.
#[test]
fn mqtt_4_7_1_2_single_level_wildcard() {
    assert!(matches_all("sport/tennis/+", "sport/tennis/player1"));
    assert!(matches_all("sport/tennis/+", "sport/tennis/player2"));
    assert!(!matches_all(
        "sport/tennis/+",
        "sport/tennis/player1/ranking"
    ));
    assert!(!matches_all("sport/+", "sport"));
    assert!(matches_all("sport/+", "sport/"));
    assert!(matches_all("+/+", "/finance"));
    assert!(matches_all("/+", "/finance"));
    assert!(!matches_all("+", "/finance"));
    assert!(matches_all("+", "finance"));
    assert!(matches_all("+/tennis/#", "sport/tennis/player1"));
    assert!(
        matches_all("+/#", "a"),
        "'#' also matches zero levels after '+'"
    );
    for ok in [
        "+",
        "+/tennis/#",
        "sport/+/player1",
        "+/+",
        "/+",
        "+/",
        "a/+/b/+/#",
    ] {
        assert_eq!(validate_topic_filter(ok, L), Ok(()), "{ok}");
    }
    for bad in ["sport+", "sport/+tennis", "++", "a/b+/c", "+a"] {
        assert_eq!(
            validate_topic_filter(bad, L),
            Err(TopicError::InvalidWildcard),
            "{bad}"
        );
    }
}

/// [MQTT-4.7.1-3] Wildcards may be used in filters but must not be used in a topic name.
#[test]
fn mqtt_4_7_1_3_no_wildcards_in_topic_names() {
    assert_eq!(validate_topic_name("sport/+", L), Err(TopicError::Wildcard));
    assert_eq!(validate_topic_name("sport/#", L), Err(TopicError::Wildcard));
    assert_eq!(validate_topic_name("a+b", L), Err(TopicError::Wildcard));
    assert_eq!(validate_topic_name("sport/tennis", L), Ok(()));
    assert!(has_wildcards("a/+") && has_wildcards("#") && !has_wildcards("a/b"));
}

/// [MQTT-4.7.2-1] Filters starting with a wildcard must not match topics starting with '$'.
#[test]
fn mqtt_4_7_2_1_dollar_topics() {
    assert!(!matches_all("#", "$SYS/monitor/Clients"));
    assert!(!matches_all("+/monitor/Clients", "$SYS/monitor/Clients"));
    assert!(!matches_all("+", "$SYS"));
    assert!(!matches_all("+/#", "$SYS"));
    assert!(matches_all("$SYS/#", "$SYS/monitor/Clients"));
    assert!(matches_all("$SYS/monitor/+", "$SYS/monitor/Clients"));
    assert!(matches_all("$SYS/#", "$SYS"));
    assert!(matches_all("$SYS", "$SYS"));
    // Only the first level is special.
    assert!(matches_all("a/+", "a/$b"));
    assert!(matches_all("a/#", "a/$b/c"));
}

/// [MQTT-4.7.3-1] Topic names and filters must be at least one character long; levels may be
/// empty, and matching is case-sensitive.
#[test]
fn mqtt_4_7_3_1_non_empty_and_empty_levels() {
    assert_eq!(validate_topic_name("", L), Err(TopicError::Empty));
    assert_eq!(validate_topic_filter("", L), Err(TopicError::Empty));
    assert_eq!(validate_topic_name("/", L), Ok(()));
    assert_eq!(validate_topic_filter("a//b", L), Ok(()));
    assert!(matches_all("a//b", "a//b"));
    assert!(matches_all("a/+/b", "a//b"));
    assert!(!matches_all("a/b", "a//b"));
    assert!(!matches_all("ACCOUNTS", "Accounts"));
    assert!(matches_all("/", "/"));
    assert!(!matches_all("/", "a/"));
    assert!(matches_all("sport tennis/+", "sport tennis/x"));
}

/// [MQTT-4.7.3-2] Topic names and filters must not include U+0000; length and level limits.
#[test]
fn mqtt_4_7_3_2_null_and_limits() {
    assert_eq!(validate_topic_name("a\0b", L), Err(TopicError::NullChar));
    assert_eq!(validate_topic_filter("a/\0", L), Err(TopicError::NullChar));
    let long = "a".repeat(MAX_TOPIC_LEN + 1);
    assert_eq!(validate_topic_name(&long, L), Err(TopicError::TooLong));
    assert_eq!(validate_topic_filter(&long, L), Err(TopicError::TooLong));
    assert_eq!(validate_topic_name(&long[1..], L), Ok(()));
    assert_eq!(validate_topic_name("a/b/c", 3), Ok(()));
    assert_eq!(
        validate_topic_name("a/b/c/d", 3),
        Err(TopicError::TooManyLevels)
    );
    assert_eq!(validate_topic_filter("a/+/#", 3), Ok(()));
    assert_eq!(
        validate_topic_filter("a/+/c/#", 3),
        Err(TopicError::TooManyLevels)
    );
    assert_eq!(
        validate_topic_name("///", 3),
        Err(TopicError::TooManyLevels)
    );
}

/// [MQTT-4.8.2-1] A shared filter starts with `$share/` and has a ShareName of at least one
/// character. [MQTT-4.8.2-2] The ShareName has no '/', '+' or '#'; it is followed by '/' and a
/// valid filter.
#[test]
fn mqtt_4_8_2_shared_subscriptions() {
    assert_eq!(parse_shared("sport/#", L), Ok(None));
    assert_eq!(parse_shared("$sharefoo/a", L), Ok(None));
    assert_eq!(parse_shared("$SYS/a", L), Ok(None));
    assert_eq!(
        parse_shared("$share/consumer1/sport/tennis/+", L),
        Ok(Some(SharedFilter {
            group: "consumer1",
            filter: "sport/tennis/+"
        }))
    );
    assert_eq!(
        parse_shared("$share/g//", L),
        Ok(Some(SharedFilter {
            group: "g",
            filter: "/"
        }))
    );
    assert_eq!(
        parse_shared("$share/g/#", L),
        Ok(Some(SharedFilter {
            group: "g",
            filter: "#"
        }))
    );
    // [MQTT-4.8.2-1]
    assert_eq!(
        parse_shared("$share//sport", L),
        Err(TopicError::InvalidShare)
    );
    assert_eq!(parse_shared("$share/", L), Err(TopicError::InvalidShare));
    assert_eq!(
        parse_shared("$share/group", L),
        Err(TopicError::InvalidShare)
    );
    // [MQTT-4.8.2-2]
    assert_eq!(
        parse_shared("$share/gr+oup/a", L),
        Err(TopicError::InvalidShare)
    );
    assert_eq!(parse_shared("$share/#/a", L), Err(TopicError::InvalidShare));
    assert_eq!(parse_shared("$share/+/a", L), Err(TopicError::InvalidShare));
    // The inner filter is validated as a filter.
    assert_eq!(parse_shared("$share/g/", L), Err(TopicError::Empty));
    assert_eq!(
        parse_shared("$share/g/a/#/b", L),
        Err(TopicError::InvalidWildcard)
    );
    assert_eq!(
        parse_shared("$share/g/a/b/c", 2),
        Err(TopicError::TooManyLevels)
    );
}

#[test]
fn errors_display() {
    for e in [
        TopicError::Empty,
        TopicError::TooLong,
        TopicError::Wildcard,
        TopicError::InvalidWildcard,
        TopicError::NullChar,
        TopicError::TooManyLevels,
        TopicError::InvalidShare,
    ] {
        assert!(!e.to_string().is_empty());
    }
}

#[test]
fn subscription_tree_basics() {
    let mut t = SubscriptionTree::<u64, &str>::new();
    assert!(t.is_empty());
    assert_eq!(t.insert("devices/1/cmd", 1, "a"), None);
    assert_eq!(t.insert("devices/1/cmd", 1, "b"), Some("a"));
    assert_eq!(t.insert("devices/1/cmd", 2, "c"), None);
    assert_eq!(t.insert("devices/+/cmd", 1, "w"), None);
    assert_eq!(t.insert("#", 3, "all"), None);
    assert_eq!((t.len(), t.filter_count()), (4, 3));
    assert_eq!(t.get("devices/1/cmd", 1), Some(&"b"));
    assert_eq!(t.get("devices/+/cmd", 1), Some(&"w"));
    assert_eq!(t.get("devices/+/cmd", 2), None);
    let mut subs: Vec<_> = t.subscribers("devices/1/cmd").collect();
    subs.sort();
    assert_eq!(subs, [(1, &"b"), (2, &"c")]);
    assert_eq!(t.subscribers("nope").count(), 0);

    let mut got = vec![];
    t.for_each_match("devices/1/cmd", |k, v| got.push((k, *v)));
    got.sort();
    // Subscriber 1 is visited once per matching filter; the broker merges.
    assert_eq!(got, [(1, "b"), (1, "w"), (2, "c"), (3, "all")]);

    assert_eq!(t.remove("devices/+/cmd", 2), None);
    assert_eq!(t.remove("devices/+/cmd", 1), Some("w"));
    assert_eq!(t.remove("#", 3), Some("all"));
    assert_eq!(t.trie_node_count(), 0);
    assert_eq!(t.remove("devices/1/cmd", 1), Some("b"));
    assert_eq!(t.remove("devices/1/cmd", 2), Some("c"));
    assert!(t.is_empty());
    assert_eq!(t.filter_count(), 0);
}

#[test]
fn retained_store_basics() {
    let mut r = RetainedStore::new();
    assert_eq!(r.insert("a/b", 1), None);
    assert_eq!(r.insert("a/b", 2), Some(1));
    r.insert("a", 3);
    r.insert("$SYS/x", 4);
    r.insert("a/b/c", 5);
    assert_eq!(r.len(), 4);
    assert_eq!(r.get("a/b"), Some(&2));
    let mut got = vec![];
    r.for_each_match("a/#", |t, v| got.push((t.to_owned(), *v)));
    got.sort();
    assert_eq!(
        got,
        [("a".into(), 3), ("a/b".into(), 2), ("a/b/c".into(), 5)]
    );
    got.clear();
    r.for_each_match("#", |t, v| got.push((t.to_owned(), *v)));
    assert_eq!(got.len(), 3, "'#' skips $SYS");
    r.retain(|_, v| *v % 2 == 1);
    assert_eq!(r.len(), 2);
    assert_eq!(r.get("a/b"), None);
    assert_eq!(r.remove("a"), Some(3));
    assert_eq!(r.remove("a/b/c"), Some(5));
    assert_eq!(r.remove("a/b/c"), None);
    assert!(r.is_empty());
    assert_eq!(r.trie_node_count(), 0);
}

#[test]
fn route_table_and_local_interest() {
    let mut li = LocalInterest::new();
    assert!(li.incr("a/+"));
    assert!(!li.incr("a/+"));
    assert!(!li.decr("a/+"));
    assert!(li.decr("a/+"));
    assert!(!li.decr("a/+"), "unmatched decr is ignored");
    assert!(li.incr("x"));
    assert_eq!(li.filters().collect::<Vec<_>>(), ["x"]);
    assert_eq!((li.count("x"), li.len()), (1, 1));

    let mut rt = RouteTable::new();
    rt.add("a/+", 0);
    rt.add("a/+", 0);
    rt.add("a/b", 255);
    rt.add("#", 64);
    assert_eq!(
        rt.shards_for("a/b").iter().collect::<Vec<_>>(),
        [0, 64, 255]
    );
    assert_eq!(rt.shards_for("$SYS/b"), ShardSet::new());
    assert_eq!(rt.shards_of("a/+").iter().collect::<Vec<_>>(), [0]);
    rt.remove("a/+", 0);
    rt.remove("a/+", 0);
    rt.remove("#", 64);
    assert_eq!(rt.shards_for("a/b").iter().collect::<Vec<_>>(), [255]);
    rt.remove("a/b", 255);
    assert!(rt.is_empty());
    assert_eq!(rt.trie_node_count(), 0);
}

#[test]
fn shard_set() {
    let mut s = ShardSet::default();
    assert!(s.is_empty());
    assert!(s.insert(0) && s.insert(63) && s.insert(64) && s.insert(255));
    assert!(!s.insert(63));
    assert_eq!(s.len(), 4);
    assert!(s.contains(64) && !s.contains(65) && !s.contains(300));
    assert!(s.remove(63) && !s.remove(63));
    assert_eq!(s.iter().collect::<Vec<_>>(), [0, 64, 255]);
    let mut u: ShardSet = [1, 2].into_iter().collect();
    u.union_with(&s);
    assert_eq!(u.into_iter().collect::<Vec<_>>(), [0, 1, 2, 64, 255]);
    assert_eq!(format!("{s:?}"), "{0, 64, 255}");
}

#[test]
#[should_panic(expected = "shard id 256")]
fn shard_set_rejects_256() {
    ShardSet::new().insert(256);
}

#[test]
#[should_panic(expected = "shard id 300")]
fn route_table_rejects_300() {
    RouteTable::new().add("a", 300);
}

#[test]
fn types_are_send() {
    fn send<T: Send>() {}
    send::<SubscriptionTree<u64, String>>();
    send::<RetainedStore<Vec<u8>>>();
    send::<RouteTable>();
    send::<LocalInterest>();
}
