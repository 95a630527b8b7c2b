"""MQTT 5 server features beyond the basics: shared subscriptions across shards, topic aliases in
both directions, Will Delay Interval, CONNACK capabilities from flags and their enforcement,
server redirection, Response Information, Session Expiry maximum, Reason Strings.

Clients are placed on chosen shards (client_id_on_shard) so that every cross-shard path runs
with --shards 2."""

import time

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.subscribeoptions import SubscribeOptions

import rawmqtt
from helpers import client_id_on_shard, connect_props, publish_props, unique_topic

pytestmark = pytest.mark.ringmq_only

V5 = mqtt.MQTTv5


def v5(clients, broker, name, shard=0):
    return clients.paho(broker, client_id_on_shard(name, shard % broker.nshards, broker.nshards),
                        version=5)


def raw5(broker, client_id, **kw):
    c = rawmqtt.RawClient(broker.host, broker.port, version=5)
    sp, rc, props = c.connect(client_id, **kw)
    return c, props


# ------------------------------------------------------------------ shared subscriptions

def test_shared_subscription_each_message_to_one_member_across_shards(broker, clients):
    """[MQTT-4.8.2-?] each message matching a shared subscription goes to exactly one member;
    members on different shards all get a share."""
    topic = unique_topic("share")
    members = []
    for i in range(4):
        c = v5(clients, broker, "share-m%d" % i, i)
        c.connect()
        assert c.subscribe("$share/g1/%s/+" % topic, qos=1)[0].value == 1
        members.append(c)
    pub = v5(clients, broker, "share-pub", 1)
    pub.connect()
    n = 40
    for i in range(n):
        pub.publish("%s/x" % topic, b"m%d" % i, qos=1)
    got = {}
    deadline = time.monotonic() + 5
    while sum(len(v) for v in got.values()) < n and time.monotonic() < deadline:
        for i, c in enumerate(members):
            for m in c.drain(0.05):
                got.setdefault(i, []).append(m.payload)
    every = sorted(p for v in got.values() for p in v)
    assert every == sorted(b"m%d" % i for i in range(n)), "each message exactly once"
    assert len(got) == 4, "every member got a share: %r" % {k: len(v) for k, v in got.items()}
    for c in members:
        c.expect_none(0.2)


def test_shared_and_ordinary_subscriptions_both_receive(broker, clients):
    topic = unique_topic("share2")
    a = v5(clients, broker, "sh2-a", 0)
    b = v5(clients, broker, "sh2-b", 1)
    plain = v5(clients, broker, "sh2-plain", 1)
    for c in (a, b, plain):
        c.connect()
    a.subscribe("$share/g/" + topic, qos=1)
    b.subscribe("$share/g/" + topic, qos=1)
    plain.subscribe(topic, qos=1)
    pub = v5(clients, broker, "sh2-pub", 0)
    pub.connect()
    for i in range(10):
        pub.publish(topic, b"%d" % i, qos=1)
    assert len(plain.get_n(10)) == 10
    shared = a.drain(0.3) + b.drain(0.3)
    assert sorted(m.payload for m in shared) == sorted(b"%d" % i for i in range(10))


def test_shared_subscription_gets_no_retained_messages(broker, clients):
    """Retained messages are not sent on a shared subscription (section 4.8.2)."""
    topic = unique_topic("share-ret")
    pub = v5(clients, broker, "shr-pub", 0)
    pub.connect()
    pub.publish(topic, b"kept", qos=1, retain=True)
    c = v5(clients, broker, "shr-sub", 1)
    c.connect()
    c.subscribe("$share/g/" + topic, qos=1)
    c.expect_none(0.5)
    # Live messages still arrive, without the retain flag.
    pub.publish(topic, b"live", qos=1, retain=True)
    m = c.get()
    assert m.payload == b"live" and not m.retain


def test_shared_no_local_is_a_protocol_error(broker):
    """[MQTT-3.8.3-4] No Local = 1 on a shared subscription is a Protocol Error."""
    c, _ = raw5(broker, "sh-nolocal")
    c.send(rawmqtt.subscribe_packet(1, [("$share/g/t", 1 | 0x04)], version=5))
    p = c.expect(rawmqtt.DISCONNECT)
    assert p.disconnect_reason() == 0x82
    c.expect_closed()


