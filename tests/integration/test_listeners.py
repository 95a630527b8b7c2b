"""Listeners with settings of their own (`[[listener]]` tables of the config file): each its
own TLS files, mutual TLS, SNI certificates, whether anonymous clients may connect, its
connection limit, accept rate and handshake limit; `--print-config` shows them and reads back.
"""
import re
import socket
import ssl
import subprocess
import time
import urllib.request

import paho.mqtt.client as mqtt
import pytest
from cryptography import x509

from conftest import RINGMQ_BIN, Broker, free_port
from helpers import SyncClient, unique_topic, stop_all
from pki import Pki
import rawmqtt as R

pytestmark = pytest.mark.ringmq_only


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    p = Pki(tmp_path_factory.mktemp("pki"))
    # A second server certificate for localhost, from another CA, for a second TLS listener.
    p.other_server = p.other_ca.issue("localhost-b", server=True,
                                      sans=[x509.DNSName("localhost")])[:2]
    # Certificates chosen by SNI: an exact name and a wildcard.
    p.named = p.other_ca.issue("broker.example", server=True,
                               sans=[x509.DNSName("broker.example")])[:2]
    p.wildcard = p.other_ca.issue("fleet-wildcard", server=True,
                                  sans=[x509.DNSName("*.fleet.example")])[:2]
    return p


def toml_str(path):
    return '"%s"' % str(path).replace("\\", "\\\\")


@pytest.fixture
def started(request, tmp_path):
    """Starts a broker (one shard, metrics on) with `top` keys and `[[listener]]` tables."""
    made = []

    def start(text, nshards=1):
        conf = tmp_path / ("ringmq-%d.toml" % len(made))
        conf.write_text(text)
        metrics = free_port()
        b = Broker(nshards, ["--config", str(conf), "--metrics-addr", "127.0.0.1:%d" % metrics])
        b.metrics_port = metrics
        made.append(b)
        return b

    yield start
    stop_all(made)


def metric(b, name, reason):
    text = urllib.request.urlopen("http://127.0.0.1:%d/metrics" % b.metrics_port,
                                  timeout=5).read().decode()
    m = re.search(r'^ringmq_%s_total\{shard="all",reason="%s"\} (\d+)' % (name, reason), text,
                  re.M)
    assert m, "no %s{reason=%s} in:\n%s" % (name, reason, text[:2000])
    return int(m.group(1))


def tls_context(ca, cert=None):
    ctx = ssl.create_default_context(cafile=str(ca))
    if cert:
        ctx.load_cert_chain(str(cert[0]), str(cert[1]))
    return ctx


def handshake(port, ctx, name="localhost", timeout=5):
    """A TLS handshake asking for `name`: the server's certificate's subject CN, or the
    ssl error."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as raw:
        try:
            with ctx.wrap_socket(raw, server_hostname=name) as s:
                subject = dict(x[0] for x in s.getpeercert()["subject"])
                return subject["commonName"]
        except ssl.SSLError as e:
            return e


def connack(port, version, ctx=None, **kw):
    c = R.RawClient("127.0.0.1", port, version=version, tls=ctx)
    try:
        c.send(R.connect_packet(unique_topic("c").replace("/", "-"), version=version, **kw))
        return c.expect(R.CONNACK, timeout=5).connack(version)[1]
    finally:
        c.close()


def passwd_file(tmp_path):
    path = tmp_path / "passwd"
    subprocess.run([str(RINGMQ_BIN), "passwd", "-c", "-b", str(path), "alice", "secret"],
                   check=True, capture_output=True, timeout=30)
    return path


@pytest.mark.parametrize("version", [4, 5])
def test_each_listener_has_its_own_tls_files_and_authentication(started, pki, tmp_path,
                                                                 version):
    """Three listeners on one broker: plain for anonymous local tools; mTLS with the device
    certificate as the username; TLS with another CA's certificate and passwords. A client is
    refused where its listener demands what it lacks (0x87 / 5), and messages cross all three
    (real clients: mosquitto_sub/pub with --cafile/--cert/-u/-P)."""
    plain, mtls, pw = free_port(), free_port(), free_port()
    b = started("""
