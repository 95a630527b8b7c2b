//! Timing rules of the protocol as scripted scenarios on the real core and a virtual clock
//! (`ringmq_sim::scenario`): exact, instant and deterministic where the black-box tests need
//! real seconds and slack. Each runs on one and on two shards (client ids placed on both).

use bytes::Bytes;
use ringmq_codec::{Packet, ProtocolVersion, QoS, ReasonCode};
use ringmq_sim::scenario::{Hello, Scenario};
use std::time::Duration;

const V311: ProtocolVersion = ProtocolVersion::V311;
const V5: ProtocolVersion = ProtocolVersion::V5;

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

fn connack(packets: &[Packet]) -> (bool, ReasonCode) {
    match packets.first() {
        Some(Packet::ConnAck(a)) => (a.session_present, a.reason),
        other => panic!("expected CONNACK, got {other:?}"),
    }
}

fn publishes(packets: &[Packet]) -> Vec<String> {
    packets
        .iter()
        .filter_map(|p| match p {
            Packet::Publish(p) => Some(p.topic.to_string()),
            _ => None,
        })
        .collect()
}

fn each_shard_count(f: impl Fn(usize)) {
    for n in [1, 2] {
        f(n);
    }
}

#[test]
fn silent_client_closed_between_one_and_one_and_a_half_keep_alives() {
    // [MQTT-3.1.2-24] no packet within 1.5 x Keep Alive: the server disconnects; MQTT 5 says
    // why first (0x8D Keep Alive timeout); not before the Keep Alive itself.
    each_shard_count(|n| {
        for version in [V311, V5] {
            let mut s = Scenario::new(n);
            let mut hello = Hello::new(version, "ka");
            hello.keep_alive = 2;
            s.connect(0, hello);
            connack(&s.received(0));
            s.advance(ms(2_000));
            assert!(!s.closed(0), "closed at 1.0 x keep-alive ({version:?})");
            s.advance(ms(900));
            assert!(!s.closed(0), "closed before 1.5 x keep-alive ({version:?})");
            s.advance(ms(400));
            assert!(s.closed(0), "open after 1.5 x keep-alive ({version:?})");
            let got = s.received(0);
            if version == V5 {
                assert!(
                    matches!(got.as_slice(), [Packet::Disconnect(d)] if d.reason == ReasonCode::KEEP_ALIVE_TIMEOUT),
                    "{got:?}"
                );
            } else {
                assert!(got.is_empty(), "{got:?}");
            }
        }
    });
}

#[test]
fn any_packet_resets_the_keep_alive_timer() {
    // [MQTT-3.1.2-23] PINGREQ or any other packet within the interval keeps the connection;
    // [MQTT-3.12.4-1] PINGREQ is answered with PINGRESP.
    each_shard_count(|n| {
        let mut s = Scenario::new(n);
        let mut hello = Hello::new(V311, "alive");
        hello.keep_alive = 1;
        s.connect(0, hello);
        connack(&s.received(0));
        for i in 0..40 {
            s.advance(ms(1_200));
            if i % 2 == 0 {
                s.ping(0);
                assert!(matches!(s.received(0).as_slice(), [Packet::PingResp]));
            } else {
                s.publish(0, "alive/t", b"x");
            }
            assert!(!s.closed(0), "closed at step {i} although it kept sending");
        }
        s.advance(ms(1_600));
        assert!(s.closed(0), "silent at last, but still open");
    });
}

/// A subscriber on `will/#` in slot 0, and in slot 1 a publisher with a will on `will/t`.
fn will_setup(n: usize, delay: u32, expiry: u32) -> Scenario {
    let mut s = Scenario::new(n);
    s.connect(0, Hello::new(V5, "watcher"));
    s.subscribe(0, "will/#", QoS::AtMostOnce);
    s.sync();
    s.received(0);
    let mut hello = Hello::new(V5, "dies");
    hello.expiry = Some(expiry);
    hello.will = Some(("will/t", delay));
    s.connect(1, hello);
    connack(&s.received(1));
    s
}

