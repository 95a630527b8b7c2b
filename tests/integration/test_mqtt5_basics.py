"""MQTT 5.0 specifics: reason codes, properties forwarding, subscription options."""

import time

import pytest

import rawmqtt as R
from helpers import client_id_on_shard, publish_props, shard_pair, unique_topic


def test_puback_no_matching_subscribers(broker, clients):
    """[v5 3.4.2.1] PUBACK reason 0x10 (No matching subscribers) when nobody is subscribed (a MAY; ringmq
    does it, as does mosquitto), 0x00 once a subscriber exists"""
    c = clients.raw(broker, version=5)
    c.connect(client_id_on_shard("p10", 0, broker.nshards))
    t = unique_topic()
    _, ack = c.publish(t, b"x", qos=1)
    assert ack.ack_reason() == 0x10
    s = clients.raw(broker, version=5)
    s.connect(client_id_on_shard("p10s", 1, broker.nshards))
    s.subscribe([(t, 1)])
    _, ack = c.publish(t, b"y", qos=1)
    assert ack.ack_reason() == 0x00
    assert s.recv_publish()["payload"] == b"y"


def test_paho_v5_puback_reason(broker, clients):
    """[v5 3.4.2.1] paho v5 sees reason code 16 (No matching subscribers) on PUBACK"""
    c = clients.paho(broker, "paho-p10", version=5)
    c.connect()
    rc = c.publish(unique_topic(), b"x", qos=1)
    assert rc.value == 0x10


def test_suback_granted_qos_v5(broker, clients):
    """[MQTT-3.9.3-1 v5][MQTT-3.8.4-8] SUBACK contains one reason code per filter = granted QoS"""
    c = clients.raw(broker, version=5)
    c.connect("v5suback")
    codes = c.subscribe([("a/0", 0), ("a/1", 1), ("a/2", 2)])
    assert codes == [0, 1, 2]


def test_unsuback_reason_codes_v5(broker, clients):
    """[MQTT-3.11.3-1 v5] UNSUBACK reason codes: 0x00 for an existing subscription, 0x11 (No subscription
    existed) otherwise, one per filter in order"""
    c = clients.raw(broker, version=5)
    c.connect("v5unsuback")
    c.subscribe([("u/a", 1)])
    p = c.unsubscribe(["u/a", "u/never"])
    _, pos = R.decode_props(p.body, 2)
    assert list(p.body[pos:]) == [0x00, 0x11]


def test_no_local_option(broker, clients):
    """[MQTT-3.8.3-3 v5] No Local = 1: the server does not forward a client's own publications to it"""
    c = clients.raw(broker, version=5)
    c.connect("nolocal")
    t = unique_topic()
    c.subscribe([(t, 1 | 0x04)])
    other = clients.raw(broker, version=5)
    other.connect(client_id_on_shard("nolocal-o", 1, broker.nshards))
    other.subscribe([(t, 1)])
    c.publish(t, b"mine", qos=1)
    assert other.recv_publish()["payload"] == b"mine"
    c.expect_nothing(0.4)


def test_publish_properties_forwarded(broker, clients):
    """[MQTT-3.3.2-4][MQTT-3.3.2-15][MQTT-3.3.2-16][MQTT-3.3.2-17][MQTT-3.3.2-18][MQTT-3.3.2-20 v5]
    Payload Format Indicator, Response Topic, Correlation Data, User Properties (in order) and Content
    Type are forwarded unaltered (cross shard)"""
    sid, pid = shard_pair("props", broker.nshards)
    t = unique_topic()
    s = clients.raw(broker, version=5)
    s.connect(sid)
    s.subscribe([(t, 1)])
    p = clients.raw(broker, version=5)
    p.connect(pid)
    sent = {
        "payload_format_indicator": 1,
        "response_topic": "resp/topic",
        "correlation_data": b"\x00\x01corr",
        "user_property": [("k1", "v1"), ("k2", "v2"), ("k1", "again")],
        "content_type": "text/plain",
    }
    p.publish(t, "héllo".encode(), qos=1, properties=sent)
    m = s.recv_publish()
    assert m["payload"] == "héllo".encode()
    for k, v in sent.items():
        assert m["props"].get(k) == v, (k, m["props"])


def test_message_expiry_forwarded_and_decremented(broker, clients):
    """[MQTT-3.3.2-6 v5] Message Expiry Interval is forwarded, reduced by the time spent waiting"""
    sid, pid = shard_pair("mexp", broker.nshards)
    t = unique_topic()
    s = clients.raw(broker, version=5)
    s.connect(sid, clean=False, properties={"session_expiry_interval": 60})
    s.subscribe([(t, 1)])
    s.disconnect()
    p = clients.raw(broker, version=5)
    p.connect(pid)
    p.publish(t, b"e", qos=1, properties={"message_expiry_interval": 100})
    time.sleep(1.2)
    s = clients.raw(broker, version=5)
    s.connect(sid, clean=False, properties={"session_expiry_interval": 60})
    m = s.recv_publish()
    assert 90 <= m["props"].get("message_expiry_interval", -1) < 100, m["props"]


