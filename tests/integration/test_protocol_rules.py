"""Protocol rules the sans-I/O core keeps, seen from the wire: the first byte must start a CONNECT,
clients never send Subscription Identifiers, and an acknowledgement must match the flow it answers."""

import time

import pytest

import rawmqtt as R
from helpers import assert_broker_healthy, unique_topic
from test_bad_input import _closed_without_success, _connected


@pytest.mark.parametrize("first", [0x30, 0x82, 0xC0, 0xE0], ids=["publish", "subscribe", "pingreq", "disconnect"])
def test_first_byte_not_connect_closes_at_once(broker, clients, first):
    """[MQTT-3.1.0-1] a connection whose first byte is not a CONNECT's is closed on that byte,
    without waiting for the Remaining Length or the body it would declare"""
    c = clients.raw(broker)
    started = time.monotonic()
    c.send(bytes([first]))
    got = c.expect_closed(3)
    assert got == [], got
    # Well before any connect timeout: the broker did not wait for more bytes.
    assert time.monotonic() - started < 2.0
    assert_broker_healthy(broker)


def test_publish_with_subscription_identifier_is_protocol_error(broker, clients):
    """[MQTT-3.3.4-6] a PUBLISH from a client carrying a Subscription Identifier is a Protocol
    Error: DISCONNECT 0x82 and close; subscribers get nothing"""
    t = unique_topic()
    sub = _connected(broker, clients, 5, "subid-sub")
    sub.subscribe([(t, 1)])
    c = _connected(broker, clients, 5, "subid-pub")
    c.send(R.publish_packet(t, b"x", qos=1, pid=3, version=5,
                            properties={"subscription_identifier": 7}))
    got = _closed_without_success(c)
    assert [p.disconnect_reason() for p in got if p.type == R.DISCONNECT] == [0x82], got
    sub.expect_nothing(0.5)
    assert_broker_healthy(broker)


def _delivered(broker, clients, version, qos, name):
    """A subscriber that has received (and not acknowledged) one PUBLISH at `qos`."""
    t = unique_topic()
    sub = _connected(broker, clients, version, name)
    sub.subscribe([(t, qos)])
    pub = _connected(broker, clients, version, name + "-pub")
    pub.publish(t, b"m", qos=qos)
    return sub, sub.recv_publish(ack=False)


def _violation_closes(c, version):
    got = _closed_without_success(c)
    if version == 5:
        assert [p.disconnect_reason() for p in got if p.type == R.DISCONNECT] == [0x82], got
    else:
        assert all(p.type != R.DISCONNECT for p in got), got


@pytest.mark.parametrize("version", [4, 5])
@pytest.mark.parametrize("qos,wrong", [
    (1, R.PUBREC), (1, R.PUBCOMP), (2, R.PUBACK), (2, R.PUBCOMP),
], ids=["qos1-pubrec", "qos1-pubcomp", "qos2-puback", "qos2-pubcomp"])
def test_ack_of_the_wrong_type_closes(broker, clients, version, qos, wrong):
    """[MQTT-4.8.0-1] an acknowledgement of the wrong type for an outgoing in-flight message is a
    protocol violation that closes the connection (MQTT 5: DISCONNECT 0x82), rather than being
    ignored while the message keeps its Receive Maximum slot"""
    sub, m = _delivered(broker, clients, version, qos, f"wrongack{qos}{wrong}")
    sub.send(R.ack_packet(wrong, m["pid"], version))
    _violation_closes(sub, version)
    assert_broker_healthy(broker)


@pytest.mark.parametrize("version", [4, 5])
def test_puback_for_a_pubrel_closes(broker, clients, version):
    """[MQTT-4.8.0-1] PUBACK answering a PUBREL (a QoS 2 flow past PUBREC) is a protocol violation"""
    sub, m = _delivered(broker, clients, version, 2, "pubackrel")
    sub.send(R.ack_packet(R.PUBREC, m["pid"], version))
    sub.expect(R.PUBREL, pid=m["pid"])
    sub.send(R.ack_packet(R.PUBACK, m["pid"], version))
    _violation_closes(sub, version)
    assert_broker_healthy(broker)


