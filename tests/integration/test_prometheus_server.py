"""A real Prometheus server scrapes ringmq's /metrics endpoint.

test_metrics.py checks the exposition with prometheus_client's parser; this test checks that the
real thing (the `prometheus` binary, Debian package `prometheus`, installed by `make deps`)
accepts every scrape and that PromQL sees the right values: target up, connected clients,
messages in by QoS, and the publish-to-write histogram usable by histogram_quantile().

The prometheus binary is a hard requirement: when it is missing the test fails (it does not
skip), so a CI machine without it cannot go green silently.
"""

import json
import math
import os
import shutil
import signal
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request

import pytest

from conftest import free_port
from helpers import client_id_on_shard, unique_topic

pytestmark = pytest.mark.ringmq_only

PROMETHEUS_BIN = os.environ.get("PROMETHEUS_BIN") or shutil.which("prometheus") \
    or "/usr/bin/prometheus"
WAIT = 30.0  # bound for every wait on Prometheus (start, first scrape, query results)


class Prometheus:
    """A prometheus server child process scraping one target every second."""

    def __init__(self, workdir, target, job="ringmq"):
        self.job = job
        self.port = free_port()
        self.base = "http://127.0.0.1:%d" % self.port
        self.workdir = workdir
        self.config = workdir / "prometheus.yml"
        self.config.write_text(
            "global:\n"
            "  scrape_interval: 1s\n"
            "  scrape_timeout: 1s\n"
            "  evaluation_interval: 1s\n"
            "scrape_configs:\n"
            "  - job_name: %s\n"
            "    metrics_path: /metrics\n"
            "    static_configs:\n"
            "      - targets: ['%s']\n" % (job, target))
        self.log_path = workdir / "prometheus.log"
        self._log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(
            [PROMETHEUS_BIN,
             "--config.file=%s" % self.config,
             "--storage.tsdb.path=%s" % (workdir / "tsdb"),
             "--web.listen-address=127.0.0.1:%d" % self.port,
             "--storage.tsdb.retention.time=1h"],
            stdout=self._log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            start_new_session=True)

    def stop(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self._log.close()

    def log_tail(self, n=40):
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return "<no prometheus log>"

    def _check_alive(self):
        if self.proc.poll() is not None:
            pytest.fail("prometheus exited with %s:\n%s" % (self.proc.returncode, self.log_tail()))

    def get(self, path, **params):
        """GET an API path; returns (status, decoded JSON or text). Connection errors -> (None, str)."""
        url = self.base + path + ("?" + urllib.parse.urlencode(params) if params else "")
        try:
            with urllib.request.urlopen(url, timeout=5) as r:
                body = r.read().decode()
                status = r.status
        except urllib.error.HTTPError as e:
            body, status = e.read().decode(errors="replace"), e.code
        except OSError as e:
            return None, str(e)
        try:
            return status, json.loads(body)
        except ValueError:
            return status, body

    def wait_ready(self, deadline):
        last = None
        while time.monotonic() < deadline:
            self._check_alive()
            status, last = self.get("/-/ready")
            if status == 200:
                return
            time.sleep(0.1)
        pytest.fail("prometheus not ready on port %d within %.0fs (last answer: %r):\n%s"
                    % (self.port, WAIT, last, self.log_tail()))

    def target(self):
        """The active target of our job as /api/v1/targets reports it (None until discovered)."""
        status, body = self.get("/api/v1/targets", state="active")
        if status != 200:
            return None
        for t in body["data"]["activeTargets"]:
            if t["labels"].get("job") == self.job:
                return t
        return None

    def query(self, expr):
        """Instant query -> list of (labels, float value); raises on a PromQL error."""
        self._check_alive()
        status, body = self.get("/api/v1/query", query=expr)
        assert status == 200 and isinstance(body, dict) and body.get("status") == "success", \
            "query %r failed: HTTP %s %r" % (expr, status, body)
        return [(r["metric"], float(r["value"][1])) for r in body["data"]["result"]]

    def scrape_count(self):
        """Scrapes of our job stored so far (count of `up` samples in the last 5 minutes)."""
        r = self.query('count_over_time(up{job="%s"}[5m])' % self.job)
        return int(r[0][1]) if r else 0

    def wait_until(self, what, check, deadline):
        """Poll check() -> (ok, observed) until ok; fail naming `what` and the last observation."""
        observed = None
        while time.monotonic() < deadline:
            ok, observed = check()
            if ok:
                return observed
            time.sleep(0.25)
        t = self.target()
        pytest.fail("prometheus: %s not seen within %.0fs; last observed: %r; target: health=%r "
                    "lastError=%r lastScrape=%r\nprometheus log:\n%s"
                    % (what, WAIT, observed, t and t.get("health"), t and t.get("lastError"),
                       t and t.get("lastScrape"), self.log_tail()))


@pytest.fixture
def prometheus(tmp_path):
    """prometheus(target) -> started Prometheus scraping target; always stopped at teardown."""
    started = []

    def start(target):
        # Checked here, in the test's call phase, so a missing binary is a FAILED test.
        if not (os.path.isfile(PROMETHEUS_BIN) and os.access(PROMETHEUS_BIN, os.X_OK)):
            pytest.fail("prometheus binary not found at %s (set PROMETHEUS_BIN or put "
                        "`prometheus` on PATH): install the Debian package with `make deps` "
                        "(apt-get install prometheus)" % PROMETHEUS_BIN, pytrace=False)
        p = Prometheus(tmp_path, target)
        started.append(p)
        return p

    yield start
    for p in started:
        p.stop()


def single(result, expr):
    assert len(result) <= 1, "query %r returned several series: %r" % (expr, result)
    return result[0][1] if result else None


def test_real_prometheus_scrapes_ringmq(broker_factory, clients, prometheus):
    mport = free_port()
    broker = broker_factory(["--metrics-addr", "127.0.0.1:%d" % mport])
    n = broker.nshards
    prom = prometheus("127.0.0.1:%d" % mport)
    deadline = time.monotonic() + WAIT
    prom.wait_ready(deadline)

    # 1. The target is up, before any traffic: the rate() window below then starts at 0.
    def target_up():
        t = prom.target()
        ok = t is not None and t["health"] == "up" and prom.scrape_count() >= 1
        return ok, t and {k: t.get(k) for k in ("health", "lastError", "scrapeUrl")}
    prom.wait_until("target ringmq health 'up'", target_up, deadline)
    assert single(prom.query('up{job="ringmq"}'), "up") == 1.0

    # 2. Traffic: a subscriber on every shard, one publisher on shard 0 (so with 2 shards the
    # messages also take the cross-shard path).
    topic = unique_topic("prom")
    subs = []
    for shard in range(n):
        s = clients.paho(broker, client_id_on_shard("psub", shard, n))
        s.connect()
        s.subscribe(topic, qos=1)
        subs.append(s)
    pub = clients.paho(broker, client_id_on_shard("ppub", 0, n))
    pub.connect()
    nconnected = len(subs) + 1
    q1, q0 = 25, 15
    for i in range(q1):
        pub.publish(topic, b"q1-%d" % i, qos=1)
    for i in range(q0):
        pub.publish(topic, b"q0-%d" % i, qos=0)
    for s in subs:
        got = s.get_n(q1 + q0)
        assert len(got) == q1 + q0, "subscriber got %d of %d messages" % (len(got), q1 + q0)

    # 3. Prometheus sees it (fresh deadline: the traffic above has its own bounded waits).
    deadline = time.monotonic() + WAIT

    def check(expr, pred):
        def f():
            v = single(prom.query(expr), expr)
            return v is not None and pred(v), v
        return f

    conns = 'ringmq_connections{job="ringmq",shard="all"}'
    prom.wait_until("%s == %d" % (conns, nconnected), check(conns, lambda v: v == nconnected),
                    deadline)
    # The merged series is the sum of the per-shard ones.
    per_shard = prom.query('ringmq_connections{job="ringmq",shard!="all"}')
    assert sorted(m["shard"] for m, _ in per_shard) == [str(i) for i in range(n)], per_shard
    assert sum(v for _, v in per_shard) == nconnected, per_shard

    in_q1 = 'ringmq_messages_in_total{job="ringmq",shard="all",qos="1"}'
    prom.wait_until("%s >= %d" % (in_q1, q1), check(in_q1, lambda v: v >= q1), deadline)
    in_q0 = 'ringmq_messages_in_total{job="ringmq",shard="all",qos="0"}'
    prom.wait_until("%s >= %d" % (in_q0, q0), check(in_q0, lambda v: v >= q0), deadline)
    out_q1 = 'ringmq_messages_out_total{job="ringmq",shard="all",qos="1"}'
    prom.wait_until("%s >= %d" % (out_q1, q1 * n), check(out_q1, lambda v: v >= q1 * n), deadline)

    # Histogram: every delivery observed, and histogram_quantile() over the buckets answers
    # with a finite latency (the rate window holds a scrape from before the traffic).
    count = 'sum(ringmq_publish_to_write_seconds_count{job="ringmq",shard="all"})'
    need = (q1 + q0) * n
    prom.wait_until("%s >= %d" % (count, need), check(count, lambda v: v >= need), deadline)
    p99 = ('histogram_quantile(0.99, sum by (le) '
           '(rate(ringmq_publish_to_write_seconds_bucket{job="ringmq",shard="all"}[1m])))')
    v = prom.wait_until("%s finite and > 0" % p99,
                        check(p99, lambda v: math.isfinite(v) and v > 0), deadline)
    assert v < 60, "p99 publish-to-write latency of %r s is not plausible" % v

    # Every scrape so far succeeded (a rejected exposition would turn up to 0 / health down).
    t = prom.target()
    assert t["health"] == "up" and not t["lastError"], t
    assert single(prom.query('min_over_time(up{job="ringmq"}[5m])'), "min up") == 1.0
