#!/usr/bin/env python3
"""Side-by-side benchmark harness: ringmq vs Mosquitto on the same machine.

Python 3.11 standard library only.  See bench/README.md for the how and why.

For every scenario and every repeat it starts a fresh broker process (pinned
to one CPU), waits for its port, runs ringmq-loadgen (pinned to another CPU)
with a hard timeout, samples broker and loadgen CPU/RSS from /proc while the
run lasts, stops the broker (SIGTERM, SIGKILL after 5 s) and keeps every JSON,
plot and log.  Repeats alternate the brokers (A B A B ...) so slow drifts of a
shared machine hit both; the report quotes medians and the ratio of medians.

Typical use:
    python3 bench/run.py                      # full matrix, 3 repeats
    python3 bench/run.py --quick              # smoke test: 3 s runs, 1 repeat, small fleets
    python3 bench/run.py --scenarios idle,pairs --brokers mosquitto
    python3 bench/run.py --self-test          # checks broker start/stop, /proc sampling, report
"""

from __future__ import annotations

import argparse
import atexit
import datetime as _dt
import json
import os
import re
import shlex
import shutil
import signal
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
BENCH = REPO / "bench"
CLK_TCK = os.sysconf("SC_CLK_TCK")
PAGE_KB = os.sysconf("SC_PAGE_SIZE") // 1024


