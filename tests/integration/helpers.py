"""Shared helpers: shard placement of client ids, a synchronous paho wrapper,
and a broker health check used after bad-input tests."""

import itertools
import queue
import socket
import threading
import time
import uuid

import paho.mqtt.client as mqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

import rawmqtt

WAIT = 5.0  # default bound for every wait

FNV_OFFSET = 0xCBF29CE484222325
FNV_PRIME = 0x100000001B3


def fnv1a_64(data: bytes) -> int:
    h = FNV_OFFSET
    for b in data:
        h ^= b
        h = (h * FNV_PRIME) & 0xFFFFFFFFFFFFFFFF
    return h


def home_shard(client_id: str, nshards: int) -> int:
    return fnv1a_64(client_id.encode("utf-8")) % nshards


_uniq = itertools.count()


def client_id_on_shard(prefix: str, shard: int, nshards: int) -> str:
    """A fresh client id (unique within the test run) whose home shard is ``shard``.
    With nshards == 1 every id is on shard 0 (shard is taken modulo nshards)."""
    shard %= nshards
    while True:
        cid = "%s-%d" % (prefix, next(_uniq))
        if home_shard(cid, nshards) == shard:
            return cid


def shard_pair(prefix, nshards):
    """Two client ids on different shards when nshards > 1 (same shard otherwise)."""
    return client_id_on_shard(prefix + "a", 0, nshards), client_id_on_shard(prefix + "b", 1, nshards)


def unique_topic(prefix="t"):
    return "%s/%s" % (prefix, uuid.uuid4().hex[:12])


# --------------------------------------------------------------- paho wrapper

class Msg:
    def __init__(self, m):
        self.topic = m.topic
        self.payload = m.payload
        self.qos = m.qos
        self.retain = bool(m.retain)
        self.mid = m.mid
        self.dup = bool(m.dup)
        self.properties = getattr(m, "properties", None)

    def __repr__(self):
        return "<Msg %s %r q%d r%d>" % (self.topic, self.payload[:40], self.qos, self.retain)