@pytest.mark.parametrize("version", [4, 5])
def test_right_acks_and_repeated_pubrec_keep_the_connection(broker, clients, version):
    """The matching acknowledgements complete the flows; a repeated PUBREC gets PUBREL again
    [MQTT-4.3.3-?] and is not a violation"""
    sub, m = _delivered(broker, clients, version, 2, "rightack")
    sub.send(R.ack_packet(R.PUBREC, m["pid"], version))
    sub.expect(R.PUBREL, pid=m["pid"])
    sub.send(R.ack_packet(R.PUBREC, m["pid"], version))
    sub.expect(R.PUBREL, pid=m["pid"])
    sub.send(R.ack_packet(R.PUBCOMP, m["pid"], version))
    sub.ping()
    assert_broker_healthy(broker)


def _v5(broker, clients, name, max_packet_size):
    c = clients.raw(broker, version=5)
    cid = f"{name}-{unique_topic().replace('/', '-')}"
    return c, cid, R.connect_packet(cid, version=5, properties={"maximum_packet_size": max_packet_size})


def test_suback_loses_its_reason_string_to_fit_maximum_packet_size(broker, clients):
    """[MQTT-3.1.2-24], [MQTT-3.9.2-1]: the client's Maximum Packet Size applies to every packet;
    the Reason String (and User Properties) are dropped until the SUBACK fits"""
    c, cid, pkt = _v5(broker, clients, "mps-suback", 24)
    c.send(pkt)
    assert c.expect(R.CONNACK).connack(5)[1] == 0
    c.send(R.subscribe_packet(9, [("a/#/b", 1)], version=5))
    ack = c.expect(R.SUBACK, pid=9)
    assert len(ack.body) + 2 <= 24
    props, _ = R.decode_props(ack.body, 2)
    assert "reason_string" not in props, props
    assert ack.suback_codes(5) == [0x8F]
    # Without a limit, the same SUBACK carries the Reason String.
    big, _, bigpkt = _v5(broker, clients, "mps-suback-big", 1 << 20)
    big.send(bigpkt)
    big.expect(R.CONNACK)
    big.send(R.subscribe_packet(9, [("a/#/b", 1)], version=5))
    props, _ = R.decode_props(big.expect(R.SUBACK, pid=9).body, 2)
    assert props.get("reason_string"), props
    assert_broker_healthy(broker)


def test_connack_that_cannot_fit_closes(broker, clients):
    """[MQTT-3.1.2-24], [MQTT-3.2.2-19/20]: a CONNACK larger than the client's Maximum Packet Size
    even without diagnostics is not sent; the connection is closed"""
    c, _, pkt = _v5(broker, clients, "mps-connack", 8)
    c.send(pkt)
    got = c.expect_closed(3)
    assert all(p.type != R.CONNACK for p in got), got
    assert_broker_healthy(broker)


def _read_to_end(sock, timeout=3.0):
    """Everything the socket yields, and how it ended: "eof" (FIN) or "reset"."""
    sock.settimeout(timeout)
    data = b""
    while True:
        try:
            chunk = sock.recv(65536)
        except ConnectionResetError:
            return data, "reset"
        if not chunk:
            return data, "eof"
        data += chunk


def test_client_still_writing_reads_why_it_was_disconnected(broker, clients):
    """After a DISCONNECT with a reason code the broker closes gracefully: the write side is shut
    down (FIN after the DISCONNECT) and what the client still sends is read and discarded for a
    moment, so the connection ends in an orderly close, not a reset that many TCP stacks answer
    by discarding the DISCONNECT the client has not read yet"""
    endings = []
    for _ in range(5):
        c = _connected(broker, clients, 5, "linger")
        # The violation, then more than the broker reads at once (64 KiB): bytes still unread
        # when it decides to close.
        bad = R.publish_packet("t", b"x", qos=1, pid=3, version=5,
                               properties={"subscription_identifier": 7})
        c.send(bad + R.pingreq_packet() * 50_000)
        time.sleep(0.3)
        data, ending = _read_to_end(c.sock)
        # DISCONNECT 0x82 with its Reason String property.
        assert data[:1] == bytes([0xE0]) and data[2] == 0x82, data
        endings.append(ending)
    assert endings == ["eof"] * 5, endings
    assert_broker_healthy(broker)