password_file = %s
tls_cert = %s
tls_key = %s

[[listener]]
url = "mqtt://127.0.0.1:%d"
allow_anonymous = true

[[listener]]
url = "mqtts://127.0.0.1:%d"
tls_ca = %s
require_certificate = true
use_identity_as_username = true

[[listener]]
url = "mqtts://127.0.0.1:%d"
tls_cert = %s
tls_key = %s
""" % (toml_str(passwd_file(tmp_path)), toml_str(pki.server_cert), toml_str(pki.server_key),
       plain, mtls, toml_str(pki.ca.pem), pw, toml_str(pki.other_server[0]),
       toml_str(pki.other_server[1])))
    refused = 0x87 if version == 5 else 5
    # The default listener (--listen) follows the global rule: a password file, no anonymous.
    assert connack(b.port, version) == refused
    assert connack(plain, version) == 0
    # mTLS: the certificate identifies; without one the handshake fails.
    assert handshake(mtls, tls_context(pki.ca.pem, pki.client)) == "localhost"
    assert connack(mtls, version, tls_context(pki.ca.pem, pki.client)) == 0
    # The password listener serves the other CA's certificate, and wants a password.
    assert isinstance(handshake(pw, tls_context(pki.ca.pem)), ssl.SSLError)
    other = tls_context(pki.other_ca.pem)
    assert handshake(pw, other) == "localhost-b"
    assert connack(pw, version, other) == refused
    assert connack(pw, version, other, username="alice", password=b"secret") == 0

    topic = unique_topic("listeners")
    sub = SyncClient("127.0.0.1", plain, client_id=unique_topic("s").replace("/", "-"),
                     protocol=mqtt.MQTTv5 if version == 5 else mqtt.MQTTv311)
    sub.connect()
    sub.subscribe(topic, qos=1)
    pubs = [
        ["--cafile", str(pki.ca.pem), "-p", str(mtls), "--cert", str(pki.client[0]),
         "--key", str(pki.client[1])],
        ["--cafile", str(pki.other_ca.pem), "-p", str(pw), "-u", "alice", "-P", "secret"],
    ]
    for i, args in enumerate(pubs):
        r = subprocess.run(["mosquitto_pub", "-h", "localhost", "-t", topic, "-q", "1",
                            "-m", "m%d" % i, "-V", "mqttv5" if version == 5 else "mqttv311"]
                           + args, capture_output=True, text=True, timeout=10)
        assert r.returncode == 0, r.stderr
    assert sorted(m.payload for m in sub.get_n(2)) == [b"m0", b"m1"]
    sub.disconnect()


def test_a_client_without_certificate_is_refused_by_the_mtls_listener_only(started, pki):
    mtls, tls = free_port(), free_port()
    b = started("""
tls_cert = %s
tls_key = %s
listener = [
  { url = "mqtts://127.0.0.1:%d", tls_ca = %s, require_certificate = true },
  "mqtts://127.0.0.1:%d",
]
""" % (toml_str(pki.server_cert), toml_str(pki.server_key), mtls, toml_str(pki.ca.pem), tls))
    assert connack(tls, 4, tls_context(pki.ca.pem)) == 0
    with pytest.raises((ssl.SSLError, ConnectionError, R.ConnectionClosed, OSError)):
        connack(mtls, 4, tls_context(pki.ca.pem))
    assert connack(mtls, 4, tls_context(pki.ca.pem, pki.client)) == 0
    assert b.alive()


def test_sni_chooses_the_certificate_by_the_name_asked_for(started, pki):
    port = free_port()
    started("""
