"""MQTT over WebSocket (`ws://` listeners, issue 14): real clients (paho-mqtt's websockets
transport, MQTT.js in node, Python's `websockets` library) beside plain TCP clients on the same
broker; framing edge cases from raw sockets (split and coalesced packets, fragmentation, a ping
inside a fragmented message, unmasked and text frames, oversized control frames); bad upgrade
requests and their HTTP status; the packet size limit across frames; the will after a close
frame."""

import base64
import os
import socket
import struct
import time

import paho.mqtt.client as mqtt
import pytest
import websockets.sync.client as wsclient

from conftest import Broker, free_port
from helpers import SyncClient, client_id_on_shard, unique_topic, stop_all
import rawmqtt as R
from test_mqttjs import run_js

pytestmark = pytest.mark.ringmq_only


@pytest.fixture
def ws_broker(request, nshards):
    made = []

    def make(extra=()):
        port = free_port()
        b = Broker(nshards, ["--listener", "ws://127.0.0.1:%d" % port] + list(extra))
        b.ws_port = port
        made.append(b)
        return b

    yield make
    stop_all(made)


def ws_client(b, client_id, protocol=mqtt.MQTTv311):
    c = SyncClient("127.0.0.1", b.ws_port, client_id=client_id, protocol=protocol,
                   transport="websockets")
    c.c.ws_set_options(path="/mqtt")
    return c


# -- raw WebSocket ------------------------------------------------------------------------

def upgrade(port, path="/mqtt", protocol="mqtt", version="13", extra=""):
    """Sends an upgrade request; returns (socket, status, response headers, bytes after)."""
    s = socket.create_connection(("127.0.0.1", port), timeout=5)
    key = base64.b64encode(os.urandom(16)).decode()
    req = ("GET %s HTTP/1.1\r\nHost: localhost\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
           "Sec-WebSocket-Key: %s\r\nSec-WebSocket-Version: %s\r\n" % (path, key, version))
    if protocol:
        req += "Sec-WebSocket-Protocol: %s\r\n" % protocol
    s.sendall((req + extra + "\r\n").encode())
    buf = b""
    while b"\r\n\r\n" not in buf:
        chunk = s.recv(4096)
        if not chunk:
            break
        buf += chunk
    head, _, rest = buf.partition(b"\r\n\r\n")
    lines = head.decode().split("\r\n")
    headers = {l.split(":", 1)[0].lower(): l.split(":", 1)[1].strip() for l in lines[1:] if ":" in l}
    return s, int(lines[0].split()[1]), headers, rest


def frame(opcode, payload, fin=True, masked=True):
    mask = os.urandom(4)
    head = bytes([(0x80 if fin else 0) | opcode])
    n = len(payload)
    bit = 0x80 if masked else 0
    if n < 126:
        head += bytes([bit | n])
    elif n < 65536:
        head += bytes([bit | 126]) + struct.pack("!H", n)
    else:
        head += bytes([bit | 127]) + struct.pack("!Q", n)
    if not masked:
        return head + payload
    return head + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload))


class Frames:
    """Reads the server's frames from a raw socket."""

    def __init__(self, sock, buf=b""):
        self.s, self.buf = sock, buf

    def _need(self, n):
        while len(self.buf) < n:
            chunk = self.s.recv(65536)
            if not chunk:
                raise R.ConnectionClosed()
            self.buf += chunk

    def next(self):
        self._need(2)
        b0, b1 = self.buf[0], self.buf[1]
        assert not b1 & 0x80, "server frames are never masked [RFC 6455 5.1]"
        n, at = b1 & 0x7F, 2
        if n == 126:
            self._need(4)
            n, at = struct.unpack("!H", self.buf[2:4])[0], 4
        elif n == 127:
            self._need(10)
            n, at = struct.unpack("!Q", self.buf[2:10])[0], 10
        self._need(at + n)
        payload, self.buf = self.buf[at:at + n], self.buf[at + n:]
        return b0 & 0x0F, payload

    def mqtt(self, n=1):
        """The next `n` MQTT packets (binary frames, control frames skipped)."""
        stream = b""
        out = []
        while len(out) < n:
            op, payload = self.next()
            if op in (0, 2):
                stream += payload
            pos = 0
            while pos < len(stream):
                try:
                    length, at = R.decode_varint(stream, pos + 1)
                except Exception:
                    break
                if at + length > len(stream):
                    break
                out.append(stream[pos:at + length])
                pos = at + length
            stream = stream[pos:]
        return out

    def closed(self):
        """Whether the socket ends (after any frames): the close frame's code, else None."""
        code = None
        try:
            while True:
                op, payload = self.next()
                if op == 8:
                    code = struct.unpack("!H", payload[:2])[0]
        except (R.ConnectionClosed, ConnectionError):
            return code


