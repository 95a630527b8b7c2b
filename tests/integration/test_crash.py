"""Crash test of the journal: a broker killed with SIGKILL at random moments while publishers
and persistent subscribers run, restarted on the same data directory, and checked.

Checked after the last round:
- every QoS 1 message whose PUBACK the publisher received reached every persistent subscriber
  whose subscription matches it, at least once;
- every QoS 2 message whose PUBREC the publisher received reached each matching persistent
  subscriber exactly once (and no QoS 2 message reached anyone twice);
- the retained message is the last one whose PUBACK was received (or the one then in flight,
  whose PUBACK the kill may have swallowed).

Subscribers are persistent MQTT 3.1.1 sessions (Clean Session 0) on both shards: one fast,
one slow (acknowledges late, so its inflight window and queue fill), one offline during the
rounds. Clients are hand-rolled (rawmqtt) so that the QoS 2 receiver state survives the
reconnects exactly as the protocol says.

CRASH_ROUNDS (default 3) sets the number of kills: `make crash-test ROUNDS=100`.
"""

import os
import random
import signal
import threading
import time

import pytest

import rawmqtt
from helpers import client_id_on_shard

pytestmark = pytest.mark.ringmq_only

ROUNDS = int(os.environ.get("CRASH_ROUNDS", "3"))
SEED = int(os.environ.get("CRASH_SEED", str(random.randrange(1 << 30))))


class Subscriber:
    """A persistent subscriber whose received messages and QoS 2 receive state outlive its
    connections, as a real client's session would."""

    def __init__(self, broker, client_id, filters, delay=0.0):
        self.broker = broker
        self.client_id = client_id
        self.filters = filters
        self.delay = delay
        self.received = {}  # payload -> count
        self.qos2_pending = set()  # packet ids PUBREC'd, not yet released
        self.lock = threading.Lock()
        self.last_rx = time.monotonic()
        self.subscribed = False
        self.connected = False

    def run(self, stop):
        """Connects (retrying while the broker recovers), (first time) subscribes, receives
        until `stop` or the connection ends."""
        try:
            while True:
                try:
                    c = rawmqtt.RawClient(self.broker.host, self.broker.port, timeout=5.0)
                    c.connect(self.client_id, clean=False, keepalive=30)
                    break
                except (OSError, rawmqtt.ConnectionClosed, rawmqtt.ReadTimeout, AssertionError):
                    if stop.wait(0.2):
                        return
            self.connected = True
            self.last_rx = time.monotonic()
            if not self.subscribed:
                c.subscribe(self.filters)
                self.subscribed = True
            while not stop.is_set():
                try:
                    p = c.recv(0.2)
                except rawmqtt.ReadTimeout:
                    continue
                self.last_rx = time.monotonic()
                if p.type == rawmqtt.PUBLISH:
                    m = p.publish()
                    if self.delay:
                        time.sleep(self.delay)
                    key = bytes(m["payload"])
                    if m["qos"] == 2:
                        if m["pid"] not in self.qos2_pending:
                            self.qos2_pending.add(m["pid"])
                            self.count(key)
                        c.send(rawmqtt.ack_packet(rawmqtt.PUBREC, m["pid"]))
                    else:
                        self.count(key)
                        if m["qos"] == 1:
                            c.send(rawmqtt.ack_packet(rawmqtt.PUBACK, m["pid"]))
                elif p.type == rawmqtt.PUBREL:
                    self.qos2_pending.discard(p.pid)
                    c.send(rawmqtt.ack_packet(rawmqtt.PUBCOMP, p.pid))
            c.send(rawmqtt.disconnect_packet())
            c.close()
        except (rawmqtt.ConnectionClosed, OSError, AssertionError, rawmqtt.ReadTimeout):
            pass

    def count(self, key):
        with self.lock:
            self.received[key] = self.received.get(key, 0) + 1


class Publisher:
    """Publishes numbered messages with a bounded window; remembers which were acknowledged
    (PUBACK for QoS 1, PUBREC for QoS 2)."""

    def __init__(self, broker, client_id, topic, qos, window=8, retain=False):
        self.broker = broker
        self.client_id = client_id
        self.topic = topic
        self.qos = qos
        self.window = window
        self.retain = retain
        self.next = 0
        self.acked = set()
        self.in_flight_at_end = set()

    def payload(self, n):
        return ("%s-%d" % (self.client_id, n)).encode()

    def run(self, stop):
        inflight = {}  # pid -> n
        try:
            c = rawmqtt.RawClient(self.broker.host, self.broker.port, timeout=2.0)
            c.connect(self.client_id, clean=True, keepalive=30)
            pid = 0
            while not stop.is_set():
                while len(inflight) < self.window and not stop.is_set():
                    pid = pid % 65535 + 1
                    self.next += 1
                    inflight[pid] = self.next
                    c.send(rawmqtt.publish_packet(self.topic, self.payload(self.next),
                                                  qos=self.qos, pid=pid, retain=self.retain))
                try:
                    p = c.recv(0.2)
                except rawmqtt.ReadTimeout:
                    continue
                if p.type == rawmqtt.PUBACK and self.qos == 1:
                    self.acked.add(inflight.pop(p.pid))
                elif p.type == rawmqtt.PUBREC and self.qos == 2:
                    self.acked.add(inflight.pop(p.pid))
                    c.send(rawmqtt.ack_packet(rawmqtt.PUBREL, p.pid))
            c.close()
        except (rawmqtt.ConnectionClosed, OSError, AssertionError, rawmqtt.ReadTimeout, KeyError):
            pass
        self.in_flight_at_end |= set(inflight.values())


