"""Fixtures for the ringmq black-box integration suite.

Broker under test is chosen by RINGMQ_TEST_BROKER:
  ringmq     (default) -- binary from RINGMQ_BIN or <repo>/target/release/ringmq
  mosquitto             -- /usr/sbin/mosquitto (or MOSQUITTO_BIN), used to validate the tests

Every test using ``broker`` runs twice: shards1 and shards2.  With mosquitto
the shard count is ignored (both variants behave identically).
"""

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import paho.mqtt.client as mqtt  # noqa: E402

import rawmqtt  # noqa: E402
from helpers import SyncClient  # noqa: E402

REPO = HERE.parent.parent
BROKER_KIND = os.environ.get("RINGMQ_TEST_BROKER", "ringmq").strip().lower()
RINGMQ_BIN = Path(os.environ.get("RINGMQ_BIN", str(REPO / "target" / "release" / "ringmq")))
MOSQUITTO_BIN = Path(os.environ.get("MOSQUITTO_BIN", shutil.which("mosquitto") or "/usr/sbin/mosquitto"))

if BROKER_KIND not in ("ringmq", "mosquitto"):
    raise pytest.UsageError("RINGMQ_TEST_BROKER must be 'ringmq' or 'mosquitto', got %r" % BROKER_KIND)


def pytest_configure(config):
    config.addinivalue_line("markers", "ringmq_only: checks ringmq-specific behaviour; skipped when validating against mosquitto")
    if BROKER_KIND == "ringmq" and not RINGMQ_BIN.is_file():
        raise pytest.UsageError("ringmq binary not found at %s (build with `cargo build --release` or set RINGMQ_BIN)" % RINGMQ_BIN)
    if BROKER_KIND == "mosquitto" and not MOSQUITTO_BIN.is_file():
        raise pytest.UsageError("mosquitto not found at %s" % MOSQUITTO_BIN)


def pytest_report_header(config):
    return "broker under test: %s (%s)" % (BROKER_KIND, RINGMQ_BIN if BROKER_KIND == "ringmq" else MOSQUITTO_BIN)


def pytest_collection_modifyitems(config, items):
    if BROKER_KIND != "mosquitto":
        return
    skip = pytest.mark.skip(reason="ringmq_only: behaviour differs in mosquitto (see test comment)")
    for item in items:
        if "ringmq_only" in item.keywords:
            item.add_marker(skip)


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def _parse_args(extra):
    """Turn ['--flag', 'v', '--flag2=v2'] into {'--flag': 'v', ...}."""
    out = {}
    it = iter(extra)
    for a in it:
        if "=" in a:
            k, v = a.split("=", 1)
        else:
            k, v = a, next(it)
        out[k] = v
    return out


# ringmq flag -> mosquitto.conf option (flags without an equivalent are ignored
# for mosquitto; tests depending on them are ringmq_only)
MOSQ_OPTION = {
    "--max-packet-size": "max_packet_size",
    "--max-inflight": "max_inflight_messages",
    "--max-queued-messages": "max_queued_messages",
    "--max-keep-alive": "max_keepalive",
    "--max-connections": "max_connections",
}


