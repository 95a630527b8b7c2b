"""The Prometheus metrics endpoint (--metrics-addr): /metrics and /healthz on shard 0, with
every series per shard and merged (shard="all")."""

import http.client
import socket
import subprocess

import pytest
from prometheus_client.parser import text_string_to_metric_families

from conftest import RINGMQ_BIN, free_port
from helpers import client_id_on_shard, unique_topic

pytestmark = pytest.mark.ringmq_only


def http_get(port, path):
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        c.request("GET", path)
        r = c.getresponse()
        return r.status, r.getheader("Content-Type"), r.read().decode()
    finally:
        c.close()


def scrape(port):
    status, ctype, body = http_get(port, "/metrics")
    assert status == 200, body
    assert ctype.startswith("text/plain; version=0.0.4"), ctype
    samples = {}
    types = {}
    for fam in text_string_to_metric_families(body):
        types[fam.name] = fam.type
        for s in fam.samples:
            samples[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return types, samples


def value(samples, name, **labels):
    key = (name, tuple(sorted((k, str(v)) for k, v in labels.items())))
    assert key in samples, "missing %s%r" % (name, labels)
    return samples[key]


def test_metrics_count_traffic_per_shard_and_merged(broker_factory, clients):
    mport = free_port()
    broker = broker_factory(["--metrics-addr", "127.0.0.1:%d" % mport])
    n = broker.nshards
    shards = [str(i) for i in range(n)] + ["all"]

    status, _, body = http_get(mport, "/healthz")
    assert status == 200 and body.strip() == "ok"
    assert http_get(mport, "/nope")[0] == 404

    types, before = scrape(mport)
    assert types["ringmq_messages_in"] == "counter"
    assert types["ringmq_publish_to_write_seconds"] == "histogram"
    assert types["ringmq_connections"] == "gauge"

    topic = unique_topic("metrics")
    # A subscriber on every shard; the publisher on shard 0, so the others get it cross-shard.
    subs = []
    for shard in range(n):
        s = clients.paho(broker, client_id_on_shard("msub", shard, n))
        s.connect()
        s.subscribe(topic, qos=1)
        subs.append(s)
    pub = clients.paho(broker, client_id_on_shard("mpub", 0, n))
    pub.connect()
    count = 20
    for i in range(count):
        pub.publish(topic, b"m%d" % i, qos=1)
    for s in subs:
        assert len(s.get_n(count)) == count

    _, after = scrape(mport)

    def moved(name, shard, **labels):
        return value(after, name, shard=shard, **labels) - before.get(
            (name, tuple(sorted([("shard", shard)] + [(k, str(v)) for k, v in labels.items()]))), 0)

    assert moved("ringmq_messages_in_total", "0", qos=1) >= count
    assert moved("ringmq_messages_in_total", "all", qos=1) >= count
    for shard in shards:
        # Every shard delivered `count` messages to its subscriber.
        need = count * (n if shard == "all" else 1)
        assert moved("ringmq_messages_out_total", shard, qos=1) >= need, shard
        delivered = sum(moved("ringmq_publish_to_write_seconds_count", shard, path=p, qos=1)
                        for p in ("local", "cross_shard"))
        assert delivered >= need, shard
        inf = value(after, "ringmq_publish_to_write_seconds_bucket", shard=shard, path="local",
                    qos=1, le="+Inf")
        assert inf == value(after, "ringmq_publish_to_write_seconds_count", shard=shard,
                            path="local", qos=1)
        assert value(after, "ringmq_connections", shard=shard) >= 1
    assert moved("ringmq_publish_to_write_seconds_count", "0", path="local", qos=1) >= count
    # Nothing was delivered at QoS 0 or 2.
    assert moved("ringmq_publish_to_write_seconds_count", "all", path="local", qos=0) == 0
    assert moved("ringmq_publish_to_write_seconds_count", "all", path="local", qos=2) == 0
    if n > 1:
        assert moved("ringmq_publish_to_write_seconds_count", "1", path="cross_shard",
                     qos=1) >= count
        assert moved("ringmq_cross_shard_in_total", "1") >= count
        assert moved("ringmq_cross_shard_hop_seconds_count", "all") >= count
    assert value(after, "ringmq_connections", shard="all") >= n + 1
    assert value(after, "ringmq_subscriptions", shard="all") >= n
    assert value(after, "ringmq_connect_to_connack_seconds_count", shard="all") >= n + 1
    # Merged = sum of the shards.
    for name, labels in [("ringmq_messages_out_total", {"qos": 1}),
                         ("ringmq_connects_total", {}),
                         ("ringmq_publish_to_write_seconds_count",
                          {"path": "cross_shard", "qos": 1})]:
        total = sum(value(after, name, shard=str(i), **labels) for i in range(n))
        assert value(after, name, shard="all", **labels) == total, name


def test_metrics_addr_in_use_is_a_startup_error(tmp_path):
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen(1)
    port = taken.getsockname()[1]
    try:
        r = subprocess.run([str(RINGMQ_BIN), "--listen", "127.0.0.1:%d" % free_port(),
                            "--shards", "1", "--data-dir", str(tmp_path / "data"),
                            "--metrics-addr", "127.0.0.1:%d" % port],
                           capture_output=True, text=True, timeout=10)
    finally:
        taken.close()
    assert r.returncode != 0
    assert "cannot listen for metrics on 127.0.0.1:%d" % port in r.stderr, r.stderr


def test_metrics_count_refusals_errors_and_closes_by_reason(broker_factory, clients):
    """CONNACK refusals and protocol errors are counted by reason code, closes by why; the
    process gauges report memory per connection."""
    import rawmqtt
    mport = free_port()
    broker = broker_factory(["--metrics-addr", "127.0.0.1:%d" % mport])
    _, before = scrape(mport)
    # CONNACK 0x85: MQTT 3.1.1, empty client id with Clean Session 0 [MQTT-3.1.3-8].
    raw = rawmqtt.RawClient(broker.host, broker.port)
    raw.connect("", clean=False, expect_rc=0x02)
    raw.expect_closed()
    # A protocol error: packet type 0 is reserved -> closed (0x81 Malformed Packet).
    raw = rawmqtt.RawClient(broker.host, broker.port, version=5)
    raw.connect("bad-one")
    raw.send(bytes([0x00, 0x00]))
    raw.expect_closed()
    live = clients.paho(broker, "alive-one")
    live.connect()
    deadline = __import__("time").monotonic() + 5
    while True:
        _, after = scrape(mport)
        refused = value(after, "ringmq_connack_refusals_total", shard="all", reason_code="0x85")
        if refused >= 1 or __import__("time").monotonic() > deadline:
            break
    assert refused - before.get(("ringmq_connack_refusals_total",
                                 (("reason_code", "0x85"), ("shard", "all"))), 0) == 1
    errors = [v for (name, labels), v in after.items()
              if name == "ringmq_protocol_errors_by_reason_total" and ("shard", "all") in labels]
    assert sum(errors) >= 1, errors
    assert value(after, "ringmq_connections_closed_by_reason_total", shard="all",
                 reason="rejected") >= 1
    assert value(after, "ringmq_connections_closed_by_reason_total", shard="all",
                 reason="protocol_error") >= 1
    rss = value(after, "ringmq_process_resident_memory_bytes")
    assert rss > 1_000_000
    conns = value(after, "ringmq_connections", shard="all")
    assert conns >= 1
    assert value(after, "ringmq_memory_per_connection_bytes") == rss // conns
    assert value(after, "ringmq_uptime_seconds") >= 0