def test_leaving_member_unacknowledged_messages_go_to_another(broker, clients):
    """When a member's session ends with messages it never acknowledged, another member of the
    group gets them (section 4.8.2)."""
    topic = unique_topic("share-leave")
    n = broker.nshards
    # A raw member that receives and never acknowledges, with a one-message window.
    lazy = rawmqtt.RawClient(broker.host, broker.port, version=5)
    lazy.connect(client_id_on_shard("sh-lazy", 0, n),
                 properties={"receive_maximum": 1, "session_expiry_interval": 0})
    assert lazy.subscribe([("$share/g/" + topic, 1)])[0] == 1
    good = v5(clients, broker, "sh-good", n - 1)
    good.connect()
    good.subscribe("$share/g/" + topic, qos=1)
    pub = v5(clients, broker, "sh-lpub", 0)
    pub.connect()
    for i in range(6):
        pub.publish(topic, b"%d" % i, qos=1)
    first = lazy.recv_publish(5, ack=False)
    received = [m.payload for m in good.drain(0.5)]
    # The lazy member's session ends (expiry 0): what it held goes to the other member.
    lazy.abort()
    received += [m.payload for m in good.drain(1.0)]
    assert first["payload"] in received, (first, received)
    assert sorted(set(received)) == sorted(b"%d" % i for i in range(6)), received


def test_shared_subscriptions_can_be_disabled(broker_factory):
    broker = broker_factory(["--shared-subscriptions", "false"])
    c, props = raw5(broker, "sh-off")
    assert props.get("shared_subscription_available") == 0
    assert c.subscribe([("$share/g/t", 1)]) == [0x9E]


# ------------------------------------------------------------------ topic aliases

def test_topic_alias_client_to_server(broker, clients):
    """[MQTT-3.3.2-12] a PUBLISH may set an alias and later use it with an empty topic."""
    topic = unique_topic("alias-in")
    sub = v5(clients, broker, "al-sub", 1)
    sub.connect()
    sub.subscribe(topic, qos=1)
    c, props = raw5(broker, client_id_on_shard("al-pub", 0, broker.nshards))
    assert props["topic_alias_maximum"] == 64
    c.send(rawmqtt.publish_packet(topic, b"one", qos=1, pid=1, version=5,
                                  properties={"topic_alias": 3}))
    c.expect(rawmqtt.PUBACK)
    c.send(rawmqtt.publish_packet("", b"two", qos=1, pid=2, version=5,
                                  properties={"topic_alias": 3}))
    c.expect(rawmqtt.PUBACK)
    assert [(m.topic, m.payload) for m in sub.get_n(2)] == [(topic, b"one"), (topic, b"two")]


@pytest.mark.parametrize("alias,reason", [(0, 0x94), (65, 0x94)])
def test_topic_alias_out_of_range_is_refused(broker, alias, reason):
    """[MQTT-3.3.2-8] alias 0, [MQTT-3.3.2-9] above Topic Alias Maximum: DISCONNECT 0x94."""
    c, _ = raw5(broker, "al-bad-%d" % alias)
    c.send(rawmqtt.publish_packet("t", b"x", version=5, properties={"topic_alias": alias}))
    p = c.expect(rawmqtt.DISCONNECT)
    assert p.disconnect_reason() == reason
    c.expect_closed()


def test_unknown_topic_alias_is_a_protocol_error(broker):
    c, _ = raw5(broker, "al-unknown")
    c.send(rawmqtt.publish_packet("", b"x", version=5, properties={"topic_alias": 5}))
    p = c.expect(rawmqtt.DISCONNECT)
    assert p.disconnect_reason() == 0x82
    c.expect_closed()


def test_topic_alias_server_to_client(broker, clients):
    """A client that allows aliases gets the topic once, then the alias alone; the server never
    uses more aliases than the client allows [MQTT-3.3.2-10]."""
    n = broker.nshards
    sub = rawmqtt.RawClient(broker.host, broker.port, version=5)
    sub.connect(client_id_on_shard("al-out", 0, n), properties={"topic_alias_maximum": 2})
    base = unique_topic("alias-out")
    sub.subscribe([(base + "/#", 0)])
    pub = v5(clients, broker, "al-out-pub", n - 1)
    pub.connect()
    seen = []
    for t in ("a", "a", "b", "c", "a", "c"):
        pub.publish("%s/%s" % (base, t), t.encode(), qos=1)
        seen.append(sub.recv_publish(5))
    aliases = {}
    for m in seen:
        alias = m["props"].get("topic_alias")
        if m["topic"]:
            if alias is not None:
                aliases[alias] = m["topic"]
        else:
            assert alias in aliases, m
            m["topic"] = aliases[alias]
        assert alias is None or 1 <= alias <= 2
    assert [m["topic"].rsplit("/", 1)[1] for m in seen] == ["a", "a", "b", "c", "a", "c"]
    assert seen[1]["topic"] and seen[1]["props"]["topic_alias"] == 1
    # Only two aliases allowed: "c" always goes with its full topic and no alias.
    assert "topic_alias" not in seen[3]["props"] and "topic_alias" not in seen[5]["props"]