class SyncClient:
    """Synchronous facade over paho-mqtt 2.x.

    The network loop runs in our own thread calling ``client.loop()`` so that
    paho never auto-reconnects (loop_start() would, which breaks takeover
    tests).  Every wait is bounded."""

    def __init__(self, host, port, client_id="", protocol=mqtt.MQTTv311, clean=True,
                 transport="tcp"):
        self.host, self.port = host, port
        self.protocol = protocol
        self.client_id = client_id
        kw = {}
        if protocol != mqtt.MQTTv5:
            kw["clean_session"] = clean
        self.clean = clean
        self.c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id,
                             protocol=protocol, transport=transport, **kw)
        if transport == "websockets":
            # paho's WebSocket wrapper shares its buffers between the writing thread and the
            # network thread (a BufferError, then a lost message, under large messages both
            # ways): every write goes through the network thread, as for TLS below.
            self.c.on_socket_register_write = lambda client, userdata, sock: None
        self.c.on_connect = self._on_connect
        self.c.on_disconnect = self._on_disconnect
        self.c.on_message = self._on_message
        self.c.on_subscribe = self._on_subscribe
        self.c.on_unsubscribe = self._on_unsubscribe
        self.c.on_publish = self._on_publish
        self.messages = queue.Queue()
        self.connected = threading.Event()
        self.disconnected = threading.Event()
        self.connack = None  # (session_present, reason_code, properties)
        self.disconnect_info = None  # (reason_code, properties)
        self._acks = {}
        self._ack_cv = threading.Condition()
        self._thread = None
        self._stop = False

    def tls(self, ca, cert=None, key=None):
        """Speak TLS. paho writes from the calling thread unless an external loop is
        registered, and an SSL socket written from one thread while another reads it corrupts
        its records (the broker then sees records it cannot decrypt): every write goes through
        the network thread instead."""
        self.c.tls_set(ca_certs=str(ca), certfile=cert and str(cert), keyfile=key and str(key))
        self.c.on_socket_register_write = lambda client, userdata, sock: None
        return self

    # callbacks
    def _on_connect(self, c, u, flags, rc, props):
        self.connack = (bool(flags.session_present), rc, props)
        self.connected.set()

    def _on_disconnect(self, c, u, flags, rc, props):
        self.disconnect_info = (rc, props)
        self.disconnected.set()

    def _on_message(self, c, u, m):
        self.messages.put(Msg(m))

    def _on_subscribe(self, c, u, mid, rcs, props):
        with self._ack_cv:
            self._acks[("sub", mid)] = rcs
            self._ack_cv.notify_all()

    def _on_unsubscribe(self, c, u, mid, rcs, props):
        with self._ack_cv:
            self._acks[("unsub", mid)] = rcs
            self._ack_cv.notify_all()

    def _on_publish(self, c, u, mid, rc, props):
        with self._ack_cv:
            self._acks[("pub", mid)] = rc
            self._ack_cv.notify_all()

    def _wait_ack(self, key, timeout):
        deadline = time.monotonic() + timeout
        with self._ack_cv:
            while key not in self._acks:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError("timed out waiting for %s ack of mid %s" % key)
                self._ack_cv.wait(left)
            return self._acks.pop(key)

    def _loop(self):
        while not self._stop:
            rc = self.c.loop(0.02)
            if rc != mqtt.MQTT_ERR_SUCCESS:
                break
        if not self.disconnected.is_set():
            self.disconnected.set()

    # api
    def connect(self, keepalive=60, clean_start=True, properties=None, will=None,
                expect_success=True, timeout=WAIT, username=None):
        """Connect and wait for CONNACK. will = (topic, payload, qos, retain[, props])."""
        if will:
            topic, payload, qos, retain = will[:4]
            wprops = will[4] if len(will) > 4 else None
            self.c.will_set(topic, payload, qos, retain, properties=wprops)
        if username:
            self.c.username_pw_set(username)
        kw = {}
        if self.protocol == mqtt.MQTTv5:
            kw["clean_start"] = clean_start
            kw["properties"] = properties
        self.c.connect(self.host, self.port, keepalive=keepalive, **kw)
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()
        if not self.connected.wait(timeout):
            raise AssertionError("no CONNACK within %.1fs" % timeout)
        sp, rc, props = self.connack
        if expect_success:
            assert not rc.is_failure, "CONNACK failure: %s" % rc
        return self.connack

    def subscribe(self, topic, qos=0, timeout=WAIT, options=None, properties=None):
        """Subscribe to one filter (or a list of (filter, qos)); returns reason codes."""
        if options is not None:
            rc, mid = self.c.subscribe(topic, options=options, properties=properties)
        elif isinstance(topic, list):
            rc, mid = self.c.subscribe(topic, properties=properties)
        else:
            rc, mid = self.c.subscribe(topic, qos, properties=properties)
        assert rc == mqtt.MQTT_ERR_SUCCESS, rc
        return self._wait_ack(("sub", mid), timeout)

    def unsubscribe(self, topic, timeout=WAIT):
        rc, mid = self.c.unsubscribe(topic)
        assert rc == mqtt.MQTT_ERR_SUCCESS, rc
        return self._wait_ack(("unsub", mid), timeout)

    def publish(self, topic, payload=b"", qos=0, retain=False, timeout=WAIT, properties=None):
        """Publish and wait until the QoS flow completes (for QoS 0: until written).
        Returns the v5 reason code of the final ack (None for v3 / QoS 0)."""
        info = self.c.publish(topic, payload, qos, retain, properties=properties)
        if qos == 0:
            info.wait_for_publish(timeout)
            assert info.is_published()
            return None
        return self._wait_ack(("pub", info.mid), timeout)

    def get(self, timeout=WAIT):
        try:
            return self.messages.get(timeout=timeout)
        except queue.Empty:
            raise AssertionError("no message within %.1fs" % timeout)

    def get_n(self, n, timeout=WAIT):
        deadline = time.monotonic() + timeout
        out = []
        while len(out) < n:
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError("got %d of %d messages: %r" % (len(out), n, out))
            try:
                out.append(self.messages.get(timeout=left))
            except queue.Empty:
                pass
        return out

    def expect_none(self, timeout=0.5):
        try:
            m = self.messages.get(timeout=timeout)
        except queue.Empty:
            return
        raise AssertionError("unexpected message %r" % m)

    def drain(self, timeout=0.3):
        out = []
        while True:
            try:
                out.append(self.messages.get(timeout=timeout))
            except queue.Empty:
                return out

    def wait_disconnected(self, timeout=WAIT):
        if not self.disconnected.wait(timeout):
            raise AssertionError("client not disconnected within %.1fs" % timeout)
        return self.disconnect_info

    def disconnect(self, reasoncode=None, properties=None):
        """Clean DISCONNECT and wait for the loop to finish."""
        if not self.disconnected.is_set():
            kw = {}
            if self.protocol == mqtt.MQTTv5 and reasoncode is not None:
                from paho.mqtt.reasoncodes import ReasonCode
                kw["reasoncode"] = ReasonCode(PacketTypes.DISCONNECT, identifier=reasoncode)
            if properties is not None:
                kw["properties"] = properties
            self.c.disconnect(**kw)
            self.disconnected.wait(WAIT)
        self._stop = True
        if self._thread:
            self._thread.join(WAIT)

    def kill(self):
        """Abnormal disconnect: close the socket without sending DISCONNECT."""
        self._stop = True
        if self._thread:
            self._thread.join(WAIT)
        sock = self.c.socket()
        if sock is not None:
            sock.close()

    def close(self):
        """Best-effort teardown."""
        try:
            if not self.disconnected.is_set() and self.connected.is_set():
                self.disconnect()
        except Exception:
            pass
        self._stop = True
        if self._thread:
            self._thread.join(WAIT)
        try:
            s = self.c.socket()
            if s is not None:
                s.close()
        except Exception:
            pass


