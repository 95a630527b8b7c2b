#!/usr/bin/env python3
"""Do TLS handshakes starve established connections? Latency of established device pairs
over TLS, alone and while a TLS connect storm runs, ringmq beside Mosquitto in one run.

Each run: the broker (one core, pinned), 1,000 device pairs at 10 msgs/s each over TLS
(loadgen A), and from 12 s after A started a storm of 10,000 TLS connects as fast as they go
(loadgen B, full handshakes). Both loadgens share the other core; B runs in the SCHED_IDLE
class so that its client-side handshakes take only what A leaves. Compare each broker's storm
run with its quiet run, and the brokers with each other.

    python3 bench/tls_storm.py [--repeat 3] [--out bench/results]
"""

import argparse
import datetime
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "bench"))
import run as harness  # noqa: E402  (the same certificate making and port checks)


BIN = {}


def snapshot():
    """Copies of the binaries, so that a rebuild during the run changes nothing."""
    d = tempfile.mkdtemp(prefix="ringmq-tls-storm-bin-")
    for name in ("ringmq", "ringmq-loadgen"):
        dst = os.path.join(d, name)
        subprocess.run(["cp", str(REPO / "target/release" / name), dst], check=True)
        BIN[name] = dst


def start_broker(kind, port, tls_dir, workdir):
    cert, key = os.path.join(tls_dir, "server.pem"), os.path.join(tls_dir, "server.key")
    if kind == "ringmq":
        cmd = ["taskset", "-c", "0", BIN["ringmq"], "--shards", "1",
               "--listener", f"mqtts://127.0.0.1:{port}", "--tls-cert", cert, "--tls-key", key,
               "--data-dir", os.path.join(workdir, "data"), "--metrics-addr", "none",
               "--log-level", "warn"]
    else:
        conf = os.path.join(workdir, "mosquitto.conf")
        Path(conf).write_text("\n".join([
            f"listener {port} 127.0.0.1", f"certfile {cert}", f"keyfile {key}",
            "allow_anonymous true", "persistence false", "max_connections -1",
            "set_tcp_nodelay true", "log_dest stderr", "log_type error", ""]))
        os.chmod(workdir, 0o755)
        os.chmod(conf, 0o644)
        cmd = ["taskset", "-c", "0", harness.ensure_mosquitto(None), "-c", conf]
    p = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                         start_new_session=True)
    deadline = time.monotonic() + 10
    while not harness.port_open(port):
        if time.monotonic() > deadline or p.poll() is not None:
            raise RuntimeError(f"{kind} did not start")
        time.sleep(0.05)
    return p


def loadgen(port, tls_dir, args, json_path=None, idle_class=False):
    # The storm's loadgen runs in the SCHED_IDLE class: it gets only the CPU the measuring
    # loadgen leaves, so its own handshakes do not delay the pairs' timestamps.
    pre = ["chrt", "--idle", "0"] if idle_class else []
    cmd = pre + ["taskset", "-c", "1", BIN["ringmq-loadgen"], "--port", str(port),
           "--cpus", "1", "--quiet", "--tls", "--tls-ca", os.path.join(tls_dir, "ca.pem")]
    if json_path:
        cmd += ["--json", str(json_path)]
    return subprocess.Popen(cmd + args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)


def one(kind, storm, port, tls_dir):
    work = tempfile.mkdtemp(prefix=f"ringmq-tls-storm-{kind}-")
    b = start_broker(kind, port, tls_dir, work)
    out = Path(work) / "pairs.json"
    try:
        a = loadgen(port, tls_dir, ["--connect-rate", "5000", "--ramp-up", "30", "--duration", "20",
                                    "pairs", "--pairs", "1000", "--rate", "10"], out)
        storm_json = Path(work) / "storm.json"
        if storm:
            # The pairs connect (2,000 handshakes) and start measuring first.
            time.sleep(12)
            s = loadgen(port, tls_dir, ["--connect-rate", "1000000", "--ramp-up", "30",
                                        "connect-storm", "--devices", "10000"], storm_json,
                        idle_class=True)
            s.wait(timeout=120)
        a.wait(timeout=120)
        v = json.loads(out.read_text())
        r = {"p50": v["latency_us"]["p50"], "p99": v["latency_us"]["p99"],
             "p999": v["latency_us"]["p999"], "received_per_s": v["received_per_s"],
             "lost": v["lost"]}
        if storm:
            sv = json.loads(storm_json.read_text())
            r["storm_connects_per_s"] = sv.get("connect_per_s")
            r["storm_errors"] = sv.get("errors")
        return r
    finally:
        b.terminate()
        try:
            b.wait(5)
        except subprocess.TimeoutExpired:
            b.kill()


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--out", default=str(REPO / "bench" / "results"))
    p.add_argument("--port-base", type=int, default=18900)
    a = p.parse_args()
    tls_dir = harness.make_tls_dir()
    snapshot()
    commit = subprocess.run(["git", "-C", str(REPO), "describe", "--always", "--dirty"],
                            capture_output=True, text=True).stdout.strip()
    results = {}
    port = a.port_base
    for rep in range(a.repeat):
        for kind in ("ringmq", "mosquitto"):
            for storm in (False, True):
                port += 1
                r = one(kind, storm, port, tls_dir)
                results.setdefault((kind, storm), []).append(r)
                print(f"[{time.strftime('%H:%M:%S')}] {kind} storm={storm} r{rep + 1}: {r}",
                      flush=True)
    lines = ["# TLS connect storm beside established TLS device pairs", "",
             f"{datetime.datetime.now().isoformat(timespec='seconds')} on `{os.uname().nodename}`, "
             f"kernel {os.uname().release}; ringmq build `{commit}`; medians of {a.repeat}.", "",
             "Command: `python3 bench/tls_storm.py --repeat %d`" % a.repeat, "",
             "Broker on CPU 0 (ringmq --shards 1, Mosquitto 2.0.11), both loadgens on CPU 1. "
             "Loadgen A: 1,000 pairs at 10 msgs/s (10,000 msgs/s), QoS 0, over TLS, 20 s. Storm: "
             "loadgen B connects 10,000 devices over TLS (full handshakes) as fast as it can, "
             "from 12 s after A started, in the SCHED_IDLE class (`chrt --idle 0`) so that it "
             "takes only the CPU A leaves; the quiet runs are the baseline of each broker.", "",
             "| broker | storm | latency p50 (µs) | p99 (µs) | p99.9 (µs) | msgs/s | lost | storm connects/s |",
             "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for (kind, storm), rs in results.items():
        med = lambda k: statistics.median([r[k] for r in rs if r.get(k) is not None] or [0])
        lines.append(f"| {kind} | {'yes' if storm else 'no'} | {med('p50'):,.0f} | {med('p99'):,.0f} | "
                     f"{med('p999'):,.0f} | {med('received_per_s'):,.0f} | {med('lost'):,.0f} | "
                     f"{med('storm_connects_per_s') if storm else 0:,.0f} |")
    text = "\n".join(lines) + "\n"
    day = datetime.date.today().isoformat()
    path = Path(a.out) / f"{day}-vm-tls-storm.md"
    path.write_text(text)
    print(text)
    print(f"written: {path}")


if __name__ == "__main__":
    main()