def test_no_server_aliases_without_client_permission(broker, clients):
    sub = v5(clients, broker, "al-none", 0)
    sub.connect()
    topic = unique_topic("alias-none")
    sub.subscribe(topic)
    pub = v5(clients, broker, "al-none-pub", 1)
    pub.connect()
    pub.publish(topic, b"1", qos=1)
    pub.publish(topic, b"2", qos=1)
    for m in sub.get_n(2):
        assert m.topic == topic
        assert not hasattr(m.properties, "TopicAlias")


# ------------------------------------------------------------------ will delay

def test_will_delay_sent_after_the_delay(broker, clients):
    """[MQTT-3.1.3-9] the will goes when the Will Delay Interval has passed."""
    topic = unique_topic("wd")
    watcher = v5(clients, broker, "wd-watch", 1)
    watcher.connect()
    watcher.subscribe(topic, qos=1)
    c = rawmqtt.RawClient(broker.host, broker.port, version=5)
    c.connect(client_id_on_shard("wd-1", 0, broker.nshards),
              properties={"session_expiry_interval": 60},
              will_topic=topic, will_payload=b"gone", will_qos=1,
              will_props={"will_delay_interval": 1})
    t0 = time.monotonic()
    c.abort()
    watcher.expect_none(0.6)
    m = watcher.get(timeout=3)
    assert m.payload == b"gone"
    assert time.monotonic() - t0 >= 0.9


# A reconnect within the Will Delay Interval cancels the will, and a session ending before the
# delay sends it then [MQTT-3.1.3-9]: on a virtual clock in shards/sim/tests/scenarios.rs
# (reconnect_within_the_will_delay_cancels_the_will,
# will_goes_when_the_session_ends_before_the_delay).


# ------------------------------------------------------------------ capabilities

def test_connack_capabilities_follow_flags(broker_factory):
    broker = broker_factory(["--max-qos", "1", "--retain-available", "false",
                             "--wildcard-subscriptions", "false",
                             "--subscription-identifiers", "false",
                             "--topic-alias-maximum", "0", "--max-inflight", "20",
                             "--max-packet-size", "50000"])
    c, props = raw5(broker, "caps")
    assert props["maximum_qos"] == 1
    assert props["retain_available"] == 0
    assert props["wildcard_subscription_available"] == 0
    assert props["subscription_identifier_available"] == 0
    assert "topic_alias_maximum" not in props
    assert props["receive_maximum"] == 20
    assert props["maximum_packet_size"] == 50000
    # Granted at most Maximum QoS; wildcards refused with 0xA2.
    assert c.subscribe([("caps/a", 2), ("caps/+", 1)]) == [1, 0xA2]


def test_default_connack_announces_no_limits(broker):
    _, props = raw5(broker, "caps-default")
    for absent in ("maximum_qos", "retain_available", "wildcard_subscription_available",
                   "subscription_identifier_available", "shared_subscription_available"):
        assert absent not in props, absent
    assert props["topic_alias_maximum"] == 64


@pytest.mark.parametrize("flag,packet,reason", [
    (["--max-qos", "1"], dict(qos=2, pid=1), 0x9B),
    (["--retain-available", "false"], dict(retain=True), 0x9A),
])
def test_publish_beyond_capabilities_is_refused(broker_factory, flag, packet, reason):
    """[MQTT-3.2.2-11] QoS above Maximum QoS; [MQTT-3.2.2-14] RETAIN without Retain Available."""
    broker = broker_factory(flag)
    c, _ = raw5(broker, "caps-pub")
    c.send(rawmqtt.publish_packet("t", b"x", version=5, **packet))
    p = c.expect(rawmqtt.DISCONNECT)
    assert p.disconnect_reason() == reason
    c.expect_closed()


