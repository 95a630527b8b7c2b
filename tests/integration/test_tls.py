"""MQTT over TLS (`mqtts://` listeners, rustls): real clients (mosquitto_pub/sub, paho-mqtt,
openssl s_client), protocol versions and suites, mutual TLS with expired, revoked and
unknown-CA client certificates, the certificate identity as username, hostile handshakes,
and TLS connections handed between shards and taken over.

MQTT 5.0 section 5.4.9 and 3.1.1 section 5.4.6: TLS is the transport that protects MQTT;
these tests check that every MQTT behaviour holds over it unchanged."""

import ipaddress
import re
import signal
import socket
import ssl
import subprocess
import time

from cryptography import x509

import paho.mqtt.client as mqtt
import pytest

from conftest import RINGMQ_BIN, Broker, free_port
from helpers import SyncClient, client_id_on_shard, unique_topic
from pki import Pki
import rawmqtt as R

pytestmark = pytest.mark.ringmq_only


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    return Pki(tmp_path_factory.mktemp("pki"))


class TlsBroker:
    """A broker with a plain listener (`port`) and a TLS listener (`tls_port`)."""

    def __init__(self, nshards, pki, extra=()):
        self.tls_port = free_port()
        self.b = Broker(nshards, ["--listener", "mqtts://127.0.0.1:%d" % self.tls_port,
                                  "--tls-cert", str(pki.server_cert),
                                  "--tls-key", str(pki.server_key)] + list(extra))
        self.port = self.b.port
        deadline = time.monotonic() + 5
        while True:
            try:
                socket.create_connection(("127.0.0.1", self.tls_port), timeout=0.2).close()
                break
            except OSError:
                assert time.monotonic() < deadline, self.b.log_tail()
                time.sleep(0.02)

    def metric(self, name):
        """Sum over shards of a counter, from the metrics endpoint."""
        import urllib.request
        text = urllib.request.urlopen("http://127.0.0.1:%d/metrics" % self.metrics_port,
                                      timeout=5).read().decode()
        m = re.search(r'^%s\{shard="all"(?:,[^}]*)?\} (\d+)' % re.escape(name), text, re.M)
        return int(m.group(1)) if m else None


@pytest.fixture
def tls_factory(request, nshards, pki):
    made = []

    def make(extra=(), metrics=False):
        extra = list(extra)
        port = None
        if metrics:
            port = free_port()
            extra += ["--metrics-addr", "127.0.0.1:%d" % port]
        b = TlsBroker(nshards, pki, extra)
        b.metrics_port = port
        made.append(b)
        return b

    yield make
    crashed = [b for b in made if not b.b.alive()]
    for b in made:
        b.b.stop()
    assert not crashed, "broker crashed: %s" % [b.b.log_tail() for b in crashed]


def tls_client(b, pki, client_id, cert=None, protocol=mqtt.MQTTv311):
    c = SyncClient("127.0.0.1", b.tls_port, client_id=client_id, protocol=protocol)
    return c.tls(pki.ca.pem, *(cert or (None, None)))


def mosquitto_pub(b, pki, topic, message, *extra, qos=1):
    return subprocess.run(["mosquitto_pub", "-h", "localhost", "-p", str(b.tls_port),
                           "--cafile", str(pki.ca.pem), "-t", topic, "-m", message,
                           "-q", str(qos)] + list(extra),
                          capture_output=True, text=True, timeout=10)


def test_mosquitto_clients_exchange_messages_over_tls(tls_factory, pki):
    """mosquitto_sub and mosquitto_pub with --cafile, over a TLS listener; a plain client on
    the same broker gets the same message."""
    b = tls_factory()
    topic = unique_topic("tls")
    sub = subprocess.Popen(["mosquitto_sub", "-h", "localhost", "-p", str(b.tls_port),
                            "--cafile", str(pki.ca.pem), "-t", topic, "-C", "3", "-q", "1",
                            "-W", "10"], stdout=subprocess.PIPE, text=True)
    plain = SyncClient("127.0.0.1", b.port, client_id="plain-sub")
    plain.connect()
    plain.subscribe(topic, qos=1)
    time.sleep(0.5)
    for i in range(3):
        r = mosquitto_pub(b, pki, topic, "reading-%d" % i)
        assert r.returncode == 0, r.stderr
    out, _ = sub.communicate(timeout=15)
    assert out.split() == ["reading-0", "reading-1", "reading-2"]
    got = [plain.get(5).payload for _ in range(3)]
    assert got == [b"reading-0", b"reading-1", b"reading-2"]
    plain.disconnect()