def test_expired_message_not_delivered(broker, clients):
    """[MQTT-3.3.2-5 v5] a queued message whose Message Expiry Interval has passed is not delivered"""
    sid, pid = shard_pair("mexp2", broker.nshards)
    t = unique_topic()
    s = clients.raw(broker, version=5)
    s.connect(sid, clean=False, properties={"session_expiry_interval": 60})
    s.subscribe([(t, 1)])
    s.disconnect()
    p = clients.raw(broker, version=5)
    p.connect(pid)
    p.publish(t, b"stale", qos=1, properties={"message_expiry_interval": 1})
    p.publish(t, b"fresh", qos=1)
    time.sleep(2.2)
    s = clients.raw(broker, version=5)
    s.connect(sid, clean=False, properties={"session_expiry_interval": 60})
    assert s.recv_publish()["payload"] == b"fresh"
    s.expect_nothing(0.3)


def test_subscription_identifier(broker, clients):
    """[MQTT-3.3.4-3 v5][MQTT-3.2.2-? 3.2.2.3.12] if Subscription Identifiers are available (not advertised as 0),
    the matching subscription's identifier is returned in PUBLISH"""
    s = clients.raw(broker, version=5)
    sp, rc, props = s.connect("subid")
    if props.get("subscription_identifier_available", 1) == 0:
        pytest.skip("server advertises Subscription Identifier Available = 0")
    t = unique_topic()
    s.subscribe([(t, 1)], properties={"subscription_identifier": 42})
    p = clients.raw(broker, version=5)
    p.connect(client_id_on_shard("subid-p", 1, broker.nshards))
    p.publish(t, b"x", qos=1)
    m = s.recv_publish()
    assert m["props"].get("subscription_identifier") == [42]


def test_client_maximum_packet_size_respected(broker, clients):
    """[MQTT-3.1.2-24 v5 (3.1.2.11.4)] the server must not send a packet larger than the client's Maximum Packet
    Size; such a message is discarded for that client [MQTT-3.1.2-25]"""
    sid, pid = shard_pair("cmps", broker.nshards)
    t = unique_topic()
    s = clients.raw(broker, version=5)
    s.connect(sid, properties={"maximum_packet_size": 200})
    s.subscribe([(t, 1)])
    p = clients.raw(broker, version=5)
    p.connect(pid)
    p.publish(t, b"B" * 1000, qos=1)
    p.publish(t, b"small", qos=1)
    m = s.recv_publish()
    assert m["payload"] == b"small"
    s.expect_nothing(0.3)


def test_client_disconnect_reason_accepted(broker, clients):
    """[MQTT-3.14.2-1 v5] client DISCONNECT with reason code and properties is accepted; the broker keeps serving"""
    c = clients.raw(broker, version=5)
    c.connect("discreason", properties={"session_expiry_interval": 10})
    c.send(R.disconnect_packet(5, 0x00, {"session_expiry_interval": 0, "reason_string": "bye"}))
    c.expect_closed(3)
    c = clients.raw(broker, version=5)
    sp, rc, _ = c.connect("discreason", clean=False)
    assert sp is False, "Session Expiry 0 set on DISCONNECT ended the session"


def test_server_sends_disconnect_before_closing_on_protocol_error(broker, clients):
    """[MQTT-4.13.1-1 v5] on a protocol error after CONNECT the server closes the connection, at most
    after a single DISCONNECT with reason code >= 0x80"""
    c = clients.raw(broker, version=5)
    c.connect("v5proto")
    c.send(R.publish_packet("a/+/b", b"x", version=5))
    got = c.expect_closed(3)
    assert len(got) <= 1
    for p in got:
        assert p.type == R.DISCONNECT and p.disconnect_reason() >= 0x80, got


def test_paho_v5_user_properties(broker, clients):
    """[MQTT-3.3.2-17 v5] paho v5: user properties arrive unaltered"""
    sid, pid = shard_pair("pup", broker.nshards)
    t = unique_topic()
    s = clients.paho(broker, sid, version=5)
    s.connect()
    s.subscribe(t, 1)
    p = clients.paho(broker, pid, version=5)
    p.connect()
    p.publish(t, b"x", qos=1, properties=publish_props(UserProperty=[("a", "1"), ("b", "2")]))
    m = s.get()
    assert m.properties.UserProperty == [("a", "1"), ("b", "2")]