def open_mqtt(b, client_id, version=4):
    s, status, headers, rest = upgrade(b.ws_port)
    assert status == 101, (status, headers)
    f = Frames(s, rest)
    s.sendall(frame(2, R.connect_packet(client_id, version=version)))
    assert f.mqtt()[0][0] >> 4 == 2, "CONNACK"
    return s, f


# -- tests -------------------------------------------------------------------------------

@pytest.mark.parametrize("protocol", [mqtt.MQTTv311, mqtt.MQTTv5], ids=["v311", "v5"])
def test_paho_over_websocket_exchanges_messages_with_a_tcp_client(ws_broker, nshards, protocol):
    """paho-mqtt with transport="websockets" [MQTT-6.0.0-3/4: subprotocol mqtt], subscribed
    and publishing, beside a plain TCP client, both directions, QoS 1, up to 300 KB."""
    b = ws_broker()
    topic = unique_topic("ws")
    ws = ws_client(b, client_id_on_shard("ws-a", nshards - 1, nshards), protocol)
    ws.connect()
    ws.subscribe(topic + "/down", qos=1)
    tcp = SyncClient("127.0.0.1", b.port, client_id=client_id_on_shard("tcp-a", 0, nshards),
                     protocol=protocol)
    tcp.connect()
    tcp.subscribe(topic + "/up", qos=1)
    sizes = [0, 10, 125, 126, 65535, 65536, 300_000]
    for n in sizes:
        tcp.publish(topic + "/down", os.urandom(n), qos=1)
        ws.publish(topic + "/up", bytes([n % 251]) * n, qos=1)
    assert [len(m.payload) for m in ws.get_n(len(sizes))] == sizes
    assert [m.payload for m in tcp.get_n(len(sizes))] == [bytes([n % 251]) * n for n in sizes]
    ws.disconnect()
    tcp.disconnect()


def test_mqttjs_over_websocket(ws_broker, nshards):
    """MQTT.js in node over ws://.../mqtt, MQTT 5 and 3.1.1, to and from TCP clients."""
    b = ws_broker()
    ids = {"sub": client_id_on_shard("js-ws-sub", nshards - 1, nshards),
           "pub": client_id_on_shard("js-ws-pub", 0, nshards)}
    out = run_js("websocket", b, ids, unique_topic("jsws"), extra={"wsport": b.ws_port})
    for v in ("v5", "v4"):
        assert out[v]["down"] == ["d0", "d1", "d2", "len:200000"], out
        assert out[v]["up"] == ["u0", "u1", "u2"], out


def test_the_websockets_library_splits_coalesces_and_fragments(ws_broker):
    """Python's `websockets` (no compression): a CONNECT split over three messages, CONNECT's
    successors coalesced in one message, a PUBLISH sent as one fragmented message."""
    b = ws_broker()
    url = "ws://127.0.0.1:%d/mqtt" % b.ws_port
    with wsclient.connect(url, subprotocols=["mqtt"], compression=None) as c:
        assert c.subprotocol == "mqtt"
        connect = R.connect_packet("lib-1")
        for part in (connect[:3], connect[3:9], connect[9:]):
            c.send(part)
        assert c.recv(timeout=5)[0] >> 4 == 2
        topic = unique_topic("lib")
        c.send(R.subscribe_packet(1, [(topic, 0)]) + R.publish_packet(topic, b"one")
               + R.pingreq_packet())
        got = b""
        while got.count(b"one") < 1 or b"\xd0\x00" not in got:
            got += c.recv(timeout=5)
        c.send([R.publish_packet(topic, b"two" * 1000)[:5], R.publish_packet(topic, b"two" * 1000)[5:]])
        got = b""
        while got.count(b"two") < 1000:
            got += c.recv(timeout=5)


