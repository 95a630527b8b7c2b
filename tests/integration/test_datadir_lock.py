"""One broker per data directory: a second ringmq started on a data directory that a running
broker holds exits 2, naming the directory and the holder's PID, and the running broker keeps
its sessions, retained messages and port to itself (two processes on one journal would write
over each other's segments; SO_REUSEPORT would let them share the port silently).
"""

import signal
import subprocess

import pytest

import rawmqtt as R
from conftest import RINGMQ_BIN, free_port
from helpers import assert_broker_healthy, unique_topic

pytestmark = pytest.mark.ringmq_only


def second_broker(broker, port):
    """Starts a second ringmq on ``broker``'s data directory; returns (exit code, stderr)."""
    cmd = [str(RINGMQ_BIN), "--listen", "127.0.0.1:%d" % port, "--shards", str(broker.nshards),
           "--data-dir", str(broker.data_dir), "--metrics-addr", "none",
           "--journal-segment-bytes", "4194304"]
    p = subprocess.run(cmd, capture_output=True, timeout=20, stdin=subprocess.DEVNULL)
    return p.returncode, p.stderr.decode(errors="replace")


def persistent_subscriber(broker, cid, topic):
    c = R.RawClient(broker.host, broker.port)
    c.connect(cid, clean=False)
    assert c.subscribe([(topic, 1)]) == [1]
    return c


@pytest.mark.parametrize("same_port", [True, False], ids=["same-port", "other-port"])
def test_a_second_broker_on_a_held_data_directory_is_refused(broker, clients, same_port):
    topic = unique_topic("lock")
    sub = clients.add(persistent_subscriber(broker, "lock-sub", topic))
    pub = clients.add(R.RawClient(broker.host, broker.port))
    pub.connect("lock-pub")
    pub.publish(topic + "/r", b"kept", qos=1, retain=True)

    port = broker.port if same_port else free_port()
    code, err = second_broker(broker, port)
    assert code == 2, "second broker exited %r:\n%s" % (code, err)
    assert str(broker.data_dir) in err and "PID %d" % broker.proc.pid in err, err

    # The first broker is unharmed: its session and traffic carry on, and every new connection
    # on the port reaches it (the refused process never listened).
    assert broker.alive()
    pub.publish(topic, b"after", qos=1)
    assert sub.recv_publish()["payload"] == b"after"
    for i in range(20):
        c = R.RawClient(broker.host, broker.port)
        c.connect("lock-probe-%d" % i)
        c.subscribe(topic + "/r")
        assert c.recv_publish()["payload"] == b"kept"
        c.close()
    assert_broker_healthy(broker)

    # Released when the holder ends, gracefully or not: the next start takes the directory
    # and finds the session and the retained message.
    sub.close()
    broker.proc.send_signal(signal.SIGKILL)
    broker.proc.wait(5)
    broker.restart()
    c = clients.add(R.RawClient(broker.host, broker.port))
    session_present, _, _ = c.connect("lock-sub", clean=False)
    assert session_present, "[MQTT-3.2.2-2] the persistent session survived"
    c2 = clients.add(R.RawClient(broker.host, broker.port))
    c2.connect("lock-probe-after")
    c2.subscribe(topic + "/r")
    assert c2.recv_publish()["payload"] == b"kept"


def test_a_stale_lock_file_does_not_block_a_start(broker):
    broker.stop()
    (broker.data_dir / "ringmq.lock").write_text("1\n")
    broker.start()
    assert broker.alive()
    assert (broker.data_dir / "ringmq.lock").read_text().strip() == str(broker.proc.pid)
