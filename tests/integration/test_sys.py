"""$SYS/broker/... statistics published every --sys-interval seconds (Mosquitto's topic names),
retained, and invisible to wildcard subscriptions that start with a wildcard [MQTT-4.7.2-1]."""

import time

import pytest

from helpers import client_id_on_shard, unique_topic

pytestmark = pytest.mark.ringmq_only


def sys_values(client, wanted, timeout=6.0):
    """Collects $SYS topic -> payload until every topic in `wanted` has been seen."""
    seen = {}
    deadline = time.monotonic() + timeout
    while not wanted <= seen.keys():
        left = deadline - time.monotonic()
        assert left > 0, "missing $SYS topics: %s" % sorted(wanted - seen.keys())
        m = client.get(timeout=left)
        seen[m.topic] = m.payload.decode()
    return seen


def test_sys_topics_report_clients_and_traffic(broker_factory, clients):
    broker = broker_factory(["--sys-interval", "1"])
    n = broker.nshards
    topic = unique_topic("sys")
    # Traffic on every shard: a subscriber and a publisher each.
    subs = []
    for shard in range(n):
        s = clients.paho(broker, client_id_on_shard("syssub", shard, n))
        s.connect()
        s.subscribe(topic, qos=1)
        subs.append(s)
    pub = clients.paho(broker, client_id_on_shard("syspub", n - 1, n))
    pub.connect()
    for i in range(10):
        pub.publish(topic, b"x%d" % i, qos=1)
    for s in subs:
        assert len(s.get_n(10)) == 10

    # Wildcards from the first level never match $SYS [MQTT-4.7.2-1].
    everything = clients.paho(broker, "sys-hash")
    everything.connect()
    everything.subscribe("#")
    watcher = clients.paho(broker, "sys-watch")
    watcher.connect()
    watcher.subscribe("$SYS/#")
    # Retained: the last publication arrives at once, then every interval anew.
    first = sys_values(watcher, {"$SYS/broker/uptime", "$SYS/broker/clients/connected",
                                 "$SYS/broker/publish/messages/received", "$SYS/broker/version"})
    assert first["$SYS/broker/version"].startswith("ringmq ")
    assert first["$SYS/broker/uptime"].endswith(" seconds")
    watcher.drain(0.2)
    later = sys_values(watcher, {"$SYS/broker/uptime", "$SYS/broker/clients/connected",
                                 "$SYS/broker/publish/messages/received",
                                 "$SYS/broker/publish/messages/sent",
                                 "$SYS/broker/subscriptions/count",
                                 "$SYS/broker/load/publish/received/1min"}, timeout=4.0)
    # n subscribers, the publisher, and the two watchers.
    assert int(later["$SYS/broker/clients/connected"]) == n + 3
    assert int(later["$SYS/broker/publish/messages/received"]) >= 10
    assert int(later["$SYS/broker/publish/messages/sent"]) >= 10 * n
    assert int(later["$SYS/broker/subscriptions/count"]) >= n + 2
    assert float(later["$SYS/broker/load/publish/received/1min"]) >= 0.0
    assert int(later["$SYS/broker/uptime"].split()[0]) >= 1
    # A whole interval passes: $SYS was published again, and "#" got none of it.
    everything.expect_none(1.5)


def test_sys_interval_zero_publishes_nothing(broker_factory, clients):
    broker = broker_factory(["--sys-interval", "0"])
    c = clients.paho(broker, "sys-off")
    c.connect()
    c.subscribe("$SYS/#")
    c.expect_none(1.5)
