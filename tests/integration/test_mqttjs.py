"""MQTT 5 server features driven by a second, independent client library: MQTT.js (npm `mqtt`,
pinned in js/package.json), through js/scenario.mjs.

Each test runs one scenario in node (20 s at most) with client ids chosen for their shard
(publisher on shard 0, subscriber on shard nshards-1, so --shards 2 crosses shards) and asserts on
the JSON the scenario prints. node and js/node_modules come from `make deps`; without them the
tests fail (they are part of the suite, not optional)."""

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from helpers import client_id_on_shard, unique_topic

JS_DIR = Path(__file__).resolve().parent / "js"
SCENARIO = JS_DIR / "scenario.mjs"
NODE_TIMEOUT = 20
RINGMQ = os.environ.get("RINGMQ_TEST_BROKER", "ringmq").strip().lower() == "ringmq"


def run_js(scenario, broker, ids, topic=None, extra=None):
    """Run one scenario against ``broker``; returns its JSON result. ``extra``: more
    arguments for the scenario."""
    node = shutil.which("node")
    if node is None:
        pytest.fail("node not found: run `make deps` (installs nodejs and npm, then MQTT.js into "
                    "tests/integration/js/node_modules)", pytrace=False)
    if not (JS_DIR / "node_modules" / "mqtt" / "package.json").is_file():
        pytest.fail("MQTT.js not installed in %s: run `make deps` (npm ci --prefix "
                    "tests/integration/js)" % (JS_DIR / "node_modules"), pytrace=False)
    args = {"host": broker.host, "port": broker.port, "ids": ids, "topic": topic,
            **(extra or {})}
    try:
        proc = subprocess.run([node, str(SCENARIO), scenario, json.dumps(args)], cwd=JS_DIR,
                              capture_output=True, text=True, timeout=NODE_TIMEOUT)
    except subprocess.TimeoutExpired as e:
        pytest.fail("scenario %s did not finish within %d s\nstdout: %s\nstderr: %s"
                    % (scenario, NODE_TIMEOUT, e.stdout, e.stderr))
    lines = proc.stdout.strip().splitlines()
    try:
        out = json.loads(lines[-1])
    except (IndexError, ValueError):
        pytest.fail("scenario %s printed no JSON (exit %s)\nstdout: %s\nstderr: %s"
                    % (scenario, proc.returncode, proc.stdout, proc.stderr))
    if proc.returncode != 0 or "scenarioError" in out:
        pytest.fail("scenario %s failed (exit %s): %s\nstderr: %s"
                    % (scenario, proc.returncode, out.get("scenarioError", out), proc.stderr))
    return out


def ids_for(broker, prefix, **shards):
    """Client ids by role: ids_for(b, "x", pub=0, sub=-1) -> {"pub": id on shard 0, "sub": id on
    the last shard}. Negative shards count from the end."""
    n = broker.nshards
    return {role: client_id_on_shard("js-%s-%s" % (prefix, role), s % n, n)
            for role, s in shards.items()}


def payloads(msgs):
    return [m["payload"] for m in msgs]


# ------------------------------------------------------------------ sessions and expiry

def test_session_expiry_and_clean_start(broker):
    """[MQTT-3.1.2-5] a session with Session Expiry Interval 60 outlives the connection and QoS 1
    messages are queued for it [MQTT-3.1.2-23]; [MQTT-3.2.2-2] Session Present 1 on resume
    (0 on a fresh session, [MQTT-3.2.2-3]); [MQTT-3.1.2-4] Clean Start 1 discards it."""
    out = run_js("session", broker, ids_for(broker, "sess", pub=0, sub=-1), unique_topic("js-sess"))
    assert out["firstSessionPresent"] is False
    assert out["resumed"]["sessionPresent"] is True
    assert [(m["payload"], m["qos"]) for m in out["resumed"]["messages"]] == \
        [("q0", 1), ("q1", 1), ("q2", 1)]
    assert out["cleaned"]["sessionPresent"] is False
    assert out["cleaned"]["messages"] == [], "Clean Start must discard the queued message"