[[listener]]
url = "mqtts://127.0.0.1:%d"
tls_cert = %s
tls_key = %s
sni = [
  { tls_cert = %s, tls_key = %s },
  { tls_cert = %s, tls_key = %s },
]
""" % (port, toml_str(pki.server_cert), toml_str(pki.server_key), toml_str(pki.named[0]),
       toml_str(pki.named[1]), toml_str(pki.wildcard[0]), toml_str(pki.wildcard[1])))
    other = tls_context(pki.other_ca.pem)
    assert handshake(port, tls_context(pki.ca.pem), "localhost") == "localhost"
    assert handshake(port, other, "broker.example") == "broker.example"
    assert handshake(port, other, "BROKER.example") == "broker.example"
    assert handshake(port, other, "s1.fleet.example") == "fleet-wildcard"
    # A wildcard covers one label; an unknown name gets the listener's own certificate,
    # which this client does not trust.
    assert isinstance(handshake(port, other, "a.s1.fleet.example"), ssl.SSLError)
    assert isinstance(handshake(port, other, "unknown.example"), ssl.SSLError)
    # MQTT works over a certificate chosen by name.
    c = R.RawClient("127.0.0.1", port, version=4, tls=other, server_hostname="broker.example")
    c.connect("sni-client")
    c.close()


def test_a_listeners_connection_limit_refuses_past_it_and_counts(started):
    limited = free_port()
    b = started("""
[[listener]]
url = "mqtt://127.0.0.1:%d"
max_connections = 3
""" % limited)
    held = []
    for i in range(3):
        c = R.RawClient("127.0.0.1", limited)
        c.connect("held-%d" % i)
        held.append(c)
    extra = R.RawClient("127.0.0.1", limited)
    extra.try_send(R.connect_packet("extra"))
    with pytest.raises((R.ConnectionClosed, ConnectionError, R.ReadTimeout)):
        extra.recv(timeout=3)
    extra.close()
    assert metric(b, "connections_refused", "listener_max_connections") >= 1
    # The other listener is not limited by it.
    for i in range(5):
        c = R.RawClient("127.0.0.1", b.port)
        c.connect("free-%d" % i)
        held.append(c)
    # One leaves: there is room again.
    held.pop(0).close()
    deadline = time.monotonic() + 5
    while True:
        c = R.RawClient("127.0.0.1", limited)
        try:
            c.connect("again")
            break
        except (R.ConnectionClosed, ConnectionError, R.ReadTimeout):
            assert time.monotonic() < deadline
            time.sleep(0.1)
        finally:
            c.close()
    for c in held:
        c.close()


def test_the_accept_rate_holds_connections_back_without_refusing_any(started):
    """60 clients at once on a listener limited to 20 per second: all are answered, none
    refused, and the last no sooner than the rate allows (the first second's 20 at once, 40
    more at 20 per second)."""
    port = free_port()
    b = started("""
[[listener]]
url = "mqtt://127.0.0.1:%d"
max_accept_rate = 20
""" % port)
    start = time.monotonic()
    clients = [R.RawClient("127.0.0.1", port, timeout=20) for _ in range(60)]
    for i, c in enumerate(clients):
        c.send(R.connect_packet("rate-%d" % i))
    for c in clients:
        assert c.expect(R.CONNACK, timeout=20).connack(4)[1] == 0
    took = time.monotonic() - start
    assert took >= 1.5, "60 connections at 20/s took only %.2f s" % took
    assert metric(b, "accept_pauses", "rate") >= 1
    assert metric(b, "connections_refused", "listener_max_connections") == 0
    for c in clients:
        c.close()


def test_max_handshakes_holds_new_connections_until_a_handshake_ends(started, pki):
    """Two stalled handshakes fill a listener limited to two: a third client's handshake does
    not start until one of them ends (it waits in the backlog, it is not refused)."""
    port = free_port()
    b = started("""
