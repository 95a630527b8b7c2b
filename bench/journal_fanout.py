#!/usr/bin/env python3
"""Journal bytes per publish when one message is queued for many persistent sessions (issue 12,
item 1: "written once, not once per subscriber").

For each binary given and each (sessions, payload) case: start the broker fresh (one shard,
its defaults), make N persistent QoS 1 subscribers to one topic go offline, publish M QoS 1
messages (16 unacknowledged at most), and read `ringmq_journal_appended_bytes_total` before
and after. Prints journal bytes per publish and per session, and publishes per second (which
the publisher's window and the group commit bound, not the journal's bandwidth). Mosquitto is
not measured: it keeps offline queues in memory and writes its whole database periodically,
so bytes appended per publish has no counterpart there.

Usage: python3 bench/journal_fanout.py BIN [BIN...]   (e.g. an older build beside target/release/ringmq)
"""

import os
import subprocess
import sys
import tempfile
import time
import urllib.request

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "tests", "integration"))
import rawmqtt as R  # noqa: E402
from test_queue_full import publish_windowed  # noqa: E402

CASES = [(1, 64), (20, 64), (20, 1024), (100, 1024)]
MESSAGES = 300
PORT = [18800]


def scrape(mport, name):
    text = urllib.request.urlopen("http://127.0.0.1:%d/metrics" % mport, timeout=5).read().decode()
    for line in text.splitlines():
        if line.startswith(name + '{shard="all"}'):
            return float(line.split()[-1])
    raise KeyError(name)


def run(binary, nsubs, size):
    PORT[0] += 2
    port, mport = PORT[0], PORT[0] + 1
    data = tempfile.mkdtemp(prefix="ringmq-fanout-")
    b = subprocess.Popen([binary, "--listen", "127.0.0.1:%d" % port, "--shards", "1",
                          "--data-dir", data, "--metrics-addr", "127.0.0.1:%d" % mport],
                         stderr=subprocess.DEVNULL)
    try:
        for _ in range(200):
            try:
                scrape(mport, "ringmq_journal_appended_bytes_total")
                break
            except Exception:
                time.sleep(0.05)
        for i in range(nsubs):
            s = R.RawClient("127.0.0.1", port, 10, 4)
            s.connect("sub%d" % i, clean=False)
            s.subscribe([("t/x", 1)])
            s.disconnect()
        p = R.RawClient("127.0.0.1", port, 10, 4)
        p.connect("pub")
        before = scrape(mport, "ringmq_journal_appended_bytes_total")
        t0 = time.monotonic()
        assert publish_windowed(p, "t/x", [b"y" * size] * MESSAGES, 1, window=16) == [0] * MESSAGES
        rate = MESSAGES / (time.monotonic() - t0)
        grew = scrape(mport, "ringmq_journal_appended_bytes_total") - before
        return grew / MESSAGES, rate
    finally:
        b.kill()
        b.wait()
        subprocess.run(["rm", "-rf", data])


def main():
    if len(sys.argv) < 2:
        sys.exit(__doc__)
    print("| binary | sessions | payload B | journal B per publish | per session | publishes/s |")
    print("| --- | ---: | ---: | ---: | ---: | ---: |")
    for binary in sys.argv[1:]:
        for nsubs, size in CASES:
            per, rate = run(binary, nsubs, size)
            print("| %s | %d | %d | %.0f | %.0f | %.0f |" % (binary, nsubs, size, per, per / nsubs, rate))


if __name__ == "__main__":
    main()
