"""QoS 0/1/2 delivery, acknowledgement flows, packet identifiers, retransmission."""

import pytest

import rawmqtt as R
from helpers import client_id_on_shard, shard_pair, unique_topic


@pytest.mark.parametrize("version", [4, 5])
@pytest.mark.parametrize("sub_qos", [0, 1, 2])
@pytest.mark.parametrize("pub_qos", [0, 1, 2])
def test_qos_matrix_cross_shard(broker, clients, pub_qos, sub_qos, version):
    """[MQTT-3.8.4-6] (v5 [MQTT-3.8.4-8]) delivered QoS = min(published QoS, granted QoS);
    [MQTT-2.3.1-1] non-zero packet id for QoS>0; [MQTT-4.3.2-1][MQTT-4.3.3-1] ack flows
    complete in both directions (publisher and subscriber on different shards)"""
    sid, pid = shard_pair("qm", broker.nshards)
    s = clients.raw(broker, version=version)
    s.connect(sid)
    t = unique_topic()
    assert s.subscribe([(t, sub_qos)]) == [sub_qos], "[MQTT-3.9.3-?] granted QoS"
    p = clients.raw(broker, version=version)
    p.connect(pid)
    _, ack = p.publish(t, b"q%d" % pub_qos, qos=pub_qos)
    if ack is not None and version == 5:
        assert ack.ack_reason() == 0
    m = s.recv_publish()
    assert m["qos"] == min(pub_qos, sub_qos)
    assert m["payload"] == b"q%d" % pub_qos
    assert not m["dup"], "first delivery must have DUP=0 [MQTT-3.3.1-1]"
    if m["qos"]:
        assert m["pid"] != 0
    else:
        assert m["pid"] is None
    s.expect_nothing(0.2)
    s.ping()


@pytest.mark.parametrize("version", [4, 5])
def test_qos_matrix_paho(broker, clients, version):
    """[MQTT-3.8.4-6] paho subscribers at QoS 0/1/2 receive each publication at min(pub, sub) QoS
    (paho drives the full ack flows)"""
    n = broker.nshards
    t = unique_topic()
    subs = {}
    for q in range(3):
        s = clients.paho(broker, client_id_on_shard("pq%d" % q, q, n), version)
        s.connect()
        s.subscribe(t, q)
        subs[q] = s
    p = clients.paho(broker, client_id_on_shard("pqpub", 1, n), version)
    p.connect()
    for pq in range(3):
        p.publish(t, b"%d" % pq, qos=pq)
    for sq, s in subs.items():
        got = sorted((m.payload, m.qos) for m in s.get_n(3))
        assert got == sorted((b"%d" % pq, min(pq, sq)) for pq in range(3))
        s.expect_none(0.2)


def test_qos1_puback_packet_id(broker, clients):
    """[MQTT-3.4.0-?][MQTT-4.3.2-2] PUBACK carries the packet id of the PUBLISH it acknowledges"""
    c = clients.raw(broker)
    c.connect("puback-ids")
    for pid in (1, 300, 65535):
        c.send(R.publish_packet("x/y", b"x", qos=1, pid=pid))
        ack = c.expect(R.PUBACK)
        assert ack.pid == pid and ack.flags == 0


def test_qos2_flow_packets(broker, clients):
    """[MQTT-4.3.3-1][MQTT-3.6.1-1] QoS 2 sender flow: PUBREC(pid) -> PUBREL(pid, flags 0010) -> PUBCOMP(pid)"""
    c = clients.raw(broker)
    c.connect("q2flow")
    c.send(R.publish_packet("x/y", b"x", qos=2, pid=99))
    rec = c.expect(R.PUBREC)
    assert rec.pid == 99 and rec.flags == 0
    c.send(R.ack_packet(R.PUBREL, 99))
    comp = c.expect(R.PUBCOMP)
    assert comp.pid == 99 and comp.flags == 0