def log(msg: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# --------------------------------------------------------------------------
# Process bookkeeping: everything we start is registered here and killed on
# any exit path (normal return, exception, SIGINT/SIGTERM/SIGHUP, atexit).
# --------------------------------------------------------------------------

_LIVE: dict[int, tuple[subprocess.Popen, str]] = {}
_LIVE_LOCK = threading.Lock()
_TEMP_DIRS: list[str] = []


def _register(proc: subprocess.Popen, kind: str) -> None:
    with _LIVE_LOCK:
        _LIVE[proc.pid] = (proc, kind)


def _unregister(proc: subprocess.Popen) -> None:
    with _LIVE_LOCK:
        _LIVE.pop(proc.pid, None)


def _signal_group(proc: subprocess.Popen, sig: int) -> None:
    """Signal the process and its process group (each child we start leads its
    own session, so the group holds only it and its own children)."""
    try:
        os.killpg(proc.pid, sig)
    except (ProcessLookupError, PermissionError):
        try:
            proc.send_signal(sig)
        except ProcessLookupError:
            pass


def cleanup() -> None:
    with _LIVE_LOCK:
        procs = list(_LIVE.values())
        _LIVE.clear()
    for proc, kind in procs:
        if proc.poll() is None:
            log(f"cleanup: stopping {kind} pid {proc.pid}")
            _signal_group(proc, signal.SIGTERM if kind == "broker" else signal.SIGKILL)
    for proc, _ in procs:
        try:
            proc.wait(timeout=3)
        except subprocess.TimeoutExpired:
            _signal_group(proc, signal.SIGKILL)
            try:
                proc.wait(timeout=3)
            except subprocess.TimeoutExpired:
                pass
    while _TEMP_DIRS:
        shutil.rmtree(_TEMP_DIRS.pop(), ignore_errors=True)


def _on_signal(signum, _frame):
    log(f"caught signal {signum}, cleaning up")
    cleanup()
    raise SystemExit(128 + signum)


def install_cleanup_handlers() -> None:
    atexit.register(cleanup)
    for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(s, _on_signal)


# --------------------------------------------------------------------------
# /proc sampling
# --------------------------------------------------------------------------

def read_proc(pid: int) -> dict | None:
    """CPU ticks (utime+stime, all threads), RSS and peak RSS (kB), threads."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            stat = f.read()
        with open(f"/proc/{pid}/status") as f:
            status = f.read()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    # comm may contain spaces/parens: fields start after the last ')'.
    rest = stat[stat.rfind(")") + 2:].split()
    if len(rest) < 22 or rest[0] == "Z":
        return None
    ticks = int(rest[11]) + int(rest[12])  # fields 14, 15: utime, stime
    out = {"t": time.monotonic(), "ticks": ticks, "rss_kb": int(rest[21]) * PAGE_KB,
           "hwm_kb": None, "threads": None}
    for line in status.splitlines():
        if line.startswith("VmRSS:"):
            out["rss_kb"] = int(line.split()[1])
        elif line.startswith("VmHWM:"):
            out["hwm_kb"] = int(line.split()[1])
        elif line.startswith("Threads:"):
            out["threads"] = int(line.split()[1])
    return out


def thread_affinities(pid: int) -> dict[str, str]:
    """Cpus_allowed_list of every thread of pid, keyed by 'tid:comm'."""
    res = {}
    try:
        for tid in os.listdir(f"/proc/{pid}/task"):
            try:
                comm = Path(f"/proc/{pid}/task/{tid}/comm").read_text().strip()
                for line in Path(f"/proc/{pid}/task/{tid}/status").read_text().splitlines():
                    if line.startswith("Cpus_allowed_list:"):
                        res[f"{tid}:{comm}"] = line.split(":", 1)[1].strip()
            except OSError:
                pass
    except OSError:
        pass
    return res


def read_cpu_stat(cpus: list[int]) -> dict[int, tuple[int, int, int]]:
    """Per CPU from /proc/stat: (process ticks = user+nice+system,
    irq+softirq ticks, steal ticks)."""
    out = {}
    try:
        with open("/proc/stat") as f:
            for line in f:
                if not line.startswith("cpu") or line.startswith("cpu "):
                    continue
                parts = line.split()
                n = int(parts[0][3:])
                if n in cpus:
                    v = [int(x) for x in parts[1:9]]
                    out[n] = (v[0] + v[1] + v[2], v[5] + v[6], v[7])
    except OSError:
        pass
    return out


class Sampler(threading.Thread):
    """Samples a set of pids (and the busy time of some CPUs) every
    `interval` seconds until stopped."""

    def __init__(self, interval: float = 0.5, cpus: list[int] | None = None):
        super().__init__(daemon=True)
        self.interval = interval
        self.cpus = cpus or []
        self.pids: dict[str, int] = {}
        self.series: dict[str, list[dict]] = {f"cpu{c}": [] for c in self.cpus}
        self.series.update({f"steal{c}": [] for c in self.cpus})
        self.series.update({f"irq{c}": [] for c in self.cpus})
        self._stop_ev = threading.Event()
        self._lock = threading.Lock()

    def add(self, name: str, pid: int) -> None:
        with self._lock:
            self.pids[name] = pid
            self.series.setdefault(name, [])
        self.sample_now()

    def sample_now(self) -> None:
        with self._lock:
            if self.cpus:
                t = time.monotonic()
                for c, (busy, irq, steal) in read_cpu_stat(self.cpus).items():
                    self.series[f"cpu{c}"].append({"t": t, "ticks": busy, "rss_kb": 0})
                    self.series[f"irq{c}"].append({"t": t, "ticks": irq, "rss_kb": 0})
                    self.series[f"steal{c}"].append({"t": t, "ticks": steal, "rss_kb": 0})
            for name, pid in self.pids.items():
                s = read_proc(pid)
                if s is not None:
                    self.series[name].append(s)

    def run(self) -> None:
        while not self._stop_ev.wait(self.interval):
            self.sample_now()

    def stop(self) -> None:
        self.sample_now()
        self._stop_ev.set()
        self.join(timeout=5)


def _ticks_at(series: list[dict], t: float) -> float:
    """Linear interpolation of the CPU tick counter at time t (clipped)."""
    if t <= series[0]["t"]:
        return series[0]["ticks"]
    if t >= series[-1]["t"]:
        return series[-1]["ticks"]
    for a, b in zip(series, series[1:]):
        if a["t"] <= t <= b["t"]:
            if b["t"] == a["t"]:
                return b["ticks"]
            f = (t - a["t"]) / (b["t"] - a["t"])
            return a["ticks"] + f * (b["ticks"] - a["ticks"])
    return series[-1]["ticks"]


def cpu_pct(series: list[dict], t0: float, t1: float) -> float | None:
    if len(series) < 2:
        return None
    t0 = max(t0, series[0]["t"])
    t1 = min(t1, series[-1]["t"])
    if t1 - t0 < 0.2:
        return None
    return 100.0 * (_ticks_at(series, t1) - _ticks_at(series, t0)) / CLK_TCK / (t1 - t0)


# --------------------------------------------------------------------------
# Brokers
# --------------------------------------------------------------------------

@dataclass
class BrokerSpec:
    name: str            # column name in the report
    kind: str            # "ringmq" | "mosquitto"
    shards: int | None   # ringmq only
    pinned: bool         # pinned to --broker-cpus with taskset
    desc: str


BROKERS = {
    "ringmq": BrokerSpec("ringmq", "ringmq", 1, True, "ringmq --shards 1, pinned to the broker CPU"),
    "mosquitto": BrokerSpec("mosquitto", "mosquitto", None, True, "Mosquitto (single-threaded), pinned to the broker CPU"),
    "ringmq-s2": BrokerSpec("ringmq-s2", "ringmq", 2, False,
                            "ringmq --shards 2, not pinned by the harness (whole machine; shares the loadgen's CPU)"),
}


def port_free(port: int) -> bool:
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
            return True
        except OSError:
            return False


def port_open(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


class Broker:
    def __init__(self, spec: BrokerSpec, cfg: "Config", port: int, logfile: Path):
        self.spec, self.cfg, self.port, self.logfile = spec, cfg, port, logfile
        self.proc: subprocess.Popen | None = None
        self.tmpdir = tempfile.mkdtemp(prefix=f"ringmq-bench-{spec.name}-")
        _TEMP_DIRS.append(self.tmpdir)
        self.cmd = self._command()
        self.config_text: str | None = None

    def _command(self) -> list[str]:
        cfg, spec = self.cfg, self.spec
        pre = ["taskset", "-c", cfg.broker_cpus] if spec.pinned and cfg.broker_cpus else []
        if spec.kind == "ringmq":
            listen = ["--listen", f"127.0.0.1:{self.port}"]
            scheme = ("wss" if cfg.tls_dir else "ws") if cfg.ws else "mqtts"
            if cfg.ws and not cfg.tls_dir:
                listen = ["--listener", f"ws://127.0.0.1:{self.port}"]
            if cfg.tls_dir:
                listen = ["--listener", f"{scheme}://127.0.0.1:{self.port}",
                          "--tls-cert", os.path.join(cfg.tls_dir, "server.pem"),
                          "--tls-key", os.path.join(cfg.tls_dir, "server.key")]
            return pre + [cfg.ringmq] + listen + [
                          "--shards", str(spec.shards), "--data-dir", os.path.join(self.tmpdir, "data"),
                          "--max-inflight", str(cfg.max_inflight),
                          "--max-queued-messages", str(cfg.max_queued),
                          "--log-level", cfg.ringmq_log_level] + cfg.ringmq_extra
        conf = os.path.join(self.tmpdir, "mosquitto.conf")
        return pre + [cfg.mosquitto, "-c", conf]

    def mosquitto_conf(self) -> str:
        # Settings equivalent to ringmq's: same inflight window and queue
        # bound, no persistence, unlimited connections, TCP_NODELAY (ringmq
        # sets it on every accepted socket), errors only to stderr.
        # --ws: Mosquitto 2.0.x cannot start with a WebSocket listener alone, nor bind one
        # to an address (libwebsockets binds every interface): a plain listener no client
        # uses comes first, then the WebSocket one the loadgen connects to.
        first = ([f"listener {self.cfg.next_port()} 127.0.0.1", f"listener {self.port}",
                  "protocol websockets"] if self.cfg.ws else [f"listener {self.port} 127.0.0.1"])
        lines = first + [
            "allow_anonymous true",
            f"max_inflight_messages {self.cfg.max_inflight}",
            f"max_queued_messages {self.cfg.max_queued}",
            "persistence false",
            "max_connections -1",
            "set_tcp_nodelay true",
            "log_dest stderr",
            "log_type error",
        ]
        if self.cfg.tls_dir:  # the last listener's (the WebSocket one with --ws)
            lines += [f"certfile {os.path.join(self.cfg.tls_dir, 'server.pem')}",
                      f"keyfile {os.path.join(self.cfg.tls_dir, 'server.key')}"]
        return "\n".join(lines + [""])

    def start(self, ready_timeout: float = 15.0) -> None:
        if self.spec.kind == "mosquitto":
            self.config_text = self.mosquitto_conf()
            Path(self.tmpdir, "mosquitto.conf").write_text(self.config_text)
        self.logfile.parent.mkdir(parents=True, exist_ok=True)
        logf = open(self.logfile, "wb")
        self.proc = subprocess.Popen(self.cmd, stdin=subprocess.DEVNULL, stdout=logf,
                                     stderr=subprocess.STDOUT, start_new_session=True,
                                     cwd=self.tmpdir)
        logf.close()
        _register(self.proc, "broker")
        deadline = time.monotonic() + ready_timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.spec.name} exited with {self.proc.returncode} before listening; "
                                   f"log tail:\n{tail(self.logfile)}")
            if port_open(self.port):
                return
            time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"{self.spec.name} did not listen on 127.0.0.1:{self.port} within {ready_timeout}s; "
                           f"log tail:\n{tail(self.logfile)}")

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self, grace: float = 5.0) -> dict:
        """SIGTERM, then SIGKILL after `grace` seconds.  Returns what happened."""
        res = {"stop_s": 0.0, "sigkill": False, "exit": None, "was_dead": False}
        if self.proc is None:
            return res
        if self.proc.poll() is not None:
            res["was_dead"] = True
        else:
            t0 = time.monotonic()
            _signal_group(self.proc, signal.SIGTERM)
            try:
                self.proc.wait(timeout=grace)
            except subprocess.TimeoutExpired:
                res["sigkill"] = True
                _signal_group(self.proc, signal.SIGKILL)
                self.proc.wait(timeout=10)
            res["stop_s"] = round(time.monotonic() - t0, 3)
        res["exit"] = self.proc.returncode
        _unregister(self.proc)
        if self.tmpdir in _TEMP_DIRS:
            _TEMP_DIRS.remove(self.tmpdir)
        shutil.rmtree(self.tmpdir, ignore_errors=True)
        return res


ANSI = re.compile(r"\x1b\[[0-9;]*m")


def tail(path: Path, n: int = 12) -> str:
    """The interesting part of a log: panics and errors first, then the tail."""
    try:
        lines = [ANSI.sub("", l) for l in path.read_text(errors="replace").splitlines()]
    except OSError:
        return "(no log)"
    key = []
    for i, l in enumerate(lines):
        if "panicked at" in l:
            key += lines[i:i + 2]
        elif re.search(r"\b(ERROR|error|Error)\b", l) and not l.startswith(" "):
            key.append(l)
    key = list(dict.fromkeys(key))[:6]
    rest = [l for l in lines if not l.startswith("  ")][-n:] if key else lines[-n:]
    return "\n".join(key + (["..."] if key else []) + [l for l in rest if l not in key])


# --------------------------------------------------------------------------
# Scenarios
# --------------------------------------------------------------------------

@dataclass
class Scenario:
    name: str
    kind: str              # throughput | latency | idle
    lg: str                # loadgen scenario
    qos: int
    full: list[str]        # scenario options, full run
    quick: list[str]       # scenario options, --quick
    conns_full: int
    conns_quick: int
    title: str
    ramp_up: float = 10.0  # loadgen --ramp-up: upper bound of the connect phase (it ends once all are up)
    connect_rate: float | None = None  # loadgen --connect-rate (None: loadgen default, 5000/s)
    beside_idle: int = 0   # idle devices (session + subscription) held by a second loadgen meanwhile

    def opts(self, cfg: "Config") -> list[str]:
        o = list(self.quick if cfg.quick else self.full)
        if self.lg in ("fan-in", "fan-out") and cfg.window:
            o += ["--window", str(cfg.window)]
        if self.lg == "idle":
            o += ["--hold", fmt_num(cfg.duration_for(self))]
        if self.lg == "connect-storm" and cfg.quick:
            o = ["--devices", "2000"] + [x for x in self.full if x == "--warm-up"]
        return o

    def connections(self, cfg: "Config") -> int:
        return self.conns_quick if cfg.quick else self.conns_full


SCENARIOS = [
    Scenario("fanin-qos0", "throughput", "fan-in", 0,
             ["--publishers", "1000", "--subscribers", "1", "--rate", "0", "--end-to-end"],
             ["--publishers", "100", "--subscribers", "1", "--rate", "0", "--end-to-end"], 1001, 101,
             "Fan-in, QoS 0, max rate: 1,000 publishers -> 1 subscriber, closed loop with an "
             "end-to-end window (each publisher keeps at most 16 messages not yet received)"),
    Scenario("fanin-qos0-flood", "throughput", "fan-in", 0,
             ["--publishers", "1000", "--subscribers", "1", "--rate", "0"],
             ["--publishers", "100", "--subscribers", "1", "--rate", "0"], 1001, 101,
             "Fan-in, QoS 0, overload: 1,000 publishers write 16 messages whenever their socket "
             "takes them, whatever reached the subscriber (both brokers drop for the slow consumer)"),
    Scenario("fanin-qos1", "throughput", "fan-in", 1,
             ["--publishers", "1000", "--subscribers", "1", "--rate", "0"],
             ["--publishers", "100", "--subscribers", "1", "--rate", "0"], 1001, 101,
             "Fan-in, QoS 1, max rate: 1,000 publishers -> 1 subscriber, closed loop"),
    Scenario("fanout-qos0", "throughput", "fan-out", 0,
             ["--publishers", "1", "--subscribers", "1000", "--rate", "0"],
             ["--publishers", "1", "--subscribers", "100", "--rate", "0"], 1001, 101,
             "Fan-out, QoS 0, max rate: 1 publisher -> 1,000 subscribers, closed loop"),
    Scenario("pairs", "latency", "pairs", 0,
             ["--pairs", "9000", "--rate", "1"],
             ["--pairs", "1000", "--rate", "1"], 18000, 2000,
             "9,000 publisher/subscriber pairs at 1 msg/s each, QoS 0 (latency; 18,000 sockets per side)",
             ramp_up=20.0),
    Scenario("idle", "idle", "idle", 0,
             ["--devices", "19000"],
             ["--devices", "1000"], 19000, 1000,
             "Idle fleet of 19,000 connections, each with a session and a subscription: connect rate "
             "and broker memory per connection",
             connect_rate=20000.0, ramp_up=20.0),
    Scenario("connect-storm", "idle", "connect-storm", 0,
             ["--devices", "10000"],
             ["--devices", "2000"], 10000, 2000,
             "Connect storm: 10,000 devices connect as fast as they can (CONNECT -> CONNACK), then leave",
             connect_rate=1000000.0),
    Scenario("connect-storm-resumed", "idle", "connect-storm", 0,
             ["--devices", "10000", "--warm-up"],
             ["--devices", "2000", "--warm-up"], 10000, 2000,
             "Connect storm, again: 10,000 devices connect once and leave (not measured), then connect "
             "again as fast as they can; over TLS each resumes its session (its own ticket)",
             connect_rate=1000000.0),
    Scenario("openloop-qos0", "latency", "fan-in", 0,
             ["--publishers", "1000", "--subscribers", "1", "--rate", "20"],
             ["--publishers", "100", "--subscribers", "1", "--rate", "200"], 1001, 101,
             "Open loop 20,000 msgs/s, QoS 0: 1,000 publishers x 20 msgs/s -> 1 subscriber (latency)"),
    Scenario("openloop-qos0-idle1k", "latency", "fan-in", 0,
             ["--publishers", "1000", "--subscribers", "1", "--rate", "20"],
             ["--publishers", "100", "--subscribers", "1", "--rate", "200"], 1001, 101,
             "Open loop 20,000 msgs/s, QoS 0, beside 1,000 idle devices (loop cost, baseline)",
             beside_idle=1000),
    Scenario("openloop-qos0-idle18k", "latency", "fan-in", 0,
             ["--publishers", "1000", "--subscribers", "1", "--rate", "20"],
             ["--publishers", "100", "--subscribers", "1", "--rate", "200"], 1001, 101,
             "Open loop 20,000 msgs/s, QoS 0, beside 18,000 idle devices (loop cost; 18,000 + 1,001 "
             "sockets is what one process's 20,000 descriptors allow)",
             beside_idle=18000),
    Scenario("openloop-qos1", "latency", "fan-in", 1,
             ["--publishers", "1000", "--subscribers", "1", "--rate", "20"],
             ["--publishers", "100", "--subscribers", "1", "--rate", "200"], 1001, 101,
             "Open loop 20,000 msgs/s, QoS 1: 1,000 publishers x 20 msgs/s -> 1 subscriber (latency)"),
]
SCEN_BY_NAME = {s.name: s for s in SCENARIOS}


# --------------------------------------------------------------------------
# Metrics: (key, label, better, formatter, kinds)
# --------------------------------------------------------------------------

def jget(d, path, default=None):
    cur = d
    for part in path.split("."):
        if not isinstance(cur, dict) or part not in cur:
            return default
        cur = cur[part]
    return cur


def num(v):
    if isinstance(v, bool):
        return None
    if isinstance(v, (int, float)):
        return v
    if isinstance(v, list):  # e.g. "errors" given as a list of messages
        return len(v)
    return None


def fmt_num(v) -> str:
    if isinstance(v, float) and v.is_integer():
        return str(int(v))
    return str(v)


def f_int(v):
    return "-" if v is None else f"{v:,.0f}"


def f_1(v):
    return "-" if v is None else f"{v:,.1f}"


def f_mib(v):
    return "-" if v is None else f"{v / 1024:,.1f} MiB"


def per_cpu_s(r):
    """Deliveries per second of broker CPU time: efficiency, comparable
    whether or not the broker was saturated."""
    rx = num(jget(r["lg"], "received_per_s"))
    cpu = num(jget(r["lg"], "broker.cpu_pct")) or r["h"].get("broker_cpu_pct")
    return rx / (cpu / 100.0) if rx is not None and cpu else None


def connects_per_cpu_s(r):
    """Connects per second of broker CPU time while connecting: what a connect costs the
    broker, comparable when the loadgen was the limit (TLS handshakes are as costly for the
    client as for the server)."""
    rate = num(jget(r["lg"], "connect_per_s"))
    cpu = r["h"].get("broker_cpu_pct_connect")
    return rate / (cpu / 100.0) if rate is not None and cpu else None


T, L, I = "throughput", "latency", "idle"
ALL = (T, L, I)

# key -> (label, better: "high"/"low"/None, formatter, kinds, extractor(run) -> value)
METRICS: list[tuple[str, str, str | None, callable, tuple, callable]] = [
    ("connections", "connections", None, f_int, ALL, lambda r: num(jget(r["lg"], "connections"))),
    ("sent_per_s", "msgs/s sent", "high", f_int, (T, L), lambda r: num(jget(r["lg"], "sent_per_s"))),
    ("received_per_s", "msgs/s received", "high", f_int, (T, L), lambda r: num(jget(r["lg"], "received_per_s"))),
    ("lost", "lost", "low", f_int, (T, L), lambda r: num(jget(r["lg"], "lost"))),
    ("duplicates", "duplicates", "low", f_int, (T, L), lambda r: num(jget(r["lg"], "duplicates"))),
    ("errors", "errors", "low", f_int, ALL, lambda r: num(jget(r["lg"], "errors"))),
    ("lat_p50", "latency p50 (µs)", "low", f_int, (T, L), lambda r: num(jget(r["lg"], "latency_us.p50"))),
    ("lat_p99", "latency p99 (µs)", "low", f_int, (T, L), lambda r: num(jget(r["lg"], "latency_us.p99"))),
    ("lat_p999", "latency p99.9 (µs)", "low", f_int, (T, L), lambda r: num(jget(r["lg"], "latency_us.p999"))),
    ("lat_max", "latency max (µs)", "low", f_int, (L,), lambda r: num(jget(r["lg"], "latency_us.max"))),
    ("connect_per_s", "connects/s", "high", f_int, (I,), lambda r: num(jget(r["lg"], "connect_per_s"))),
    ("broker_cpu_connect", "broker CPU % while connecting", None, f_1, (I,),
     lambda r: r["h"].get("broker_cpu_pct_connect")),
    ("connects_per_cpu_s", "connects per broker CPU-second", "high", f_int, (I,),
     lambda r: connects_per_cpu_s(r)),
    ("loadgen_cpu_connect", "loadgen CPU % while connecting", None, f_1, (I,),
     lambda r: r["h"].get("loadgen_cpu_pct_connect")),
    ("tls_resumed", "TLS handshakes resumed", None, f_int, (I,), lambda r: num(jget(r["lg"], "tls_resumed"))),
    ("connack_p50", "CONNACK p50 (µs)", "low", f_int, (I,), lambda r: num(jget(r["lg"], "connack_us.p50"))),
    ("connack_p99", "CONNACK p99 (µs)", "low", f_int, (I,), lambda r: num(jget(r["lg"], "connack_us.p99"))),
    ("bytes_per_conn", "broker bytes/idle conn (loadgen)", "low", f_int, (I,),
     lambda r: num(jget(r["lg"], "broker.rss_bytes_per_connection"))),
    ("bytes_per_conn_h", "broker bytes/idle conn (harness)", "low", f_int, (I,),
     lambda r: r["h"].get("broker_bytes_per_conn")),
    ("broker_cpu", "broker CPU % (harness, window)", None, f_1, ALL, lambda r: r["h"].get("broker_cpu_pct")),
    ("broker_cpu_lg", "broker CPU % (loadgen)", None, f_1, ALL, lambda r: num(jget(r["lg"], "broker.cpu_pct"))),
    ("msgs_per_cpu_s", "msgs received per broker CPU-second", "high", f_int, (T, L), lambda r: per_cpu_s(r)),
    ("broker_rss_peak", "broker peak RSS", "low", f_mib, ALL, lambda r: r["h"].get("broker_hwm_kb")),
    ("loadgen_cpu", "loadgen CPU % (loadgen)", None, f_1, ALL, lambda r: num(jget(r["lg"], "loadgen.cpu_pct"))),
    ("loadgen_cpu_h", "loadgen CPU % (harness, window)", None, f_1, ALL, lambda r: r["h"].get("loadgen_cpu_pct")),
    ("other_on_broker_cpu", "other processes' CPU % on the broker's CPU", None, f_1, ALL,
     lambda r: r["h"].get("broker_cpus_other_pct")),
    ("other_on_loadgen_cpu", "other processes' CPU % on the loadgen's CPU", None, f_1, ALL,
     lambda r: r["h"].get("loadgen_cpus_other_pct")),
    ("irq_on_broker_cpu", "irq+softirq % on the broker's CPU", None, f_1, ALL,
     lambda r: r["h"].get("broker_cpus_irq_pct")),
    ("irq_on_loadgen_cpu", "irq+softirq % on the loadgen's CPU", None, f_1, ALL,
     lambda r: r["h"].get("loadgen_cpus_irq_pct")),
    ("steal", "hypervisor steal % (both CPUs)", None, f_1, ALL, lambda r: r["h"].get("steal_pct")),
    ("loadgen_rss_per_dev", "loadgen bytes/device", None, f_int, (I,),
     lambda r: num(jget(r["lg"], "loadgen.rss_bytes_per_device"))),
]
METRIC_BY_KEY = {m[0]: m for m in METRICS}

HEADLINE = {
    T: ["received_per_s", "sent_per_s", "lat_p99", "msgs_per_cpu_s", "broker_cpu", "loadgen_cpu"],
    L: ["lat_p50", "lat_p99", "lat_p999", "received_per_s", "msgs_per_cpu_s", "broker_cpu", "loadgen_cpu"],
    I: ["bytes_per_conn", "bytes_per_conn_h", "connect_per_s", "connects_per_cpu_s", "broker_cpu_connect",
        "loadgen_cpu_connect", "tls_resumed",
        "broker_rss_peak"],
}


# --------------------------------------------------------------------------
# Config
# --------------------------------------------------------------------------

@dataclass
class Config:
    quick: bool
    repeat: int
    duration: float
    ramp_up: float | None
    drain: float
    durations: dict[str, float]
    timeout: float | None
    mqtt_version: str
    payload: int
    max_inflight: int
    max_queued: int
    window: int | None
    port_base: int
    broker_cpus: str
    loadgen_cpus: str
    loadgen_threads: int | None
    loadgen_processes: int | None
    loadgen_extra: list[str]
    ringmq_extra: list[str]
    ringmq_log_level: str
    ringmq: str
    mosquitto: str
    loadgen: str
    out_root: Path
    tag: str
    sample_interval: float
    idle_connect_rate: float | None = None
    snapshot_dir: str | None = None
    # --tls: both brokers listen with TLS only, with the ECDSA P-256 certificate made here.
    tls_dir: str | None = None
    # --ws: both brokers listen with MQTT over WebSocket only (over TLS with --tls too).
    ws: bool = False
    argv: list[str] = field(default_factory=list)
    _port_i: int = 0

    def duration_for(self, scn: Scenario) -> float:
        return self.durations.get(scn.name, self.duration)

    def ramp_for(self, scn: Scenario) -> float:
        return self.ramp_up if self.ramp_up is not None else scn.ramp_up

    def connect_rate_for(self, scn: Scenario) -> float | None:
        if scn.kind == "idle" and self.idle_connect_rate is not None:
            return self.idle_connect_rate
        return scn.connect_rate

    def timeout_for(self, scn: Scenario) -> float:
        if self.timeout is not None:
            return self.timeout
        # The loadgen's own phases are bounded: connect <= ramp-up (+3 s of
        # grace), measurement, drain <= --drain; add room for start-up,
        # disconnecting the fleet and writing the results.
        return (self.duration_for(scn) + self.ramp_for(scn) + 3 + self.drain + 30
                + scn.connections(self) / 1000.0)

    def next_port(self) -> int:
        # A different port per broker start keeps the previous run's TIME_WAIT
        # 4-tuples out of the way of the next run's connects.
        for _ in range(200):
            p = self.port_base + self._port_i % 100
            self._port_i += 1
            if port_free(p):
                return p
        raise RuntimeError(f"no free port in {self.port_base}..{self.port_base + 99}")


# --------------------------------------------------------------------------
# One measurement
# --------------------------------------------------------------------------

def loadgen_command(cfg: Config, scn: Scenario, port: int, broker_pid: int,
                    json_path: Path, plot_path: Path) -> list[str]:
    cmd = ["taskset", "-c", cfg.loadgen_cpus] if cfg.loadgen_cpus else []
    cmd += [cfg.loadgen, "--host", "127.0.0.1", "--port", str(port)]
    if cfg.loadgen_cpus:
        cmd += ["--cpus", cfg.loadgen_cpus]
    if cfg.loadgen_threads:
        cmd += ["--threads", str(cfg.loadgen_threads)]
    if cfg.loadgen_processes:
        cmd += ["--processes", str(cfg.loadgen_processes)]
    cmd += ["--mqtt-version", cfg.mqtt_version, "--qos", str(scn.qos), "--payload", str(cfg.payload),
            "--duration", fmt_num(cfg.duration_for(scn)), "--ramp-up", fmt_num(cfg.ramp_for(scn)),
            "--drain", fmt_num(cfg.drain),
            "--json", str(json_path), "--plot", str(plot_path), "--broker-pid", str(broker_pid), "--quiet"]
    rate = cfg.connect_rate_for(scn)
    if rate:
        cmd += ["--connect-rate", fmt_num(rate)]
    cmd += tls_args(cfg)
    cmd += cfg.loadgen_extra
    cmd += [scn.lg] + scn.opts(cfg)
    return cmd


def tls_args(cfg: Config) -> list[str]:
    ws = ["--ws"] if cfg.ws else []
    return ws + (["--tls", "--tls-ca", os.path.join(cfg.tls_dir, "ca.pem")] if cfg.tls_dir else [])


def make_tls_dir() -> str:
    """An ECDSA P-256 CA and a server certificate for localhost / 127.0.0.1, made with openssl
    for this run (no key material is kept)."""
    d = tempfile.mkdtemp(prefix="ringmq-bench-tls-")
    _TEMP_DIRS.append(d)
    script = (
        "openssl ecparam -name prime256v1 -genkey -noout -out ca.key && "
        "openssl req -x509 -new -key ca.key -subj /CN=bench-ca -days 2 -out ca.pem && "
        "openssl ecparam -name prime256v1 -genkey -noout -out server.key && "
        "openssl req -new -key server.key -subj /CN=localhost -out server.csr && "
        "printf 'subjectAltName=DNS:localhost,IP:127.0.0.1\\n' > ext && "
        "openssl x509 -req -in server.csr -CA ca.pem -CAkey ca.key -CAcreateserial -days 2 "
        "-extfile ext -out server.pem")
    subprocess.run(script, shell=True, cwd=d, check=True, capture_output=True)
    # Mosquitto started as root drops to its own user, which must read them.
    os.chmod(d, 0o755)
    for f in os.listdir(d):
        os.chmod(os.path.join(d, f), 0o644)
    return d


def start_idle_fleet(cfg: Config, scn: Scenario, port: int, broker_pid: int, log_path: Path):
    """A second loadgen holding `scn.beside_idle` idle devices (each with a session and one
    subscription, keep-alive 60 s) for longer than the measured run."""
    hold = cfg.duration_for(scn) + cfg.ramp_for(scn) + cfg.drain + 30
    cmd = ["taskset", "-c", cfg.loadgen_cpus] if cfg.loadgen_cpus else []
    cmd += [cfg.loadgen, "--host", "127.0.0.1", "--port", str(port), "--mqtt-version", cfg.mqtt_version,
            "--connect-rate", "20000", "--ramp-up", "30", "--duration", fmt_num(hold), "--quiet",
            ] + tls_args(cfg) + [
            "idle", "--devices", str(scn.beside_idle), "--hold", fmt_num(hold), "--first", "1000000"]
    with open(log_path, "wb") as lf:
        p = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=lf, stderr=subprocess.STDOUT,
                             start_new_session=True)
    _register(p, "loadgen")
    return p


def wait_for_fds(pid: int, n: int, timeout: float) -> int:
    """Waits until the process holds at least n descriptors; returns how many it holds."""
    deadline = time.monotonic() + timeout
    count = 0
    while time.monotonic() < deadline:
        try:
            count = len(os.listdir(f"/proc/{pid}/fd"))
        except OSError:
            return count
        if count >= n:
            time.sleep(1.0)  # the last SUBSCRIBEs
            return count
        time.sleep(0.2)
    raise RuntimeError(f"the idle fleet reached only {count} of {n} descriptors in {timeout:.0f} s")


def wait_with_rusage(proc: subprocess.Popen, timeout: float):
    """Wait for proc like Popen.wait but also return its rusage (exact CPU
    time of the loadgen).  Returns (returncode or None on timeout, rusage)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            pid, status, ru = os.wait4(proc.pid, os.WNOHANG)
        except ChildProcessError:
            proc.poll()
            return proc.returncode, None
        if pid == proc.pid:
            proc.returncode = os.waitstatus_to_exitcode(status)
            return proc.returncode, ru
        if time.monotonic() >= deadline:
            return None, None
        time.sleep(0.05)


def run_one(cfg: Config, scn: Scenario, spec: BrokerSpec, rep: int, outdir: Path) -> dict:
    run_id = f"{scn.name}-{spec.name}-r{rep + 1}"
    json_path = outdir / f"{run_id}.json"
    plot_path = outdir / f"{run_id}.svg"
    lg_log = outdir / f"{run_id}.loadgen.log"
    for p in (json_path, plot_path):
        p.unlink(missing_ok=True)
    rec = {"id": run_id, "scenario": scn.name, "broker": spec.name, "repeat": rep + 1,
           "status": "ok", "error": None, "lg": {}, "h": {},
           "loadavg_start": Path("/proc/loadavg").read_text().split()[:3]}
    port = cfg.next_port()
    broker = Broker(spec, cfg, port, outdir / f"{run_id}.broker.log")
    rec["broker_cmd"] = shlex.join(broker.cmd)
    sampler = Sampler(cfg.sample_interval, cpu_list(cfg.broker_cpus) + cpu_list(cfg.loadgen_cpus))
    lg = None
    idle_lg = None
    try:
        broker.start()
        if broker.config_text:
            rec["broker_config"] = broker.config_text
        time.sleep(0.5)  # let it settle before the RSS baseline
        base = read_proc(broker.pid)
        rec["h"]["broker_rss_start_kb"] = base["rss_kb"] if base else None
        rec["h"]["broker_threads"] = base["threads"] if base else None
        rec["h"]["broker_affinity"] = sorted(set(thread_affinities(broker.pid).values()))
        sampler.add("broker", broker.pid)
        sampler.start()

        if scn.beside_idle:
            idle_lg = start_idle_fleet(cfg, scn, port, broker.pid, outdir / f"{run_id}.idle.log")
            rec["idle_cmd"] = shlex.join(idle_lg.args)
            rec["h"]["beside_idle_fds"] = wait_for_fds(broker.pid, scn.beside_idle, 60.0)
            base = read_proc(broker.pid)
            rec["h"]["broker_rss_start_kb"] = base["rss_kb"] if base else None
        cmd = loadgen_command(cfg, scn, port, broker.pid, json_path, plot_path)
        rec["loadgen_cmd"] = shlex.join(cmd)
        timeout = cfg.timeout_for(scn)
        log(f"{run_id}: port {port}, broker pid {broker.pid}, loadgen timeout {timeout:.0f}s")
        with open(lg_log, "wb") as lf:
            t_start = time.monotonic()
            lg = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=lf, stderr=subprocess.STDOUT,
                                  start_new_session=True)
        _register(lg, "loadgen")
        sampler.add("loadgen", lg.pid)
        rc, ru = wait_with_rusage(lg, timeout)
        if rc is None:
            sampler.sample_now()
            _signal_group(lg, signal.SIGKILL)
            rc, ru = wait_with_rusage(lg, 10)
            rec["status"] = "timeout"
            rec["error"] = f"loadgen exceeded the {timeout:.0f}s timeout and was killed"
        t_end = time.monotonic()
        _unregister(lg)
        sampler.stop()
        rec["h"]["loadgen_wall_s"] = round(t_end - t_start, 3)
        rec["loadgen_rc"] = rc
        if ru is not None:
            rec["h"]["loadgen_cpu_pct_total"] = round(100 * (ru.ru_utime + ru.ru_stime) / max(t_end - t_start, 1e-9), 1)
            rec["h"]["loadgen_maxrss_kb"] = ru.ru_maxrss
        if not broker.alive():
            rec["status"] = "broker-died"
            rec["error"] = f"broker exited with {broker.proc.returncode} during the run; log tail:\n{tail(broker.logfile)}"
        elif rc not in (0, None) and rec["status"] == "ok":
            rec["status"] = "loadgen-failed"
            rec["error"] = f"loadgen exit code {rc}; log tail:\n{tail(lg_log)}"
        if json_path.exists():
            try:
                rec["lg"] = json.loads(json_path.read_text())
            except (json.JSONDecodeError, OSError) as e:
                rec["status"] = rec["status"] if rec["status"] != "ok" else "bad-json"
                rec["error"] = rec["error"] or f"cannot parse {json_path.name}: {e}"
        elif rec["status"] == "ok":
            rec["status"] = "no-json"
            rec["error"] = f"loadgen wrote no JSON; log tail:\n{tail(lg_log)}"
        if rec["status"] == "ok" and num(jget(rec["lg"], "errors")):
            rec.setdefault("notes", []).append(
                f"loadgen counted {jget(rec['lg'], 'errors')} errors; first: {jget(rec['lg'], 'first_error')}")
        # Measurement window: the loadgen connects (ramp_up_s in its JSON,
        # from its first connect attempt to the last device ready), starts
        # measuring ~20 ms later, measures `duration` s, drains (<= --drain s,
        # ends early once everything is delivered), disconnects and exits.
        dur = cfg.duration_for(scn)
        ramp_s = num(jget(rec["lg"], "ramp_up_s"))
        if ramp_s is not None:
            w0 = t_start + ramp_s + 0.05
            w1 = min(w0 + dur, t_end)
        else:  # no JSON: assume the window ended one drain before exit
            w1 = t_end - cfg.drain
            w0 = max(t_start, w1 - dur)
        bs = sampler.series.get("broker", [])
        ls = sampler.series.get("loadgen", [])
        rec["h"]["window"] = [round(w0 - t_start, 2), round(w1 - t_start, 2)]
        rec["h"]["broker_cpu_pct"] = r1(cpu_pct(bs, w0, w1))
        rec["h"]["broker_cpu_pct_run"] = r1(cpu_pct(bs, t_start, t_end))
        rec["h"]["loadgen_cpu_pct"] = r1(cpu_pct(ls, w0, w1))
        # Noise: what else ran on the broker's and the loadgen's CPUs.
        bcpu = cpu_list(cfg.broker_cpus)
        lcpu = cpu_list(cfg.loadgen_cpus)
        if spec.pinned and bcpu and rec["h"]["broker_cpu_pct"] is not None:
            busy = sum(cpu_pct(sampler.series.get(f"cpu{c}", []), w0, w1) or 0 for c in bcpu)
            rec["h"]["broker_cpus_other_pct"] = r1(max(0.0, busy - rec["h"]["broker_cpu_pct"]))
            rec["h"]["broker_cpus_irq_pct"] = r1(sum(cpu_pct(sampler.series.get(f"irq{c}", []), w0, w1) or 0
                                                     for c in bcpu))
        if lcpu and rec["h"]["loadgen_cpu_pct"] is not None and (spec.pinned or not bcpu):
            busy = sum(cpu_pct(sampler.series.get(f"cpu{c}", []), w0, w1) or 0 for c in lcpu)
            rec["h"]["loadgen_cpus_other_pct"] = r1(max(0.0, busy - rec["h"]["loadgen_cpu_pct"]))
            rec["h"]["loadgen_cpus_irq_pct"] = r1(sum(cpu_pct(sampler.series.get(f"irq{c}", []), w0, w1) or 0
                                                      for c in lcpu))
        rec["h"]["steal_pct"] = r1(sum(cpu_pct(sampler.series.get(f"steal{c}", []), w0, w1) or 0
                                       for c in bcpu + lcpu))
        if ramp_s:  # the connect phase: which side limited the connect rate?
            # After a warm-up round the measured connects start later (connect_start_s).
            c0 = t_start + (num(jget(rec["lg"], "connect_start_s")) or 0.0)
            rec["h"]["broker_cpu_pct_connect"] = r1(cpu_pct(bs, c0, c0 + ramp_s))
            rec["h"]["loadgen_cpu_pct_connect"] = r1(cpu_pct(ls, c0, c0 + ramp_s))
        if bs:
            rec["h"]["broker_hwm_kb"] = max((s["hwm_kb"] or s["rss_kb"]) for s in bs)
            rec["h"]["broker_rss_end_kb"] = bs[-1]["rss_kb"]
            in_w = [s["rss_kb"] for s in bs if w0 <= s["t"] <= w1] or [s["rss_kb"] for s in bs]
            rec["h"]["broker_rss_window_max_kb"] = max(in_w)
        conns = num(jget(rec["lg"], "connections")) or scn.connections(cfg)
        base_kb = rec["h"].get("broker_rss_start_kb")
        if scn.kind == I and base_kb is not None and "broker_rss_window_max_kb" in rec["h"] and conns:
            rec["h"]["broker_bytes_per_conn"] = round(
                (rec["h"]["broker_rss_window_max_kb"] - base_kb) * 1024 / conns)
    except Exception as e:  # noqa: BLE001 - one failed run must not stop the matrix
        rec["status"] = "error"
        rec["error"] = f"{type(e).__name__}: {e}"
        if lg is not None and lg.poll() is None:
            _signal_group(lg, signal.SIGKILL)
            lg.wait()
        if lg is not None:
            _unregister(lg)
        if sampler.is_alive():
            sampler.stop()
    finally:
        if idle_lg is not None:
            if idle_lg.poll() is None:
                _signal_group(idle_lg, signal.SIGKILL)
                idle_lg.wait()
            _unregister(idle_lg)
        rec["broker_stop"] = broker.stop()
        if rec["broker_stop"].get("sigkill"):
            rec.setdefault("notes", []).append("broker needed SIGKILL after 5 s")
    rec["samples"] = {k: [{"t": round(s["t"], 3), "ticks": s["ticks"], "rss_kb": s["rss_kb"]} for s in v]
                      for k, v in sampler.series.items()}
    (outdir / f"{run_id}.run.json").write_text(json.dumps(rec, indent=1, default=str))
    msg = f"{run_id}: {rec['status']}"
    if rec["status"] == "ok":
        bits = []
        for key in HEADLINE[scn.kind][:3]:
            v = METRIC_BY_KEY[key][5](rec)
            if v is not None:
                bits.append(f"{METRIC_BY_KEY[key][1]}={METRIC_BY_KEY[key][3](v)}")
        msg += "  " + ", ".join(bits)
    else:
        msg += f"  ({(rec['error'] or '').splitlines()[0] if rec['error'] else ''})"
    log(msg)
    return rec