#[test]
fn will_waits_for_its_delay() {
    // [MQTT-3.1.3-9] the will goes once the Will Delay Interval has passed, not before.
    each_shard_count(|n| {
        let mut s = will_setup(n, 5, 600);
        s.drop_connection(1);
        s.advance(ms(4_500));
        assert!(
            publishes(&s.received(0)).is_empty(),
            "will before its delay"
        );
        s.advance(ms(1_000));
        assert_eq!(publishes(&s.received(0)), ["will/t"]);
    });
}

#[test]
fn reconnect_within_the_will_delay_cancels_the_will() {
    // [MQTT-3.1.3-9] a new connection to the session before the delay passes: no will.
    each_shard_count(|n| {
        let mut s = will_setup(n, 5, 600);
        s.drop_connection(1);
        s.advance(ms(2_000));
        let mut hello = Hello::new(V5, "dies");
        hello.clean_start = false;
        hello.expiry = Some(600);
        s.connect(2, hello);
        assert_eq!(connack(&s.received(2)), (true, ReasonCode::SUCCESS));
        s.advance(ms(10_000));
        assert!(
            publishes(&s.received(0)).is_empty(),
            "will after a reconnect"
        );
    });
}

#[test]
fn will_goes_when_the_session_ends_before_the_delay() {
    // [MQTT-3.1.3-9] the earlier of the Will Delay Interval and the session's end.
    each_shard_count(|n| {
        let mut s = will_setup(n, 30, 3);
        s.drop_connection(1);
        s.advance(ms(2_000));
        assert!(
            publishes(&s.received(0)).is_empty(),
            "will before the session ended"
        );
        s.advance(ms(2_000));
        assert_eq!(publishes(&s.received(0)), ["will/t"]);
    });
}

#[test]
fn session_outlives_its_connection_for_its_expiry_interval() {
    // [MQTT-3.1.2-23 (v5 numbering 3.1.2.11.2)] the session is kept for the Session Expiry
    // Interval after the connection closes, and discarded after it.
    each_shard_count(|n| {
        let mut s = Scenario::new(n);
        let hello = |clean_start| {
            let mut h = Hello::new(V5, "expiring");
            h.clean_start = clean_start;
            h.expiry = Some(10);
            h
        };
        s.connect(0, hello(true));
        connack(&s.received(0));
        s.disconnect(0);
        s.advance(ms(9_000));
        s.connect(1, hello(false));
        assert_eq!(connack(&s.received(1)), (true, ReasonCode::SUCCESS));
        s.disconnect(1);
        s.advance(ms(11_000));
        s.connect(2, hello(false));
        assert_eq!(connack(&s.received(2)), (false, ReasonCode::SUCCESS));
    });
}

#[test]
fn takeover_disconnects_the_old_connection() {
    // [MQTT-3.1.4-3] a second CONNECT with the same client id: the server disconnects the
    // existing client (MQTT 5: DISCONNECT 0x8E Session taken over) and serves the new one.
    each_shard_count(|n| {
        let mut s = Scenario::new(n);
        let hello = || {
            let mut h = Hello::new(V5, "twin");
            h.clean_start = false;
            h.expiry = Some(60);
            h
        };
        s.connect(0, hello());
        connack(&s.received(0));
        s.connect(1, hello());
        assert_eq!(connack(&s.received(1)), (true, ReasonCode::SUCCESS));
        let old = s.received(0);
        assert!(
            matches!(old.as_slice(), [Packet::Disconnect(d)] if d.reason == ReasonCode::SESSION_TAKEN_OVER),
            "{old:?}"
        );
        assert!(s.closed(0) && !s.closed(1));
    });
}

/// A client id whose home is `shard` of `n` (shard 0 when there is one).
fn id_on(prefix: &str, shard: usize, n: usize) -> String {
    (0..)
        .map(|i| format!("{prefix}{i}"))
        .find(|id| ringmq_core::config::home_shard(id.as_bytes(), n) == shard % n)
        .expect("some id lands on every shard")
}