class Broker:
    def __init__(self, nshards, extra_args=(), workdir=None):
        self.kind = BROKER_KIND
        self.host = "127.0.0.1"
        self.port = free_port()
        self.nshards = nshards
        self.extra_args = list(extra_args)
        self.workdir = Path(workdir or tempfile.mkdtemp(prefix="ringmq-it-"))
        self.data_dir = self.workdir / "data"
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.log_path = self.workdir / "broker.log"
        self.proc = None
        self._log = None
        self.start()

    def command(self):
        if self.kind == "ringmq":
            # The metrics endpoint's default port would collide between brokers started at
            # once: off unless the test asks for it.
            metrics = [] if any(a.split("=")[0] == "--metrics-addr" for a in self.extra_args) \
                else ["--metrics-addr", "none"]
            # Small journal segments: hundreds of brokers start in a run, each shard creating
            # and prefaulting one; 4 MiB is twice the largest --max-packet-size tests use.
            segments = [] if any(a.split("=")[0] == "--journal-segment-bytes"
                                 for a in self.extra_args) \
                else ["--journal-segment-bytes", "4194304"]
            return [str(RINGMQ_BIN), "--listen", "%s:%d" % (self.host, self.port),
                    "--shards", str(self.nshards), "--data-dir", str(self.data_dir)] \
                + metrics + segments + self.extra_args
        conf = self.workdir / "mosquitto.conf"
        opts = _parse_args(self.extra_args)
        lines = [
            "listener %d %s" % (self.port, self.host),
            "allow_anonymous true",
            "persistence false",
            "log_dest stderr",
            "log_type error",
            "log_type warning",
            "log_type notice",
            "log_type information",
            # mosquitto refuses max_keepalive < 10
            "max_keepalive %d" % max(10, int(opts.get("--max-keep-alive", "65535"))),
            "max_packet_size %s" % opts.get("--max-packet-size", "1048576"),
            "max_inflight_messages %s" % opts.get("--max-inflight", "32"),
            "max_queued_messages %s" % opts.get("--max-queued-messages", "1000"),
        ]
        if "--max-connections" in opts:
            lines.append("max_connections %s" % opts["--max-connections"])
        conf.write_text("\n".join(lines) + "\n")
        return [str(MOSQUITTO_BIN), "-c", str(conf)]

    def start(self, timeout=10.0):
        self._log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(self.command(), stdout=self._log, stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL, start_new_session=True)
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError("broker exited with %s during startup:\n%s" % (self.proc.returncode, self.log_tail()))
            try:
                socket.create_connection((self.host, self.port), timeout=0.2).close()
                return
            except OSError:
                if time.monotonic() > deadline:
                    self.stop()
                    raise RuntimeError("broker did not accept connections on %d within %.0fs:\n%s"
                                       % (self.port, timeout, self.log_tail()))
                time.sleep(0.02)

    def stop(self, timeout=5.0):
        if self.proc is None:
            return
        if self.proc.poll() is None:
            # mosquitto needs ~100 ms to honour SIGTERM and has nothing to flush
            # (persistence false), so just kill it; ringmq gets a graceful SIGTERM.
            self.proc.send_signal(signal.SIGTERM if self.kind == "ringmq" else signal.SIGKILL)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout)
        self.exit_code = self.proc.returncode
        self.proc = None
        if self._log:
            self._log.close()
            self._log = None

    def restart(self):
        """Stop and start again on the same port and data dir.

        Waits until the old listening socket is really gone first: with io_uring the kernel
        may release a dead process's sockets asynchronously, and a SO_REUSEPORT listener that
        lingers would accept (then reset) connections meant for the new process."""
        self.stop()
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            try:
                socket.create_connection((self.host, self.port), timeout=0.2).close()
            except OSError:
                break
            time.sleep(0.01)
        self.start()

    def alive(self):
        return self.proc is not None and self.proc.poll() is None

    def log_tail(self, n=60):
        try:
            if self._log:
                self._log.flush()
            lines = self.log_path.read_text(errors="replace").splitlines()
            return "\n".join(lines[-n:])
        except OSError:
            return "<no log>"

    def __repr__(self):
        return "<%s broker port=%d shards=%d args=%r>" % (self.kind, self.port, self.nshards, self.extra_args)


@pytest.fixture(params=[1, 2], ids=["shards1", "shards2"])
def nshards(request):
    return request.param


@pytest.fixture
def broker_factory(request, nshards):
    """broker_factory(extra_args=[...]) -> started Broker with extra CLI args."""
    started = []
    request.node._ringmq_brokers = started

    def make(extra_args=()):
        b = Broker(nshards, extra_args)
        started.append(b)
        return b

    yield make
    crashed = []
    for b in started:
        if not b.alive() and b.proc is not None:
            crashed.append(b)
        b.stop()
    for b in started:
        shutil.rmtree(b.workdir, ignore_errors=True)
    if crashed:
        pytest.fail("broker crashed during test: %r" % crashed)


@pytest.fixture
def broker(broker_factory):
    """A broker with default settings, shards 1 and 2."""
    return broker_factory()


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    rep = outcome.get_result()
    if rep.failed:
        for b in getattr(item, "_ringmq_brokers", []):
            rep.sections.append(("broker %r log tail (%s)" % (b, rep.when), b.log_tail()))
            alive = b.alive()
            if not alive and b.proc is not None:
                rep.sections.append(("broker %r" % b, "broker process exited with %s" % b.proc.returncode))


@pytest.fixture
def clients():
    """Registry that closes every paho / raw client at teardown."""
    class Reg(list):
        def add(self, c):
            self.append(c)
            return c

        def paho(self, broker, client_id="", version=4, clean=True):
            """Unconnected SyncClient (version 3 = MQTT 3.1, 4 = 3.1.1, 5 = 5.0)."""
            proto = {3: mqtt.MQTTv31, 4: mqtt.MQTTv311, 5: mqtt.MQTTv5}[version]
            return self.add(SyncClient(broker.host, broker.port, client_id, proto, clean))

        def raw(self, broker, version=4, timeout=5.0):
            """Connected (TCP only) RawClient."""
            return self.add(rawmqtt.RawClient(broker.host, broker.port, timeout, version))

    reg = Reg()
    yield reg
    for c in reg:
        try:
            c.close()
        except Exception:
            pass
