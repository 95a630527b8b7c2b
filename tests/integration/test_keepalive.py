"""Keep-alive, PINGREQ/PINGRESP, server default / maximum keep-alive."""

import time

import pytest

import rawmqtt as R
from conftest import BROKER_KIND
from helpers import assert_broker_healthy

# Mosquitto 2.0.11 only checks keep-alive every few seconds (1 s keep-alive is
# enforced after ~5-6 s); against ringmq the bound is 1.5 x keep-alive + 1 s.
KA_SLACK = 1.0 if BROKER_KIND == "ringmq" else 6.0


def _time_to_close(c, limit):
    start = time.monotonic()
    got = c.expect_closed(limit)
    return time.monotonic() - start, got


@pytest.mark.parametrize("version,keepalive", [(4, 1), (5, 2)])
def test_silent_client_disconnected_within_1_5x(broker, clients, version, keepalive):
    """[MQTT-3.1.2-24] no control packet within 1.5 x keep-alive -> the server disconnects the client
    (and not before the keep-alive period itself)"""
    c = clients.raw(broker, version=version)
    c.connect("ka%d" % keepalive, keepalive=keepalive)
    elapsed, got = _time_to_close(c, 1.5 * keepalive + KA_SLACK)
    assert elapsed >= keepalive * 0.9, "closed too early: %.2fs" % elapsed
    # v5: an optional DISCONNECT 0x8D (Keep Alive timeout) may precede the close
    for p in got:
        assert p.type == R.DISCONNECT and version == 5 and p.disconnect_reason() == 0x8D, got
    assert_broker_healthy(broker)


# "Any packet resets the keep-alive timer" [MQTT-3.1.2-23] and PINGRESP [MQTT-3.12.4-1] are
# checked on a virtual clock in shards/sim/tests/scenarios.rs
# (any_packet_resets_the_keep_alive_timer): exact and instant where these needed 3 s of sleeps.


def test_paho_keepalive_maintains_connection(broker, clients):
    """[MQTT-3.1.2-23] paho with keep-alive 1 s sends PINGREQs and stays connected"""
    c = clients.paho(broker, "pahoka")
    c.connect(keepalive=1)
    time.sleep(3.0)
    assert not c.disconnected.is_set()
    c.subscribe("pahoka/t", 1)
    c.publish("pahoka/t", b"ok", qos=1)
    assert c.get().payload == b"ok"


def test_keepalive_zero_accepted(broker, clients):
    """[3.1.2.10] keep-alive 0 (v3.1.1) is accepted (it switches the client-side mechanism off)"""
    c = clients.raw(broker)
    assert c.connect("ka0", keepalive=0) == (False, 0, {})
    c.ping()


@pytest.mark.ringmq_only
def test_v5_keepalive_zero_gets_server_default(broker, clients):
    """[MQTT-3.2.2-21 v5] ringmq: keep-alive 0 -> Server Keep Alive = default 60 in CONNACK
    (mosquitto instead sends its max_keepalive, 65535)"""
    c = clients.raw(broker, version=5)
    sp, rc, props = c.connect("ka0v5", keepalive=0)
    assert props.get("server_keep_alive") == 60, props


@pytest.mark.ringmq_only
def test_default_keepalive_enforced_v311(broker_factory, clients):
    """[MQTT-3.1.2-24] ringmq: --default-keep-alive 1 applies to a 3.1.1 client sending keep-alive 0
    (mosquitto has no default keep-alive; 0 means no timeout there)"""
    b = broker_factory(["--default-keep-alive", "1"])
    c = clients.raw(b)
    c.connect("dka", keepalive=0)
    elapsed, _ = _time_to_close(c, 1.5 + KA_SLACK)
    assert elapsed >= 0.9
    assert_broker_healthy(b)


@pytest.mark.ringmq_only
def test_default_keepalive_v5_server_keep_alive(broker_factory, clients):
    """[MQTT-3.2.2-21 v5][MQTT-3.1.2-24] ringmq: --default-keep-alive 1 -> v5 client with keep-alive 0
    is told Server Keep Alive 1 and disconnected when silent"""
    b = broker_factory(["--default-keep-alive", "1"])
    c = clients.raw(b, version=5)
    sp, rc, props = c.connect("dka5", keepalive=0)
    assert props.get("server_keep_alive") == 1, props
    _time_to_close(c, 1.5 + KA_SLACK)


def test_v5_max_keepalive_server_keep_alive(broker_factory, clients):
    """[MQTT-3.2.2-21 v5][MQTT-3.1.2-21 v5] --max-keep-alive 10: v5 client asking 30 gets Server Keep Alive 10;
    a client asking 5 gets no override (or 5)"""
    b = broker_factory(["--max-keep-alive", "10"])
    c = clients.raw(b, version=5)
    sp, rc, props = c.connect("maxka", keepalive=30)
    assert rc == 0 and props.get("server_keep_alive") == 10, props
    c2 = clients.raw(b, version=5)
    sp, rc, props = c2.connect("maxka2", keepalive=5)
    assert props.get("server_keep_alive", 5) == 5, props


def test_v311_keepalive_above_max_accepted(broker_factory, clients):
    """ringmq contract: a 3.1.1 client asking more than --max-keep-alive is accepted (mosquitto 2.0.11 too)"""
    b = broker_factory(["--max-keep-alive", "10"])
    c = clients.raw(b)
    assert c.connect("maxka311", keepalive=30) == (False, 0, {})
    c.ping()


@pytest.mark.ringmq_only
@pytest.mark.parametrize("version", [4, 5])
def test_max_keepalive_enforced(broker_factory, clients, version):
    """[MQTT-3.1.2-24] ringmq: --max-keep-alive 1 caps a client's 60 s keep-alive, so a silent client is
    disconnected after ~1.5 s (mosquitto refuses max_keepalive < 10)"""
    b = broker_factory(["--max-keep-alive", "1"])
    c = clients.raw(b, version=version)
    sp, rc, props = c.connect("maxkaenf", keepalive=60)
    if version == 5:
        assert props.get("server_keep_alive") == 1, props
    elapsed, _ = _time_to_close(c, 1.5 + KA_SLACK)
    assert elapsed >= 0.9
