"""Codec rules seen from the wire: Variable Byte Integer encoding [MQTT-1.5.5-1] and the MQTT 3.1
exceptions to the 3.1.1 fixed-header flag rules (DUP on retried PUBREL/SUBSCRIBE/UNSUBSCRIBE)."""

import pytest

import rawmqtt as R
from helpers import assert_broker_healthy, client_id_on_shard, unique_topic
from test_bad_input import _connected


def _non_minimal(pkt, extra):
    """``pkt`` (1-byte Remaining Length) with the same length written in 1 + ``extra`` bytes."""
    rl = pkt[1]
    assert rl < 0x80, "body must fit a 1-byte Remaining Length"
    return pkt[:1] + bytes([rl | 0x80] + [0x80] * (extra - 1) + [0x00]) + pkt[2:]


# ------------------------------------------------------------ Variable Byte Integers

@pytest.mark.ringmq_only
@pytest.mark.parametrize("extra", [1, 2, 3], ids=["2-bytes", "3-bytes", "4-bytes"])
def test_connect_with_non_minimal_remaining_length(broker, clients, extra):
    """[MQTT-1.5.5-1] a CONNECT whose Remaining Length uses more bytes than needed (e.g. 10 8D 80 00
    for 13) is malformed: closed without CONNACK. The same CONNECT with the minimal encoding is
    accepted, so only the encoding differs. (mosquitto 2.0.11 only bounds the length to 4 bytes
    and accepts it.)"""
    cid = client_id_on_shard("vbi", 0, broker.nshards)
    pkt = R.connect_packet(cid)
    bad = clients.raw(broker)
    bad.send(_non_minimal(pkt, extra))
    got = bad.expect_closed(3)
    assert all(p.type != R.CONNACK for p in got), got
    good = clients.raw(broker)
    good.send(pkt)
    assert good.expect(R.CONNACK).connack() == (False, 0, {})
    assert_broker_healthy(broker)


# ------------------------------------------------------------ MQTT 3.1 DUP retries

def test_v31_subscribe_with_dup_gets_suback(broker, clients):
    """MQTT 3.1 (level 3) sets DUP on a retried SUBSCRIBE (flags 0x0A = DUP + QoS 1); the fixed
    0010 flags [MQTT-3.8.1-1] are a 3.1.1 rule, so the broker answers SUBACK and subscribes"""
    c = _connected(broker, clients, 3, "v31dup")
    t = unique_topic()
    c.send(R.subscribe_packet(7, [(t, 1)], version=3, flags=0x0A))
    ack = c.expect(R.SUBACK)
    assert ack.pid == 7 and ack.suback_codes(3) == [1]
    c.publish(t, b"after-dup", qos=1)
    assert c.recv_publish()["payload"] == b"after-dup"
    assert_broker_healthy(broker)


def test_v31_unsubscribe_and_pubrel_with_dup(broker, clients):
    """MQTT 3.1: retried UNSUBSCRIBE and PUBREL with DUP (flags 0x0A) are answered
    [MQTT-3.10.1-1, MQTT-3.6.1-1 are 3.1.1 rules]"""
    c = _connected(broker, clients, 3, "v31dup")
    t = unique_topic()
    c.subscribe([(t, 1)])
    c.send(R.packet(R.UNSUBSCRIBE, 0x0A, R.u16(8) + R.ustr(t)))
    assert c.expect(R.UNSUBACK).pid == 8
    pid, _ = c.publish(t, b"q2", qos=2, complete=False)
    assert c.expect(R.PUBREC).pid == pid
    c.send(R.packet(R.PUBREL, 0x0A, R.u16(pid)))
    assert c.expect(R.PUBCOMP).pid == pid
    c.expect_nothing(0.3)  # unsubscribed: the QoS 2 message is not delivered back
    assert_broker_healthy(broker)


def test_v311_subscribe_with_dup_is_closed(broker, clients):
    """[MQTT-3.8.1-1] unchanged for 3.1.1: SUBSCRIBE flags 0x0A are malformed -> close, no SUBACK"""
    c = _connected(broker, clients, 4, "v311dup")
    c.send(R.subscribe_packet(7, [(unique_topic(), 1)], flags=0x0A))
    got = c.expect_closed(3)
    assert all(p.type != R.SUBACK for p in got), got
    assert_broker_healthy(broker)


def test_v31_connect_reserved_flag_accepted(broker, clients):
    """[MQTT-3.1.2-3] is a 3.1.1 rule: an MQTT 3.1 CONNECT with the reserved flag set is accepted"""
    c = clients.raw(broker, version=3)
    assert c.connect(client_id_on_shard("v31res", 0, broker.nshards), reserved_flag=True) == (False, 0, {})
    c.ping()
    assert_broker_healthy(broker)
