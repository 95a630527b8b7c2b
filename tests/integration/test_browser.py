"""MQTT over WebSocket from a real browser (issue 14): headless Chromium (Debian's package)
loads a page served by the test, where MQTT.js (the browser bundle of the npm package the
MQTT.js tests pin) connects over ws:// and wss:// (the test CA's server certificate trusted by
its public key), subscribes, and exchanges messages with a paho-mqtt client over plain TCP. The
page is driven and photographed through the DevTools protocol; the screenshot is kept in
target/test-artifacts/."""

import base64
import hashlib
import http.server
import json
import os
import re
import shutil
import subprocess
import tempfile
import threading
import time
from pathlib import Path

import pytest
import websockets.sync.client as wsclient
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from conftest import Broker, free_port
from helpers import SyncClient, stop_all, unique_topic
from pki import Pki

pytestmark = pytest.mark.ringmq_only

REPO = Path(__file__).resolve().parents[2]
BUNDLE = Path(__file__).resolve().parent / "js" / "node_modules" / "mqtt" / "dist" / "mqtt.min.js"
ARTIFACTS = REPO / "target" / "test-artifacts"

PAGE = """<!doctype html>
<html><head><meta charset="utf-8"><title>connecting</title>
<script src="mqtt.min.js"></script>
<style>body { font: 14px monospace; } h1 { font-size: 18px; }</style></head>
<body><h1>ringmq: MQTT.js in Chromium over ws:// and wss://</h1><pre id="log"></pre>
<script>
const q = new URLSearchParams(location.search);
const topic = q.get('topic');
const urls = q.getAll('url');
const log = (s) => { document.getElementById('log').textContent += s + '\\n'; };
let echoed = 0;
for (const url of urls) {
  const scheme = url.split(':')[0];
  const c = mqtt.connect(url, { clientId: 'browser-' + scheme + '-' + topic.replace(/\\//g, '-'),
                                protocolVersion: 5, reconnectPeriod: 0, connectTimeout: 5000 });
  c.on('connect', () => {
    log('connected ' + url);
    c.subscribe(topic + '/down', { qos: 1 }, (err) => {
      if (err) { log('subscribe failed ' + err); return; }
      c.publish(topic + '/up', 'ready ' + scheme, { qos: 1 });
    });
  });
  c.on('message', (t, p) => {
    log(scheme + ' got ' + p.toString());
    c.publish(topic + '/up', 'echo ' + p.toString() + ' via ' + scheme, { qos: 1 }, () => {
      echoed += 1;
      if (echoed === urls.length) document.title = 'done';
    });
  });
  c.on('error', (e) => { log('error ' + url + ': ' + e.message); document.title = 'error'; });
}
</script></body></html>
"""


class DevTools:
    """The DevTools protocol over Chromium's browser WebSocket, one page attached."""

    def __init__(self, ws):
        self.ws = ws
        self.next_id = 0
        self.session = None

    def call(self, method, params=None, timeout=10):
        self.next_id += 1
        msg = {"id": self.next_id, "method": method, "params": params or {}}
        if self.session:
            msg["sessionId"] = self.session
        self.ws.send(json.dumps(msg))
        deadline = time.monotonic() + timeout
        while True:
            reply = json.loads(self.ws.recv(timeout=max(0.1, deadline - time.monotonic())))
            if reply.get("id") == self.next_id:
                assert "error" not in reply, reply
                return reply["result"]

    def open(self, url):
        target = self.call("Target.createTarget", {"url": "about:blank"})["targetId"]
        self.session = None
        session = self.call("Target.attachToTarget", {"targetId": target, "flatten": True})
        self.session = session["sessionId"]
        self.call("Page.enable")
        self.call("Page.navigate", {"url": url})

    def evaluate(self, expression):
        r = self.call("Runtime.evaluate", {"expression": expression, "returnByValue": True})
        return r["result"].get("value")


def spki_hash(cert_path):
    cert = x509.load_pem_x509_certificate(Path(cert_path).read_bytes())
    spki = cert.public_key().public_bytes(serialization.Encoding.DER,
                                          serialization.PublicFormat.SubjectPublicKeyInfo)
    return base64.b64encode(hashlib.sha256(spki).digest()).decode()