def test_message_expiry_interval(broker):
    """[MQTT-3.3.2-6] the Message Expiry Interval forwarded is the received value minus the time
    the message waited (60 s, waited ~2.5 s); [MQTT-3.3.2-5] a message whose interval (1 s) has
    passed is not delivered to the subscriber."""
    out = run_js("message_expiry", broker, ids_for(broker, "mexp", pub=0, sub=-1),
                 unique_topic("js-mexp"))
    assert out["sessionPresent"] is True
    msgs = out["messages"]
    assert payloads(msgs) == ["keep", "plain"], "expired 'stale' must not be delivered: %r" % msgs
    remaining = msgs[0]["props"].get("messageExpiryInterval")
    assert remaining is not None, "Message Expiry Interval must be forwarded: %r" % msgs[0]
    waited = out["waitedMs"] / 1000.0
    assert remaining < 60, "interval not reduced by the %.1f s waited: %r" % (waited, remaining)
    assert 60 - waited - 1.5 <= remaining <= 60 - waited + 1, (remaining, waited)
    assert "messageExpiryInterval" not in msgs[1]["props"], msgs[1]


# ------------------------------------------------------------------ topic aliases

def test_topic_alias_client_to_server(broker):
    """[MQTT-3.3.2-12] MQTT.js (autoAssignTopicAlias, within the server's Topic Alias Maximum
    [MQTT-3.2.2-17]) sets aliases and then sends an empty topic with the alias; the server maps
    it back: subscribers get the full topic names, in order."""
    topic = unique_topic("js-alias-in")
    out = run_js("alias_client_to_server", broker, ids_for(broker, "alin", pub=0, sub=-1), topic)
    assert out["serverTopicAliasMaximum"] >= 1
    if RINGMQ:
        assert out["serverTopicAliasMaximum"] == 64  # --topic-alias-maximum default
    assert any(s["topic"] == "" and s["alias"] for s in out["sent"]), \
        "MQTT.js did not use an alias: %r" % out["sent"]
    order = ["a", "a", "b", "a", "b", "b"]
    assert [(m["topic"], m["payload"]) for m in out["messages"]] == \
        [("%s/%s" % (topic, t), "m%d" % i) for i, t in enumerate(order)]
    # The subscriber did not allow aliases: every PUBLISH to it has the topic and no alias.
    for p in out["received"]:
        assert p["topic"] and "topicAlias" not in p["props"], p


@pytest.mark.ringmq_only  # using aliases towards the client is a MAY; ringmq does
def test_topic_alias_server_to_client(broker):
    """[MQTT-3.1.2-26][MQTT-3.3.2-10] with the client's Topic Alias Maximum 2 the server uses
    aliases 1..2 only; MQTT.js resolves them to the right topics (an unknown or out-of-range
    alias would make it disconnect with an error)."""
    topic = unique_topic("js-alias-out")
    out = run_js("alias_server_to_client", broker, ids_for(broker, "alout", pub=0, sub=-1), topic)
    assert out["error"] is None, out["error"]
    assert [(m["topic"], m["payload"]) for m in out["messages"]] == \
        [("%s/%s" % (topic, t), "m%d" % i) for i, t in enumerate(out["order"])]
    received = out["received"]
    assert len(received) == len(out["order"])
    for p in received:
        alias = p["props"].get("topicAlias")
        assert alias is None or 1 <= alias <= 2, p
    assert any(p["topic"] == "" and p["props"].get("topicAlias") for p in received), \
        "the server never sent an alias alone: %r" % received


# ------------------------------------------------------------------ flow control and sizes

def test_receive_maximum(broker):
    """[MQTT-3.3.4-9] the server does not send more QoS 1 PUBLISHes than the client's Receive
    Maximum (2) without a PUBACK for them; the rest follow as acknowledgements are sent, in order
    [MQTT-4.6.0-6]."""
    out = run_js("receive_maximum", broker, ids_for(broker, "rmax", pub=0, sub=-1),
                 unique_topic("js-rmax"))
    assert out["error"] is None, out["error"]
    assert 1 <= out["whileHeld"] <= 2, "PUBLISHes sent with no PUBACK: %d" % out["whileHeld"]
    assert out["maxOutstanding"] <= 2, out
    assert out["payloads"] == ["r%d" % i for i in range(8)]


def test_client_maximum_packet_size(broker):
    """[MQTT-3.1.2-24] the server does not send a packet larger than the client's Maximum Packet
    Size (200): the 1000-byte message is discarded for that client [MQTT-3.1.2-25], the small one
    published after it still arrives (MQTT.js would fail with 0x95 on an oversized packet)."""
    out = run_js("maximum_packet_size", broker, ids_for(broker, "mps", pub=0, sub=-1),
                 unique_topic("js-mps"))
    assert out["error"] is None, out["error"]
    assert out["closed"] is False
    assert out["payloads"] == ["small"]
    assert out["publishesReceived"] == 1


# ------------------------------------------------------------------ properties forwarded