@pytest.mark.parametrize("flag,will,reason", [
    (["--max-qos", "0"], dict(will_qos=1), 0x9B),
    (["--retain-available", "false"], dict(will_retain=True), 0x9A),
])
def test_will_beyond_capabilities_refused_at_connect(broker_factory, flag, will, reason):
    """[MQTT-3.2.2-12] [MQTT-3.2.2-13]."""
    broker = broker_factory(flag)
    c = rawmqtt.RawClient(broker.host, broker.port, version=5)
    sp, rc, props = c.connect("caps-will", will_topic="w", will_payload=b"x", expect_rc=None,
                              **will)
    assert rc == reason
    assert props.get("reason_string")


def test_subscription_identifier_when_unavailable(broker_factory):
    broker = broker_factory(["--subscription-identifiers", "false"])
    c, _ = raw5(broker, "subid-off")
    c.send(rawmqtt.subscribe_packet(1, [("t", 1)], version=5,
                                    properties={"subscription_identifier": 5}))
    p = c.expect(rawmqtt.DISCONNECT)
    assert p.disconnect_reason() == 0xA1


def test_session_expiry_lowered_to_server_maximum(broker_factory):
    broker = broker_factory(["--max-session-expiry", "30"])
    _, props = raw5(broker, "sx-max", clean=True, properties={"session_expiry_interval": 3600})
    assert props["session_expiry_interval"] == 30
    _, props = raw5(broker, "sx-ok", properties={"session_expiry_interval": 10})
    assert "session_expiry_interval" not in props


# ------------------------------------------------------------------ redirection etc.

@pytest.mark.parametrize("moved,code", [("false", 0x9C), ("true", 0x9D)])
def test_server_reference_redirects(broker_factory, moved, code):
    broker = broker_factory(["--server-reference", "other.example:1883",
                             "--server-moved", moved])
    c = rawmqtt.RawClient(broker.host, broker.port, version=5)
    sp, rc, props = c.connect("redir", expect_rc=None)
    assert rc == code
    assert props["server_reference"] == "other.example:1883"
    c.expect_closed()
    # MQTT 3.1.1 has no redirection: return code 3, server unavailable.
    c3 = rawmqtt.RawClient(broker.host, broker.port, version=4)
    sp, rc, _ = c3.connect("redir3", expect_rc=None)
    assert rc == 3


def test_response_information_when_requested(broker):
    _, props = raw5(broker, "resp-info", properties={"request_response_information": 1})
    assert props["response_information"] == "response/resp-info"
    _, props = raw5(broker, "resp-none")
    assert "response_information" not in props


def test_reason_strings_only_when_problem_information_allowed(broker_factory):
    """[MQTT-3.1.2-29] with Request Problem Information 0 no Reason String on a SUBACK."""
    broker = broker_factory(["--wildcard-subscriptions", "false"])
    c, _ = raw5(broker, "rs-yes")
    c.send(rawmqtt.subscribe_packet(1, [("a/#", 1)], version=5))
    p = c.expect(rawmqtt.SUBACK)
    props, _ = rawmqtt.decode_props(p.body, 2)
    assert props.get("reason_string"), props
    c2, _ = raw5(broker, "rs-no", properties={"request_problem_information": 0})
    c2.send(rawmqtt.subscribe_packet(1, [("a/#", 1)], version=5))
    p = c2.expect(rawmqtt.SUBACK)
    props, _ = rawmqtt.decode_props(p.body, 2)
    assert "reason_string" not in props
    assert p.suback_codes(5) == [0xA2]


def test_publish_to_assigned_response_topic_round_trip(broker, clients):
    """Request/response metadata is forwarded untouched (Response Topic, Correlation Data,
    Content Type, Payload Format Indicator, User Properties in order)."""
    req = unique_topic("req")
    server = v5(clients, broker, "rr-server", 0)
    server.connect()
    server.subscribe(req, qos=1)
    client = v5(clients, broker, "rr-client", 1)
    client.connect()
    client.subscribe("response/rr", qos=1)
    props = publish_props(ResponseTopic="response/rr", CorrelationData=b"\x01\x02",
                          ContentType="text/plain", PayloadFormatIndicator=1,
                          UserProperty=[("a", "1"), ("b", "2"), ("a", "3")])
    client.publish(req, b"ping", qos=1, properties=props)
    m = server.get()
    p = m.properties
    assert p.ResponseTopic == "response/rr" and p.CorrelationData == b"\x01\x02"
    assert p.ContentType == "text/plain" and p.PayloadFormatIndicator == 1
    assert p.UserProperty == [("a", "1"), ("b", "2"), ("a", "3")]
    server.publish(p.ResponseTopic, b"pong", qos=1,
                   properties=publish_props(CorrelationData=p.CorrelationData))
    r = client.get()
    assert r.payload == b"pong" and r.properties.CorrelationData == b"\x01\x02"