def cpu_list(spec: str) -> list[int]:
    """'0', '0,1', '0-3' -> [0], [0, 1], [0, 1, 2, 3]."""
    out = []
    for part in (spec or "").split(","):
        part = part.strip()
        if not part:
            continue
        a, _, b = part.partition("-")
        out += list(range(int(a), int(b or a) + 1))
    return out


def r1(v):
    return None if v is None else round(v, 1)


# --------------------------------------------------------------------------
# Environment: build, mosquitto install, machine info
# --------------------------------------------------------------------------

def sh(cmd: str, timeout: float = 30) -> str:
    try:
        p = subprocess.run(cmd, shell=True, capture_output=True, text=True, timeout=timeout, cwd=REPO)
        return (p.stdout or p.stderr).strip()
    except (subprocess.TimeoutExpired, OSError) as e:
        return f"({e})"


def build(cfg: Config) -> None:
    # `--bin ringmq-loadgen` alone is rejected from the workspace root (the
    # loadgen is another package), so select both packages explicitly.
    cmd = ["cargo", "build", "--release", "-p", "ringmq", "-p", "ringmq-loadgen",
           "--bin", "ringmq", "--bin", "ringmq-loadgen"]
    log("building: " + shlex.join(cmd))
    p = subprocess.run(cmd, cwd=REPO)
    if p.returncode != 0:
        sys.exit(f"cargo build failed (exit {p.returncode}); fix the build or pass --no-build "
                 f"to benchmark the binaries already in target/release")


