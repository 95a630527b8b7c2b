"""Will messages."""

import time

import pytest

import rawmqtt as R
from conftest import BROKER_KIND
from helpers import client_id_on_shard, shard_pair, unique_topic

# Mosquitto 2.0.11 checks keep-alive only every few seconds (a 1 s keep-alive is
# enforced after ~5-6 s), so when validating against mosquitto the upper bound is
# relaxed; against ringmq the bound is 1.5 x keep-alive + 1 s slack.
KA_SLACK = 1.0 if BROKER_KIND == "ringmq" else 6.0


def _watch(broker, clients, topic, shard, version=4):
    s = clients.raw(broker, version=version)
    s.connect(client_id_on_shard("willwatch", shard, broker.nshards))
    s.subscribe([(topic, 2)])
    return s


@pytest.mark.parametrize("version", [4, 5])
@pytest.mark.parametrize("how", ["close", "reset"])
def test_will_on_abnormal_disconnect_cross_shard(broker, clients, version, how):
    """[MQTT-3.1.2-8] the will is published when the network connection is closed without DISCONNECT
    (will owner and watcher on different shards)"""
    t = unique_topic("will")
    w = _watch(broker, clients, t, 1)
    c = clients.raw(broker, version=version)
    c.connect(client_id_on_shard("willowner", 0, broker.nshards), will_topic=t, will_payload=b"gone", will_qos=1)
    c.ping()
    if how == "close":
        c.close()
    else:
        c.abort()
    m = w.recv_publish()
    assert m["payload"] == b"gone" and m["topic"] == t and m["qos"] == 1
    assert m["retain"] is False


@pytest.mark.parametrize("version", [4, 5])
def test_no_will_after_normal_disconnect(broker, clients, version):
    """[MQTT-3.1.2-10] (v5 [MQTT-3.14.4-3]) the will is discarded on a normal DISCONNECT"""
    t = unique_topic("will")
    w = _watch(broker, clients, t, 1)
    c = clients.raw(broker, version=version)
    c.connect(client_id_on_shard("willnormal", 0, broker.nshards), will_topic=t, will_payload=b"nope")
    c.disconnect()
    w.expect_nothing(0.7)


def test_will_on_keepalive_expiry(broker, clients):
    """[MQTT-3.1.2-8][MQTT-3.1.2-24] a client that goes silent past 1.5 x keep-alive is
    disconnected and its will published"""
    t = unique_topic("will")
    w = _watch(broker, clients, t, 1)
    c = clients.raw(broker)
    c.connect(client_id_on_shard("willka", 0, broker.nshards), keepalive=1,
              will_topic=t, will_payload=b"timeout", will_qos=1)
    start = time.monotonic()
    m = w.recv_publish(timeout=1.5 + KA_SLACK + 1)
    elapsed = time.monotonic() - start
    assert m["payload"] == b"timeout"
    assert elapsed >= 0.9, "disconnected before the keep-alive period elapsed (%.2fs)" % elapsed
    c.expect_closed(2)


def test_will_retain_flag(broker, clients):
    """[MQTT-3.1.2-17] a will with Will Retain = 1 is published as a retained message"""
    t = unique_topic("will")
    c = clients.raw(broker)
    c.connect(client_id_on_shard("willret", 0, broker.nshards), will_topic=t,
              will_payload=b"retained-will", will_qos=1, will_retain=True)
    w = _watch(broker, clients, t, 1)
    c.close()
    live = w.recv_publish()
    assert live["payload"] == b"retained-will"
    later = clients.raw(broker)
    later.connect(client_id_on_shard("willlater", 0, broker.nshards))
    later.subscribe([(t, 1)])
    m = later.recv_publish()
    assert m["payload"] == b"retained-will" and m["retain"] is True


