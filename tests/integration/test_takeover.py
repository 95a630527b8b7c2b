"""Client id takeover [MQTT-3.1.4-2] (3.1.1 numbering) / [MQTT-3.1.4-3] (v5 numbering).

The accepting shard is chosen by the kernel, so repeated takeovers of one id
exercise both same-shard and cross-shard handoffs when the broker runs 2 shards."""

import pytest

import rawmqtt as R
from helpers import client_id_on_shard, unique_topic


@pytest.mark.parametrize("version", [4, 5])
@pytest.mark.parametrize("home", [0, 1])
def test_takeover_closes_old_connection(broker, clients, version, home):
    """[MQTT-3.1.4-2] a second CONNECT with the same client id closes the existing connection;
    the new one works (repeated 6 times to hit both accept shards)"""
    cid = client_id_on_shard("take", home, broker.nshards)
    t = unique_topic()
    old = clients.raw(broker, version=version)
    old.connect(cid)
    for i in range(6):
        new = clients.raw(broker, version=version)
        sp, rc, _ = new.connect(cid)
        assert rc == 0 and sp is False
        got = old.expect_closed(3)
        for p in got:  # v5 may get DISCONNECT 0x8E first; nothing else
            assert version == 5 and p.type == R.DISCONNECT and p.disconnect_reason() == 0x8E, got
        new.subscribe([(t, 1)])
        new.publish(t, b"%d" % i, qos=1)
        assert new.recv_publish()["payload"] == b"%d" % i
        old = new


@pytest.mark.ringmq_only
def test_takeover_v5_old_client_gets_disconnect_0x8e(broker, clients):
    """[MQTT-3.1.4-3 v5] the old v5 connection receives DISCONNECT 0x8E (Session taken over) before close
    (mosquitto 2.0.11 just closes the socket without the DISCONNECT)"""
    cid = client_id_on_shard("take8e", 1, broker.nshards)
    for i in range(4):
        old = clients.raw(broker, version=5)
        old.connect(cid)
        new = clients.raw(broker, version=5)
        new.connect(cid)
        got = old.expect_closed(3)
        assert len(got) == 1 and got[0].type == R.DISCONNECT and got[0].disconnect_reason() == 0x8E, got
        new.disconnect()


def test_takeover_paho_v5_disconnect_callback(broker, clients):
    """[MQTT-3.1.4-3 v5] paho v5 old client is disconnected on takeover"""
    cid = client_id_on_shard("ptake", 0, broker.nshards)
    old = clients.paho(broker, cid, version=5)
    old.connect()
    new = clients.paho(broker, cid, version=5)
    new.connect()
    old.wait_disconnected()
    new.subscribe("ptake/t", 1)
    new.publish("ptake/t", b"x", qos=1)
    assert new.get().payload == b"x"


def test_takeover_keeps_persistent_session(broker, clients):
    """[MQTT-3.1.4-2][MQTT-3.2.2-2] takeover with clean session 0 resumes the session: session present 1,
    subscriptions kept, messages published during the handoff delivered"""
    n = broker.nshards
    cid = client_id_on_shard("takesess", 0, n)
    t = unique_topic()
    old = clients.raw(broker)
    old.connect(cid, clean=False)
    old.subscribe([(t, 1)])
    p = clients.raw(broker)
    p.connect(client_id_on_shard("takesesspub", 1, n))
    for i in range(3):
        new = clients.raw(broker)
        sp, rc, _ = new.connect(cid, clean=False)
        assert sp is True
        old.expect_closed(3)
        p.publish(t, b"after-%d" % i, qos=1)
        m = new.recv_publish()
        assert m["payload"] == b"after-%d" % i
        old = new


def test_takeover_clean_session_discards_session(broker, clients):
    """[MQTT-3.1.4-2][MQTT-3.1.2-6] takeover with clean session 1 starts a fresh session (session present 0,
    old subscriptions gone)"""
    n = broker.nshards
    cid = client_id_on_shard("takeclean", 1, n)
    t = unique_topic()
    old = clients.raw(broker)
    old.connect(cid, clean=False)
    old.subscribe([(t, 1)])
    new = clients.raw(broker)
    sp, rc, _ = new.connect(cid, clean=True)
    assert sp is False
    old.expect_closed(3)
    p = clients.raw(broker)
    p.connect(client_id_on_shard("takecleanpub", 0, n))
    p.publish(t, b"x", qos=1)
    new.expect_nothing(0.4)


def test_takeover_unacked_qos1_redelivered(broker, clients):
    """[MQTT-4.4.0-1] QoS 1 message delivered to the old connection but not acked is redelivered
    (DUP=1, same packet id) to the new connection of the persistent session"""
    n = broker.nshards
    cid = client_id_on_shard("takeredel", 0, n)
    t = unique_topic()
    old = clients.raw(broker)
    old.connect(cid, clean=False)
    old.subscribe([(t, 1)])
    p = clients.raw(broker)
    p.connect(client_id_on_shard("takeredelpub", 1, n))
    p.publish(t, b"unacked", qos=1)
    m = old.recv_publish(ack=False)
    new = clients.raw(broker)
    assert new.connect(cid, clean=False)[0] is True
    m2 = new.recv_publish(ack=False)
    assert (m2["pid"], m2["payload"], m2["dup"]) == (m["pid"], b"unacked", True)
    new.ack_publish(m2)
    new.expect_nothing(0.3)
