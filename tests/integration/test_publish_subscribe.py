"""PUBLISH routing, SUBSCRIBE/UNSUBSCRIBE and topic filter matching."""

import os

import pytest

import rawmqtt as R
from helpers import client_id_on_shard, shard_pair, unique_topic


@pytest.mark.parametrize("version", [4, 5])
@pytest.mark.parametrize("placement", ["same_shard", "cross_shard"])
def test_paho_roundtrip(broker, clients, version, placement):
    """[MQTT-3.3.1-?][MQTT-4.5.0-1] a message published to a topic is delivered to a matching
    subscriber (publisher and subscriber on the same / different home shards)"""
    n = broker.nshards
    sub_id = client_id_on_shard("sub", 0, n)
    pub_id = client_id_on_shard("pub", 0 if placement == "same_shard" else 1, n)
    sub = clients.paho(broker, sub_id, version)
    sub.connect()
    t = unique_topic()
    sub.subscribe(t, 1)
    pub = clients.paho(broker, pub_id, version)
    pub.connect()
    for i in range(5):
        pub.publish(t, b"m%d" % i, qos=1)
    got = sub.get_n(5)
    assert [m.payload for m in got] == [b"m%d" % i for i in range(5)], "order per topic [MQTT-4.6.0-5]"
    assert all(m.topic == t for m in got)


def test_suback_and_unsuback_packet_ids(broker, clients):
    """[MQTT-3.8.4-1][MQTT-3.8.4-2][MQTT-3.8.4-5][MQTT-3.10.4-4][MQTT-3.10.4-5]
    SUBACK/UNSUBACK carry the request's packet id, one return code per filter"""
    c = clients.raw(broker)
    c.connect("ids")
    c.send(R.subscribe_packet(4242, [("a/b", 0), ("a/+", 1), ("a/#", 2)]))
    p = c.expect(R.SUBACK)
    assert p.pid == 4242
    assert p.suback_codes() == [0, 1, 2]
    c.send(R.unsubscribe_packet(777, ["a/b", "a/+", "a/#"]))
    p = c.expect(R.UNSUBACK)
    assert p.pid == 777
    assert p.body == R.u16(777), "v3.1.1 UNSUBACK has only a packet id [MQTT-3.11.2]"


def test_unsubscribe_stops_delivery(broker, clients):
    """[MQTT-3.10.4-1][MQTT-3.10.4-2] after UNSUBACK no new messages are delivered for that filter"""
    sid, pid = shard_pair("unsub", broker.nshards)
    s = clients.raw(broker)
    s.connect(sid)
    t = unique_topic()
    s.subscribe([(t, 1)])
    p = clients.raw(broker)
    p.connect(pid)
    p.publish(t, b"before", qos=1)
    assert s.recv_publish()["payload"] == b"before"
    s.unsubscribe([t])
    p.publish(t, b"after", qos=1)
    s.expect_nothing(0.5)


def test_resubscribe_replaces_subscription(broker, clients):
    """[MQTT-3.8.4-3] a SUBSCRIBE with an existing filter replaces it (new QoS, no duplicate delivery)"""
    sid, pid = shard_pair("resub", broker.nshards)
    s = clients.raw(broker)
    s.connect(sid)
    t = unique_topic()
    assert s.subscribe([(t, 2)]) == [2]
    assert s.subscribe([(t, 0)]) == [0]
    p = clients.raw(broker)
    p.connect(pid)
    p.publish(t, b"x", qos=2)
    m = s.recv_publish()
    assert m["qos"] == 0 and m["payload"] == b"x"
    s.expect_nothing(0.5)


MATCH_CASES = [
    # filter, topics that match, topics that don't
    ("sport/tennis/player1/#", ["sport/tennis/player1", "sport/tennis/player1/ranking",
                                "sport/tennis/player1/score/wimbledon"], ["sport/tennis/player2", "sport/tennis"]),
    ("sport/#", ["sport", "sport/tennis", "sport/a/b/c"], ["sports", "spor", "x/sport"]),
    ("#", ["a", "a/b", "/a", "sport"], []),
    ("sport/tennis/+", ["sport/tennis/player1", "sport/tennis/player2"],
     ["sport/tennis/player1/ranking", "sport/tennis"]),
    ("sport/+", ["sport/", "sport/x"], ["sport", "sport/x/y"]),
    ("+/+", ["/finance", "a/b", "a/"], ["a", "a/b/c"]),
    ("/+", ["/finance"], ["finance", "a/b"]),
    ("+", ["a", "finance"], ["/finance", "a/b"]),
    ("a/+/c", ["a/b/c", "a//c"], ["a/b/c/d", "a/c"]),
    ("a/b", ["a/b"], ["A/b", "a/b/", "a/bb", " a/b"]),
]


@pytest.mark.parametrize("filt,matches,nonmatches", MATCH_CASES, ids=[c[0] for c in MATCH_CASES])
def test_topic_filter_matching(broker, clients, filt, matches, nonmatches):
    """[MQTT-4.7.1-1][MQTT-4.7.1-2][MQTT-4.7.1-3][MQTT-4.7.3-?] '#' matches parent and any
    number of levels ('sport/#' matches 'sport'), '+' matches exactly one level (incl. empty),
    topic names are case sensitive"""
    sid, pid = shard_pair("match", broker.nshards)
    s = clients.raw(broker)
    s.connect(sid)
    assert s.subscribe([(filt, 1)]) == [1]
    p = clients.raw(broker)
    p.connect(pid)
    for t in matches + nonmatches:
        p.publish(t, b"x", qos=1)
    got = sorted(s.recv_publish()["topic"] for _ in matches)
    assert got == sorted(matches)
    s.expect_nothing(0.4)


