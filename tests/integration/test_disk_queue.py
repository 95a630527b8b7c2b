"""Issue 12, item 1: the queue of a persistent session lives in the journal. A message queued
for an offline session (or behind a long in-memory queue) keeps only its journal record's
location in memory and is read back when it is sent (shards/core/src/state/spill.rs), so these
tests check what a user sees of it: every acknowledged message arrives once and in order, after
a kill -9 too, while compaction keeps moving records out of old segments; the gauge
ringmq_queued_in_journal says how many are held that way. Memory per queued message is
measured by the `backlog` benchmark (bench/README.md), not asserted here."""

import time

import pytest

import rawmqtt as R
from test_persistence import kill9_restart, metric, segments
from test_queue_full import (broker_with_metrics, offline_subscriber, publish_windowed,
                             receive_all, reconnect)

pytestmark = pytest.mark.ringmq_only


def queued_in_journal(port):
    return metric(port, "ringmq_queued_in_journal")


@pytest.mark.parametrize("qos", [1, 2])
def test_an_offline_sessions_queue_is_held_in_the_journal_and_survives_kill9(broker_factory, clients, qos):
    """[MQTT-4.3.2-2][MQTT-4.6.0-6] 3,000 messages for an offline persistent subscriber are
    held as journal records only (the gauge counts them); after a kill -9 they are still
    queued, and the subscriber gets all of them once, in order"""
    b, mport = broker_with_metrics(broker_factory)
    sid, pid, topic = offline_subscriber(b, clients, "diskq%d" % qos, qos)
    p = clients.raw(b, timeout=30)
    p.connect(pid)
    payloads = [b"%d" % i for i in range(3000)]
    assert publish_windowed(p, topic, payloads, qos) == [0] * 3000
    assert queued_in_journal(mport) == 3000
    kill9_restart(b)
    assert queued_in_journal(mport) == 3000
    receive_all(reconnect(b, clients, sid), payloads)
    assert queued_in_journal(mport) == 0


def test_a_connected_slow_subscriber_keeps_a_short_queue_in_memory(broker_factory, clients):
    """A connected persistent subscriber that reads nothing keeps its window and the first
    messages behind it in memory; the rest of the backlog is held in the journal only, and all
    of it arrives in order once it reads"""
    b, mport = broker_with_metrics(broker_factory)
    sid, pid, topic = offline_subscriber(b, clients, "diskslow", 1)
    s = reconnect(b, clients, sid)
    p = clients.raw(b, timeout=30)
    p.connect(pid)
    payloads = [b"%d" % i for i in range(2000)]
    assert publish_windowed(p, topic, payloads, 1, window=64) == [0] * 2000
    on_disk = queued_in_journal(mport)
    assert 0 < on_disk < 2000, on_disk
    receive_all(s, payloads)


def test_compaction_moves_a_long_lived_queue_and_frees_old_segments(broker_factory, clients):
    """A session that stays offline must not pin the segments its queue was written to:
    with small segments and other persistent traffic going through the journal, compaction
    copies the queued records forward, old segment files go, and the queue is intact (after a
    kill -9 as well)"""
    b, mport = broker_with_metrics(broker_factory, ["--journal-segment-bytes", "65536",
                                                    "--max-packet-size", "16384"])
    sid, pid, topic = offline_subscriber(b, clients, "diskcompact", 1)
    p = clients.raw(b, timeout=30)
    p.connect(pid)
    queued = [b"q%d-" % i + b"x" * 200 for i in range(300)]
    assert publish_windowed(p, topic, queued, 1, window=32) == [0] * 300
    # Both subscribers live on shard 0 (shard_pair), where the queue and the churn are.
    first = {seg.name for seg in segments(b, 0)}
    # Churn: a persistent subscriber that is online and acknowledges everything, so the
    # journal fills with records that compaction can drop.
    csid, cpid, ctopic = offline_subscriber(b, clients, "diskchurn", 1)
    c = reconnect(b, clients, csid)
    churn = [b"c%d-" % i + b"y" * 400 for i in range(3000)]
    for i in range(0, len(churn), 100):
        assert publish_windowed(p, ctopic, churn[i:i + 100], 1, window=32) == [0] * 100
        for _ in range(100):
            c.recv_publish(10)
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        now = {seg.name for seg in segments(b, 0)}
        if not (first & now):
            break
        time.sleep(0.2)
    assert not (first & now), "segments written with the queue are still there: %r" % (first & now)
    assert metric(mport, "ringmq_journal_segments_removed_total") > 0
    kill9_restart(b)
    receive_all(reconnect(b, clients, sid), queued)
    assert metric(mport, "ringmq_journal_read_failures_total") == 0


def test_a_message_for_many_offline_sessions_is_written_once(broker_factory, clients):
    """issue 12, item 1: a message one publish queues for many persistent sessions of a shard
    is written to the journal once; their delivery records refer to it. 20 offline sessions
    (all on shard 0), 300 messages of 1 KiB: the journal grows by far less than one copy per
    session, and after a kill -9 every session gets every message once, in order"""
    from helpers import client_id_on_shard, unique_topic
    b, mport = broker_with_metrics(broker_factory)
    topic = unique_topic("once")
    subs = []
    for i in range(20):
        sid = client_id_on_shard("once%d-" % i, 0, b.nshards)
        s = clients.raw(b, timeout=30)
        s.connect(sid, clean=False)
        s.subscribe([(topic, 1)])
        s.disconnect()
        subs.append(sid)
    p = clients.raw(b, timeout=30)
    p.connect(client_id_on_shard("oncepub", 1, b.nshards))
    payloads = [b"%04d-" % i + b"x" * 1019 for i in range(300)]
    before = metric(mport, "ringmq_journal_appended_bytes_total")
    assert publish_windowed(p, topic, payloads, 1, window=16) == [0] * 300
    grew = metric(mport, "ringmq_journal_appended_bytes_total") - before
    one_copy_each = 300 * 20 * 1024
    assert grew < one_copy_each / 5, "journal grew %d bytes, %.1f%% of a copy per session" % (
        grew, 100.0 * grew / one_copy_each)
    assert queued_in_journal(mport) == 300 * 20
    kill9_restart(b)
    for sid in subs:
        receive_all(reconnect(b, clients, sid), payloads)
    assert metric(mport, "ringmq_journal_read_failures_total") == 0