def test_request_response_properties_forwarded(broker):
    """[MQTT-3.3.2-4] Payload Format Indicator, [MQTT-3.3.2-15] Response Topic, [MQTT-3.3.2-16]
    Correlation Data, [MQTT-3.3.2-17][MQTT-3.3.2-18] User Properties (repeated keys, their order
    kept), [MQTT-3.3.2-20] Content Type are forwarded unaltered; the reply carries the Correlation
    Data back. (MQTT.js represents User Properties as an object of arrays, so order is checked
    among the values of each key.)"""
    topic = unique_topic("js-rr")
    out = run_js("request_response", broker, ids_for(broker, "rr", pub=0, sub=-1), topic)
    req = out["request"]
    assert req["topic"] == topic + "/req" and req["payload"] == '{"q":"ping"}'
    p = req["props"]
    assert p["responseTopic"] == topic + "/resp"
    assert p["correlationData"] == {"hex": "000102ff"}
    assert p["contentType"] == "application/json; charset=utf-8"
    assert p["payloadFormatIndicator"] is True
    assert p["userProperties"] == {"a": ["1", "3"], "b": "2", "k é": ["z", "y", "x"]}
    resp = out["response"]
    assert resp["payload"] == "pong"
    assert resp["props"]["correlationData"] == {"hex": "000102ff"}
    assert resp["props"]["userProperties"] == {"r": ["2", "1"]}


# ------------------------------------------------------------------ subscriptions

def test_subscription_options(broker):
    """[MQTT-3.8.3-3] No Local: a client's own publication is not sent back to it.
    [MQTT-3.3.1-12] Retain As Published 0: RETAIN 0 on forwarded live messages; [MQTT-3.3.1-13]
    Retain As Published 1: RETAIN as published. Retain Handling [MQTT-3.3.1-9] 0: retained sent at
    every subscribe, [MQTT-3.3.1-10] 1: only when the subscription did not exist, [MQTT-3.3.1-11]
    2: never; retained messages sent at subscribe have RETAIN 1 [MQTT-3.3.1-8 (v5 3.3.1.3)]."""
    out = run_js("subscription_options", broker,
                 ids_for(broker, "sopt", pub=0, sub=-1, sub2=1, sub3=-1), unique_topic("js-sopt"))
    assert out["noLocal"]["own"] == [], "No Local subscriber got its own message"
    assert payloads(out["noLocal"]["other"])[:1] == ["live-retained"]
    rap_true = out["retainAsPublished"]["rapTrue"][0]
    rap_false = out["retainAsPublished"]["rapFalse"][0]
    assert rap_true["payload"] == rap_false["payload"] == "live-retained"
    assert rap_true["retain"] is True, "Retain As Published 1 must keep RETAIN"
    assert rap_false["retain"] is False, "Retain As Published 0 must clear RETAIN"
    rh = out["retainHandling"]
    kept = [{"payload": "kept", "retain": True}]
    assert rh["rh0_first"] == kept
    assert rh["rh0_again"] == kept, "Retain Handling 0 sends retained at every subscribe"
    assert rh["rh1_first"] == kept
    assert rh["rh1_again"] == [], "Retain Handling 1: not for an existing subscription"
    assert rh["rh2_first"] == [], "Retain Handling 2: never"


@pytest.mark.ringmq_only  # a single copy for overlapping subscriptions is ringmq's choice
def test_subscription_identifiers(broker):
    """[MQTT-3.3.4-3] the Subscription Identifiers of matching subscriptions are sent with the
    message; [MQTT-3.3.4-4] a single copy for overlapping subscriptions (ids 5 and 7) carries both
    (order not significant). A match of a subscription without an identifier adds none."""
    topic = unique_topic("js-subid")
    out = run_js("subscription_identifiers", broker, ids_for(broker, "subid", pub=0, sub=-1), topic)
    assert out.get("available") in (None, True)
    msgs = out["messages"]
    assert payloads(msgs) == ["both", "seven-and-plain"], msgs
    ids = msgs[0]["props"].get("subscriptionIdentifier")
    assert sorted(ids if isinstance(ids, list) else [ids]) == [5, 7], msgs[0]
    ids = msgs[1]["props"].get("subscriptionIdentifier")
    assert (ids if isinstance(ids, list) else [ids]) == [7], msgs[1]


