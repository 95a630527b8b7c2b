"""The connection driver's buffer model, from outside: each shard reads every connection into
one pool of 512 provided buffers of 4 KiB, so a burst from more connections than that, or a
packet larger than a buffer, must still arrive whole and in order."""

import os
import signal
import time

import pytest

import rawmqtt as R
from conftest import free_port
from helpers import client_id_on_shard, unique_topic
from test_metrics import scrape, value


def pub_sub_pair(broker, clients, name, pub_shard):
    """A subscriber on shard 0 to a fresh topic at QoS 0, and a publisher on `pub_shard`."""
    topic = unique_topic(name)
    sub = clients.raw(broker, timeout=10)
    sub.connect(client_id_on_shard(name + "sub", 0, broker.nshards))
    sub.subscribe([(topic, 0)])
    pub = clients.raw(broker, timeout=10)
    pub.connect(client_id_on_shard(name + "pub", pub_shard, broker.nshards))
    return topic, sub, pub


@pytest.mark.ringmq_only
def test_a_burst_from_more_connections_than_receive_buffers_loses_nothing(broker_factory, clients):
    """[MQTT-4.3.2-1][MQTT-4.3.2-4] 1,400 idle publishers each send a 3 KB QoS 1 PUBLISH while
    the broker is stopped, so that each shard finds far more receives ready than its 16 receive
    buffers (`--receive-buffers 16`; a batch takes up to 20): every message is acknowledged and
    delivered intact, and the shards count the receives they had to arm again"""
    mport = free_port()
    # A queue that holds the whole burst: the subscriber reads only after every PUBACK, and the
    # default limit (1,000) would drop acknowledged messages, which is issue 12, not this test.
    # With the default 512 buffers a batch hands its buffers back before the pool runs out, so
    # whether a receive ever finds it empty depends on timing: the small pool makes it certain.
    broker = broker_factory(["--metrics-addr", "127.0.0.1:%d" % mport,
                             "--max-queued-messages", "100000", "--receive-buffers", "16"])
    base = unique_topic("burst")
    sub = clients.raw(broker, timeout=30)
    sub.connect(client_id_on_shard("burstsub", 0, broker.nshards))
    sub.subscribe([(base + "/#", 1)])
    n = 1400
    pubs = []
    for i in range(n):
        c = clients.raw(broker, timeout=30)
        c.send(R.connect_packet(client_id_on_shard("burstpub%d" % i, i, broker.nshards)))
        pubs.append(c)
    for c in pubs:
        p = c.recv(30)
        assert p.type == R.CONNACK and p.body[1] == 0, p
    payloads = {"%s/%d" % (base, i): bytes([i % 251]) * 3000 for i in range(n)}
    os.kill(broker.proc.pid, signal.SIGSTOP)
    try:
        for i, c in enumerate(pubs):
            c.send(R.publish_packet("%s/%d" % (base, i), payloads["%s/%d" % (base, i)], qos=1, pid=1))
    finally:
        os.kill(broker.proc.pid, signal.SIGCONT)
    for c in pubs:
        p = c.recv(30)
        assert p.type == R.PUBACK, p
    got = {}
    while len(got) < n:
        p = sub.recv(30)
        assert p.type == R.PUBLISH, p
        m = p.publish()
        sub.send(R.ack_packet(R.PUBACK, m["pid"]))
        got[m["topic"]] = m["payload"]
    assert got == payloads
    _, samples = scrape(mport)
    assert value(samples, "ringmq_receive_buffers_exhausted_total", shard="all") > 0


def test_a_packet_larger_than_a_receive_buffer_arrives_whole(broker, clients):
    """[MQTT-3.3.2] a 300 KB PUBLISH spans about 75 receive buffers and arrives in slow pieces:
    the subscriber gets it byte for byte, and a small one sent after it follows it"""
    topic, sub, pub = pub_sub_pair(broker, clients, "big", pub_shard=1)
    payload = bytes(range(256)) * 1200
    data = R.publish_packet(topic, payload) + R.publish_packet(topic, b"after")
    step = 50_000
    for k in range(0, len(data), step):
        pub.send(data[k:k + step])
        time.sleep(0.02)
    p = sub.recv(10)
    assert p.type == R.PUBLISH
    assert p.publish()["payload"] == payload
    p = sub.recv(10)
    assert p.publish()["payload"] == b"after"


def test_a_quiet_broker_answers_within_milliseconds(broker, clients):
    """A broker with nothing else to do hands a message on at once: the median of 30 round
    trips publisher -> broker -> subscriber, 20 ms apart, and of 10 CONNECT -> CONNACK on fresh
    connections, is under 5 ms. On Linux 6.18.44 a shard that waited for its network ring's
    eventfd under DEFER_TASKRUN was woken by an RCU callback 10-16 ms late, for every
    message; the functional tests passed all along."""
    topic, sub, pub = pub_sub_pair(broker, clients, "quiet", pub_shard=0)
    trips = []
    for i in range(30):
        time.sleep(0.02)
        t = time.monotonic()
        pub.send(R.publish_packet(topic, b"%d" % i))
        p = sub.recv(10)
        trips.append(time.monotonic() - t)
        assert p.publish()["payload"] == b"%d" % i
    connacks = []
    for i in range(10):
        time.sleep(0.02)
        c = clients.raw(broker, timeout=10)
        t = time.monotonic()
        c.send(R.connect_packet(client_id_on_shard("quietc%d" % i, 0, broker.nshards)))
        p = c.recv(10)
        connacks.append(time.monotonic() - t)
        assert p.type == R.CONNACK
    trips.sort()
    connacks.sort()
    assert trips[15] < 0.005, "median round trip %.1f ms" % (trips[15] * 1e3)
    assert connacks[5] < 0.005, "median CONNACK %.1f ms" % (connacks[5] * 1e3)


def open_fds(pid):
    return len(os.listdir("/proc/%d/fd" % pid))


@pytest.mark.ringmq_only
def test_a_mass_disconnect_closes_every_socket_while_traffic_goes_on(broker_factory, clients):
    """600 clients leave at once, half with DISCONNECT [MQTT-3.14.4-1] and half by closing the
    socket, while a publisher keeps sending to a subscriber: the closes wait behind the traffic
    (the closing backlog), yet every one of them is done within seconds (the broker's open
    descriptors come back to what the two remaining clients need) and the subscriber gets every
    message in order [MQTT-4.6.0-5]"""
    broker = broker_factory([])
    topic, sub, pub = pub_sub_pair(broker, clients, "massclose", pub_shard=1)
    base = open_fds(broker.proc.pid)
    leaving = []
    for i in range(600):
        c = clients.raw(broker, timeout=10)
        c.connect(client_id_on_shard("leave%d" % i, i, broker.nshards))
        leaving.append(c)
    assert open_fds(broker.proc.pid) >= base + 600
    for i, c in enumerate(leaving):
        if i % 2 == 0:
            c.send(R.disconnect_packet())
        c.sock.close()
        if i % 50 == 0:
            pub.send(R.publish_packet(topic, b"%d" % (i // 50)))
    sent = len(range(0, 600, 50))
    for k in range(sent):
        p = sub.recv(10)
        assert p.publish()["payload"] == b"%d" % k
    deadline = time.monotonic() + 10
    while open_fds(broker.proc.pid) > base and time.monotonic() < deadline:
        time.sleep(0.05)
    assert open_fds(broker.proc.pid) <= base
    # The two that stayed still talk.
    pub.send(R.publish_packet(topic, b"after"))
    assert sub.recv(10).publish()["payload"] == b"after"