def test_unsupported_authentication_method_gets_0x8c(broker):
    """[MQTT-4.12.0-1] a CONNECT with an Authentication Method the server does not support is
    answered with CONNACK 0x8C Bad authentication method, then the connection closes."""
    c = rawmqtt.RawClient(broker.host, broker.port, version=5)
    sp, rc, props = c.connect("auth-x", expect_rc=None,
                              properties={"authentication_method": "SCRAM-SHA-1",
                                          "authentication_data": b"n,,n=user,r=abc"})
    assert rc == 0x8C
    c.expect_closed()


# ------------------------------------------------------------------ enhanced authentication

SECRET = b"test-secret"
METHOD = "RINGMQ-CHALLENGE-SHA256"


def auth_packet(reason, props):
    return rawmqtt.packet(rawmqtt.AUTH, 0, bytes([reason]) + rawmqtt.props(props))


def auth_props(p):
    assert p.type == rawmqtt.AUTH, p
    props, _ = rawmqtt.decode_props(p.body, 1)
    return p.body[0], props


def answer(client_id, nonce, secret=SECRET):
    import hashlib
    import hmac
    return hmac.new(secret, client_id.encode() + nonce, hashlib.sha256).digest()


@pytest.mark.parametrize("shard", [0, 1])
def test_auth_exchange_challenge_response(broker_factory, shard):
    """Section 4.12: CONNECT with an Authentication Method -> AUTH 0x18 (challenge) -> AUTH
    0x18 (response) -> CONNACK 0x00 naming the method; the exchange runs on the client's home
    shard whichever shard accepted the socket."""
    broker = broker_factory(["--auth-challenge-secret", SECRET.decode()])
    cid = client_id_on_shard("auth-ok", shard % broker.nshards, broker.nshards)
    c = rawmqtt.RawClient(broker.host, broker.port, version=5)
    c.send(rawmqtt.connect_packet(cid, version=5, properties={"authentication_method": METHOD}))
    reason, props = auth_props(c.recv(5))
    assert reason == 0x18 and props["authentication_method"] == METHOD
    nonce = props["authentication_data"]
    assert len(nonce) == 32
    c.send(auth_packet(0x18, {"authentication_method": METHOD,
                              "authentication_data": answer(cid, nonce)}))
    p = c.recv(5)
    sp, rc, props = p.connack(5)
    assert rc == 0 and props["authentication_method"] == METHOD
    # The connection works.
    assert c.subscribe([("auth/t", 1)]) == [1]
    # Re-authentication (AUTH 0x19) with the same method: a new challenge, then AUTH 0x00.
    c.send(auth_packet(0x19, {"authentication_method": METHOD}))
    reason, props = auth_props(c.recv(5))
    assert reason == 0x18
    c.send(auth_packet(0x18, {"authentication_method": METHOD,
                              "authentication_data": answer(cid, props["authentication_data"])}))
    reason, props = auth_props(c.recv(5))
    assert reason == 0x00 and props["authentication_method"] == METHOD
    c.ping()


def test_auth_exchange_wrong_answer_is_refused(broker_factory):
    broker = broker_factory(["--auth-challenge-secret", SECRET.decode()])
    c = rawmqtt.RawClient(broker.host, broker.port, version=5)
    c.send(rawmqtt.connect_packet("auth-bad", version=5,
                                  properties={"authentication_method": METHOD}))
    _, props = auth_props(c.recv(5))
    c.send(auth_packet(0x18, {"authentication_method": METHOD,
                              "authentication_data": answer("auth-bad", props["authentication_data"],
                                                            b"wrong")}))
    sp, rc, _ = c.recv(5).connack(5)
    assert rc == 0x87
    c.expect_closed()


def test_auth_packets_out_of_turn_are_protocol_errors(broker_factory):
    broker = broker_factory(["--auth-challenge-secret", SECRET.decode()])
    # Re-authentication on a connection that did not authenticate with a method.
    c, _ = raw5(broker, "auth-none")
    c.send(auth_packet(0x19, {"authentication_method": METHOD}))
    assert c.expect(rawmqtt.DISCONNECT).disconnect_reason() == 0x82
    # A method other than the configured one: 0x8C.
    c2 = rawmqtt.RawClient(broker.host, broker.port, version=5)
    sp, rc, _ = c2.connect("auth-other", expect_rc=None,
                           properties={"authentication_method": "SCRAM-SHA-256"})
    assert rc == 0x8C
