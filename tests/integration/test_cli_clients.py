"""Interop with the mosquitto_pub / mosquitto_sub command line clients."""

import shutil
import subprocess
import threading
import time

import pytest

from helpers import client_id_on_shard, unique_topic

PUB = shutil.which("mosquitto_pub")
STDBUF = shutil.which("stdbuf")  # mosquitto_sub's stdio is block-buffered on a pipe
SUB = shutil.which("mosquitto_sub")

pytestmark = pytest.mark.skipif(not (PUB and SUB), reason="mosquitto clients not installed")

VERSIONS = {"311": "mqttv311", "5": "mqttv5", "31": "mqttv31"}


class Sub:
    """mosquitto_sub running in the background; waits (via -d debug output) until SUBACK."""

    def __init__(self, broker, topics, version="311", qos=0, count=1, extra=(), client_id=None, timeout=8):
        cmd = [SUB, "-h", broker.host, "-p", str(broker.port), "-V", VERSIONS[version],
               "-q", str(qos), "-C", str(count), "-W", str(timeout), "-d", "-v"]
        if client_id:
            cmd += ["-i", client_id]
        for t in topics:
            cmd += ["-t", t]
        cmd += list(extra)
        if STDBUF:
            cmd = [STDBUF, "-oL"] + cmd
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        self.lines = []
        self.subacked = threading.Event()
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()
        if not self.subacked.wait(5):
            self.proc.kill()
            raise AssertionError("mosquitto_sub never got SUBACK: %r" % self.lines)

    def _read(self):
        for line in self.proc.stdout:
            self.lines.append(line.rstrip("\n"))
            if "received SUBACK" in line:
                self.subacked.set()

    def messages(self, timeout=8):
        """Wait for exit; return the '-v' message lines (topic payload), debug lines filtered out."""
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            raise AssertionError("mosquitto_sub did not finish: %r" % self.lines)
        self.reader.join(2)
        assert self.proc.returncode == 0, (self.proc.returncode, self.lines)
        return [l for l in self.lines if not l.startswith("Client ") and not l.startswith("Subscribed")]


def pub(broker, topic, message=None, version="311", qos=0, retain=False, extra=(), client_id=None, stdin=None):
    cmd = [PUB, "-h", broker.host, "-p", str(broker.port), "-V", VERSIONS[version], "-q", str(qos), "-t", topic]
    if client_id:
        cmd += ["-i", client_id]
    if retain:
        cmd.append("-r")
    if message is not None:
        cmd += ["-m", message]
    cmd += list(extra)
    r = subprocess.run(cmd, input=stdin, capture_output=True, text=True, timeout=10)
    assert r.returncode == 0, (r.returncode, r.stdout, r.stderr)


@pytest.mark.parametrize("version", ["31", "311", "5"])
@pytest.mark.parametrize("qos", [0, 1, 2])
def test_cli_pub_sub(broker, version, qos):
    """[MQTT-4.3] mosquitto_pub -> mosquitto_sub at QoS 0/1/2 over MQTT 3.1 / 3.1.1 / 5.0, clients on
    different shards"""
    n = broker.nshards
    t = unique_topic("cli")
    s = Sub(broker, [t], version, qos=qos, client_id=client_id_on_shard("clisub", 0, n))
    pub(broker, t, "hello-%s-%d" % (version, qos), version, qos, client_id=client_id_on_shard("clipub", 1, n))
    assert s.messages() == ["%s hello-%s-%d" % (t, version, qos)]


def test_cli_retained(broker):
    """[MQTT-3.3.1-6] mosquitto_pub -r stores a retained message that a later mosquitto_sub receives"""
    t = unique_topic("cli")
    pub(broker, t, "retained-cli", qos=1, retain=True, client_id=client_id_on_shard("clir", 0, broker.nshards))
    r = subprocess.run([SUB, "-h", broker.host, "-p", str(broker.port), "-t", t, "-C", "1", "-W", "5",
                        "-q", "1", "-v", "-i", client_id_on_shard("clirsub", 1, broker.nshards)],
                       capture_output=True, text=True, timeout=10)
    assert r.returncode == 0, r
    assert r.stdout.strip() == "%s retained-cli" % t
    # clear it and check nothing is retained any more (-W exits non-zero on timeout)
    pub(broker, t, None, qos=1, retain=True, extra=["-n"])
    r = subprocess.run([SUB, "-h", broker.host, "-p", str(broker.port), "-t", t, "-C", "1", "-W", "1",
                        "-q", "1"], capture_output=True, text=True, timeout=10)
    assert r.stdout == ""


def test_cli_wildcards_and_lines(broker):
    """[MQTT-4.7.1-2][MQTT-4.6.0-5] mosquitto_pub -l (one message per line) to a '#' subscriber, in order"""
    base = unique_topic("cli")
    s = Sub(broker, [base + "/#"], "311", qos=1, count=5)
    pub(broker, base + "/x/y", None, qos=1, extra=["-l"], stdin="".join("line%d\n" % i for i in range(5)))
    assert s.messages() == ["%s/x/y line%d" % (base, i) for i in range(5)]


def test_cli_v5_properties(broker):
    """[MQTT-3.3.2-17 v5] mosquitto_pub -D user-property reaches mosquitto_sub -F %P"""
    t = unique_topic("cli")
    s = Sub(broker, [t], "5", qos=1, extra=["-F", "%t %p %P"])
    pub(broker, t, "props", "5", 1, extra=["-D", "publish", "user-property", "k", "v"])
    out = s.messages()
    assert len(out) == 1 and out[0].startswith("%s props" % t) and "k:v" in out[0], out


def test_cli_many_messages(broker):
    """[MQTT-4.3.3][MQTT-4.6.0-5] 200 QoS 2 messages via mosquitto_pub -l arrive exactly once and in order
    (MQTT 3.1.1: libmosquitto's v5 client enforces its own incoming QoS 2 window of 20 counted until
    PUBCOMP, which even mosquitto-the-broker overruns, so the bulk test uses 3.1.1)"""
    t = unique_topic("cli")
    s = Sub(broker, [t], "311", qos=2, count=200, timeout=15)
    pub(broker, t, None, "311", 2, extra=["-l"], stdin="".join("%d\n" % i for i in range(200)))
    assert s.messages(15) == ["%s %d" % (t, i) for i in range(200)]
