"""The per-shard journal, black-box: what must survive a graceful restart (SIGTERM) and a
kill -9, what must not touch the journal at all, --journal-max-bytes, corruption handling at
start and the --fsync modes.

What is durable (shards/shard/src/durable.rs): persistent sessions (3.1.x Clean Session 0,
MQTT 5 Session Expiry Interval > 0), their subscriptions, their queued and inflight QoS 1/2
deliveries, QoS 2 packet ids received and not yet released, and retained messages. Clean
sessions and QoS 0 deliveries never touch the journal.

Journals live in <data-dir>/shard-<N>/seg-<20 digits>.rmj (format: shards/journal/FORMAT.md).
"""

import http.client
import random
import signal
import struct
import subprocess
import time

import pytest
from prometheus_client.parser import text_string_to_metric_families

import rawmqtt as R
from conftest import free_port
from helpers import assert_broker_healthy, client_id_on_shard, fnv1a_64, unique_topic

pytestmark = pytest.mark.ringmq_only

SESSION_V5 = {"session_expiry_interval": 300}


# --------------------------------------------------------------------------- helpers

def kill9_restart(broker):
    """kill -9 the broker, then start it again on the same data dir."""
    broker.proc.send_signal(signal.SIGKILL)
    broker.proc.wait(5)
    broker.restart()
    assert broker.exit_code == -signal.SIGKILL


def graceful_restart(broker):
    """SIGTERM (must exit 0), then start again on the same data dir."""
    broker.restart()
    assert broker.exit_code == 0, "graceful shutdown exited with %r" % broker.exit_code


RESTARTS = {"sigterm": graceful_restart, "kill9": kill9_restart}


def topic_on_shard(prefix, shard, nshards):
    """A fresh topic whose retained message lives on ``shard`` (fnv1a_64(topic) % shards)."""
    shard %= nshards
    while True:
        t = unique_topic(prefix)
        if fnv1a_64(t.encode()) % nshards == shard:
            return t


def connect(broker, cid, version=4, clean=True, session=True, **kw):
    """Raw client connected; for MQTT 5 persistent (clean=False or session=True) sessions get a
    Session Expiry Interval of 300 s. Returns (client, session_present)."""
    c = R.RawClient(broker.host, broker.port, 5.0, version)
    if version == 5 and session and "properties" not in kw:
        kw["properties"] = SESSION_V5
    sp, _, _ = c.connect(cid, clean=clean, **kw)
    return c, sp


def drain(c, quiet=0.6, total=15.0, ack=True):
    """Every PUBLISH until none arrives for ``quiet`` seconds (acknowledged when ack)."""
    out = []
    deadline = time.monotonic() + total
    while time.monotonic() < deadline:
        try:
            out.append(c.recv_publish(quiet, ack=ack))
        except R.ReadTimeout:
            return out
    raise AssertionError("still receiving after %.0fs (%d messages)" % (total, len(out)))


def payloads(msgs):
    return [bytes(m["payload"]) for m in msgs]