@pytest.mark.parametrize("qos", [0, 1, 2])
def test_paho_over_tls_exchanges_large_and_many_messages_with_a_plain_client(tls_factory, pki, qos,
                                                                             nshards):
    """Packets spanning many TLS records (600 KB) and many packets per record, both ways,
    between a TLS client and a plain one, on the subscriber's home shard and off it (the
    TLS session is handed over with the connection)."""
    b = tls_factory()
    topic = unique_topic("big")
    sub_id = client_id_on_shard("tls-sub", nshards - 1, nshards)
    tsub = tls_client(b, pki, sub_id)
    tsub.connect()
    tsub.subscribe(topic + "/in", qos=qos)
    plain = SyncClient("127.0.0.1", b.port, client_id="plain-%d" % qos)
    plain.connect()
    plain.subscribe(topic + "/out", qos=qos)
    big = bytes(range(256)) * 2400
    plain.publish(topic + "/in", big, qos=qos)
    assert tsub.get(10).payload == big
    for i in range(200):
        tsub.publish(topic + "/out", b"m%d" % i, qos=qos)
    got = [plain.get(10).payload for _ in range(200)]
    assert got == [b"m%d" % i for i in range(200)]
    tsub.publish(topic + "/out", big, qos=qos)
    assert plain.get(10).payload == big
    tsub.disconnect()
    plain.disconnect()


def test_pipelined_packets_over_tls_are_answered_in_order(tls_factory, pki, nshards):
    """500 QoS 1 PUBLISHes written at once (many per TLS record, records cut anywhere by
    TCP), from a client off its home shard: all acknowledged in order [MQTT-4.6.0-2] and
    delivered in order [MQTT-4.6.0-6]."""
    b = tls_factory()
    ctx = ssl.create_default_context(cafile=str(pki.ca.pem))
    cid = client_id_on_shard("tls-pipe", nshards - 1, nshards)
    topic = unique_topic("pipe")
    sub = SyncClient("127.0.0.1", b.port, client_id="pipe-sub")
    sub.connect()
    sub.subscribe(topic, qos=1)
    c = R.RawClient("127.0.0.1", b.tls_port, tls=ctx)
    c.send(R.connect_packet(cid))
    assert c.expect(R.CONNACK).connack()[1] == 0
    c.send(b"".join(R.publish_packet(topic, b"p%d" % i, qos=1, pid=i + 1) for i in range(500)))
    for i in range(500):
        assert c.expect(R.PUBACK, timeout=10).pid == i + 1
    got = [sub.get(10).payload for _ in range(500)]
    assert got == [b"p%d" % i for i in range(500)]
    c.send(R.disconnect_packet())
    sub.disconnect()


def s_client(port, *args, stdin=b""):
    return subprocess.run(["openssl", "s_client", "-connect", "127.0.0.1:%d" % port] + list(args),
                          input=stdin, capture_output=True, timeout=10)