def snapshot_binaries(cfg: Config, need_ringmq: bool) -> dict:
    """Copy ringmq and the loadgen to a private directory and run those, so a
    `cargo build` by someone else during the (long) run cannot swap binaries
    between repeats.  Returns {name: "sha256[:16] of source path"}."""
    import hashlib
    snap = tempfile.mkdtemp(prefix="ringmq-bench-bin-")
    _TEMP_DIRS.append(snap)
    out = {}
    for attr in (["ringmq"] if need_ringmq else []) + ["loadgen"]:
        src = getattr(cfg, attr)
        dst = os.path.join(snap, os.path.basename(src))
        shutil.copy2(src, dst)
        with open(dst, "rb") as f:
            out[attr] = f"{hashlib.sha256(f.read()).hexdigest()[:16]} ({src})"
        setattr(cfg, attr, dst)
    cfg.snapshot_dir = snap
    return out


def find_mosquitto(explicit: str | None) -> str | None:
    if explicit:
        return explicit
    return shutil.which("mosquitto") or next(
        (p for p in ("/usr/sbin/mosquitto", "/usr/local/sbin/mosquitto") if os.access(p, os.X_OK)), None)


def ensure_mosquitto(explicit: str | None) -> str:
    path = find_mosquitto(explicit)
    if path:
        return path
    if os.geteuid() != 0:
        sys.exit("mosquitto is not installed and we are not root to install it: "
                 "run `sudo apt-get install -y mosquitto` (or pass --mosquitto PATH, "
                 "or --brokers ringmq to skip it)")
    log("mosquitto not found: apt-get update && apt-get install -y mosquitto")
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    for cmd in (["apt-get", "update"], ["apt-get", "install", "-y", "mosquitto"]):
        if subprocess.run(cmd, env=env).returncode != 0:
            sys.exit(f"`{shlex.join(cmd)}` failed; install mosquitto by hand or pass --mosquitto PATH")
    path = find_mosquitto(None)
    if not path:
        sys.exit("mosquitto still not found after apt-get install")
    return path