#[test]
fn a_full_queue_holds_back_the_publishers_acknowledgements_until_it_drains() {
    // Issue 12, --queue-full backpressure (the default): a persistent subscriber is offline
    // with a queue of 3; a publisher (on the other shard when there are two) sends 8 QoS 1
    // messages. 3 are queued and acknowledged; the other 5 are queued beyond the limit and
    // their PUBACKs wait [MQTT-4.6.0-2: in order]. Once the subscriber is back and its queue
    // drains under the limit, they come, and it gets all 8 in order [MQTT-4.6.0-6]. (An MQTT 5
    // publisher is refused instead: next scenario.)
    each_shard_count(|n| {
        let version = V311;
        let mut s = Scenario::with(n, |c| c.max_queued_messages = 3);
        let sub = id_on("qsub", 0, n);
        let publisher = id_on("qpub", 1, n);
        let hello = |id| {
            let mut h = Hello::new(version, id);
            h.clean_start = false;
            h.expiry = (version == V5).then_some(600);
            h
        };
        s.connect(0, hello(&sub));
        connack(&s.received(0));
        s.subscribe(0, "q", QoS::AtLeastOnce);
        assert!(matches!(s.received(0).as_slice(), [Packet::SubAck(_)]));
        s.disconnect(0);
        s.connect(1, hello(&publisher));
        connack(&s.received(1));
        const PAYLOADS: [&[u8]; 8] = [b"0", b"1", b"2", b"3", b"4", b"5", b"6", b"7"];
        for (i, p) in PAYLOADS.iter().enumerate() {
            s.publish_at(1, "q", p, QoS::AtLeastOnce, i as u16 + 1);
        }
        s.advance(ms(1_000));
        let acked = |packets: Vec<Packet>| -> Vec<u16> {
            packets
                .iter()
                .map(|p| match p {
                    Packet::PubAck(r) => r.packet_id.get(),
                    other => panic!("expected PUBACK, got {other:?}"),
                })
                .collect()
        };
        assert_eq!(acked(s.received(1)), [1, 2, 3], "{version:?}, {n} shards");
        s.connect(2, hello(&sub));
        let mut first = s.received(2);
        assert!(connack(&first).0, "session present");
        first.remove(0);
        let mut got = Vec::new();
        for round in 0..20 {
            let packets = if round == 0 {
                std::mem::take(&mut first)
            } else {
                s.received(2)
            };
            for p in packets {
                if let Packet::Publish(p) = p {
                    got.push(p.payload.clone());
                    s.puback(2, p.packet_id.expect("QoS 1"));
                }
            }
            s.advance(ms(10));
        }
        assert_eq!(got, PAYLOADS, "{version:?}, {n} shards");
        assert_eq!(
            acked(s.received(1)),
            [4, 5, 6, 7, 8],
            "{version:?}, {n} shards"
        );
    });
}