[[listener]]
url = "mqtts://127.0.0.1:%d"
tls_cert = %s
tls_key = %s
max_handshakes = 2
""" % (port, toml_str(pki.server_cert), toml_str(pki.server_key)))
    stalled = [socket.create_connection(("127.0.0.1", port)) for _ in range(2)]
    time.sleep(0.3)
    ctx = tls_context(pki.ca.pem)
    with pytest.raises((socket.timeout, TimeoutError)):
        handshake(port, ctx, timeout=1)
    stalled.pop().close()
    assert handshake(port, ctx, timeout=5) == "localhost"
    assert metric(b, "accept_pauses", "handshakes") >= 1
    for s in stalled:
        s.close()


def test_print_config_writes_the_tables_and_they_read_back(pki, tmp_path):
    conf = tmp_path / "in.toml"
    conf.write_text("""
tls_cert = %s
tls_key = %s

[[listener]]
url = "mqtts://127.0.0.1:8883"
tls_ca = %s
require_certificate = true
max_handshakes = 100
sni = [{ tls_cert = %s, tls_key = %s }]

[[listener]]
url = "mqtt://127.0.0.1:1883"
""" % (toml_str(pki.server_cert), toml_str(pki.server_key), toml_str(pki.ca.pem),
       toml_str(pki.named[0]), toml_str(pki.named[1])))

    def printed(path):
        r = subprocess.run([str(RINGMQ_BIN), "--config", str(path), "--print-config"],
                           capture_output=True, text=True, timeout=10)
        assert r.returncode == 0, r.stderr
        return r.stdout

    first = printed(conf)
    line = next(l for l in first.splitlines() if l.startswith("listener = "))
    assert 'url = "mqtts://127.0.0.1:8883"' in line and "max_handshakes = 100" in line, line
    assert '"mqtt://127.0.0.1:1883"' in line, line
    again = tmp_path / "again.toml"
    again.write_text(first)
    assert printed(again) == first


@pytest.mark.parametrize("table, message", [
    ('url = "mqtt://127.0.0.1:1883"\ntls_cert = "c.pem"', "tls_cert is for TLS listeners"),
    ('url = "mqtt://127.0.0.1:1883"\nmax_conections = 5', "unknown key"),
    ('tls_cert = "c.pem"', "needs url"),
    ('url = "mqtts://127.0.0.1:8883"', "needs tls_cert and tls_key"),
    ('url = "mqtt://127.0.0.1:1883"\nmax_accept_rate = "fast"', "max_accept_rate must be"),
    ('url = "ws://127.0.0.1:8080"\ntls_ca = "ca.pem"', "tls_ca is for TLS listeners"),
    ('url = "mqtts://127.0.0.1:8883"\nws_path = "/mqtt"', "ws_path is for WebSocket"),
    ('url = "wss://127.0.0.1:8443"', "needs tls_cert and tls_key"),
])
def test_a_bad_listener_table_stops_the_start_naming_it(tmp_path, table, message):
    conf = tmp_path / "bad.toml"
    conf.write_text("[[listener]]\n%s\n" % table)
    r = subprocess.run([str(RINGMQ_BIN), "--config", str(conf), "--data-dir",
                        str(tmp_path / "d"), "--metrics-addr", "none"],
                       capture_output=True, text=True, timeout=10)
    assert r.returncode == 2, r.stderr
    assert message in r.stderr, r.stderr


def test_a_missing_sni_certificate_stops_the_start_naming_the_file(pki, tmp_path):
    conf = tmp_path / "sni.toml"
    conf.write_text("""
[[listener]]
url = "mqtts://127.0.0.1:%d"
tls_cert = %s
tls_key = %s
sni = [{ tls_cert = "/nonexistent/other.pem", tls_key = %s }]
""" % (free_port(), toml_str(pki.server_cert), toml_str(pki.server_key),
       toml_str(pki.server_key)))
    r = subprocess.run([str(RINGMQ_BIN), "--config", str(conf), "--data-dir",
                        str(tmp_path / "d"), "--metrics-addr", "none"],
                       capture_output=True, text=True, timeout=10)
    assert r.returncode == 2, r.stderr
    assert "/nonexistent/other.pem" in r.stderr, r.stderr
