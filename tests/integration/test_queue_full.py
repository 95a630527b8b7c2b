"""Issue 12: a PUBACK/PUBREC says the broker took responsibility for a message, so with the
default settings no acknowledged message is dropped when a subscriber's queue fills
(`--queue-full backpressure`): the publisher's acknowledgements wait until there is room.
Dropping is the operator's explicit choice (drop-new, drop-oldest). Mosquitto drops beyond max_queued_messages, so these are
ringmq's contract."""

import time

import pytest

import rawmqtt as R
from conftest import free_port
from helpers import shard_pair, unique_topic
from test_persistence import metric
from test_publish_subscribe import _drain

def publish_windowed(p, topic, payloads, qos, window=16, timeout=30):
    """Publishes every payload at `qos` with at most `window` unacknowledged, running the QoS 2
    flow; returns the final acknowledgements (PUBACK or PUBREC reason codes) in order."""
    sent, done, reasons = 0, 0, {}
    pid_of = {}
    while done < len(payloads):
        while sent < len(payloads) and sent - done < window:
            pid = sent % 65535 + 1
            pid_of[pid] = sent
            p.send(R.publish_packet(topic, payloads[sent], qos, pid=pid, version=p.version))
            sent += 1
        a = p.recv(timeout)
        i = pid_of.get(a.pid)
        if a.type == R.PUBACK:
            reasons[i] = a.ack_reason() if p.version == 5 else 0
            done += 1
        elif a.type == R.PUBREC:
            reason = a.ack_reason() if p.version == 5 else 0
            if reason >= 0x80:
                reasons[i] = reason
                done += 1
            else:
                p.send(R.ack_packet(R.PUBREL, a.pid, p.version))
        elif a.type == R.PUBCOMP:
            reasons[i] = 0
            done += 1
        else:
            raise AssertionError("unexpected %r" % a)
    return [reasons[i] for i in range(len(payloads))]


def broker_with_metrics(broker_factory, args=()):
    """A broker started with `args` and a metrics endpoint; (broker, metrics port)."""
    mport = free_port()
    return broker_factory(list(args) + ["--metrics-addr", "127.0.0.1:%d" % mport]), mport


def offline_subscriber(broker, clients, name, qos, version=4):
    """A persistent subscriber to a fresh topic that goes offline; its id, the publisher's id
    (on another shard when there are two) and the topic."""
    sid, pid = shard_pair(name, broker.nshards)
    topic = unique_topic(name)
    s = clients.raw(broker, timeout=30, version=version)
    expiry = {"session_expiry_interval": 600} if version == 5 else None
    s.connect(sid, clean=False, properties=expiry)
    s.subscribe([(topic, qos)])
    s.disconnect()
    return sid, pid, topic


def publish_5000(broker, clients, pid, topic, qos):
    """5,000 messages from a new publisher, each acknowledged with success; their payloads."""
    p = clients.raw(broker, timeout=30)
    p.connect(pid)
    payloads = [b"%d" % i for i in range(5000)]
    assert publish_windowed(p, topic, payloads, qos) == [0] * 5000
    return payloads


def receive_all(s, payloads):
    """Exactly `payloads`, in order, and nothing more."""
    got = [s.recv_publish(30)["payload"] for _ in range(len(payloads))]
    assert got == payloads
    s.expect_nothing(0.3)


def reconnect(broker, clients, sid, version=4):
    s = clients.raw(broker, timeout=30, version=version)
    expiry = {"session_expiry_interval": 600} if version == 5 else None
    assert s.connect(sid, clean=False, properties=expiry)[0] is True
    return s


@pytest.mark.ringmq_only
@pytest.mark.parametrize("qos", [1, 2])
def test_an_offline_persistent_subscriber_gets_all_5000_acknowledged_messages(broker, clients, qos):
    """[MQTT-4.3.2-2][MQTT-4.3.3-2] issue 12: with the default settings a persistent subscriber
    that is offline while 5,000 messages are published and acknowledged gets all 5,000, in
    order [MQTT-4.6.0-6], once, when it comes back (before: 1,000 of them)"""
    sid, pid, topic = offline_subscriber(broker, clients, "offq%d" % qos, qos)
    payloads = publish_5000(broker, clients, pid, topic, qos)
    receive_all(reconnect(broker, clients, sid), payloads)


