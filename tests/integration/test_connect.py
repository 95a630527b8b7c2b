"""CONNECT / CONNACK (MQTT 3.1, 3.1.1 and 5.0)."""

import pytest

import rawmqtt as R
from helpers import assert_broker_healthy, client_id_on_shard, unique_topic


@pytest.mark.parametrize("shard", [0, 1])
def test_connack_v311_exact_bytes(broker, clients, shard):
    """[MQTT-3.2.0-1][MQTT-3.2.2-1] the first packet from the server is CONNACK;
    clean session -> session present 0, return code 0 (exact bytes 20 02 00 00)"""
    c = clients.raw(broker)
    c.send(R.connect_packet(client_id_on_shard("cx", shard, broker.nshards), clean=True))
    p = c.recv()
    assert p.type == R.CONNACK and p.flags == 0
    assert p.body == b"\x00\x00"


def test_connect_mqtt31(broker, clients):
    """[MQTT-3.1.2-1] MQTT 3.1 ('MQIsdp', level 3) clients are accepted and can publish/subscribe"""
    c = clients.raw(broker, version=3)
    assert c.connect("v31-client") == (False, 0, {})
    t = unique_topic()
    c.subscribe([(t, 1)])
    c.publish(t, b"hi", qos=1)
    assert c.recv_publish()["payload"] == b"hi"


def test_connect_paho_all_versions(broker, clients):
    """[MQTT-3.1.2-2] protocol levels 3, 4 and 5 are supported (paho clients connect successfully)"""
    for v in (3, 4, 5):
        c = clients.paho(broker, "paho-v%d" % v, version=v)
        sp, rc, _ = c.connect()
        assert not sp and rc == 0
        c.disconnect()


def test_connect_v5_connack(broker, clients):
    """[MQTT-3.2.2-6 v5] v5 CONNACK: reason code 0, session present 0 for clean start, properties decodable"""
    c = clients.raw(broker, version=5)
    sp, rc, props = c.connect("v5-client", clean=True)
    assert sp is False and rc == 0
    assert isinstance(props, dict)
    # if the server advertises these, they must be sane
    if "receive_maximum" in props:
        assert props["receive_maximum"] > 0
    if "maximum_packet_size" in props:
        assert props["maximum_packet_size"] > 0
    if "maximum_qos" in props:
        assert props["maximum_qos"] in (0, 1)


def test_empty_client_id_clean_session_v311(broker, clients):
    """[MQTT-3.1.3-6][MQTT-3.1.3-7] zero-length client id with clean session 1 is accepted (server assigns an id)"""
    c = clients.raw(broker)
    assert c.connect("", clean=True) == (False, 0, {})
    t = unique_topic()
    c.subscribe([(t, 0)])
    c.publish(t, b"x")
    assert c.recv_publish()["payload"] == b"x"


def test_two_empty_client_ids_are_distinct(broker, clients):
    """[MQTT-3.1.3-6] each client connecting with an empty id gets its own unique id (no takeover between them)"""
    a = clients.raw(broker)
    a.connect("")
    b = clients.raw(broker)
    b.connect("")
    a.ping()
    b.ping()


def test_empty_client_id_persistent_v311_rejected(broker, clients):
    """[MQTT-3.1.3-8][MQTT-3.2.2-5] zero-length client id with clean session 0 -> CONNACK 0x02 then close"""
    c = clients.raw(broker)
    c.send(R.connect_packet("", clean=False))
    p = c.expect(R.CONNACK)
    assert p.body == b"\x00\x02", "session present must be 0 with a non-zero return code [MQTT-3.2.2-4]"
    c.expect_closed(3)
    assert_broker_healthy(broker)


def test_v5_assigned_client_identifier(broker, clients):
    """[MQTT-3.2.2-16 v5] empty client id -> CONNACK carries Assigned Client Identifier, unique per connection"""
    ids = []
    for _ in range(2):
        c = clients.raw(broker, version=5)
        sp, rc, props = c.connect("", clean=True)
        assert rc == 0
        assert props.get("assigned_client_identifier"), props
        ids.append(props["assigned_client_identifier"])
    assert ids[0] != ids[1]


