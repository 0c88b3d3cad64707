#!/usr/bin/env bash
# Look-ups while clients without a key hold connections: /v1/check throughput measured clean,
# then again while `load hostile` keeps 1,000 idle keep-alive and 200 half-open connections
# (reopening whatever the server closes), and the server's peak RSS. Needs wrk.
# usage: bash bench/hostile.sh [seconds] [idle] [half_open]
set -euo pipefail
cd "$(dirname "$0")/.."
secs=${1:-15}
idle=${2:-1000}
half_open=${3:-200}
ulimit -n 20000
data=$(mktemp -d)
trap 'kill $server $hostile 2>/dev/null || true; rm -rf "$data"' EXIT
hostile=
cargo build --release --quiet --bin palisade --example load
./target/release/palisade serve --data-dir "$data" --listen 127.0.0.1:18098 >"$data/out" 2>"$data/err" &
server=$!
until grep -q pal_ "$data/out" 2>/dev/null; do sleep 0.2; done
export PALISADE_KEY=$(grep -oE 'pal_[A-Za-z0-9_-]+' "$data/out")
# 200,000 scattered /32 blocks, so look-ups walk real tables.
./target/release/examples/load ingest --url http://127.0.0.1:18098 --clients 4 --batch 1000 --seconds 4 >/dev/null
rss() { awk '/VmRSS|VmHWM/ {printf "%s %d MiB  ", $1, $2/1024}' /proc/$server/status; echo; }
fds() { ls /proc/$server/fd | wc -l; }

echo "== clean: GET /v1/check?ip=<random>"
wrk -t2 -c64 -d"${secs}s" --latency -s bench/check.lua http://127.0.0.1:18098 | grep -E "Requests/sec|99%|50%|Non-2xx|Socket errors"
rss
echo "== with $idle idle and $half_open half-open connections"
./target/release/examples/load hostile --addr 127.0.0.1:18098 --idle "$idle" --half-open "$half_open" \
  --seconds $((secs + 10)) &
hostile=$!
sleep 5
echo "server descriptors open: $(fds)"
wrk -t2 -c64 -d"${secs}s" --latency -s bench/check.lua http://127.0.0.1:18098 | grep -E "Requests/sec|99%|50%|Non-2xx|Socket errors"
echo "server descriptors open: $(fds)"
rss
wait $hostile