def test_qos2_duplicate_publish_delivered_once(broker, clients):
    """[MQTT-4.3.3-2] QoS 2: a retransmitted PUBLISH (DUP=1, same packet id) before PUBREL
    must not cause a second delivery (exactly once)"""
    sid, pid = shard_pair("q2dup", broker.nshards)
    s = clients.raw(broker)
    s.connect(sid)
    t = unique_topic()
    s.subscribe([(t, 2)])
    p = clients.raw(broker)
    p.connect(pid)
    p.send(R.publish_packet(t, b"once", qos=2, pid=7))
    assert p.expect(R.PUBREC).pid == 7
    p.send(R.publish_packet(t, b"once", qos=2, pid=7, dup=True))
    assert p.expect(R.PUBREC).pid == 7
    p.send(R.ack_packet(R.PUBREL, 7))
    assert p.expect(R.PUBCOMP).pid == 7
    assert s.recv_publish()["payload"] == b"once"
    s.expect_nothing(0.5)


def test_qos2_packet_id_reusable_after_pubcomp(broker, clients):
    """[MQTT-2.3.1-?][MQTT-4.3.3-2] after PUBCOMP the packet id is free: a new PUBLISH with the same id is a new message"""
    sid, pid = shard_pair("q2reuse", broker.nshards)
    s = clients.raw(broker)
    s.connect(sid)
    t = unique_topic()
    s.subscribe([(t, 2)])
    p = clients.raw(broker)
    p.connect(pid)
    p.publish(t, b"first", qos=2, pid=5)
    p.publish(t, b"second", qos=2, pid=5)
    got = [s.recv_publish()["payload"], s.recv_publish()["payload"]]
    assert got == [b"first", b"second"]


def test_qos2_pubrel_retransmitted_after_reconnect(broker, clients):
    """[MQTT-4.4.0-1][MQTT-4.3.3-2] publisher loses the connection after PUBREC; on reconnect
    (clean session 0) it resends PUBREL, the broker answers PUBCOMP; delivered exactly once"""
    sid, pid = shard_pair("q2rel", broker.nshards)
    s = clients.raw(broker)
    s.connect(sid)
    t = unique_topic()
    s.subscribe([(t, 2)])
    p = clients.raw(broker)
    p.connect(pid, clean=False)
    p.send(R.publish_packet(t, b"x-once", qos=2, pid=11))
    assert p.expect(R.PUBREC).pid == 11
    p.close()
    p2 = clients.raw(broker)
    sp, rc, _ = p2.connect(pid, clean=False)
    assert sp is True
    p2.send(R.ack_packet(R.PUBREL, 11))
    assert p2.expect(R.PUBCOMP).pid == 11
    assert s.recv_publish()["payload"] == b"x-once"
    s.expect_nothing(0.5)


def test_qos2_broker_resends_pubrel_after_reconnect(broker, clients):
    """[MQTT-4.4.0-1] subscriber sent PUBREC then lost the connection before PUBCOMP: on
    reconnect (clean session 0) the broker resends PUBREL (not the PUBLISH)"""
    sid, pid = shard_pair("q2srel", broker.nshards)
    s = clients.raw(broker)
    s.connect(sid, clean=False)
    t = unique_topic()
    s.subscribe([(t, 2)])
    p = clients.raw(broker)
    p.connect(pid)
    p.publish(t, b"z", qos=2)
    m = s.recv_publish(ack=False)
    assert m["qos"] == 2
    s.send(R.ack_packet(R.PUBREC, m["pid"]))
    s.expect(R.PUBREL, pid=m["pid"])  # broker's first PUBREL, deliberately not completed
    s.close()
    s2 = clients.raw(broker)
    sp, rc, _ = s2.connect(sid, clean=False)
    assert sp is True
    rel = s2.recv()
    assert rel.type == R.PUBREL and rel.pid == m["pid"] and rel.flags == 0x02, rel
    s2.send(R.ack_packet(R.PUBCOMP, m["pid"]))
    s2.expect_nothing(0.5)


