"""Authorization (`--acl-file`, Mosquitto's acl_file format): every rule kind, %c/%u
patterns and injection attempts, PUBLISH (MQTT 5 0x87; 3.1.1 acknowledged and discarded),
SUBSCRIBE (0x87 / 0x80), retained messages, wills, subscriptions restored after a restart,
SIGHUP reloads under traffic, a bad file at start.

MQTT 5.0 section 5.4.2: the server authorizes what a client may publish and subscribe to;
PUBACK/PUBREC 0x87 and SUBACK 0x87 say Not authorized. 3.1.1 has no negative PUBACK; its
SUBACK says 0x80 Failure [MQTT-3.9.3-2 lists the return codes]."""

import signal
import subprocess
import time

import pytest

from conftest import RINGMQ_BIN, Broker
from helpers import refuses_bad_file, wait_for_log, unique_topic, stop_all
import rawmqtt as R

pytestmark = pytest.mark.ringmq_only

ACL = """\
# anonymous clients
topic read public/#

user alice
topic readwrite alice/#
topic deny alice/secret/#
topic write inbox
topic read retained/#

user bob
topic read alice/#
topic read inbox
topic write wills/bob

pattern write devices/%c/up
pattern read devices/%c/down
pattern readwrite users/%u/#
"""


@pytest.fixture
def acl_file(tmp_path):
    p = tmp_path / "acl"
    p.write_text(ACL)
    return p


@pytest.fixture
def acl_broker(nshards, acl_file, tmp_path):
    made = []

    def make(extra=()):
        # Usernames are trusted here (no password file); test_passwords.py covers checking them.
        b = Broker(nshards, ["--acl-file", str(acl_file), "--allow-anonymous", "true"]
                   + list(extra))
        made.append(b)
        return b

    yield make
    stop_all(made)


def client(b, cid, version=4, user=None, clean=True, **kw):
    c = R.RawClient(b.host, b.port, version=version)
    c.send(R.connect_packet(cid, version=version, username=user, clean=clean, **kw))
    rc = c.expect(R.CONNACK).connack(version)[1]
    assert rc == 0, rc
    return c


def subscribe(c, pid, topic, version=4, qos=1):
    c.send(R.subscribe_packet(pid, [(topic, qos)], version=version))
    return c.expect(R.SUBACK).suback_codes(version)


def publish(c, topic, payload, qos=1, pid=1, version=4, retain=False):
    """PUBLISH and its answer: the PUBACK/PUBREC reason (0 for 3.1.1 success)."""
    c.send(R.publish_packet(topic, payload, qos=qos, pid=pid, version=version, retain=retain))
    if qos == 0:
        return None
    ack = c.expect(R.PUBACK if qos == 1 else R.PUBREC)
    reason = ack.ack_reason() if version == 5 else 0
    if qos == 2 and reason < 0x80:
        c.send(R.ack_packet(R.PUBREL, pid, version=version))
        c.expect(R.PUBCOMP)
    return reason


def payloads(c, n=None, timeout=1.0):
    got = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and (n is None or len(got) < n):
        try:
            p = c.recv(max(0.05, deadline - time.monotonic()))
        except R.ReadTimeout:
            break
        if p.type == R.PUBLISH:
            v = getattr(c, "version", 4)
            got.append(p.publish(v)["payload"])
            if p.qos == 1:
                c.send(R.ack_packet(R.PUBACK, p.publish(v)["pid"], version=v))
    return got


@pytest.mark.parametrize("version", [4, 5])
def test_publish_needs_write_and_a_denied_one_is_refused_or_silently_dropped(
        acl_broker, version):
    b = acl_broker()
    watcher = client(b, "watch-b", user="bob")
    assert subscribe(watcher, 1, "alice/#") == [1]
    assert subscribe(watcher, 2, "inbox") == [1]
    alice = client(b, "alice-1", version=version, user="alice")
    assert publish(alice, "alice/a", b"ok1", version=version) == 0
    assert publish(alice, "inbox", b"ok2", qos=2, pid=2, version=version) == 0
    denied = 0x87 if version == 5 else 0
    # Not writable (bob/x), denied (alice/secret), read-only for her (retained/x).
    assert publish(alice, "bob/x", b"no", pid=3, version=version) == denied
    assert publish(alice, "alice/secret/k", b"no", pid=4, version=version) == denied
    assert publish(alice, "retained/x", b"no", qos=2, pid=5, version=version) == denied
    publish(alice, "alice/secret/q0", b"no", qos=0, version=version)
    assert publish(alice, "alice/b", b"ok3", pid=6, version=version) == 0
    assert payloads(watcher, 3) == [b"ok1", b"ok2", b"ok3"]
    assert payloads(watcher, timeout=0.3) == []