@pytest.mark.parametrize("nshards", [1], ids=["shards1"])
def test_only_tls_1_2_and_1_3_with_modern_suites_are_accepted(tls_factory, pki):
    b = tls_factory()
    ca = ["-CAfile", str(pki.ca.pem), "-verify_return_error", "-servername", "localhost"]
    for old in ("-tls1", "-tls1_1"):
        r = s_client(b.tls_port, old, *ca)
        assert b"Cipher is (NONE)" in r.stdout or r.returncode != 0, r.stdout
    r13 = s_client(b.tls_port, "-tls1_3", *ca)
    assert b"TLSv1.3" in r13.stdout and b"Verify return code: 0 (ok)" in r13.stdout, r13.stdout
    r12 = s_client(b.tls_port, "-tls1_2", *ca)
    assert re.search(rb"Cipher is ECDHE-ECDSA-(AES\d+-GCM|CHACHA20-POLY1305)", r12.stdout), r12.stdout
    # CBC, RSA key exchange, 3DES and RC4 suites are not offered.
    for weak in ("AES128-SHA", "ECDHE-ECDSA-AES128-SHA", "DES-CBC3-SHA", "AES256-SHA256"):
        r = s_client(b.tls_port, "-tls1_2", "-cipher", weak, *ca)
        assert b"Cipher is (NONE)" in r.stdout or r.returncode != 0, (weak, r.stdout)
    # ALPN "mqtt" is accepted; a client that insists on another protocol is refused.
    alpn = s_client(b.tls_port, "-alpn", "mqtt", *ca)
    assert b"ALPN protocol: mqtt" in alpn.stdout, alpn.stdout
    other = s_client(b.tls_port, "-alpn", "h2", *ca)
    assert b"no application protocol" in other.stdout + other.stderr or other.returncode != 0


@pytest.mark.parametrize("nshards", [1], ids=["shards1"])
def test_a_resumed_session_skips_the_full_handshake(tls_factory, pki, tmp_path):
    """Session tickets: openssl reconnects with the ticket of its first connection."""
    b = tls_factory()
    sess = tmp_path / "sess.pem"
    ca = ["-CAfile", str(pki.ca.pem)]
    for proto in ("-tls1_3", "-tls1_2"):
        first = s_client(b.tls_port, proto, "-sess_out", str(sess), *ca,
                         stdin=b"")
        assert first.returncode == 0 or b"New, TLS" in first.stdout, first.stdout
        # TLS 1.3 tickets arrive after the handshake: give openssl a moment to read one.
        if proto == "-tls1_3":
            first = subprocess.run(
                "sleep 0.5 | openssl s_client -connect 127.0.0.1:%d -tls1_3 -sess_out %s -CAfile %s"
                % (b.tls_port, sess, pki.ca.pem), shell=True, capture_output=True, timeout=10)
        again = s_client(b.tls_port, proto, "-sess_in", str(sess), *ca)
        assert b"Reused, TLS" in again.stdout, (proto, again.stdout)


def send_and_read_until_closed(port, data, timeout=5):
    """Sends `data` on a new connection and returns what comes back until the broker closes
    it (a reset counts as closed); a broker that leaves it open past `timeout` fails."""
    s = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    s.sendall(data)
    got = b""
    try:
        while True:
            chunk = s.recv(4096)
            if not chunk:
                break
            got += chunk
    except ConnectionResetError:
        pass
    except socket.timeout:
        pytest.fail("the broker kept the connection open after %r" % data[:16])
    finally:
        s.close()
    return got


def test_garbage_and_plain_mqtt_on_the_tls_port_are_refused_and_cost_nothing(tls_factory, pki):
    """A plain CONNECT, random bytes and an HTTP request instead of a ClientHello: each
    connection is closed (after a TLS alert), counted, and the broker serves TLS clients."""
    b = tls_factory(metrics=True)
    connect = bytes([0x10, 0x10, 0, 4]) + b"MQTT" + bytes([4, 2, 0, 60, 0, 4]) + b"abcd"
    for junk in (connect, bytes(range(256)) * 4, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n",
                 # A ClientHello record whose body is not a ClientHello.
                 b"\x16\x03\x01\x00\x40" + b"\x01" * 64):
        data = send_and_read_until_closed(b.tls_port, junk)
        # Never an MQTT answer (a CONNACK starts with 0x20); a TLS alert record starts 0x15.
        assert not data.startswith(b"\x20")
        assert data == b"" or data[0] == 0x15, data[:16]
    assert b.metric("ringmq_tls_handshake_failures_total") >= 3
    r = mosquitto_pub(b, pki, "t/after", "still serving")
    assert r.returncode == 0, r.stderr
    assert b.b.alive()