#[test]
fn an_mqtt5_publisher_is_refused_0x97_while_a_queue_it_would_reach_is_full() {
    // Issue 12, item 2: a persistent subscriber is offline with a queue of 3. An MQTT 5
    // publisher's first 3 QoS 1 messages are queued and acknowledged; the queue is then full,
    // and its next one (QoS 2) is answered PUBREC 0x97 (Quota exceeded) and goes nowhere. The
    // publisher is then not read until the queue drains: its DUP of the refused id waits in
    // TCP. Once the subscriber has taken its 3, it is read and refused again (MQTT 5 section
    // 4.3.3: after a PUBREC of 0x80 or more the flow is over; the broker keeps refusing a DUP
    // of it, as its answer may have been lost); a new message after that is taken and
    // delivered. The refused one never reaches anybody.
    each_shard_count(|n| {
        let mut s = Scenario::with(n, |c| c.max_queued_messages = 3);
        let sub = id_on("qsub", 0, n);
        let publisher = id_on("qpub", 1, n);
        let hello = |id| {
            let mut h = Hello::new(V5, id);
            h.clean_start = false;
            h.expiry = Some(600);
            h
        };
        let answers = |packets: Vec<Packet>| -> Vec<(u16, u8)> {
            packets
                .iter()
                .map(|p| match p {
                    Packet::PubAck(r) | Packet::PubRec(r) => (r.packet_id.get(), r.reason.0),
                    other => panic!("expected PUBACK/PUBREC, got {other:?}"),
                })
                .collect()
        };
        s.connect(0, hello(&sub));
        connack(&s.received(0));
        s.subscribe(0, "q", QoS::ExactlyOnce);
        assert!(matches!(s.received(0).as_slice(), [Packet::SubAck(_)]));
        s.disconnect(0);
        s.connect(1, hello(&publisher));
        connack(&s.received(1));
        for (i, p) in [b"0", b"1", b"2"].iter().enumerate() {
            s.publish_at(1, "q", *p, QoS::AtLeastOnce, i as u16 + 1);
        }
        s.advance(ms(100));
        assert_eq!(
            answers(s.received(1)),
            [(1, 0), (2, 0), (3, 0)],
            "{n} shards"
        );
        s.publish_at(1, "q", b"3", QoS::ExactlyOnce, 4);
        s.advance(ms(100));
        assert_eq!(answers(s.received(1)), [(4, 0x97)], "{n} shards");
        s.publish_dup(1, "q", b"3", QoS::ExactlyOnce, 4, true);
        s.advance(ms(100));
        assert_eq!(
            answers(s.received(1)),
            [],
            "{n} shards: not read while full"
        );
        s.connect(2, hello(&sub));
        let mut got = Vec::new();
        for _ in 0..20 {
            for p in s.received(2) {
                if let Packet::Publish(p) = p {
                    got.push(p.payload.clone());
                    s.puback(2, p.packet_id.expect("QoS 1"));
                }
            }
            s.advance(ms(10));
        }
        assert_eq!(
            got,
            [&b"0"[..], b"1", b"2"],
            "{n} shards: the refused one never delivered"
        );
        assert_eq!(
            answers(s.received(1)),
            [(4, 0x97)],
            "{n} shards: read again once drained"
        );
        s.publish_at(1, "q", b"4", QoS::AtLeastOnce, 5);
        s.advance(ms(100));
        assert_eq!(answers(s.received(1)), [(5, 0)], "{n} shards: taken");
        let again: Vec<Bytes> = s
            .received(2)
            .into_iter()
            .filter_map(|p| match p {
                Packet::Publish(p) => Some(p.payload),
                _ => None,
            })
            .collect();
        assert_eq!(again, [&b"4"[..]], "{n} shards");
    });
}

#[test]
fn a_publisher_that_is_not_read_from_still_acknowledges_its_own_deliveries() {
    // Issue 12, item 3: a connection owed --max-pending-acks answers is not read from (TCP
    // holds the client back), but never while the broker waits for its acknowledgements. A
    // client subscribed to what it publishes, with a queue of 2 and 3 answers owed at most,
    // sends 12 QoS 1 messages at once: its answers wait for its own queue, which drains only
    // by its PUBACKs. It gets all 12 messages in order [MQTT-4.6.0-6] and all 12 PUBACKs in
    // order [MQTT-4.6.0-2], instead of both sides waiting for each other.
    each_shard_count(|n| {
        let mut s = Scenario::with(n, |c| {
            c.max_queued_messages = 2;
            c.max_pending_acks = 3;
        });
        let id = id_on("loop", 0, n);
        let mut h = Hello::new(V311, &id);
        h.clean_start = false;
        s.connect(0, h);
        connack(&s.received(0));
        s.subscribe(0, "loop", QoS::AtLeastOnce);
        assert!(matches!(s.received(0).as_slice(), [Packet::SubAck(_)]));
        const PAYLOADS: [&[u8]; 12] = [
            b"a", b"b", b"c", b"d", b"e", b"f", b"g", b"h", b"i", b"j", b"k", b"l",
        ];
        for (i, p) in PAYLOADS.iter().enumerate() {
            s.publish_at(0, "loop", p, QoS::AtLeastOnce, i as u16 + 1);
        }
        let (mut got, mut acked) = (Vec::new(), Vec::new());
        for _ in 0..50 {
            for p in s.received(0) {
                match p {
                    Packet::Publish(p) => {
                        got.push(p.payload.clone());
                        s.puback(0, p.packet_id.expect("QoS 1"));
                    }
                    Packet::PubAck(r) => acked.push(r.packet_id.get()),
                    other => panic!("unexpected {other:?}"),
                }
            }
            s.advance(ms(10));
        }
        assert_eq!(got, PAYLOADS, "{n} shards");
        assert_eq!(acked, (1..=12).collect::<Vec<u16>>(), "{n} shards");
    });
}

