"""Hand-rolled MQTT 3.1 / 3.1.1 / 5.0 packet encoder/decoder over a raw socket.

Used for exact-byte and bad-input tests that real client libraries refuse to
produce.  Every read is bounded by a timeout; a closed connection is reported
as ``ConnectionClosed`` (recv returned b'' or the peer reset the socket).
"""

import socket
import struct
import time

# Packet types
CONNECT = 1
CONNACK = 2
PUBLISH = 3
PUBACK = 4
PUBREC = 5
PUBREL = 6
PUBCOMP = 7
SUBSCRIBE = 8
SUBACK = 9
UNSUBSCRIBE = 10
UNSUBACK = 11
PINGREQ = 12
PINGRESP = 13
DISCONNECT = 14
AUTH = 15

PACKET_NAMES = {
    1: "CONNECT", 2: "CONNACK", 3: "PUBLISH", 4: "PUBACK", 5: "PUBREC",
    6: "PUBREL", 7: "PUBCOMP", 8: "SUBSCRIBE", 9: "SUBACK", 10: "UNSUBSCRIBE",
    11: "UNSUBACK", 12: "PINGREQ", 13: "PINGRESP", 14: "DISCONNECT", 15: "AUTH",
}

# v5 property identifiers -> (name, type)
PROP_BYTE, PROP_U16, PROP_U32, PROP_VARINT, PROP_STR, PROP_BIN, PROP_PAIR = range(7)
PROPS = {
    0x01: ("payload_format_indicator", PROP_BYTE),
    0x02: ("message_expiry_interval", PROP_U32),
    0x03: ("content_type", PROP_STR),
    0x08: ("response_topic", PROP_STR),
    0x09: ("correlation_data", PROP_BIN),
    0x0B: ("subscription_identifier", PROP_VARINT),
    0x11: ("session_expiry_interval", PROP_U32),
    0x12: ("assigned_client_identifier", PROP_STR),
    0x13: ("server_keep_alive", PROP_U16),
    0x15: ("authentication_method", PROP_STR),
    0x16: ("authentication_data", PROP_BIN),
    0x17: ("request_problem_information", PROP_BYTE),
    0x18: ("will_delay_interval", PROP_U32),
    0x19: ("request_response_information", PROP_BYTE),
    0x1A: ("response_information", PROP_STR),
    0x1C: ("server_reference", PROP_STR),
    0x1F: ("reason_string", PROP_STR),
    0x21: ("receive_maximum", PROP_U16),
    0x22: ("topic_alias_maximum", PROP_U16),
    0x23: ("topic_alias", PROP_U16),
    0x24: ("maximum_qos", PROP_BYTE),
    0x25: ("retain_available", PROP_BYTE),
    0x26: ("user_property", PROP_PAIR),
    0x27: ("maximum_packet_size", PROP_U32),
    0x28: ("wildcard_subscription_available", PROP_BYTE),
    0x29: ("subscription_identifier_available", PROP_BYTE),
    0x2A: ("shared_subscription_available", PROP_BYTE),
}
PROP_IDS = {name: (pid, typ) for pid, (name, typ) in PROPS.items()}


class ConnectionClosed(Exception):
    """The peer closed (or reset) the connection."""


class ReadTimeout(Exception):
    """No complete packet arrived within the timeout."""


class ExpectTimeout(ReadTimeout, AssertionError):
    """expect() gave up waiting (an AssertionError so tests fail, not error)."""


# ----------------------------------------------------------------- encoding

def varint(n):
    if n < 0 or n > 268435455:
        raise ValueError(n)
    out = bytearray()
    while True:
        b = n % 128
        n //= 128
        if n:
            b |= 0x80
        out.append(b)
        if not n:
            return bytes(out)


def u16(n):
    return struct.pack("!H", n)


def u32(n):
    return struct.pack("!I", n)


def ustr(s):
    b = s.encode("utf-8") if isinstance(s, str) else bytes(s)
    return u16(len(b)) + b


