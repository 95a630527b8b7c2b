#!/bin/bash
# 3 repeats x {ringmq defaults, mosquitto defaults} x {QoS 0, QoS 1}: 100,000 retained -> 3 '#' subscribers
LG=/work/main/target/release/ringmq-loadgen
for r in 1 2 3; do
 for b in ringmq mosquitto; do
  for q in 0 1; do
   rm -rf /tmp/rt2/data
   if [ $b = ringmq ]; then
     taskset -c 0 /work/main/target/release/ringmq --listen 127.0.0.1:18833 --shards 1 --data-dir /tmp/rt2/data > /tmp/rt2/log 2>&1 &
   else
     printf "listener 18833 127.0.0.1\nallow_anonymous true\n" > /tmp/rt2/m.conf
     taskset -c 0 mosquitto -c /tmp/rt2/m.conf > /tmp/rt2/log 2>&1 &
   fi
   BP=$!; sleep 1
   timeout 300 taskset -c 1 $LG --port 18833 --broker-pid $BP --ramp-up 120 --duration 60 --drain 5 --qos $q --quiet --json /tmp/rt2/$b-q$q-r$r.json retained --topics 100000 --subscribers 3 > /dev/null 2>&1
   kill $BP; wait $BP 2>/dev/null
  done
 done
done