@pytest.mark.parametrize("nshards", [1], ids=["shards1"])
def test_a_stalled_handshake_is_closed_at_the_connect_deadline(tls_factory, pki):
    """A client that opens a TLS connection and sends half a ClientHello is closed when
    --connect-timeout passes, like a silent plain connection."""
    b = tls_factory(["--connect-timeout", "1"])
    s = socket.create_connection(("127.0.0.1", b.tls_port), timeout=5)
    # A record header promising 512 bytes, and 6 of them.
    s.sendall(b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03")
    start = time.monotonic()
    try:
        while s.recv(4096):
            pass
    except ConnectionResetError:
        pass
    took = time.monotonic() - start
    assert 0.5 < took < 4, took
    s.close()


def test_an_established_tls_connection_is_taken_over(tls_factory, pki, nshards):
    """A second TLS connection with the same client id takes the session over
    [MQTT-3.1.4-3]: the first is read dry and closed, the second works."""
    b = tls_factory()
    cid = client_id_on_shard("tls-take", 0, nshards)
    topic = unique_topic("take")
    first = tls_client(b, pki, cid)
    first.connect()
    first.subscribe(topic, qos=1)
    second = tls_client(b, pki, cid)
    second.connect()
    assert first.disconnected.wait(5)
    second.subscribe(topic, qos=1)
    r = mosquitto_pub(b, pki, topic, "to-second")
    assert r.returncode == 0, r.stderr
    assert second.get(5).payload == b"to-second"
    second.disconnect()


def mtls_args(pki, require=True, identity=False):
    a = ["--tls-ca", str(pki.ca.pem), "--tls-crl", str(pki.crl)]
    if require:
        a += ["--require-certificate", "true"]
    if identity:
        a += ["--use-identity-as-username", "true"]
    return a


def test_mutual_tls_refuses_missing_expired_revoked_and_unknown_ca_certificates(tls_factory, pki):
    b = tls_factory(mtls_args(pki), metrics=True)
    ok = mosquitto_pub(b, pki, "m/ok", "x", "--cert", str(pki.client[0]), "--key", str(pki.client[1]))
    assert ok.returncode == 0, ok.stderr
    refused = {
        "none": [],
        "expired": ["--cert", str(pki.expired[0]), "--key", str(pki.expired[1])],
        "revoked": ["--cert", str(pki.revoked[0]), "--key", str(pki.revoked[1])],
        "unknown-ca": ["--cert", str(pki.unknown[0]), "--key", str(pki.unknown[1])],
    }
    for what, args in refused.items():
        r = mosquitto_pub(b, pki, "m/" + what, "x", *args)
        assert r.returncode != 0, what
    # The handshake itself fails: Python's ssl sees the alert.
    ctx = ssl.create_default_context(cafile=str(pki.ca.pem))
    ctx.load_cert_chain(str(pki.revoked[0]), str(pki.revoked[1]))
    with socket.create_connection(("127.0.0.1", b.tls_port), timeout=5) as raw:
        with pytest.raises((ssl.SSLError, ConnectionResetError, BrokenPipeError)):
            with ctx.wrap_socket(raw, server_hostname="localhost") as s:
                # TLS 1.3: the client's certificate is judged after its Finished.
                s.sendall(b"\x10\x00")
                s.recv(10)
    assert b.metric("ringmq_tls_handshake_failures_total") >= 4
    assert b.metric("ringmq_tls_handshakes_total") >= 1


@pytest.mark.parametrize("version", [mqtt.MQTTv311, mqtt.MQTTv5], ids=["v311", "v5"])
def test_the_certificate_identity_becomes_the_username(tls_factory, pki, version, nshards):
    """--use-identity-as-username: the subject CN (or, without one, the first DNS name) is
    the username the session sees, whatever the CONNECT said; without a certificate the
    CONNECT is refused (MQTT 5: 0x87 Not authorized [MQTT-3.2.2-8]; 3.1.1: return code 5)."""
    b = tls_factory(mtls_args(pki, require=False, identity=True) + ["--log-level", "debug"])
    for cert, cid, expected in ((pki.client, "id-a", "device-1"),
                                (pki.san_only, "id-b", "sensor-7.fleet.example")):
        c = tls_client(b, pki, client_id_on_shard(cid, nshards - 1, nshards), cert=cert,
                       protocol=version)
        c.c.username_pw_set("claimed-name", "secret")
        c.connect()
        c.disconnect()
        log = re.sub(r"\x1b\[[0-9;]*m", "", b.b.log_tail(400))
        assert re.search(r"client=%s.*user=\"?%s" % (re.escape(c.client_id), re.escape(expected)),
                         log), log
        assert "claimed-name" not in log
    anon = tls_client(b, pki, "no-cert", protocol=version)
    _, rc, _ = anon.connect(expect_success=False)
    # paho reports 3.1.1's return code 5 as 0x87 too.
    assert rc.value == 0x87, rc
    anon.close()


@pytest.mark.parametrize("args,message", [
    (["--listener", "mqtts://127.0.0.1:0"], "needs tls_cert and tls_key"),
    (["--listener", "mqtts://127.0.0.1:0", "--tls-cert", "/nonexistent/cert.pem",
      "--tls-key", "/nonexistent/key.pem"], "/nonexistent/cert.pem"),
    (["--listener", "http://127.0.0.1:80"], "listener"),
    (["--require-certificate", "true"], "tls_ca"),
])
def test_bad_tls_settings_stop_the_start_with_a_clear_message(args, message, tmp_path):
    r = subprocess.run([str(RINGMQ_BIN), "--data-dir", str(tmp_path / "d"), "--metrics-addr",
                        "none"] + args, capture_output=True, text=True, timeout=10)
    assert r.returncode == 2, (r.returncode, r.stderr)
    assert message in r.stderr, r.stderr


def test_a_key_that_does_not_match_the_certificate_is_refused_at_start(pki, tmp_path):
    r = subprocess.run([str(RINGMQ_BIN), "--data-dir", str(tmp_path / "d"), "--metrics-addr",
                        "none", "--listener", "mqtts://127.0.0.1:0",
                        "--tls-cert", str(pki.server_cert), "--tls-key", str(pki.client[1])],
                       capture_output=True, text=True, timeout=10)
    assert r.returncode == 2, r.stderr
    assert str(pki.server_cert) in r.stderr, r.stderr


def test_print_config_shows_the_listeners(pki, tmp_path):
    r = subprocess.run([str(RINGMQ_BIN), "--print-config", "--listener", "mqtt://127.0.0.1:1884",
                        "--listener", "mqtts://0.0.0.0:8883", "--tls-cert", str(pki.server_cert),
                        "--tls-key", str(pki.server_key)], capture_output=True, text=True,
                       timeout=10)
    assert r.returncode == 0, r.stderr
    assert 'listener = ["mqtt://127.0.0.1:1884", "mqtts://0.0.0.0:8883"]' in r.stdout
    # listen's default is replaced when listeners are given.
    assert "listen = []" in r.stdout


def tls_ok(port, ca, timeout=5):
    """Whether a TLS handshake with the broker verifies against `ca`."""
    ctx = ssl.create_default_context(cafile=str(ca))
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout) as raw:
            with ctx.wrap_socket(raw, server_hostname="localhost"):
                return True
    except ssl.SSLError:
        return False


