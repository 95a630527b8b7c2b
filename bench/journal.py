#!/usr/bin/env python3
"""Journal benchmark: durable QoS 1 in ringmq (--fsync always / every=2 / never)
next to in-memory QoS 1 and next to Mosquitto with `persistence true`, in the
same run; plus a recovery measurement (N persistent sessions holding M queued
messages, kill -9, restart on the same --data-dir).

Python 3.11 standard library only; reuses bench/run.py's process handling and
/proc sampling.  See bench/README.md ("Journal benchmark") for how to read it.

    python3 bench/journal.py                          # matrix (3 repeats) + recovery
    python3 bench/journal.py --quick                  # 3 s runs, 1 repeat, 10,000 sessions
    python3 bench/journal.py --no-recovery            # matrix only
    python3 bench/journal.py --no-matrix --sessions 100000 --messages 1000000
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import run as R  # noqa: E402  (bench/run.py)

BROKER_CPU, LOADGEN_CPU = "0", "1"


@dataclass
class JBroker:
    name: str
    kind: str                 # ringmq | mosquitto
    ringmq_args: list[str]
    persistent_subs: bool
    desc: str


BROKERS = [
    JBroker("always", "ringmq", ["--fsync", "always"], True,
            "ringmq --shards 1 --fsync always, persistent subscribers (journaled)"),
    JBroker("every2", "ringmq", ["--fsync", "every=2"], True,
            "ringmq --shards 1 --fsync every=2 (the default), persistent subscribers (journaled)"),
    JBroker("never", "ringmq", ["--fsync", "never"], True,
            "ringmq --shards 1 --fsync never, persistent subscribers (journaled, not synced)"),
    JBroker("in-memory", "ringmq", [], False,
            "ringmq --shards 1, clean-session subscribers (the journal is not touched)"),
    JBroker("mosquitto", "mosquitto", [], True,
            "Mosquitto, persistence true (autosave_interval default 1800 s), persistent subscribers"),
]
BROKER_BY_NAME = {b.name: b for b in BROKERS}


@dataclass
class JScenario:
    name: str
    args: list[str]
    title: str


SCENARIOS = [
    JScenario("pairs-closed", ["pairs", "--pairs", "100", "--rate", "0", "--window", "16"],
              "100 publishers -> 100 subscribers (one topic each), QoS 1, closed loop, window 16"),
    JScenario("fanin-closed", ["fan-in", "--publishers", "100", "--subscribers", "1", "--window", "16"],
              "fan-in 100 publishers -> 1 subscriber of bench/fanin/#, QoS 1, closed loop, window 16"),
    JScenario("fanin-open", ["fan-in", "--publishers", "100", "--subscribers", "1", "--rate", "100"],
              "fan-in 100 publishers -> 1 subscriber, QoS 1, open loop 100 msgs/s each = 10,000 msgs/s"),
]
# Not in the default matrix (--scenarios NAME,...).
EXTRA_SCENARIOS = [
    JScenario("fanin-open-1k", ["fan-in", "--publishers", "100", "--subscribers", "1", "--rate", "10"],
              "fan-in 100 publishers -> 1 subscriber, QoS 1, open loop 10 msgs/s each = 1,000 msgs/s"),
    JScenario("pairs-open", ["pairs", "--pairs", "100", "--rate", "100"],
              "100 publishers -> 100 subscribers (one topic each), QoS 1, open loop 100 msgs/s each = "
              "10,000 msgs/s"),
]
SCEN_BY_NAME = {s.name: s for s in SCENARIOS + EXTRA_SCENARIOS}

_PORT = [18950]


def next_port() -> int:
    while True:
        _PORT[0] += 1
        if _PORT[0] > 19400:
            _PORT[0] = 18951
        if R.port_free(_PORT[0]):
            return _PORT[0]


def loadavg() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


def du_bytes(path: str) -> tuple[int, int]:
    """(allocated bytes, apparent bytes) of the files under path."""
    alloc = app = 0
    for root, _dirs, files in os.walk(path):
        for f in files:
            try:
                st = os.stat(os.path.join(root, f))
            except OSError:
                continue
            alloc += st.st_blocks * 512
            app += st.st_size
    return alloc, app


def fdatasync_latency(dirpath: str, n: int = 200) -> dict:
    """4 KiB write + os.fdatasync, n times, in dirpath (the filesystem the brokers use)."""
    path = os.path.join(dirpath, "fdatasync-probe")
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o644)
    buf = os.urandom(4096)
    lat = []
    try:
        for i in range(n):
            os.pwrite(fd, buf, (i % 256) * 4096)
            t = time.perf_counter()
            os.fdatasync(fd)
            lat.append((time.perf_counter() - t) * 1e6)
    finally:
        os.close(fd)
        os.unlink(path)
    lat.sort()
    q = lambda p: round(lat[min(len(lat) - 1, int(p * len(lat)))])  # noqa: E731
    return {"n": n, "p50_us": q(0.50), "p90_us": q(0.90), "p99_us": q(0.99), "max_us": round(lat[-1])}


class Proc:
    """One broker process with its own data directory (kept across restarts)."""

    def __init__(self, b: JBroker, cfg, workdir: str, log_level: str = "warn"):
        self.b, self.cfg, self.workdir = b, cfg, workdir
        self.data = os.path.join(workdir, "data")
        os.makedirs(self.data, exist_ok=True)
        # Mosquitto started as root drops to the `mosquitto` user: let it write its db.
        os.chmod(workdir, 0o777)
        os.chmod(self.data, 0o777)
        self.log_level = log_level
        self.metrics = False
        self.proc: subprocess.Popen | None = None
        self.port = 0
        self.cmd: list[str] = []
        self.logfile = ""

    def start(self, logfile: str, timeout: float = 30.0) -> float:
        """Starts the broker; returns seconds from exec to its port accepting."""
        self.port = next_port()
        pre = ["taskset", "-c", BROKER_CPU]
        if self.b.kind == "ringmq":
            self.cmd = pre + [self.cfg.ringmq, "--shards", "1", "--listen", f"127.0.0.1:{self.port}",
                              "--data-dir", self.data, "--metrics-addr",
                              f"127.0.0.1:{self.port + 1000}" if self.metrics else "none",
                              "--max-inflight", "32", "--max-queued-messages", "1000",
                              "--log-level", self.log_level] + self.b.ringmq_args
        else:
            conf = os.path.join(self.workdir, "mosquitto.conf")
            Path(conf).write_text("\n".join([
                f"listener {self.port} 127.0.0.1", "allow_anonymous true",
                "max_inflight_messages 32", "max_queued_messages 1000",
                "persistence true", f"persistence_location {self.data}/",
                "max_connections -1", "set_tcp_nodelay true",
                "log_dest stderr", "log_type error", ""]))
            self.cmd = pre + [self.cfg.mosquitto, "-c", conf]
        self.logfile = logfile
        logf = open(logfile, "ab")
        t0 = time.monotonic()
        self.proc = subprocess.Popen(self.cmd, stdin=subprocess.DEVNULL, stdout=logf, stderr=subprocess.STDOUT,
                                     start_new_session=True, cwd=self.workdir)
        logf.close()
        R._register(self.proc, "broker")
        while time.monotonic() - t0 < timeout:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.b.name} exited with {self.proc.returncode}:\n{R.tail(Path(logfile))}")
            if R.port_open(self.port):
                return time.monotonic() - t0
            time.sleep(0.01)
        raise RuntimeError(f"{self.b.name} did not listen within {timeout}s:\n{R.tail(Path(logfile))}")

    @property
    def pid(self) -> int:
        return self.proc.pid

    def scrape(self) -> str | None:
        """GET /metrics (ringmq with metrics on), or None."""
        if self.b.kind != "ringmq" or not self.metrics:
            return None
        import urllib.request
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port + 1000}/metrics", timeout=5) as r:
                return r.read().decode()
        except OSError:
            return None

    def rss_kb(self) -> int | None:
        s = R.read_proc(self.pid)
        return s["rss_kb"] if s else None

    def stop(self, sig=signal.SIGTERM, grace: float = 120.0) -> float:
        """Sends sig; returns seconds until the process exited."""
        if self.proc is None:
            return 0.0
        t0 = time.monotonic()
        if self.proc.poll() is None:
            R._signal_group(self.proc, sig)
            try:
                self.proc.wait(timeout=grace)
            except subprocess.TimeoutExpired:
                R._signal_group(self.proc, signal.SIGKILL)
                self.proc.wait(timeout=10)
        R._unregister(self.proc)
        return time.monotonic() - t0


def journal_sync_stats(text: str) -> dict:
    """From ringmq's Prometheus text: the journal sync (commit) time histogram, summed over
    shards, as count, median and p99 bucket bounds (ms) and the largest non-empty bucket."""
    buckets: dict[float, float] = {}
    for line in text.splitlines():
        m = re.match(r'ringmq_journal_commit_seconds_bucket\{.*le="([^"]+)".*\}\s+(\S+)', line)
        if m:
            le = float("inf") if m.group(1) == "+Inf" else float(m.group(1))
            buckets[le] = buckets.get(le, 0.0) + float(m.group(2))
    if not buckets:
        return {}
    les = sorted(buckets)
    total = buckets[les[-1]]
    if total <= 0:
        return {"sync_count": 0}

    def q(p):
        for le in les:
            if buckets[le] >= p * total:
                return le * 1000
        return float("inf")
    last = next((le for le in les if buckets[le] >= total), les[-1])
    return {"sync_count": int(total), "sync_p50_ms_le": q(0.5), "sync_p99_ms_le": q(0.99),
            "sync_max_ms_le": last * 1000}


def loadgen(cfg, port: int, args: list[str], json_path: str, broker_pid: int | None,
            timeout: float, persistent: bool = False, extra: list[str] | None = None) -> dict:
    cmd = ["taskset", "-c", LOADGEN_CPU, cfg.loadgen, "--port", str(port), "--cpus", LOADGEN_CPU,
           "--quiet", "--json", json_path] + (["--broker-pid", str(broker_pid)] if broker_pid else []) \
        + (["--persistent-subscribers"] if persistent else []) + (extra or []) + args
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
    R._register(p, "loadgen")
    try:
        out, _ = p.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        R._signal_group(p, signal.SIGKILL)
        out, _ = p.communicate()
        raise RuntimeError(f"loadgen timed out: {shlex.join(cmd)}")
    finally:
        R._unregister(p)
    if p.returncode != 0 or not os.path.exists(json_path):
        raise RuntimeError(f"loadgen exit {p.returncode}: {shlex.join(cmd)}\n{out.decode(errors='replace')[-2000:]}")
    res = json.loads(Path(json_path).read_text())
    res["_cmd"] = shlex.join(cmd)
    return res


# --------------------------------------------------------------------------
# Matrix
# --------------------------------------------------------------------------

def run_one(cfg, scn: JScenario, b: JBroker, rep: int, outdir: Path) -> dict:
    tag = f"{scn.name}-{b.name}-r{rep}"
    work = tempfile.mkdtemp(prefix=f"ringmq-journal-{b.name}-")
    R._TEMP_DIRS.append(work)
    rec = {"run": tag, "scenario": scn.name, "broker": b.name, "rep": rep, "loadavg": loadavg(), "status": "ok"}
    br = Proc(b, cfg, work)
    br.metrics = cfg.metrics
    sampler = R.Sampler(interval=0.5, cpus=[int(BROKER_CPU), int(LOADGEN_CPU)])
    try:
        br.start(str(outdir / f"{tag}.broker.log"))
        rec["broker_cmd"] = shlex.join(br.cmd)
        sampler.start()
        sampler.add("broker", br.pid)
        t0 = time.monotonic()
        args = ["--qos", "1", "--duration", str(cfg.duration)] + scn.args
        res = loadgen(cfg, br.port, args, str(outdir / f"{tag}.json"), br.pid,
                      timeout=cfg.duration + 60, persistent=b.persistent_subs)
        t1 = time.monotonic()
        rec["loadgen_cmd"] = res["_cmd"]
        rec["disk_alloc"], rec["disk_apparent"] = du_bytes(br.data)
        mtext = br.scrape()
        if mtext:
            (outdir / f"{tag}.metrics.txt").write_text(mtext)
            rec.update(journal_sync_stats(mtext))
        pa, lat = res.get("puback_us", {}), res.get("latency_us", {})
        rec.update({
            "acked_per_s": res.get("acked_per_s"), "received_per_s": res.get("received_per_s"),
            "sent_per_s": res.get("sent_per_s"),
            "puback_p50": pa.get("p50"), "puback_p99": pa.get("p99"), "puback_p999": pa.get("p999"),
            "puback_max": pa.get("max"),
            "deliv_p50": lat.get("p50"), "deliv_p99": lat.get("p99"),
            "lost": res.get("lost"), "errors": res.get("errors"), "first_error": res.get("first_error"),
            "broker_cpu": (res.get("broker") or {}).get("cpu_pct"),
            "loadgen_cpu": (res.get("loadgen") or {}).get("cpu_pct"),
            "broker_rss_kb": (res.get("broker") or {}).get("rss_kb_end"),
        })
        steal = [R.cpu_pct(sampler.series.get(f"steal{c}", []), t0, t1) for c in (0, 1)]
        steal = [s for s in steal if s is not None]
        rec["steal_pct"] = round(sum(steal) / len(steal), 1) if steal else None
        # Busy time of both CPUs not used by the broker or the loadgen (other engineers' builds and
        # tests on this shared machine), in % of one CPU, over the loadgen run.
        busy = [R.cpu_pct(sampler.series.get(f"cpu{c}", []), t0, t1) for c in (0, 1)]
        bcpu = R.cpu_pct(sampler.series.get("broker", []), t0, t1)
        if None not in busy and bcpu is not None and rec["loadgen_cpu"] is not None:
            rec["other_cpu_pct"] = round(max(0.0, sum(busy) - bcpu - rec["loadgen_cpu"]), 1)
        if res.get("errors"):
            rec["status"] = "errors"
    except Exception as e:  # noqa: BLE001
        rec["status"] = "failed"
        rec["error"] = str(e)[-1500:]
        R.log(f"{tag}: FAILED: {e}")
    finally:
        sampler.stop()
        br.stop()
        R.shutil.rmtree(work, ignore_errors=True)
        if work in R._TEMP_DIRS:
            R._TEMP_DIRS.remove(work)
    R.log(f"{tag}: acked/s {rec.get('acked_per_s')} delivered/s {rec.get('received_per_s')} "
          f"pub->ack p50/p99/p999 µs {rec.get('puback_p50')}/{rec.get('puback_p99')}/{rec.get('puback_p999')} "
          f"lost {rec.get('lost')} load {rec['loadavg']}")
    return rec


# --------------------------------------------------------------------------
# Recovery
# --------------------------------------------------------------------------

RECOVERED = re.compile(r"journal recovered.*")


def kv(line: str) -> dict:
    line = R.ANSI.sub("", line)
    return dict(re.findall(r"(\w+)=(\S+)", line))


def recovery(cfg, b: JBroker, outdir: Path) -> dict:
    """N persistent sessions (batches of `cfg.batch`: connect, subscribe
    bench/idle/<i>, disconnect), M QoS 1 messages to pseudo-random ones of
    those topics, then: ringmq kill -9 + restart; Mosquitto graceful stop
    (it saves its db only then) + restart.  Then one batch of sessions
    reconnects and counts its queued deliveries."""
    work = tempfile.mkdtemp(prefix=f"ringmq-journal-rec-{b.name}-")
    R._TEMP_DIRS.append(work)
    out = {"broker": b.name, "sessions": cfg.sessions, "messages": cfg.messages, "loadavg_start": loadavg()}
    br = Proc(b, cfg, work, log_level="info")
    log = str(outdir / f"recovery-{b.name}.broker.log")
    try:
        br.start(log)
        out["broker_cmd"] = shlex.join(br.cmd)
        out["rss_kb_empty"] = br.rss_kb()
        t = time.monotonic()
        made = 0
        for k in range(0, cfg.sessions, cfg.batch):
            n = min(cfg.batch, cfg.sessions - k)
            res = loadgen(cfg, br.port, ["--qos", "1", "--connect-rate", "20000", "--ramp-up", "60",
                                         "--run-tag", f"s{k // cfg.batch}", "idle", "--devices", str(n),
                                         "--first", str(k), "--hold", "0"],
                          str(outdir / f"recovery-{b.name}-sessions-{k // cfg.batch}.json"), None,
                          timeout=180, persistent=True)
            made += res["connections"]
            if k == 0:
                out["sessions_cmd_first_batch"] = res["_cmd"]
        out["sessions_made"] = made
        out["sessions_s"] = round(time.monotonic() - t, 1)
        R.log(f"recovery {b.name}: {made} sessions in {out['sessions_s']} s")
        pubs = 20
        rate = 2500.0 if b.kind == "ringmq" else 1000.0
        dur = cfg.messages / pubs / rate
        t = time.monotonic()
        res = loadgen(cfg, br.port, ["--qos", "1", "--duration", f"{dur:g}", "--drain", "600",
                                     "fan-in", "--publishers", str(pubs), "--subscribers", "0",
                                     "--rate", f"{rate:g}", "--target-topics", str(cfg.sessions)],
                      str(outdir / f"recovery-{b.name}-fill.json"), br.pid, timeout=dur + 700)
        out["fill_cmd"] = res["_cmd"]
        out["fill_s"] = round(time.monotonic() - t, 1)
        out["fill_sent"], out["fill_acked"] = res["sent"], res["acked"]
        pa = res.get("puback_us", {})
        out["fill_puback_p50"], out["fill_puback_p99"] = pa.get("p50"), pa.get("p99")
        out["rss_kb_before_stop"] = br.rss_kb()
        s = R.read_proc(br.pid)
        out["hwm_kb_before_stop"] = s["hwm_kb"] if s else None
        R.log(f"recovery {b.name}: {res['acked']} of {res['sent']} messages acknowledged in {out['fill_s']} s")
        if b.kind == "ringmq":
            out["disk_alloc"], out["disk_apparent"] = du_bytes(br.data)
            out["stop"] = "kill -9"
            out["stop_s"] = round(br.stop(signal.SIGKILL), 3)
        else:
            out["stop"] = "SIGTERM (Mosquitto writes its db at shutdown; kill -9 would lose it)"
            out["stop_s"] = round(br.stop(signal.SIGTERM, grace=600), 3)
            out["disk_alloc"], out["disk_apparent"] = du_bytes(br.data)
        Path(log).open("a").write("\n===== restart =====\n")
        out["restart_to_listen_s"] = round(br.start(log, timeout=600), 3)
        time.sleep(1.0)
        out["rss_kb_after_recovery"] = br.rss_kb()
        if b.kind == "ringmq":
            lines = [R.ANSI.sub("", l) for l in Path(log).read_text(errors="replace").splitlines()]
            after = lines[max(i for i, l in enumerate(lines) if "===== restart" in l):]
            rl = [l for l in after if "journal recovered" in l]
            if rl:
                out["journal_recovered"] = {k: v for k, v in kv(rl[-1]).items()
                                            if k in ("segments", "records", "sessions", "messages", "took_ms",
                                                     "torn_tail", "cut_bytes")}
                out["journal_recovered_line"] = rl[-1]
        # Reconnect the first batch and count what was queued for it.
        res = loadgen(cfg, br.port, ["--qos", "1", "--connect-rate", "20000", "--ramp-up", "60", "--drain", "0",
                                     "--run-tag", "s0", "idle", "--devices", str(min(cfg.batch, cfg.sessions)),
                                     "--first", "0", "--hold", "5"],
                      str(outdir / f"recovery-{b.name}-reconnect.json"), br.pid, timeout=180, persistent=True)
        out["reconnect_cmd"] = res["_cmd"]
        out["reconnect_sessions"] = res["connections"]
        out["reconnect_delivered"] = res["received"] + res.get("stale", 0)
        out["reconnect_connack_p50"] = res["connack_us"]["p50"]
        out["reconnect_connack_p99"] = res["connack_us"]["p99"]
        out["rss_kb_after_reconnect"] = br.rss_kb()
        out["status"] = "ok"
    except Exception as e:  # noqa: BLE001
        out["status"] = "failed"
        out["error"] = str(e)[-2000:]
        R.log(f"recovery {b.name}: FAILED: {e}")
    finally:
        br.stop(signal.SIGKILL)
        R.shutil.rmtree(work, ignore_errors=True)
        if work in R._TEMP_DIRS:
            R._TEMP_DIRS.remove(work)
    out["loadavg_end"] = loadavg()
    R.log(f"recovery {b.name}: {json.dumps({k: v for k, v in out.items() if not k.endswith('cmd')})}")
    return out


# --------------------------------------------------------------------------
# Report
# --------------------------------------------------------------------------

def med(vals):
    v = [x for x in vals if isinstance(x, (int, float))]
    return statistics.median(v) if v else None


def fnum(v, nd=0):
    if v is None:
        return "-"
    if v == float("inf"):
        return "> top bucket"
    if isinstance(v, float) and nd:
        return f"{v:,.{nd}f}"
    return f"{round(v):,}"


def ratio(a, b):
    if a is None or b in (None, 0):
        return "-"
    return f"{a / b:.2f}x"


METRICS = [
    ("acked_per_s", "acknowledged publishes/s"),
    ("received_per_s", "delivered/s"),
    ("puback_p50", "publish->PUBACK p50 (µs)"),
    ("puback_p99", "publish->PUBACK p99 (µs)"),
    ("puback_p999", "publish->PUBACK p99.9 (µs)"),
    ("deliv_p99", "publish->delivery p99 (µs)"),
    ("lost", "lost (not delivered)"),
    ("broker_cpu", "broker CPU %"),
    ("disk_alloc", "data dir on disk at the end (MiB)"),
    ("steal_pct", "hypervisor steal % (both CPUs)"),
    ("other_cpu_pct", "other processes' CPU % (both CPUs)"),
    ("sync_p50_ms_le", "journal sync time p50, bucket bound (ms; --metrics)"),
    ("sync_p99_ms_le", "journal sync time p99, bucket bound (ms; --metrics)"),
    ("sync_max_ms_le", "journal sync time max, bucket bound (ms; --metrics)"),
]


def write_report(cfg, info: dict, records: list[dict], recs: list[dict], path: Path) -> str:
    L = []
    L.append("# ringmq journal benchmark: durable QoS 1 vs in-memory vs Mosquitto (persistence on)\n")
    raw = path.with_suffix("")
    try:
        raw = raw.relative_to(R.REPO)
    except ValueError:
        pass
    L.append(f"{info['started']} on `{info['hostname']}`. Generated by `bench/journal.py`; raw JSON and logs in "
             f"`{raw}/`.\n")
    L.append("## Machine\n")
    L.append("|  |  |\n| --- | --- |")
    for k in ("cpu", "cores", "ram_gib", "kernel", "mosquitto", "ringmq_version", "commit", "open_files_limit"):
        L.append(f"| {k} | {info.get(k)} |")
    L.append(f"| binaries (sha256/16) | ringmq {info['bin'].get('ringmq')}, loadgen {info['bin'].get('loadgen')} |")
    L.append(f"| disk | {info['disk']} |")
    fs = info["fdatasync"]
    L.append(f"| fdatasync of a 4 KiB write ({fs['n']}x, same filesystem as the data dirs) | "
             f"p50 {fs['p50_us']} µs, p90 {fs['p90_us']} µs, p99 {fs['p99_us']} µs, max {fs['max_us']} µs |")
    L.append(f"| load average at start / end | {info['loadavg_start']} / {info.get('loadavg_end')} |")
    L.append(f"| command | `{info['argv']}` |")
    L.append("")
    if records:
        L.append("## Setup\n")
        L.append(f"- each run: fresh broker, pinned with `taskset -c {BROKER_CPU}`; loadgen `taskset -c {LOADGEN_CPU}`"
                 f" `--cpus {LOADGEN_CPU}` (one executor); {cfg.duration:g} s measurement, {cfg.repeat} repeats, "
                 "brokers alternating within each repeat; MQTT 3.1.1, 64 B payload, --max-inflight 32 / "
                 "max_inflight_messages 32, --max-queued-messages 1000 / max_queued_messages 1000.")
        L.append("- columns:")
        for b in BROKERS:
            if b.name in cfg.brokers:
                L.append(f"  - **{b.name}**: {b.desc}")
        L.append("- persistent subscribers = `--persistent-subscribers` (CONNECT with Clean Session 0); publishers "
                 "are clean sessions. `acknowledged publishes/s` = PUBACKs the publishers received in the window; "
                 "`publish->PUBACK` = from the time stamped into the PUBLISH (open loop: its intended send time) to "
                 "its PUBACK, on the publisher; `delivered/s` = PUBLISHes the subscribers received in the window.")
        L.append("")
        L.append("## Headline (medians of the repeats)\n")
        for scn in [SCEN_BY_NAME[s] for s in cfg.scenarios]:
            rs = [r for r in records if r["scenario"] == scn.name]
            if not rs:
                continue
            L.append(f"### {scn.name}: {scn.title}\n")
            cols = [b for b in cfg.brokers]
            meds = {b: {m: med([r.get(m) for r in rs if r["broker"] == b and r["status"] != "failed"])
                        for m, _ in METRICS} for b in cols}
            for b in cols:
                if meds[b]["disk_alloc"] is not None:
                    meds[b]["disk_alloc"] = meds[b]["disk_alloc"] / 2**20
            ok = {b: f"{sum(1 for r in rs if r['broker'] == b and r['status'] == 'ok')}/"
                     f"{sum(1 for r in rs if r['broker'] == b)}" for b in cols}
            durable = [b for b in ("always", "every2", "never") if b in cols]
            hdr = ["metric (median)"] + cols
            hdr += [f"{d}/in-memory" for d in durable if "in-memory" in cols]
            hdr += [f"{d}/mosquitto" for d in durable if "mosquitto" in cols]
            L.append("| " + " | ".join(hdr) + " |")
            L.append("| --- " + "| ---: " * (len(hdr) - 1) + "|")
            L.append("| runs ok | " + " | ".join(ok[b] for b in cols) + " |" + " |" * (len(hdr) - 1 - len(cols)))
            for m, label in METRICS:
                if all(meds[b][m] is None for b in cols):
                    continue
                nd = 1 if m in ("broker_cpu", "steal_pct", "disk_alloc", "other_cpu_pct") or m.startswith("sync_") else 0
                row = [label] + [fnum(meds[b][m], nd) for b in cols]
                if m in ("lost", "broker_cpu", "disk_alloc", "steal_pct", "other_cpu_pct") or m.startswith("sync_"):
                    row += [""] * (len(hdr) - len(row))
                else:
                    row += [ratio(meds[d][m], meds["in-memory"][m]) for d in durable if "in-memory" in cols]
                    row += [ratio(meds[d][m], meds["mosquitto"][m]) for d in durable if "mosquitto" in cols]
                L.append("| " + " | ".join(row) + " |")
            L.append("")
        L.append("## Raw repeats\n")
        L.append("| run | status | load avg | acked/s | delivered/s | PUBACK p50 | p99 | p99.9 | lost | broker CPU % "
                 "| steal % | other CPU % |")
        L.append("| --- | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
        for r in records:
            L.append(f"| {r['run']} | {r['status']} | {r['loadavg']} | {fnum(r.get('acked_per_s'))} | "
                     f"{fnum(r.get('received_per_s'))} | {fnum(r.get('puback_p50'))} | {fnum(r.get('puback_p99'))} | "
                     f"{fnum(r.get('puback_p999'))} | {fnum(r.get('lost'))} | {fnum(r.get('broker_cpu'), 1)} | "
                     f"{fnum(r.get('steal_pct'), 1)} | {fnum(r.get('other_cpu_pct'), 1)} |")
        L.append("")
        L.append("Exact commands of the first repeat:\n")
        L.append("```sh")
        seen = set()
        for r in records:
            k = (r["scenario"], r["broker"])
            if k in seen or "loadgen_cmd" not in r:
                continue
            seen.add(k)
            L.append(f"# {r['run']}\n{r.get('broker_cmd')}\n{r['loadgen_cmd']}")
        L.append("```\n")
    if recs:
        L.append("## Recovery\n")
        hdr = ["", *[r["broker"] for r in recs]]
        L.append("| " + " | ".join(hdr) + " |")
        L.append("| --- " + "| ---: " * len(recs) + "|")

        def row(label, f):
            L.append("| " + label + " | " + " | ".join(f(r) for r in recs) + " |")

        mib = lambda v: "-" if v is None else f"{v / 2**20:,.1f} MiB"  # noqa: E731
        kib = lambda v: "-" if v is None else f"{v / 1024:,.1f} MiB"  # noqa: E731
        row("status", lambda r: r.get("status", "-"))
        row("sessions made (connect, subscribe, disconnect)", lambda r: f"{fnum(r.get('sessions_made'))} in "
            f"{r.get('sessions_s')} s")
        row("QoS 1 messages published / acknowledged", lambda r: f"{fnum(r.get('fill_sent'))} / "
            f"{fnum(r.get('fill_acked'))} in {r.get('fill_s')} s")
        row("fill publish->PUBACK p50 / p99 (µs)", lambda r: f"{fnum(r.get('fill_puback_p50'))} / "
            f"{fnum(r.get('fill_puback_p99'))}")
        row("broker RSS before the stop", lambda r: kib(r.get("rss_kb_before_stop")))
        row("stop", lambda r: f"{r.get('stop')} ({r.get('stop_s')} s)")
        row("data on disk (allocated / apparent)", lambda r: f"{mib(r.get('disk_alloc'))} / "
            f"{mib(r.get('disk_apparent'))}")
        row("**restart: exec to port accepting**", lambda r: f"**{r.get('restart_to_listen_s')} s**")
        row("journal recovered (ringmq log)", lambda r: ", ".join(f"{k}={v}" for k, v in
                                                                   (r.get("journal_recovered") or {}).items()) or "-")
        row("**RSS after recovery** (1 s after listening)", lambda r: f"**{kib(r.get('rss_kb_after_recovery'))}**")
        row(f"reconnect first {cfg.batch:,} sessions: delivered queued messages",
            lambda r: f"{fnum(r.get('reconnect_delivered'))} to {fnum(r.get('reconnect_sessions'))} sessions")
        row("... their CONNACK p50 / p99 (µs)", lambda r: f"{fnum(r.get('reconnect_connack_p50'))} / "
            f"{fnum(r.get('reconnect_connack_p99'))}")
        row("load average start / end", lambda r: f"{r.get('loadavg_start')} / {r.get('loadavg_end')}")
        L.append("")
        L.append("Commands (ringmq; Mosquitto the same against its port):\n")
        L.append("```sh")
        for r in recs:
            for k in ("broker_cmd", "sessions_cmd_first_batch", "fill_cmd", "reconnect_cmd"):
                if r.get(k):
                    L.append(f"# {r['broker']} {k}\n{r[k]}")
        L.append("```\n")
        for r in recs:
            if r.get("error"):
                L.append(f"{r['broker']} recovery error:\n\n```\n{r['error']}\n```\n")
    return "\n".join(L) + "\n"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--duration", type=float, default=10.0)
    ap.add_argument("--scenarios", default=",".join(s.name for s in SCENARIOS),
                    help="default: %(default)s; also: " + ",".join(s.name for s in EXTRA_SCENARIOS))
    ap.add_argument("--brokers", default=",".join(b.name for b in BROKERS))
    ap.add_argument("--recovery-brokers", default="every2,mosquitto")
    ap.add_argument("--no-matrix", action="store_true")
    ap.add_argument("--no-recovery", action="store_true")
    ap.add_argument("--sessions", type=int, default=100_000)
    ap.add_argument("--messages", type=int, default=1_000_000)
    ap.add_argument("--batch", type=int, default=10_000, help="sessions per loadgen run (fd limit)")
    ap.add_argument("--quick", action="store_true", help="3 s, 1 repeat, 10,000 sessions / 100,000 messages")
    ap.add_argument("--no-build", action="store_true")
    ap.add_argument("--metrics", action="store_true",
                    help="ringmq with --metrics-addr; scrape /metrics after each run (journal sync times)")
    ap.add_argument("--out", default=None, help="report path (default bench/results/<date>-journal.md)")
    ap.add_argument("--report-from", metavar="DIR", help="re-render DIR.md from DIR/{info,records,recovery}.json")
    a = ap.parse_args(argv)
    if a.report_from:
        d = Path(a.report_from)
        ld = lambda n: json.loads((d / n).read_text()) if (d / n).exists() else []  # noqa: E731
        info, records, recs = ld("info.json"), ld("records.json"), ld("recovery.json")
        a.scenarios = ",".join(dict.fromkeys(r["scenario"] for r in records))
        a.brokers = ",".join(b.name for b in BROKERS if any(r["broker"] == b.name for r in records))
        a.repeat = max([r["rep"] for r in records], default=0)
        a.metrics = False
        cfg = argparse.Namespace(**vars(a))
        cfg.scenarios = [x for x in a.scenarios.split(",") if x]
        cfg.brokers = [x for x in a.brokers.split(",") if x]
        out = d.with_suffix(".md")
        out.write_text(write_report(cfg, info, records, recs, out))
        print(out)
        return 0
    if a.quick:
        a.repeat, a.duration, a.sessions, a.messages = 1, 3.0, 10_000, 100_000
    R.install_cleanup_handlers()
    cfg = argparse.Namespace(**vars(a))
    cfg.scenarios = [s for s in a.scenarios.split(",") if s]
    cfg.brokers = [b for b in a.brokers.split(",") if b]
    for s in cfg.scenarios:
        if s not in SCEN_BY_NAME:
            sys.exit(f"unknown scenario {s}")
    for b in cfg.brokers + a.recovery_brokers.split(","):
        if b not in BROKER_BY_NAME:
            sys.exit(f"unknown broker {b}")
    cfg.ringmq = str(R.REPO / "target/release/ringmq")
    cfg.loadgen = str(R.REPO / "target/release/ringmq-loadgen")
    cfg.mosquitto = R.ensure_mosquitto(None)
    if not a.no_build:
        R.build(cfg)
    info = R.machine_info(argparse.Namespace(mosquitto=cfg.mosquitto, ringmq=cfg.ringmq, argv=sys.argv[1:]), True)
    info["argv"] = shlex.join(["python3", "bench/journal.py"] + sys.argv[1:] if argv is None else argv)
    info["bin"] = R.snapshot_binaries(cfg, True)
    info["disk"] = R.sh("df -T /tmp | tail -1 | awk '{print $1\" \"$2}'") + ", " + \
        R.sh("cat /sys/block/vda/queue/rotational 2>/dev/null | sed 's/0/non-rotational/;s/1/rotational/'")
    info["fdatasync"] = fdatasync_latency(tempfile.gettempdir())
    R.log(f"fdatasync 4 KiB: {info['fdatasync']}")
    date = time.strftime("%Y-%m-%d")
    path = Path(a.out) if a.out else R.REPO / "bench/results" / f"{date}-journal.md"
    outdir = path.with_suffix("")
    outdir.mkdir(parents=True, exist_ok=True)
    records, recs = [], []
    if not a.no_matrix:
        for scn in [SCEN_BY_NAME[s] for s in cfg.scenarios]:
            for rep in range(1, a.repeat + 1):
                order = cfg.brokers if rep % 2 else list(reversed(cfg.brokers))
                for b in order:
                    records.append(run_one(cfg, scn, BROKER_BY_NAME[b], rep, outdir))
                    (outdir / "records.json").write_text(json.dumps(records, indent=1))
    if not a.no_recovery:
        for b in a.recovery_brokers.split(","):
            recs.append(recovery(cfg, BROKER_BY_NAME[b], outdir))
            (outdir / "recovery.json").write_text(json.dumps(recs, indent=1))
    info["loadavg_end"] = loadavg()
    (outdir / "info.json").write_text(json.dumps(info, indent=1))
    path.write_text(write_report(cfg, info, records, recs, path))
    R.log(f"report: {path}")
    failed = [r for r in records + recs if r.get("status") == "failed"]
    return 2 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