def machine_info(cfg: Config, need_mosquitto: bool) -> dict:
    cpu = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem_kb = 0
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemTotal:"):
            mem_kb = int(line.split()[1])
    dirty = sh("git status --porcelain --untracked-files=no") != ""
    info = {
        "hostname": socket.gethostname(),
        "cpu": cpu,
        "cores": os.cpu_count(),
        "ram_gib": round(mem_kb / 1024 / 1024, 1),
        "kernel": os.uname().release,
        "rustc": sh("rustc --version"),
        "mosquitto": sh(f"{shlex.quote(cfg.mosquitto)} -h | head -1") if need_mosquitto else "(not run)",
        "ringmq_version": sh(f"{shlex.quote(cfg.ringmq)} --version"),
        "commit": sh("git rev-parse --short HEAD") + ("-dirty" if dirty else ""),
        "open_files_limit": _nofile(),
        "python": sys.version.split()[0],
        "loadavg_start": " ".join(Path("/proc/loadavg").read_text().split()[:3]),
        "argv": shlex.join(["python3", "bench/run.py"] + list(cfg.argv)),
        "started": _dt.datetime.now().isoformat(timespec="seconds"),
    }
    return info


def _nofile() -> str:
    import resource
    s, h = resource.getrlimit(resource.RLIMIT_NOFILE)
    return f"{s} (hard {h})"


# --------------------------------------------------------------------------
# Report
# --------------------------------------------------------------------------

def med(vals):
    vals = [v for v in vals if v is not None]
    return statistics.median(vals) if vals else None


def ratio(a, b):
    if a is None or b is None or b == 0:
        return None
    return a / b


def f_ratio(r):
    return "-" if r is None else f"{r:.2f}x"


def summarize(records: list[dict], brokers: list[str]) -> dict:
    """scenario -> broker -> metric -> {median, values}"""
    out: dict = {}
    for rec in records:
        scn = SCEN_BY_NAME[rec["scenario"]]
        d = out.setdefault(rec["scenario"], {}).setdefault(rec["broker"], {"ok": 0, "runs": 0, "m": {}})
        d["runs"] += 1
        if rec["status"] != "ok":
            continue
        d["ok"] += 1
        for key, _label, _b, _f, kinds, ext in METRICS:
            if scn.kind in kinds:
                d["m"].setdefault(key, []).append(ext(rec))
    for scn_d in out.values():
        for bd in scn_d.values():
            bd["median"] = {k: med(v) for k, v in bd["m"].items()}
    return out


def better_word(better, r):
    if r is None or better is None:
        return ""
    if abs(r - 1) < 0.02:
        return "≈"
    good = (r > 1) == (better == "high")
    return "ringmq better" if good else "mosquitto better"


def md_table(header: list[str], rows: list[list[str]], align: list[str] | None = None) -> str:
    align = align or ["l"] + ["r"] * (len(header) - 1)
    sep = ["---:" if a == "r" else "---" for a in align]
    lines = ["| " + " | ".join(header) + " |", "| " + " | ".join(sep) + " |"]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def headline_rows(summary: dict, brokers: list[str], scen_names: list[str]):
    has_s2 = "ringmq-s2" in brokers
    rows = []
    for sname in scen_names:
        scn = SCEN_BY_NAME[sname]
        sd = summary.get(sname, {})
        for key in HEADLINE[scn.kind]:
            _, label, better, fmt, kinds, _ = METRIC_BY_KEY[key]
            vals = {b: jget(sd, f"{b}.median.{key}") for b in brokers}
            if all(v is None for v in vals.values()):
                continue
            r = ratio(vals.get("ringmq"), vals.get("mosquitto"))
            row = [sname, label] + [fmt(vals[b]) for b in brokers] + [f_ratio(r), better_word(better, r)]
            if has_s2:
                row.insert(-1, f_ratio(ratio(vals.get("ringmq-s2"), vals.get("mosquitto"))))
            rows.append(row)
    header = ["scenario", "metric (median)"] + brokers + ["ringmq/mosquitto"]
    if has_s2:
        header += ["ringmq-s2/mosquitto"]
    header += ["verdict"]
    return header, rows


def text_table(header, rows) -> str:
    widths = [max(len(str(x)) for x in col) for col in zip(header, *rows)] if rows else [len(h) for h in header]
    fmt_row = lambda r: "  ".join(str(c).ljust(w) if i < 2 else str(c).rjust(w)  # noqa: E731
                                 for i, (c, w) in enumerate(zip(r, widths)))
    return "\n".join([fmt_row(header), "  ".join("-" * w for w in widths)] + [fmt_row(r) for r in rows])