def v5props(packet_type, **kw):
    p = Properties(packet_type)
    for k, v in kw.items():
        setattr(p, k, v)
    return p


def connect_props(**kw):
    return v5props(PacketTypes.CONNECT, **kw)


def publish_props(**kw):
    return v5props(PacketTypes.PUBLISH, **kw)


# --------------------------------------------------------------- health check

def assert_broker_healthy(broker, timeout=WAIT):
    """A fresh client on every shard can connect, and a message published from
    each shard reaches a subscriber on every other shard."""
    n = broker.nshards
    clients = []
    try:
        topic = unique_topic("health")
        subs = []
        for s in range(n):
            c = rawmqtt.RawClient(broker.host, broker.port, timeout)
            clients.append(c)
            c.connect(client_id_on_shard("health-sub", s, n))
            assert c.subscribe([(topic, 1)]) == [1]
            subs.append(c)
        for s in range(n):
            p = rawmqtt.RawClient(broker.host, broker.port, timeout)
            clients.append(p)
            p.connect(client_id_on_shard("health-pub", s, n))
            p.publish(topic, b"ping-%d" % s, qos=1)
            for c in subs:
                m = c.recv_publish(timeout)
                assert m["payload"] == b"ping-%d" % s
            p.disconnect()
    finally:
        for c in clients:
            c.close()


def wait_for_log(broker, text, count=1, timeout=5):
    """Waits until the broker's log holds `text` `count` times."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if broker.log_tail(200).count(text) >= count:
            return
        time.sleep(0.05)
    raise AssertionError("no %r in the log:\n%s" % (text, broker.log_tail(30)))


def refuses_bad_file(binary, tmp_path, flag, content, line):
    """Writes `content` to a file given with `flag`: the broker must refuse to start (exit 2)
    naming the file and the line."""
    import subprocess
    path = tmp_path / "bad-file"
    path.write_text(content)
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    r = subprocess.run([str(binary), "--listen", "127.0.0.1:%d" % port,
                        "--data-dir", str(tmp_path / "d"), flag, str(path)],
                       capture_output=True, text=True, timeout=20)
    assert r.returncode == 2, r
    assert str(path) in r.stderr and "line %d" % line in r.stderr, r.stderr


def stop_all(brokers):
    """Stops every broker a test started; fails the test if one had crashed meanwhile (a
    crash is a failure even when the test's own checks passed)."""
    crashed = [b for b in brokers if not b.alive()]
    for b in brokers:
        b.stop()
    assert not crashed, "broker crashed: %s" % [b.log_tail() for b in crashed]