#[test]
fn a_publisher_to_a_shard_far_behind_waits_and_others_go_on() {
    // Issue 12, item 3: a credit per pair of shards. Shard 0's backlog towards shard 1 is
    // past its bound: a publisher on shard 0 whose QoS 1 message goes to a subscriber on
    // shard 1 is not read any further (its next PUBLISHes wait in TCP), while a client on
    // shard 0 whose messages stay there goes on. Once the backlog is down to a quarter, the
    // first publisher is read again and everything arrives, in order [MQTT-4.6.0-6].
    let n = 2;
    let mut s = Scenario::new(n);
    let far = id_on("farsub", 1, n);
    let near = id_on("nearsub", 0, n);
    let pub_far = id_on("farpub", 0, n);
    s.connect(0, Hello::new(V311, &far));
    connack(&s.received(0));
    s.subscribe(0, "far", QoS::AtLeastOnce);
    assert!(matches!(s.received(0).as_slice(), [Packet::SubAck(_)]));
    s.connect(1, Hello::new(V311, &near));
    connack(&s.received(1));
    s.subscribe(1, "near", QoS::AtLeastOnce);
    assert!(matches!(s.received(1).as_slice(), [Packet::SubAck(_)]));
    s.connect(2, Hello::new(V311, &pub_far));
    connack(&s.received(2));
    s.set_peer_backlog(0, 1, 5_000);
    s.publish_at(2, "far", b"1", QoS::AtLeastOnce, 1);
    s.publish_at(2, "far", b"2", QoS::AtLeastOnce, 2);
    s.publish_at(2, "near", b"3", QoS::AtLeastOnce, 3);
    // The near subscriber publishes to itself: shard 0 only.
    s.publish_at(1, "near", b"self", QoS::AtLeastOnce, 9);
    s.advance(ms(100));
    let take = |s: &mut Scenario, c: usize| -> (Vec<Bytes>, Vec<u16>) {
        let (mut msgs, mut acks) = (Vec::new(), Vec::new());
        for p in s.received(c) {
            match p {
                Packet::Publish(p) => {
                    s.puback(c, p.packet_id.expect("QoS 1"));
                    msgs.push(p.payload);
                }
                Packet::PubAck(r) => acks.push(r.packet_id.get()),
                other => panic!("unexpected {other:?}"),
            }
        }
        (msgs, acks)
    };
    assert_eq!(
        take(&mut s, 0).0,
        [&b"1"[..]],
        "the rest waits with its publisher"
    );
    assert_eq!(
        take(&mut s, 1),
        (vec![Bytes::from_static(b"self")], vec![9]),
        "read on"
    );
    assert_eq!(
        take(&mut s, 2).1,
        [1],
        "answered; its next PUBLISHes are not read"
    );
    s.set_peer_backlog(0, 1, 200);
    s.advance(ms(100));
    assert_eq!(take(&mut s, 0).0, [&b"2"[..]], "read again once it drained");
    assert_eq!(take(&mut s, 1).0, [&b"3"[..]]);
    assert_eq!(take(&mut s, 2).1, [2, 3]);
}

