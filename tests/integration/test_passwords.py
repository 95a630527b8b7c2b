"""Password authentication (`--password-file`, `--allow-anonymous`, `ringmq passwd`):
files written by Debian's mosquitto_passwd, real clients with -u/-P, the CONNACK codes of
MQTT 3.1, 3.1.1 and 5, the delay on failure, hand-off after a check, reload on SIGHUP.

MQTT 5.0 3.1.3.5 and 3.1.1 3.1.3.4/3.1.3.5: the server may use User Name and Password for
authentication; a refused client gets CONNACK 0x86 Bad User Name or Password (3.1.1: return
code 4) or 0x87 Not authorized (3.1.1: 5) [MQTT-3.2.2-6 for 3.1.1: a non-zero return code
closes the connection]."""

import signal
import subprocess
import time

import paho.mqtt.client as mqtt
import pytest

from conftest import RINGMQ_BIN, Broker, free_port
from helpers import refuses_bad_file, wait_for_log, client_id_on_shard, unique_topic, stop_all
import rawmqtt as R

pytestmark = pytest.mark.ringmq_only


def mosquitto_passwd(path, user, password, create=False):
    args = ["mosquitto_passwd", "-b"] + (["-c"] if create else []) + [str(path), user, password]
    subprocess.run(args, check=True, capture_output=True, timeout=10)


def ringmq_passwd(*args, stdin=None):
    return subprocess.run([str(RINGMQ_BIN), "passwd"] + [str(a) for a in args], input=stdin,
                          capture_output=True, text=True, timeout=20)


@pytest.fixture
def pwfile(tmp_path):
    p = tmp_path / "passwd"
    mosquitto_passwd(p, "alice", "secret", create=True)
    mosquitto_passwd(p, "dev/1", "t0ken")
    return p


@pytest.fixture
def pw_broker(request, nshards, pwfile):
    made = []

    def make(extra=()):
        b = Broker(nshards, ["--password-file", str(pwfile)] + list(extra))
        made.append(b)
        return b

    yield make
    stop_all(made)


def connack(b, version, client_id="c", **kw):
    """CONNECT with `kw` (username=, password=); returns (return/reason code, seconds)."""
    c = R.RawClient(b.host, b.port, version=version)
    try:
        t = time.monotonic()
        c.send(R.connect_packet(client_id, version=version, **kw))
        p = c.expect(R.CONNACK, timeout=5)
        took = time.monotonic() - t
        return p.connack(version)[1], took
    finally:
        c.close()


def test_a_file_from_mosquitto_passwd_lets_its_users_in_with_real_clients(pw_broker):
    b = pw_broker()
    topic = unique_topic("pw")
    sub = subprocess.Popen(["mosquitto_sub", "-p", str(b.port), "-u", "alice", "-P", "secret",
                            "-t", topic, "-C", "1"], stdout=subprocess.PIPE, text=True)
    time.sleep(0.5)
    for _ in range(20):
        r = subprocess.run(["mosquitto_pub", "-p", str(b.port), "-u", "dev/1", "-P", "t0ken",
                            "-t", topic, "-m", "hello"], capture_output=True, text=True,
                           timeout=10)
        assert r.returncode == 0, r.stderr
        try:
            out, _ = sub.communicate(timeout=0.5)
            break
        except subprocess.TimeoutExpired:
            continue
    assert out.strip() == "hello"
    bad = subprocess.run(["mosquitto_pub", "-p", str(b.port), "-u", "alice", "-P", "nope",
                          "-t", topic, "-m", "x"], capture_output=True, text=True, timeout=10)
    assert bad.returncode != 0
    assert "bad user name or password" in bad.stderr.lower(), bad.stderr


@pytest.mark.parametrize("version", [3, 4, 5])
def test_refusals_carry_the_right_code_after_the_delay(pw_broker, version):
    """Wrong password and unknown user get the same answer, 0x86 / 4, no sooner than 250 ms;
    no credentials at all get 0x87 / 5 (anonymous is off once a password file is set)."""
    b = pw_broker()
    bad, anon = (0x86, 0x87) if version == 5 else (4, 5)
    ok, took_ok = connack(b, version, username="alice", password="secret")
    assert ok == 0
    for kw in (dict(username="alice", password="wrong"),
               dict(username="mallory", password="secret"),
               dict(username="alice")):
        rc, took = connack(b, version, **kw)
        assert rc == bad, kw
        assert took >= 0.24, (kw, took)
    rc, _ = connack(b, version)
    assert rc == anon