@pytest.mark.parametrize("nshards", [2], ids=["shards2"])
def test_sighup_reloads_certificates_under_traffic_and_keeps_the_old_ones_on_a_bad_file(
        pki, tmp_path, nshards):
    """SIGHUP: new handshakes use the new certificate (here: from another CA), established
    connections go on exchanging messages, a CRL update refuses a certificate it revokes from
    then on, and a broken file keeps the settings in use (logged)."""
    import shutil
    from pki import Ca
    cert, key = tmp_path / "server.pem", tmp_path / "server.key"
    ca_file, crl_file = tmp_path / "ca.pem", tmp_path / "crl.pem"
    shutil.copy(pki.server_cert, cert)
    shutil.copy(pki.server_key, key)
    shutil.copy(pki.ca.pem, ca_file)
    # A CRL that revokes nothing yet.
    pki.ca.write_crl(revoked=[], path=crl_file)
    tls_port = free_port()
    b = Broker(nshards, ["--listener", "mqtts://127.0.0.1:%d" % tls_port, "--tls-cert", str(cert),
                         "--tls-key", str(key), "--tls-ca", str(ca_file), "--tls-crl", str(crl_file)])
    try:
        class P:
            pass
        tb = P()
        tb.tls_port, tb.port = tls_port, b.port
        topic = unique_topic("reload")
        sub = tls_client(tb, pki, "reload-sub", cert=pki.client)
        sub.connect()
        sub.subscribe(topic, qos=1)
        pub = tls_client(tb, pki, "reload-pub", cert=pki.client2)
        pub.connect()
        assert tls_ok(tls_port, pki.ca.pem)
        # The new server certificate comes from another CA.
        other = Ca(tmp_path, "next-ca")
        ncert, nkey, _ = other.issue("localhost", server=True,
                                     sans=[x509.DNSName("localhost"),
                                           x509.IPAddress(ipaddress.ip_address("127.0.0.1"))])
        shutil.copy(ncert, cert)
        shutil.copy(nkey, key)
        # And the CRL now revokes device-2's certificate.
        pki.ca.write_crl(revoked=[pki.client2_cert], path=crl_file)
        sent = 0
        for i in range(50):
            pub.publish(topic, b"m%d" % i, qos=1)
            sent += 1
            if i == 10:
                b.proc.send_signal(signal.SIGHUP)
        # Every shard takes the new settings at its next tick (250 ms) after the reload.
        deadline = time.monotonic() + 5
        while "files reloaded" not in b.log_tail(50) and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(0.6)
        assert not tls_ok(tls_port, pki.ca.pem)
        assert tls_ok(tls_port, other.pem)
        # The connections from before the reload still work, both ways.
        got = [sub.get(5).payload for _ in range(sent)]
        assert got == [b"m%d" % i for i in range(sent)]
        pub.publish(topic, b"after", qos=1)
        assert sub.get(5).payload == b"after"
        # device-2 is now revoked for new connections.
        again = SyncClient("127.0.0.1", tls_port, client_id="reload-pub2").tls(
            other.pem, *pki.client2)
        with pytest.raises(Exception):
            again.connect(timeout=3)
        again.close()
        ok = SyncClient("127.0.0.1", tls_port, client_id="reload-ok").tls(other.pem, *pki.client)
        ok.connect()
        ok.disconnect()
        # A broken key file: logged, the settings in use stay.
        key.write_text("not a key\n")
        b.proc.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + 5
        while "not reloaded" not in b.log_tail(50) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert "not reloaded" in b.log_tail(50), b.log_tail(50)
        assert str(key) in b.log_tail(50)
        time.sleep(0.5)
        assert tls_ok(tls_port, other.pem)
        assert b.alive()
        sub.disconnect()
        pub.disconnect()
    finally:
        b.stop()