def props(d=None, raw=b""):
    """Encode a v5 property block from {name: value}; user_property takes a list of pairs."""
    body = bytearray()
    for name, value in (d or {}).items():
        pid, typ = PROP_IDS[name]
        values = value if typ == PROP_PAIR or (name == "subscription_identifier" and isinstance(value, list)) else [value]
        for v in values:
            body.append(pid)
            if typ == PROP_BYTE:
                body.append(v)
            elif typ == PROP_U16:
                body += u16(v)
            elif typ == PROP_U32:
                body += u32(v)
            elif typ == PROP_VARINT:
                body += varint(v)
            elif typ == PROP_STR:
                body += ustr(v)
            elif typ == PROP_BIN:
                body += u16(len(v)) + bytes(v)
            elif typ == PROP_PAIR:
                body += ustr(v[0]) + ustr(v[1])
    body += raw
    return varint(len(body)) + bytes(body)


def packet(ptype, flags, body):
    return bytes([(ptype << 4) | (flags & 0x0F)]) + varint(len(body)) + bytes(body)


def connect_packet(client_id="", version=4, clean=True, keepalive=60,
                   will_topic=None, will_payload=b"", will_qos=0, will_retain=False,
                   will_props=None, username=None, password=None,
                   properties=None, protocol_name=None, reserved_flag=False):
    if protocol_name is None:
        protocol_name = "MQIsdp" if version == 3 else "MQTT"
    flags = 0
    if reserved_flag:
        flags |= 0x01
    if clean:
        flags |= 0x02
    if will_topic is not None:
        flags |= 0x04 | (will_qos << 3)
        if will_retain:
            flags |= 0x20
    if password is not None:
        flags |= 0x40
    if username is not None:
        flags |= 0x80
    body = ustr(protocol_name) + bytes([version, flags]) + u16(keepalive)
    if version == 5:
        body += props(properties)
    body += ustr(client_id)
    if will_topic is not None:
        if version == 5:
            body += props(will_props)
        body += ustr(will_topic)
        wp = will_payload.encode() if isinstance(will_payload, str) else will_payload
        body += u16(len(wp)) + wp
    if username is not None:
        body += ustr(username)
    if password is not None:
        pw = password.encode() if isinstance(password, str) else password
        body += u16(len(pw)) + pw
    return packet(CONNECT, 0, body)


def publish_packet(topic, payload=b"", qos=0, retain=False, dup=False, pid=None,
                   version=4, properties=None, raw_topic=None):
    flags = (qos << 1) | (1 if retain else 0) | (0x08 if dup else 0)
    body = u16(len(raw_topic)) + raw_topic if raw_topic is not None else ustr(topic)
    if qos > 0:
        body += u16(pid if pid is not None else 1)
    if version == 5:
        body += props(properties)
    body += payload.encode() if isinstance(payload, str) else payload
    return packet(PUBLISH, flags, body)


def ack_packet(ptype, pid, version=4, reason=None, properties=None):
    """PUBACK/PUBREC/PUBREL/PUBCOMP (PUBREL gets its mandatory flags 0b0010)."""
    flags = 0x02 if ptype == PUBREL else 0
    body = u16(pid)
    if version == 5 and (reason is not None or properties):
        body += bytes([reason or 0])
        if properties:
            body += props(properties)
    return packet(ptype, flags, body)


def subscribe_packet(pid, filters, version=4, properties=None, flags=0x02):
    """filters: list of (filter, options) where options is the QoS (v3) or the
    full v5 subscription options byte."""
    body = u16(pid)
    if version == 5:
        body += props(properties)
    for f, opts in filters:
        body += ustr(f) + bytes([opts])
    return packet(SUBSCRIBE, flags, body)


def unsubscribe_packet(pid, filters, version=4, properties=None):
    body = u16(pid)
    if version == 5:
        body += props(properties)
    for f in filters:
        body += ustr(f)
    return packet(UNSUBSCRIBE, 0x02, body)


def pingreq_packet():
    return b"\xc0\x00"


def disconnect_packet(version=4, reason=None, properties=None):
    if version == 5 and (reason is not None or properties):
        body = bytes([reason or 0])
        if properties:
            body += props(properties)
        return packet(DISCONNECT, 0, body)
    return b"\xe0\x00"


