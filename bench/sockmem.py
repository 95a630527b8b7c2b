#!/usr/bin/env python3
"""Kernel and broker memory per idle connection, for the million-device projection in
docs/operations.md.

Starts the broker pinned to one CPU, reads /proc/meminfo (Slab), /proc/net/sockstat and the
broker's RSS, holds N idle devices (each with a session and one subscription) with the bundled
load generator on the other CPU, reads them again, and reports the differences per connection.
On loopback both ends of every connection are sockets of this kernel, so the kernel figures are
given per connection (two sockets) and per socket (half of it). Medians of --repeat runs.

    python3 bench/sockmem.py --devices 19000 --repeat 3 [--out bench/results/NAME.md]
"""
import argparse
import os
import shutil
import socket
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def meminfo_kb(key: str) -> int:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    raise KeyError(key)


def sockstat() -> dict:
    """TCP line of /proc/net/sockstat: inuse, orphan, tw, alloc, mem (pages)."""
    for line in Path("/proc/net/sockstat").read_text().splitlines():
        if line.startswith("TCP:"):
            parts = line.split()[1:]
            return {parts[i]: int(parts[i + 1]) for i in range(0, len(parts), 2)}
    return {}


def rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def snapshot(pid: int) -> dict:
    # Let slab frees from earlier runs settle first.
    time.sleep(1.0)
    return {"slab_kb": meminfo_kb("Slab"), "sunreclaim_kb": meminfo_kb("SUnreclaim"),
            "tcp": sockstat(), "rss_kb": rss_kb(pid)}


def one_run(args, port: int) -> dict:
    data = tempfile.mkdtemp(prefix="ringmq-sockmem-")
    broker = subprocess.Popen(
        ["taskset", "-c", args.broker_cpu, args.ringmq, "--listen", f"127.0.0.1:{port}",
         "--shards", "1", "--data-dir", data, "--log-level", "warn"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    lg = None
    try:
        deadline = time.time() + 10
        while time.time() < deadline:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                break
            except OSError:
                time.sleep(0.1)
        time.sleep(0.5)
        before = snapshot(broker.pid)
        hold = 60
        lg = subprocess.Popen(
            ["taskset", "-c", args.loadgen_cpu, args.loadgen, "--port", str(port), "--connect-rate",
             "20000", "--ramp-up", "30", "--duration", str(hold), "--quiet", "idle", "--devices",
             str(args.devices), "--hold", str(hold)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        deadline = time.time() + 45
        while fds(broker.pid) < args.devices and time.time() < deadline:
            time.sleep(0.2)
        held = fds(broker.pid)
        time.sleep(2.0)  # the last SUBSCRIBEs
        t0 = time.time()
        cpu0 = sum(int(x) for x in Path(f"/proc/{broker.pid}/stat").read_text().split(")")[1].split()[11:13])
        after = snapshot(broker.pid)
        time.sleep(args.idle_secs)
        cpu1 = sum(int(x) for x in Path(f"/proc/{broker.pid}/stat").read_text().split(")")[1].split()[11:13])
        idle_cpu_pct = 100.0 * (cpu1 - cpu0) / os.sysconf("SC_CLK_TCK") / (time.time() - t0)
    finally:
        if lg is not None and lg.poll() is None:
            os.killpg(lg.pid, 9)
            lg.wait()
        broker.terminate()
        broker.wait(10)
        shutil.rmtree(data, ignore_errors=True)
    n = args.devices
    return {
        "connections": held,
        "broker_rss_per_conn_b": (after["rss_kb"] - before["rss_kb"]) * 1024 / n,
        "slab_per_conn_b": (after["slab_kb"] - before["slab_kb"]) * 1024 / n,
        "sunreclaim_per_conn_b": (after["sunreclaim_kb"] - before["sunreclaim_kb"]) * 1024 / n,
        "tcp_mem_pages_delta": after["tcp"].get("mem", 0) - before["tcp"].get("mem", 0),
        "tcp_inuse_delta": after["tcp"].get("inuse", 0) - before["tcp"].get("inuse", 0),
        "broker_idle_cpu_pct": idle_cpu_pct,
    }


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--devices", type=int, default=19000)
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--idle-secs", type=float, default=10.0, help="broker CPU is sampled this long, idle")
    p.add_argument("--broker-cpu", default="0")
    p.add_argument("--loadgen-cpu", default="1")
    p.add_argument("--ringmq", default=str(REPO / "target/release/ringmq"))
    p.add_argument("--loadgen", default=str(REPO / "target/release/ringmq-loadgen"))
    p.add_argument("--out", default=None, help="write a markdown report here")
    args = p.parse_args()
    runs = []
    for i in range(args.repeat):
        r = one_run(args, free_port())
        runs.append(r)
        print(f"run {i + 1}: " + ", ".join(f"{k}={v:.1f}" if isinstance(v, float) else f"{k}={v}"
                                           for k, v in r.items()), flush=True)
    med = {k: statistics.median(r[k] for r in runs) for k in runs[0]}
    lines = [
        f"# Memory per idle connection, kernel and broker ({time.strftime('%Y-%m-%d')})",
        "",
        f"Command: `python3 bench/sockmem.py --devices {args.devices} --repeat {args.repeat}`; ringmq "
        f"`--shards 1` on CPU {args.broker_cpu}, `ringmq-loadgen idle` (session + one subscription "
        f"per device, keep-alive 60 s) on CPU {args.loadgen_cpu}; loopback, so the kernel holds both "
        "ends of each connection. Medians of the runs.",
        "",
        "| per idle connection | median | runs |",
        "| --- | ---: | --- |",
    ]
    for k, label in [("broker_rss_per_conn_b", "broker RSS (bytes)"),
                     ("slab_per_conn_b", "kernel slab, both ends (bytes)"),
                     ("sunreclaim_per_conn_b", "kernel unreclaimable slab, both ends (bytes)"),
                     ("tcp_mem_pages_delta", "sockstat TCP mem, pages in all (buffered data)"),
                     ("tcp_inuse_delta", "sockstat TCP inuse, sockets in all"),
                     ("broker_idle_cpu_pct", f"broker CPU % while idle ({args.idle_secs:.0f} s)")]:
        vals = ", ".join(f"{r[k]:.1f}" if isinstance(r[k], float) else str(r[k]) for r in runs)
        v = med[k]
        lines.append(f"| {label} | {v:,.1f} | {vals} |")
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out:
        Path(args.out).write_text(text)


if __name__ == "__main__":
    main()
