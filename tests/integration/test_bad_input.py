"""Malformed / hostile input.  After every case the broker must still serve fresh clients on
every shard (assert_broker_healthy)."""

import os
import socket
import time

import pytest

import rawmqtt as R
from conftest import BROKER_KIND
from helpers import assert_broker_healthy, client_id_on_shard


def _connected(broker, clients, version=4, cid="bad"):
    c = clients.raw(broker, version=version)
    c.connect(client_id_on_shard(cid, 1, broker.nshards))
    return c


def _closed_without_success(c, timeout=3.0):
    """Connection closed; at most a failure CONNACK or a v5 DISCONNECT (reason >= 0x80) came first."""
    got = c.expect_closed(timeout)
    for p in got:
        if p.type == R.CONNACK:
            assert p.body[1] != 0, got
        else:
            assert p.type == R.DISCONNECT and (not p.body or p.body[0] >= 0x80), got
    return got


# ------------------------------------------------------------ before CONNECT

@pytest.mark.parametrize("first", [
    R.publish_packet("a/b", b"x"),
    R.pingreq_packet(),
    R.subscribe_packet(1, [("a/b", 0)]),
    R.disconnect_packet(),
], ids=["publish", "pingreq", "subscribe", "disconnect"])
def test_first_packet_not_connect(broker, clients, first):
    """[MQTT-3.1.0-1] the first packet from the client must be CONNECT; otherwise the connection is closed"""
    c = clients.raw(broker)
    c.send(first)
    got = c.expect_closed(3)
    assert all(p.type != R.PINGRESP and p.type != R.SUBACK for p in got), got
    assert_broker_healthy(broker)