def test_testssl_finds_nothing_high_or_critical(pki, tmp_path):
    """testssl.sh (Debian's package) against the TLS listener: protocols, ciphers,
    vulnerabilities (Heartbleed, ROBOT, renegotiation, CRIME, BREACH, POODLE, SWEET32, FREAK,
    DROWN, LOGJAM, BEAST, LUCKY13, RC4, ...): no finding rated HIGH or CRITICAL."""
    import json
    import shutil
    testssl = shutil.which("testssl") or shutil.which("testssl.sh")
    assert testssl, "testssl.sh is not installed (make deps installs it)"
    tls_port = free_port()
    b = Broker(1, ["--listener", "mqtts://127.0.0.1:%d" % tls_port, "--tls-cert",
                   str(pki.server_cert), "--tls-key", str(pki.server_key)])
    try:
        out = tmp_path / "testssl.json"
        # The test CA is trusted as a deployment's own CA would be.
        r = subprocess.run([testssl, "--quiet", "--warnings", "off", "--color", "0",
                            "--add-ca", str(pki.ca.pem),
                            "--jsonfile", str(out), "--ip", "127.0.0.1",
                            "localhost:%d" % tls_port],
                           capture_output=True, text=True, timeout=900)
        findings = json.loads(out.read_text())
        bad = [f for f in findings if f.get("severity") in ("HIGH", "CRITICAL")]
        assert findings, r.stdout[-2000:]
        assert not bad, json.dumps(bad, indent=1)
        # It did test: TLS 1.3 offered, TLS 1.0 not.
        by_id = {f["id"]: f for f in findings}
        assert "offered" in by_id["TLS1_3"]["finding"], by_id.get("TLS1_3")
        assert "not offered" in by_id["TLS1"]["finding"], by_id.get("TLS1")
        assert b.alive()
    finally:
        b.stop()


