"""Clean vs persistent sessions, offline queueing, v5 Session Expiry."""

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


def test_session_present_flags_v311(broker, clients):
    """[MQTT-3.2.2-1][MQTT-3.2.2-2][MQTT-3.2.2-3] session present: 0 for clean session, 0 for a new
    persistent session, 1 when resuming a persistent session"""
    cid = client_id_on_shard("sp", 1, broker.nshards)
    c = clients.raw(broker)
    assert c.connect(cid, clean=False)[0] is False
    c.disconnect()
    c = clients.raw(broker)
    assert c.connect(cid, clean=False)[0] is True
    c.disconnect()
    c = clients.raw(broker)
    assert c.connect(cid, clean=True)[0] is False
    c.disconnect()
    c = clients.raw(broker)
    assert c.connect(cid, clean=False)[0] is False, "[MQTT-3.1.2-6] clean session discarded the old session"


@pytest.mark.parametrize("placement", ["same_shard", "cross_shard"])
def test_persistent_subscription_survives_reconnect(broker, clients, placement):
    """[MQTT-3.1.2-4][MQTT-3.1.2-5] a persistent session keeps its subscriptions across connections"""
    n = broker.nshards
    sid = client_id_on_shard("psub", 0, n)
    pid = client_id_on_shard("ppub", 0 if placement == "same_shard" else 1, n)
    t = unique_topic()
    s = clients.raw(broker)
    s.connect(sid, clean=False)
    s.subscribe([(t, 1)])
    s.disconnect()
    s = clients.raw(broker)
    assert s.connect(sid, clean=False)[0] is True
    p = clients.raw(broker)
    p.connect(pid)
    p.publish(t, b"still-subscribed", qos=1)
    assert s.recv_publish()["payload"] == b"still-subscribed"


def test_clean_session_discards_subscriptions(broker, clients):
    """[MQTT-3.1.2-6] connecting with clean session 1 discards the previous session's subscriptions"""
    sid, pid = shard_pair("cs", broker.nshards)
    t = unique_topic()
    s = clients.raw(broker)
    s.connect(sid, clean=False)
    s.subscribe([(t, 1)])
    s.disconnect()
    s = clients.raw(broker)
    assert s.connect(sid, clean=True)[0] is False
    p = clients.raw(broker)
    p.connect(pid)
    p.publish(t, b"nobody", qos=1)
    s.expect_nothing(0.5)


@pytest.mark.parametrize("qos", [1, 2])
@pytest.mark.parametrize("placement", ["same_shard", "cross_shard"])
def test_offline_messages_queued_and_delivered(broker, clients, qos, placement):
    """[MQTT-3.1.2-5] QoS 1/2 messages published while a persistent-session client is offline are
    stored and delivered (in order [MQTT-4.6.0-5]) when it reconnects"""
    n = broker.nshards
    sid = client_id_on_shard("off", 0, n)
    pid = client_id_on_shard("offpub", 0 if placement == "same_shard" else 1, n)
    t = unique_topic()
    s = clients.raw(broker)
    s.connect(sid, clean=False)
    s.subscribe([(t, qos)])
    s.disconnect()
    p = clients.raw(broker)
    p.connect(pid)
    for i in range(10):
        p.publish(t, b"off%d" % i, qos=qos)
    s = clients.raw(broker)
    assert s.connect(sid, clean=False)[0] is True
    got = [s.recv_publish() for _ in range(10)]
    assert [m["payload"] for m in got] == [b"off%d" % i for i in range(10)]
    assert all(m["qos"] == qos for m in got)
    s.expect_nothing(0.3)


def test_offline_qos0_not_required_but_harmless(broker, clients):
    """[MQTT-3.1.2-5] QoS 0 messages MAY be queued for an offline session; whatever is delivered on
    reconnect is QoS 0 and a subset of what was published"""
    sid, pid = shard_pair("offq0", broker.nshards)
    t = unique_topic()
    s = clients.raw(broker)
    s.connect(sid, clean=False)
    s.subscribe([(t, 0)])
    s.disconnect()
    p = clients.raw(broker)
    p.connect(pid)
    for i in range(3):
        p.publish(t, b"%d" % i, qos=0)
    p.ping()
    s = clients.raw(broker)
    s.connect(sid, clean=False)
    got = _drain(s, 0.4)
    assert all(m["qos"] == 0 for m in got)
    assert {m["payload"] for m in got} <= {b"0", b"1", b"2"}


def test_paho_persistent_session_offline_queue(broker, clients):
    """[MQTT-3.1.2-4][MQTT-3.1.2-5] paho 3.1.1 client with clean_session=False receives messages
    queued while offline"""
    n = broker.nshards
    sid = client_id_on_shard("pahosess", 1, n)
    t = unique_topic()
    s = clients.paho(broker, sid, clean=False)
    s.connect()
    s.subscribe(t, 1)
    s.disconnect()
    p = clients.paho(broker, client_id_on_shard("pahosesspub", 0, n))
    p.connect()
    p.publish(t, b"queued", qos=1)
    s2 = clients.paho(broker, sid, clean=False)
    sp, rc, _ = s2.connect()
    assert sp is True
    assert s2.get().payload == b"queued"