def write_report(cfg: Config, info: dict, records: list[dict], brokers: list[str], scen_names: list[str],
                 outdir: Path, md_path: Path, build_cmd: str | None, finished: bool) -> str:
    summary = summarize(records, brokers)
    has_s2 = "ringmq-s2" in brokers
    info["build_cmd"], info["finished"] = build_cmd, finished
    if cfg.snapshot_dir:
        info["snapshot_dir"] = cfg.snapshot_dir
    info.setdefault("loadavg_end", " ".join(Path("/proc/loadavg").read_text().split()[:3]))
    L_ = []
    title = "ringmq vs Mosquitto benchmark" + (" (QUICK smoke run, not a result)" if cfg.quick else "")
    L_.append(f"# {title}\n")
    L_.append(f"{info['started']} on `{info['hostname']}`" + ("" if finished else " — **INCOMPLETE (interrupted)**"))
    L_.append("")
    L_.append("Medians of the repeats; ratio = ringmq median / Mosquitto median. "
              "The machine is shared and noisy: quote medians and ratios, not single numbers. "
              "See bench/README.md for how to read this.\n")
    L_.append("## Machine\n")
    L_.append(md_table(["", ""], [
        ["CPU", f"{info['cpu']} ({info['cores']} cores)"],
        ["RAM", f"{info['ram_gib']} GiB"],
        ["kernel", info["kernel"]],
        ["rustc", info["rustc"]],
        ["mosquitto", info["mosquitto"]],
        ["ringmq", f"{info['ringmq_version']}, commit `{info['commit']}`"],
        ["open files limit", info["open_files_limit"]],
        ["load average (1/5/15 min) at start / end",
         f"{info['loadavg_start']} / {info['loadavg_end']}"],
    ], ["l", "l"]))
    L_.append("")
    L_.append("## Setup\n")
    L_.append(f"- brokers: " + "; ".join(f"**{b}** = {BROKERS[b].desc}" for b in brokers))
    L_.append(f"- broker CPU: `{cfg.broker_cpus}`, loadgen CPU: `{cfg.loadgen_cpus}` (taskset + `--cpus`)")
    L_.append(f"- repeats: {cfg.repeat} per broker, alternating brokers (A B A B …), fresh broker process per run")
    L_.append(f"- measurement: {fmt_num(cfg.duration)} s (overrides: {cfg.durations or 'none'}), "
              f"drain {fmt_num(cfg.drain)} s, MQTT {cfg.mqtt_version}, payload {cfg.payload} B, "
              f"max inflight {cfg.max_inflight}, max queued {cfg.max_queued}"
              + (", **over TLS** (ECDSA P-256 server certificate, TLS 1.3 negotiated by both)"
                 if cfg.tls_dir else "")
              + (", **over WebSocket** (ringmq `ws://` listener; Mosquitto `protocol websockets`, "
                 "libwebsockets, beside an unused plain listener it needs to start)"
                 if cfg.ws else ""))
    L_.append("- broker CPU % (harness) = utime+stime from /proc/PID/stat over the loadgen's measurement window "
              f"(its last {fmt_num(cfg.duration)} s before the drain), sampled every {cfg.sample_interval} s; "
              "peak RSS = VmHWM from /proc/PID/status")
    if build_cmd:
        L_.append(f"- build: `{build_cmd}`")
    L_.append("")
    L_.append("## Headline\n")
    h, rows = headline_rows(summary, brokers, scen_names)
    L_.append(md_table(h, rows, ["l", "l"] + ["r"] * (len(h) - 3) + ["l"]))
    L_.append("")
    L_.append("## Scenarios\n")
    for sname in scen_names:
        scn = SCEN_BY_NAME[sname]
        sd = summary.get(sname, {})
        L_.append(f"### {sname}: {scn.title}\n")
        counts = ", ".join(f"{b}: {jget(sd, f'{b}.ok', 0)}/{jget(sd, f'{b}.runs', 0)} runs ok" for b in brokers)
        L_.append(counts + "\n")
        header = ["metric (median)"] + brokers + ["ringmq/mosquitto"] + (["ringmq-s2/mosquitto"] if has_s2 else []) + ["better"]
        trows = []
        for key, label, better, fmt, kinds, _ in METRICS:
            if scn.kind not in kinds:
                continue
            vals = {b: jget(sd, f"{b}.median.{key}") for b in brokers}
            if all(v is None for v in vals.values()):
                continue
            row = [label] + [fmt(vals[b]) for b in brokers]
            row.append(f_ratio(ratio(vals.get("ringmq"), vals.get("mosquitto"))))
            if has_s2:
                row.append(f_ratio(ratio(vals.get("ringmq-s2"), vals.get("mosquitto"))))
            row.append({"high": "higher", "low": "lower", None: ""}[better])
            trows.append(row)
        L_.append(md_table(header, trows, ["l"] + ["r"] * (len(header) - 2) + ["l"]))
        L_.append("")
        # Which side was the limit?
        for b in brokers:
            if scn.kind == I:
                bc, lc = jget(sd, f"{b}.median.broker_cpu_connect"), jget(sd, f"{b}.median.loadgen_cpu_connect")
                phase = "while connecting"
            else:
                bc, lc = jget(sd, f"{b}.median.broker_cpu"), jget(sd, f"{b}.median.loadgen_cpu")
                if lc is None:
                    lc = jget(sd, f"{b}.median.loadgen_cpu_h")
                phase = "while measuring"
            if bc is None or lc is None:
                continue
            cap = 100.0 * (BROKERS[b].shards or 1)
            bo = lo = bi = li = 0.0
            if scn.kind != I:
                bo = jget(sd, f"{b}.median.other_on_broker_cpu") or 0.0
                lo = jget(sd, f"{b}.median.other_on_loadgen_cpu") or 0.0
                bi = jget(sd, f"{b}.median.irq_on_broker_cpu") or 0.0
                li = jget(sd, f"{b}.median.irq_on_loadgen_cpu") or 0.0
            if bc >= 0.9 * cap:
                lim = "broker-bound"
            elif bc + bi >= 0.9 * cap:
                lim = f"broker-bound (plus {bi:.0f} % irq/softirq on its CPU: network processing)"
            elif bc + bo + bi >= 0.9 * cap and scn.kind == L:
                lim = (f"the broker's CPU was full: other processes took {bo:.0f} % of it "
                       f"(noise: the latencies include waiting for the CPU)")
            elif bc + bo + bi >= 0.9 * cap:
                lim = (f"broker-bound on a shared core: other processes took {bo:.0f} % of the broker's CPU "
                       f"(noise; alone it would do more)")
            elif lc >= 90:
                lim = "loadgen-bound (the broker had room: this number is a lower bound)"
            elif lc + lo + li >= 90:
                lim = (f"loadgen-bound on a shared core: other processes took {lo:.0f} % of the loadgen's CPU "
                       f"(this number is a lower bound)")
            elif scn.kind == L:
                lim = "neither saturated, as an open-loop latency run should be"
            elif scn.kind == I:
                lim = "neither saturated (connect rate limited by --connect-rate, backlog or latency)"
            else:
                lim = "neither saturated (closed-loop window/latency-bound)"
            L_.append(f"- {b} {phase}: broker CPU {bc:.0f} %, loadgen CPU {lc:.0f} % → {lim}")
        L_.append("")
        L_.append("Raw repeats:\n")
        raw_keys = [k for k in HEADLINE[scn.kind] if k in METRIC_BY_KEY]
        extra = [k for k in ("lost", "errors", "other_on_broker_cpu", "irq_on_broker_cpu", "steal")
                 if scn.kind in METRIC_BY_KEY[k][4] and k not in raw_keys]
        raw_keys += extra
        rh = ["run", "status", "load avg"] + [METRIC_BY_KEY[k][1] for k in raw_keys]
        rr = []
        for rec in records:
            if rec["scenario"] != sname:
                continue
            row = [rec["id"], rec["status"], rec["loadavg_start"][0]]
            row += [METRIC_BY_KEY[k][3](METRIC_BY_KEY[k][5](rec)) if rec["status"] == "ok" else "-" for k in raw_keys]
            rr.append(row)
        L_.append(md_table(rh, rr, ["l", "l"] + ["r"] * (len(rh) - 2)))
        errs = [rec for rec in records if rec["scenario"] == sname and (rec["error"] or rec.get("notes"))]
        if errs:
            L_.append("")
            for rec in errs:
                for note in rec.get("notes", []):
                    L_.append(f"- `{rec['id']}` note: {note}")
                if rec["error"]:
                    L_.append(f"- `{rec['id']}` {rec['status']}:")
                    L_.append("  ```\n" + "\n".join("  " + l for l in rec["error"].splitlines()[:12]) + "\n  ```")
        L_.append("")
    L_.append("## Commands run\n")
    L_.append(f"Files (JSON, plots, logs, per-run `.run.json` with /proc samples): `{outdir.relative_to(REPO) if outdir.is_relative_to(REPO) else outdir}/`\n")
    L_.append("Run from the repository root:\n")
    L_.append("```")
    L_.append(info.get("argv", ""))
    if build_cmd:
        L_.append(build_cmd)
    snap = cfg.snapshot_dir
    def show(c: str) -> str:  # repo-relative, with the snapshot shown as target/release
        if snap:
            c = c.replace(snap, str(REPO / "target/release"))
        return c.replace(str(REPO) + "/", "")

    for rec in records:
        L_.append(f"# {rec['id']}")
        L_.append(show(rec.get("broker_cmd", "")))
        if rec.get("loadgen_cmd"):
            L_.append(show(rec["loadgen_cmd"]))
    L_.append("```")
    if snap:
        L_.append("\nThe binaries ran from a copy of `target/release` taken at the start (so a concurrent "
                  "`cargo build` could not swap them mid-run); sha256: " +
                  ", ".join(f"{k} `{v}`" for k, v in info.get("binaries", {}).items()))
    confs = {rec.get("broker_config") for rec in records if rec.get("broker_config")}
    if confs:
        L_.append("\nMosquitto configuration (port varies per run):\n")
        L_.append("```\n" + sorted(confs)[0].rstrip() + "\n```")
    text = "\n".join(L_) + "\n"
    md_path.write_text(text)
    (outdir / "summary.json").write_text(json.dumps(
        {"info": info, "brokers": brokers, "scenarios": scen_names,
         "summary": {s: {b: {"ok": v["ok"], "runs": v["runs"], "median": v.get("median", {})}
                         for b, v in sd.items()} for s, sd in summary.items()},
         "runs": [{k: v for k, v in r.items() if k != "samples"} for r in records]},
        indent=1, default=str))
    return text_table(h, rows)


# --------------------------------------------------------------------------
# Self-test: brokers, /proc sampling, affinity, timeouts, report pipeline
# --------------------------------------------------------------------------

def mqtt_connect_packet(client_id: str, keepalive: int = 60) -> bytes:
    cid = client_id.encode()
    var = b"\x00\x04MQTT\x04\x02" + struct.pack("!H", keepalive)
    payload = struct.pack("!H", len(cid)) + cid
    body = var + payload
    return bytes([0x10, len(body)]) + body


def mqtt_open(port: int, client_id: str) -> socket.socket:
    s = socket.create_connection(("127.0.0.1", port), timeout=5)
    s.sendall(mqtt_connect_packet(client_id))
    ack = _recv_exact(s, 4)
    if ack[0] != 0x20 or ack[3] != 0:
        raise RuntimeError(f"bad CONNACK {ack!r}")
    return s


def _recv_exact(s: socket.socket, n: int) -> bytes:
    buf = b""
    while len(buf) < n:
        chunk = s.recv(n - len(buf))
        if not chunk:
            raise RuntimeError("connection closed")
        buf += chunk
    return buf