LOADGEN = RINGMQ_BIN.parent / "ringmq-loadgen"


def run_loadgen(port, args, tmp_path, name):
    out = tmp_path / ("%s.json" % name)
    r = subprocess.run([str(LOADGEN), "--port", str(port), "--quiet", "--json", str(out)] + args,
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr
    import json
    return json.loads(out.read_text())


@pytest.mark.parametrize("nshards", [2], ids=["shards2"])
def test_the_loadgen_speaks_tls_with_client_certificates_and_resumes(tls_factory, pki, tmp_path):
    """The bundled load generator over TLS: a QoS 1 fan-in with a client certificate loses
    nothing; devices that come back (connect-storm --warm-up) resume their own sessions
    (tickets), counted on both sides, and with --tls-resume false every handshake is a full
    one."""
    b = tls_factory(mtls_args(pki), metrics=True)
    tls = ["--tls", "--tls-ca", str(pki.ca.pem), "--tls-cert", str(pki.client[0]),
           "--tls-key", str(pki.client[1])]
    v = run_loadgen(b.tls_port, tls + ["--qos", "1", "--duration", "1", "--ramp-up", "5",
                                       "fan-in", "--publishers", "20"], tmp_path, "fanin")
    assert v["errors"] == 0 and v["lost"] == 0 and v["sent"] > 0, v
    assert v["acked"] == v["sent"], v
    assert b.metric("ringmq_tls_handshakes_total") >= 21
    before = b.metric("ringmq_tls_resumed_handshakes_total")
    # Each device connects, leaves, and comes back with the ticket its first connection got.
    v = run_loadgen(b.tls_port, tls + ["--ramp-up", "10", "connect-storm", "--devices", "20",
                                       "--warm-up"], tmp_path, "resume")
    assert v["errors"] == 0 and v["connections"] == 20, v
    assert v["tls_resumed"] == 20, v
    resumed = b.metric("ringmq_tls_resumed_handshakes_total")
    assert resumed - before == 20, (before, resumed)
    v = run_loadgen(b.tls_port, tls + ["--tls-resume", "false", "--ramp-up", "10",
                                       "connect-storm", "--devices", "20", "--warm-up"],
                    tmp_path, "full")
    assert v["errors"] == 0 and v["tls_resumed"] == 0, v
    assert b.metric("ringmq_tls_resumed_handshakes_total") == resumed


@pytest.mark.parametrize("nshards", [1], ids=["shards1"])
@pytest.mark.parametrize("header", [
    b"PROXY TCP4 203.0.113.7 127.0.0.1 40000 1883\r\n",
    b"\r\n\r\n\x00\r\nQUIT\n\x21\x11\x00\x0c" + bytes([203, 0, 113, 7, 127, 0, 0, 1]) + b"\x9c\x40\x07\x5b",
], ids=["v1", "v2"])
def test_a_proxy_protocol_header_is_refused_on_listeners_not_configured_for_it(tls_factory, pki,
                                                                              header):
    """On listeners not configured for PROXY protocol (test_proxy_protocol.py covers those
    that are), a header before the CONNECT (plain) or the ClientHello (TLS) closes the
    connection without a CONNACK, as bad input, and costs the broker nothing."""
    b = tls_factory(metrics=True)
    connect = R.connect_packet("proxied")
    plain = R.RawClient("127.0.0.1", b.port)
    plain.send(header + connect)
    with pytest.raises(R.ConnectionClosed):
        plain.recv(timeout=5)
    data = send_and_read_until_closed(b.tls_port, header)
    assert data == b"" or data[0] == 0x15, data[:16]
    assert b.metric("ringmq_tls_handshake_failures_total") >= 1
    ok = mosquitto_pub(b, pki, "t/proxy", "still serving")
    assert ok.returncode == 0, ok.stderr