# ----------------------------------------------------------------- decoding

def decode_varint(buf, pos):
    mult, value = 1, 0
    for i in range(4):
        if pos >= len(buf):
            raise ValueError("truncated varint")
        b = buf[pos]
        pos += 1
        value += (b & 0x7F) * mult
        if not b & 0x80:
            return value, pos
        mult *= 128
    raise ValueError("varint too long")


def decode_props(buf, pos):
    """Return (dict, newpos).  Repeatable properties (user_property,
    subscription_identifier) are collected in lists."""
    length, pos = decode_varint(buf, pos)
    end = pos + length
    out = {}
    while pos < end:
        pid = buf[pos]
        pos += 1
        name, typ = PROPS.get(pid, ("unknown_%#x" % pid, None))
        if typ == PROP_BYTE:
            v = buf[pos]; pos += 1
        elif typ == PROP_U16:
            v = struct.unpack_from("!H", buf, pos)[0]; pos += 2
        elif typ == PROP_U32:
            v = struct.unpack_from("!I", buf, pos)[0]; pos += 4
        elif typ == PROP_VARINT:
            v, pos = decode_varint(buf, pos)
        elif typ in (PROP_STR, PROP_BIN):
            n = struct.unpack_from("!H", buf, pos)[0]
            v = bytes(buf[pos + 2:pos + 2 + n]); pos += 2 + n
            if typ == PROP_STR:
                v = v.decode("utf-8")
        elif typ == PROP_PAIR:
            n = struct.unpack_from("!H", buf, pos)[0]
            k = bytes(buf[pos + 2:pos + 2 + n]).decode(); pos += 2 + n
            n = struct.unpack_from("!H", buf, pos)[0]
            val = bytes(buf[pos + 2:pos + 2 + n]).decode(); pos += 2 + n
            v = (k, val)
        else:
            raise ValueError("unknown property id %#x" % pid)
        if name in ("user_property", "subscription_identifier"):
            out.setdefault(name, []).append(v)
        else:
            if name in out:
                raise ValueError("duplicate property %s" % name)
            out[name] = v
    if pos != end:
        raise ValueError("property block overrun")
    return out, pos


class Packet:
    def __init__(self, ptype, flags, body):
        self.type = ptype
        self.flags = flags
        self.body = bytes(body)

    @property
    def name(self):
        return PACKET_NAMES.get(self.type, str(self.type))

    def __repr__(self):
        return "<%s flags=%#x body=%r>" % (self.name, self.flags, self.body[:64])

    # PUBLISH helpers ------------------------------------------------------
    @property
    def qos(self):
        return (self.flags >> 1) & 3

    @property
    def retain(self):
        return bool(self.flags & 1)

    @property
    def dup(self):
        return bool(self.flags & 8)

    def publish(self, version=4):
        """Decode a PUBLISH: returns dict(topic, pid, qos, retain, dup, props, payload)."""
        assert self.type == PUBLISH, self
        b = self.body
        n = struct.unpack_from("!H", b, 0)[0]
        topic = b[2:2 + n].decode("utf-8")
        pos = 2 + n
        pid = None
        if self.qos:
            pid = struct.unpack_from("!H", b, pos)[0]
            pos += 2
        p = {}
        if version == 5:
            p, pos = decode_props(b, pos)
        return dict(topic=topic, pid=pid, qos=self.qos, retain=self.retain,
                    dup=self.dup, props=p, payload=b[pos:])

    @property
    def pid(self):
        """Packet id of an ack / SUBACK / UNSUBACK."""
        return struct.unpack_from("!H", self.body, 0)[0]

    def ack_reason(self):
        """v5 PUBACK/PUBREC/PUBREL/PUBCOMP reason code (0 when omitted)."""
        return self.body[2] if len(self.body) > 2 else 0

    def connack(self, version=4):
        """Returns (session_present, return/reason code, props)."""
        assert self.type == CONNACK, self
        sp = bool(self.body[0] & 1)
        rc = self.body[1]
        p = {}
        if version == 5 and len(self.body) > 2:
            p, _ = decode_props(self.body, 2)
        return sp, rc, p

    def suback_codes(self, version=4):
        pos = 2
        if version == 5:
            _, pos = decode_props(self.body, pos)
        return list(self.body[pos:])

    def disconnect_reason(self):
        return self.body[0] if self.body else 0