def test_v5_paho_assigned_client_id(broker, clients):
    """[MQTT-3.1.3-7 v5] paho v5 client with empty id is accepted and told its id"""
    c = clients.paho(broker, "", version=5)
    sp, rc, props = c.connect()
    assert rc == 0
    assert getattr(props, "AssignedClientIdentifier", None)


def test_unsupported_protocol_level(broker, clients):
    """[MQTT-3.1.2-2] unsupported protocol level -> CONNACK return code 0x01 then close"""
    c = clients.raw(broker)
    c.send(R.connect_packet("badlevel", version=6))
    got = c.expect_closed(3)
    assert got and got[0].type == R.CONNACK, got
    assert got[0].body[1] in (0x01, 0x84), got
    assert_broker_healthy(broker)


def test_bad_protocol_name(broker, clients):
    """[MQTT-3.1.2-1] protocol name other than MQTT/MQIsdp -> connection closed (CONNACK optional)"""
    c = clients.raw(broker)
    c.send(R.connect_packet("badname", protocol_name="MQTX"))
    got = c.expect_closed(3)
    assert all(p.type == R.CONNACK and p.body[1] != 0 for p in got), got
    assert_broker_healthy(broker)


def test_connect_reserved_flag_set(broker, clients):
    """[MQTT-3.1.2-3] CONNECT reserved flag bit 0 set -> connection closed without accepting"""
    c = clients.raw(broker)
    c.send(R.connect_packet("reserved", reserved_flag=True))
    got = c.expect_closed(3)
    assert all(p.type == R.CONNACK and p.body[1] != 0 for p in got), got
    assert_broker_healthy(broker)


def test_connect_will_qos_3(broker, clients):
    """[MQTT-3.1.2-14] Will QoS 3 -> connection closed"""
    c = clients.raw(broker)
    c.send(R.connect_packet("willq3", will_topic="w/t", will_qos=3))
    got = c.expect_closed(3)
    assert all(p.type == R.CONNACK and p.body[1] != 0 for p in got), got
    assert_broker_healthy(broker)


def test_connect_will_flag_0_but_will_qos(broker, clients):
    """[MQTT-3.1.2-13] Will Flag 0 with non-zero Will QoS -> connection closed"""
    c = clients.raw(broker)
    p = bytearray(R.connect_packet("willflag"))
    p[9] |= 0x08  # connect flags byte: will QoS 1 without will flag
    c.send(bytes(p))
    got = c.expect_closed(3)
    assert all(p.type == R.CONNACK and p.body[1] != 0 for p in got), got
    assert_broker_healthy(broker)


def test_password_without_username_v311(broker, clients):
    """[MQTT-3.1.2-22] v3.1.1: password flag set without user name flag -> connection closed"""
    c = clients.raw(broker)
    c.send(R.connect_packet("pwnouser", password="secret"))
    got = c.expect_closed(3)
    assert all(p.type == R.CONNACK and p.body[1] != 0 for p in got), got
    assert_broker_healthy(broker)


def test_username_password_accepted_anonymous(broker, clients):
    """[MQTT-3.1.3-?] user name and password fields are parsed (anonymous broker accepts them)"""
    c = clients.raw(broker)
    assert c.connect("withcreds", username="user", password="pw") == (False, 0, {})
    c.ping()


@pytest.mark.ringmq_only
def test_connack_v5_default_properties(broker, clients):
    """ringmq contract: v5 CONNACK advertises Receive Maximum 32 and Maximum Packet Size 1048576 by default
    (mosquitto's defaults differ: it derives them from its own config)"""
    c = clients.raw(broker, version=5)
    sp, rc, props = c.connect("props-default")
    assert rc == 0
    assert props.get("receive_maximum") == 32, props
    assert props.get("maximum_packet_size") == 1048576, props


def test_connack_v5_configured_properties(broker_factory, clients):
    """[MQTT-3.2.2-? v5 3.2.2.3.3/3.2.2.3.6] configured inflight / max packet size are advertised
    as Receive Maximum and Maximum Packet Size"""
    b = broker_factory(["--max-inflight", "10", "--max-packet-size", "4096"])
    c = clients.raw(b, version=5)
    sp, rc, props = c.connect("props-cfg")
    assert rc == 0
    assert props.get("receive_maximum") == 10, props
    assert props.get("maximum_packet_size") == 4096, props