def test_a_ping_inside_a_fragmented_message_is_answered_and_the_message_goes_on(ws_broker):
    b = ws_broker()
    s, f = open_mqtt(b, "ping-in-frag")
    topic = unique_topic("frag")
    s.sendall(frame(2, R.subscribe_packet(1, [(topic, 0)])))
    assert f.mqtt()[0][0] >> 4 == 9, "SUBACK"
    p = R.publish_packet(topic, b"z" * 5000)
    s.sendall(frame(2, p[:100], fin=False) + frame(9, b"are you there") + frame(0, p[100:3000], fin=False)
              + frame(0, p[3000:], fin=True))
    op, payload = f.next()
    assert (op, payload) == (10, b"are you there"), "PONG with the PING's payload [RFC 6455 5.5.3]"
    pub = f.mqtt()[0]
    assert pub[0] >> 4 == 3 and pub.endswith(b"z" * 5000)
    s.close()


@pytest.mark.parametrize("bad, code", [
    (frame(2, R.pingreq_packet(), masked=False), 1002),
    (frame(1, b"\xc0\x00"), 1003),
    (frame(9, b"p" * 126), 1002),
    (frame(0, R.pingreq_packet()), 1002),
    (frame(2, b"\xc0", fin=False) + frame(2, b"\x00"), 1002),
], ids=["unmasked", "text", "big-control", "stray-continuation", "unfinished-message"])
def test_broken_frames_close_with_their_code(ws_broker, bad, code):
    """[RFC 6455 5.1] unmasked client frames, [MQTT-6.0.0-1] text frames, control frames over
    125 bytes, continuations out of place: a close frame with the code, then the socket ends;
    the broker lives on."""
    b = ws_broker()
    s, f = open_mqtt(b, "bad-frame")
    s.sendall(bad)
    assert f.closed() == code
    s2, _ = open_mqtt(b, "after-bad")
    s2.close()


@pytest.mark.parametrize("kw, status", [
    ({"path": "/other"}, 404),
    ({"version": "8"}, 426),
    ({"protocol": "chat, superchat"}, 400),
    ({"extra": "X-Big: %s\r\n" % ("y" * 9000)}, 431),
], ids=["path", "version", "subprotocol", "too-large"])
def test_bad_upgrade_requests_get_an_http_status(ws_broker, kw, status):
    b = ws_broker()
    s, got, headers, _ = upgrade(b.ws_port, **kw)
    assert got == status, headers
    if status == 426:
        assert headers.get("sec-websocket-version") == "13"
    s.close()


def test_mqtt_bytes_on_the_websocket_port_get_400_and_old_clients_get_mqttv31(ws_broker):
    b = ws_broker()
    s = socket.create_connection(("127.0.0.1", b.ws_port), timeout=5)
    s.sendall(R.connect_packet("plain-on-ws") + b"\r\n\r\n")
    assert s.recv(100).startswith(b"HTTP/1.1 400 ")
    s.close()
    s, status, headers, _ = upgrade(b.ws_port, protocol="mqttv3.1")
    assert status == 101 and headers["sec-websocket-protocol"] == "mqttv3.1"
    s.close()


def test_the_packet_size_limit_applies_across_frames(ws_broker):
    """--max-packet-size 1024: a 2,000-byte PUBLISH in ten frames closes the connection
    (MQTT 5: DISCONNECT 0x95) as it would over TCP, then the close frame says 1009 (message
    too big)."""
    b = ws_broker(["--max-packet-size", "1024"])
    s, f = open_mqtt(b, "too-big", version=5)
    p = R.publish_packet("t/big", b"b" * 2000, version=5)
    for i in range(0, len(p), 200):
        try:
            s.sendall(frame(2, p[i:i + 200]))
        except OSError:
            break
    disc = f.mqtt()[0]
    assert disc[0] >> 4 == 14 and disc[2] == 0x95, disc
    assert f.closed() == 1009


def test_a_close_frame_without_disconnect_publishes_the_will(ws_broker):
    b = ws_broker()
    topic = unique_topic("wswill")
    watcher = SyncClient("127.0.0.1", b.port, client_id="ws-will-watch")
    watcher.connect()
    watcher.subscribe(topic, qos=1)
    s, status, _, rest = upgrade(b.ws_port)
    assert status == 101
    f = Frames(s, rest)
    s.sendall(frame(2, R.connect_packet("ws-will", will_topic=topic, will_payload=b"gone",
                                        will_qos=1)))
    assert f.mqtt()[0][0] >> 4 == 2
    s.sendall(frame(8, struct.pack("!H", 1001)))
    assert f.closed() == 1001, "the close frame is answered with its code [RFC 6455 5.5.1]"
    assert watcher.get().payload == b"gone"
    watcher.disconnect()


