#!/bin/bash
# 1M queued for an offline session, kill -9, restart (timed), drain and check order.
set -u
D=/tmp/r1m; rm -rf $D; mkdir -p $D
BIN=/work/main/target/release/ringmq
ARGS="--listen 127.0.0.1:18840 --shards 1 --data-dir $D/data --max-queued-messages 0 --max-queued-bytes 1073741824"
$BIN $ARGS > $D/log1 2>&1 &
P1=$!; sleep 1
/work/main/target/release/ringmq-loadgen --port 18840 --broker-pid $P1 --ramp-up 300 --duration 300 --drain 10 --json $D/out.json backlog --messages 1000000 --pause-until $D/go > $D/lg.txt 2>&1 &
LG=$!
while ! grep -q "waiting for" $D/lg.txt; do sleep 0.2; done
grep -E "RssAnon|VmHWM" /proc/$P1/status | tr '\n' ' '; echo " <- before kill"
kill -9 $P1; wait $P1 2>/dev/null
T0=$(date +%s.%N)
$BIN $ARGS > $D/log2 2>&1 &
P2=$!
while ! grep -q "listening" $D/log2; do sleep 0.02; done
T1=$(date +%s.%N)
echo "restart to listening: $(echo "$T1 - $T0" | bc) s"
grep -E "RssAnon|VmHWM" /proc/$P2/status | tr '\n' ' '; echo " <- after restart"
grep "journal recovered" $D/log2 | sed 's/\x1b\[[0-9;]*m//g'
echo $P2 > $D/go
wait $LG; echo "loadgen exit $?"
grep -E '"(acknowledged|missing|out_of_order|duplicates|drain_per_s|rss_anon_kb_drained)"' $D/out.json
grep -E "RssAnon|VmHWM" /proc/$P2/status | tr '\n' ' '; echo " <- after drain"
kill $P2