def scrape(port):
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        c.request("GET", "/metrics")
        r = c.getresponse()
        body = r.read().decode()
        assert r.status == 200, body
    finally:
        c.close()
    samples = {}
    for fam in text_string_to_metric_families(body):
        for s in fam.samples:
            samples[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return samples


def metric(port, name, shard="all"):
    samples = scrape(port)
    key = (name, (("shard", shard),))
    assert key in samples, "missing %s{shard=%r}; have %r" % (
        name, shard, sorted(k for k in samples if k[0].startswith("ringmq_journal")))
    return samples[key]


def segments(broker, shard):
    d = broker.data_dir / ("shard-%d" % shard)
    return sorted(p for p in d.iterdir() if p.name.startswith("seg-") and p.name.endswith(".rmj"))


def active_segment(broker, shard):
    """The last segment of the shard that holds records (later ones are prepared spares)."""
    for seg in reversed(segments(broker, shard)):
        recs, end = parse_records(seg.read_bytes())
        if recs:
            return seg
    raise AssertionError("no segment of shard %d holds records: %r" % (shard, segments(broker, shard)))


def parse_records(data):
    """[(offset, len, seq)] of the records of a segment image (FORMAT.md), and the end offset."""
    out = []
    pos = 64
    while pos + 16 <= len(data):
        ln, crc, seq = struct.unpack_from("<IIQ", data, pos)
        if ln == 0 and crc == 0 and seq == 0:
            break
        out.append((pos, ln, seq))
        pos += (17 + ln + 7) // 8 * 8
    return out, pos


def fill_offline_session(broker, n_msgs, version=4, size=200):
    """An offline persistent subscriber on shard 0 with ``n_msgs`` queued QoS 1 messages
    (published from the last shard). Returns (subscriber id, topic, payload list)."""
    n = broker.nshards
    sid = client_id_on_shard("fill-sub", 0, n)
    t = unique_topic("fill")
    s, _ = connect(broker, sid, version, clean=False)
    assert s.subscribe([(t, 1)]) == [1]
    s.disconnect()
    p, _ = connect(broker, client_id_on_shard("fill-pub", n - 1, n))
    sent = []
    for i in range(n_msgs):
        body = (b"m%05d-" % i).ljust(size, b"x")
        p.publish(t, body, qos=1)
        sent.append(body)
    p.disconnect()
    return sid, t, sent


# --------------------------------------------------------------------------- 1. sessions

@pytest.mark.parametrize("restart", ["sigterm", "kill9"])
@pytest.mark.parametrize("version", [4, 5], ids=["v311", "v5"])
def test_persistent_session_survives_restart(broker, version, restart):
    """[MQTT-3.1.2-4] the session state of a persistent session (3.1.1 Clean Session 0 /
    MQTT 5 Session Expiry Interval > 0) -- its subscription and the QoS 1 and QoS 2 messages
    queued while it is offline -- survives a broker restart (graceful and kill -9): session
    present 1 [MQTT-3.2.2-2], every queued message delivered, in order per QoS [MQTT-4.6.0-5],
    and a message published after the restart still reaches the session."""
    n = broker.nshards
    sid = client_id_on_shard("ps-sub", 0, n)
    pid = client_id_on_shard("ps-pub", 1, n)
    t = unique_topic("ps")
    s, sp = connect(broker, sid, version, clean=False)
    assert sp is False
    assert s.subscribe([(t, 2)]) == [2]
    s.disconnect()

    p, _ = connect(broker, pid, version, session=False)
    before = [(b"q1-a", 1), (b"q2-a", 2), (b"q1-b", 1), (b"q2-b", 2), (b"q1-c", 1), (b"q2-c", 2)]
    for body, qos in before:
        p.publish(t, body, qos=qos)
    p.disconnect()

    RESTARTS[restart](broker)

    # The subscription survived: a publish after the restart is queued for the offline session.
    p, _ = connect(broker, pid, version, session=False)
    for body, qos in ((b"q1-after", 1), (b"q2-after", 2)):
        _, ack = p.publish(t, body, qos=qos)
        if version == 5:
            # PUBACK / PUBCOMP 0x10 would mean the broker did not know the subscription yet.
            assert ack.ack_reason() == 0, \
                "%s published after the restart: reason %#x (0x10 = no matching " \
                "subscribers: the recovered subscription was not routed)" % (body, ack.ack_reason())
    p.disconnect()

    s, sp = connect(broker, sid, version, clean=False)
    assert sp is True, "[MQTT-3.2.2-2] session present must be 1 after the restart"
    got = drain(s)
    expected = before + [(b"q1-after", 1), (b"q2-after", 2)]
    got_pairs = [(bytes(m["payload"]), m["qos"]) for m in got]
    assert sorted(got_pairs) == sorted(expected), got_pairs
    for qos in (1, 2):
        assert [b for b, q in got_pairs if q == qos] == [b for b, q in expected if q == qos], \
            "QoS %d messages out of order: %r" % (qos, got_pairs)
    s.disconnect()


# --------------------------------------------------------------------------- 2. inflight

@pytest.mark.parametrize("version", [4, 5], ids=["v311", "v5"])
def test_inflight_qos1_redelivered_with_dup_after_kill9(broker, version):
    """[MQTT-4.4.0-1] an unacknowledged QoS 1 PUBLISH sent to a persistent session is re-sent
    after a kill -9 and restart, with its original packet id and DUP=1 [MQTT-3.3.1-1]."""
    n = broker.nshards
    sid = client_id_on_shard("if1-sub", 0, n)
    t = unique_topic("if1")
    s, _ = connect(broker, sid, version, clean=False)
    s.subscribe([(t, 1)])
    p, _ = connect(broker, client_id_on_shard("if1-pub", 1, n), version, session=False)
    p.publish(t, b"unacked", qos=1)
    first = s.recv_publish(ack=False)
    assert first["payload"] == b"unacked" and first["qos"] == 1
    time.sleep(0.1)
    kill9_restart(broker)

    s, sp = connect(broker, sid, version, clean=False)
    assert sp is True
    again = s.recv_publish(ack=False)
    assert again["payload"] == b"unacked"
    assert again["pid"] == first["pid"], "[MQTT-4.4.0-1] original packet id must be reused"
    assert again["dup"] is True, "[MQTT-3.3.1-1] a re-delivery must have DUP=1"
    s.send(R.ack_packet(R.PUBACK, again["pid"], version))
    s.expect_nothing(0.3)
    s.disconnect()
    s, sp = connect(broker, sid, version, clean=False)
    assert sp is True
    s.expect_nothing(0.3)  # the PUBACK finished the delivery


@pytest.mark.parametrize("version", [4, 5], ids=["v311", "v5"])
def test_inflight_qos2_pubrel_resent_after_kill9(broker, version):
    """[MQTT-4.4.0-1] once the subscriber has sent PUBREC, the broker re-sends PUBREL (not the
    PUBLISH) for that packet id after a kill -9 and restart; PUBCOMP ends the flow."""
    n = broker.nshards
    sid = client_id_on_shard("if2-sub", 0, n)
    t = unique_topic("if2")
    s, _ = connect(broker, sid, version, clean=False)
    s.subscribe([(t, 2)])
    p, _ = connect(broker, client_id_on_shard("if2-pub", 1, n), version, session=False)
    p.publish(t, b"half-done", qos=2)
    m = s.recv_publish(ack=False)
    assert m["qos"] == 2
    s.send(R.ack_packet(R.PUBREC, m["pid"], version))
    s.expect(R.PUBREL, pid=m["pid"])
    time.sleep(0.1)
    kill9_restart(broker)

    s, sp = connect(broker, sid, version, clean=False)
    assert sp is True
    pkt = s.recv(5.0)
    assert pkt.type == R.PUBREL and pkt.pid == m["pid"], \
        "expected PUBREL for pid %d after restart, got %r" % (m["pid"], pkt)
    assert pkt.flags == 0x02, "[MQTT-3.6.1-1]"
    s.send(R.ack_packet(R.PUBCOMP, m["pid"], version))
    s.expect_nothing(0.3)
    s.disconnect()
    s, _ = connect(broker, sid, version, clean=False)
    s.expect_nothing(0.3)  # the PUBCOMP finished the delivery


# --------------------------------------------------------------------------- 3. QoS 2 in

@pytest.mark.parametrize("version", [4, 5], ids=["v311", "v5"])
def test_qos2_receive_state_survives_kill9(broker, version):
    """[MQTT-4.3.3-9] a QoS 2 PUBLISH answered with PUBREC before a kill -9 and re-sent after the
    restart (DUP=1, same packet id) is answered with PUBREC again and not delivered onwards a
    second time; PUBREL then gets PUBCOMP [MQTT-4.3.3-11]."""
    n = broker.nshards
    sid = client_id_on_shard("q2in-sub", 1, n)
    pubid = client_id_on_shard("q2in-pub", 0, n)
    t = unique_topic("q2in")
    s, _ = connect(broker, sid, version, clean=False)
    s.subscribe([(t, 2)])
    s.disconnect()

    p, _ = connect(broker, pubid, version, clean=False)
    p.send(R.publish_packet(t, b"exactly-once", qos=2, pid=7, version=version))
    rec = p.expect(R.PUBREC, pid=7)
    assert rec.ack_reason() < 0x80
    time.sleep(0.1)
    kill9_restart(broker)

    p, sp = connect(broker, pubid, version, clean=False)
    assert sp is True
    p.send(R.publish_packet(t, b"exactly-once", qos=2, pid=7, dup=True, version=version))
    rec = p.expect(R.PUBREC, pid=7)
    assert rec.ack_reason() < 0x80, "PUBREC reason %#x" % rec.ack_reason()
    p.send(R.ack_packet(R.PUBREL, 7, version))
    comp = p.expect(R.PUBCOMP, pid=7)
    assert comp.ack_reason() == 0, "PUBCOMP reason %#x (0x92 = packet id not found)" % comp.ack_reason()
    p.disconnect()

    s, sp = connect(broker, sid, version, clean=False)
    assert sp is True
    got = payloads(drain(s, quiet=1.0))
    assert got == [b"exactly-once"], "[MQTT-4.3.3-9] delivered %r" % got


# --------------------------------------------------------------------------- 4. retained

def test_retained_messages_survive_kill9(broker):
    """[MQTT-3.3.1-5] retained messages are state: set, replace (QoS 0 and 1) and delete (empty
    payload [MQTT-3.3.1-10]) on topics owned by every shard are all reflected after kill -9."""
    n = broker.nshards
    prefix = unique_topic("ret")
    expected = {}
    p, _ = connect(broker, client_id_on_shard("ret-pub", 0, n))
    for shard in range(n):
        kept = topic_on_shard(prefix + "/keep", shard, n)
        replaced = topic_on_shard(prefix + "/repl", shard, n)
        deleted = topic_on_shard(prefix + "/del", shard, n)
        q0 = topic_on_shard(prefix + "/q0", shard, n)
        p.publish(kept, b"kept-%d" % shard, qos=1, retain=True)
        p.publish(replaced, b"old", qos=1, retain=True)
        p.publish(replaced, b"new-%d" % shard, qos=1, retain=True)
        p.publish(deleted, b"doomed", qos=1, retain=True)
        p.publish(deleted, b"", qos=1, retain=True)
        p.publish(q0, b"q0-%d" % shard, qos=0, retain=True)
        expected[kept] = b"kept-%d" % shard
        expected[replaced] = b"new-%d" % shard
        expected[q0] = b"q0-%d" % shard
    p.ping()  # the QoS 0 publish has been read
    p.disconnect()
    time.sleep(0.2)  # QoS 0 has no acknowledgement to wait for
    kill9_restart(broker)

    for shard in range(n):
        c, _ = connect(broker, client_id_on_shard("ret-chk", shard, n))
        c.subscribe([(prefix + "/#", 1)])
        got = {m["topic"]: bytes(m["payload"]) for m in drain(c)}
        assert got == expected, "retained after restart (subscriber on shard %d)" % shard
        c.disconnect()


# --------------------------------------------------------------------------- 5. session expiry

def test_session_expiry_counts_while_broker_is_down(broker):
    """[MQTT-3.1.2-23] a session ends when its Session Expiry Interval has passed since the
    disconnect, also across a restart: expiry 2 s, broker down 3 s -> session present 0
    [MQTT-3.2.2-2]; expiry 60 s -> still present after the restart."""
    n = broker.nshards
    short = client_id_on_shard("exp-short", 0, n)
    long_ = client_id_on_shard("exp-long", 1, n)
    t = unique_topic("exp")
    for cid, interval in ((short, 2), (long_, 60)):
        c, sp = connect(broker, cid, 5, clean=True,
                        properties={"session_expiry_interval": interval})
        assert sp is False
        c.subscribe([(t, 1)])
        c.disconnect()
    broker.stop()
    assert broker.exit_code == 0
    time.sleep(3.0)
    broker.restart()

    c, sp = connect(broker, short, 5, clean=False, properties={"session_expiry_interval": 2})
    assert sp is False, "session with expiry 2 s must be gone after 3 s"
    c2, sp2 = connect(broker, long_, 5, clean=False, properties={"session_expiry_interval": 60})
    assert sp2 is True, "session with expiry 60 s must survive the restart"
    p, _ = connect(broker, client_id_on_shard("exp-pub", 0, n), 5, session=False)
    p.publish(t, b"after", qos=1)
    assert payloads(drain(c2)) == [b"after"], "the 60 s session kept its subscription"
    c.expect_nothing(0.3)  # the expired session's subscription is gone


# --------------------------------------------------------------------------- 6. message expiry

def test_message_expiry_counts_across_restart(broker):
    """[MQTT-3.3.2-5] a queued message whose Message Expiry Interval passed (partly while the
    broker was down) is not delivered after the restart; [MQTT-3.3.2-6] one still valid is
    delivered with the interval reduced by the time it waited."""
    n = broker.nshards
    sid = client_id_on_shard("mexp-sub", 0, n)
    t = unique_topic("mexp")
    s, _ = connect(broker, sid, 5, clean=False)
    s.subscribe([(t, 1)])
    s.disconnect()
    p, _ = connect(broker, client_id_on_shard("mexp-pub", 1, n), 5, session=False)
    p.publish(t, b"short", qos=1, properties={"message_expiry_interval": 2})
    p.publish(t, b"long", qos=1, properties={"message_expiry_interval": 60})
    p.disconnect()
    t0 = time.monotonic()
    time.sleep(1.5)
    broker.stop()
    time.sleep(max(0.0, 3.0 - (time.monotonic() - t0)))
    broker.restart()

    s, sp = connect(broker, sid, 5, clean=False)
    assert sp is True
    got = drain(s)
    assert payloads(got) == [b"long"], "[MQTT-3.3.2-5] expired message delivered: %r" % got
    left = got[0]["props"].get("message_expiry_interval")
    assert left is not None and 0 < left <= 58, \
        "[MQTT-3.3.2-6] remaining expiry %r after waiting >= 3 s of 60" % left


# --------------------------------------------------------------------------- 7. no journal

def test_clean_sessions_and_qos0_never_touch_the_journal(broker_factory):
    """Clean sessions (3.1.1 Clean Session 1, MQTT 5 Session Expiry 0) and QoS 0 write nothing
    to the journal whatever the QoS of their traffic (no retained messages):
    ringmq_journal_appends_total{shard="all"} stays 0. A persistent session then does append
    (the counter is live)."""
    mport = free_port()
    broker = broker_factory(["--metrics-addr", "127.0.0.1:%d" % mport])
    n = broker.nshards
    t = unique_topic("clean")
    subs = []
    for shard in range(n):
        for version in (4, 5):
            s, _ = connect(broker, client_id_on_shard("clean-sub", shard, n), version,
                           clean=True, session=False)
            s.subscribe([(t, 2)])
            subs.append(s)
    for shard in range(n):
        for version in (4, 5):
            p, _ = connect(broker, client_id_on_shard("clean-pub", shard, n), version,
                           clean=True, session=False)
            for qos in (0, 1, 2):
                p.publish(t, b"q%d" % qos, qos=qos)
            p.ping()
            p.disconnect()
    for s in subs:
        for _ in range(3 * 2 * n):
            s.recv_publish()
        s.disconnect()
    assert metric(mport, "ringmq_journal_appends_total") == 0

    # Positive control: a persistent session is journaled.
    s, _ = connect(broker, client_id_on_shard("clean-ctl", 0, n), 4, clean=False)
    s.subscribe([(t, 1)])
    s.disconnect()
    deadline = time.monotonic() + 5
    while metric(mport, "ringmq_journal_appends_total") == 0:
        assert time.monotonic() < deadline, "a persistent session appended nothing"
        time.sleep(0.1)


# --------------------------------------------------------------------------- 8. max bytes

def test_journal_max_bytes_refuses_instead_of_dropping(broker_factory):
    """--journal-max-bytes: when the journal of the subscriber's shard is full, QoS 1 publishes
    are refused (MQTT 5 PUBACK 0x97 Quota exceeded; MQTT 3.1.1: connection closed, no PUBACK),
    never acknowledged and then dropped: every PUBACK 0x00 message reaches the offline
    persistent subscriber. Once it has drained, compaction frees space and publishing works
    again."""
    mport = free_port()
    broker = broker_factory(["--journal-segment-bytes", "262144", "--max-packet-size", "65536",
                             "--journal-max-bytes", "786432",
                             "--metrics-addr", "127.0.0.1:%d" % mport])
    n = broker.nshards
    sid = client_id_on_shard("full-sub", 0, n)
    t = unique_topic("full")
    s, _ = connect(broker, sid, 5, clean=False)
    assert s.subscribe([(t, 1)]) == [1]
    s.disconnect()

    p, _ = connect(broker, client_id_on_shard("full-pub", n - 1, n), 5, session=False)
    acked = []
    refused_at = None
    for i in range(400):
        body = (b"%05d-" % i).ljust(8192, b"x")
        _, ack = p.publish(t, body, qos=1)
        rc = ack.ack_reason()
        if rc == 0x97:
            refused_at = i
            break
        assert rc == 0, "PUBACK reason %#x for message %d" % (rc, i)
        acked.append(body)
    assert refused_at is not None, "400 x 8 KiB accepted under --journal-max-bytes 786432"
    assert acked, "the very first publish was refused"
    assert metric(mport, "ringmq_journal_refused_acks_total") >= 1

    # MQTT 3.1.1 has no negative PUBACK: the connection is closed instead.
    p3, _ = connect(broker, client_id_on_shard("full-pub3", n - 1, n), 4)
    p3.send(R.publish_packet(t, b"v3-".ljust(8192, b"y"), qos=1, pid=1))
    before_close = p3.expect_closed(5.0)
    assert not [x for x in before_close if x.type == R.PUBACK], \
        "3.1.1 publisher got a PUBACK although the journal is full: %r" % before_close

    # Nothing acknowledged was dropped.
    s, sp = connect(broker, sid, 5, clean=False)
    assert sp is True
    got = payloads(drain(s, quiet=1.0, total=30))
    missing = [b[:5] for b in acked if b not in got]
    assert not missing, "acknowledged (0x00) but not delivered: %r (got %d of %d)" % (
        missing[:10], len(got), len(acked))
    assert [b for b in got if b in acked] == acked, "QoS 1 order lost"

    # After the drain, compaction frees space: a publish is accepted again within ~10 s.
    deadline = time.monotonic() + 10
    while True:
        _, ack = p.publish(t, b"again", qos=1)
        if ack.ack_reason() == 0:
            break
        assert ack.ack_reason() == 0x97, "PUBACK reason %#x" % ack.ack_reason()
        assert time.monotonic() < deadline, "still 0x97 10 s after the subscriber drained"
        time.sleep(0.3)
    assert b"again" in payloads(drain(s, quiet=1.0))


# --------------------------------------------------------------------------- 9. corruption

def test_corruption_in_the_middle_refuses_start_or_moves_aside(broker):
    """A segment damaged before valid records (not a torn tail) makes the broker refuse to start
    (non-zero exit, stderr names the journal, the corruption and the move-aside flag); with
    --journal-on-corruption move-aside it starts, keeps a *.damaged copy and recovers the
    records before the damage."""
    sid, t, sent = fill_offline_session(broker, 300)
    broker.stop()
    assert broker.exit_code == 0

    seg = segments(broker, 0)[0]
    data = bytearray(seg.read_bytes())
    recs, end = parse_records(data)
    assert len(recs) >= 300, "expected hundreds of records in %s, found %d" % (seg, len(recs))
    # A record at about a third of the used part, with valid records after it.
    target = next(r for r in recs if r[0] >= end // 3)
    assert target != recs[-1]
    off, ln, _ = target
    mid = off + 17 + ln // 2
    for i in range(mid, mid + 8):
        data[i] ^= 0xFF
    seg.write_bytes(bytes(data))

    proc = subprocess.Popen(broker.command(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            stdin=subprocess.DEVNULL, start_new_session=True)
    try:
        out, err = proc.communicate(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate(timeout=5)
        pytest.fail("broker started on a journal corrupted in the middle (still running after "
                    "10 s)\nstdout: %s\nstderr: %s" % (out.decode(errors="replace")[-2000:],
                                                       err.decode(errors="replace")[-2000:]))
    err = err.decode(errors="replace")
    assert proc.returncode != 0, "broker exited 0 on a corrupt journal"
    low = err.lower()
    assert "journal" in low and "corrupt" in low and "move-aside" in low, \
        "stderr should name the journal, the corruption and --journal-on-corruption " \
        "move-aside:\n%s" % err[-2000:]
    assert not list(broker.data_dir.rglob("*.damaged*")), "refuse must change nothing on disk"

    broker.extra_args += ["--journal-on-corruption", "move-aside"]
    broker.start()
    damaged = list((broker.data_dir / "shard-0").glob("*.damaged*"))
    assert damaged, "move-aside left no *.damaged file: %r" % list(broker.data_dir.rglob("*"))
    assert_broker_healthy(broker)
    # What precedes the damage is recovered: the session and a prefix of its queue.
    s, sp = connect(broker, sid, 4, clean=False)
    assert sp is True, "the session record precedes the damage and must be recovered"
    got = payloads(drain(s))
    assert got, "no message before the damage was recovered"
    assert got == sent[:len(got)], "recovered messages are not a prefix of the queue"
    assert len(got) < len(sent), "messages after the damage cannot have been recovered"


def test_torn_tail_starts(broker):
    """A torn tail -- garbage after the last record, a zero-length record whose seq/crc were
    written, a segment file truncated after its last record, an empty next segment file -- is
    not corruption: the broker starts (with the default refuse) and loses no record."""
    sid, t, sent = fill_offline_session(broker, 200)

    # 1. Garbage after the last record.
    broker.stop()
    seg = active_segment(broker, 0)
    data = bytearray(seg.read_bytes())
    recs, end = parse_records(data)
    rnd = random.Random(1)
    garbage = bytes(rnd.randrange(1, 256) for _ in range(40))
    data[end:end + len(garbage)] = garbage
    seg.write_bytes(bytes(data))
    broker.restart()

    # 2. A torn append: len 0, crc and seq written (what a crash mid-append leaves).
    broker.stop()
    seg = active_segment(broker, 0)
    data = bytearray(seg.read_bytes())
    recs, end = parse_records(data)
    last_seq = recs[-1][2]
    struct.pack_into("<IIQ", data, end, 0, 0x12345678, last_seq + 1)
    seg.write_bytes(bytes(data))
    broker.restart()

    # 3. The segment cut right after its last record, and an empty next segment file.
    broker.stop()
    seg = active_segment(broker, 0)
    recs, end = parse_records(seg.read_bytes())
    with open(seg, "r+b") as f:
        f.truncate(end)
    idx = max(int(x.name[4:24]) for x in segments(broker, 0))
    (seg.parent / ("seg-%020d.rmj" % (idx + 1))).write_bytes(b"")
    broker.restart()
    assert not list(broker.data_dir.rglob("*.damaged*"))

    s, sp = connect(broker, sid, 4, clean=False)
    assert sp is True
    got = payloads(drain(s))
    assert got == sent, "lost %d of %d messages through torn-tail restarts" % (
        len(sent) - len(got), len(sent))
    assert_broker_healthy(broker)


# --------------------------------------------------------------------------- 10. fsync

@pytest.mark.parametrize("fsync", ["always", "every=5", "never"])
def test_fsync_modes_round_trip(broker_factory, fsync):
    """Every --fsync mode acknowledges QoS 1/2 publishes and subscriptions, and what was
    acknowledged survives a kill -9 (--fsync never: a process crash, not a machine crash)."""
    broker = broker_factory(["--fsync", fsync])
    n = broker.nshards
    sid = client_id_on_shard("fs-sub", 0, n)
    t = unique_topic("fs")
    rt = topic_on_shard("fs-ret", n - 1, n)
    s, _ = connect(broker, sid, 4, clean=False)
    assert s.subscribe([(t, 2)]) == [2]
    s.disconnect()
    p, _ = connect(broker, client_id_on_shard("fs-pub", 1, n))
    p.publish(t, b"one", qos=1)
    p.publish(t, b"two", qos=2)
    p.publish(rt, b"kept", qos=1, retain=True)
    p.disconnect()
    kill9_restart(broker)
    s, sp = connect(broker, sid, 4, clean=False)
    assert sp is True
    assert sorted(payloads(drain(s))) == [b"one", b"two"]
    c, _ = connect(broker, client_id_on_shard("fs-ret", 0, n))
    c.subscribe([(rt, 1)])
    assert payloads(drain(c)) == [b"kept"]


# --------------------------------------------------------------------------- 11. SIGTERM

def test_sigterm_exits_0_and_keeps_everything_acknowledged(broker):
    """SIGTERM while a publisher streams QoS 1 messages: the broker exits 0, and every message
    whose PUBACK reached the publisher is delivered to the offline persistent subscriber
    after the restart."""
    n = broker.nshards
    sid = client_id_on_shard("term-sub", 0, n)
    t = unique_topic("term")
    s, _ = connect(broker, sid, 4, clean=False)
    assert s.subscribe([(t, 1)]) == [1]
    s.disconnect()

    p, _ = connect(broker, client_id_on_shard("term-pub", 1, n))
    window, total = 16, 600
    inflight = {}
    acked = []
    nxt = 0
    signalled = False
    deadline = time.monotonic() + 15
    try:
        while time.monotonic() < deadline and (nxt < total or inflight):
            while len(inflight) < window and nxt < total:
                nxt += 1
                body = b"m%05d" % nxt
                inflight[nxt] = body
                p.send(R.publish_packet(t, body, qos=1, pid=nxt))
            pkt = p.recv(2.0)
            if pkt.type == R.PUBACK:
                acked.append(inflight.pop(pkt.pid))
            if len(acked) >= 100 and not signalled:
                broker.proc.send_signal(signal.SIGTERM)
                signalled = True
    except (R.ConnectionClosed, R.ReadTimeout, OSError):
        pass
    if not signalled:
        broker.proc.send_signal(signal.SIGTERM)
    rc = broker.proc.wait(10)
    assert rc == 0, "SIGTERM exit code %r" % rc
    broker.restart()

    s, sp = connect(broker, sid, 4, clean=False)
    assert sp is True
    got = payloads(drain(s, total=30))
    missing = [b for b in acked if b not in got]
    assert not missing, "%d acknowledged messages lost by SIGTERM (of %d acked, %d got): %r" % (
        len(missing), len(acked), len(got), missing[:10])
    assert [b for b in got if b in set(acked)] == acked, "QoS 1 order lost"