def test_a_silent_connection_is_closed_at_the_connect_deadline(ws_broker):
    """No CONNECT after the upgrade, or no upgrade request at all: closed after
    --connect-timeout (1 s here), the upgraded one with a close frame."""
    b = ws_broker(["--connect-timeout", "1"])
    s, status, _, rest = upgrade(b.ws_port)
    assert status == 101
    t = time.monotonic()
    assert Frames(s, rest).closed() == 1000
    assert 0.5 < time.monotonic() - t < 4
    s.close()
    s = socket.create_connection(("127.0.0.1", b.ws_port), timeout=5)
    t = time.monotonic()
    assert s.recv(10) == b""
    assert 0.5 < time.monotonic() - t < 4
    s.close()


# -- wss:// ------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    from pki import Pki
    return Pki(tmp_path_factory.mktemp("pki"))


def wss_broker(ws_broker, pki, extra=()):
    port = free_port()
    b = ws_broker(["--listener", "wss://127.0.0.1:%d" % port, "--tls-cert", str(pki.server_cert),
                   "--tls-key", str(pki.server_key)] + list(extra))
    b.wss_port = port
    return b


@pytest.mark.parametrize("protocol", [mqtt.MQTTv311, mqtt.MQTTv5], ids=["v311", "v5"])
def test_paho_over_secure_websocket_exchanges_messages_with_ws_and_tcp_clients(
        ws_broker, pki, nshards, protocol):
    """wss:// is WebSocket over the TLS of mqtts:// (ALPN http/1.1, as browsers offer):
    paho-mqtt with transport="websockets" and --cafile-like trust, to a ws:// and a TCP
    client, up to 300 KB (several TLS records and WebSocket frames per message)."""
    b = wss_broker(ws_broker, pki)
    topic = unique_topic("wss")
    wss = SyncClient("127.0.0.1", b.wss_port,
                     client_id=client_id_on_shard("wss-a", nshards - 1, nshards),
                     protocol=protocol, transport="websockets").tls(pki.ca.pem)
    wss.c.ws_set_options(path="/mqtt")
    wss.connect()
    wss.subscribe(topic + "/down", qos=1)
    ws = ws_client(b, client_id_on_shard("ws-b", 0, nshards), protocol)
    ws.connect()
    ws.subscribe(topic + "/up", qos=1)
    tcp = SyncClient("127.0.0.1", b.port, client_id="tcp-b", protocol=protocol)
    tcp.connect()
    sizes = [0, 126, 65536, 300_000]
    for n in sizes:
        tcp.publish(topic + "/down", bytes([n % 251]) * n, qos=1)
        wss.publish(topic + "/up", bytes([n % 13]) * n, qos=1)
    assert [m.payload for m in wss.get_n(len(sizes))] == [bytes([n % 251]) * n for n in sizes]
    assert [m.payload for m in ws.get_n(len(sizes))] == [bytes([n % 13]) * n for n in sizes]
    for c in (wss, ws, tcp):
        c.disconnect()


def test_secure_websocket_with_client_certificates(ws_broker, pki):
    """Mutual TLS works on wss:// as on mqtts://: a client with a certificate from the CA
    connects, one without is refused in the handshake."""
    b = wss_broker(ws_broker, pki, ["--tls-ca", str(pki.ca.pem), "--require-certificate",
                                    "true", "--use-identity-as-username", "true"])
    import ssl
    ctx = ssl.create_default_context(cafile=str(pki.ca.pem))
    ctx.load_cert_chain(str(pki.client[0]), str(pki.client[1]))
    url = "wss://localhost:%d/mqtt" % b.wss_port
    with wsclient.connect(url, ssl=ctx, subprotocols=["mqtt"], compression=None) as c:
        assert c.subprotocol == "mqtt"
        c.send(R.connect_packet("wss-mtls"))
        assert c.recv(timeout=5)[:4] == b"\x20\x02\x00\x00"
        c.send(R.pingreq_packet())
        assert c.recv(timeout=5) == b"\xd0\x00"
    bare = ssl.create_default_context(cafile=str(pki.ca.pem))
    with pytest.raises(Exception):
        with wsclient.connect(url, ssl=bare, subprotocols=["mqtt"], compression=None,
                              open_timeout=5) as c:
            c.send(R.connect_packet("wss-no-cert"))
            c.recv(timeout=5)