def test_dollar_topics_not_matched_by_leading_wildcards(broker, clients):
    """[MQTT-4.7.2-1] topic filters starting with '#' or '+' do not match topics beginning with '$';
    an explicit '$test/#' filter does"""
    sid, pid = shard_pair("dollar", broker.nshards)
    s = clients.raw(broker)
    s.connect(sid)
    assert s.subscribe([("#", 1), ("+/x", 1), ("+/+", 1)]) == [1, 1, 1]
    s2 = clients.raw(broker)
    s2.connect(client_id_on_shard("dollar2", 1, broker.nshards))
    assert s2.subscribe([("$test/#", 1)]) == [1]
    p = clients.raw(broker)
    p.connect(pid)
    p.publish("$test/x", b"dollar", qos=1)
    m = s2.recv_publish()
    assert m["topic"] == "$test/x" and m["payload"] == b"dollar"
    s.expect_nothing(0.5)
    # and a normal topic still reaches '#'
    p.publish("plain/x", b"plain", qos=1)
    got = [s.recv_publish()["topic"]]
    # '+/x' and '+/+' and '#' overlap: at least one copy
    got += [m["topic"] for m in _drain(s)]
    assert set(got) == {"plain/x"}


def _drain(c, timeout=0.3):
    out = []
    while True:
        try:
            out.append(c.recv_publish(timeout))
        except R.ReadTimeout:
            return out


@pytest.mark.parametrize("version", [4, 5])
def test_overlapping_subscriptions(broker, clients, version):
    """[MQTT-3.3.5-1] (v5 [MQTT-3.3.4-2]) overlapping subscriptions: the message is delivered
    at least once, respecting the maximum QoS of all matching subscriptions; extra copies
    (one per subscription) are allowed"""
    sid, pid = shard_pair("overlap", broker.nshards)
    s = clients.raw(broker, version=version)
    s.connect(sid)
    base = unique_topic()
    opts = [0, 2, 1]
    assert s.subscribe([(base + "/#", 0), (base + "/x", 2), (base + "/+", 1)]) == opts
    p = clients.raw(broker, version=version)
    p.connect(pid)
    p.publish(base + "/x", b"ov", qos=2)
    msgs = [s.recv_publish()] + _drain(s)
    assert 1 <= len(msgs) <= 3, msgs
    assert all(m["payload"] == b"ov" for m in msgs)
    assert max(m["qos"] for m in msgs) == 2, "max QoS of the matching subscriptions must be respected"


def test_client_receives_own_publications(broker, clients):
    """[MQTT-3.8.3-?] v3.1.1 has no No Local: a subscriber receives its own matching publications"""
    c = clients.raw(broker)
    c.connect("selfsub")
    t = unique_topic()
    c.subscribe([(t, 1)])
    c.publish(t, b"self", qos=1)
    assert c.recv_publish()["payload"] == b"self"


@pytest.mark.parametrize("size", [0, 1, 127, 128, 16383, 16384, 200_000, 1_000_000])
def test_payload_sizes_cross_shard(broker, clients, size):
    """[MQTT-2.2.3][MQTT-3.3.3] payloads of any length up to the maximum packet size are
    delivered byte-exact (remaining-length varint boundaries 127/128/16383/16384)"""
    sid, pid = shard_pair("size", broker.nshards)
    s = clients.raw(broker)
    s.connect(sid)
    t = unique_topic()
    s.subscribe([(t, 1)])
    p = clients.raw(broker)
    p.connect(pid)
    payload = os.urandom(size)
    p.publish(t, payload, qos=1, timeout=10)
    m = s.recv_publish(10)
    assert m["payload"] == payload and m["topic"] == t


def test_utf8_topic_roundtrip(broker, clients):
    """[MQTT-1.5.3] UTF-8 topic names (multi-byte, including outside the BMP) are matched and delivered unaltered"""
    sid, pid = shard_pair("utf8", broker.nshards)
    t = "ünïcødé/%s/日本/😀" % unique_topic("u").split("/")[1]
    s = clients.raw(broker)
    s.connect(sid)
    s.subscribe([(t.rsplit("/", 1)[0] + "/+", 1)])
    p = clients.raw(broker)
    p.connect(pid)
    p.publish(t, b"u", qos=1)
    assert s.recv_publish()["topic"] == t


def test_multiple_subscribers_all_receive(broker, clients):
    """[MQTT-3.3.?][MQTT-4.5.0-1] every client with a matching subscription receives the message"""
    n = broker.nshards
    t = unique_topic()
    subs = []
    for i in range(6):
        s = clients.raw(broker)
        s.connect(client_id_on_shard("multi%d" % i, i, n))
        s.subscribe([(t, 1)])
        subs.append(s)
    p = clients.raw(broker)
    p.connect(client_id_on_shard("multipub", 1, n))
    p.publish(t, b"all", qos=1)
    for s in subs:
        assert s.recv_publish()["payload"] == b"all"
