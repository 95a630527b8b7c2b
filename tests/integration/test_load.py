"""Many concurrent clients, fan-out across shards."""

import threading

import rawmqtt as R
from helpers import client_id_on_shard, unique_topic


def _connect_many(broker, clients, n, prefix, version=4, clean=True):
    """Open n sockets, send all CONNECTs back-to-back, then collect CONNACKs (concurrent handshakes).
    Client ids are spread round-robin over the shards."""
    cs = []
    for i in range(n):
        c = clients.raw(broker, version=version, timeout=10)
        c.send(R.connect_packet(client_id_on_shard("%s%d" % (prefix, i), i, broker.nshards),
                                version=version, clean=clean))
        cs.append(c)
    for c in cs:
        p = c.recv(10)
        assert p.type == R.CONNACK and p.body[1] == 0, p
    return cs


def test_200_clients_connect_and_publish_concurrently(broker, clients):
    """[MQTT-4.6.0-5][MQTT-3.3.1] 200 clients (spread over shards) connect concurrently and each publish
    5 QoS 1 messages from its own thread; a '#' subscriber receives all 1000, in order per publisher"""
    base = unique_topic("load")
    sub = clients.raw(broker, timeout=10)
    sub.connect(client_id_on_shard("loadsub", 0, broker.nshards))
    sub.subscribe([(base + "/#", 1)])
    pubs = _connect_many(broker, clients, 200, "loadpub")
    errors = []

    def run(i, c):
        try:
            for k in range(5):
                c.publish("%s/%d" % (base, i), b"%d:%d" % (i, k), qos=1, timeout=10)
        except Exception as e:  # noqa: BLE001
            errors.append((i, e))

    threads = [threading.Thread(target=run, args=(i, c)) for i, c in enumerate(pubs)]
    for t in threads:
        t.start()
    got = {}
    for _ in range(1000):
        m = sub.recv_publish(10)
        i, k = m["payload"].split(b":")
        got.setdefault(int(i), []).append(int(k))
    for t in threads:
        t.join(10)
    assert not errors, errors[:5]
    assert len(got) == 200
    assert all(v == list(range(5)) for v in got.values()), "per-publisher order (ordered topic)"
    sub.expect_nothing(0.3)


def test_fanout_one_publish_to_100_subscribers(broker, clients):
    """[MQTT-3.3.1][MQTT-3.8.4-6] one QoS 1 publish reaches 100 subscribers spread over all shards,
    each exactly once at its subscribed QoS"""
    t = unique_topic("fan")
    subs = _connect_many(broker, clients, 100, "fansub")
    for i, s in enumerate(subs):
        s.send(R.subscribe_packet(1, [(t, i % 3)]))
    for i, s in enumerate(subs):
        assert s.expect(R.SUBACK, 10).suback_codes() == [i % 3]
    p = clients.raw(broker)
    p.connect(client_id_on_shard("fanpub", 1, broker.nshards))
    p.publish(t, b"fan-out", qos=2)
    for i, s in enumerate(subs):
        m = s.recv_publish(10)
        assert m["payload"] == b"fan-out" and m["qos"] == min(2, i % 3)
    for s in subs[:10]:
        s.expect_nothing(0.1)


def test_fanout_burst(broker, clients):
    """[MQTT-4.6.0-5] 50 subscribers x 100 QoS 0 messages: all delivered, in order (TCP, no loss)"""
    t = unique_topic("burst")
    subs = _connect_many(broker, clients, 50, "burstsub")
    for s in subs:
        s.subscribe([(t, 0)])
    p = clients.raw(broker)
    p.connect(client_id_on_shard("burstpub", 0, broker.nshards))
    for i in range(100):
        p.send(R.publish_packet(t, b"%d" % i))
    p.ping()
    for s in subs:
        assert [s.recv_publish(10)["payload"] for _ in range(100)] == [b"%d" % i for i in range(100)]


def test_paho_clients_concurrently(broker, clients):
    """[MQTT-3.1.4][MQTT-3.3.1] 40 paho clients connect, subscribe to their own topic and get
    a message from a peer on another shard"""
    n = broker.nshards
    base = unique_topic("paho")
    cs = []
    for i in range(40):
        c = clients.paho(broker, client_id_on_shard("pc%d" % i, i, n))
        c.connect()
        c.subscribe("%s/%d" % (base, i), 1)
        cs.append(c)
    for i, c in enumerate(cs):
        cs[(i + 1) % len(cs)].publish("%s/%d" % (base, i), b"to-%d" % i, qos=1)
    for i, c in enumerate(cs):
        assert c.get().payload == b"to-%d" % i
