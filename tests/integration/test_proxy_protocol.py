"""PROXY protocol v1 and v2 (HAProxy's) on listeners configured for it (issue 14): behind a
load balancer the device's real address is logged with the connection; the header may arrive
split; MQTT, TLS and WebSocket follow it on the same connection; a connection without a valid
header is closed. (On listeners not configured for it a header is refused: test_tls.py.)"""

import re
import socket
import ssl
import struct
import time

import pytest

from conftest import Broker, free_port
from helpers import stop_all
from pki import Pki
import rawmqtt as R
from test_websocket import Frames, frame

pytestmark = pytest.mark.ringmq_only

V1 = b"PROXY TCP4 203.0.113.7 127.0.0.1 40000 1883\r\n"


def v2(src=(198, 51, 100, 9), port=5555):
    return (b"\r\n\r\n\x00\r\nQUIT\n\x21\x11\x00\x0c" + bytes(src) + bytes([127, 0, 0, 1])
            + struct.pack("!HH", port, 1883))


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    return Pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture
def proxied(tmp_path, nshards, pki):
    """A broker whose mqtt://, mqtts:// and ws:// listeners all expect a PROXY header."""
    ports = {k: free_port() for k in ("mqtt", "mqtts", "ws")}
    conf = tmp_path / "proxy.toml"
    conf.write_text("\n".join(
        ['tls_cert = "%s"' % pki.server_cert, 'tls_key = "%s"' % pki.server_key] +
        ['[[listener]]\nurl = "%s://127.0.0.1:%d"\nproxy_protocol = true' % (k, p)
         for k, p in ports.items()]) + "\n")
    b = Broker(nshards, ["--config", str(conf)])
    b.ports = ports
    yield b
    stop_all([b])


def wait_for_client(b, client, timeout=5):
    """Waits until the broker logged a PROXY connection from `client`."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        log = re.sub(r"\x1b\[[0-9;]*m", "", b.log_tail(200))
        if "PROXY protocol: connection from" in log and "client=%s" % client in log:
            return
        time.sleep(0.05)
    raise AssertionError("no PROXY connection from %s in the log:\n%s" % (client, b.log_tail(20)))


def connack(sock):
    got = b""
    while len(got) < 4:
        chunk = sock.recv(4 - len(got))
        if not chunk:
            raise R.ConnectionClosed()
        got += chunk
    return got


def test_v1_and_v2_headers_name_the_client_in_the_log(proxied):
    for header, client in [(V1, "203.0.113.7:40000"), (v2(), "198.51.100.9:5555")]:
        s = socket.create_connection(("127.0.0.1", proxied.ports["mqtt"]), timeout=5)
        s.sendall(header + R.connect_packet("proxied-%d" % len(header)))
        assert connack(s) == b"\x20\x02\x00\x00"
        wait_for_client(proxied, client)
        s.close()


def test_a_header_split_over_writes_waits_for_the_rest(proxied):
    s = socket.create_connection(("127.0.0.1", proxied.ports["mqtt"]), timeout=5)
    h = v2((192, 0, 2, 44), 6000)
    for piece in (h[:5], h[5:17], h[17:], R.connect_packet("split-proxy")):
        s.sendall(piece)
        time.sleep(0.05)
    assert connack(s) == b"\x20\x02\x00\x00"
    wait_for_client(proxied, "192.0.2.44:6000")
    s.close()


@pytest.mark.parametrize("first", [R.connect_packet("no-header"), b"PROXY TCP4 nonsense\r\n",
                                   b"GET / HTTP/1.1\r\n\r\n"],
                         ids=["mqtt", "bad-v1", "http"])
def test_a_connection_without_a_valid_header_is_closed(proxied, first):
    s = socket.create_connection(("127.0.0.1", proxied.ports["mqtt"]), timeout=5)
    s.sendall(first)
    assert s.recv(16) == b"", "closed without an answer"
    s.close()


def test_tls_and_websocket_follow_the_header(proxied, pki):
    raw = socket.create_connection(("127.0.0.1", proxied.ports["mqtts"]), timeout=5)
    raw.sendall(V1)
    ctx = ssl.create_default_context(cafile=str(pki.ca.pem))
    with ctx.wrap_socket(raw, server_hostname="localhost") as s:
        s.sendall(R.connect_packet("proxy-tls"))
        assert connack(s) == b"\x20\x02\x00\x00"
    s = socket.create_connection(("127.0.0.1", proxied.ports["ws"]), timeout=5)
    s.sendall(v2() + b"GET /mqtt HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n"
              b"Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
              b"Sec-WebSocket-Version: 13\r\nSec-WebSocket-Protocol: mqtt\r\n\r\n")
    buf = b""
    while b"\r\n\r\n" not in buf:
        buf += s.recv(4096)
    assert buf.startswith(b"HTTP/1.1 101")
    f = Frames(s, buf.split(b"\r\n\r\n", 1)[1])
    s.sendall(frame(2, R.connect_packet("proxy-ws")))
    assert f.mqtt()[0][:4] == b"\x20\x02\x00\x00"
    s.close()
