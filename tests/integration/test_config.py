"""Configuration layers of the ringmq binary: TOML file (--config) < environment
(RINGMQ_<KEY>) < flags, --print-config, and rejection of invalid values (exit 2,
"ringmq: ..." naming the key).  Runs the real binary; ringmq only (mosquitto has no
such CLI)."""

import os
import signal
import socket
import subprocess
import time

import pytest

import rawmqtt as R
from conftest import RINGMQ_BIN, free_port

pytestmark = pytest.mark.ringmq_only


def run(args, env=None, timeout=10):
    """Run ringmq to completion (only for invocations that exit on their own)."""
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("RINGMQ_")}
    full_env.update(env or {})
    return subprocess.run([str(RINGMQ_BIN)] + list(args), env=full_env, capture_output=True,
                          text=True, timeout=timeout, stdin=subprocess.DEVNULL)


def parse_toml(text):
    try:
        import tomllib
    except ImportError:  # Python < 3.11
        import tomli as tomllib
    return tomllib.loads(text)


def print_config(args=(), env=None):
    r = run(["--print-config"] + list(args), env)
    assert r.returncode == 0, r
    return r.stdout


def test_print_config_precedence(tmp_path):
    cfg = tmp_path / "ringmq.toml"
    cfg.write_text('max_inflight = 10\nmax_queued_messages = 11\nspin_us = 12\n'
                   'listen = ["127.0.0.1:1001"]\n')
    out = print_config(["--config", str(cfg), "--max-inflight", "30"],
                       {"RINGMQ_MAX_INFLIGHT": "20", "RINGMQ_MAX_QUEUED_MESSAGES": "21",
                        "RINGMQ_LISTEN": "127.0.0.1:2001,127.0.0.1:2002"})
    c = parse_toml(out)
    assert c["max_inflight"] == 30          # flag beats env and file
    assert c["max_queued_messages"] == 21   # env beats file
    assert c["spin_us"] == 12               # file beats default
    assert c["connect_timeout"] == 10       # default
    assert c["listen"] == ["127.0.0.1:2001", "127.0.0.1:2002"]


def test_print_config_round_trip(tmp_path):
    first = print_config(["--max-inflight", "7", "--listen", "127.0.0.1:1", "--listen", "[::1]:2",
                          "--log-format", "json"])
    keys = [line.split(" = ")[0] for line in first.splitlines() if line and not line.startswith("#")]
    assert keys[0] == "listen" and "max_inflight" in keys and "log_format" in keys
    defaults = [line.split(" = ")[0] for line in print_config([]).splitlines()
                if line and not line.startswith("#")]
    # Every setting once, in the same order whatever is given.
    assert keys == defaults and len(keys) == len(set(keys))
    cfg = tmp_path / "printed.toml"
    cfg.write_text(first)
    assert print_config(["--config", str(cfg)]) == first


@pytest.mark.parametrize("layer", ["flag", "env", "file"])
@pytest.mark.parametrize("key,value", [
    ("max_inflight", "0"),
    ("max_packet_size", "63"),
    ("connect_timeout", "3601"),
    ("ring_depth", "1000"),
    ("shards", "257"),
    ("max_keep_alive", "0"),
    ("log_format", "xml"),
])
def test_invalid_value_rejected(tmp_path, layer, key, value):
    args, env = [], {}
    if layer == "flag":
        args = ["--" + key.replace("_", "-"), value]
    elif layer == "env":
        env = {"RINGMQ_" + key.upper(): value}
    else:
        cfg = tmp_path / "bad.toml"
        cfg.write_text("%s = %s\n" % (key, value if value.isdigit() else '"%s"' % value))
        args = ["--config", str(cfg)]
    # no --print-config: the broker must refuse to start
    r = run(args + ["--listen", "127.0.0.1:%d" % free_port(), "--data-dir", str(tmp_path / "d")], env)
    assert r.returncode == 2, r
    assert r.stderr.startswith("ringmq: "), r.stderr
    assert key in r.stderr, r.stderr
    assert value in r.stderr, r.stderr


def test_same_message_for_flag_and_file(tmp_path):
    cfg = tmp_path / "bad.toml"
    cfg.write_text("max_inflight = 0\n")
    a = run(["--print-config", "--config", str(cfg)]).stderr
    b = run(["--print-config", "--max-inflight", "0"]).stderr
    expected = ": expected an integer from 1 to 65535"
    assert a.strip().endswith(expected) and b.strip().endswith(expected), (a, b)


def test_unknown_key_and_type_error(tmp_path):
    cfg = tmp_path / "bad.toml"
    cfg.write_text("max_inflght = 5\n")
    r = run(["--print-config", "--config", str(cfg)])
    assert r.returncode == 2 and r.stderr.startswith("ringmq: "), r
    assert '"max_inflght"' in r.stderr and "max_inflight" in r.stderr, r.stderr
    cfg.write_text('max_inflight = "many"\n')
    r = run(["--print-config", "--config", str(cfg)])
    assert r.returncode == 2 and r.stderr.startswith("ringmq: "), r
    assert "max_inflight" in r.stderr and '"many"' in r.stderr and "integer" in r.stderr, r.stderr
    r = run(["--print-config", "--config", str(tmp_path / "missing.toml")])
    assert r.returncode == 2 and r.stderr.startswith("ringmq: "), r


def test_broker_started_from_config_file(tmp_path):
    port = free_port()
    cfg = tmp_path / "ringmq.toml"
    cfg.write_text('listen = ["127.0.0.1:%d"]\nmax_inflight = 7\nshards = 1\nmetrics_addr = "none"\ndata_dir = "%s"\n'
                   % (port, tmp_path / "data"))
    env = {k: v for k, v in os.environ.items() if not k.startswith("RINGMQ_")}
    log = open(tmp_path / "broker.log", "wb")
    proc = subprocess.Popen([str(RINGMQ_BIN), "--config", str(cfg)], env=env, stdout=log,
                            stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.monotonic() + 10
        while True:
            assert proc.poll() is None, (tmp_path / "broker.log").read_text()
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                break
            except OSError:
                assert time.monotonic() < deadline, "broker did not start"
                time.sleep(0.02)
        c = R.RawClient("127.0.0.1", port, version=5)
        try:
            c.send(R.connect_packet("cfg-test", version=5))
            _, rc, props = c.expect(R.CONNACK).connack(version=5)
            assert rc == 0
            assert props.get("receive_maximum") == 7, props
        finally:
            c.close()
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
        log.close()
