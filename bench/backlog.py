#!/usr/bin/env python3
"""The cost of a long offline queue, ringmq beside Mosquitto in one run (issue 12, item 1).

For each broker and repeat: start it fresh (pinned to --broker-cpu), run
`ringmq-loadgen backlog` (pinned to --loadgen-cpu): one persistent QoS 1 subscriber goes
offline, M messages of --payload bytes are published to it and acknowledged, the broker's
RssAnon is read before and after, then the subscriber returns and drains the queue, each
sequence number checked to arrive once and in order. Writes <out>.json and <out>.md with the
medians.

Both brokers are configured to hold the whole backlog (neither drops nor refuses): ringmq with
`--max-queued-messages 0 --max-queued-bytes 1073741824`, Mosquitto with `max_queued_messages 0`
(no limit) and `persistence false` (its queue is in memory either way; with persistence it is
also written out periodically).

Usage: python3 bench/backlog.py [--messages 1000000] [--repeat 3] [--brokers ringmq,mosquitto]
       [--ringmq BIN] [--tag NAME]
"""

import argparse
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RINGMQ_LIMITS = ["--max-queued-messages", "0", "--max-queued-bytes", "1073741824"]
FIELDS = [
    ("acknowledged", "acknowledged", "{:,.0f}"),
    ("publish_per_s", "publish msgs/s", "{:,.0f}"),
    ("rss_anon_kb_before", "RssAnon before (KiB)", "{:,.0f}"),
    ("rss_anon_kb_queued", "RssAnon queued (KiB)", "{:,.0f}"),
    ("anon_growth_mib", "RssAnon growth (MiB)", "{:,.1f}"),
    ("anon_bytes_per_message", "RssAnon B / queued msg", "{:,.1f}"),
    ("rss_file_kb_queued", "RssFile queued (KiB)", "{:,.0f}"),
    ("drain_per_s", "drain msgs/s", "{:,.0f}"),
    ("missing", "missing", "{:,.0f}"),
    ("out_of_order", "out of order", "{:,.0f}"),
    ("duplicates", "duplicates", "{:,.0f}"),
]


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port, proc, timeout=10):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError("broker exited with %s" % proc.returncode)
        try:
            socket.create_connection(("127.0.0.1", port), 0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError("broker did not listen on %d" % port)


def start(broker, port, work, args):
    if broker == "mosquitto":
        conf = work / "mosquitto.conf"
        conf.write_text("listener %d 127.0.0.1\nallow_anonymous true\nmax_queued_messages 0\n"
                        "persistence false\n" % port)
        cmd = ["mosquitto", "-c", str(conf)]
    else:
        cmd = [args.ringmq, "--listen", "127.0.0.1:%d" % port, "--shards", "1",
               "--data-dir", str(work / "data")] + RINGMQ_LIMITS
    cmd = ["taskset", "-c", args.broker_cpu] + cmd
    log = open(work / "broker.log", "w")
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    wait_port(port, proc)
    return proc, cmd


def run_one(broker, args):
    work = Path(tempfile.mkdtemp(prefix="backlog-"))
    port = free_port()
    proc, cmd = start(broker, port, work, args)
    try:
        out = work / "out.json"
        lg = ["taskset", "-c", args.loadgen_cpu, args.loadgen, "--port", str(port),
              "--broker-pid", str(proc.pid), "--payload", str(args.payload),
              "--ramp-up", "300", "--duration", "300", "--drain", "10", "--quiet",
              "--json", str(out), "backlog", "--messages", str(args.messages)]
        r = subprocess.run(lg, capture_output=True, text=True, timeout=900)
        if not out.exists():
            raise RuntimeError("loadgen failed (%d): %s" % (r.returncode, r.stderr[-2000:]))
        j = json.loads(out.read_text())
        j["anon_growth_mib"] = max(0, j["rss_anon_kb_queued"] - j["rss_anon_kb_before"]) / 1024
        j["broker_cmd"] = " ".join(cmd)
        j["loadgen_cmd"] = " ".join(lg)
        return j
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
        shutil.rmtree(work, ignore_errors=True)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--messages", type=int, default=1_000_000)
    ap.add_argument("--payload", type=int, default=64)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--brokers", default="ringmq,mosquitto")
    ap.add_argument("--ringmq", default=str(ROOT / "target/release/ringmq"))
    ap.add_argument("--loadgen", default=str(ROOT / "target/release/ringmq-loadgen"))
    ap.add_argument("--broker-cpu", default="0")
    ap.add_argument("--loadgen-cpu", default="1")
    ap.add_argument("--tag", default="")
    ap.add_argument("--out", default=None,
                    help="output path without extension (default bench/results/<date>-backlog<tag>)")
    args = ap.parse_args()
    brokers = args.brokers.split(",")
    runs = {b: [] for b in brokers}
    for i in range(args.repeat):
        for b in brokers:
            j = run_one(b, args)
            runs[b].append(j)
            print("%s run %d: %s" % (b, i + 1, {k: j[k] for k, _, _ in FIELDS}), flush=True)
    med = {b: {k: statistics.median(r[k] for r in runs[b]) for k, _, _ in FIELDS} for b in brokers}
    out = Path(args.out or ROOT / "bench/results" / (time.strftime("%Y-%m-%d") + "-backlog" + args.tag))
    out.with_suffix(".json").write_text(json.dumps({"args": vars(args), "runs": runs,
                                                     "medians": med}, indent=2) + "\n")
    lines = ["| medians of %d | %s |" % (args.repeat, " | ".join(brokers)),
             "|---|" + "---:|" * len(brokers)]
    for k, label, fmt in FIELDS:
        lines.append("| %s | %s |" % (label, " | ".join(fmt.format(med[b][k]) for b in brokers)))
    table = "\n".join(lines)
    cmds = "\n".join("- %s: `%s`; loadgen `%s`" % (b, runs[b][0]["broker_cmd"],
                                                   runs[b][0]["loadgen_cmd"]) for b in brokers)
    out.with_suffix(".md").write_text(
        "# Backlog: %s queued %d-byte QoS 1 messages for one offline persistent session\n\n"
        "Command: `python3 bench/backlog.py %s`\n\n%s\n\nPer run:\n%s\n"
        % ("{:,}".format(args.messages), args.payload, " ".join(sys.argv[1:]), table, cmds))
    print(table)
    bad = [b for b in brokers if b.startswith("ringmq") and med[b]["missing"] > 0]
    sys.exit(1 if bad else 0)


if __name__ == "__main__":
    main()
