#!/usr/bin/env python3
"""How should a shard wait for bytes on many idle connections? (issue 11)

Runs tools/netprobe (one io_uring loop that only counts bytes) in each readiness model, with
1,000 connections sending 64-byte messages (one per write) at 20,000 msgs/s beside IDLE idle
connections, and reports per model and idle count:

- CPU per message in the steady window (server pinned to --server-cpu, client to --client-cpu);
- memory per idle connection: the server's RSS and the kernel's Slab (from /proc/meminfo, so
  the whole machine: keep it quiet) after every connection is open, against before.

The models and what `--cancel-per-loop` mimics are described in tools/netprobe/src/main.rs.
Results: a markdown table on stdout and JSON in --out. Standard library only.
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BIN = os.path.join(ROOT, "target", "release", "ringmq-netprobe")
CLK_TCK = os.sysconf("SC_CLK_TCK")


def run_one(mode, idle, args, port, cancel):
    """One server + client run; returns the figures of its steady window."""
    secs = args.warmup + args.secs
    server = [BIN, "server", "--mode", mode, "--port", str(port), "--cpu", str(args.server_cpu),
              "--secs", str(secs + args.connect_time + 4)]
    if cancel:
        server.append("--cancel-per-loop")
    srv = subprocess.Popen(server, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    time.sleep(0.5)
    client = [BIN, "client", "--port", str(port), "--cpu", str(args.client_cpu), "--idle", str(idle),
              "--active", str(args.active), "--rate", str(args.rate), "--secs",
              str(secs + args.connect_time)]
    cli = subprocess.Popen(client, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        _, cerr = cli.communicate(timeout=secs + args.connect_time + 60)
        out, serr = srv.communicate(timeout=30)
    finally:
        for p in (cli, srv):
            if p.poll() is None:
                p.kill()
    if cli.returncode != 0 or srv.returncode != 0:
        raise RuntimeError(f"{mode} idle={idle}: client rc {cli.returncode} {cerr[-300:]!r}, "
                           f"server rc {srv.returncode} {serr[-300:]!r}")
    rows = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
    total = idle + args.active
    base = rows[0]
    up = [r for r in rows if r["conns"] == total]
    if len(up) < args.warmup + args.secs // 2:
        raise RuntimeError(f"{mode} idle={idle}: only {len(up)} reports with every connection up")
    # Steady window: skip `warmup` reports after every connection is up.
    a, b = up[args.warmup], up[-1]
    msgs = b["msgs"] - a["msgs"]
    cpu_s = (b["cpu_ticks"] - a["cpu_ticks"]) / CLK_TCK
    dt = b["t"] - a["t"]
    return {
        "mode": mode + ("+cancel" if cancel else ""),
        "idle": idle,
        "msgs_per_s": msgs / dt,
        "cpu_pct": 100 * cpu_s / dt,
        "cpu_us_per_msg": 1e6 * cpu_s / max(msgs, 1),
        "loops_per_s": (b["loops"] - a["loops"]) / dt,
        "rss_b_per_conn": 1024 * (a["rss_kb"] - base["rss_kb"]) / total,
        "slab_b_per_conn": 1024 * (a["slab_kb"] - base["slab_kb"]) / total,
        "kiocb_b_per_conn": (a["kiocb_b"] - base["kiocb_b"]) / total,
        "epoll_b_per_conn": (a["epi_b"] - base["epi_b"]) / total,
    }


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--modes", default="recv-multi,poll-multi,poll-oneshot,epoll")
    ap.add_argument("--idle", default="1000,18000", help="idle connection counts")
    ap.add_argument("--cancel", default="poll-oneshot,recv-multi",
                    help="models also run with --cancel-per-loop (glommio's timer re-arm)")
    ap.add_argument("--active", type=int, default=1000)
    ap.add_argument("--rate", type=int, default=20000)
    ap.add_argument("--secs", type=int, default=10, help="steady window")
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--connect-time", type=int, default=6, help="allowance for opening them")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--server-cpu", type=int, default=0)
    ap.add_argument("--client-cpu", type=int, default=1)
    ap.add_argument("--out", default="")
    args = ap.parse_args()
    if not args.out:
        args.out = os.path.join(ROOT, "bench", "results", time.strftime("%Y-%m-%d") + "-netprobe.json")
    subprocess.run(["cargo", "build", "--release", "-q", "-p", "ringmq-netprobe"], cwd=ROOT, check=True)
    runs = [(m, False) for m in args.modes.split(",")]
    runs += [(m, True) for m in args.cancel.split(",") if m]
    idles = [int(x) for x in args.idle.split(",")]
    results = []
    port = 19900
    for rep in range(args.repeat):
        for idle in idles:
            for mode, cancel in runs:
                port += 1
                r = run_one(mode, idle, args, port, cancel)
                r["repeat"] = rep
                results.append(r)
                print(json.dumps(r), file=sys.stderr, flush=True)
    with open(args.out, "w") as f:
        json.dump({"args": vars(args), "uname": os.uname().release, "runs": results}, f, indent=1)
    keys = ["msgs_per_s", "cpu_pct", "cpu_us_per_msg", "loops_per_s", "rss_b_per_conn", "slab_b_per_conn",
            "kiocb_b_per_conn", "epoll_b_per_conn"]
    print(f"medians of {args.repeat}; {args.active} active connections at {args.rate} msgs/s total "
          f"beside the idle ones; server on cpu {args.server_cpu}, client on cpu {args.client_cpu}\n")
    print("| model | idle | " + " | ".join(keys) + " |")
    print("|---|---:|" + "---:|" * len(keys))
    for mode, cancel in runs:
        name = mode + ("+cancel" if cancel else "")
        for idle in idles:
            rs = [r for r in results if r["mode"] == name and r["idle"] == idle]
            med = [statistics.median(r[k] for r in rs) for k in keys]
            print(f"| {name} | {idle} | " + " | ".join(f"{v:,.2f}" for v in med) + " |")
    print(f"\nraw runs: {args.out}")


if __name__ == "__main__":
    main()