def test_will_not_retained_without_flag(broker, clients):
    """[MQTT-3.1.2-16] Will Retain = 0: the will is published as a non-retained message"""
    t = unique_topic("will")
    c = clients.raw(broker)
    c.connect(client_id_on_shard("willnoret", 0, broker.nshards), will_topic=t, will_payload=b"w", will_qos=1)
    w = _watch(broker, clients, t, 1)
    c.close()
    assert w.recv_publish()["payload"] == b"w"
    later = clients.raw(broker)
    later.connect(client_id_on_shard("willlater2", 1, broker.nshards))
    later.subscribe([(t, 1)])
    later.expect_nothing(0.4)


@pytest.mark.parametrize("will_qos", [0, 1, 2])
def test_will_qos(broker, clients, will_qos):
    """[MQTT-3.1.2-14][MQTT-3.8.4-6] the will is published with its Will QoS (capped by the subscription)"""
    t = unique_topic("will")
    w = _watch(broker, clients, t, 1)
    c = clients.raw(broker)
    c.connect(client_id_on_shard("willq", 0, broker.nshards), will_topic=t, will_payload=b"q", will_qos=will_qos)
    c.close()
    assert w.recv_publish()["qos"] == will_qos


def test_v5_disconnect_with_will_message(broker, clients):
    """[MQTT-3.14.4-3 v5] DISCONNECT with reason 0x04 (Disconnect with Will Message) publishes the will"""
    t = unique_topic("will")
    w = _watch(broker, clients, t, 1, version=5)
    c = clients.raw(broker, version=5)
    c.connect(client_id_on_shard("will04", 0, broker.nshards), will_topic=t, will_payload=b"asked-for")
    c.disconnect(reason=0x04)
    assert w.recv_publish()["payload"] == b"asked-for"


def test_v5_disconnect_normal_no_will(broker, clients):
    """[MQTT-3.1.2-10 v5] DISCONNECT with reason 0x00 deletes the will"""
    t = unique_topic("will")
    w = _watch(broker, clients, t, 1, version=5)
    c = clients.raw(broker, version=5)
    c.connect(client_id_on_shard("will00", 0, broker.nshards), will_topic=t, will_payload=b"nope")
    c.disconnect(reason=0x00)
    w.expect_nothing(0.7)


@pytest.mark.parametrize("bad", [
    R.packet(R.PUBLISH, 0x06, R.ustr("a/b") + R.u16(1)),
    R.publish_packet("a/b", b"x", qos=1, pid=0),
    b"\x30\xff\xff\xff\xff\x01",
], ids=["qos3", "pid0", "bad-remaining-length"])
def test_will_on_protocol_error(broker, clients, bad):
    """[MQTT-3.1.2-8] the will is published when the server closes the connection because of a
    protocol error / malformed packet"""
    t = unique_topic("will")
    w = _watch(broker, clients, t, 1)
    c = clients.raw(broker)
    c.connect(client_id_on_shard("willproto", 0, broker.nshards), will_topic=t, will_payload=b"bad-client")
    c.send(bad)
    c.expect_closed(3)
    assert w.recv_publish()["payload"] == b"bad-client"


@pytest.mark.ringmq_only
def test_will_on_second_connect(broker, clients):
    """[MQTT-3.1.2-8][MQTT-3.1.0-2] a second CONNECT is a protocol violation; the server closes the
    connection and must publish the will (mosquitto 2.0.11 closes but drops the will in this case)"""
    t = unique_topic("will")
    w = _watch(broker, clients, t, 1)
    c = clients.raw(broker)
    c.connect(client_id_on_shard("will2nd", 0, broker.nshards), will_topic=t, will_payload=b"bad-client")
    c.send(R.connect_packet("will2nd"))
    c.expect_closed(3)
    assert w.recv_publish()["payload"] == b"bad-client"


def test_will_paho(broker, clients):
    """[MQTT-3.1.2-8] paho client will (will_set) published when its socket is dropped"""
    t = unique_topic("will")
    w = clients.paho(broker, client_id_on_shard("pwatch", 1, broker.nshards))
    w.connect()
    w.subscribe(t, 1)
    c = clients.paho(broker, client_id_on_shard("powner", 0, broker.nshards))
    c.connect(will=(t, b"paho-will", 1, False))
    c.kill()
    m = w.get()
    assert m.payload == b"paho-will" and m.qos == 1