@pytest.mark.parametrize("version", [4, 5])
def test_subscribe_needs_read_over_the_whole_filter(acl_broker, version):
    b = acl_broker()
    alice = client(b, "alice-s", version=version, user="alice")
    no = 0x87 if version == 5 else 0x80
    assert subscribe(alice, 1, "alice/#", version) == [1]
    assert subscribe(alice, 2, "#", version) == [no]
    assert subscribe(alice, 3, "alice/secret/#", version) == [no]
    assert subscribe(alice, 4, "inbox", version) == [no], "write-only"
    assert subscribe(alice, 5, "$share/g/alice/+/x", version) == [1]
    assert subscribe(alice, 6, "$share/g/bob/#", version) == [no]
    # Allowed as a whole, denied in part: the denied part is filtered per message.
    other = client(b, "alice-p", user="alice")
    publish(other, "alice/secret/s", b"hidden")
    publish(other, "alice/open", b"shown")
    assert payloads(alice, 1) == [b"shown"]


def test_patterns_substitute_client_id_and_username_and_resist_injection(acl_broker):
    b = acl_broker()
    dev = client(b, "dev7", user="carol")
    assert subscribe(dev, 1, "devices/dev7/down") == [1]
    assert subscribe(dev, 2, "devices/dev8/down") == [0x80]
    assert subscribe(dev, 3, "devices/+/down") == [0x80]
    assert subscribe(dev, 4, "users/carol/#") == [1]
    assert subscribe(dev, 5, "users/dave/#") == [0x80]
    reader = client(b, "reader", user="carol")
    assert subscribe(reader, 1, "users/carol/#") == [1]
    # Wildcards or a slash in the client id or username never satisfy a pattern.
    for cid in ("+", "#", "a/b", "x+y"):
        evil = client(b, cid, version=5, user="x")
        # 0x8F where the id makes the filter invalid ("#" inside it).
        assert subscribe(evil, 1, "devices/%s/down" % cid, 5)[0] in (0x87, 0x8F), cid
        if "/" in cid:  # a topic name cannot hold wildcards at all
            assert publish(evil, "devices/%s/up" % cid, b"x", version=5) == 0x87, cid
        assert subscribe(evil, 2, "users/x/#", 5) == [1], "its username is harmless"
        evil.close()
    for user in ("+", "#", "c/d"):
        evil = client(b, "ok-" + str(len(user)), version=5, user=user)
        assert subscribe(evil, 1, "users/%s/#" % user, 5)[0] in (0x87, 0x8F), user
        if "/" in user:
            assert publish(evil, "users/%s/x" % user, b"x", version=5) == 0x87, user
        evil.close()
    publish(dev, "users/carol/n", b"mine")
    assert payloads(reader, 1) == [b"mine"]


def test_anonymous_rules_apply_only_without_a_username(acl_broker):
    b = acl_broker()
    anon = client(b, "anon")
    assert subscribe(anon, 1, "public/#") == [1]
    assert subscribe(anon, 2, "alice/#") == [0x80]
    alice = client(b, "alice-a", user="alice")
    assert subscribe(alice, 1, "public/#") == [0x80]


def test_retained_messages_are_delivered_only_where_readable(acl_broker):
    b = acl_broker()
    alice = client(b, "alice-r", user="alice")
    publish(alice, "alice/keep", b"r1", retain=True)
    publish(alice, "alice/secret/keep", b"r2", retain=True)
    bob = client(b, "bob-r", user="bob")
    assert subscribe(bob, 1, "alice/#") == [1]
    assert payloads(bob, 1) == [b"r1"]
    # alice may read alice/#, but not the denied part, retained or not.
    a2 = client(b, "alice-r2", user="alice")
    assert subscribe(a2, 1, "alice/#") == [1]
    assert payloads(a2, timeout=0.5) == [b"r1"]