def test_allow_anonymous_true_admits_clients_without_a_username_but_still_checks_given_ones(
        pw_broker):
    b = pw_broker(["--allow-anonymous", "true"])
    assert connack(b, 4)[0] == 0
    assert connack(b, 4, username="alice", password="wrong")[0] == 4
    assert connack(b, 4, username="alice", password="secret")[0] == 0


def test_allow_anonymous_false_without_a_password_file_refuses_everyone_plain(broker_factory):
    b = broker_factory(["--allow-anonymous", "false"])
    assert connack(b, 5)[0] == 0x87
    assert connack(b, 5, username="u", password="p")[0] == 0x87


def test_what_follows_a_checked_connect_is_handled_in_order_on_its_home_shard(
        pw_broker, nshards):
    """CONNECT, SUBSCRIBE and PUBLISH in one write: the connection is not read while its
    password is checked, then the held packets are handled (and handed to the home shard
    with the connection when it lives on the other one)."""
    b = pw_broker()
    for shard in range(nshards):
        cid = client_id_on_shard("held", shard, nshards)
        topic = unique_topic("held")
        c = R.RawClient(b.host, b.port, version=4)
        c.send(R.connect_packet(cid, username="alice", password="secret")
               + R.subscribe_packet(1, [(topic, 1)])
               + R.publish_packet(topic, b"one", qos=1, pid=2)
               + R.publish_packet(topic, b"two", qos=1, pid=3))
        assert c.expect(R.CONNACK).connack(4)[1] == 0
        assert c.expect(R.SUBACK).pid == 1
        got = []
        while len(got) < 2:
            p = c.recv(5)
            if p.type == R.PUBLISH:
                got.append(p.publish(4)["payload"])
        c.close()
        assert got == [b"one", b"two"]


def test_ringmq_passwd_adds_changes_and_deletes_users_and_the_broker_reloads_on_sighup(
        pw_broker, pwfile):
    b = pw_broker()
    # Add with $7$ (stdin) and with argon2id (command line).
    r = ringmq_passwd(pwfile, "bob", stdin="b0b\n")
    assert r.returncode == 0, r.stderr
    r = ringmq_passwd("-b", "--argon2id", pwfile, "carol", "c4rol")
    assert r.returncode == 0, r.stderr
    assert "carol:$argon2id$v=19$" in pwfile.read_text()
    # Mosquitto's own lines are kept as they were.
    assert pwfile.read_text().count("$7$101$") == 3
    assert connack(b, 4, username="bob", password="b0b")[0] == 4, "not before the reload"
    held = R.RawClient(b.host, b.port, version=4)
    held.send(R.connect_packet("held", username="alice", password="secret"))
    assert held.expect(R.CONNACK).connack(4)[1] == 0
    b.proc.send_signal(signal.SIGHUP)
    wait_for_log(b, "password file reloaded")
    assert connack(b, 4, username="bob", password="b0b")[0] == 0
    assert connack(b, 4, username="carol", password="c4rol")[0] == 0
    # Change and delete.
    assert ringmq_passwd("-b", pwfile, "bob", "new").returncode == 0
    assert ringmq_passwd("-D", pwfile, "carol").returncode == 0
    assert ringmq_passwd("-D", pwfile, "carol").returncode != 0
    b.proc.send_signal(signal.SIGHUP)
    wait_for_log(b, "password file reloaded", count=2)
    assert connack(b, 4, username="bob", password="b0b")[0] == 4
    assert connack(b, 4, username="bob", password="new")[0] == 0
    assert connack(b, 4, username="carol", password="c4rol")[0] == 4
    # A broken file: logged with its line, the users in use stay.
    pwfile.write_text(pwfile.read_text() + "broken line\n")
    b.proc.send_signal(signal.SIGHUP)
    wait_for_log(b, "did not load")
    assert "line" in b.log_tail(20)
    assert connack(b, 4, username="bob", password="new")[0] == 0
    # The connection from before every reload was never dropped.
    held.send(R.pingreq_packet())
    held.expect(R.PINGRESP)
    held.close()


@pytest.mark.parametrize("content, line", [
    ("alice:$7$101$short$x\n", 1),
    ("# comment\nbob\n", 2),
    ("carol:plaintext\n", 1),
])
def test_a_bad_password_file_stops_the_start_naming_the_file_and_line(tmp_path, content, line):
    refuses_bad_file(RINGMQ_BIN, tmp_path, "--password-file", content, line)