def run_clients(clients, seconds):
    stop = threading.Event()
    threads = [threading.Thread(target=c.run, args=(stop,), daemon=True) for c in clients]
    for t in threads:
        t.start()
    return stop, threads


@pytest.mark.parametrize("queue", ["default", "small"])
def test_kill9_loses_no_acknowledged_message(broker_factory, queue):
    """Kills with the default queue limits, and with a queue small enough that the offline
    subscriber's fills within a round: then, with the default --queue-full backpressure, the
    publishers wait for their acknowledgements, and nothing acknowledged may be lost across the
    kills either (issue 12)."""
    rng = random.Random(SEED)
    print("crash test: %d rounds, seed %d, %s queue" % (ROUNDS, SEED, queue))
    limit = ["--max-queued-messages", "300"] if queue == "small" else []
    broker = broker_factory(["--journal-segment-bytes", "262144", "--max-packet-size", "65536"]
                            + limit)
    n = broker.nshards
    fast = Subscriber(broker, client_id_on_shard("crash-fast", 0, n), [("crash/q1/#", 1)])
    slow = Subscriber(broker, client_id_on_shard("crash-slow", n - 1, n),
                      [("crash/#", 2)], delay=0.002)
    offline = Subscriber(broker, client_id_on_shard("crash-offline", 0, n), [("crash/+/+", 2)])
    subs = [fast, slow, offline]
    # Every subscriber subscribes once before anything is published; the offline one then
    # stays away until the end.
    stop, threads = run_clients(subs, 0)
    deadline = time.monotonic() + 5
    while not all(s.subscribed for s in subs) and time.monotonic() < deadline:
        time.sleep(0.01)
    stop.set()
    for t in threads:
        t.join(5)
    assert all(s.subscribed for s in subs)

    q1 = Publisher(broker, client_id_on_shard("crash-p1", n - 1, n), "crash/q1/a", 1)
    q2 = Publisher(broker, client_id_on_shard("crash-p2", 0, n), "crash/q2/b", 2)
    ret = Publisher(broker, client_id_on_shard("crash-r", 0, n), "crash/ret", 1, window=1,
                    retain=True)
    publishers = [q1, q2, ret]

    for rnd in range(ROUNDS):
        stop, threads = run_clients([fast, slow] + publishers, 0)
        time.sleep(rng.uniform(0.3, 1.5))
        broker.proc.send_signal(signal.SIGKILL)
        broker.proc.wait(5)
        stop.set()
        for t in threads:
            t.join(10)
        # Restart on the same data directory.
        broker.restart()
        assert broker.alive(), broker.log_tail()

    # Drain: every subscriber reconnects and takes what its session holds, at full speed.
    slow.delay = 0
    for s in subs:
        s.connected = False
    stop, threads = run_clients(subs, 0)
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        time.sleep(0.5)
        if all(s.connected and time.monotonic() - s.last_rx > 3.0 for s in subs):
            break
    assert all(s.connected for s in subs), "a subscriber could not reconnect for the drain"
    stop.set()
    for t in threads:
        t.join(10)

    # The retained message: the last acknowledged one, or the one in flight at the last kill.
    c = rawmqtt.RawClient(broker.host, broker.port)
    c.connect("crash-check", clean=True)
    c.subscribe([("crash/ret", 1)])
    p = c.expect(rawmqtt.PUBLISH, timeout=5)
    got = int(bytes(p.publish()["payload"]).decode().rsplit("-", 1)[1])
    c.close()

    problems = []
    for pub, qos in ((q1, 1), (q2, 2)):
        for sub in subs:
            if pub is q2 and sub is fast:
                continue  # fast subscribes to crash/q1/# only
            for k in sorted(pub.acked):
                count = sub.received.get(pub.payload(k), 0)
                if count == 0:
                    problems.append("%s lost acknowledged %s" % (sub.client_id, pub.payload(k)))
                elif qos == 2 and count > 1:
                    problems.append("%s got QoS 2 %s %d times" % (sub.client_id,
                                                                  pub.payload(k), count))
    for sub in (slow, offline):
        dups = [k for k, v in sub.received.items() if k.startswith(q2.client_id.encode())
                and v > 1]
        problems.extend("%s got QoS 2 %s twice" % (sub.client_id, k) for k in dups)
    last_acked = max(ret.acked) if ret.acked else 0
    if not (got == last_acked or (got > last_acked and got in ret.in_flight_at_end)):
        problems.append("retained is %d, last acknowledged %d, in flight %r"
                        % (got, last_acked, sorted(ret.in_flight_at_end)))
    summary = ("seed %d, %d rounds: QoS 1 acked %d, QoS 2 acked %d, retained %d; received "
               "fast %d, slow %d, offline %d" % (
                   SEED, ROUNDS, len(q1.acked), len(q2.acked), last_acked,
                   sum(fast.received.values()), sum(slow.received.values()),
                   sum(offline.received.values())))
    print(summary)
    assert q1.acked and q2.acked, summary
    assert not problems, "%s\n%d problems:\n%s\n%s" % (
        summary, len(problems), "\n".join(problems[:20]), broker.log_tail())