@pytest.mark.parametrize("version", [4, 5])
def test_a_will_the_client_may_not_publish_is_refused_at_connect(acl_broker, version):
    b = acl_broker()
    c = R.RawClient(b.host, b.port, version=version)
    c.send(R.connect_packet("bob-w", version=version, username="bob", will_topic="alice/x",
                            will_payload=b"w"))
    assert c.expect(R.CONNACK).connack(version)[1] == (0x87 if version == 5 else 5)
    c.close()
    sub = client(b, "alice-w", user="alice")
    assert subscribe(sub, 1, "alice/#") == [1]
    ok = client(b, "bob-w2", user="bob", will_topic="wills/bob", will_payload=b"bye")
    ok.close()


def test_restored_subscriptions_keep_their_username_and_rules_after_a_restart(acl_broker):
    b = acl_broker()
    bob = client(b, "bob-p", user="bob", clean=False)
    assert subscribe(bob, 1, "alice/#") == [1]
    bob.close()
    b.restart()
    alice = client(b, "alice-p2", user="alice")
    publish(alice, "alice/while-away", b"queued")
    bob = client(b, "bob-p", user="bob", clean=False)
    assert payloads(bob, 1, timeout=3) == [b"queued"]


def test_sighup_reloads_the_rules_for_existing_subscriptions_and_keeps_them_on_a_bad_file(
        acl_broker, acl_file):
    b = acl_broker()
    bob = client(b, "bob-h", user="bob")
    assert subscribe(bob, 1, "alice/#") == [1]
    alice = client(b, "alice-h", user="alice")
    publish(alice, "alice/1", b"before")
    assert payloads(bob, 1) == [b"before"]
    # bob loses read on alice/#: his existing subscription stops getting messages.
    acl_file.write_text(ACL.replace("topic read alice/#\n", ""))
    b.proc.send_signal(signal.SIGHUP)
    wait_for_log(b, "ACL file reloaded")
    time.sleep(0.6)  # every shard takes the rules at its next tick (250 ms)
    publish(alice, "alice/2", b"after")
    assert payloads(bob, timeout=0.5) == []
    # A broken file keeps the rules in force, and says where it is broken.
    acl_file.write_text(ACL + "topic read a/#/b\n")
    b.proc.send_signal(signal.SIGHUP)
    wait_for_log(b, "did not load")
    assert "line 18" in b.log_tail(20), b.log_tail(20)
    publish(alice, "alice/3", b"x")
    assert payloads(bob, timeout=0.5) == []
    assert publish(alice, "alice/4", b"y", version=4) == 0


@pytest.mark.parametrize("content, line", [
    ("user alice\ntopic read a/#/b\n", 2),
    ("topic\n", 1),
    ("\n\nallow all\n", 3),
])
def test_a_bad_acl_file_stops_the_start_naming_the_file_and_line(tmp_path, content, line):
    refuses_bad_file(RINGMQ_BIN, tmp_path, "--acl-file", content, line)