def test_passwords_over_tls_with_mosquitto_clients(tmp_path, pwfile):
    from pki import Pki
    pki = Pki(tmp_path / "pki")
    tls_port = free_port()
    b = Broker(1, ["--listener", "mqtts://127.0.0.1:%d" % tls_port,
                   "--tls-cert", str(pki.server_cert), "--tls-key", str(pki.server_key),
                   "--password-file", str(pwfile)])
    try:
        base = ["mosquitto_pub", "-p", str(tls_port), "--cafile", str(pki.ca.pem),
                "-t", "t", "-m", "x"]
        ok = subprocess.run(base + ["-u", "alice", "-P", "secret"], capture_output=True,
                            text=True, timeout=10)
        assert ok.returncode == 0, ok.stderr
        bad = subprocess.run(base + ["-u", "alice", "-P", "guess"], capture_output=True,
                             text=True, timeout=10)
        assert bad.returncode != 0
    finally:
        b.stop()


def test_paho_gets_bad_username_or_password(pw_broker):
    b = pw_broker()
    got = {}
    c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="paho-pw",
                    protocol=mqtt.MQTTv5)
    c.username_pw_set("alice", "wrong")
    c.on_connect = lambda cl, u, f, rc, p: got.setdefault("rc", rc)
    c.connect(b.host, b.port)
    deadline = time.monotonic() + 5
    while "rc" not in got and time.monotonic() < deadline:
        c.loop(0.1)
    c.disconnect()
    assert got["rc"].value == 0x86


def test_a_connect_answered_after_a_newer_one_does_not_take_it_over(pw_broker, pwfile):
    """Connection A is opened first and sends CONNECT with a slow password (PBKDF2 with 2
    million iterations, about a second); B is opened next, with a fast one (101 iterations),
    and is answered first. A's CONNECT, answered later, is stale: it is closed, and B keeps its
    session (MQTT-3.1.4-3 takes over in the order the client connected, not in the order the
    checks end)."""
    r = ringmq_passwd("-b", "--iterations", "2000000", pwfile, "slow", "s")
    assert r.returncode == 0, r.stderr
    b = pw_broker()
    a = R.RawClient(b.host, b.port, version=5)
    a.send(R.connect_packet("same-id", version=5, username="slow", password="s"))
    # Connections are ordered by when their shard accepted them: with two shards, a busy one
    # could accept A after the other accepted B. A moment lets A's shard accept it first.
    time.sleep(0.3)
    newer = R.RawClient(b.host, b.port, version=5)
    newer.send(R.connect_packet("same-id", version=5, clean=False, username="alice",
                                password="secret",
                                properties={"session_expiry_interval": 300}))
    assert newer.expect(R.CONNACK).connack(5)[1] == 0
    with pytest.raises(R.ConnectionClosed):
        a.expect(R.CONNACK, timeout=20)
    newer.send(R.pingreq_packet())
    newer.expect(R.PINGRESP)
    newer.close()
    a.close()


def test_logins_waiting_for_the_verifiers_show_in_the_metrics(tmp_path):
    """A login storm against slow hashes: the CONNECTs beyond what the verifier threads take
    at once wait in their shard's queue, and `ringmq_logins_waiting` says how many (as of the
    shard's last tick); every client still gets its CONNACK, and the gauge comes back to 0"""
    import base64
    import hashlib
    import os
    from test_metrics import scrape, value
    # A $7$ hash of 200,000 PBKDF2-SHA512 iterations: a tenth of a second or more per login.
    salt, iterations = os.urandom(12), 200_000
    digest = hashlib.pbkdf2_hmac("sha512", b"slow", salt, iterations)
    path = tmp_path / "passwd"
    path.write_text("slow:$7$%d$%s$%s\n" % (iterations, base64.b64encode(salt).decode(),
                                            base64.b64encode(digest).decode()))
    mport = free_port()
    b = Broker(1, ["--password-file", str(path), "--metrics-addr", "127.0.0.1:%d" % mport])
    clients = []
    try:
        for i in range(40):
            c = R.RawClient(b.host, b.port, timeout=60)
            c.send(R.connect_packet("slow%d" % i, username="slow", password=b"slow"))
            clients.append(c)
        seen = 0
        deadline = time.monotonic() + 10
        while seen == 0 and time.monotonic() < deadline:
            time.sleep(0.1)
            _, samples = scrape(mport)
            seen = value(samples, "ringmq_logins_waiting", shard="all")
        assert seen > 0
        for c in clients:
            p = c.expect(R.CONNACK, timeout=60)
            assert p.connack(4)[1] == 0
        deadline = time.monotonic() + 5
        while seen and time.monotonic() < deadline:
            time.sleep(0.1)
            _, samples = scrape(mport)
            seen = value(samples, "ringmq_logins_waiting", shard="all")
        assert seen == 0
        assert value(samples, "ringmq_handshakes_waiting", shard="all") == 0
        assert value(samples, "ringmq_closes_waiting", shard="all") == 0
    finally:
        for c in clients:
            c.close()
        b.stop()