def mqtt_roundtrip(port: int) -> float:
    """SUBSCRIBE + PUBLISH QoS 0 through the broker; returns latency in ms."""
    sub, pub = mqtt_open(port, "selftest-sub"), mqtt_open(port, "selftest-pub")
    try:
        topic = b"bench/selftest"
        body = struct.pack("!H", 1) + struct.pack("!H", len(topic)) + topic + b"\x00"
        sub.sendall(bytes([0x82, len(body)]) + body)
        suback = _recv_exact(sub, 5)
        if suback[0] != 0x90:
            raise RuntimeError(f"bad SUBACK {suback!r}")
        payload = b"x" * 64
        body = struct.pack("!H", len(topic)) + topic + payload
        t0 = time.monotonic()
        pub.sendall(bytes([0x30, len(body)]) + body)
        hdr = _recv_exact(sub, 2)
        _recv_exact(sub, hdr[1])
        if hdr[0] & 0xF0 != 0x30:
            raise RuntimeError(f"expected PUBLISH, got {hdr!r}")
        return (time.monotonic() - t0) * 1000
    finally:
        sub.close()
        pub.close()


def fake_loadgen(argv: list[str]) -> int:
    """Stand-in for ringmq-loadgen used by --self-test: accepts the same CLI,
    holds a few real MQTT connections for --duration and writes a JSON of the
    contract's shape (numbers are fake, marked "fake": true)."""
    opts, pos, i = {}, [], 0
    while i < len(argv):
        a = argv[i]
        if a.startswith("--"):
            if a == "--quiet":
                opts[a] = True
                i += 1
            else:
                opts[a] = argv[i + 1]
                i += 2
        else:
            pos.append(a)
            i += 1
    port, dur = int(opts["--port"]), float(opts.get("--duration", 1))
    if opts.get("--fake-hang"):
        time.sleep(3600)
    n = min(50, int(opts.get("--devices") or opts.get("--publishers") or opts.get("--pairs") or 10))
    t0 = time.monotonic()
    socks = [mqtt_open(port, f"fake-{i}") for i in range(n)]
    conn_s = time.monotonic() - t0
    lat = [mqtt_roundtrip(port) * 1000 for _ in range(20)]
    time.sleep(float(opts.get("--ramp-up", 0)) + dur + float(opts.get("--drain", 0)))
    bpid = int(opts["--broker-pid"])
    b = read_proc(bpid) or {}
    lat.sort()
    pct = lambda q: lat[min(len(lat) - 1, int(q * len(lat)))]  # noqa: E731
    hist = {"p50": pct(.5), "p90": pct(.9), "p99": pct(.99), "p999": pct(.999), "max": lat[-1],
            "mean": sum(lat) / len(lat), "count": len(lat)}
    res = {"fake": True, "scenario": pos[0] if pos else None, "args": argv, "connections": n,
           "duration_s": dur, "sent": 20, "received": 20, "sent_per_s": 20 / dur, "received_per_s": 20 / dur,
           "expected": 20, "lost": 0, "duplicates": 0, "errors": 0, "latency_us": hist, "connack_us": hist,
           "connect_per_s": n / max(conn_s, 1e-6), "ramp_up_s": conn_s,
           "loadgen": {"cpu_pct": 1.0, "rss_kb": 10000, "rss_bytes_per_device": 1000},
           "broker": {"pid": bpid, "cpu_pct": 0.5, "rss_kb_start": 0, "rss_kb_end": b.get("rss_kb"),
                      "rss_bytes_per_connection": 5000}, "histogram_b64": ""}
    Path(opts["--json"]).write_text(json.dumps(res))
    Path(opts["--plot"]).write_text("<svg xmlns='http://www.w3.org/2000/svg'/>")
    for s in socks:
        s.close()
    return 0


def self_test(cfg: Config, brokers: list[str]) -> int:
    fails = 0

    def check(ok: bool, what: str):
        nonlocal fails
        print(("PASS " if ok else "FAIL ") + what, flush=True)
        if not ok:
            fails += 1

    outdir = Path(tempfile.mkdtemp(prefix="ringmq-bench-selftest-"))
    _TEMP_DIRS.append(str(outdir))
    check(read_proc(os.getpid()) is not None and read_proc(os.getpid())["ticks"] >= 0, "read /proc/self")
    busy = time.monotonic() + 0.6
    sm = Sampler(0.1)
    sm.add("self", os.getpid())
    sm.start()
    while time.monotonic() < busy:
        pass
    sm.stop()
    c = cpu_pct(sm.series["self"], 0, 1e18)
    check(c is not None and 50 < c < 150, f"sampler sees a busy loop as ~100% CPU (got {c})")

    for bname in brokers:
        spec = BROKERS[bname]
        port = cfg.next_port()
        b = Broker(spec, cfg, port, outdir / f"{bname}.log")
        try:
            t0 = time.monotonic()
            b.start()
            check(True, f"{bname}: started and listening on {port} in {time.monotonic() - t0:.2f}s "
                        f"(pid {b.pid}: {shlex.join(b.cmd)})")
            aff = thread_affinities(b.pid)
            if spec.pinned:
                check(aff and all(v == cfg.broker_cpus for v in aff.values()),
                      f"{bname}: all {len(aff)} threads pinned to CPU {cfg.broker_cpus} ({sorted(set(aff.values()))})")
            else:
                check(bool(aff), f"{bname}: thread affinities {aff}")
            s0 = read_proc(b.pid)
            sm = Sampler(0.2)
            sm.add("broker", b.pid)
            sm.start()
            socks = []
            try:
                for i in range(2000):
                    socks.append(mqtt_open(port, f"st-{i}"))
                check(True, f"{bname}: 2,000 MQTT 3.1.1 CONNECT/CONNACK (enough CPU for the tick counters to move)")
            except Exception as e:  # noqa: BLE001
                check(False, f"{bname}: MQTT connects ({len(socks)} ok): {e}")
            try:
                ms = mqtt_roundtrip(port)
                check(True, f"{bname}: SUBSCRIBE/PUBLISH round trip {ms:.2f} ms")
            except Exception as e:  # noqa: BLE001
                check(False, f"{bname}: SUBSCRIBE/PUBLISH round trip: {e}")
            time.sleep(0.5)
            sm.stop()
            s1 = read_proc(b.pid)
            ser = sm.series["broker"]
            check(len(ser) >= 3, f"{bname}: {len(ser)} /proc samples")
            check(s1["ticks"] > s0["ticks"], f"{bname}: CPU ticks advanced {s0['ticks']} -> {s1['ticks']} "
                                             f"({cpu_pct(ser, 0, 1e18):.1f}% over the sampling)")
            per = (s1["rss_kb"] - s0["rss_kb"]) * 1024 / max(len(socks), 1)
            check(s1["rss_kb"] >= s0["rss_kb"], f"{bname}: RSS {s0['rss_kb']} -> {s1['rss_kb']} kB "
                                                 f"(~{per:.0f} B/connection, VmHWM {s1['hwm_kb']} kB)")
            for s in socks:
                s.close()
        except Exception as e:  # noqa: BLE001
            check(False, f"{bname}: {type(e).__name__}: {e}")
        finally:
            st = b.stop()
            check(st["exit"] is not None and not st["was_dead"],
                  f"{bname}: stopped with SIGTERM in {st['stop_s']}s (exit {st['exit']}, sigkill={st['sigkill']})")
            check(read_proc(b.pid) is None, f"{bname}: pid {b.pid} gone")

    # Whole pipeline with the fake loadgen: run_one, timeouts, report.
    me = [sys.executable, str(Path(__file__).resolve()), "--fake-loadgen"]
    fcfg = Config(**{**cfg.__dict__, "loadgen": me[0], "quick": True, "repeat": 1, "duration": 1.0,
                     "drain": 0.5, "ramp_up": 0.0, "loadgen_extra": [], "timeout": 30.0})
    fcfg.loadgen_extra = []
    # loadgen_command() puts cfg.loadgen first; splice the script + flag in.
    orig = loadgen_command

    def lgc(c, s, p, pid, j, pl):
        cmd = orig(c, s, p, pid, j, pl)
        i = cmd.index(me[0])
        return cmd[:i + 1] + me[1:] + cmd[i + 1:]

    globals()["loadgen_command"] = lgc
    try:
        recs = []
        for sname in ("idle", "fanin-qos1"):
            for bname in brokers:
                recs.append(run_one(fcfg, SCEN_BY_NAME[sname], BROKERS[bname], 0, outdir))
        for r in recs:
            check(r["status"] == "ok", f"pipeline {r['id']}: status {r['status']} {r['error'] or ''}")
            check(r["h"].get("broker_cpu_pct") is not None and r["h"].get("broker_hwm_kb"),
                  f"pipeline {r['id']}: harness CPU {r['h'].get('broker_cpu_pct')}%, "
                  f"peak RSS {r['h'].get('broker_hwm_kb')} kB, bytes/conn {r['h'].get('broker_bytes_per_conn')}")
        hcfg = Config(**{**fcfg.__dict__, "timeout": 2.0, "loadgen_extra": ["--fake-hang", "1"]})
        t0 = time.monotonic()
        r = run_one(hcfg, SCEN_BY_NAME["idle"], BROKERS[brokers[0]], 98, outdir)
        check(r["status"] == "timeout" and time.monotonic() - t0 < 15,
              f"hung loadgen killed by the timeout ({r['status']}, {time.monotonic() - t0:.1f}s)")
        info = machine_info(fcfg, "mosquitto" in brokers)
        table = write_report(fcfg, info, recs + [r], brokers, ["idle", "fanin-qos1"], outdir,
                             outdir / "report.md", None, True)
        md = (outdir / "report.md").read_text()
        check("## Headline" in md and "### idle" in md and "ringmq/mosquitto" in md,
              f"report written ({len(md)} bytes)")
        print(table)
    finally:
        globals()["loadgen_command"] = orig
    with _LIVE_LOCK:
        left = list(_LIVE)
    check(not left, f"no processes left registered ({left})")
    print(f"\nself-test: {'OK' if fails == 0 else f'{fails} FAILED'} (files in {outdir}, removed at exit)")
    return 1 if fails else 0


# --------------------------------------------------------------------------
# main
# --------------------------------------------------------------------------

