#!/usr/bin/env bash
# A three-node JetStream cluster on loopback (ports 4222-4224, routes 6222-6224), for trying the broker
# topology on one machine: `deploy/broker/nats-cluster.sh start|stop DIR`. Production runs one per host.
set -euo pipefail
cmd=${1:?start or stop}; dir=${2:-.tmp/nats-cluster}
nats=${NATS_SERVER:-$(command -v nats-server || echo /usr/sbin/nats-server)}
routes="nats://127.0.0.1:6222,nats://127.0.0.1:6223,nats://127.0.0.1:6224"
case $cmd in
  start)
    for i in 0 1 2; do
      mkdir -p "$dir/n$i"
      "$nats" -a 127.0.0.1 -p $((4222 + i)) -js -sd "$dir/n$i" -n "n$i" --cluster_name ss \
        --cluster "nats://127.0.0.1:$((6222 + i))" --routes "$routes" -l "$dir/n$i.log" &
      echo $! > "$dir/n$i.pid"
    done
    echo "NATS cluster: nats://127.0.0.1:4222,nats://127.0.0.1:4223,nats://127.0.0.1:4224 (logs in $dir)";;
  stop)
    for i in 0 1 2; do [ -f "$dir/n$i.pid" ] && kill "$(cat "$dir/n$i.pid")" 2>/dev/null || true; done;;
  *) echo "usage: $0 start|stop [DIR]" >&2; exit 2;;
esac
