"""Retained messages.  Retained messages are published at QoS 1 because a server
MAY discard retained QoS 0 messages at any time [MQTT-3.3.1-7]."""

import time

import pytest

import rawmqtt as R
from helpers import client_id_on_shard, shard_pair, unique_topic


def _drain(c, timeout=0.3):
    out = []
    while True:
        try:
            out.append(c.recv_publish(timeout))
        except R.ReadTimeout:
            return out


@pytest.mark.parametrize("version", [4, 5])
@pytest.mark.parametrize("placement", ["same_shard", "cross_shard"])
def test_retained_delivered_to_new_subscriber(broker, clients, version, placement):
    """[MQTT-3.3.1-5][MQTT-3.3.1-6][MQTT-3.3.1-8] a retained message is stored and sent to
    later subscribers with RETAIN=1 (publisher and subscriber on the same / different shards)"""
    n = broker.nshards
    pid = client_id_on_shard("rpub", 0, n)
    sid = client_id_on_shard("rsub", 0 if placement == "same_shard" else 1, n)
    t = unique_topic()
    p = clients.raw(broker, version=version)
    p.connect(pid)
    p.publish(t, b"kept", qos=1, retain=True)
    p.disconnect()
    s = clients.raw(broker, version=version)
    s.connect(sid)
    s.subscribe([(t, 1)])
    m = s.recv_publish()
    assert m["payload"] == b"kept" and m["retain"] is True and m["qos"] == 1 and m["topic"] == t
    s.expect_nothing(0.3)


def test_retained_replaced(broker, clients):
    """[MQTT-3.3.1-5] a new retained message replaces the previous one for the topic"""
    pid, sid = shard_pair("rrep", broker.nshards)
    t = unique_topic()
    p = clients.raw(broker)
    p.connect(pid)
    p.publish(t, b"v1", qos=1, retain=True)
    p.publish(t, b"v2", qos=1, retain=True)
    s = clients.raw(broker)
    s.connect(sid)
    s.subscribe([(t, 1)])
    assert [m["payload"] for m in [s.recv_publish()] + _drain(s)] == [b"v2"]


def test_retained_deleted_by_empty_payload(broker, clients):
    """[MQTT-3.3.1-10][MQTT-3.3.1-11] a retained PUBLISH with zero-length payload removes the
    retained message, and is itself delivered normally to current subscribers"""
    pid, sid = shard_pair("rdel", broker.nshards)
    t = unique_topic()
    live = clients.raw(broker)
    live.connect(client_id_on_shard("rlive", 1, broker.nshards))
    live.subscribe([(t, 1)])
    p = clients.raw(broker)
    p.connect(pid)
    p.publish(t, b"soon-gone", qos=1, retain=True)
    assert live.recv_publish()["payload"] == b"soon-gone"
    p.publish(t, b"", qos=1, retain=True)
    m = live.recv_publish()
    assert m["payload"] == b"", "zero-length retained publish is forwarded to existing subscribers"
    s = clients.raw(broker)
    s.connect(sid)
    s.subscribe([(t, 1)])
    s.expect_nothing(0.5)


def test_retained_via_wildcards(broker, clients):
    """[MQTT-3.3.1-6] all retained messages matching a wildcard filter are sent on subscribe"""
    n = broker.nshards
    base = unique_topic()
    topics = [base + "/a", base + "/b", base + "/c/d", base]
    for i, t in enumerate(topics):
        p = clients.raw(broker)
        p.connect(client_id_on_shard("rw%d" % i, i, n))
        p.publish(t, t.encode(), qos=1, retain=True)
        p.disconnect()
    s = clients.raw(broker)
    s.connect(client_id_on_shard("rwsub", 1, n))
    s.subscribe([(base + "/+", 1)])
    got = sorted(m["topic"] for m in [s.recv_publish(), s.recv_publish()] + _drain(s))
    assert got == sorted([base + "/a", base + "/b"])
    s2 = clients.raw(broker)
    s2.connect(client_id_on_shard("rwsub2", 0, n))
    s2.subscribe([(base + "/#", 1)])
    got = [s2.recv_publish() for _ in range(4)] + _drain(s2)
    assert sorted(m["topic"] for m in got) == sorted(topics), "'x/#' also matches parent 'x'"
    assert all(m["retain"] and m["payload"] == m["topic"].encode() for m in got)


@pytest.mark.parametrize("version", [4, 5])
def test_live_delivery_clears_retain_flag(broker, clients, version):
    """[MQTT-3.3.1-9] (v5 [MQTT-3.3.1-12], Retain As Published = 0 by default) a retained
    message forwarded to an existing subscriber has RETAIN=0"""
    pid, sid = shard_pair("rlive", broker.nshards)
    t = unique_topic()
    s = clients.raw(broker, version=version)
    s.connect(sid)
    s.subscribe([(t, 1)])
    p = clients.raw(broker, version=version)
    p.connect(pid)
    p.publish(t, b"live", qos=1, retain=True)
    m = s.recv_publish()
    assert m["payload"] == b"live" and m["retain"] is False


def test_v5_retain_as_published(broker, clients):
    """[MQTT-3.3.1-13] v5 subscription with Retain As Published = 1 keeps RETAIN=1 on live delivery"""
    pid, sid = shard_pair("rap", broker.nshards)
    t = unique_topic()
    s = clients.raw(broker, version=5)
    s.connect(sid)
    s.subscribe([(t, 1 | 0x08)])
    p = clients.raw(broker, version=5)
    p.connect(pid)
    p.publish(t, b"rap", qos=1, retain=True)
    m = s.recv_publish()
    assert m["payload"] == b"rap" and m["retain"] is True