def parse_args(argv):
    p = argparse.ArgumentParser(
        description="Side-by-side benchmark of ringmq and Mosquitto (see bench/README.md).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--scenarios", default=",".join(s.name for s in SCENARIOS),
                   help="comma list of scenarios to run (see --list)")
    p.add_argument("--brokers", default="ringmq,mosquitto",
                   help="comma list of brokers: ringmq, mosquitto, ringmq-s2")
    p.add_argument("--with-shards2", action="store_true",
                   help="add the ringmq-s2 column: ringmq --shards 2, unpinned (whole machine)")
    p.add_argument("--repeat", type=int, default=None, help="repeats per broker and scenario (default 3, quick 1)")
    p.add_argument("--duration", type=float, default=None,
                   help="measurement seconds per run (default 10, quick 3); idle uses it as --hold")
    p.add_argument("--scenario-duration", action="append", default=[], metavar="NAME=SECS",
                   help="per-scenario measurement duration, repeatable (e.g. idle=20)")
    p.add_argument("--ramp-up", type=float, default=None,
                   help="loadgen --ramp-up: bound of the connect phase in seconds (default 10, pairs 20)")
    p.add_argument("--drain", type=float, default=2.0, help="loadgen drain seconds after the measurement")
    p.add_argument("--quick", action="store_true",
                   help="smoke test: 3 s runs, 1 repeat, fleets/10 (results are not results)")
    p.add_argument("--timeout", type=float, default=None,
                   help="hard timeout per loadgen run in seconds (default: duration+ramp+drain+60+conns/500)")
    p.add_argument("--mqtt-version", default="3", choices=["3", "5"])
    p.add_argument("--payload", type=int, default=64)
    p.add_argument("--idle-connect-rate", type=float, default=None,
                   help="loadgen --connect-rate for the idle fleet (default 20000/s, so that the broker and "
                        "not the loadgen's 5000/s default limits the connect rate)")
    p.add_argument("--tls", action="store_true",
                   help="both brokers listen with TLS only (an ECDSA P-256 certificate made for the "
                        "run); the loadgen connects with --tls")
    p.add_argument("--ws", action="store_true",
                   help="both brokers listen with MQTT over WebSocket only (with --tls: over TLS); "
                        "the loadgen connects with --ws")
    p.add_argument("--max-inflight", type=int, default=32)
    p.add_argument("--max-queued", type=int, default=1000)
    p.add_argument("--window", type=int, default=None, help="--window for fan-in/fan-out (loadgen default if unset)")
    p.add_argument("--port-base", type=int, default=18830, help="brokers listen on 127.0.0.1:port-base..+99")
    p.add_argument("--broker-cpus", default="0", help="CPU list the pinned brokers are bound to")
    p.add_argument("--loadgen-cpus", default="1", help="CPU list the loadgen is bound to ('' = unpinned)")
    p.add_argument("--loadgen-threads", type=int, default=None)
    p.add_argument("--loadgen-processes", type=int, default=None)
    p.add_argument("--loadgen-arg", action="append", default=[], metavar="ARG",
                   help="extra global argument passed to the loadgen, repeatable (e.g. --loadgen-arg=--keep-alive=60)")
    p.add_argument("--ringmq-arg", action="append", default=[], metavar="ARG",
                   help="extra argument passed to ringmq, repeatable")
    p.add_argument("--ringmq-log-level", default="warn")
    p.add_argument("--ringmq", default=str(REPO / "target/release/ringmq"))
    p.add_argument("--loadgen", default=str(REPO / "target/release/ringmq-loadgen"))
    p.add_argument("--mosquitto", default=None, help="mosquitto binary (default: PATH, /usr/sbin)")
    p.add_argument("--no-build", action="store_true", help="do not run cargo build first")
    p.add_argument("--out", default=str(BENCH / "results"), help="results directory")
    p.add_argument("--tag", default=None, help="suffix for the result names (default '-quick' with --quick)")
    p.add_argument("--sample-interval", type=float, default=0.25, help="/proc sampling period, seconds")
    p.add_argument("--list", action="store_true", help="list the scenarios and exit")
    p.add_argument("--report-from", metavar="DIR", default=None,
                   help="only rewrite the report from a results directory's summary.json (no runs)")
    p.add_argument("--dry-run", action="store_true", help="print the loadgen commands and exit")
    p.add_argument("--self-test", action="store_true",
                   help="start/stop each broker, sample /proc, check pinning, timeout and report code, then exit")
    return p.parse_args(argv)


def report_from(outdir: Path) -> int:
    """Re-render <outdir>.md from <outdir>/summary.json, with the options the
    runs were made with (parsed back from the recorded command line)."""
    data = json.loads((outdir / "summary.json").read_text())
    info, records = data["info"], data["runs"]
    info.setdefault("loadavg_end", "(not recorded)")
    old = shlex.split(info["argv"])[2:]
    a = parse_args(old)
    cfg = make_cfg(a, old)
    cfg.snapshot_dir = info.get("snapshot_dir")
    if not cfg.snapshot_dir:
        m = re.search(r"(/\S*ringmq-bench-bin-[^/\s]+)", " ".join(r.get("loadgen_cmd", "") for r in records))
        cfg.snapshot_dir = m.group(1) if m else None
    md_path = outdir.parent / f"{outdir.name}.md"
    table = write_report(cfg, info, records, data["brokers"], data["scenarios"], outdir, md_path,
                         info.get("build_cmd"), info.get("finished", True))
    print(table)
    print(f"rewrote {md_path}")
    return 0


def make_cfg(a, argv) -> Config:
    durations = {}
    for item in a.scenario_duration:
        k, _, v = item.partition("=")
        if k not in SCEN_BY_NAME or not v:
            sys.exit(f"--scenario-duration wants NAME=SECS with a known scenario, got {item!r}")
        durations[k] = float(v)
    quick = a.quick
    return Config(
        quick=quick, repeat=a.repeat or (1 if quick else 3),
        duration=a.duration or (3.0 if quick else 10.0), ramp_up=a.ramp_up, drain=a.drain,
        durations=durations, timeout=a.timeout, mqtt_version=a.mqtt_version, payload=a.payload,
        max_inflight=a.max_inflight, max_queued=a.max_queued, window=a.window, port_base=a.port_base,
        broker_cpus=a.broker_cpus, loadgen_cpus=a.loadgen_cpus, loadgen_threads=a.loadgen_threads,
        loadgen_processes=a.loadgen_processes, loadgen_extra=a.loadgen_arg, ringmq_extra=a.ringmq_arg,
        ringmq_log_level=a.ringmq_log_level, ringmq=a.ringmq, mosquitto=a.mosquitto or "mosquitto",
        loadgen=a.loadgen, out_root=Path(a.out),
        tag=a.tag if a.tag is not None else ("-quick" if quick else ""), sample_interval=a.sample_interval,
        idle_connect_rate=a.idle_connect_rate, argv=list(argv),
        tls_dir=make_tls_dir() if a.tls else None, ws=a.ws)


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--fake-loadgen"]:
        return fake_loadgen(argv[1:])
    a = parse_args(argv)
    if a.list:
        for s in SCENARIOS:
            print(f"{s.name:14} {s.kind:10} loadgen {s.lg} --qos {s.qos} {' '.join(s.full)}\n"
                  f"{'':14} {'':10} quick:  {' '.join(s.quick)}\n{'':14} {s.title}")
        return 0
    scen_names = [s.strip() for s in a.scenarios.split(",") if s.strip()]
    bad = [s for s in scen_names if s not in SCEN_BY_NAME]
    if bad:
        sys.exit(f"unknown scenario(s) {bad}; known: {', '.join(SCEN_BY_NAME)}")
    brokers = [b.strip() for b in a.brokers.split(",") if b.strip()]
    if a.with_shards2 and "ringmq-s2" not in brokers:
        brokers.append("ringmq-s2")
    bad = [b for b in brokers if b not in BROKERS]
    if bad:
        sys.exit(f"unknown broker(s) {bad}; known: {', '.join(BROKERS)}")
    cfg = make_cfg(a, argv)
    if cfg.repeat < 1:
        sys.exit("--repeat must be >= 1")
    if a.report_from:
        return report_from(Path(a.report_from))

    install_cleanup_handlers()
    need_mosq = "mosquitto" in brokers
    if a.dry_run:
        cfg.mosquitto = find_mosquitto(a.mosquitto) or "mosquitto"
        for sname in scen_names:
            for b in brokers:
                print(f"# {sname} / {b}: {shlex.join(Broker(BROKERS[b], cfg, 18830, Path('/dev/null')).cmd)}")
                print(shlex.join(loadgen_command(cfg, SCEN_BY_NAME[sname], 18830, 0,
                                                 Path(f"{sname}-{b}.json"), Path(f"{sname}-{b}.svg"))))
        return 0
    if need_mosq:
        cfg.mosquitto = ensure_mosquitto(a.mosquitto)
    if shutil.which("taskset") is None and (cfg.broker_cpus or cfg.loadgen_cpus):
        sys.exit("taskset (util-linux) is needed for pinning; install it or pass --broker-cpus '' --loadgen-cpus ''")
    needed = max(int(c) for c in re.findall(r"\d+", f"{cfg.broker_cpus},{cfg.loadgen_cpus}") or ["0"])
    if needed >= (os.cpu_count() or 1):
        sys.exit(f"CPU {needed} requested but the machine has {os.cpu_count()} CPUs; "
                 f"adjust --broker-cpus/--loadgen-cpus")

    build_cmd = None
    if not a.no_build and not a.self_test:
        build(cfg)
        build_cmd = "cargo build --release -p ringmq -p ringmq-loadgen --bin ringmq --bin ringmq-loadgen"
    if any(BROKERS[b].kind == "ringmq" for b in brokers) and not os.access(cfg.ringmq, os.X_OK):
        sys.exit(f"ringmq binary not found at {cfg.ringmq} (build it or pass --ringmq)")

    if a.self_test:
        return self_test(cfg, brokers)

    if not os.access(cfg.loadgen, os.X_OK):
        sys.exit(f"loadgen binary not found at {cfg.loadgen} (cargo build --release -p ringmq-loadgen, "
                 f"or pass --loadgen)")

    info = machine_info(cfg, need_mosq)
    info["binaries"] = snapshot_binaries(cfg, any(BROKERS[b].kind == "ringmq" for b in brokers))
    date = _dt.date.today().isoformat()
    host = re.sub(r"[^A-Za-z0-9_.-]", "_", info["hostname"])
    stem = f"{date}-{host}{cfg.tag}"
    outdir = cfg.out_root / stem
    outdir.mkdir(parents=True, exist_ok=True)
    md_path = cfg.out_root / f"{stem}.md"
    total = len(scen_names) * len(brokers) * cfg.repeat
    log(f"{total} runs: scenarios {scen_names} x brokers {brokers} x {cfg.repeat} repeats -> {md_path}")

    records: list[dict] = []
    finished = False
    try:
        for sname in scen_names:
            scn = SCEN_BY_NAME[sname]
            for rep in range(cfg.repeat):
                for bname in brokers:  # A B A B ...: drifts of a shared machine hit both
                    records.append(run_one(cfg, scn, BROKERS[bname], rep, outdir))
                    time.sleep(1.0)  # let sockets and the page cache settle between runs
        finished = True
    finally:
        if records:
            table = write_report(cfg, info, records, brokers, scen_names, outdir, md_path, build_cmd, finished)
            print()
            print(f"Headline (medians of {cfg.repeat} repeat(s); full report: {md_path})")
            print(table)
    failed = [r["id"] for r in records if r["status"] != "ok"]
    if failed:
        log(f"{len(failed)} run(s) failed: {', '.join(failed)}")
    return 0 if not failed else 2


if __name__ == "__main__":
    sys.exit(main())