@pytest.mark.ringmq_only
@pytest.mark.parametrize("qos", [1, 2])
def test_a_subscriber_that_does_not_read_gets_all_5000_acknowledged_messages(broker, clients, qos):
    """[MQTT-4.3.2-2] issue 12: a connected subscriber that reads nothing while 5,000 messages
    are published and acknowledged (its window fills, the rest queues) gets all of them in order
    once it reads"""
    sid, pid = shard_pair("slowq%d" % qos, broker.nshards)
    topic = unique_topic("slowq")
    s = clients.raw(broker, timeout=30)
    s.connect(sid, clean=False)
    s.subscribe([(topic, qos)])
    receive_all(s, publish_5000(broker, clients, pid, topic, qos))


@pytest.mark.ringmq_only
def test_a_publisher_is_slowed_not_dropped(broker_factory, clients):
    """issue 12: beyond --max-queued-messages of an offline subscriber's queue an MQTT 3.1.1
    publisher's PUBACKs (which cannot say no) wait, in order [MQTT-4.6.0-2], and nothing is
    dropped; when the subscriber comes back and its queue drains, they come, and every message
    is delivered in order"""
    version = 4
    b = broker_factory(["--max-queued-messages", "10"])
    sid, pid, topic = offline_subscriber(b, clients, "slowed%d" % version, 1, version=version)
    p = clients.raw(b, timeout=30, version=version)
    p.connect(pid)
    for i in range(30):
        p.send(R.publish_packet(topic, b"%d" % i, 1, pid=i + 1, version=version))
    acked = []
    while True:
        try:
            acked.append(p.recv(0.7))
        except R.ReadTimeout:
            break
    assert all(a.type == R.PUBACK and a.ack_reason() == 0 for a in acked)
    assert [a.pid for a in acked] == list(range(1, len(acked) + 1)), "in order"
    assert 10 <= len(acked) < 30, "the acknowledgements beyond the queue's limit wait"
    s = reconnect(b, clients, sid, version=version)
    got = [s.recv_publish(10)["payload"] for _ in range(30)]
    assert got == [b"%d" % i for i in range(30)]
    rest = [p.recv(10) for _ in range(30 - len(acked))]
    assert [a.pid for a in rest] == list(range(len(acked) + 1, 31))
    s.expect_nothing(0.3)