@pytest.fixture
def page_server(tmp_path):
    if not BUNDLE.is_file():
        pytest.fail("MQTT.js not installed: run `make deps`", pytrace=False)
    (tmp_path / "index.html").write_text(PAGE)
    shutil.copy(BUNDLE, tmp_path / "mqtt.min.js")

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def __init__(self, *a, **kw):
            super().__init__(*a, directory=str(tmp_path), **kw)

        def log_message(self, *a):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Quiet)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield "http://127.0.0.1:%d/index.html" % server.server_address[1]
    server.shutdown()


@pytest.fixture
def chromium(pki, tmp_path):
    exe = shutil.which("chromium")
    if exe is None:
        pytest.fail("chromium not found: run `make deps` (installs Debian's chromium)",
                    pytrace=False)
    profile = tempfile.mkdtemp(prefix="ringmq-chromium-")
    proc = subprocess.Popen(
        [exe, "--headless=new", "--no-sandbox", "--disable-gpu", "--no-first-run",
         "--disable-dev-shm-usage", "--remote-debugging-port=0", "--user-data-dir=" + profile,
         "--window-size=1000,420",
         # The test CA's server certificate, trusted by its public key (nothing installed).
         "--ignore-certificate-errors-spki-list=" + spki_hash(pki.server_cert),
         "about:blank"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    url = None
    deadline = time.monotonic() + 30
    lines = []
    while url is None and time.monotonic() < deadline:
        line = proc.stderr.readline()
        if not line:
            break
        lines.append(line)
        m = re.search(r"DevTools listening on (ws://\S+)", line)
        if m:
            url = m.group(1)
    if url is None:
        proc.kill()
        pytest.fail("chromium did not start: %s" % "".join(lines[-20:]), pytrace=False)
    threading.Thread(target=proc.stderr.read, daemon=True).start()
    try:
        with wsclient.connect(url, max_size=None, open_timeout=10) as ws:
            yield DevTools(ws)
    finally:
        proc.kill()
        proc.wait(timeout=10)
        shutil.rmtree(profile, ignore_errors=True)


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    return Pki(tmp_path_factory.mktemp("pki"))


def test_mqttjs_in_chromium_over_ws_and_wss_talks_to_a_tcp_client(pki, page_server, chromium):
    ws, wss = free_port(), free_port()
    b = Broker(2, ["--listener", "ws://127.0.0.1:%d" % ws, "--listener", "wss://127.0.0.1:%d" % wss,
                   "--tls-cert", str(pki.server_cert), "--tls-key", str(pki.server_key)])
    try:
        topic = unique_topic("browser")
        tcp = SyncClient("127.0.0.1", b.port, client_id="tcp-browser-peer")
        tcp.connect()
        tcp.subscribe(topic + "/up", qos=1)
        urls = ["ws://127.0.0.1:%d/mqtt" % ws, "wss://localhost:%d/mqtt" % wss]
        query = "topic=%s&%s" % (topic, "&".join("url=" + u for u in urls))
        chromium.open(page_server + "?" + query)
        ready = sorted(m.payload.decode() for m in tcp.get_n(2, timeout=20))
        assert ready == ["ready ws", "ready wss"], ready
        tcp.publish(topic + "/down", b"hello from tcp", qos=1)
        echoes = sorted(m.payload.decode() for m in tcp.get_n(2, timeout=10))
        assert echoes == ["echo hello from tcp via ws", "echo hello from tcp via wss"], echoes
        deadline = time.monotonic() + 10
        while chromium.evaluate("document.title") != "done" and time.monotonic() < deadline:
            time.sleep(0.1)
        log = chromium.evaluate("document.getElementById('log').textContent")
        assert chromium.evaluate("document.title") == "done", log
        shot = chromium.call("Page.captureScreenshot", {"format": "png"})["data"]
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        (ARTIFACTS / "browser-websocket.png").write_bytes(base64.b64decode(shot))
        assert len(base64.b64decode(shot)) > 1000
        tcp.disconnect()
    finally:
        stop_all([b])