def test_garbage_bytes(broker, clients):
    """[MQTT-4.8.0-1] random bytes instead of CONNECT -> connection closed"""
    c = clients.raw(broker)
    c.try_send(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n" + os.urandom(64))
    c.expect_closed(3)
    assert_broker_healthy(broker)


@pytest.mark.ringmq_only
def test_silent_socket_closed_after_connect_timeout(broker_factory, clients):
    """ringmq contract: a socket that never sends CONNECT is closed after --connect-timeout (2 s)
    (mosquitto has no such option; it uses a fixed ~90 s)"""
    b = broker_factory(["--connect-timeout", "2"])
    c = clients.raw(b)
    start = time.monotonic()
    c.expect_closed(4.5)
    assert time.monotonic() - start >= 1.5
    assert_broker_healthy(b)


@pytest.mark.ringmq_only
def test_partial_connect_then_silence(broker_factory, clients):
    """ringmq contract: a CONNECT that never completes is closed after --connect-timeout
    (mosquitto waits ~90 s)"""
    b = broker_factory(["--connect-timeout", "2"])
    c = clients.raw(b)
    pkt = R.connect_packet("partial")
    c.send(pkt[: len(pkt) // 2])
    start = time.monotonic()
    c.expect_closed(4.5)
    assert time.monotonic() - start >= 1.5
    assert_broker_healthy(b)


def test_many_silent_sockets_do_not_block_others(broker, clients):
    """[MQTT-4.8.0-?] 50 idle unauthenticated sockets do not prevent other clients from being served"""
    idle = [socket.create_connection((broker.host, broker.port)) for _ in range(50)]
    try:
        assert_broker_healthy(broker)
    finally:
        for s in idle:
            s.close()


# ------------------------------------------------------------ CONNECT problems

@pytest.mark.parametrize("version", [4, 5])
def test_second_connect_closes(broker, clients, version):
    """[MQTT-3.1.0-2] a second CONNECT on a connection is a protocol violation -> close"""
    c = _connected(broker, clients, version)
    c.send(R.connect_packet("again", version=version))
    _closed_without_success(c)
    assert_broker_healthy(broker)


def test_truncated_connect_body(broker, clients):
    """[MQTT-4.8.0-1][MQTT-1.5.3-?] CONNECT whose client id length runs past the packet end -> close"""
    c = clients.raw(broker)
    body = R.ustr("MQTT") + bytes([4, 2]) + R.u16(60) + R.u16(50) + b"short"
    c.send(R.packet(R.CONNECT, 0, body))
    _closed_without_success(c)
    assert_broker_healthy(broker)


def test_connect_with_flags_in_fixed_header(broker, clients):
    """[MQTT-2.2.2-2] CONNECT with non-zero fixed header flags -> close"""
    c = clients.raw(broker)
    pkt = bytearray(R.connect_packet("flags"))
    pkt[0] |= 0x01
    c.send(bytes(pkt))
    _closed_without_success(c)
    assert_broker_healthy(broker)


# ------------------------------------------------------------ framing

@pytest.mark.parametrize("version", [4, 5])
def test_remaining_length_too_long(broker, clients, version):
    """[MQTT-2.2.3] (v5 1.5.5) remaining length with more than 4 bytes is malformed -> close"""
    c = _connected(broker, clients, version)
    c.send(b"\x30\xff\xff\xff\xff\x01")
    _closed_without_success(c)
    assert_broker_healthy(broker)


@pytest.mark.ringmq_only
def test_malformed_v5_gets_disconnect_0x81(broker, clients):
    """[MQTT-4.13.1-1 v5] after CONNECT, a malformed packet gets DISCONNECT 0x81 before close (SHOULD;
    ringmq contract; mosquitto 2.0.11 just closes)"""
    c = _connected(broker, clients, 5)
    c.send(b"\x30\xff\xff\xff\xff\x01")
    got = c.expect_closed(3)
    assert [(p.type, p.disconnect_reason()) for p in got] == [(R.DISCONNECT, 0x81)], got
    assert_broker_healthy(broker)


@pytest.mark.parametrize("version", [4, 5])
def test_oversized_packet(broker_factory, clients, version):
    """[MQTT-3.1.2-24 v5/ringmq contract] PUBLISH larger than --max-packet-size 1024 -> close
    (v5: DISCONNECT 0x95 Packet too large first); smaller ones still work"""
    b = broker_factory(["--max-packet-size", "1024"])
    ok = clients.raw(b, version=version)
    ok.connect(client_id_on_shard("oksize", 0, b.nshards))
    ok.subscribe([("big/t", 1)])
    ok.publish("big/t", b"x" * 900, qos=1)
    assert len(ok.recv_publish()["payload"]) == 900
    c = _connected(b, clients, version, "oversize")
    c.try_send(R.publish_packet("big/t", b"x" * 2000, qos=1, pid=1, version=version))
    got = _closed_without_success(c)
    if version == 5:
        assert [(p.type, p.disconnect_reason()) for p in got] == [(R.DISCONNECT, 0x95)], got
    ok.expect_nothing(0.3)
    assert_broker_healthy(b)


def test_oversized_announced_length_closed_promptly(broker_factory, clients):
    """[ringmq contract] a fixed header announcing 100 MB is rejected as soon as the length is read
    (the broker does not wait for / buffer the body)"""
    b = broker_factory(["--max-packet-size", "1024"])
    c = _connected(b, clients, 4)
    c.send(b"\x30" + R.varint(100 * 1024 * 1024))
    start = time.monotonic()
    _closed_without_success(c, 3)
    assert time.monotonic() - start < 2.0
    assert_broker_healthy(b)


# ------------------------------------------------------------ reserved flags / packet ids

@pytest.mark.parametrize("pkt,rule", [
    (R.packet(R.SUBSCRIBE, 0x00, R.u16(1) + R.ustr("a/b") + b"\x00"), "MQTT-3.8.1-1"),
    (R.packet(R.UNSUBSCRIBE, 0x00, R.u16(1) + R.ustr("a/b")), "MQTT-3.10.1-1"),
    (R.packet(R.PUBREL, 0x00, R.u16(1)), "MQTT-3.6.1-1"),
    (R.packet(R.PUBLISH, 0x06, R.ustr("a/b") + R.u16(1)), "MQTT-3.3.1-4"),
], ids=["subscribe-flags0", "unsubscribe-flags0", "pubrel-flags0", "publish-qos3"])
def test_reserved_flags(broker, clients, pkt, rule):
    """[MQTT-2.2.2-2][MQTT-3.8.1-1][MQTT-3.10.1-1][MQTT-3.6.1-1][MQTT-3.3.1-4] invalid fixed-header flags -> close"""
    c = _connected(broker, clients)
    c.send(pkt)
    _closed_without_success(c)
    assert_broker_healthy(broker)


@pytest.mark.ringmq_only
def test_pingreq_reserved_flags(broker, clients):
    """[MQTT-2.2.2-2] PINGREQ with non-zero flags -> close (mosquitto 2.0.11 answers PINGRESP instead)"""
    c = _connected(broker, clients)
    c.send(b"\xc1\x00")
    _closed_without_success(c)
    assert_broker_healthy(broker)


@pytest.mark.parametrize("pkt", [
    R.publish_packet("a/b", b"x", qos=1, pid=0),
    R.publish_packet("a/b", b"x", qos=2, pid=0),
    R.subscribe_packet(0, [("a/b", 0)]),
    R.unsubscribe_packet(0, ["a/b"]),
], ids=["publish-q1", "publish-q2", "subscribe", "unsubscribe"])
def test_packet_id_zero(broker, clients, pkt):
    """[MQTT-2.3.1-1] packet identifier 0 is invalid -> close"""
    c = _connected(broker, clients)
    c.send(pkt)
    _closed_without_success(c)
    assert_broker_healthy(broker)


# ------------------------------------------------------------ topics

@pytest.mark.parametrize("version", [4, 5])
@pytest.mark.parametrize("raw_topic", [b"a/\xff\xfe", b"a/\xed\xa0\x80", b"a/\x00b", b""],
                         ids=["invalid-utf8", "surrogate", "nul", "empty"])
def test_bad_publish_topic(broker, clients, version, raw_topic):
    """[MQTT-1.5.3-1][MQTT-1.5.3-2][MQTT-4.7.3-1] invalid UTF-8, U+D800 surrogate, U+0000 or an empty
    topic name in PUBLISH -> close"""
    c = _connected(broker, clients, version)
    c.send(R.publish_packet(None, b"x", raw_topic=raw_topic, version=version))
    _closed_without_success(c)
    assert_broker_healthy(broker)


@pytest.mark.parametrize("version", [4, 5])
@pytest.mark.parametrize("topic", ["a/+", "a/#", "#", "+"])
def test_wildcard_in_publish_topic(broker, clients, version, topic):
    """[MQTT-3.3.2-2] wildcard characters in a PUBLISH topic name -> close"""
    w = clients.raw(broker)
    w.connect(client_id_on_shard("wildwatch", 0, broker.nshards))
    w.subscribe([("#", 0)])
    c = _connected(broker, clients, version)
    c.send(R.publish_packet(topic, b"x", version=version))
    _closed_without_success(c)
    w.expect_nothing(0.2)
    assert_broker_healthy(broker)


def test_subscribe_without_filters(broker, clients):
    """[MQTT-3.8.3-3] SUBSCRIBE with no topic filter is a protocol violation -> close"""
    c = _connected(broker, clients)
    c.send(R.packet(R.SUBSCRIBE, 0x02, R.u16(3)))
    _closed_without_success(c)
    assert_broker_healthy(broker)


def test_subscribe_invalid_utf8_filter(broker, clients):
    """[MQTT-1.5.3-1] SUBSCRIBE with an ill-formed UTF-8 filter -> close"""
    c = _connected(broker, clients)
    c.send(R.packet(R.SUBSCRIBE, 0x02, R.u16(3) + R.u16(3) + b"a/\xff" + b"\x00"))
    _closed_without_success(c)
    assert_broker_healthy(broker)


def test_subscribe_reserved_option_bits_v311(broker, clients):
    """[MQTT-3.8.3-4] v3.1.1: non-zero reserved bits in the requested QoS byte -> close"""
    c = _connected(broker, clients)
    c.send(R.subscribe_packet(3, [("a/b", 0x81)]))
    _closed_without_success(c)
    assert_broker_healthy(broker)


@pytest.mark.ringmq_only
@pytest.mark.parametrize("version", [4, 5])
def test_subscribe_invalid_filter_gets_failure_code(broker, clients, version):
    """[MQTT-3.9.3-? / v5 3.9.3 0x8F] ringmq contract: an invalid filter ('a/#/b', 'a+') gets SUBACK
    0x80 (3.1.1) / 0x8F (v5) for that filter, valid filters in the same SUBSCRIBE are granted.
    Mosquitto 2.0.11 instead closes the connection (v5: DISCONNECT 0x81)."""
    c = _connected(broker, clients, version)
    codes = c.subscribe([("ok/a", 1), ("a/#/b", 1), ("a+", 0), ("ok/+", 0)])
    bad = 0x80 if version == 4 else 0x8F
    assert codes == [1, bad, bad, 0], codes
    c.ping()
    assert_broker_healthy(broker)


# ------------------------------------------------------------ acks for unknown ids

def test_ack_for_unknown_packet_id_is_harmless(broker, clients):
    """[MQTT-4.3.2-?] a PUBACK/PUBREC/PUBCOMP for a packet id the server never used does not break the
    session (ignored, or the connection closed - but the broker keeps serving); PUBREL for an unknown id
    is answered with PUBCOMP [MQTT-4.3.3-?]"""
    c = _connected(broker, clients)
    c.send(R.ack_packet(R.PUBREL, 555))
    comp = c.expect(R.PUBCOMP)
    assert comp.pid == 555
    c.send(R.ack_packet(R.PUBACK, 556))
    c.send(R.ack_packet(R.PUBCOMP, 557))
    try:
        c.ping()
    except (R.ConnectionClosed, AssertionError):
        pass
    assert_broker_healthy(broker)


def test_abrupt_disconnects_mid_packet(broker, clients):
    """[MQTT-4.8.0-?] clients vanishing mid-packet (half a PUBLISH, half a SUBSCRIBE) don't harm the broker"""
    for i in range(20):
        c = _connected(broker, clients, 4 if i % 2 else 5, "abrupt%d" % i)
        pkt = R.publish_packet("a/b", b"x" * 100, qos=1, pid=1, version=c.version) if i % 3 else \
            R.subscribe_packet(1, [("a/#", 1)], c.version)
        c.send(pkt[: len(pkt) // 2])
        c.abort() if i % 2 else c.close()
    assert_broker_healthy(broker)