def test_v5_retain_handling(broker, clients):
    """[MQTT-3.3.1-9 v5][MQTT-3.3.1-10 v5][MQTT-3.3.1-11 v5] Retain Handling 0 sends retained on every
    subscribe, 1 only if the subscription is new, 2 never"""
    pid, sid = shard_pair("rh", broker.nshards)
    t = unique_topic()
    p = clients.raw(broker, version=5)
    p.connect(pid)
    p.publish(t, b"r", qos=1, retain=True)
    s = clients.raw(broker, version=5)
    s.connect(sid)
    s.subscribe([(t, 1 | (2 << 4))])
    s.expect_nothing(0.3)
    s.unsubscribe([t])
    s.subscribe([(t, 1 | (1 << 4))])
    assert s.recv_publish()["payload"] == b"r"
    s.subscribe([(t, 1 | (1 << 4))])  # already exists -> not sent
    s.expect_nothing(0.3)
    s.subscribe([(t, 1)])  # retain handling 0 -> sent again
    assert s.recv_publish()["payload"] == b"r"


@pytest.mark.parametrize("stored_qos,sub_qos", [(1, 0), (2, 1), (2, 2), (1, 2)])
def test_retained_qos_is_min(broker, clients, stored_qos, sub_qos):
    """[MQTT-3.8.4-6] retained messages are delivered at min(stored QoS, granted QoS)"""
    pid, sid = shard_pair("rq", broker.nshards)
    t = unique_topic()
    p = clients.raw(broker)
    p.connect(pid)
    p.publish(t, b"q", qos=stored_qos, retain=True)
    s = clients.raw(broker)
    s.connect(sid)
    s.subscribe([(t, sub_qos)])
    m = s.recv_publish()
    assert m["qos"] == min(stored_qos, sub_qos) and m["retain"]


def test_retained_many_topics_across_shards(broker, clients):
    """[MQTT-3.3.1-6] retained messages published from clients on every shard are all visible
    to subscribers on every shard"""
    n = broker.nshards
    base = unique_topic()
    for i in range(10):
        p = clients.raw(broker)
        p.connect(client_id_on_shard("rm%d" % i, i, n))
        p.publish("%s/%d" % (base, i), b"%d" % i, qos=1, retain=True)
        p.disconnect()
    for s_shard in range(n):
        s = clients.raw(broker)
        s.connect(client_id_on_shard("rmsub", s_shard, n))
        s.subscribe([(base + "/#", 1)])
        got = sorted(s.recv_publish()["payload"] for _ in range(10))
        assert got == sorted(b"%d" % i for i in range(10))
        s.expect_nothing(0.2)


def test_retained_survives_publisher_disconnect_and_clean_session(broker, clients):
    """[MQTT-3.3.1-5] retained messages are not part of the session: they survive the publisher's
    (clean) session ending"""
    pid, sid = shard_pair("rsurv", broker.nshards)
    t = unique_topic()
    p = clients.raw(broker)
    p.connect(pid, clean=True)
    p.publish(t, b"still-here", qos=1, retain=True)
    p.close()
    p2 = clients.raw(broker)
    p2.connect(pid, clean=True)
    p2.disconnect()
    s = clients.raw(broker)
    s.connect(sid)
    s.subscribe([(t, 1)])
    assert s.recv_publish()["payload"] == b"still-here"


def _publish_retained(p, topics, payload, window=64):
    """Every topic's retained message at QoS 1, at most `window` unacknowledged."""
    sent = done = 0
    while done < len(topics):
        while sent < len(topics) and sent - done < window:
            p.send(R.publish_packet(topics[sent], payload, 1, retain=True, pid=sent % 65535 + 1,
                                    version=p.version))
            sent += 1
        assert p.recv(30).type == R.PUBACK
        done += 1


@pytest.mark.ringmq_only
@pytest.mark.parametrize("sub_qos", [0, 1])
def test_every_retained_message_reaches_a_wildcard_subscriber_at_its_pace(broker_factory, clients, sub_qos):
    """issue 12, item 4: 20,000 retained messages (4 MB) to a new `prefix/#` subscriber that
    does not read at first, with --max-outgoing-bytes 32 KiB: all of them arrive, QoS 0 ones as
    the connection's output drains instead of being dropped as a slow consumer, QoS 1 ones
    through the session queue; and a message of the same QoS published on one of the topics
    after the SUBSCRIBE comes after that topic's retained message [MQTT-3.3.1-6]
    [MQTT-4.6.0-6]"""
    b = broker_factory(["--max-outgoing-bytes", "32768"])
    pid, sid = shard_pair("rpace%d" % sub_qos, b.nshards)
    prefix = unique_topic("rpace")
    topics = ["%s/%d" % (prefix, i) for i in range(20000)]
    p = clients.raw(b, timeout=30)
    p.connect(pid)
    _publish_retained(p, topics, b"r" * 200)
    s = clients.raw(b, timeout=30)
    s.connect(sid)
    s.send(R.subscribe_packet(1, [(prefix + "/#", sub_qos)]))
    time.sleep(0.3)
    p.publish(topics[-1], b"live", qos=sub_qos)
    time.sleep(0.7)
    assert s.recv(5).type == R.SUBACK
    seen, order = set(), []
    while True:
        try:
            m = s.recv_publish(3)
        except R.ReadTimeout:
            break
        if m["topic"] == topics[-1]:
            order.append((m["retain"], bytes(m["payload"])))
        elif m["retain"]:
            seen.add(m["topic"])
    assert len(seen) == len(topics) - 1, "retained messages lost: %d" % (len(topics) - 1 - len(seen))
    assert order == [(True, b"r" * 200), (False, b"live")]