#[test]
fn an_mqtt5_publisher_to_a_connected_slow_subscriber_waits_rather_than_being_refused() {
    // Issue 12: a connected subscriber that does not acknowledge (inflight window of 4 full,
    // queue of 3 full) slows an MQTT 5 publisher down, as a 3.1.1 one: its PUBACKs wait
    // [MQTT-4.6.0-2: in order] instead of 0x97, which would only make a closed-loop publisher
    // send again at once. Once the subscriber acknowledges, every message arrives in order
    // [MQTT-4.6.0-6] and every answer is a success.
    each_shard_count(|n| {
        let mut s = Scenario::with(n, |c| c.max_queued_messages = 3);
        let sub = id_on("csub", 0, n);
        let publisher = id_on("cpub", 1, n);
        s.connect(0, Hello::new(V5, &sub));
        connack(&s.received(0));
        s.subscribe(0, "q", QoS::AtLeastOnce);
        assert!(matches!(s.received(0).as_slice(), [Packet::SubAck(_)]));
        s.connect(1, Hello::new(V5, &publisher));
        connack(&s.received(1));
        const PAYLOADS: [&[u8]; 10] = [b"0", b"1", b"2", b"3", b"4", b"5", b"6", b"7", b"8", b"9"];
        for (i, p) in PAYLOADS.iter().enumerate() {
            s.publish_at(1, "q", p, QoS::AtLeastOnce, i as u16 + 1);
            s.advance(ms(10));
        }
        let take_answers = |s: &mut Scenario, answers: &mut Vec<(u16, u8)>| {
            for p in s.received(1) {
                match p {
                    Packet::PubAck(r) => answers.push((r.packet_id.get(), r.reason.0)),
                    other => panic!("expected PUBACK, got {other:?}"),
                }
            }
        };
        let mut answers = Vec::new();
        take_answers(&mut s, &mut answers);
        assert!(answers.iter().all(|a| a.1 == 0), "{n} shards: {answers:?}");
        assert!(
            answers.len() < 10,
            "{n} shards: answers beyond the queue wait"
        );
        let mut got = Vec::new();
        for _ in 0..20 {
            for p in s.received(0) {
                if let Packet::Publish(p) = p {
                    got.push(p.payload.clone());
                    s.puback(0, p.packet_id.expect("QoS 1"));
                }
            }
            s.advance(ms(10));
            take_answers(&mut s, &mut answers);
        }
        assert_eq!(got, PAYLOADS, "{n} shards");
        let ids: Vec<u16> = (1..=10).collect();
        assert_eq!(answers.iter().map(|a| a.0).collect::<Vec<_>>(), ids);
        assert!(answers.iter().all(|a| a.1 == 0), "{n} shards: {answers:?}");
    });
}

#[test]
fn a_shared_member_the_acl_denies_passes_each_message_to_one_that_may_read() {
    // Issue 13: members of $share/g/team/# on both shards; the ACL keeps dave (on the
    // publisher's shard's peer) from reading team/secret/#. Every QoS 1 message goes to carol
    // and is acknowledged [MQTT-4.8.2-5: to one member; none lost on dave's turn]. With two
    // shards a message offered to dave first travels to his shard and back to carol, on the
    // publisher's shard, whose acknowledgement must not be sent to itself over the mesh.
    const RULES: &str = "user carol\ntopic read team/#\n\nuser dave\ntopic read team/#\n\
                         topic deny team/secret/#\n\nuser boss\ntopic write team/#\n";
    each_shard_count(|n| {
        let mut s = Scenario::with(n, |c| c.acl_file = Some("/scenario/acl".into()));
        s.set_acl(RULES);
        let (carol, dave, boss) = (
            id_on("carol", 0, n),
            id_on("dave", 1, n),
            id_on("boss", 0, n),
        );
        for (c, id, user) in [(0, &carol, "carol"), (1, &dave, "dave"), (2, &boss, "boss")] {
            let mut h = Hello::new(V311, id);
            h.username = Some(user);
            s.connect(c, h);
            connack(&s.received(c));
        }
        s.subscribe(0, "$share/g/team/#", QoS::AtLeastOnce);
        s.subscribe(1, "$share/g/team/#", QoS::AtLeastOnce);
        s.advance(ms(10));
        assert!(matches!(s.received(0).as_slice(), [Packet::SubAck(_)]));
        assert!(matches!(s.received(1).as_slice(), [Packet::SubAck(_)]));
        for i in 0..6u16 {
            s.publish_at(2, "team/secret/plan", b"s", QoS::AtLeastOnce, i + 1);
        }
        s.advance(ms(100));
        let acked = s
            .received(2)
            .iter()
            .filter(|p| matches!(p, Packet::PubAck(_)))
            .count();
        assert_eq!(acked, 6, "{n} shards: every PUBLISH acknowledged");
        // carol's window is 4 (the scenarios' inflight): she acknowledges as they come.
        let mut delivered = 0;
        for _ in 0..5 {
            for p in s.received(0) {
                if let Packet::Publish(p) = p {
                    delivered += 1;
                    s.puback(0, p.packet_id.expect("QoS 1"));
                }
            }
            s.advance(ms(10));
        }
        assert_eq!(delivered, 6, "{n} shards");
        assert!(
            publishes(&s.received(1)).is_empty(),
            "{n} shards: dave got one"
        );
    });
}