@pytest.mark.ringmq_only
def test_offline_queue_bounded(broker_factory, clients):
    """ringmq contract: --max-queued-messages 5 with --queue-full drop-new -> at most 5 messages
    are kept for an offline session (mosquitto additionally fills its inflight window for offline
    clients, so it delivers more); the default policy is in test_queue_full.py"""
    b = broker_factory(["--max-queued-messages", "5", "--queue-full", "drop-new"])
    sid, pid = shard_pair("bound", b.nshards)
    t = unique_topic()
    s = clients.raw(b)
    s.connect(sid, clean=False)
    s.subscribe([(t, 1)])
    s.disconnect()
    p = clients.raw(b)
    p.connect(pid)
    for i in range(20):
        p.publish(t, b"%d" % i, qos=1)
    s = clients.raw(b)
    assert s.connect(sid, clean=False)[0] is True
    got = _drain(s, 0.7)
    assert 1 <= len(got) <= 5, [m["payload"] for m in got]
    assert len({m["payload"] for m in got}) == len(got)
    # the broker is still healthy and the session still works
    p.publish(t, b"after", qos=1)
    assert s.recv_publish()["payload"] == b"after"


def test_v5_session_expiry_zero_ends_session(broker, clients):
    """[MQTT-3.1.2-? v5 3.1.2.11.2] Session Expiry Interval 0 (default): the session ends when the
    connection closes -> session present 0 on reconnect, subscriptions gone"""
    sid, pid = shard_pair("se0", broker.nshards)
    t = unique_topic()
    s = clients.raw(broker, version=5)
    s.connect(sid, clean=False)  # no session expiry property -> 0
    s.subscribe([(t, 1)])
    s.disconnect()
    p = clients.raw(broker, version=5)
    p.connect(pid)
    p.publish(t, b"lost", qos=1)
    s = clients.raw(broker, version=5)
    sp, rc, _ = s.connect(sid, clean=False)
    assert sp is False
    s.expect_nothing(0.4)


def test_v5_session_expiry_keeps_session(broker, clients):
    """[MQTT-3.2.2-2 v5][MQTT-3.1.2-5] Session Expiry Interval > 0 with Clean Start 0: session present 1 on
    reconnect and offline QoS 1 messages are delivered"""
    sid, pid = shard_pair("se60", broker.nshards)
    t = unique_topic()
    s = clients.raw(broker, version=5)
    s.connect(sid, clean=False, properties={"session_expiry_interval": 60})
    s.subscribe([(t, 1)])
    s.disconnect()
    p = clients.raw(broker, version=5)
    p.connect(pid)
    p.publish(t, b"kept", qos=1)
    s = clients.raw(broker, version=5)
    sp, rc, _ = s.connect(sid, clean=False, properties={"session_expiry_interval": 60})
    assert sp is True
    assert s.recv_publish()["payload"] == b"kept"


def test_v5_clean_start_discards_session(broker, clients):
    """[MQTT-3.1.2-4 v5][MQTT-3.2.2-2 v5] Clean Start 1 discards an existing session: session present 0"""
    cid = client_id_on_shard("cstart", 1, broker.nshards)
    s = clients.raw(broker, version=5)
    s.connect(cid, clean=False, properties={"session_expiry_interval": 60})
    s.subscribe([("cs/t", 1)])
    s.disconnect()
    s = clients.raw(broker, version=5)
    sp, rc, _ = s.connect(cid, clean=True, properties={"session_expiry_interval": 60})
    assert sp is False
    s.disconnect()
    s = clients.raw(broker, version=5)
    sp, rc, _ = s.connect(cid, clean=False, properties={"session_expiry_interval": 60})
    assert sp is True  # the new (empty) session created by the clean-start connection persists


# Session expiry on a virtual clock (kept before the interval ends, gone after it):
# shards/sim/tests/scenarios.rs, session_outlives_its_connection_for_its_expiry_interval.


def test_v5_paho_session_expiry(broker, clients):
    """[MQTT-3.2.2-2 v5] paho v5 with SessionExpiryInterval reconnects to its session (session present 1)"""
    from helpers import connect_props
    cid = client_id_on_shard("pahose", 1, broker.nshards)
    c = clients.paho(broker, cid, version=5)
    c.connect(clean_start=False, properties=connect_props(SessionExpiryInterval=30))
    c.subscribe("pahose/t", 1)
    c.disconnect()
    c2 = clients.paho(broker, cid, version=5)
    sp, rc, _ = c2.connect(clean_start=False, properties=connect_props(SessionExpiryInterval=30))
    assert sp is True


def test_broker_restart_serves_again(broker, clients):
    """[ops] after a stop/start on the same port and data dir the broker accepts clients again and
    routes messages (sessions are in memory today, so nothing about session state is asserted)"""
    c = clients.raw(broker)
    c.connect("before-restart", clean=False)
    broker.restart()
    from helpers import assert_broker_healthy
    assert_broker_healthy(broker)