@pytest.mark.ringmq_only
@pytest.mark.parametrize("qos", [1, 2])
def test_an_mqtt5_publisher_is_refused_0x97_at_a_per_session_byte_limit(broker_factory, clients, qos):
    """issue 12, item 2: an offline persistent subscriber's queue is full at --max-queued-bytes
    (topic and payload). An MQTT 5 publisher's messages up to it are acknowledged (success);
    the next is answered PUBACK/PUBREC 0x97 Quota exceeded [MQTT-3.4.2.1, MQTT-3.5.2.1] and goes
    nowhere, and the publisher is then not read until the queue drains (it does not spin
    against it). Another publisher, paho-mqtt, is refused too. When the subscriber comes back it
    gets exactly the acknowledged messages in order, then the message that waited, which is
    taken once the queue drained. Refusals are counted."""
    limit = 4096
    b, mport = broker_with_metrics(broker_factory, ["--max-queued-bytes", str(limit)])
    sid, pid, topic = offline_subscriber(b, clients, "quota%d" % qos, qos, version=5)
    payload = b"x" * 200
    fits = -(-limit // (len(topic) + len(payload)))  # full once it holds `limit` bytes or more
    payloads = [b"%05d" % i + payload[5:] for i in range(fits + 2)]
    p = clients.raw(b, timeout=10, version=5)
    p.connect(pid)
    # One at a time: each answer comes back before the next PUBLISH goes.
    reasons = publish_windowed(p, topic, payloads[:fits + 1], qos, window=1)
    assert reasons == [0] * fits + [0x97]
    if qos == 2:
        # A client that ignores the PUBREC's reason code (paho 2.2 does) sends PUBREL.
        p.send(R.ack_packet(R.PUBREL, fits + 1, 5))
    p.send(R.publish_packet(topic, payloads[fits + 1], qos, pid=500, version=5))
    p.expect_nothing(0.5)
    other = clients.paho(b, pid + "-paho", version=5)
    other.connect()
    if qos == 1:
        # (paho 2.2 ignores a PUBREC's reason code, so QoS 2 is checked with the raw client.)
        assert other.publish(topic, b"paho", qos=1, timeout=10).value == 0x97
    assert metric(mport, "ringmq_refused_queue_full_total") == 1 + (qos == 1)
    assert metric(mport, "ringmq_queues_full") == 1
    s = reconnect(b, clients, sid, version=5)
    got = [s.recv_publish(10)["payload"][:5] for _ in range(fits + 1)]
    assert got == [b"%05d" % i for i in range(fits + 2) if i != fits], \
        "the acknowledged ones in order, then the one that waited; never the refused one"
    s.expect_nothing(0.3)
    if qos == 2:
        comp = p.recv(10)
        assert (comp.type, comp.ack_reason()) == (R.PUBCOMP, 0x92), "a refused flow is over"
    a = p.recv(10)
    assert (a.pid, a.ack_reason()) == (500, 0), "taken once the queue drained"
    assert metric(mport, "ringmq_queues_full") == 0


@pytest.mark.ringmq_only
@pytest.mark.parametrize("policy,kept", [("drop-new", range(0, 5)), ("drop-oldest", range(15, 20))])
def test_dropping_is_the_operators_choice(broker_factory, clients, policy, kept):
    """--queue-full drop-new keeps the first --max-queued-messages messages for an offline
    session, drop-oldest the last; every publish is acknowledged and the drops are counted"""
    b = broker_factory(["--max-queued-messages", "5", "--queue-full", policy])
    sid, pid, topic = offline_subscriber(b, clients, policy.replace("-", ""), 1)
    p = clients.raw(b)
    p.connect(pid)
    for i in range(20):
        p.publish(topic, b"%d" % i, qos=1)
    s = reconnect(b, clients, sid)
    got = _drain(s, 0.7)
    assert [m["payload"] for m in got] == [b"%d" % i for i in kept]
    p.publish(topic, b"after", qos=1)
    assert s.recv_publish()["payload"] == b"after"


@pytest.mark.ringmq_only
def test_a_publisher_that_outruns_its_acknowledgements_is_not_read(broker_factory, clients):
    """issue 12, item 3: a 3.1.1 publisher (no Receive Maximum holds it) that writes 20,000
    QoS 1 PUBLISHes without waiting, to an offline subscriber whose queue is full at 10, is not
    read from once it is owed --max-pending-acks answers: its bytes stay in the sockets and the
    broker's queues stay bounded instead of taking all 20,000. When the subscriber comes back,
    reading resumes and every message is delivered once, in order, and acknowledged in order
    [MQTT-4.6.0-2]"""
    import threading
    b, mport = broker_with_metrics(broker_factory, ["--max-queued-messages", "10",
                                                    "--max-pending-acks", "64"])
    sid, pid, topic = offline_subscriber(b, clients, "flood", 1)
    p = clients.raw(b, timeout=30)
    p.connect(pid)
    n = 20000
    blob = b"".join(R.publish_packet(topic, b"%d" % i, 1, pid=i % 65535 + 1) for i in range(n))
    sender = threading.Thread(target=p.sock.sendall, args=(blob,), daemon=True)
    sender.start()
    time.sleep(1.5)
    assert metric(mport, "ringmq_reads_paused_total") >= 1
    queued = metric(mport, "ringmq_queued_messages")
    assert queued < 2000, "the broker kept reading: %d queued" % queued
    s = reconnect(b, clients, sid)
    receive_all(s, [b"%d" % i for i in range(n)])
    sender.join(30)
    acks = [p.recv(30) for _ in range(n)]
    assert [a.pid for a in acks] == [i % 65535 + 1 for i in range(n)]