def test_the_loadgen_speaks_websocket_and_secure_websocket(ws_broker, pki, tmp_path):
    """The bundled load generator over ws:// and wss://: a QoS 1 fan-in loses nothing."""
    import json
    import subprocess
    from conftest import RINGMQ_BIN
    loadgen = RINGMQ_BIN.parent / "ringmq-loadgen"
    b = wss_broker(ws_broker, pki)
    for name, port, extra in [("ws", b.ws_port, []),
                              ("wss", b.wss_port, ["--tls", "--tls-ca", str(pki.ca.pem)])]:
        out = tmp_path / ("%s.json" % name)
        r = subprocess.run([str(loadgen), "--port", str(port), "--ws", "--quiet", "--json", str(out),
                            "--qos", "1", "--duration", "1", "--ramp-up", "5"] + extra
                           + ["fan-in", "--publishers", "20"],
                           capture_output=True, text=True, timeout=120)
        assert r.returncode == 0, r.stdout + r.stderr
        v = json.loads(out.read_text())
        assert v["errors"] == 0 and v["lost"] == 0 and v["sent"] > 0, (name, v)
        assert v["acked"] == v["sent"], (name, v)


def test_an_origin_allow_list_refuses_other_browser_origins(tmp_path, nshards):
    """A listener's ws_origins: a browser's Origin not on the list gets 403; a listed one (any
    case) and a request without Origin (not a browser) are upgraded."""
    port = free_port()
    conf = tmp_path / "ws.toml"
    conf.write_text('[[listener]]\nurl = "ws://127.0.0.1:%d"\n'
                    'ws_origins = ["https://app.example", "http://localhost:3000"]\n' % port)
    b = Broker(nshards, ["--config", str(conf)])
    try:
        for origin, status in [("https://evil.example", 403), ("https://APP.example", 101),
                               ("http://localhost:3000", 101), (None, 101)]:
            extra = "Origin: %s\r\n" % origin if origin else ""
            s, got, _, _ = upgrade(port, extra=extra)
            assert got == status, origin
            s.close()
    finally:
        stop_all([b])


def test_passwords_and_acls_apply_over_websocket_as_over_tcp(ws_broker, tmp_path):
    """Authentication and authorization live in the core, whatever the transport: over ws://
    a wrong password gets CONNACK 0x86 after the delay, the right one connects, and the ACL
    refuses a PUBLISH the user may not make (MQTT 5 PUBACK 0x87)."""
    import subprocess
    from conftest import RINGMQ_BIN
    pw, acl = tmp_path / "passwd", tmp_path / "acl"
    subprocess.run([str(RINGMQ_BIN), "passwd", "-c", "-b", str(pw), "alice", "secret"],
                   check=True, capture_output=True, timeout=30)
    acl.write_text("user alice\ntopic readwrite alice/#\n")
    b = ws_broker(["--password-file", str(pw), "--acl-file", str(acl)])
    for password, code in [(b"wrong", 0x86), (b"secret", 0)]:
        s, status, _, rest = upgrade(b.ws_port)
        assert status == 101
        f = Frames(s, rest)
        s.sendall(frame(2, R.connect_packet("ws-alice", version=5, username="alice",
                                            password=password)))
        ack = f.mqtt()[0]
        assert ack[0] >> 4 == 2 and ack[3] == code, ack
        if code == 0:
            s.sendall(frame(2, R.publish_packet("bob/x", b"no", qos=1, pid=1, version=5)
                            + R.publish_packet("alice/x", b"yes", qos=1, pid=2, version=5)))
            acks = f.mqtt(2)
            # Refused 0x87; allowed (0x10: no subscriber yet, still a success).
            assert acks[0][2:5] == b"\x00\x01\x87", acks
            assert acks[1][2:4] == b"\x00\x02" and acks[1][4:5] < b"\x80", acks
        s.close()