def test_mosquitto_clients_with_passwords_and_acl(tmp_path, acl_file):
    pw = tmp_path / "pw"
    subprocess.run(["mosquitto_passwd", "-c", "-b", str(pw), "alice", "s1"], check=True)
    subprocess.run(["mosquitto_passwd", "-b", str(pw), "bob", "s2"], check=True)
    b = Broker(1, ["--acl-file", str(acl_file), "--password-file", str(pw)])
    try:
        topic = "alice/" + unique_topic("cli")
        sub = subprocess.Popen(["mosquitto_sub", "-p", str(b.port), "-u", "bob", "-P", "s2",
                                "-t", "alice/#", "-C", "1", "-q", "1"],
                               stdout=subprocess.PIPE, text=True)
        time.sleep(0.5)
        base = ["mosquitto_pub", "-p", str(b.port), "-q", "1"]
        # bob may not write there: acknowledged (3.1.1) and discarded.
        r = subprocess.run(base + ["-u", "bob", "-P", "s2", "-t", topic, "-m", "from-bob"],
                           capture_output=True, text=True, timeout=10)
        assert r.returncode == 0, r.stderr
        r = subprocess.run(base + ["-u", "alice", "-P", "s1", "-t", topic, "-m", "from-alice"],
                           capture_output=True, text=True, timeout=10)
        assert r.returncode == 0, r.stderr
        out, _ = sub.communicate(timeout=5)
        assert out.strip() == "from-alice"
        # MQTT 5 hears why.
        r = subprocess.run(base + ["-V", "mqttv5", "-u", "bob", "-P", "s2", "-t", topic,
                                   "-m", "x"], capture_output=True, text=True, timeout=10)
        assert "not authori" in (r.stderr + r.stdout).lower(), r.stderr + r.stdout
    finally:
        b.stop()


def test_a_will_is_checked_again_when_it_is_published(nshards, acl_file, tmp_path):
    """bob may publish his will at CONNECT; after a reload takes that away, his connection
    ends without DISCONNECT and the will is not published."""
    acl_file.write_text(ACL + "\nuser watcher\ntopic read wills/#\n")
    b = Broker(nshards, ["--acl-file", str(acl_file), "--allow-anonymous", "true"])
    try:
        watcher = client(b, "watcher-1", user="watcher")
        assert subscribe(watcher, 1, "wills/#") == [1]
        bob = client(b, "bob-will", user="bob", will_topic="wills/bob", will_payload=b"w1",
                     will_qos=1)
        bob.close()
        assert payloads(watcher, 1, timeout=3) == [b"w1"]
        bob = client(b, "bob-will", user="bob", will_topic="wills/bob", will_payload=b"w2",
                     will_qos=1)
        acl_file.write_text(ACL.replace("topic write wills/bob\n", "")
                            + "\nuser watcher\ntopic read wills/#\n")
        b.proc.send_signal(signal.SIGHUP)
        wait_for_log(b, "ACL file reloaded")
        time.sleep(0.6)  # every shard takes the rules at its next tick
        bob.close()
        assert payloads(watcher, timeout=1.0) == []
        assert b.alive()
    finally:
        b.stop()


def test_a_shared_subscription_member_the_acl_denies_passes_the_message_on(nshards, acl_file,
                                                                           tmp_path):
    """Two members of one shared subscription; the ACL keeps dave from reading team/secret/#
    (his read rule covers the filter, a deny rule carves that out). Every message of that
    topic goes to carol, none is lost on dave's turn [MQTT-4.8.2-5: each message to one member]."""
    acl_file.write_text(ACL + "\nuser carol\ntopic read team/#\n"
                        "\nuser dave\ntopic read team/#\ntopic deny team/secret/#\n"
                        "\nuser boss\ntopic write team/#\n")
    b = Broker(nshards, ["--acl-file", str(acl_file), "--allow-anonymous", "true"])
    try:
        carol = client(b, "carol-1", user="carol")
        dave = client(b, "dave-1", user="dave")
        assert subscribe(carol, 1, "$share/g/team/#") == [1]
        assert subscribe(dave, 1, "$share/g/team/#") == [1]
        boss = client(b, "boss-1", user="boss")
        for i in range(10):
            assert publish(boss, "team/secret/plan", b"s%d" % i, pid=i + 1) == 0
        for i in range(10):
            assert publish(boss, "team/news", b"n%d" % i, pid=i + 11) == 0
        got_carol = payloads(carol, timeout=2.0)
        got_dave = payloads(dave, timeout=0.5)
        assert sorted(p for p in got_carol if p.startswith(b"s")) == \
            sorted(b"s%d" % i for i in range(10)), got_carol
        assert not [p for p in got_dave if p.startswith(b"s")], got_dave
        # The news is shared between the two, each message once.
        news = sorted(p for p in got_carol + got_dave if p.startswith(b"n"))
        assert news == sorted(b"n%d" % i for i in range(10)), (got_carol, got_dave)
        assert b.alive()
    finally:
        b.stop()