# ----------------------------------------------------------------- client

class RawClient:
    def __init__(self, host, port, timeout=5.0, version=4, tls=None,
                 server_hostname="localhost"):
        """``tls``: an ``ssl.SSLContext`` to speak MQTT over TLS with."""
        self.host, self.port = host, port
        self.version = version
        self.sock = socket.create_connection((host, port), timeout=timeout)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if tls is not None:
            self.sock = tls.wrap_socket(self.sock, server_hostname=server_hostname)
        self.buf = bytearray()
        self.pending = []
        self.closed = False
        self.next_pid = 1

    # -- io
    def send(self, data):
        self.sock.sendall(data)

    def try_send(self, data):
        """Send, swallowing errors caused by the peer having closed already."""
        try:
            self.sock.sendall(data)
            return True
        except OSError:
            return False

    def _fill(self, deadline):
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise ReadTimeout()
        self.sock.settimeout(remaining)
        try:
            data = self.sock.recv(65536)
        except socket.timeout:
            raise ReadTimeout()
        except (ConnectionResetError, ConnectionAbortedError, BrokenPipeError):
            self.closed = True
            raise ConnectionClosed()
        if not data:
            self.closed = True
            raise ConnectionClosed()
        self.buf += data

    def _try_parse(self):
        if len(self.buf) < 2:
            return None
        mult, length, pos = 1, 0, 1
        while True:
            if pos >= len(self.buf):
                return None
            b = self.buf[pos]
            pos += 1
            length += (b & 0x7F) * mult
            if not b & 0x80:
                break
            mult *= 128
            if pos > 4:
                raise ValueError("server sent malformed remaining length")
        if len(self.buf) < pos + length:
            return None
        hdr = self.buf[0]
        body = bytes(self.buf[pos:pos + length])
        del self.buf[:pos + length]
        return Packet(hdr >> 4, hdr & 0x0F, body)

    def recv(self, timeout=5.0):
        """Next packet (stashed ones first); raises ReadTimeout or ConnectionClosed."""
        if self.pending:
            return self.pending.pop(0)
        return self._recv_new(timeout)

    def _recv_new(self, timeout):
        deadline = time.monotonic() + timeout
        while True:
            p = self._try_parse()
            if p is not None:
                return p
            if self.closed:
                raise ConnectionClosed()
            self._fill(deadline)

    def expect(self, ptype, timeout=5.0, pid=None):
        """Next packet of type ``ptype`` (and packet id ``pid`` if given).  Packets of
        other types that arrive meanwhile (e.g. a PUBLISH racing a PUBACK) are stashed
        and returned by later recv()/expect() calls, in order."""
        for i, p in enumerate(self.pending):
            if p.type == ptype and (pid is None or p.pid == pid):
                return self.pending.pop(i)
        deadline = time.monotonic() + timeout
        while True:
            try:
                p = self._recv_new(max(0.0, deadline - time.monotonic()))
            except ReadTimeout:
                raise ExpectTimeout("expected %s within %.1fs, got only %r"
                                     % (PACKET_NAMES[ptype], timeout, self.pending))
            if p.type == ptype and (pid is None or p.pid == pid):
                return p
            self.pending.append(p)

    def expect_nothing(self, timeout=0.5):
        """Assert no packet arrives (and the connection stays open) within timeout."""
        assert not self.pending, "unexpected packets %r" % self.pending
        try:
            p = self.recv(timeout)
        except ReadTimeout:
            return
        raise AssertionError("unexpected packet %r" % p)

    def expect_closed(self, timeout=5.0):
        """Wait for the server to close the connection; return the packets
        received before the close.  Fails if the connection is still open
        at the deadline."""
        deadline = time.monotonic() + timeout
        got = []
        while True:
            try:
                got.append(self.recv(max(0.0, deadline - time.monotonic())))
            except ConnectionClosed:
                return got
            except ReadTimeout:
                raise AssertionError("connection not closed within %.1fs (got %r)" % (timeout, got))

    def close(self):
        try:
            self.sock.close()
        except OSError:
            pass
        self.closed = True

    def abort(self):
        """Close with RST (no FIN handshake semantics needed, just 'abnormal')."""
        try:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        except OSError:
            pass
        self.close()

    # -- protocol helpers
    def pid(self):
        p = self.next_pid
        self.next_pid = self.next_pid % 65535 + 1
        return p

    def connect(self, client_id, clean=True, keepalive=60, timeout=5.0, expect_rc=0, **kw):
        """Send CONNECT and read CONNACK; returns (session_present, rc, props)."""
        self.send(connect_packet(client_id, version=self.version, clean=clean,
                                 keepalive=keepalive, **kw))
        p = self.recv(timeout)
        assert p.type == CONNACK, "first packet from server must be CONNACK [MQTT-3.2.0-1], got %r" % p
        res = p.connack(self.version)
        if expect_rc is not None:
            assert res[1] == expect_rc, "CONNACK rc %#x, expected %#x" % (res[1], expect_rc)
        return res

    def subscribe(self, filters, timeout=5.0, properties=None):
        """filters: list of (filter, qos/options) or a single filter string (QoS 0)."""
        if isinstance(filters, str):
            filters = [(filters, 0)]
        pid = self.pid()
        self.send(subscribe_packet(pid, filters, self.version, properties))
        p = self.expect(SUBACK, timeout)
        assert p.pid == pid, "SUBACK pid %d != %d" % (p.pid, pid)
        return p.suback_codes(self.version)

    def unsubscribe(self, filters, timeout=5.0):
        pid = self.pid()
        self.send(unsubscribe_packet(pid, filters, self.version))
        p = self.expect(UNSUBACK, timeout)
        assert p.pid == pid
        return p

    def publish(self, topic, payload=b"", qos=0, retain=False, pid=None, timeout=5.0,
                properties=None, complete=True):
        """Publish; with complete=True runs the QoS 1/2 handshake to completion.
        Returns the packet id used (or None for QoS 0) and the final ack packet."""
        if qos and pid is None:
            pid = self.pid()
        self.send(publish_packet(topic, payload, qos, retain, pid=pid,
                                 version=self.version, properties=properties))
        ack = None
        if qos == 1 and complete:
            ack = self.expect(PUBACK, timeout, pid=pid)
        elif qos == 2 and complete:
            self.expect(PUBREC, timeout, pid=pid)
            self.send(ack_packet(PUBREL, pid, self.version))
            ack = self.expect(PUBCOMP, timeout, pid=pid)
        return pid, ack

    def recv_publish(self, timeout=5.0, ack=True):
        """Receive one PUBLISH; acknowledges it (QoS1 PUBACK, QoS2 full flow) when ack=True."""
        p = self.expect(PUBLISH, timeout)
        m = p.publish(self.version)
        if ack:
            self.ack_publish(m, timeout)
        return m

    def ack_publish(self, m, timeout=5.0):
        if m["qos"] == 1:
            self.send(ack_packet(PUBACK, m["pid"], self.version))
        elif m["qos"] == 2:
            self.send(ack_packet(PUBREC, m["pid"], self.version))
            rel = self.expect(PUBREL, timeout, pid=m["pid"])
            assert rel.flags == 0x02, "PUBREL flags must be 0b0010 [MQTT-3.6.1-1]"
            self.send(ack_packet(PUBCOMP, m["pid"], self.version))

    def ping(self, timeout=5.0):
        self.send(pingreq_packet())
        self.expect(PINGRESP, timeout)

    def disconnect(self, reason=None, properties=None):
        self.try_send(disconnect_packet(self.version, reason, properties))
        self.close()

    def __enter__(self):
        return self

    def __exit__(self, *a):
        self.close()