def test_shared_subscription_across_shards(broker):
    """[MQTT-4.8.2-?] (v5 4.8.2) each message matching a shared subscription goes to exactly one
    member: 30 messages over 3 MQTT.js members (on different shards) arrive once each in total, and
    every member gets a share."""
    n = broker.nshards
    ids = ids_for(broker, "share", pub=0)
    ids["members"] = [client_id_on_shard("js-share-m%d" % i, i % n, n) for i in range(3)]
    out = run_js("shared", broker, ids, unique_topic("js-share"))
    every = sorted(p for member in out["perMember"] for p in member)
    assert every == sorted("s%d" % i for i in range(30)), "each message exactly once: %r" % every
    assert all(out["perMember"]), "every member gets a share: %r" % [len(m) for m in out["perMember"]]


# ------------------------------------------------------------------ will delay

def test_will_delay_interval(broker):
    """[MQTT-3.1.3-9] the Will Message is published when the Will Delay Interval (1 s) has passed
    after the connection dropped without DISCONNECT, not before; a reconnect of the same session
    within the delay (2 s) cancels it (v5 3.1.3.2.2)."""
    out = run_js("will_delay", broker,
                 ids_for(broker, "wd", will1=0, will2=0, sub=-1), unique_topic("js-wd"))
    assert out["delayed"]["payload"] == "gone"
    assert 900 <= out["delayed"]["afterMs"] <= 3000, out["delayed"]
    assert out["cancelled"]["sessionPresent"] is True
    assert out["cancelled"]["messages"] == [], "will sent although the client came back"


# ------------------------------------------------------------------ CONNACK and capabilities

@pytest.mark.ringmq_only  # server keep alive / response information values come from ringmq flags
def test_connack_properties(broker_factory):
    """[MQTT-3.2.2-16] Assigned Client Identifier for an empty client id; [MQTT-3.2.2-21] Server
    Keep Alive (--default-keep-alive 60) for keepalive 0; Response Information when requested
    (v5 3.2.2.3.15); Topic Alias Maximum 64 (--topic-alias-maximum) and Receive Maximum from
    --max-inflight (v5 3.2.2.3.3)."""
    broker = broker_factory(["--max-inflight", "20"])
    out = run_js("connack", broker, ids_for(broker, "cack", a=0, b=-1, c=1))
    assigned = out["emptyId"]["properties"].get("assignedClientIdentifier")
    assert assigned, out["emptyId"]
    assert out["keepaliveZero"]["properties"].get("serverKeepAlive") == 60, out["keepaliveZero"]
    assert "serverKeepAlive" not in out["plain"]["properties"]
    info = out["responseInfo"]["properties"].get("responseInformation")
    assert info, out["responseInfo"]
    assert "responseInformation" not in out["plain"]["properties"]
    for c in out.values():
        assert c["reasonCode"] == 0
        assert c["properties"]["topicAliasMaximum"] == 64
        assert c["properties"]["receiveMaximum"] == 20


@pytest.mark.ringmq_only  # 0x8C rather than 0x87 is ringmq's choice
def test_unsupported_authentication_method(broker):
    """[MQTT-4.12.0-1] a CONNECT with an Authentication Method the server does not support gets
    CONNACK 0x8C (Bad authentication method) and the connection is closed."""
    out = run_js("enhanced_auth", broker, ids_for(broker, "auth", a=0))
    assert out["connack"]["reasonCode"] == 0x8C, out
    assert out["closed"] is True


@pytest.mark.ringmq_only
def test_server_redirection(broker_factory):
    """(v5 4.11) with --server-reference the server answers CONNACK 0x9C (Use another server)
    carrying the Server Reference, and closes the connection [MQTT-3.2.2-7]."""
    broker = broker_factory(["--server-reference", "other:1883"])
    out = run_js("redirect", broker, ids_for(broker, "redir", a=-1))
    assert out["connack"]["reasonCode"] == 0x9C, out
    assert out["connack"]["properties"].get("serverReference") == "other:1883", out
    assert out["closed"] is True


@pytest.mark.ringmq_only
def test_maximum_qos_capability(broker_factory):
    """[MQTT-3.2.2-9] with --max-qos 1 the CONNACK carries Maximum QoS 1; a QoS 2 subscription is
    granted QoS 1 (v5 3.2.2.3.4, [MQTT-3.9.3-1] granted QoS)."""
    broker = broker_factory(["--max-qos", "1"])
    out = run_js("max_qos", broker, ids_for(broker, "mqos", a=-1, pub=0), unique_topic("js-mqos"))
    assert out["connack"]["properties"].get("maximumQoS") == 1, out["connack"]
    assert out["granted"] == [1]
    assert [(m["payload"], m["qos"]) for m in out["messages"]] == [("q1", 1)]