@pytest.mark.parametrize("qos", [1, 2])
def test_unacked_publish_redelivered_with_dup(broker, clients, qos):
    """[MQTT-4.4.0-1][MQTT-3.3.1-1] an unacknowledged QoS 1/2 PUBLISH is resent on reconnect
    (clean session 0) with the same packet id and DUP=1"""
    sid, pid = shard_pair("redeliv", broker.nshards)
    s = clients.raw(broker)
    s.connect(sid, clean=False)
    t = unique_topic()
    s.subscribe([(t, qos)])
    p = clients.raw(broker)
    p.connect(pid)
    p.publish(t, b"again", qos=qos)
    m = s.recv_publish(ack=False)
    assert not m["dup"]
    s.close()
    s2 = clients.raw(broker)
    sp, rc, _ = s2.connect(sid, clean=False)
    assert sp is True
    m2 = s2.recv_publish(ack=False)
    assert m2["pid"] == m["pid"] and m2["dup"] is True and m2["payload"] == b"again" and m2["qos"] == qos
    s2.ack_publish(m2)
    s2.expect_nothing(0.4)


def test_inflight_packet_ids_distinct(broker, clients):
    """[MQTT-2.3.1-2] packet ids of concurrently unacknowledged QoS 1 PUBLISHes to a client are distinct"""
    sid, pid = shard_pair("distinct", broker.nshards)
    s = clients.raw(broker)
    s.connect(sid)
    t = unique_topic()
    s.subscribe([(t, 1)])
    p = clients.raw(broker)
    p.connect(pid)
    for i in range(10):
        p.publish(t, b"%d" % i, qos=1)
    ms = [s.recv_publish(ack=False) for _ in range(10)]
    assert len({m["pid"] for m in ms}) == 10
    assert [m["payload"] for m in ms] == [b"%d" % i for i in range(10)], "[MQTT-4.6.0-5] order preserved"
    for m in ms:
        s.ack_publish(m)


def test_max_inflight_limits_unacked_deliveries_v311(broker_factory, clients):
    """[MQTT-4.9.0-?] --max-inflight 5: a 3.1.1 subscriber that never acks has at most 5 QoS 1
    messages in flight; acking one releases the next"""
    b = broker_factory(["--max-inflight", "5"])
    sid, pid = shard_pair("inflight", b.nshards)
    s = clients.raw(b)
    s.connect(sid)
    t = unique_topic()
    s.subscribe([(t, 1)])
    p = clients.raw(b)
    p.connect(pid)
    for i in range(12):
        p.publish(t, b"%d" % i, qos=1)
    first = [s.recv_publish(ack=False) for _ in range(5)]
    s.expect_nothing(0.5)
    s.ack_publish(first[0])
    nxt = s.recv_publish(ack=False)
    assert nxt["payload"] == b"5"
    # (not asserting that exactly one more arrives: mosquitto refills the window by
    # two here; 3.1.1 does not make the window size normative)


def test_receive_maximum_respected_v5(broker, clients):
    """[MQTT-3.3.4-9] v5: the server does not send more unacknowledged QoS>0 PUBLISHes than the
    client's Receive Maximum; acking frees a slot [MQTT-4.9.0-?]"""
    sid, pid = shard_pair("rcvmax", broker.nshards)
    s = clients.raw(broker, version=5)
    s.connect(sid, properties={"receive_maximum": 3})
    t = unique_topic()
    s.subscribe([(t, 1)])
    p = clients.raw(broker, version=5)
    p.connect(pid)
    for i in range(8):
        p.publish(t, b"%d" % i, qos=1)
    first = [s.recv_publish(ack=False) for _ in range(3)]
    s.expect_nothing(0.5)
    for m in first:
        s.ack_publish(m)
    rest = [s.recv_publish() for _ in range(5)]
    assert [m["payload"] for m in first + rest] == [b"%d" % i for i in range(8)]
